"""`dsmn-host emulate`: run a firmware ELF in QEMU with its UART on a pty (or TCP port).

`Emulator` (a context manager) is what tests and the evaluation harness use: it starts
qemu-system-arm headless, finds the pty QEMU allocated for the board's UART, and stops QEMU on
exit. `-icount shift=0` makes the guest's SysTick advance once per 1e9/clock instructions, so
the counts in RESULT are deterministic and convert to instructions exactly. `sleep=off` lets
QEMU skip the real-time waits while the guest idles for UART bytes: measured here it doubles
the host->board rate (5.9 -> 11.4 KB/s) and leaves the instruction counts unchanged.
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


def qemu_command(board, elf, serial):
    """QEMU argv for `board` with the UART chardev spec `serial` (e.g. "pty")."""
    serials = ["null"] * board.qemu_serial_index + [serial]
    cmd = [QEMU, "-M", board.qemu_machine, "-kernel", str(elf), "-nodefaults", "-display", "none",
           "-monitor", "none", "-icount", "shift=0,sleep=off"]
    for s in serials:
        cmd += ["-serial", s]
    return cmd


def check_arm_elf(path):
    """Refuse, by name, a file QEMU would reject with a cryptic message or boot into nothing:
    it must be a 32-bit little-endian ELF for machine ARM (EM_ARM = 40)."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError as exc:
        raise DsmnError(f"{path}: cannot read firmware ({exc.strerror})") from None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise DsmnError(f"{path}: not an ELF file (build firmware with dsmn-host build-firmware)")
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    if head[4] != 1 or head[5] != 1 or machine != 40:
        raise DsmnError(f"{path}: ELF for machine {machine} ({'64' if head[4] == 2 else '32'}-bit), not a "
                        "32-bit little-endian ARM (Cortex-M) firmware")


class Emulator:
    """A running QEMU; `.url` is what pyserial (or dsmn_host.protocol.Session.open) opens."""

    def __init__(self, elf, board="qemu-an386", tcp_port=None, wait_for_client=False, extra_args=()):
        from dsmn_host.boards import get_board

        self.board = get_board(board)
        if not self.board.qemu_machine:
            raise DsmnError(f"board {self.board.name} is real hardware, not a QEMU machine; "
                            "flash it and open its serial port instead")
        self.elf = Path(elf)
        if not self.elf.is_file():
            raise DsmnError(f"{elf}: firmware ELF not found (build it with dsmn-host build-firmware)")
        check_arm_elf(self.elf)
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
        cmd = qemu_command(self.board, self.elf, serial) + self.extra_args
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
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
        return self

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


def _cmd(args):
    emu = Emulator(args.elf, board=args.board, tcp_port=args.tcp)
    emu.start()
    print(f"{emu.board.name} ({emu.board.qemu_machine}) running {args.elf}", flush=True)
    print(f"serial port: {emu.url}   (e.g. dsmn-host eval --port {emu.url}); Ctrl-C stops QEMU", flush=True)
    try:
        while emu.proc.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
    return 0


def register(subparsers):
    from dsmn_host.clihelp import style
    from dsmn_host.boards import BOARDS, DEFAULT_BOARD

    qemu_boards = [b.name for b in BOARDS.values() if b.qemu_machine]
    p = subparsers.add_parser(
        "emulate",
        help="run a firmware ELF in QEMU with its UART on a pty (or TCP port) until Ctrl-C",
        description="Start qemu-system-arm headless (-icount shift=0: deterministic instruction counts) "
                    "with the board's UART on a new pty, print the port to open, and run until Ctrl-C. "
                    "QEMU boards: " + ", ".join(qemu_boards) + ".",
        **style("dsmn-host emulate build/firmware-qemu-an386-native/dsmn_firmware.elf", "dsmn-host emulate fw.elf --board qemu-an547 --tcp 5555"),
    )
    p.add_argument("elf", metavar="FIRMWARE.elf", help="firmware ELF from `dsmn-host build-firmware`")
    p.add_argument("--board", default=DEFAULT_BOARD, help=f"QEMU board (default {DEFAULT_BOARD})")
    p.add_argument("--tcp", type=int, metavar="PORT", help="serve the UART on 127.0.0.1:PORT instead of a pty")
    p.set_defaults(func=_cmd)
