"""`build-firmware --runtime tflm` for real: the TFLite-Micro + CMSIS-NN firmware compiled with
arm-none-eabi-gcc against a real TFLM tree, booted in QEMU, answering protocol v1 with outputs
equal to the TFLM Python interpreter's and the native firmware's, bit for bit.

The TFLM library is compiled once per core for the session (the `tflm_cache` fixture) and
reused by every build of that core: an386 (Cortex-M4, CMSIS-NN DSP paths), an547 (Cortex-M55,
Helium/MVE paths) and the H743 (Cortex-M7, built and sized, no QEMU machine).
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dsmn_host.target import firmware, protocol, tflm
from dsmn_host.target.emulate import Emulator
from dsmn_host.errors import DsmnError

from firmware_support import SHIPPED_MODEL, tflm_outputs, validation_inputs

TREE = tflm.default_tree()
pytestmark = [
    pytest.mark.skipif(TREE is None, reason="no TFLM tree: set DSMN_TFLM_DIR or put one at ../shared/tflm "
                                            "(dsmn-host tflm-tree --tflite-micro CHECKOUT --out DIR)"),
    pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                       reason="needs qemu-system-arm and arm-none-eabi-gcc (scripts/bootstrap.sh)"),
    pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason=f"needs the shipped model {SHIPPED_MODEL}"),
]

QEMU_BOARDS = ["qemu-an386", "qemu-an547"]
# An arena ~3/4 of what model1 needs: AllocateTensors fails and says so. (Far smaller arenas,
# e.g. 16 KiB, make this TFLM revision, built with NDEBUG, write through an unchecked null
# allocation instead of failing; build-firmware never makes an arena below the card's.)
SHORT_ARENA = 300_000
# What the firmware may take from the C library: no heap, no stdio, no syscalls.
LIBC_ALLOWED = re.compile(r"lib_a-(mem[\w-]+|str[\w-]+|errno|impure)\.o\)$")
FORBIDDEN_SYMBOLS = ("malloc", "_malloc_r", "free", "_sbrk", "_sbrk_r", "raise", "_kill", "_getpid", "_write",
                     "_exit", "fiprintf", "printf", "__dso_handle", "__cxa_atexit", "__aeabi_atexit",
                     "__cxa_guard_acquire")


def _card(model):
    return json.loads(Path(model).with_name(Path(model).stem + ".card.json").read_text())


@pytest.fixture(scope="session")
def tflm_cache():
    """The TFLM library cache in the build directory (DSMN_TFLM_CACHE overrides): each core's
    library is compiled at most once per session, and not again while its key is unchanged."""
    import os

    return Path(os.environ.get("DSMN_TFLM_CACHE") or Path(__file__).resolve().parents[1] / "build" / "tflm-lib")


@pytest.fixture(scope="session")
def tflm_built(tflm_cache, tmp_path_factory):
    cache = {}

    def build(board, **kw):
        key = (board, tuple(sorted(kw.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"tflm-{board}")
            cache[key] = firmware.build_firmware(tflite=SHIPPED_MODEL, board=board, runtime="tflm", tflm_dir=TREE,
                                                 out=out, quiet=True, tflm_cache=tflm_cache, **kw)
        return cache[key]

    return build


def _archive_members(map_text):
    head = map_text.split("Archive member included", 1)[1].split("Discarded input sections", 1)[0]
    return [l.strip() for l in head.splitlines() if l.strip() and not l.startswith(" ")]


def _defined_symbols(elf):
    out = subprocess.run(["arm-none-eabi-nm", elf], capture_output=True, text=True, check=True).stdout
    return {p[2]: p[1] for p in (l.split() for l in out.splitlines()) if len(p) == 3}


@pytest.mark.parametrize("board", QEMU_BOARDS)
def test_tflm_firmware_serves_protocol_bit_exact(board, tflm_built):
    rep = tflm_built(board)
    card = _card(SHIPPED_MODEL)
    mem = json.loads((Path(rep["elf"]).parent / "memory.json").read_text())
    assert mem["runtime"] == "tflm" and mem["flash"]["model"] >= card["model_bytes"]
    assert mem["flash"]["runtime"] > 50_000  # the interpreter and the CMSIS-NN kernels are in
    assert mem["ram"]["arena"] >= card["tflm_arena_bytes"]
    assert mem["estimate"]["flash_bytes"] >= mem["flash_bytes"] and mem["estimate"]["ram_bytes"] >= mem["ram_bytes"]
    want_paths = {"qemu-an386": "DSP (SIMD)", "qemu-an547": "MVE (Helium)"}[board]
    assert mem["tflm"]["cmsis_nn"]["paths"] == want_paths
    assert sorted(mem["tflm"]["ops"]) == sorted(card["ops"])

    xs = validation_inputs(card, 3, seed=11 + QEMU_BOARDS.index(board))
    ref = tflm_outputs(SHIPPED_MODEL, xs)
    with Emulator(rep["elf"], board=board) as emu:
        with protocol.Session.open(emu.url, response_timeout=300) as s:
            h = s.hello
            assert (h.board, h.runtime, h.model_sha256) == (board, "tflm", card["sha256"])
            # after AllocateTensors HELLO reports the arena TFLM really uses (32-bit: <= the card's 64-bit figure)
            assert 0 < h.arena_bytes <= mem["ram"]["arena"]
            for i, x in enumerate(xs):
                r = s.infer(i, x)
                assert r.status == 0 and r.counter > 0
                np.testing.assert_array_equal(np.frombuffer(r.output, np.int8), ref[i], err_msg=f"{board} input {i}")


@pytest.mark.parametrize("board", QEMU_BOARDS)
def test_link_map_no_heap_no_syscalls_no_static_constructors(board, tflm_built):
    rep = tflm_built(board)
    elf = Path(rep["elf"])
    text = (elf.parent / "dsmn_firmware.map").read_text()
    members = _archive_members(text)
    libc = [m for m in members if re.search(r"/libc(_nano)?\.a\(|/libg(_nano)?\.a\(", m)]
    assert libc and all(LIBC_ALLOWED.search(m) for m in libc), [m for m in libc if not LIBC_ALLOWED.search(m)]
    assert not [m for m in members if re.search(r"/lib(nosys|stdc\+\+|supc\+\+)(_nano)?\.a\(", m)]
    syms = _defined_symbols(str(elf))
    assert not [s for s in FORBIDDEN_SYMBOLS if s in syms]
    # nothing for startup.c to construct: .init_array is empty
    assert syms["__init_array_start"] == syms["__init_array_end"] or \
        int(_addr(text, "__init_array_start"), 16) == int(_addr(text, "__init_array_end"), 16)
    # whatever reaches abort (TFLITE_ABORT) gets ours, from runtime_tflm.cc, not newlib's
    m = re.search(r"0x[0-9a-f]+\s+0x[0-9a-f]+ (\S+)\n\s+0x[0-9a-f]+\s+abort\n", text)
    assert m and m.group(1).endswith("runtime_tflm.cc.obj"), m


def _addr(map_text, name):
    return re.search(r"0x([0-9a-f]+)\s+" + re.escape(name) + r" = \.", map_text).group(1)


def test_an547_image_runs_cmsis_nn_helium_code(tflm_built):
    """The M55 build does not only define ARM_MATH_MVEI: CMSIS-NN's kernels in the image are MVE code."""
    rep = tflm_built("qemu-an547")
    # -m armv8.1-m.main: without it objdump decodes MVE loads as coprocessor ldc/cdp
    dis = subprocess.run(["arm-none-eabi-objdump", "-d", "-m", "armv8.1-m.main", "--no-show-raw-insn", rep["elf"]],
                         capture_output=True, text=True, check=True).stdout
    funcs = re.split(r"\n(?=[0-9a-f]{8} <)", dis)
    mve = {f.split("<", 1)[1].split(">", 1)[0] for f in funcs
           if re.search(r"^[0-9a-f]{8} <arm_", f) and re.search(r"\tv(mlava|mladava|addva)\.[su]\d+\s", f) and re.search(r"\tvldr[bhw]\.[su]?\d+\s+q\d", f)}
    assert {"arm_nn_mat_mult_nt_t_s8", "arm_nn_vec_mat_mult_t_s8"} <= mve, sorted(mve)  # conv, 1x1 conv, FC
    an386 = tflm_built("qemu-an386")
    dis386 = subprocess.run(["arm-none-eabi-objdump", "-d", "--no-show-raw-insn", an386["elf"]],
                            capture_output=True, text=True, check=True).stdout
    assert "\tsmlad\t" in dis386  # the M4's CMSIS-NN uses the DSP extension's dual MAC


