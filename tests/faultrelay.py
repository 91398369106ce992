"""A fault-injecting middleman between the eval harness and a board (test helper, not a test).

It opens the board's port (anything pyserial opens: a QEMU pty, `socket://...`) and offers the
harness a fresh pty of its own (`.port`). Bytes are forwarded both ways, except that a seeded
random ~`rate` of them is dropped or corrupted, and, once, after `reset_after_bytes` have gone
to the board, `reset()` is called; it must reset the board and return the board's port (which
may be a new one, e.g. after restarting QEMU). The seed makes a failing run replayable.

Faults come in bursts of 1..`max_burst` bytes (line noise and overruns are bursty). With
independent per-byte errors at 1 %, a 512-byte chunk would arrive intact 0.5 % of the time and
no chunked protocol could make progress; the same byte-error fraction in bursts hits a few
percent of the chunks, which is what a retrying harness has to survive.

With `baud`, each direction is also a paced line: bytes leave at baud/10 per second (8N1), with
a 16-byte FIFO's worth of slack and a 4 KiB buffer in front (a USB-serial adapter's), so the
line's limit is a known rate instead of what the emulator's UART happens to move (a QEMU board
carries 8-24 KB/s, varying by the second). Benchmarks measure link utilisation against it.
"""

from __future__ import annotations

import os
import random
import select
import threading
import time
import tty


def _open(url):
    import serial

    return serial.serial_for_url(url, baudrate=115200, timeout=0)


class FaultRelay:
    def __init__(self, board_port, *, rate=0.01, max_burst=32, seed=1234, reset=None,
                 reset_after_bytes=None, to_board=True, to_host=True, baud=None):
        self._board = _open(board_port)
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self._master)
        self.port = os.ttyname(self._slave)
        self._rng = random.Random(seed)
        self.rate, self.max_burst = rate, max_burst
        self.to_board, self.to_host = to_board, to_host
        self._reset = reset
        self._reset_after = reset_after_bytes
        self._burst = {True: [0, None], False: [0, None]}  # per direction: bytes left, kind
        self.stats = {"to_board": 0, "to_host": 0, "dropped": 0, "corrupted": 0, "resets": 0}
        # after the reset: the board's first bytes as sent and which of them a fault hit, to
        # tell whether its boot HELLO reached the host (boot_hello_hit)
        self._boot = None
        self.baud = baud
        # per direction (True: to the board): bytes waiting for the paced line, its byte credit
        self._queue = {True: bytearray(), False: bytearray()}
        self._credit = {True: 0.0, False: 0.0}
        self._paced_at = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="faultrelay")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self._board.close()
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    @property
    def fault_fraction(self):
        moved = self.stats["to_board"] + self.stats["to_host"]
        return (self.stats["dropped"] + self.stats["corrupted"]) / max(1, moved)

    def _mangle(self, data, to_board):
        if not (self.to_board if to_board else self.to_host) or not self.rate:
            return data
        burst = self._burst[to_board]
        start_p = self.rate / ((1 + self.max_burst) / 2)  # burst starts per byte, mean length (1+max)/2
        out = bytearray()
        boot = self._boot if not to_board and self._boot is not None and len(self._boot[0]) < 4096 else None
        for b in data:
            if burst[0] == 0 and self._rng.random() < start_p:
                burst[0] = self._rng.randint(1, self.max_burst)
                burst[1] = self._rng.choice(("drop", "corrupt"))
            if boot is not None:
                boot[0].append(b)
                boot[1].append(bool(burst[0]))
            if burst[0]:
                burst[0] -= 1
                if burst[1] == "drop":
                    self.stats["dropped"] += 1
                    continue
                self.stats["corrupted"] += 1
                b ^= self._rng.randrange(1, 256)
            out.append(b)
        return bytes(out)

    @property
    def boot_hello_hit(self):
        """After the reset: whether a fault dropped or corrupted a byte of the board's boot HELLO
        (the host cannot see that reset then), None if no boot HELLO came through yet."""
        if self._boot is None:
            return None
        from dsmn_host.target import protocol

        sent, hit = self._boot
        parser = protocol.FrameParser()
        for i in range(len(sent)):
            for f in parser.feed(sent[i:i + 1]):
                if f is not protocol.BAD and f.type == protocol.HELLO and f.msg_id == 0:
                    start = i + 1 - len(protocol.encode_frame(f.type, 0, f.index, f.count, f.payload))
                    return any(hit[start:i + 1])
        return None

    def _do_reset(self):
        self.stats["resets"] += 1
        self._boot = (bytearray(), [])
        new_url = self._reset()
        self._board.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                self._board = _open(new_url)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    QUEUE_BYTES = 4096  # what a paced direction takes in before it stops reading its source
    FIFO_BYTES = 16  # credit a paced line may bank while idle (a UART's FIFO)

    def _forward(self, to_board, data):
        try:
            if to_board:
                self._board.write(data)
            else:
                os.write(self._master, data)
        except Exception:
            pass

    def _pace(self):
        """Sends what each paced direction's line has carried since the last call."""
        now = time.monotonic()
        carried = (now - self._paced_at) * self.baud / 10
        self._paced_at = now
        for to_board, q in self._queue.items():
            if not q:
                self._credit[to_board] = min(self.FIFO_BYTES, self._credit[to_board] + carried)
                continue
            self._credit[to_board] += carried
            n = min(len(q), int(self._credit[to_board]))
            if n:
                self._credit[to_board] -= n
                self._forward(to_board, bytes(q[:n]))
                del q[:n]

    def _run(self):
        while not self._stop.is_set():
            paced = self.baud is not None
            board_fd = self._board.fileno() if hasattr(self._board, "fileno") else None
            take = {d: not paced or len(self._queue[d]) < self.QUEUE_BYTES for d in (True, False)}
            fds = ([self._master] if take[True] else []) + ([board_fd] if board_fd is not None and take[False] else [])
            wait = 0.002 if paced and (self._queue[True] or self._queue[False]) else 0.01
            try:
                ready, _, _ = select.select(fds, [], [], wait)
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                continue
            if self._master in ready:
                try:
                    data = os.read(self._master, 4096)
                except OSError:
                    data = b""
                if data:
                    self.stats["to_board"] += len(data)
                    data = self._mangle(data, True)
                    if paced:
                        self._queue[True] += data
                    else:
                        self._forward(True, data)
                    if (self._reset is not None and self._reset_after is not None
                            and self.stats["to_board"] >= self._reset_after and not self.stats["resets"]):
                        self._queue[True].clear()
                        self._do_reset()
                        continue
            if take[False] and (board_fd is None or board_fd in ready):
                try:
                    data = self._board.read(4096)
                except Exception:
                    data = b""
                if data:
                    self.stats["to_host"] += len(data)
                    data = self._mangle(data, False)
                    if paced:
                        self._queue[False] += data
                    else:
                        self._forward(False, data)
            if paced:
                self._pace()


