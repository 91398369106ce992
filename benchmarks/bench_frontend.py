"""On-device front end and audio mode: instructions per clip, RAM of both modes per board, link
utilisation of stop-and-wait against the windowed link, and the real-time factor per board clock.

    python3 benchmarks/bench_frontend.py --data DATA_OR_CACHE [--tflite M] [--clips 4] [--only-builds|--only-link [--line-baud B]] [--out F.json]

- Instructions: the AUDIO_RESULT counters on QEMU (-icount shift=0: SysTick ticks once per
  1e9/clock instructions), front end and network separately, on each QEMU board, over a
  stop-and-wait link (no bytes arriving while the board computes).
- RAM: build-firmware's linker-map totals with and without the front end (--no-front-end) for
  every board of boards.BOARDS; a board the model does not fit is recorded with the reason.
- Link: `dsmn-host eval` on qemu-an386, features and audio mode, stop-and-wait (windowed=False),
  windowed one request at a time (pipelined=False) and pipelined (the next clip's first window
  sent while the board computes), `--reps` rounds of the three interleaved, each run against the
  limit measured next to it: the best PING of the largest message (board window or 32 chunks in
  flight) just before and just after the run, and eval's own. Wall-clock: the machine was
  shared and loaded, so the limit's spread over the session is recorded too.
- Real-time factor: (front end + network instructions) / clock for a 1 s clip, counting one
  instruction per clock (Cortex-M4 flash wait states and multi-cycle FP ops make real cycles
  somewhat higher; DWT on hardware measures them).
Writes benchmarks/results/frontend.json; prints the README table.
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchjson import write_result  # noqa: E402
# Instructions are measured on these; a board without its own counts uses those of the QEMU
# board with the same core and RAM (so the same compiler plan: 128 KiB parts run the min plan).
QEMU_BOARDS = ("qemu-an386", "qemu-stm32f405")
COUNTS_FROM = {"nucleo-f446re": "qemu-stm32f405"}
RAM_BOARDS = ("qemu-an386", "qemu-an547", "qemu-stm32f405", "nucleo-f446re", "nucleo-h743zi2")


def native_agreement(cache, split, scale, zero_point, work):
    """The front end's C (host build, same sources and flags) on every clip of the split against
    dsmn_host.data.features on the same int16 samples."""
    sys.path.insert(0, str(ROOT / "tests"))
    import numpy as np
    from frontend_support import build_native, run_native

    from dsmn_host.link import evaluate
    from dsmn_host.target import frontend

    rows = [int(r) for r in cache.indices(split)]
    pcms = [evaluate.clip_pcm(cache, r) for r in rows]
    board = run_native(build_native(work / "native"), pcms, scale, zero_point)
    host = np.stack([frontend.reference_input(p, scale, zero_point) for p in pcms])
    c = frontend.compare(board, host)
    c["clips"] = len(rows)
    c["split"] = split
    c["min_clip_elements_equal"] = min(frontend.compare(board[i], host[i])["elements_equal"] for i in range(len(rows)))
    return c


def ram_per_board(tflite, work):
    from dsmn_host.errors import DsmnError
    from dsmn_host.target.firmware import build_firmware

    out = {}
    for name in RAM_BOARDS:
        entry = {}
        for mode, fe in (("features", False), ("audio", None)):
            try:
                r = build_firmware(tflite=tflite, board=name, out=work / f"{name}-{mode}", quiet=True, front_end=fe)
                entry[mode] = {"ram_bytes": r["ram_bytes"], "flash_bytes": r["flash_bytes"], "elf": r["elf"],
                               "board_ram_bytes": r["board_ram_bytes"]}
            except DsmnError as exc:
                entry[mode] = {"error": str(exc).splitlines()[0][:300]}
        if "ram_bytes" in entry["features"] and "ram_bytes" in entry["audio"]:
            entry["audio_adds_ram_bytes"] = entry["audio"]["ram_bytes"] - entry["features"]["ram_bytes"]
            entry["audio_adds_flash_bytes"] = entry["audio"]["flash_bytes"] - entry["features"]["flash_bytes"]
        out[name] = entry
        print(f"{name}: {json.dumps({k: v for k, v in entry.items()})[:300]}", file=sys.stderr, flush=True)
    return out


def builds(result, tflite, work, pcm, skip_ram=False):
    """RAM per board (both modes) and the counts from the audio builds, into `result`; returns
    qemu-an386's audio ELF (or None)."""
    ram = ram_per_board(tflite, work) if not skip_ram else {}
    result["boards"] = {k: {m: {kk: vv for kk, vv in v.items() if kk != "elf"} if isinstance(v, dict) else v
                            for m, v in e.items()} for k, e in ram.items()}
    counts(result, {name: ram.get(name, {}).get("audio", {}).get("elf") for name in QEMU_BOARDS}, pcm)
    return ram.get("qemu-an386", {}).get("audio", {}).get("elf")