def test_library_has_only_the_models_kernels_and_is_reused(tflm_built, tflm_cache):
    first = tflm_built("qemu-an386")
    key = json.loads((Path(first["tflm"]["library"]).parent / "key.json").read_text())
    kernels = [s for s in key["sources"] if "/micro/kernels/" in s]
    assert not [s for s in key["sources"] if s.startswith("signal/")]
    assert "tensorflow/lite/micro/kernels/cmsis_nn/conv.cc" in kernels
    assert not [s for s in kernels if "resize_nearest_neighbor" in s or "svdf" in s or "lstm" in s]
    assert len(kernels) <= 2 * len(key["ops"]) + 1
    # a second firmware for the same core and ops (here: a too-small arena) links the same library
    lib = Path(first["tflm"]["library"])
    stamp = lib.stat().st_mtime_ns
    small = tflm_built("qemu-an386", tflm_arena=SHORT_ARENA)
    assert small["tflm"]["cached"] and small["tflm"]["library"] == first["tflm"]["library"]
    assert small["tflm"]["key"] == first["tflm"]["key"] and lib.stat().st_mtime_ns == stamp
    assert Path(tflm_cache).resolve() in lib.parents


def test_tflm_error_is_an_error_frame_with_its_status(tflm_built):
    rep = tflm_built("qemu-an386", tflm_arena=SHORT_ARENA)
    card = _card(SHIPPED_MODEL)
    x = validation_inputs(card, 1)[0]
    with Emulator(rep["elf"], board="qemu-an386") as emu:
        with protocol.Session.open(emu.url, response_timeout=60) as s:
            assert s.hello.runtime == "tflm"
            with pytest.raises(protocol.BoardError) as e:
                s.infer(1, x)
            assert e.value.code == 4
            assert "AllocateTensors" in e.value.text and "kTfLiteError (1)" in e.value.text
            assert f"arena bytes {SHORT_ARENA}" in e.value.text
            assert s.ping(b"still alive") == (11, protocol.crc32(b"still alive"))  # answered, not hung


