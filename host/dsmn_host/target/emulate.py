"""`dsmn-host emulate`: run a firmware ELF in QEMU with its UART on a pty (or TCP port).

`Emulator` (a context manager) is what tests and the evaluation harness use: it starts
qemu-system-arm headless, finds the pty QEMU allocated for the board's UART, and stops QEMU on
exit. `-icount shift=0` makes the guest's SysTick advance once per 1e9/clock instructions, so
the counts in RESULT are deterministic and convert to instructions exactly. `sleep=off` lets
QEMU skip the real-time waits while the guest idles for UART bytes: measured here it doubles
the host->board rate (5.9 -> 11.4 KB/s) and leaves the instruction counts unchanged.

With a GDB port the emulated board behaves like one on a probe: QEMU starts halted
(`-S -gdb tcp:127.0.0.1:PORT`) with *no* `-kernel`, and the firmware, if given, is written
through the stub exactly as `dsmn-host flash --probe gdb://` writes a board. Not `-kernel`,
because QEMU keeps a -kernel ELF as ROM blobs and copies them back on every system reset: on
mps2 (code in RAM at 0) a reset after flashing another image brings the -kernel image back
(tests/test_flash.py shows it), where a board keeps what was flashed. (netduinoplus2's flash is
a ROM region, which QEMU fills from the blobs only on the first reset: there a write through the
stub survived two resets even under -kernel.) Memory written through the stub survives a reset,
as flash does.
"""

import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from dsmn_host.errors import DsmnError

QEMU = "qemu-system-arm"
_PTY = re.compile(r"char device redirected to (\S+) \(label (\w+)\)")


def qemu_command(board, elf, serial, gdb_port=None):
    """QEMU argv for `board` with the UART chardev spec `serial` (e.g. "pty"). With `gdb_port`
    the machine starts halted and blank (no -kernel), its GDB stub on 127.0.0.1:gdb_port."""
    serials = ["null"] * board.qemu_serial_index + [serial]
    cmd = [QEMU, "-M", board.qemu_machine]
    if gdb_port is None:
        cmd += ["-kernel", str(elf)]
    else:
        cmd += ["-S", "-gdb", f"tcp:127.0.0.1:{gdb_port}"]
    cmd += ["-nodefaults", "-display", "none", "-monitor", "none", "-icount", "shift=0,sleep=off"]
    for s in serials:
        cmd += ["-serial", s]
    return cmd


def check_arm_elf(path):
    """Refuse, by name, a file QEMU would reject with a cryptic message or boot into nothing;
    the ELF itself is read by the one firmware-image reader (dsmn_host.target.flash.image)."""
    from dsmn_host.target.flash.image import load_image

    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise DsmnError(f"{path}: cannot read firmware ({exc.strerror})") from None
    if magic != b"\x7fELF":
        raise DsmnError(f"{path}: not an ELF file (build firmware with dsmn-host build-firmware)")
    return load_image(path)