def instructions(elf, board, pcm):
    from dsmn_host.link import evaluate
    from dsmn_host.target import protocol
    from dsmn_host.target.emulate import Emulator

    with Emulator(elf, board=board) as emu, protocol.Session.open(emu.url, response_timeout=600) as s:
        # Stop-and-wait: no bytes arrive while the board computes. The receive handler's own
        # time is left out of the counts either way, but not its entry and exit, which made the
        # windowed link's front-end count vary by up to 0.5 M between runs of the same clip.
        s.windowed = False
        r = s.audio(0, pcm)
        k = 1e9 / evaluate.systick_hz(s.hello)  # QEMU's SysTick clock, not the firmware's idea of it
        return {"frontend_instructions": round(r.frontend_counter * k), "network_instructions": round(r.counter * k),
                "clock_hz": s.hello.core_clock_hz}


def counts(result, elves, pcm):
    """Front-end and network instructions of one clip on each QEMU board (its audio firmware),
    and the real-time factor of every board in the table from them, into `result`."""
    from dsmn_host.boards import BOARDS

    result["instructions"] = {}
    for name, elf in elves.items():
        if elf:
            result["instructions"][name] = instructions(elf, name, pcm)
            print(name, result["instructions"][name], file=sys.stderr, flush=True)
    if result["instructions"].get("qemu-an386"):
        def per_clip(src):
            return sum(result["instructions"][src][k] for k in ("frontend_instructions", "network_instructions"))

        result["real_time_factor"] = {}
        for name in BOARDS:
            src = name if name in result["instructions"] else COUNTS_FROM.get(name, "qemu-an386")
            if src in result["instructions"]:
                result["real_time_factor"][name] = {"clock_hz": BOARDS[name].clock_hz, "instructions_from": src,
                                                    "factor": per_clip(src) / BOARDS[name].clock_hz}


def _ping_limit(url, repeats=2):
    """PING rates (bytes/s) of the largest message, `repeats` each with the board's window and
    with 32 chunks in flight: samples of what the line carries right now."""
    from dsmn_host.link import evaluate
    from dsmn_host.target import protocol

    with protocol.Session.open(url) as s:
        payload = bytes((i * 37) & 0xFF for i in range(s.hello.max_message))
        rates = {}
        for label, window in (("board_window", None), ("32_in_flight", evaluate.LIMIT_WINDOW)):
            rates[label] = []
            for _ in range(repeats):
                t = time.monotonic()
                s.ping(payload, window=window)
                rates[label].append(len(payload) / (time.monotonic() - t))
    return rates


def _samples(rates):
    return [r for rs in rates.values() for r in rs]


LINK_MODES = {"stop_and_wait": {"windowed": False, "pipelined": False},
              "windowed": {"windowed": True, "pipelined": False},
              "pipelined": {"windowed": True, "pipelined": True}}


