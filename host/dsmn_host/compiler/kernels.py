"""The hand-written kernels in firmware/runtime/: where they are, how they are compiled.

Shared by the report (kernel code size) and the runners (host and QEMU builds), so the
object cache and the flags are defined once.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from dsmn_host.errors import DsmnError

ROOT = Path(__file__).resolve().parents[3]
RUNTIME_DIR = ROOT / "firmware" / "runtime"
TEMPLATE_DIR = ROOT / "templates" / "runtime"
ARM_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"]
HOST_FLAGS = ["-std=c99", "-O2", "-Wall", "-Wno-unused-const-variable"]


def runtime_sources():
    """The kernel sources every generated model links against (for CMake and tests)."""
    return sorted(RUNTIME_DIR.glob("*.c"))


def runtime_include_dirs():
    return [RUNTIME_DIR]


def runtime_objects(cc, flags):
    """Kernel objects for compiler `cc` and `flags`, compiled once and cached by content hash,
    so building many generated models only compiles each model's own .c."""
    h = hashlib.sha256(" ".join([cc, *flags]).encode())
    for src in sorted(RUNTIME_DIR.glob("*.[ch]")):
        h.update(src.name.encode())
        h.update(src.read_bytes())
    cache = Path(tempfile.gettempdir()) / f"dsmn_rt_{os.getuid()}_{h.hexdigest()[:16]}"
    objs = [cache / (src.stem + ".o") for src in runtime_sources()]
    if all(o.exists() for o in objs):
        return objs
    tmp = Path(tempfile.mkdtemp(prefix="dsmn_rt_build_"))
    for src, obj in zip(runtime_sources(), objs):
        cmd = [cc, *flags, f"-I{RUNTIME_DIR}", "-c", str(src), "-o", str(tmp / obj.name)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise DsmnError(f"kernel build failed:\n{' '.join(cmd)}\n{r.stderr[-4000:]}")
    try:
        tmp.rename(cache)
    except OSError:  # another process won the race; its objects are identical
        shutil.rmtree(tmp, ignore_errors=True)
    return objs



_CODE_SIZE_CACHE = {}


def runtime_code_bytes_estimate():
    """Text+data of the kernels built for Cortex-M4 (-Os), measured with the real toolchain;
    None when arm-none-eabi-gcc is not installed."""
    gcc = shutil.which("arm-none-eabi-gcc")
    size = shutil.which("arm-none-eabi-size")
    if not gcc or not size:
        return None
    objs = runtime_objects(gcc, [*ARM_FLAGS, "-std=c99", "-Os"])
    key = tuple(str(o) for o in objs)
    if key not in _CODE_SIZE_CACHE:
        out = subprocess.run([size, *key], check=True, capture_output=True, text=True).stdout
        total = 0
        for line in out.splitlines()[1:]:
            text, data = line.split()[:2]
            total += int(text) + int(data)
        _CODE_SIZE_CACHE[key] = total
    return _CODE_SIZE_CACHE[key]
