"""Build and run code the compiler generated: host gcc, or arm-none-eabi-gcc + QEMU.

Runners, not compiler: they take a generated directory (dsmn_model.c/.h, memory.json) and
produce outputs and instruction counts. Step labels come from memory.json's "steps".
"""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from dsmn_host.compiler.kernels import (ARM_FLAGS, HOST_FLAGS, RUNTIME_DIR, runtime_objects)
from dsmn_host.errors import DsmnError

RUNNER_DIR = RUNTIME_DIR / "runner"



def _kernel_flags(cflags):
    """DSMN_TRACE only changes the generated model and the runners, not the kernels: traced
    builds reuse the cached kernel objects of a normal build."""
    return [f for f in cflags if f != "-DDSMN_TRACE"]


def build_host_runner(gen_dir, exe=None, cflags=()):
    """Compile the generated model + kernels + host runner; returns the executable path."""
    gen_dir = Path(gen_dir)
    exe = Path(exe or gen_dir / "dsmn_runner")
    objs = runtime_objects("gcc", [*HOST_FLAGS, *_kernel_flags(cflags)])
    srcs = [gen_dir / "dsmn_model.c", RUNNER_DIR / "host_runner.c"]
    # -O0 for the generated model and runner only (the kernels above keep HOST_FLAGS): the
    # model file is a long list of kernel calls, and a mel-strip plan's (1.4 MB of C, 5,500
    # calls) takes gcc over 6 minutes at -O1/-O2 but 5 s at -O0; host runs check outputs,
    # never speed.
    cmd = ["gcc", *HOST_FLAGS, "-O0", *cflags, f"-I{gen_dir}", f"-I{RUNTIME_DIR}",
           *map(str, srcs), *map(str, objs), "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise DsmnError(f"host build failed:\n{' '.join(cmd)}\n{r.stderr[-4000:]}")
    return exe


def run_batch(gen_dir, inputs, target="host", timeout=600, trace=False):
    """Run generated code on int8 `inputs` (N x input shape); returns N x output bytes int8.

    `trace`: build with -DDSMN_TRACE (every step's output tensor written as it is computed:
    by the host runner to $DSMN_TRACE_FILE, by the QEMU runner to trace.bin by semihosting)
    and return (outputs, trace bytes)."""
    gen_dir = Path(gen_dir)
    meta = json.loads((gen_dir / "memory.json").read_text())
    inputs = np.ascontiguousarray(inputs, dtype=np.int8)
    n = inputs.shape[0]
    if inputs.size != n * meta["input_bytes"]:
        raise DsmnError(f"inputs have {inputs.size // max(n, 1)} elements per item; the model "
                        f"takes {meta['input_bytes']}")
    cflags = ["-DDSMN_TRACE"] if trace else []
    what = "traced runner" if trace else "runner"
    if target == "host":
        exe = build_host_runner(gen_dir, exe=gen_dir / ("dsmn_runner_trace" if trace else "dsmn_runner"),
                                cflags=cflags)
        with tempfile.TemporaryDirectory() as d:
            fi, fo, ft = Path(d) / "in.bin", Path(d) / "out.bin", Path(d) / "trace.bin"
            inputs.tofile(fi)
            env = dict(os.environ, DSMN_TRACE_FILE=str(ft)) if trace else None
            r = subprocess.run([str(exe), str(fi), str(fo), str(n)], capture_output=True,
                               text=True, timeout=timeout, env=env)
            if r.returncode != 0:
                raise DsmnError(f"{what} failed ({r.returncode}): {r.stderr[-2000:]}")
            out = np.fromfile(fo, dtype=np.int8).reshape(n, meta["output_bytes"])
            trace_bytes = ft.read_bytes() if trace else None
    elif target == "qemu-an386":
        elf = build_qemu_runner(gen_dir, elf=gen_dir / ("dsmn_runner_trace_an386.elf" if trace
                                                        else "dsmn_runner_an386.elf"), cflags=cflags)
        out, stats = run_qemu(elf, inputs, meta["output_bytes"], timeout=timeout,
                              extra_files=("trace.bin",) if trace else ())
        if trace and "trace.bin" not in stats["files"]:
            raise DsmnError("QEMU runner wrote no trace.bin (semihosting file open failed)")
        trace_bytes = stats["files"].get("trace.bin")
    else:
        raise DsmnError(f"unknown target {target!r}; use host or qemu-an386")
    return (out, trace_bytes) if trace else out


QEMU_RUNNER_DIR = RUNTIME_DIR / "qemu_runner"
ARM_OPT = ["-std=c99", "-O2", "-ffunction-sections", "-fdata-sections", "-Wall",
           "-Wno-unused-const-variable"]


def build_qemu_runner(gen_dir, elf=None, cflags=()):
    """Cross-compile the generated model + kernels + semihosting runner for mps2-an386."""
    gcc = shutil.which("arm-none-eabi-gcc")
    if not gcc:
        raise DsmnError("arm-none-eabi-gcc not found (run scripts/bootstrap.sh)")
    gen_dir = Path(gen_dir)
    elf = Path(elf or gen_dir / "dsmn_runner_an386.elf")
    flags = [*ARM_FLAGS, *ARM_OPT, *cflags]
    objs = runtime_objects(gcc, [*ARM_FLAGS, *ARM_OPT, *_kernel_flags(cflags)])
    cmd = [gcc, *flags, f"-I{gen_dir}", f"-I{RUNTIME_DIR}", str(gen_dir / "dsmn_model.c"),
           str(QEMU_RUNNER_DIR / "qemu_runner.c"), *map(str, objs), "-nostartfiles",
           "--specs=nano.specs", "-Wl,--gc-sections", f"-T{QEMU_RUNNER_DIR / 'link.ld'}",
           "-o", str(elf)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise DsmnError(f"arm build failed:\n{' '.join(cmd)}\n{r.stderr[-4000:]}")
    return elf


def run_qemu(elf, inputs, output_bytes, timeout=600, extra_files=()):
    """Run a runner ELF on QEMU mps2-an386 (-icount shift=0); returns (outputs, stats) where
    stats has per-inference instruction counts converted from SysTick ticks, and
    stats["files"] the bytes of each of `extra_files` the runner wrote by semihosting."""
    qemu = shutil.which("qemu-system-arm")
    if not qemu:
        raise DsmnError("qemu-system-arm not found (run scripts/bootstrap.sh)")
    inputs = np.ascontiguousarray(inputs, dtype=np.int8)
    n = inputs.shape[0]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        with open(d / "in.bin", "wb") as f:
            f.write(np.uint32(n).tobytes())
            f.write(inputs.tobytes())
        cmd = [qemu, "-M", "mps2-an386", "-nographic", "-monitor", "none", "-serial", "null",
               "-semihosting-config", "enable=on,target=native", "-icount", "shift=0",
               "-kernel", str(Path(elf).resolve())]
        try:
            r = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise DsmnError(f"QEMU run timed out after {timeout} s") from exc
        if r.returncode != 0:
            raise DsmnError(f"QEMU runner failed (exit {r.returncode}): {r.stderr[-2000:]}")
        out = np.fromfile(d / "out.bin", dtype=np.int8)
        stats_txt = (d / "stats.txt").read_text()
        files = {f: (d / f).read_bytes() for f in extra_files if (d / f).exists()}
    if out.size != n * output_bytes:
        raise DsmnError(f"QEMU runner wrote {out.size} bytes, expected {n * output_bytes}")
    cal_instr, cal_ticks, ticks, steps = 0, 0, [], {}
    for line in stats_txt.splitlines():
        parts = line.split()
        if parts[0] == "calibration_instructions":
            cal_instr, cal_ticks = int(parts[1]), int(parts[2])
        elif parts[0] == "ticks":
            ticks.append(int(parts[1]))
        elif parts[0] == "step":
            steps[int(parts[1])] = int(parts[2])
    per_tick = cal_instr / cal_ticks if cal_ticks else float("nan")
    stats = {"ticks": ticks, "instructions_per_tick": per_tick,
             "instructions": [round(t * per_tick) for t in ticks],
             "calibration": {"instructions": cal_instr, "ticks": cal_ticks},
             "step_instructions": {k: round(v * per_tick / max(n, 1)) for k, v in steps.items()},
             "files": files}
    return out.reshape(n, output_bytes), stats


def step_labels(gen_dir):
    """(label, kernel) of every DSMN_MARK of a generated model, indexed like the step numbers
    a -DDSMN_PROFILE QEMU build reports (run_qemu's stats["step_instructions"]), as the
    compiler recorded them in memory.json."""
    meta = json.loads((Path(gen_dir) / "memory.json").read_text())
    return [(m["label"], m["kernel"]) for m in meta["marks"]]


def profile_qemu(gen_dir, inputs, output_bytes, cflags=()):
    """Per-step and per-kernel instructions of one inference on QEMU (-DDSMN_PROFILE build)."""
    gen_dir = Path(gen_dir)
    elf = build_qemu_runner(gen_dir, elf=gen_dir / "dsmn_runner_profile.elf",
                            cflags=["-DDSMN_PROFILE", *cflags])
    _, stats = run_qemu(elf, inputs, output_bytes)
    labels = step_labels(gen_dir)
    steps = [{"step": k, "op": labels[k][0] if k < len(labels) else "?",
              "kernel": labels[k][1] if k < len(labels) else "?", "instructions": n}
             for k, n in sorted(stats["step_instructions"].items())]
    per_kernel = {}
    for st in steps:
        per_kernel[st["kernel"]] = per_kernel.get(st["kernel"], 0) + st["instructions"]
    per_kernel = dict(sorted(per_kernel.items(), key=lambda kv: -kv[1]))
    return {"instructions": stats["instructions"], "per_kernel": per_kernel, "steps": steps}