class VanishingPort:
    """A TCP port (`.url`, socket://...) in front of a board that, once `vanish_after_bytes` have
    gone to the board, drops the connection and refuses new ones for `outage_s` seconds: what
    the host sees when a USB CDC board re-enumerates. The board itself keeps running."""

    def __init__(self, board_port, *, vanish_after_bytes, outage_s=2.0):
        import socket

        self._board = _open(board_port)
        self._vanish_after = vanish_after_bytes
        self.outage_s = outage_s
        self._listen = socket.socket()
        self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listen.bind(("127.0.0.1", 0))
        self._addr = self._listen.getsockname()
        self._listen.listen(1)
        self.url = f"socket://127.0.0.1:{self._addr[1]}"
        self.stats = {"to_board": 0, "vanished": 0, "connections": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="vanishing-port")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self._listen.close()
        self._board.close()

    def _relisten(self):
        import socket

        self._listen = socket.socket()
        self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listen.bind(self._addr)
        self._listen.listen(1)

    def _run(self):
        board_fd = self._board.fileno()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._listen], [], [], 0.05)
            if not ready:
                continue
            conn, _ = self._listen.accept()
            self.stats["connections"] += 1
            vanish = False
            with conn:
                while not self._stop.is_set() and not vanish:
                    r, _, _ = select.select([conn, board_fd], [], [], 0.05)
                    if conn in r:
                        data = conn.recv(4096)
                        if not data:
                            break
                        self.stats["to_board"] += len(data)
                        self._board.write(data)
                        if not self.stats["vanished"] and self.stats["to_board"] >= self._vanish_after:
                            vanish = True
                    if board_fd in r:
                        data = self._board.read(4096)
                        if data:
                            conn.sendall(data)
            if vanish:
                # Gone: no listener at all (connections refused), then back on the same port.
                self.stats["vanished"] += 1
                self._listen.close()
                time.sleep(self.outage_s)
                self._relisten()


def restartable_emulator(elf):
    """A started QEMU board on TCP and its power cycle, for FaultRelay(reset=...). On TCP with
    wait=on QEMU holds the guest until the relay connects, so the boot banner and HELLO of the
    restarted board reach the harness (on a pty nobody has open they are lost)."""
    import socket

    from dsmn_host.target.emulate import Emulator

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    emu = Emulator(elf, tcp_port=port, wait_for_client=True).start()

    def power_cycle():
        emu.stop()
        emu.start()
        return emu.url

    return emu, power_cycle


def eval_through_faults(elf, out_dir, *, seed, reset_after_bytes, **eval_kwargs):
    """`evaluate.run_eval` on a restartable QEMU board through a relay that drops or corrupts
    ~1 % of bytes both ways (bursts of up to 128) and power-cycles the board once, after
    `reset_after_bytes` went to it. Returns (relay stats with the fault fraction, log lines)."""
    from dsmn_host.link import evaluate

    emu, power_cycle = restartable_emulator(elf)
    logs = []
    try:
        with FaultRelay(emu.url, rate=0.01, max_burst=128, seed=seed, reset=power_cycle,
                        reset_after_bytes=reset_after_bytes) as relay:
            evaluate.run_eval([relay.port], out_dir=out_dir, baud=115200, log=logs.append, ack_timeout=0.5,
                              **eval_kwargs)
            stats = dict(relay.stats, fraction=relay.fault_fraction, boot_hello_hit=relay.boot_hello_hit)
    finally:
        emu.stop()
    print("relay", stats, *logs, sep="\n")
    return stats, logs
