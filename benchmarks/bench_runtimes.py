"""Native vs TFLite-Micro firmware, side by side, on the QEMU boards; writes benchmarks/results/runtimes.json.

For every model × board × runtime it builds the real firmware (`dsmn-host build-firmware`), boots
it in QEMU (-icount shift=0) and measures over protocol v1: instructions per inference (SysTick
under -icount counts 1e9/clock instructions per tick), activation RAM (native: its arena; TFLM:
the tensor arena the firmware reserves, and the bytes TFLM reports using after AllocateTensors),
total RAM (.data + .bss + stack + arena), code flash (everything but the model) and model flash
(weights/params for native, the .tflite flatbuffer for TFLM), from the linker map. The outputs
of the two runtimes are compared bit for bit on the same inputs. A model that does not fit a
board is recorded with build-firmware's reason, not left out.

    nice -n 10 python3 benchmarks/bench_runtimes.py --tflite model2=/path/model2_int8.tflite ... \
        [--tflm-dir ../shared/tflm] [--work build/bench-runtimes] [--markdown]

Models come from models/<name>/<name>_int8.tflite when shipped, else from --tflite NAME=PATH
(models 2–4: `benchmarks/bench_convert.py --keep DIR`, random weights, as for runtime_models1-4.json).
The TFLM library is compiled once per core and op set into WORK/tflm-lib and reused.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def measure(elf, board, xs):
    from dsmn_host.target import protocol
    from dsmn_host.target.emulate import Emulator

    with Emulator(elf, board=board) as emu:
        with protocol.Session.open(emu.url, response_timeout=600) as s:
            h = s.hello
            outs, instr = [], []
            for i, x in enumerate(xs):
                r = s.infer(i, x)
                if r.status != 0:
                    raise RuntimeError(f"{board}: RESULT status {r.status}")
                outs.append(np.frombuffer(r.output, np.int8).copy())
                instr.append(int(round(r.counter * 1e9 / h.core_clock_hz)))
            return {"hello_arena_bytes": h.arena_bytes, "instructions": instr}, np.stack(outs)


def one(model, tflite, board, runtime, work, tflm_dir, xs, cache):
    from dsmn_host.errors import DsmnError
    from dsmn_host.target.firmware import build_firmware

    out = work / f"{model}-{board}-{runtime}"
    try:
        # features-mode firmware (no on-device front end): the two runtimes compared like for like
        rep = build_firmware(tflite=tflite, board=board, runtime=runtime, tflm_dir=tflm_dir, out=out, quiet=True,
                             tflm_cache=cache, front_end=False)
    except DsmnError as e:
        return {"error": str(e).splitlines()[0]}, None
    run, outs = measure(rep["elf"], board, xs)
    act_key = "activations" if runtime == "native" else "arena"
    entry = {
        "instructions_per_inference": int(np.median(run["instructions"])),
        "instructions_all": run["instructions"],
        "activation_ram_bytes": rep["ram"][act_key],
        "total_ram_bytes": rep["ram_bytes"],
        "code_flash_bytes": rep["flash_bytes"] - rep["flash"]["model"],
        "model_flash_bytes": rep["flash"]["model"],
        "flash_bytes": rep["flash_bytes"],
        "runtime_code_bytes": rep["flash"]["runtime"],
        "memory": {"flash": rep["flash"], "ram": rep["ram"]},
    }
    if runtime == "tflm":
        entry["tflm_arena_used_bytes"] = run["hello_arena_bytes"]
        entry["cmsis_nn_paths"] = rep["tflm"]["cmsis_nn"]["paths"]
        entry["tflm_library_sources"] = rep["tflm"]["sources"]
    return entry, outs


def table(results, boards):
    head = ("| model | board | runtime | instructions / inference | activation RAM (B) | total RAM (B) "
            "| code flash (B) | model flash (B) |")
    lines = [head, "|" + "---|" * 8]
    for model, per in results["models"].items():
        for board in boards:
            for rt in ("native", "tflm"):
                e = per.get(board, {}).get(rt)
                if e is None:
                    continue
                if "error" in e:
                    lines.append(f"| {model} | {board} | {rt} | does not fit: {e['error'].split(': ', 1)[-1]} |||||")
                    continue
                name = rt if rt == "native" else f"TFLM ({e['cmsis_nn_paths']})"
                lines.append(f"| {model} | {board} | {name} | {e['instructions_per_inference'] / 1e6:.1f} M "
                             f"| {e['activation_ram_bytes']:,} | {e['total_ram_bytes']:,} | {e['code_flash_bytes']:,} "
                             f"| {e['model_flash_bytes']:,} |")
    return "\n".join(lines)


def main():
    sys.path.insert(0, str(ROOT / "host"))
    from dsmn_host.target import tflm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["model1", "model2", "model3", "model4"])
    ap.add_argument("--tflite", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--boards", nargs="+", default=["qemu-an386", "qemu-an547"])
    ap.add_argument("--tflm-dir", default=None, help="TFLM tree (default DSMN_TFLM_DIR or ../shared/tflm)")
    ap.add_argument("--inputs", type=int, default=2, help="inputs per firmware (default 2)")
    ap.add_argument("--work", default=str(ROOT / "build" / "bench-runtimes"))
    ap.add_argument("--tflm-cache", help="TFLM library cache (default WORK/tflm-lib)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "runtimes.json"))
    ap.add_argument("--markdown", action="store_true", help="print the README table")
    args = ap.parse_args()
    tree = args.tflm_dir or tflm.default_tree()
    if tree is None:
        sys.exit("no TFLM tree: pass --tflm-dir or set DSMN_TFLM_DIR (dsmn-host tflm-tree makes one)")
    paths = dict(kv.split("=", 1) for kv in args.tflite)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(args.tflm_cache or work / "tflm-lib")
    results = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tflm_dir": str(tree),
               "method": "QEMU -icount shift=0, instructions = SysTick ticks x 1e9 / clock; sizes from the "
                         "linker map (memory.json)", "boards": args.boards, "models": {}}
    for model in args.models:
        path = Path(paths.get(model, ROOT / "models" / model / f"{model}_int8.tflite"))
        if not path.is_file():
            results["models"][model] = {"skipped": f"{path} not found"}
            print(f"{model}: skipped ({path} not found)", flush=True)
            continue
        card = json.loads(path.with_name(path.stem + ".card.json").read_text())
        shape = tuple(card["input"]["shape"][1:])
        xs = np.random.default_rng(0).integers(-128, 128, (args.inputs,) + shape).astype(np.int8)
        per = {"tflite": str(path), "sha256": card["sha256"]}
        for board in args.boards:
            per[board] = {}
            outs = {}
            for rt in ("native", "tflm"):
                entry, outs[rt] = one(model, path, board, rt, work, tree, xs, cache)
                per[board][rt] = entry
                print(f"{model} {board} {rt}: " + json.dumps({k: v for k, v in entry.items() if k != "memory"}),
                      flush=True)
            if outs["native"] is not None and outs["tflm"] is not None:
                per[board]["outputs_identical"] = bool(np.array_equal(outs["native"], outs["tflm"]))
            if per[board]["native"].get("instructions_per_inference") and per[board]["tflm"].get(
                    "instructions_per_inference"):
                per[board]["tflm_over_native_instructions"] = round(
                    per[board]["tflm"]["instructions_per_inference"] / per[board]["native"]["instructions_per_inference"], 2)
        results["models"][model] = per
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")  # after every model: a partial run keeps its data
    results["table_markdown"] = table(results, args.boards)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    if args.markdown:
        print(results["table_markdown"])


if __name__ == "__main__":
    main()
