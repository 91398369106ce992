"""`dsmn-host flash`: program a board with the firmware, verify it, reset it, and (with --port)
read its boot banner and HELLO to say exactly which model it now runs.

Three layers, as in esptool: `image` (what the bytes are and whether they are for this board:
the checks run before any probe is touched), `probes` (how they get into flash: pyOCD, OpenOCD,
any GDB server, the USB drive; each one write, verify, reset), and this module (the command:
the order of the steps, the serial port opened *before* the reset so no boot byte is lost, and
the model check against the card).
"""

import json
import time
from pathlib import Path

from dsmn_host.errors import DsmnError
from dsmn_host.target.flash.image import check_target, load_image
from dsmn_host.target.flash.probes import parse_probe

__all__ = ["flash_firmware", "load_image", "check_target", "parse_probe", "wait_for_hello"]


def _expected_model(firmware, card_path):
    """(sha256, card path, model name) the board should report; from --model-card, else from the
    memory.json build-firmware wrote beside the image. (None, None, None) if neither exists."""
    from dsmn_host.deploy.modelcard import card_paths

    mem = Path(firmware).with_name("memory.json")
    m = json.loads(mem.read_text()) if mem.is_file() else None
    if card_path:
        p = Path(card_path)
        if not p.is_file():
            raise DsmnError(f"{p}: model card not found")
        try:
            card = json.loads(p.read_text())
            card["sha256"]
        except (ValueError, KeyError, TypeError):
            raise DsmnError(f"{p}: not a model card (no sha256); make one with dsmn-host card") from None
        if m and m.get("model_sha256") and m["model_sha256"] != card["sha256"]:
            # Refuse before writing: the board would boot a model the card does not describe.
            raise DsmnError(f"{Path(firmware).name} was built for model sha256 {m['model_sha256']} ({mem}), "
                            f"but {p} is model {card['sha256']}: pass the matching --model-card or firmware")
        return card["sha256"], p, card.get("name") or p.name.replace(".card.json", "")
    if m:
        card = card_paths(m["model"])["json"] if m.get("model") else None
        return m.get("model_sha256"), card if card and Path(card).is_file() else None, Path(m["model"]).name
    return None, None, None


def wait_for_hello(port, timeout):
    """Banner text and boot HELLO (msg_id 0) from an open serial port, or a one-line error."""
    from dsmn_host.target import protocol

    parser = protocol.FrameParser()
    deadline = time.monotonic() + timeout
    import serial

    while time.monotonic() < deadline:
        try:
            data = port.read(4096)
        except (serial.SerialException, OSError) as exc:
            raise DsmnError(f"serial port {port.name} went away while waiting for the boot banner ({exc})") from None
        if not data:
            continue
        for f in parser.feed(data):
            if f is not protocol.BAD and f.type == protocol.HELLO and f.msg_id == 0:
                banner = bytes(parser.text).decode("ascii", "replace").strip()
                return banner, protocol.Hello.decode(f.payload)
    seen = bytes(parser.text)[-60:]
    if not parser.text:
        raise DsmnError(f"no boot banner on {port.name} within {timeout:.0f} s after the reset (no bytes at all): "
                        "is --port the board's UART, at the right --baud? is the image for this board?")
    raise DsmnError(f"boot banner but no HELLO on {port.name} within {timeout:.0f} s after the reset "
                    f"(last bytes {seen!r}): the firmware started but its protocol did not")


def flash_firmware(firmware, *, board=None, probe=None, port=None, baud=None, card=None, force=False,
                   boot_timeout=10.0, log=print):
    """Check, write, verify and reset; with `port`, wait for the HELLO and check the model.
    Returns a dict (board, probe, verify, timings, and with a port the HELLO's model)."""
    from dsmn_host.boards import get_board

    t0 = time.monotonic()
    img = load_image(firmware, get_board(board) if board else None)
    if board is None:
        if not (img.firmware and img.firmware.get("board")):
            raise DsmnError(f"{firmware}: no dsmn firmware banner in the image to tell its board; pass --board NAME")
        board = img.firmware["board"]
    b = get_board(board)
    if force:
        log("warning: --force: target checks skipped")
    else:
        check_target(img, b)
    sha, card_file, model_name = _expected_model(firmware, card)
    prb = parse_probe(probe, b)
    ser = None
    if port:
        import serial

        try:
            ser = serial.serial_for_url(port, baudrate=baud or b.baud, timeout=0.05)
        except (serial.SerialException, OSError) as exc:
            raise DsmnError(f"cannot open serial port {port}: {exc}") from None
    try:
        if ser is not None:
            ser.reset_input_buffer()
        log(f"{img.path.name}: {img.size} B in {len(img.segments)} segment(s) at 0x{img.span[0]:08x}, "
            f"for {b.name}" + (f" (firmware {img.firmware['version']}, {img.firmware['runtime']} runtime)"
                               if img.firmware else ""))
        how = prb.program(img, log)
        t_reset = time.monotonic()
        rep = {"firmware": str(img.path), "board": b.name, "probe": prb.name, "bytes": img.size,
               "verify": how, "seconds_to_reset": round(t_reset - t0, 3), "steps": getattr(prb, "timings", {})}
        if ser is None:
            log(f"{b.name} flashed and verified ({how}); pass --port to check the model it boots with")
            return rep
        banner, hello = wait_for_hello(ser, boot_timeout)
    finally:
        if ser is not None:
            ser.close()
    rep.update(banner=banner, hello_board=hello.board, model_sha256=hello.model_sha256,
               runtime=hello.runtime_name, firmware_version=hello.firmware_version,
               seconds_to_hello=round(time.monotonic() - t0, 3))
    if hello.board != b.name:
        raise DsmnError(f"the board on {port} says it is {hello.board}, not {b.name}: wrong --port?")
    if sha and hello.model_sha256 != sha:
        raise DsmnError(f"{b.name} on {port} runs model sha256 {hello.model_sha256}, but "
                        f"{card_file or 'the build'} says {sha}: the flash did not take, or --port is another board")
    checked = (f"matches {card_file}" if card_file and sha else
               "matches the build's memory.json" if sha else "no model card to check it against (--model-card)")
    rep["model_checked"] = bool(sha)
    log(f"{b.name} now runs model {model_name or '?'} sha256 {hello.model_sha256} ({checked}), "
        f"{hello.runtime_name} runtime, firmware {hello.firmware_version}; HELLO "
        f"{rep['seconds_to_hello']:.2f} s after the flash started")
    return rep


