"""On-device front end and audio mode: instructions per clip, RAM of both modes per board, link
utilisation of stop-and-wait against the windowed link, and the real-time factor per board clock.

    python3 benchmarks/bench_frontend.py --data DATA_OR_CACHE [--tflite M] [--clips 4] [--only-link] [--out F.json]

- Instructions: the AUDIO_RESULT counters on QEMU (-icount shift=0: SysTick ticks once per
  1e9/clock instructions), front end and network separately, on each QEMU board.
- RAM: build-firmware's linker-map totals with and without the front end (--no-front-end) for
  every board of boards.BOARDS; a board the model does not fit is recorded with the reason.
- Link: `dsmn-host eval` on qemu-an386, features and audio mode, stop-and-wait (windowed=False)
  and windowed, each against the limit measured next to it: the best PING of the largest message
  (board window or 32 chunks in flight) just before and just after the run, and eval's own.
  Wall-clock: the machine was shared and loaded.
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


def instructions(elf, board, pcm):
    from dsmn_host.link import evaluate
    from dsmn_host.target import protocol
    from dsmn_host.target.emulate import Emulator

    with Emulator(elf, board=board) as emu, protocol.Session.open(emu.url, response_timeout=600) as s:
        r = s.audio(0, pcm)
        k = 1e9 / evaluate.systick_hz(s.hello)  # QEMU's SysTick clock, not the firmware's idea of it
        return {"frontend_instructions": round(r.frontend_counter * k), "network_instructions": round(r.counter * k),
                "clock_hz": s.hello.core_clock_hz}


def _ping_limit(url, repeats=2):
    """The best of `repeats` PINGs of the largest message with the board's window and with 32
    chunks in flight (bytes/s): what the line carries at most, right now."""
    from dsmn_host.link import evaluate
    from dsmn_host.target import protocol

    with protocol.Session.open(url) as s:
        payload = bytes((i * 37) & 0xFF for i in range(s.hello.max_message))
        rates = {}
        for label, window in (("board_window", None), ("32_in_flight", evaluate.LIMIT_WINDOW), ("stop_and_wait", 1)):
            best = 0
            for _ in range(repeats):
                t = time.monotonic()
                s.ping(payload, window=window)
                best = max(best, len(payload) / (time.monotonic() - t))
            rates[label] = best
    return rates


def link_runs(elf, tflite, data, clips, work):
    """Each eval run against the limit measured next to it: the best PING rate seen just before
    and just after the run (and eval's own one-input PING), so a load change on the shared
    machine between a run and a limit measured minutes earlier cannot read as >100 %."""
    from dsmn_host.link import evaluate
    from dsmn_host.target.emulate import Emulator
    from dsmn_host.deploy.modelcard import card_paths

    out = {}
    with Emulator(elf) as emu:
        before = _ping_limit(emu.url)
        out["ping_bytes_per_s"] = before
        for mode in ("features", "audio"):
            for windowed in (False, True):
                d = work / f"eval-{mode}-{'win' if windowed else 'saw'}"
                rep = evaluate.run_eval([emu.url], source=data, limit=clips, stratify=True,
                                        card_path=card_paths(tflite)["json"], out_dir=d, baud=115200,
                                        log=lambda m: None, input_mode=mode, check_input=False,
                                        windowed=windowed)
                after = _ping_limit(emu.url)
                tp = rep["throughput"]
                limit = max(before["board_window"], before["32_in_flight"], after["board_window"],
                            after["32_in_flight"], tp.get("limit_bytes_per_s") or 0)
                key = f"{mode}_{'windowed' if windowed else 'stop_and_wait'}"
                out[key] = {"clips": tp["clips"], "bytes_per_s": tp["bytes_per_s"], "limit_bytes_per_s": limit,
                            "utilisation": tp["bytes_per_s"] / limit, "agreement_exact": rep["agreement_exact"]}
                print(f"{key}: {out[key]}", file=sys.stderr, flush=True)
                before = after
    return out


def link_only(elf, tflite, data, clips, out_path):
    """--only-link: re-measure the link rows into an existing result file."""
    out = Path(out_path)
    old = json.loads(out.read_text()) if out.is_file() else {}
    old["link"] = link_runs(elf, tflite, data, clips, Path(tempfile.mkdtemp(prefix="bench_frontend_link_")))
    old["link_date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_result(old, out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tflite", help="int8 model (default: the shipped models/model1)")
    ap.add_argument("--data", required=True, help="TAU22-layout data directory or its feature cache")
    ap.add_argument("--clips", type=int, default=4, help="clips per eval (link) run (default 4)")
    ap.add_argument("--skip-ram", action="store_true", help="do not build for every board")
    ap.add_argument("--only-agreement", action="store_true",
                    help="only the host-build element agreement over the evaluate split (merged into --out)")
    ap.add_argument("--only-link", action="store_true",
                    help="only the link runs (qemu-an386 audio firmware built here), merged into --out")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "frontend.json"))
    args = ap.parse_args(argv)

    from dsmn_host.data import features
    from dsmn_host.link import evaluate
    from dsmn_host.boards import BOARDS
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
    if args.only_link:
        from dsmn_host.target.firmware import build_firmware

        elf = build_firmware(tflite=tflite, board="qemu-an386", out=work / "qemu-an386-audio", quiet=True)["elf"]
        return link_only(elf, tflite, cache.path, args.clips, args.out)
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
    ram = ram_per_board(tflite, work) if not args.skip_ram else {}
    result["boards"] = {k: {m: {kk: vv for kk, vv in v.items() if kk != "elf"} if isinstance(v, dict) else v
                            for m, v in e.items()} for k, e in ram.items()}
    result["instructions"] = {}
    for name in QEMU_BOARDS:
        elf = ram.get(name, {}).get("audio", {}).get("elf")
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
    an386 = ram.get("qemu-an386", {}).get("audio", {}).get("elf")
    if an386:
        result["link"] = link_runs(an386, tflite, cache.path, args.clips, work)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
