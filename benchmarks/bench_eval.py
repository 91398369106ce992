"""Eval harness throughput on QEMU: clips/s against the link's limit, 1..N emulated boards.

    python3 benchmarks/bench_eval.py --tflite M_int8.tflite --data DATA_OR_CACHE [--boards 2] [--limit N]

Builds the native firmware for the model (qemu-an386), starts N QEMUs, runs `dsmn-host eval`
over the evaluate split (all boards into one journal) and writes benchmarks/results/bench_eval.json:
clips/s, message bytes/s, the link limit measured by a PING of one input's size on each board
(stop-and-wait chunks included, so it is the most this protocol can move), the ratio of the two,
and the accuracy/agreement of the run so a fast-but-wrong harness cannot look good.
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tflite", help="int8 model (default: the shipped models/model1)")
    ap.add_argument("--data", required=True, help="TAU22-layout data directory or feature cache")
    ap.add_argument("--boards", type=int, default=1, help="emulated boards in parallel")
    ap.add_argument("--limit", type=int, help="clips (stratified); default the whole evaluate split")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_eval.json"))
    ap.add_argument("--report-dir", help="keep the eval report here (default: a temporary directory)")
    args = ap.parse_args(argv)

    from dsmn_host.link import evaluate
    from dsmn_host.target.emulate import Emulator
    from dsmn_host.target.firmware import DEFAULT_MODEL, build_firmware
    from dsmn_host.deploy.modelcard import card_paths

    tflite = Path(args.tflite or DEFAULT_MODEL)
    work = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    t = time.monotonic()
    fw = build_firmware(tflite=tflite, out=work / "fw", quiet=True)
    build_s = time.monotonic() - t
    report_dir = Path(args.report_dir) if args.report_dir else work / "eval"
    emus = [Emulator(fw["elf"]).start() for _ in range(args.boards)]
    try:
        t = time.monotonic()
        rep = evaluate.run_eval([e.url for e in emus], source=args.data, limit=args.limit,
                                stratify=args.limit is not None, card_path=card_paths(tflite)["json"],
                                out_dir=report_dir, resume=False, baud=115200,
                                log=lambda m: print(f"eval: {m}", file=sys.stderr, flush=True))
        wall = time.monotonic() - t
    finally:
        for e in emus:
            e.stop()
    tp = rep["throughput"]
    lat = rep["latency"].get("instructions") or rep["latency"].get("cycles") or {}
    result = {
        "benchmark": "eval_harness_qemu",
        "model": str(tflite),
        "board": "qemu-an386", "runtime": "native", "boards": args.boards,
        "clips": rep["n_clips"],
        "wall_seconds_including_handshake_and_ping": wall,
        "clips_per_s": tp["clips_per_s"],
        "message_bytes_per_s": tp.get("bytes_per_s"),
        "link_limit_bytes_per_s": tp.get("limit_bytes_per_s"),
        "link_limit_clips_per_s": tp.get("limit_clips_per_s"),
        "link_utilisation": tp.get("link_utilisation"),
        "instructions_per_inference_mean": lat.get("mean"),
        "accuracy": rep["accuracy"],
        "agreement_exact": rep["agreement_exact"],
        "firmware_flash_bytes": fw.get("flash_bytes"), "firmware_ram_bytes": fw.get("ram_bytes"),
        "firmware_build_seconds": build_s,
        "report_dir": str(report_dir),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "note": "QEMU UART speed does not depend on --baud; the limit is measured with PING on each board",
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
