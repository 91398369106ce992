"""Time to flash + verify + first HELLO over GDB, on QEMU's GDB stub (a blank, halted board).

    python3 benchmarks/bench_flash.py [--tflite M_int8.tflite] [--boards qemu-an386,qemu-an500] [--repeat 5]

Builds the native firmware of the model (default: the shipped models/model1) for each board,
then `repeat` times: a blank QEMU (`dsmn-host emulate --wait-for-flash`), `dsmn-host flash
--probe gdb://... --port PTY` (gdb-multiarch load, compare-sections + read-back, reset, banner
and HELLO, model sha256 against the card). Writes benchmarks/results/flash.json: per board the
image size and the median/min/max seconds of write + read-back verify (one gdb session),
reset (another), and start of the command to the HELLO. These
are wall-clock seconds on whatever machine runs it (the load average is recorded with them);
QEMU's stub takes bytes far faster than an SWD probe, so on a board the write dominates.
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tflite", help="int8 model (default: the shipped models/model1)")
    ap.add_argument("--boards", default="qemu-an386,qemu-an500")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "flash.json"))
    args = ap.parse_args(argv)

    from dsmn_host.target.emulate import Emulator, free_port
    from dsmn_host.target.firmware import DEFAULT_MODEL, build_firmware
    from dsmn_host.target.flash import flash_firmware
    from dsmn_host.deploy.modelcard import card_paths

    tflite = Path(args.tflite or DEFAULT_MODEL)
    work = Path(tempfile.mkdtemp(prefix="bench_flash_"))
    out = {"model": tflite.name, "repeat": args.repeat, "machine": platform.machine(),
           "loadavg_start": os.getloadavg(), "boards": {}}
    for name in args.boards.split(","):
        rep = build_firmware(tflite=tflite, board=name, out=work / name, quiet=True)
        runs = []
        for _ in range(args.repeat):
            with Emulator(None, board=name, gdb_port=free_port()) as emu:
                r = flash_firmware(rep["elf"], probe=emu.probe, port=emu.url, card=card_paths(tflite)["json"],
                                   log=lambda m: None)
            assert r["model_checked"] and r["model_sha256"] == rep["model_sha256"]
            runs.append(dict(r["steps"], hello_s=r["seconds_to_hello"]))
            time.sleep(0.2)

        def stats(key):
            v = [x[key] for x in runs]
            return {"median": round(statistics.median(v), 3), "min": min(v), "max": max(v)}

        out["boards"][name] = {"image_bytes": r["bytes"], "verify": r["verify"],
                               **{k: stats(k) for k in ("write_verify_s", "reset_s", "hello_s")}}
        print(name, json.dumps(out["boards"][name]), flush=True)
    out["loadavg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
