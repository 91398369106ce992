"""`dsmn-host flash` against QEMU's GDB stub (a blank, halted mps2-an386: the board a probe's
gdbserver would give), and pyOCD / OpenOCD for real with no probe on this machine.

One small DSMN-shaped model, built for qemu-an386 (the board under test) and for
nucleo-f446re (the "wrong board" image); each test gets its own blank QEMU.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsmn_host.errors import DsmnError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("qemu-system-arm", "arm-none-eabi-gcc", "gdb-multiarch")),
    reason="needs qemu-system-arm, arm-none-eabi-gcc and gdb-multiarch (scripts/bootstrap.sh)")

N_CLIPS = 3


@pytest.fixture(scope="module")
def fw(tmp_path_factory):
    from firmware_support import small_dsmn_tflite

    from dsmn_host.target.firmware import build_firmware
    from dsmn_host.deploy.modelcard import card_paths

    d = tmp_path_factory.mktemp("flashfw")
    model = small_dsmn_tflite(d / "m", seed=0)
    mine = build_firmware(tflite=model, board="qemu-an386", out=d / "an386", quiet=True)
    other = build_firmware(tflite=model, board="nucleo-f446re", out=d / "f446", quiet=True)
    card = card_paths(model)["json"]
    return {"elf": Path(mine["elf"]), "bin": Path(mine["bin"]), "hex": Path(mine["hex"]),
            "other_elf": Path(other["elf"]), "card": card, "model": model,
            "sha": json.loads(Path(card).read_text())["sha256"]}


@pytest.fixture
def blank():
    """A blank qemu-an386, halted, GDB stub on a free port, UART on a pty."""
    from dsmn_host.target.emulate import Emulator, free_port

    with Emulator(None, gdb_port=free_port()) as emu:
        yield emu


def _gdb(emu):
    from dsmn_host.target.flash import parse_probe

    return parse_probe(emu.probe, emu.board)


def test_flash_over_gdb_verifies_resets_and_reports_the_model(fw, blank):
    from dsmn_host.target.flash import flash_firmware, load_image

    logs = []
    rep = flash_firmware(fw["elf"], probe=blank.probe, port=blank.url, card=fw["card"], log=logs.append)
    print(*logs, json.dumps(rep), sep="\n")
    assert rep["board"] == rep["hello_board"] == "qemu-an386"  # board taken from the image's banner
    assert rep["model_sha256"] == fw["sha"] and rep["model_checked"]
    image_bytes = sum(len(data) for _, data in load_image(fw["elf"]).segments)
    assert rep["bytes"] == image_bytes <= fw["bin"].stat().st_size  # the .bin also holds the gaps
    assert "compare-sections matched" in rep["verify"] and f"read back {rep['bytes']} bytes" in rep["verify"]
    assert "DSMN firmware 1.0.0 board qemu-an386 runtime native" in rep["banner"]
    assert "now runs model small_int8" in logs[-1] and f"sha256 {fw['sha']} (matches" in logs[-1]
    assert 0 < rep["seconds_to_reset"] < rep["seconds_to_hello"]


def test_bin_and_hex_flash_at_the_board_origin(fw, blank):
    from dsmn_host.target.flash import flash_firmware, load_image

    img = load_image(fw["hex"])
    assert img.segments == load_image(fw["elf"]).segments
    # The .bin is one run from the flash origin: every ELF segment at its offset, gaps filled.
    (origin, flat), = load_image(fw["bin"], blank.board).segments
    assert origin == blank.board.flash.origin
    for addr, data in img.segments:
        assert flat[addr - origin:addr - origin + len(data)] == data
    assert len(flat) == img.segments[-1][0] + len(img.segments[-1][1]) - origin
    rep = flash_firmware(fw["bin"], board="qemu-an386", probe=blank.probe, port=blank.url, log=lambda m: None)
    # No card given: the one build-firmware named in memory.json beside the image.
    assert rep["model_sha256"] == fw["sha"] and rep["model_checked"]
    assert rep["verify"] == f"read back {rep['bytes']} bytes in 1 segment(s)"


def test_eval_flash_then_agrees_exactly_with_host(fw, feature_cache_dir, tmp_path):
    """`dsmn-host eval --flash` into a blank board started by `dsmn-host emulate --wait-for-flash`."""
    from firmware_support import tflm_outputs

    from dsmn_host.link import evaluate
    from dsmn_host.target.emulate import free_port
    from dsmn_host.data.features import open_features

    port = free_port()
    emu = subprocess.Popen([sys.executable, "-m", "dsmn_host", "emulate", "--wait-for-flash", "--gdb", str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [emu.stdout.readline() for _ in range(4)]
        pty = lines[1].split()[2]
        assert "halted, blank" in lines[0] and pty.startswith("/dev/pts/"), lines
        r = subprocess.run([sys.executable, "-m", "dsmn_host", "eval", "--flash", str(fw["elf"]),
                            "--probe", f"gdb://127.0.0.1:{port}", "--port", pty, "--baud", "115200",
                            "--cache", str(feature_cache_dir), "--limit", str(N_CLIPS), "--stratify",
                            "--model-card", str(fw["card"]), "--out", str(tmp_path)],
                           capture_output=True, text=True, timeout=180)
    finally:
        emu.terminate()
        emu.wait(10)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"flash: qemu-an386 now runs model" in r.stdout and fw["sha"] in r.stdout
    recs = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(recs) == N_CLIPS
    cache = open_features(feature_cache_dir)
    card = json.loads(Path(fw["card"]).read_text())
    s, zp = card["input"]["scale"], card["input"]["zero_point"]
    xs = [evaluate.quantize(cache.inputs([r["row"]])[0].transpose(2, 1, 0), s, zp) for r in recs]
    assert [r["output"] for r in recs] == tflm_outputs(fw["model"], xs).astype(int).tolist()


def test_corrupted_write_is_caught_by_verify(fw, blank):
    from dsmn_host.target.flash import load_image

    img = load_image(fw["elf"])
    probe = _gdb(blank)
    probe.write(img)
    probe.verify(img)  # as written: passes
    addr = 0x1234
    probe.poke(addr, img.segments[0][1][addr] ^ 0x5A)
    with pytest.raises(DsmnError) as err:
        probe.verify(img)
    msg = str(err.value)
    assert "verify failed" in msg and "0x00001234 reads" in msg and f"1 of {len(img.segments[0][1])} bytes" in msg and "\n" not in msg


def test_firmware_for_another_board_is_refused_before_anything_is_written(fw, blank, tmp_path):
    from dsmn_host.target.flash import check_target, flash_firmware, load_image

    with pytest.raises(DsmnError, match="built for board nucleo-f446re, not qemu-an386"):
        flash_firmware(fw["other_elf"], board="qemu-an386", probe=blank.probe, log=lambda m: None)
    # Without its banner the memory map alone refuses it (linked at 0x08000000).
    img = load_image(fw["other_elf"])
    img.firmware = None
    with pytest.raises(DsmnError, match="outside qemu-an386's flash 0x00000000-0x003fffff: it was linked for another"):
        check_target(img, blank.board)
    # A card for another model than the one the firmware was built with: refused before writing too.
    card = tmp_path / "other.card.json"
    card.write_text(json.dumps({"sha256": "ab" * 32}))
    with pytest.raises(DsmnError, match=f"was built for model sha256 {fw['sha']} .* but .*other.card.json is model abab"):
        flash_firmware(fw["elf"], probe=blank.probe, port=blank.url, card=card, log=lambda m: None)
    # Nothing reached the board: its memory is still blank.
    (got,), _ = _gdb(blank).read([(0, 4096)])
    assert got == bytes(4096)


def _tiny_elf(tmp_path, name, cpu_flags, body="for (;;) x++;"):
    """A real linked Cortex-M ELF with its build attributes (our firmware's linker script drops
    them) and a two-word vector table at 0: stack top, reset handler."""
    src = tmp_path / f"{name}.c"
    src.write_text("int x;\nvoid Reset_Handler(void) { " + body + " }\n"
                   "__attribute__((section(\".vectors\"), used)) const void *vectors[2] = "
                   "{ (void *)0x20001000, (void *)Reset_Handler };\n")
    elf = tmp_path / f"{name}.elf"
    subprocess.run(["arm-none-eabi-gcc", *cpu_flags, "-mthumb", "-O1", "-nostdlib", "-Wl,--section-start=.vectors=0",
                    "-Wl,-Ttext=0x100", "-Wl,-Tdata=0x20000000", "-Wl,-e,Reset_Handler", "-o", str(elf), str(src)],
                   check=True)
    return elf


def test_image_for_another_core_is_refused(tmp_path):
    from dsmn_host.boards import get_board
    from dsmn_host.target.flash import check_target, load_image

    m4 = get_board("qemu-an386")
    m7 = load_image(_tiny_elf(tmp_path, "m7", ["-mcpu=cortex-m7", "-mfpu=fpv5-d16", "-mfloat-abi=hard"],
                              "volatile double d = x; for (;;) d *= 1.5;"))
    assert m7.cpu_arch == "v7E-M" and m7.fp_arch == 8
    with pytest.raises(DsmnError, match="uses the FPv5 FPU, but qemu-an386's cortex-m4 has fpv4-sp-d16"):
        check_target(m7, m4)
    check_target(m7, get_board("qemu-an500"))  # the M7 board takes it
    m55 = load_image(_tiny_elf(tmp_path, "m55", ["-mcpu=cortex-m55"]))
    with pytest.raises(DsmnError, match="compiled for Arm v8.1-M.main, but qemu-an386's cortex-m4 is v7E-M"):
        check_target(m55, m4)
    m4f = load_image(_tiny_elf(tmp_path, "m4", ["-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"]))
    check_target(m4f, m4)
    check_target(m4f, get_board("qemu-an500"))  # an M4F image runs on an M7


def test_image_that_does_not_fit_is_refused(tmp_path):
    from dsmn_host.boards import get_board
    from dsmn_host.target.flash import flash_firmware

    b = get_board("nucleo-f446re")
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(b.flash.length + 100))
    with pytest.raises(DsmnError, match="does not fit nucleo-f446re's flash: it ends at 0x08080063, 100 bytes past"):
        flash_firmware(big, board="nucleo-f446re", probe="openocd", log=lambda m: None)


def _one_line_error(argv):
    r = subprocess.run([sys.executable, "-m", "dsmn_host", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_pyocd_with_no_probe_says_so(fw):
    line = _one_line_error(["flash", str(fw["other_elf"]), "--probe", "pyocd"])
    assert line.startswith("dsmn-host flash: error: no debug probe found by pyOCD: connect nucleo-f446re's ST-LINK")


def test_openocd_with_no_probe_says_so(fw):
    line = _one_line_error(["flash", str(fw["other_elf"]), "--probe", "openocd"])
    assert line.startswith("dsmn-host flash: error: no debug probe found by OpenOCD (stlink: Error: open failed)")


def test_no_gdb_server_and_no_banner(fw, blank, tmp_path):
    from dsmn_host.target.emulate import free_port
    from dsmn_host.target.flash import flash_firmware, load_image

    line = _one_line_error(["flash", str(fw["elf"]), "--probe", f"gdb://127.0.0.1:{free_port()}"])
    assert "no GDB server at 127.0.0.1:" in line
    # Busy: another client holds the stub (it serves one at a time).
    from dsmn_host.target.flash.probes import GdbProbe

    with socket.create_connection(("127.0.0.1", blank.gdb_port)):
        time.sleep(0.2)
        with pytest.raises(DsmnError, match="accepted the connection but did not answer within 2 s: busy"):
            GdbProbe("127.0.0.1", blank.gdb_port, connect_timeout=2).write(load_image(fw["elf"]))
    time.sleep(0.2)
    # Memory the board does not have (--force past the memory-map check): the read-back says where.
    from dsmn_host.target.flash.image import Image, to_ihex

    far = tmp_path / "far.hex"
    far.write_text(to_ihex(Image(far, "hex", [(0xF0000000, b"\xde\xad\xbe\xef")])))
    with pytest.raises(DsmnError, match="through GDB server .* failed: read-back 0xf0000000 - 0xf0000004: Cannot access memory"):
        flash_firmware(far, board="qemu-an386", probe=blank.probe, force=True, log=lambda m: None)
    # A board that never prints: a real image whose reset handler spins.
    dead = load_image(_tiny_elf(tmp_path, "spin", ["-mcpu=cortex-m4"], "for (;;) {}"))
    assert dead.firmware is None
    with pytest.raises(DsmnError, match=r"no boot banner on /dev/pts/\d+ within 2 s after the reset \(no bytes at all\)"):
        flash_firmware(dead.path, board="qemu-an386", probe=blank.probe, port=blank.url, boot_timeout=2,
                       log=lambda m: None)


def test_mount_probe_on_a_plain_folder_times_out(fw, tmp_path):
    from dsmn_host.target.flash import load_image
    from dsmn_host.target.flash.probes import MountProbe

    img = load_image(fw["other_elf"])
    with pytest.raises(DsmnError, match="is still on .* after 1 s: the drive did not take the image"):
        MountProbe(tmp_path, timeout=1).program(img, log=lambda m: None)
    copied = (tmp_path / "dsmn_firmware.bin").read_bytes()  # the .bin a drive takes: flash origin on
    assert len(copied) == img.span[1] - img.span[0] and copied.startswith(img.segments[0][1])


def _banner_after_reset(emu, probe):
    import serial

    from dsmn_host.target.flash import wait_for_hello

    with serial.serial_for_url(emu.url, baudrate=115200, timeout=0.05) as port:
        port.reset_input_buffer()
        probe.reset()
        banner, _ = wait_for_hello(port, 10)
    return banner


def test_reset_keeps_a_flashed_image_but_restores_a_kernel_image(fw):
    """Why `emulate --gdb` flashes through the stub instead of -kernel: poke one banner byte and
    reset. A -kernel image comes back (QEMU rewrites its ROM blobs on reset); a flashed one
    keeps the change, as a board's flash does."""
    from dsmn_host.target.emulate import Emulator, free_port
    from dsmn_host.target.flash import load_image
    from dsmn_host.target.flash.probes import GdbProbe

    data = load_image(fw["elf"]).segments[0][1]
    at = data.index(b"DSMN firmware") + len("DSMN firmwar")
    port = free_port()
    with Emulator(fw["elf"], extra_args=["-gdb", f"tcp:127.0.0.1:{port}"]) as emu:  # -kernel, running
        probe = GdbProbe("127.0.0.1", port)
        probe.poke(at, ord("X"))
        assert "DSMN firmware 1.0.0" in _banner_after_reset(emu, probe)
    with Emulator(fw["elf"], gdb_port=free_port()) as emu:  # flashed through the stub
        probe = _gdb(emu)
        probe.poke(at, ord("X"))
        assert "DSMN firmwarX 1.0.0" in _banner_after_reset(emu, probe)