# ----------------------------------------------------------------------------------------------
# CLI

PROBE_HELP = ("pyocd (default for the Nucleos; pyocd:UID picks one of several), openocd, "
              "gdb://HOST:PORT (any GDB server: OpenOCD :3333, pyOCD :3333, J-Link :2331, ST-LINK :61234, "
              "dsmn-host emulate --gdb PORT), or mount:PATH (the ST-LINK/DAPLink USB drive)")

EPILOG = """examples:
  dsmn-host flash build/firmware-nucleo-f446re-native/dsmn_firmware.elf --port /dev/ttyACM0
  dsmn-host flash fw.elf --board nucleo-h743zi2 --probe openocd --port /dev/ttyACM0
  dsmn-host flash fw.hex --board nucleo-f429zi --probe gdb://127.0.0.1:3333
  dsmn-host flash fw.bin --board nucleo-f446re --probe mount:/media/$USER/NODE_F446RE
  dsmn-host emulate --wait-for-flash --gdb 1234 &   # a blank QEMU board, then:
  dsmn-host flash build/firmware-qemu-an386-native/dsmn_firmware.elf --probe gdb://127.0.0.1:1234 --port PTY
"""


def add_flash_arguments(p, firmware_flag=False):
    """--board/--probe (and the firmware) for `flash` and for `eval --flash`."""
    from dsmn_host.boards import BOARDS

    if firmware_flag:
        p.add_argument("--flash", metavar="FIRMWARE", help="flash and verify this .elf/.hex/.bin first (see dsmn-host flash)")
    else:
        p.add_argument("firmware", metavar="FIRMWARE", help="FIRMWARE.elf, .hex or .bin (a .bin needs --board)")
    p.add_argument("--board", choices=list(BOARDS), metavar="NAME",
                   help="board to flash (default: the board named in the image); " + ", ".join(BOARDS))
    p.add_argument("--probe", metavar="PROBE", help=PROBE_HELP)
    if not firmware_flag:  # eval has its own --force (the model hash)
        p.add_argument("--force", dest="flash_force", action="store_true",
                       help="flash even if the image looks built for another board")


def flash_for_eval(args):
    """`eval --flash FIRMWARE`: flash, verify, reset and check the HELLO on the (first) --port."""
    if len(args.port) != 1:
        raise DsmnError("--flash needs exactly one --port (the board it flashes)")
    flash_firmware(args.flash, board=args.board, probe=args.probe, port=args.port[0], baud=args.baud,
                   card=args.model_card, log=lambda m: print(f"flash: {m}", flush=True))


def register(subparsers):
    import argparse

    p = subparsers.add_parser(
        "flash",
        help="program a board with pyOCD, OpenOCD, any GDB server or its USB drive; verify, reset, check the model",
        description="Check that the image is for the board (banner, core, memory map, size) before touching "
                    "anything, write it, verify by reading it back (or the probe's verify), reset, and with "
                    "--port read the boot banner and HELLO: the command ends saying which model the board runs "
                    "and whether its sha256 matches the model card.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flash_arguments(p)
    p.add_argument("--port", metavar="PORT", help="serial port of the board: wait for its banner and HELLO after the reset")
    p.add_argument("--baud", type=int, help="baud rate of --port (default: the board's, 921600 on the Nucleos)")
    p.add_argument("--model-card", metavar="CARD",
                   help="X.card.json the board must report (default: the model in memory.json beside FIRMWARE)")
    p.add_argument("--boot-timeout", type=float, default=10.0, metavar="S",
                   help="how long to wait for the banner and HELLO after the reset (default %(default)s s)")
    p.set_defaults(func=_cmd)


def _cmd(args):
    flash_firmware(args.firmware, board=args.board, probe=args.probe, port=args.port, baud=args.baud,
                   card=args.model_card, force=args.flash_force, boot_timeout=args.boot_timeout,
                   log=lambda m: print(m, flush=True))
    return 0
