"""build-firmware + emulate end to end: real arm-none-eabi-gcc, real QEMU, real pty, and outputs
compared bit for bit with the TFLite-Micro Python interpreter."""

import json
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dsmn_host.target import frontend, firmware, protocol
from dsmn_host.boards import BOARDS, get_board
from dsmn_host.target.emulate import Emulator
from dsmn_host.errors import DsmnError

from firmware_support import SHIPPED_MODEL, big_activation_tflite, small_dsmn_tflite, tflm_outputs, validation_inputs

QEMU_BOARDS = ["qemu-an386", "qemu-an547", "qemu-stm32f405"]


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    """A small DSMN-shaped int8 model (1x44x256x2 -> 13) that fits every board, 128 KiB ones too."""
    return small_dsmn_tflite(tmp_path_factory.mktemp("fwmodel"))


@pytest.fixture(scope="session")
def fw_model(small_model):
    """The shipped model1 when it is there (the real thing), else the small model."""
    return SHIPPED_MODEL if SHIPPED_MODEL.is_file() else small_model


def _card(model):
    return json.loads(model.with_name(model.stem + ".card.json").read_text())


@pytest.fixture(scope="session")
def fw_card(fw_model):
    return _card(fw_model)


# model1 (untiled: ~225 KB of activations) fits the 128 KiB STM32F4 parts through the
# compiler's time-tiled plan, which build-firmware picks from the board's RAM by default.
BOARD_MODEL = {"nucleo-f429zi": "small_model"}


@pytest.fixture(scope="session")
def built(request, tmp_path_factory):
    cache = {}

    def build(board):
        if board not in cache:
            model = request.getfixturevalue(BOARD_MODEL.get(board, "fw_model"))
            out = tmp_path_factory.mktemp(f"fw-{board}")
            report = firmware.build_firmware(tflite=model, board=board, out=out, quiet=True)
            cache[board] = (report, model)
        return cache[board]

    return build


def test_unknown_board_names_the_known_ones():
    with pytest.raises(DsmnError) as e:
        get_board("nucleo-f999")
    for name in BOARDS:
        assert name in str(e.value)


def test_model_too_big_is_refused_before_compiling(tmp_path):
    # a model made too big for a 128 KiB STM32F405 even at its smallest (min) plan
    big = big_activation_tflite(tmp_path / "m")
    out = tmp_path / "build"
    with pytest.raises(DsmnError) as e:
        firmware.build_firmware(tflite=big, board="qemu-stm32f405", out=out, quiet=True)
    msg = str(e.value)
    needs = int(msg.split("smallest activation arena reachable is ")[1].split(" ")[0])
    budget = int(msg.split("RAM budget of ")[1].split(" ")[0])
    assert needs > budget and f"has {128 * 1024}" in msg and "qemu-stm32f405" in msg, msg
    assert not (out / "CMakeCache.txt").exists(), "refused only after configuring/compiling"