def _die_with_parent():
    """preexec_fn: the kernel SIGTERMs QEMU when the process that started it dies, even by
    SIGKILL (QEMU runs in its own session, so no terminal signal reaches it otherwise)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """A running QEMU; `.url` is what pyserial (or dsmn_host.target.protocol.Session.open) opens."""

    def __init__(self, elf, board="qemu-an386", tcp_port=None, wait_for_client=False, extra_args=(),
                 gdb_port=None, die_with_parent=False, log=None):
        """`gdb_port`: start halted and blank with a GDB stub there, then (if `elf`) flash `elf`
        through it and run; `elf=None` with a gdb_port waits for `dsmn-host flash`."""
        from dsmn_host.boards import get_board

        self.board = get_board(board)
        if not self.board.qemu_machine:
            raise DsmnError(f"board {self.board.name} is real hardware, not a QEMU machine; "
                            "flash it and open its serial port instead")
        if elf is None and gdb_port is None:
            raise DsmnError("no firmware ELF to run (give one, or wait for a flash with a GDB port)")
        self.elf = Path(elf) if elf is not None else None
        if self.elf is not None and not self.elf.is_file():
            raise DsmnError(f"{elf}: firmware ELF not found (build it with dsmn-host build-firmware)")
        if self.elf is not None:
            check_arm_elf(self.elf)
        self.gdb_port = gdb_port
        self.die_with_parent = die_with_parent
        self.flash_log = log or (lambda m: None)
        if shutil.which(QEMU) is None:
            raise DsmnError(f"{QEMU} not found on PATH (run scripts/bootstrap.sh)")
        self.tcp_port = tcp_port
        self.wait_for_client = wait_for_client
        self.extra_args = list(extra_args)  # e.g. ["-d", "int", "-D", "qemu.log"] when debugging
        self.proc = None
        self.url = None
        self.log = []

    def start(self, timeout=10.0):
        if self.tcp_port is not None:
            wait = "on" if self.wait_for_client else "off"
            serial = f"tcp:127.0.0.1:{self.tcp_port},server=on,wait={wait}"
        else:
            serial = "pty"
        cmd = qemu_command(self.board, self.elf, serial, self.gdb_port) + self.extra_args
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                     preexec_fn=_die_with_parent if self.die_with_parent else None)
        label = f"serial{self.board.qemu_serial_index}"
        if self.tcp_port is not None:
            self.url = f"socket://127.0.0.1:{self.tcp_port}"
            self._wait_listening(timeout)
        else:
            deadline = time.monotonic() + timeout
            while self.url is None:
                line = self._readline(deadline)
                if line is None:
                    self.stop()
                    raise DsmnError(f"QEMU ({' '.join(cmd)}) did not report a pty within {timeout:.0f} s: "
                                    + " | ".join(self.log[-5:]))
                m = _PTY.search(line)
                if m and m.group(2) == label:
                    self.url = m.group(1)
        # Keep draining QEMU's output so it never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        if self.gdb_port is not None:
            self._wait_gdb(timeout)
            if self.elf is not None:
                self.flash(self.elf)
        return self

    def _wait_gdb(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DsmnError(f"QEMU exited with {self.proc.returncode}: " + " | ".join(self.log[-5:]))
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.gdb_port)) == 0:
                    return
            time.sleep(0.05)
        self.stop()
        raise DsmnError(f"QEMU's GDB stub did not listen on 127.0.0.1:{self.gdb_port} within {timeout:.0f} s")

    @property
    def probe(self):
        """`dsmn-host flash --probe` value for this emulated board's GDB stub."""
        return f"gdb://127.0.0.1:{self.gdb_port}"

    def flash(self, elf):
        """Write, verify and reset `elf` through the stub, the way a board is flashed."""
        from dsmn_host.target.flash import check_target, load_image, parse_probe

        img = load_image(elf, self.board)
        check_target(img, self.board)
        return parse_probe(self.probe, self.board).program(img, self.flash_log)

    def _readline(self, deadline):
        out = []

        def read():
            out.append(self.proc.stdout.readline())

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(max(0.0, deadline - time.monotonic()))
        if not out or not out[0]:
            return None
        self.log.append(out[0].rstrip())
        return out[0]

    def _drain(self):
        for line in self.proc.stdout:
            self.log.append(line.rstrip())

    def _wait_listening(self, timeout):
        if self.wait_for_client:
            time.sleep(0.2)  # QEMU blocks until we connect; nothing to probe without consuming it
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DsmnError(f"QEMU exited with {self.proc.returncode}: {self.proc.stdout.read()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.tcp_port)) == 0:
                    return
            time.sleep(0.05)
        raise DsmnError(f"QEMU did not listen on 127.0.0.1:{self.tcp_port} within {timeout:.0f} s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class _Stop(BaseException):
    """SIGTERM/SIGHUP: leave the wait loop through `finally`, like Ctrl-C."""


def _on_signal(signum, frame):
    raise _Stop(signum)


def _cmd(args):
    from dsmn_host.boards import DEFAULT_BOARD

    if args.elf is None and not args.wait_for_flash:
        raise DsmnError("give FIRMWARE.elf to run, or --wait-for-flash for a blank board")
    if args.elf is not None and args.wait_for_flash:
        raise DsmnError("--wait-for-flash starts a blank board: give no FIRMWARE (flash it with dsmn-host flash)")
    board = args.board
    if board is None and args.elf is not None:
        fw = check_arm_elf(args.elf).firmware
        board = fw["board"] if fw else DEFAULT_BOARD
    gdb_port = args.gdb if args.gdb is not None else (free_port() if args.wait_for_flash else None)
    # Any way this command ends, QEMU ends: finally for exceptions, Ctrl-C, SIGTERM and SIGHUP;
    # PR_SET_PDEATHSIG for SIGKILL.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    emu = Emulator(args.elf, board=board or DEFAULT_BOARD, tcp_port=args.tcp, gdb_port=gdb_port,
                   die_with_parent=True, log=lambda m: print(f"flash: {m}", flush=True))
    try:
        emu.start()
        state = f"running {args.elf}" if args.elf else "halted, blank, waiting for a flash"
        print(f"{emu.board.name} ({emu.board.qemu_machine}) {state}", flush=True)
        print(f"serial port: {emu.url}   (e.g. dsmn-host eval --port {emu.url})", flush=True)
        if gdb_port is not None:
            print(f"gdb server: 127.0.0.1:{gdb_port}   (e.g. dsmn-host flash FIRMWARE.elf --probe {emu.probe} "
                  f"--port {emu.url})", flush=True)
        print("Ctrl-C or SIGTERM stops QEMU", flush=True)
        while emu.proc.poll() is None:
            time.sleep(0.2)
        print(f"QEMU exited with {emu.proc.returncode}: " + " | ".join(emu.log[-3:]), flush=True)
        return 1
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        emu.stop()


def register(subparsers):
    from dsmn_host.clihelp import style
    from dsmn_host.boards import BOARDS, DEFAULT_BOARD

    qemu_boards = [b.name for b in BOARDS.values() if b.qemu_machine]
    p = subparsers.add_parser(
        "emulate",
        help="run a firmware ELF in QEMU (or a blank board to flash over GDB) with its UART on a pty",
        description="Start qemu-system-arm headless (-icount shift=0: deterministic instruction counts) "
                    "with the board's UART on a new pty, print the port to open, and run until Ctrl-C. "
                    "QEMU boards: " + ", ".join(qemu_boards) + ".",
        **style("dsmn-host emulate build/firmware-qemu-an386-native/dsmn_firmware.elf", "dsmn-host emulate fw.elf --board qemu-an547 --tcp 5555"),
    )
    p.add_argument("elf", metavar="FIRMWARE.elf", nargs="?",
                   help="firmware ELF from `dsmn-host build-firmware` (omit with --wait-for-flash)")
    p.add_argument("--board", choices=qemu_boards, metavar="NAME",
                   help=f"QEMU board (default: the board named in the ELF, else {DEFAULT_BOARD})")
    p.add_argument("--tcp", type=int, metavar="PORT", help="serve the UART on 127.0.0.1:PORT instead of a pty")
    p.add_argument("--gdb", type=int, metavar="PORT",
                   help="GDB stub on 127.0.0.1:PORT, like a probe's gdbserver: the board starts blank and "
                        "FIRMWARE is flashed through it (so a later dsmn-host flash + reset runs the new image)")
    p.add_argument("--wait-for-flash", action="store_true",
                   help="start halted and blank (no FIRMWARE) until dsmn-host flash --probe gdb://127.0.0.1:PORT "
                        "writes and resets it (a free PORT is picked without --gdb)")
    p.set_defaults(func=_cmd)