def test_h743_tflm_builds_and_fits(tflm_built):
    rep = tflm_built("nucleo-h743zi2")
    assert rep["flash_bytes"] <= rep["board_flash_bytes"]
    regions = rep["board_ram_regions"]
    assert rep["ram"]["arena"] <= regions["arena_ram"]
    assert rep["ram_bytes"] - rep["ram"]["arena"] <= regions["ram"]
    assert rep["tflm"]["cmsis_nn"]["paths"] == "DSP (SIMD)"


def test_tflm_dir_that_is_not_a_tree_is_named(tmp_path):
    with pytest.raises(DsmnError, match=re.escape(str(tmp_path)) + ".*not a TFLM source tree"):
        firmware.build_firmware(tflite=SHIPPED_MODEL, runtime="tflm", tflm_dir=tmp_path, out=tmp_path / "b",
                                quiet=True, tflm_cache=tmp_path / "lib")
    assert not (tmp_path / "lib").exists()


def test_tflm_tree_refuses_what_it_cannot_use(tmp_path):
    with pytest.raises(DsmnError, match="not a tflite-micro checkout"):
        tflm.make_tree(tmp_path, tmp_path / "out")
    script = tmp_path / "co" / tflm.CREATE_TREE
    script.parent.mkdir(parents=True)
    script.write_text("import sys; sys.exit('no network')\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DsmnError, match="not empty"):
        tflm.make_tree(tmp_path / "co", tmp_path / "full")
    with pytest.raises(DsmnError, match="(?s)create_tflm_tree.py failed.*no network"):
        tflm.make_tree(tmp_path / "co", tmp_path / "new")
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.partial").exists()


N_EVAL_CLIPS = 4


def test_eval_through_tflm_firmware_equals_python_tflm_and_native(tflm_built, feature_cache_dir, tmp_path_factory):
    """`dsmn-host eval` on the TFLM firmware: clip by clip, its outputs equal the TFLM Python
    interpreter's on the same quantized input and the native firmware's for the same clip."""
    from dsmn_host.link import evaluate
    from dsmn_host.data.features import open_features
    from dsmn_host.deploy.modelcard import card_paths

    card_json = card_paths(SHIPPED_MODEL)["json"]
    runs = {}
    native_dir = tmp_path_factory.mktemp("eval-native-fw")
    elfs = {"tflm": tflm_built("qemu-an386")["elf"],
            "native": firmware.build_firmware(tflite=SHIPPED_MODEL, board="qemu-an386", out=native_dir,
                                              quiet=True)["elf"]}
    for rt, elf in elfs.items():
        out = tmp_path_factory.mktemp(f"eval-{rt}")
        with Emulator(elf, board="qemu-an386") as emu:
            rep = evaluate.run_eval([emu.url], source=feature_cache_dir, limit=N_EVAL_CLIPS, stratify=True,
                                    card_path=card_json, out_dir=out, baud=115200, log=lambda m: None)
        assert rep["n_clips"] == N_EVAL_CLIPS
        recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
        runs[rt] = {r["filename"]: r for r in recs}
    assert sorted(runs["tflm"]) == sorted(runs["native"]) and len(runs["tflm"]) == N_EVAL_CLIPS
    card = _card(SHIPPED_MODEL)
    cache = open_features(feature_cache_dir)
    names = sorted(runs["tflm"])
    xs = [evaluate.quantize(cache.inputs([runs["tflm"][n]["row"]])[0].transpose(2, 1, 0),
                            card["input"]["scale"], card["input"]["zero_point"]) for n in names]
    want = tflm_outputs(SHIPPED_MODEL, np.stack(xs)).astype(int).tolist()
    for name, w in zip(names, want):
        assert runs["tflm"][name]["output"] == w, name
        assert runs["native"][name]["output"] == w, name
    # both count instructions; TFLM spends more of them on the same clip
    assert all(runs["tflm"][n]["instructions"] > runs["native"][n]["instructions"] > 0 for n in names)