@pytest.mark.parametrize("board", QEMU_BOARDS)
def test_firmware_runs_in_qemu_bit_exact(board, built):
    report, fw_model = built(board)
    fw_card = _card(fw_model)
    b = get_board(board)
    # memory.json: the documented keys, sizes that agree with the ELF, within the board
    mem = json.loads((Path(report["elf"]).parent / "memory.json").read_text())
    for key in ("board", "runtime", "flash_bytes", "ram_bytes", "board_flash_bytes", "board_ram_bytes"):
        assert key in mem
    size = subprocess.run(["arm-none-eabi-size", "-A", report["elf"]], capture_output=True, text=True,
                          check=True).stdout
    secs = {l.split()[0]: int(l.split()[1]) for l in size.splitlines() if l.startswith(".")}
    assert mem["flash_bytes"] == secs[".text"] + secs.get(".ARM.exidx", 0) + secs.get(".data", 0)
    assert mem["ram_bytes"] == secs.get(".data", 0) + secs[".bss"] + secs[".stack"] + secs[".arena"]
    assert mem["flash_bytes"] <= b.flash.length and mem["ram_bytes"] <= b.ram.length
    assert mem["flash"]["model"] > 0 and mem["flash"]["runtime"] > 0
    # the arena the compiler planned is the one the linker placed (map: .arena): the plan's
    # peak, or the front end's scratch where that is larger (it borrows the arena)
    fe = report.get("front_end") or {}
    want = max(report["native"]["peak_activation_bytes"], fe.get("scratch_bytes", 0) if "skipped" not in fe else 0)
    assert 0 <= mem["ram"]["activations"] - want < 16
    gen_mem = json.loads((Path(report["elf"]).parent / "gen" / "memory.json").read_text())
    assert gen_mem["arena_bytes"] == report["native"]["arena_bytes"] == want
    assert mem["ram"]["activations"] == max(16, (gen_mem["arena_bytes"] + 15) // 16 * 16)
    # the pre-compile estimate that refuses models must not be below what the linker needs
    assert mem["estimate"]["flash_bytes"] >= mem["flash_bytes"] and mem["estimate"]["ram_bytes"] >= mem["ram_bytes"]
    assert Path(report["bin"]).stat().st_size > 0 and Path(report["hex"]).stat().st_size > 0

    xs = validation_inputs(fw_card, 3, seed=QEMU_BOARDS.index(board))
    ref = tflm_outputs(fw_model, xs)
    with Emulator(report["elf"], board=board) as emu:
        with protocol.Session.open(emu.url, response_timeout=120) as s:
            h = s.hello
            assert h.model_sha256 == fw_card["sha256"]
            assert (h.board, h.runtime, h.counter) == (board, "native", "systick")
            assert h.labels == fw_card["labels"]
            assert h.input_shape == tuple(fw_card["input"]["shape"])
            assert h.input_zero_point == fw_card["input"]["zero_point"]
            assert np.float32(h.output_scale) == np.float32(fw_card["output"]["scale"])
            counters = []
            for i, x in enumerate(xs):
                r = s.infer(1000 + i, x)
                assert r.seq == 1000 + i and r.status == 0
                got = np.frombuffer(r.output, np.int8)
                np.testing.assert_array_equal(got, ref[i], err_msg=f"{board} input {i}")
                counters.append(r.counter)
            # same work, same count: -icount makes the SysTick a deterministic instruction clock
            again = s.infer(7, xs[0]).counter
            assert abs(again - counters[0]) <= 2 and min(counters) > 0
            assert s.stats["resent_chunks"] == 0
            if board == "qemu-stm32f405":
                # the 128 KiB part hears audio too: the front end borrows its tiled plan's
                # arena (grown to the front end's scratch), and the network runs on what it made
                assert h.audio and report["front_end"]["scratch"] == "network arena"
                from frontend_support import odd_sounds

                pcm = odd_sounds()["click"]
                r = s.audio(9, pcm)
                assert r.status == 0 and r.frontend_counter > 0
                board_in = np.frombuffer(s.read_input(), np.int8).reshape(h.input_shape[1:])
                c = frontend.compare(board_in, frontend.reference_input(pcm, h.input_scale, h.input_zero_point))
                assert c["elements_equal"] >= 0.999 and c["max_abs_lsb"] <= 1, c
                np.testing.assert_array_equal(np.frombuffer(r.output, np.int8),
                                              tflm_outputs(fw_model, [board_in])[0])


def test_boot_banner_then_hello_over_tcp(built):
    report, _ = built("qemu-an386")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with Emulator(report["elf"], board="qemu-an386", tcp_port=port, wait_for_client=True) as emu:
        with protocol.Session.open(emu.url) as s:
            assert b"DSMN firmware" in bytes(s.parser.text) and b"qemu-an386" in bytes(s.parser.text)
            assert s.hello.board == "qemu-an386"
            assert s.ping(bytes(range(256)) * 5) == (1280, protocol.crc32(bytes(range(256)) * 5))
            with pytest.raises(protocol.BoardError) as e:
                s.request(protocol.INFER, protocol.encode_infer(1, b"short"))
            assert e.value.code == 2


def test_tflm_project_registers_exactly_the_models_ops(fw_model, fw_card, tmp_path):
    import re

    with pytest.raises(DsmnError, match="--tflm-dir"):
        firmware.build_firmware(tflite=fw_model, runtime="tflm", out=tmp_path, quiet=True)
    gen = tmp_path / "gen"
    resolver = (gen / "op_resolver.h").read_text()
    methods = re.findall(r"resolver\.(Add\w+)\(\)", resolver)
    assert sorted(methods) == sorted(firmware.TFLM_RESOLVER_METHODS[op] for op in fw_card["ops"])
    assert f"MicroMutableOpResolver<{len(fw_card['ops'])}>" in resolver
    data = (gen / "model_data.cc").read_text()
    assert "alignas(16) const unsigned char dsmn_model_data[]" in data
    body = data.split("{", 1)[1].rsplit("}", 1)[0]
    assert bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body)) == fw_model.read_bytes()
    arena = int(re.search(r"DSMN_TFLM_ARENA_BYTES (\d+)u", (gen / "model_data.h").read_text()).group(1))
    assert arena >= fw_card["tflm_arena_bytes"] and arena % 16 == 0
    assert 'set(DSMN_RUNTIME "tflm")' in (gen / "project.cmake").read_text()


def _symbol(elf, name):
    out = subprocess.run(["arm-none-eabi-nm", elf], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise AssertionError(f"{name} not in {elf}")


@pytest.mark.parametrize("board", ["nucleo-f446re", "nucleo-h743zi2"])
def test_hardware_boards_build_fit_and_vector_their_uart(board, built):
    import struct

    b = get_board(board)
    report, _ = built(board)
    assert report["flash_bytes"] <= b.flash.length and report["ram_bytes"] <= report["board_ram_bytes"]
    image = Path(report["bin"]).read_bytes()
    sp, reset = struct.unpack_from("<II", image, 0)
    assert b.ram.origin < sp <= b.ram.origin + b.ram.length and sp % 8 == 0  # stack in the main RAM
    assert reset == _symbol(report["elf"], "Reset_Handler") | 1
    (uart_vec,) = struct.unpack_from("<I", image, 4 * (16 + b.uart_rx_irq))
    assert uart_vec == _symbol(report["elf"], "board_uart_irq_entry") | 1


def test_stack_goes_to_ccm_where_the_board_has_one(built):
    """nucleo-f429zi: 64 KiB of CCM at 0x10000000 (board table); the linker puts the stack
    there, so the main RAM holds only the arena and the buffers."""
    import struct

    b = get_board("nucleo-f429zi")
    assert b.ccm is not None and b.ccm.origin == 0x10000000 and b.ccm.length == 64 * 1024
    report, _ = built("nucleo-f429zi")
    sp, _ = struct.unpack_from("<II", Path(report["bin"]).read_bytes(), 0)
    assert b.ccm.origin < sp <= b.ccm.origin + b.ccm.length and sp % 8 == 0
    assert report["board_ram_regions"]["ccm"] == b.ccm.length
    assert report["ram_bytes"] <= report["board_ram_bytes"]


def test_tflm_arena_passes_the_size_check_on_h743(fw_card):
    h743 = get_board("nucleo-h743zi2")
    flash, arena, other = firmware.estimate(fw_card, h743, "tflm")
    firmware.check_fits(flash, arena, other, h743, "model")
    assert arena >= fw_card["tflm_arena_bytes"]