def link_runs(elf, tflite, data, clips, work, reps=1, line_baud=None):
    """With `line_baud`, the board is reached through a paced line at that rate (tests/faultrelay,
    no faults): its limit is a fixed rate, not QEMU's, and the gaps the board's computing leaves
    in it are what tells the link modes apart.

    Each eval run against the limit measured next to it: the PING samples taken just before
    and just after the run. On QEMU one PING of the same message swings 11-24 KB/s within a
    minute with nothing else running (the emulated UART moves a byte per main-loop wakeup), so
    a run's limit is the median of its neighbours' samples, like the run's own rate an average
    over seconds; the best sample (and eval's own one-input PING), the top of that noise, gives
    the conservative figure beside it. The link modes take turns within each round, so a load
    swing hits all of them alike."""
    import statistics

    from dsmn_host.link import evaluate
    from dsmn_host.target.emulate import Emulator
    from dsmn_host.deploy.modelcard import card_paths

    import contextlib

    out, runs, samples = {}, {}, []
    if line_baud:
        sys.path.insert(0, str(ROOT / "tests"))
        from faultrelay import FaultRelay

        out["line"] = {"baud": line_baud, "nominal_bytes_per_s": line_baud / 10, "relay": "tests/faultrelay.py, rate 0"}
    with Emulator(elf) as emu, contextlib.ExitStack() as stack:
        url = stack.enter_context(FaultRelay(emu.url, rate=0, baud=line_baud)).port if line_baud else emu.url
        before = _ping_limit(url)
        out["ping_bytes_per_s"] = before
        samples += _samples(before)
        for rnd in range(reps):
            for mode in ("features", "audio"):
                for link_mode, kw in LINK_MODES.items():
                    d = work / f"eval-{mode}-{link_mode}-{rnd}"
                    rep = evaluate.run_eval([url], source=data, limit=clips, stratify=True,
                                            card_path=card_paths(tflite)["json"], out_dir=d, baud=115200,
                                            log=lambda m: None, input_mode=mode, check_input=False, **kw)
                    after = _ping_limit(url)
                    samples += _samples(after)
                    tp = rep["throughput"]
                    near = _samples(before) + _samples(after)
                    limit = statistics.median(near)
                    best = max(near + [tp.get("limit_bytes_per_s") or 0])
                    key = f"{mode}_{link_mode}"
                    r = {"clips": tp["clips"], "bytes_per_s": tp["bytes_per_s"], "limit_bytes_per_s": limit,
                         "utilisation": tp["bytes_per_s"] / limit, "best_ping_bytes_per_s": best,
                         "utilisation_vs_best_ping": tp["bytes_per_s"] / best,
                         "agreement_exact": rep["agreement_exact"]}
                    runs.setdefault(key, []).append(r)
                    print(f"{key} round {rnd}: {r}", file=sys.stderr, flush=True)
                    before = after
    for key, rs in runs.items():
        u = [r["utilisation"] for r in rs]
        b = [r["utilisation_vs_best_ping"] for r in rs]
        out[key] = {"runs": rs, "clips": sum(r["clips"] for r in rs), "utilisation_median": statistics.median(u),
                    "utilisation_min": min(u), "utilisation_max": max(u),
                    "utilisation_vs_best_ping_median": statistics.median(b),
                    "agreement_exact": min(r["agreement_exact"] for r in rs)}
    out["limit_spread_bytes_per_s"] = {"min": min(samples), "median": statistics.median(samples),
                                       "max": max(samples), "measurements": len(samples)}
    return out


