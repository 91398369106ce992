"""TFLite-Micro as a dependency: the source tree (`dsmn-host tflm-tree`), which of its sources a
model needs, and the static library built from them once per core and reused.

A TFLM tree holds ~320 sources (every kernel, `signal/`); compiling them all takes ~14 minutes
at 2 jobs and one of them (resize_nearest_neighbor) does not even assemble for Cortex-M55 with
Debian's GCC 12. A model needs the framework plus the kernels of its own ops, which the op
resolver already names, so that is what we compile. The library is keyed by everything that
changes its bytes (core flags, sources, flags, compiler, tree) and cached: a second firmware
for the same core and ops only compiles our app and links.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from dsmn_host.errors import DsmnError

ROOT = Path(__file__).resolve().parents[3]
LIB_PROJECT = ROOT / "firmware" / "tflm"
MICRO = Path("tensorflow/lite/micro")
KERNELS = MICRO / "kernels"
CREATE_TREE = Path("tensorflow/lite/micro/tools/project_generation/create_tflm_tree.py")
# The options our tflm.cmake expects of a tree (the CMSIS-NN kernels, a Cortex-M target; the
# core itself is chosen when the library is compiled, not here).
TREE_MAKEFILE_OPTIONS = "TARGET=cortex_m_generic OPTIMIZED_KERNEL_DIR=cmsis_nn TARGET_ARCH=cortex-m4+fp"

# Framework sources a firmware never runs: test and mock helpers, the recording allocator.
_NOT_FRAMEWORK = re.compile(r"(_test\.cc$|/examples/|/benchmarks/|/tools/|/python/|/testing/|"
                            r"test_helpers\.cc$|test_helper_custom_ops\.cc$|mock_micro_graph\.cc$|"
                            r"fake_micro_context\.cc$|recording_[a-z_]+\.cc$|/kernels/kernel_runner\.cc$)")
# Kernel files every op's kernel calls into.
KERNEL_SUPPORT = ("kernel_util.cc",)


def check_tree(tflm_dir):
    """The tree as a resolved Path, or a one-line error naming what is missing."""
    d = Path(tflm_dir)
    if not (d / MICRO / "micro_interpreter.h").is_file():
        raise DsmnError(f"{tflm_dir}: not a TFLM source tree (no {MICRO}/micro_interpreter.h); make one with "
                        "`dsmn-host tflm-tree --tflite-micro CHECKOUT --out DIR`")
    if not (d / KERNELS / "cmsis_nn").is_dir() or not (d / "third_party" / "cmsis_nn").is_dir():
        raise DsmnError(f"{tflm_dir}: TFLM tree without the CMSIS-NN kernels ({KERNELS}/cmsis_nn); make it with "
                        f"OPTIMIZED_KERNEL_DIR=cmsis_nn (`dsmn-host tflm-tree` does)")
    return d.resolve()


def default_tree():
    """DSMN_TFLM_DIR, else ../shared/tflm beside the repository, else None."""
    env = os.environ.get("DSMN_TFLM_DIR")
    if env:
        return Path(env)
    shared = ROOT.parent / "shared" / "tflm"
    return shared if (shared / MICRO / "micro_interpreter.h").is_file() else None


def kernel_sources(tree, op_names):
    """{op: [kernel sources relative to the tree]}: the file that defines Register_OP (the CMSIS-NN
    one where there is one) plus its `_common.cc` partner."""
    tree = Path(tree)
    found = {}
    dirs = [tree / KERNELS / "cmsis_nn", tree / KERNELS]
    texts = {}
    for d in dirs:
        for f in sorted(d.glob("*.cc")):
            texts[f] = f.read_text(errors="replace")
    for op in op_names:
        pat = re.compile(r"\bRegister_" + re.escape(op) + r"\s*\(\s*\)\s*\{")
        hit = next((f for f in texts if pat.search(texts[f])), None)
        if hit is None:
            raise DsmnError(f"{tree}: no kernel defines Register_{op}() (op {op} is not in this TFLM tree)")
        files = [hit]
        common = tree / KERNELS / (hit.stem + "_common.cc")
        if common.is_file():
            files.append(common)
        found[op] = [str(f.relative_to(tree)) for f in files]
    return found


def library_sources(tree, op_names):
    """Every source of the model's TFLM library, relative to the tree, sorted: the framework, the
    kernel support, the op kernels and CMSIS-NN (C, whose unused functions the linker drops)."""
    tree = Path(tree)
    out = set()
    for f in (tree / "tensorflow").rglob("*.cc"):
        rel = str(f.relative_to(tree))
        if rel.startswith(str(KERNELS) + "/") or _NOT_FRAMEWORK.search("/" + rel):
            continue
        out.add(rel)
    out.update(str(KERNELS / k) for k in KERNEL_SUPPORT)
    for files in kernel_sources(tree, op_names).values():
        out.update(files)
    for f in (tree / "third_party" / "cmsis_nn" / "Source").rglob("*.c"):
        out.add(str(f.relative_to(tree)))
    return sorted(out)


def _compiler_id(prefix):
    try:
        return subprocess.run([prefix + "g++", "--version"], capture_output=True, text=True,
                              check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError) as e:
        raise DsmnError(f"{prefix}g++ not usable ({e}); run scripts/bootstrap.sh") from None


def _tree_id(tree):
    prov = tree / "PROVENANCE.txt"
    stamp = prov.read_text() if prov.is_file() else str((tree / MICRO / "micro_interpreter.cc").stat().st_mtime_ns)
    return hashlib.sha256(f"{tree}\n{stamp}".encode()).hexdigest()


def library_key(tree, cpu_flags, sources, toolchain_text, prefix):
    """What decides the library's bytes; two builds with the same key share one libtflm.a."""
    h = hashlib.sha256()
    for part in (json.dumps(list(cpu_flags)), "\n".join(sources), toolchain_text,
                 (LIB_PROJECT / "tflm.cmake").read_text(), (LIB_PROJECT / "CMakeLists.txt").read_text(),
                 _compiler_id(prefix), _tree_id(tree)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def cmsis_nn_paths(tree, cpu_flags, prefix):
    """Which CMSIS-NN code paths these core flags compile in: what arm_nn_math_types.h defines
    (ARM_MATH_MVEI: Helium/MVE; ARM_MATH_DSP: the DSP-extension SIMD; neither: plain C)."""
    hdr = Path(tree) / "third_party" / "cmsis_nn" / "Include" / "arm_nn_math_types.h"
    proc = subprocess.run([prefix + "gcc", *cpu_flags, "-dM", "-E", "-x", "c", "-"], capture_output=True,
                          text=True, input=f'#include "{hdr}"\n')
    if proc.returncode != 0:
        raise DsmnError(f"could not preprocess {hdr}: {proc.stderr.strip()[-300:]}")
    defs = set(re.findall(r"#define (ARM_MATH_\w+) ", proc.stdout))
    paths = "MVE (Helium)" if "ARM_MATH_MVEI" in defs else "DSP (SIMD)" if "ARM_MATH_DSP" in defs else "C (no SIMD)"
    return {"paths": paths, "ARM_MATH_MVEI": "ARM_MATH_MVEI" in defs, "ARM_MATH_DSP": "ARM_MATH_DSP" in defs}


def build_library(tree, op_names, cpu_flags, toolchain_file, cache_dir, jobs=2, run=None):
    """Path to libtflm.a for these ops and core flags, compiled now or taken from the cache.

    The finished library is moved into place only after a complete build, so an interrupted
    build is never taken for a finished one; its half-built objects are reused next time.
    """
    tree = check_tree(tree)
    sources = library_sources(tree, op_names)
    toolchain_text = Path(toolchain_file).read_text()
    toolchain_text = "\n".join(l for l in toolchain_text.splitlines() if not l.startswith("#"))
    prefix = re.search(r'CMAKE_C_COMPILER "([^"]*)gcc"', toolchain_text).group(1)
    key = library_key(tree, cpu_flags, sources, toolchain_text, prefix)
    cache_dir = Path(cache_dir).resolve()
    slug = re.sub(r"[^\w.+-]", "", next((f.split("=", 1)[1] for f in cpu_flags if f.startswith("-mcpu=")), "cpu"))
    final = cache_dir / f"{slug}-{key}"
    lib = final / "libtflm.a"
    if lib.is_file():
        return lib, {"key": key, "cached": True, "sources": len(sources)}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DsmnError(f"{cache_dir}: cannot create the TFLM library cache ({e.strerror})") from None
    work = cache_dir / f"build-{slug}-{key}"
    work.mkdir(exist_ok=True)
    shutil.copyfile(toolchain_file, work / "arm-none-eabi.cmake")
    lines = ["set(DSMN_TFLM_SOURCES"] + [f'  "{tree / s}"' for s in sources] + [")"]
    (work / "sources.cmake").write_text("# TFLM sources for this model's ops; written by dsmn-host\n"
                                        + "\n".join(lines) + "\n")
    run = run or _run
    run(["cmake", "-S", str(LIB_PROJECT), "-B", str(work), "-G", "Unix Makefiles",
         f"-DCMAKE_TOOLCHAIN_FILE={work / 'arm-none-eabi.cmake'}", f"-DDSMN_TFLM_DIR={tree}",
         f"-DDSMN_TFLM_SOURCES_FILE={work / 'sources.cmake'}", "-DCMAKE_BUILD_TYPE="],
        what="TFLM library configure")
    run(["cmake", "--build", str(work), "-j", str(jobs)], what="TFLM library build")
    final.mkdir(exist_ok=True)
    tmp = final / f".libtflm.a.{os.getpid()}"
    shutil.copyfile(work / "libtflm.a", tmp)
    (final / "key.json").write_text(json.dumps({"cpu_flags": list(cpu_flags), "ops": sorted(op_names),
                                                "tree": str(tree), "sources": sources}, indent=1) + "\n")
    os.replace(tmp, lib)
    return lib, {"key": key, "cached": False, "sources": len(sources)}


def _run(cmd, what):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        raise DsmnError(f"{what} failed ({' '.join(map(str, cmd[:3]))} ...):\n{tail}")
    return proc


# -- dsmn-host tflm-tree -----------------------------------------------------------------------

def make_tree(checkout, out, python=None):
    """Run the checkout's create_tflm_tree.py with the options tflm.cmake expects, into `out`."""
    checkout = Path(checkout)
    script = checkout / CREATE_TREE
    if not script.is_file():
        raise DsmnError(f"{checkout}: not a tflite-micro checkout (no {CREATE_TREE}); "
                        "git clone https://github.com/tensorflow/tflite-micro first")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DsmnError(f"{out}: exists and is not empty; give a new directory")
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    cmd = [python or sys.executable, str(CREATE_TREE), f"--makefile_options={TREE_MAKEFILE_OPTIONS}", str(tmp.resolve())]
    proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise DsmnError(f"create_tflm_tree.py failed in {checkout} (it downloads CMSIS-NN, flatbuffers, ... "
                        f"through TFLM's Makefile on first use):\n{tail}")
    check_tree(tmp)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out


def _cmd_tree(args):
    out = make_tree(args.tflite_micro, args.out)
    n = sum(1 for _ in out.rglob("*.cc"))
    print(f"wrote TFLM tree {out} ({n} C++ sources, CMSIS-NN kernels); "
          f"use it with: dsmn-host build-firmware --runtime tflm --tflm-dir {out}")


def register(subparsers):
    from dsmn_host.clihelp import style

    p = subparsers.add_parser(
        "tflm-tree",
        help="make a TFLite-Micro source tree (CMSIS-NN kernels) from a tflite-micro checkout",
        description="Run the checkout's create_tflm_tree.py with the options build-firmware expects "
                    f"({TREE_MAKEFILE_OPTIONS}) into OUT. The tree is written to OUT.partial and "
                    "renamed when complete.",
        **style("git clone https://github.com/tensorflow/tflite-micro   # then:",
                "dsmn-host tflm-tree --tflite-micro tflite-micro --out tflm",
                "dsmn-host build-firmware --runtime tflm --tflm-dir tflm"),
    )
    p.add_argument("--tflite-micro", required=True, metavar="CHECKOUT", help="a tflite-micro git checkout")
    p.add_argument("--out", required=True, metavar="DIR", help="new directory for the tree")
    p.set_defaults(func=_cmd_tree)
