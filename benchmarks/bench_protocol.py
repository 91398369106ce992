"""Protocol v1 and firmware on the QEMU boards: payload throughput host->board (PING), INFER
round trip, instructions per inference, and flash/RAM from each build's memory.json.

    python3 benchmarks/bench_protocol.py [--tflite M] [--boards qemu-an386,...] [--out bench_protocol.json]

Instructions come from the RESULT counter: under -icount shift=0 QEMU's SysTick ticks once per
1e9 / (emulated core clock) instructions, so instructions = ticks * 1e9 / clock (the board table's
qemu_cpu_hz). Wall-clock numbers depend on the host machine and its load; they are recorded
with the host's CPU count so a reader can judge.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def bench_board(board_name, tflite, workdir, ping_bytes, ping_reps, infers):
    from dsmn_host.target import firmware, protocol
    from dsmn_host.boards import get_board
    from dsmn_host.target.emulate import Emulator

    board = get_board(board_name)
    t0 = time.perf_counter()
    report = firmware.build_firmware(tflite=tflite, board=board_name, out=workdir / board_name, quiet=True)
    build_s = time.perf_counter() - t0
    card = json.loads(Path(tflite).with_name(Path(tflite).stem + ".card.json").read_text())
    shape = tuple(card["input"]["shape"][1:])
    rng = np.random.default_rng(0)
    out = {"board": board_name, "build_seconds": round(build_s, 2),
           "flash_bytes": report["flash_bytes"], "ram_bytes": report["ram_bytes"],
           "flash": report["flash"], "ram": report["ram"],
           "board_flash_bytes": report["board_flash_bytes"], "board_ram_bytes": report["board_ram_bytes"]}
    with Emulator(report["elf"], board=board_name) as emu:
        t0 = time.perf_counter()
        with protocol.Session.open(emu.url, response_timeout=300) as s:
            out["handshake_seconds"] = round(time.perf_counter() - t0, 3)
            payload = rng.integers(0, 256, ping_bytes, dtype=np.uint8).tobytes()
            times = []
            for _ in range(ping_reps):
                t0 = time.perf_counter()
                s.ping(payload)
                times.append(time.perf_counter() - t0)
            out["ping_payload_bytes"] = ping_bytes
            out["ping_seconds_median"] = round(float(np.median(times)), 4)
            out["host_to_board_payload_bytes_per_s"] = round(ping_bytes / float(np.median(times)))
            ticks, walls = [], []
            for i in range(infers):
                x = rng.integers(-128, 128, shape).astype(np.int8)
                t0 = time.perf_counter()
                r = s.infer(i, x)
                walls.append(time.perf_counter() - t0)
                ticks.append(r.counter)
            out["counter"] = s.hello.counter
            out["counter_ticks"] = ticks
            out["instructions_per_inference"] = [round(t * 1e9 / board.qemu_cpu_hz) for t in ticks]
            out["infer_round_trip_seconds_median"] = round(float(np.median(walls)), 3)
            out["stats"] = dict(s.stats)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tflite", default=str(ROOT / "models" / "model1" / "model1_int8.tflite"))
    ap.add_argument("--boards", default="qemu-an386,qemu-an547,qemu-stm32f405")
    ap.add_argument("--ping-bytes", type=int, default=16384)
    ap.add_argument("--ping-reps", type=int, default=3)
    ap.add_argument("--infers", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "bench_protocol.json"))
    args = ap.parse_args(argv)
    if not Path(args.tflite).is_file():
        sys.exit(f"{args.tflite}: model not found; pass --tflite")
    results = {"model": args.tflite, "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                                               "python": platform.python_version()},
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "boards": []}
    with tempfile.TemporaryDirectory() as tmp:
        from dsmn_host.errors import DsmnError

        for b in args.boards.split(","):
            try:
                r = bench_board(b, args.tflite, Path(tmp), args.ping_bytes, args.ping_reps, args.infers)
            except DsmnError as exc:  # e.g. the model does not fit this board: record why
                print(json.dumps({"board": b, "refused": str(exc)}), flush=True)
                results["boards"].append({"board": b, "refused": str(exc)})
                continue
            print(json.dumps({k: r[k] for k in ("board", "flash_bytes", "ram_bytes", "instructions_per_inference",
                                                "host_to_board_payload_bytes_per_s",
                                                "infer_round_trip_seconds_median")}), flush=True)
            results["boards"].append(r)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