def _qemu_child(proc, timeout=20):
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [c for c in psutil.Process(proc.pid).children() if "qemu" in c.name()]
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise AssertionError("emulate started no QEMU")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_emulate_ends_its_qemu_however_it_ends(fw, sig):
    import psutil

    from dsmn_host.target.emulate import free_port

    p = subprocess.Popen([sys.executable, "-m", "dsmn_host", "emulate", str(fw["elf"]), "--gdb", str(free_port())],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    qemu = _qemu_child(p)
    out = []
    while not out or "SIGTERM stops QEMU" not in out[-1]:
        out.append(p.stdout.readline())
        assert out[-1], "".join(out)
    text = "".join(out)
    assert "verified: read back" in text and "running" in text
    os.kill(p.pid, sig)
    p.wait(10)
    try:
        qemu.wait(5)
    except psutil.TimeoutExpired:
        qemu.kill()
        raise AssertionError(f"QEMU still running after {sig.name} to dsmn-host emulate")


def test_board_table_probe_settings_exist_in_pyocd_and_openocd():
    """Each Nucleo's pyOCD target is built into pyOCD or comes with a pack to install, and its
    OpenOCD configs are files OpenOCD ships (OpenOCD finds them in its scripts directory)."""
    from pyocd.target import TARGET

    from dsmn_host.boards import BOARDS

    scripts = Path("/usr/share/openocd/scripts")
    nucleos = [b for b in BOARDS.values() if b.name.startswith("nucleo-")]
    assert len(nucleos) == 3
    for b in nucleos:
        assert b.pyocd_target and (b.pyocd_target in TARGET) != bool(b.pyocd_pack), b.name
        if scripts.is_dir():
            assert (scripts / b.openocd_interface).is_file() and (scripts / b.openocd_target).is_file(), b.name


@pytest.mark.parametrize("fail", [None, "The interface firmware FAILED to reach the target MCU"])
def test_mount_probe_waits_for_the_drive_and_reads_fail_txt(fw, tmp_path, fail):
    """No ST-LINK drive here: a thread plays its part (takes the copied file away, as the drive
    does when it re-enumerates after programming, and leaves FAIL.TXT when it could not)."""
    import threading

    from dsmn_host.target.flash import load_image
    from dsmn_host.target.flash.probes import MountProbe

    def drive():
        dest = tmp_path / "dsmn_firmware.bin"
        while not dest.exists():
            time.sleep(0.05)
        time.sleep(0.3)
        if fail:  # the drive comes back with its new listing at once: FAIL.TXT there, the file gone
            (tmp_path / "FAIL.TXT").write_text(fail + "\n")
        dest.unlink()

    t = threading.Thread(target=drive, daemon=True)
    t.start()
    probe = MountProbe(tmp_path, timeout=10)
    if fail:
        with pytest.raises(DsmnError, match=f"the board's drive rejected the image: FAIL.TXT says '{fail}'"):
            probe.program(load_image(fw["other_elf"]), log=lambda m: None)
    else:
        assert probe.program(load_image(fw["other_elf"]), log=lambda m: None) == "the probe's own check (no FAIL.TXT)"
    t.join(5)