def clip_breakdown(elf, tflite, data, clips):
    """Where a clip's time goes, per mode, from host timestamps on every frame: the transfer
    (first chunk written -> last ACK), the wait for the response after the last ACK (the board
    computing, plus the response's trip), the host's own time between a response and the next
    request's first write, the host reference's time (TFLM Python interpreter, and the host
    front end in audio mode) measured in this process, and the board's instruction counts.
    One request at a time (pipelined=False) and pipelined, the limit measured between them."""
    import statistics

    from dsmn_host.data import features
    from dsmn_host.data.int8io import prepare_input
    from dsmn_host.deploy import modelcard
    from dsmn_host.link import evaluate, evalrun
    from dsmn_host.target import frontend, protocol
    from dsmn_host.target.emulate import Emulator

    cache = features.open_features(data)
    rows = evaluate.select_clips(cache, limit=clips, stratify=True).rows
    card_path = modelcard.card_paths(tflite)["json"]
    ref = evalrun.HostReference(modelcard.card_model(card_path, modelcard.read_card(card_path)))
    out = {"clips": len(rows), "limit_bytes_per_s": []}
    with Emulator(elf) as emu:
        for pipelined in (False, True):
            events = []
            with protocol.Session.open(emu.url, log=lambda m: events.append((time.monotonic(), m)),
                                       pipelined=pipelined) as s:
                hz = evaluate.systick_hz(s.hello)
                p = bytes((i * 37) & 0xFF for i in range(s.hello.max_message))
                t = time.monotonic()
                s.ping(p, window=evaluate.LIMIT_WINDOW)
                out["limit_bytes_per_s"].append(len(p) / (time.monotonic() - t))
                for mode in ("features", "audio"):
                    items = []
                    for row in rows:
                        t0 = time.monotonic()
                        q = prepare_input(evalrun.np_logmel(cache, row), s.hello.input_scale, s.hello.input_zero_point)
                        ref(q)
                        host = {"reference_s": time.monotonic() - t0}
                        if mode == "audio":
                            t0 = time.monotonic()
                            pcm = evaluate.clip_pcm(cache, row)
                            ref(frontend.reference_input(pcm, s.hello.input_scale, s.hello.input_zero_point))
                            host["reference_s"] += time.monotonic() - t0
                            body = protocol.encode_audio(row, pcm)
                            items.append((row, pcm, (protocol.AUDIO, body), host))
                        else:
                            items.append((row, q, (protocol.INFER, protocol.encode_infer(row, q.tobytes())), host))
                    recs = []
                    for i, (row, x, _, host) in enumerate(items):
                        follow = items[i + 1][2] if i + 1 < len(items) else None
                        del events[:]
                        t_call = time.monotonic()
                        r = s.audio(row, x, follow=follow) if mode == "audio" else s.infer(row, x, follow=follow)
                        t_ret = time.monotonic()
                        own = [(t, m) for t, m in events if m.startswith("tx ") and "(ahead)" not in m]
                        ids = {m.split("id=")[1].split()[0] for _, m in own}
                        acks = [t for t, m in events if m.startswith("rx ACK") and m.split("id=")[1].split()[0] in ids]
                        last_ack = acks[-1] if acks else t_call
                        rx_resp = [t for t, m in events if m.startswith("rx ") and "RESULT" in m]
                        recs.append({"call_s": t_ret - t_call,
                                     "transfer_s": last_ack - t_call,
                                     "wait_after_last_ack_s": (rx_resp[-1] if rx_resp else t_ret) - last_ack,
                                     "first_write_after_call_s": (own[0][0] - t_call) if own else 0.0,
                                     "host_reference_s": host["reference_s"],
                                     "network_instructions": round(r.counter * 1e9 / hz),
                                     "frontend_instructions": round(getattr(r, "frontend_counter", 0) * 1e9 / hz)})
                    key = f"{mode}_{'pipelined' if pipelined else 'one_at_a_time'}"
                    out[key] = {"per_clip": recs, "median": {k: statistics.median(r[k] for r in recs) for k in recs[0]},
                                "sent_ahead_chunks": s.stats["sent_ahead_chunks"]}
                    print(key, out[key]["median"], file=sys.stderr, flush=True)
                t = time.monotonic()
                s.ping(p, window=evaluate.LIMIT_WINDOW)
                out["limit_bytes_per_s"].append(len(p) / (time.monotonic() - t))
    return out


