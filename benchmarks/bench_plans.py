"""Benchmark the compiler's time-tiled plans; writes benchmarks/plans.json and prints the README
table. For model1 (shipped): the trade-off table - activation arena, total firmware RAM on
qemu-stm32f405 (arena + the app's buffers and stack, as build-firmware estimates them),
the planner's instruction estimate, and measured instructions per inference on QEMU
mps2-an386 (-icount shift=0, DSP build) - each plan checked bit-exact with the TFLM
interpreter; qemu-stm32f405 firmware built at the default plan, a 64 KiB arena and the min plan, each
one's RAM and flash read from the linker map and its instructions per inference measured over
protocol v1 INFER. For models 2-4 (random
seeded weights, exported and converted as the pipeline does, calibrated on a synthetic set):
the arena at both plan ends and which boards each fits. Usage:
    python3 benchmarks/bench_plans.py [--no-variants] [--no-firmware]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
BOARDS = ["qemu-stm32f405", "nucleo-f446re", "nucleo-f429zi", "nucleo-h743zi2", "qemu-an386"]


def fits(report_peak, card, boards):
    from dsmn_host.boards import get_board
    from dsmn_host.target.firmware import default_ram_budget, other_ram_bytes
    out = {}
    for name in boards:
        b = get_board(name)
        out[name] = report_peak <= default_ram_budget(b, other_ram_bytes(card, b))
    return out


def text_bytes(elf):
    """.text + .data of the QEMU runner ELF (arm-none-eabi-size): what goes to flash."""
    import subprocess
    out = subprocess.run(["arm-none-eabi-size", str(elf)], capture_output=True, text=True, check=True)
    text, data = out.stdout.splitlines()[1].split()[:2]
    return int(text) + int(data)


def model1_table(work, xs, ref):
    from dsmn_host.deploy import codegen
    from dsmn_host.boards import get_board
    from dsmn_host.target.firmware import other_ram_bytes

    model = ROOT / "models" / "model1" / "model1_int8.tflite"
    card = json.loads(model.with_name("model1_int8.card.json").read_text())
    probe = codegen.generate(model, work / "probe", plan="min")
    peaks = sorted({p["peak_bytes"] for p in probe["tradeoff"]})
    wanted = [("fast", {"plan": "fast"})]
    for frac in (0.5, 0.25):
        wanted.append((f"budget {peaks[int(len(peaks) * frac)]}", {"ram_budget": peaks[int(len(peaks) * frac)]}))
    # issue 13's arena goal: the cheapest plan within 64 KiB
    wanted.append(("budget 65536", {"ram_budget": 65536}))
    wanted.append(("min", {"plan": "min"}))
    rows = []
    other = other_ram_bytes(card, get_board("qemu-stm32f405"))
    for label, kw in wanted:
        d = work / label.replace(" ", "_")
        rep = codegen.generate(model, d, **kw)
        got = codegen.run_batch(d, xs).reshape(ref.shape)
        elf = codegen.build_qemu_runner(d, elf=d / "dsp.elf")
        out, stats = codegen.run_qemu(elf, xs[:2], rep["output_bytes"])
        rows.append({
            "plan": label, "peak_bytes": rep["peak_activation_bytes"],
            "mel_strips": sorted({u["strips"] for u in rep["units"] if u["tiled"]}),
            "total_ram_stm32f405_bytes": rep["peak_activation_bytes"] + other,
            "estimated_instructions": rep["estimated_instructions"],
            "an386_instructions": int(np.mean(stats["instructions"])),
            "flash_bytes": rep["flash_bytes"],
            # the generated code too (flash_bytes counts const data and the kernels only):
            # strips are unrolled, so this grows with the strip count
            "an386_text_bytes": text_bytes(elf),
            "bit_exact": bool(np.array_equal(got, ref) and np.array_equal(out.reshape(ref[:2].shape), ref[:2])),
            "fits": fits(rep["peak_activation_bytes"], card, BOARDS),
        })
        print(rows[-1], flush=True)
    return rows, probe["tradeoff"]


# qemu-stm32f405 firmwares measured: the default (fastest plan that fits the board), the
# 64 KiB-arena plan, and the min plan; RAM and flash from each build's linker map.
FIRMWARE_PLANS = (("default", {}), ("budget 65536", {"ram_budget": 65536}), ("min", {"plan": "min"}))


def model1_firmware(work, xs, ref, label="default", **choice):
    from dsmn_host.target import firmware, protocol
    from dsmn_host.boards import get_board
    from dsmn_host.target.emulate import Emulator

    model = ROOT / "models" / "model1" / "model1_int8.tflite"
    rep = firmware.build_firmware(tflite=model, board="qemu-stm32f405", out=work / ("fw405_" + label.replace(" ", "_")),
                                  quiet=True, **choice)
    counters = []
    ok = True
    with Emulator(rep["elf"], board="qemu-stm32f405") as emu:
        with protocol.Session.open(emu.url, response_timeout=300) as s:
            # QEMU's SysTick counts the emulated core clock (board.qemu_cpu_hz); HELLO reports
            # the clock the firmware thinks it runs at (the HSI there: QEMU has no RCC model)
            hz = get_board("qemu-stm32f405").qemu_cpu_hz
            hello_hz = s.hello.core_clock_hz
            for i, x in enumerate(xs[:2]):
                r = s.infer(i + 1, x)
                ok &= bool(np.array_equal(np.frombuffer(r.output, np.int8), ref[i].reshape(-1)))
                counters.append(r.counter)
    return {"board": "qemu-stm32f405", "build": label, "plan": rep["native"]["plan"],
            "arena_bytes": rep["ram"]["activations"], "ram_bytes": rep["ram_bytes"],
            "ram": rep["ram"], "board_ram_bytes": rep["board_ram_bytes"], "flash_bytes": rep["flash_bytes"],
            "instructions": int(round(np.mean(counters) * 1e9 / hz)), "systick_hz": hz,
            "hello_core_clock_hz": hello_hz, "bit_exact": ok}


def variants(work):
    import torch

    from dsmn_host.deploy import codegen
    from dsmn_host.data.features import build_cache
    from dsmn_host.deploy.modelcard import build_card
    from dsmn_host.data.synth import write_synthetic_set
    import runtime_support as rs

    torch.set_num_threads(1)
    write_synthetic_set(work / "synth", clips_per_class=9, seed=1234)
    build_cache(work / "synth", work / "synth.features", workers=1, progress=False)
    out = {}
    model1 = ROOT / "models" / "model1" / "model1_int8.tflite"
    for name in ("model1", "model2", "model3", "model4"):
        path = model1 if name == "model1" else rs.random_variant_tflite(name, work / "synth.features", work)
        card = build_card(path) if name != "model1" else json.loads(
            model1.with_name("model1_int8.card.json").read_text())
        buf = path.read_bytes()
        xs = rs.random_inputs(buf, 2, seed=5)
        ref = rs.tflm_run(buf, xs)
        entry = {}
        for plan in ("fast", "min"):
            rep = codegen.generate(path, work / f"{name}_{plan}", plan=plan)
            got = codegen.run_batch(work / f"{name}_{plan}", xs).reshape(ref.shape)
            entry[plan] = {"peak_bytes": rep["peak_activation_bytes"],
                           "estimated_instructions": rep["estimated_instructions"],
                           "bit_exact": bool(np.array_equal(got, ref)),
                           "fits": fits(rep["peak_activation_bytes"], card, BOARDS)}
        out[name] = entry
        print(name, entry, flush=True)
    return out


def readme_table(res):
    lines = ["| model1 plan | mel strips | arena (B) | total RAM on stm32f405 (B) | an386 instructions | "
             "an386 text (B) | bit-exact | fits |",
             "|---|---|---:|---:|---:|---:|:-:|---|"]
    fast = res["model1_plans"][0]["an386_instructions"]
    for r in res["model1_plans"]:
        lines.append(f"| {r['plan']} | {', '.join(map(str, r['mel_strips'])) or '-'} | {r['peak_bytes']:,} | "
                     f"{r['total_ram_stm32f405_bytes']:,} | "
                     f"{r['an386_instructions'] / 1e6:.2f} M ({r['an386_instructions'] / fast:.2f}x) | "
                     f"{r['an386_text_bytes']:,} | {'yes' if r['bit_exact'] else 'NO'} | "
                     f"{', '.join(b for b, ok in r['fits'].items() if ok)} |")
    if res.get("model1_firmware_stm32f405"):
        lines += ["", "| qemu-stm32f405 firmware | arena (B) | RAM, link map (B) | flash (B) | instructions | bit-exact |",
                  "|---|---:|---:|---:|---:|:-:|"]
        for r in res["model1_firmware_stm32f405"]:
            lines.append(f"| {r['build']} | {r['arena_bytes']:,} | {r['ram_bytes']:,} | {r['flash_bytes']:,} | "
                         f"{r['instructions'] / 1e6:.2f} M | {'yes' if r['bit_exact'] else 'NO'} |")
    if res.get("variants"):
        lines += ["", "| model | arena fast (B) | arena min (B) | fits at min |", "|---|---:|---:|---|"]
        for name, e in res["variants"].items():
            lines.append(f"| {name} | {e['fast']['peak_bytes']:,} | {e['min']['peak_bytes']:,} | "
                         f"{', '.join(b for b, ok in e['min']['fits'].items() if ok)} |")
    return "\n".join(lines)


def main():
    import runtime_support as rs

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "plans.json"))
    ap.add_argument("--no-variants", action="store_true",
                    help="do not re-measure models 2-4 (their rows are kept from --out, with their date)")
    ap.add_argument("--no-firmware", action="store_true")
    args = ap.parse_args()
    model = ROOT / "models" / "model1" / "model1_int8.tflite"
    buf = model.read_bytes()
    xs = rs.random_inputs(buf, 2, seed=3)
    ref = rs.tflm_run(buf, xs)
    res = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "note": "instructions: QEMU -icount shift=0 (an386: semihosting runner, DSP build; "
                   "stm32f405: firmware over protocol v1). Machine shared and loaded; no timings."}
    with tempfile.TemporaryDirectory(prefix="bench_plans_") as d:
        work = Path(d)
        res["model1_plans"], res["model1_tradeoff"] = model1_table(work, xs, ref)
        if not args.no_firmware:
            res["model1_firmware_stm32f405"] = []
            for label, choice in FIRMWARE_PLANS:
                res["model1_firmware_stm32f405"].append(model1_firmware(work, xs, ref, label, **choice))
                print(res["model1_firmware_stm32f405"][-1], flush=True)
        if not args.no_variants:
            res["variants"] = variants(work)
        elif Path(args.out).is_file():   # kept from the run that measured them, saying when
            prev = json.loads(Path(args.out).read_text())
            if "variants" in prev:
                res["variants"] = prev["variants"]
                res["variants_generated_at"] = prev.get("variants_generated_at", prev["generated_at"])
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(readme_table(res))


if __name__ == "__main__":
    main()