def link_only(elf, tflite, data, clips, out_path, reps=1, line_baud=None):
    """--only-link: re-measure the link rows (or, with a paced line, the link_paced rows) into an
    existing result file."""
    out = Path(out_path)
    old = json.loads(out.read_text()) if out.is_file() else {}
    key = "link_paced" if line_baud else "link"
    old[key] = link_runs(elf, tflite, data, clips, Path(tempfile.mkdtemp(prefix="bench_frontend_link_")), reps,
                         line_baud)
    old[f"{key}_date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_result(old, out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tflite", help="int8 model (default: the shipped models/model1)")
    ap.add_argument("--data", required=True, help="TAU22-layout data directory or its feature cache")
    ap.add_argument("--clips", type=int, default=4, help="clips per eval (link) run (default 4)")
    ap.add_argument("--reps", type=int, default=3, help="rounds of the link runs (default 3)")
    ap.add_argument("--skip-ram", action="store_true", help="do not build for every board")
    ap.add_argument("--only-agreement", action="store_true",
                    help="only the host-build element agreement over the evaluate split (merged into --out)")
    ap.add_argument("--only-breakdown", action="store_true",
                    help="only the per-clip time breakdown (qemu-an386 audio firmware built here), merged into --out")
    ap.add_argument("--only-builds", action="store_true",
                    help="only RAM of both modes per board and the instruction counts and real-time factors "
                         "(from those builds), merged into --out")
    ap.add_argument("--only-link", action="store_true",
                    help="only the link runs (qemu-an386 audio firmware built here), merged into --out")
    ap.add_argument("--line-baud", type=int,
                    help="with --only-link: reach the board through a line paced at this baud (8N1) instead "
                         "of QEMU's own, whose rate swings 8-24 KB/s (written as link_paced)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "frontend.json"))
    args = ap.parse_args(argv)

    from dsmn_host.data import features
    from dsmn_host.link import evaluate
    from dsmn_host.target.firmware import DEFAULT_MODEL

    tflite = Path(args.tflite or DEFAULT_MODEL)
    work = Path(tempfile.mkdtemp(prefix="bench_frontend_"))
    cache = features.open_features(args.data)
    clips = evaluate.select_clips(cache, limit=1)
    pcm = evaluate.clip_pcm(cache, clips.rows[0])
    result = {"benchmark": "frontend", "model": str(tflite), "clip": clips.filename[clips.rows[0]],
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "host": {"python": platform.python_version(), "machine": platform.machine(),
                       "note": "wall-clock rates were measured on a shared, loaded 2-core machine"}}
    if args.only_builds:
        old = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
        builds(old, tflite, work, pcm)
        old["builds_date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return write_result(old, args.out)
    if args.only_link or args.only_breakdown:
        from dsmn_host.target.firmware import build_firmware

        elf = build_firmware(tflite=tflite, board="qemu-an386", out=work / "qemu-an386-audio", quiet=True)["elf"]
        if args.only_link:
            return link_only(elf, tflite, cache.path, args.clips, args.out, args.reps, args.line_baud)
        old = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
        old["clip_breakdown"] = clip_breakdown(elf, tflite, cache.path, args.clips)
        old["clip_breakdown_date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return write_result(old, args.out)
    card = json.loads(Path(str(tflite).replace(".tflite", ".card.json")).read_text())
    agreement = native_agreement(cache, "fold1_evaluate", card["input"]["scale"], card["input"]["zero_point"], work)
    print("agreement", agreement, file=sys.stderr, flush=True)
    if args.only_agreement:
        out = Path(args.out)
        old = json.loads(out.read_text()) if out.is_file() else {}
        old["agreement_evaluate_split"] = agreement
        out.write_text(json.dumps(old, indent=1) + "\n")
        return
    result["agreement_evaluate_split"] = agreement
    an386 = builds(result, tflite, work, pcm, skip_ram=args.skip_ram)
    if an386:
        result["link"] = link_runs(an386, tflite, cache.path, args.clips, work, args.reps)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
