"""How `dsmn-host eval` recovers a board that resets, garbles a message or loses its port.

The policy, kept apart from the talking (`dsmn_host.link.boardsession`, after esptool's `reset`
beside its `loader`):
- a board reset (a boot HELLO in the middle of a clip): the handshake is already redone by the
  session; check the model again and resend the clip;
- a protocol error (CRC, timeout): flush the input and resend, at most `max_failures` times a
  clip, since a link that fails every time will not heal;
- a port error (the USB CDC device re-enumerating after a reset): reopen the port until it
  answers a handshake, for up to `reopen_timeout` seconds;
- the board runs another model (`ModelMismatch`) or reports a failure it computed
  (`BoardError`): never retried, reopening brings the same firmware back.
"""

from __future__ import annotations

import time

from dsmn_host.errors import DsmnError, ModelMismatch


def port_errors():
    import serial

    return (serial.SerialException, OSError)


class Recovery:
    def __init__(self, reopen_timeout=30.0, max_failures=20, poll=0.5):
        self.reopen_timeout = reopen_timeout
        self.max_failures = max_failures
        self.poll = poll

    def run(self, board, seq, op):
        """`op(session)` for clip `seq` on `board`, retried as the policy above says."""
        from dsmn_host.target import protocol

        failures = 0
        while True:
            try:
                if board.session is None:
                    self.reopen(board, "not connected")
                return op(board.session)
            except protocol.BoardReset as exc:
                # The session already decoded the boot HELLO; check it is still our model.
                board.events["resets"] += 1
                board.log(f"{board.url}: {exc}; handshake redone, resending clip {seq}")
                board.accept(board.session.hello)
            except protocol.BoardError:
                raise
            except protocol.ProtocolError as exc:
                failures += 1
                board.events["failed_requests"] += 1
                if failures > self.max_failures:
                    raise DsmnError(f"board on {board.url}: clip {seq} failed {failures} times; last: {exc}") from None
                board.log(f"{board.url}: {exc}; retrying clip {seq}")
                try:
                    board.session.port.reset_input_buffer()
                except Exception:
                    pass
            except port_errors() as exc:
                self.reopen(board, f"port error ({exc})")

    def reopen(self, board, why):
        """Close and reopen the port until it answers a handshake or `reopen_timeout` passes."""
        board.events["reopens"] += 1
        board.log(f"{board.url}: {why}; reopening (for up to {self.reopen_timeout:.0f} s)")
        board.close()
        deadline = time.monotonic() + self.reopen_timeout
        last = why
        while True:
            try:
                board.connect()
                return
            except ModelMismatch:
                raise
            except DsmnError as exc:
                last = exc
            except port_errors() as exc:
                last = exc
            if time.monotonic() > deadline:
                raise DsmnError(f"serial port {board.url} gone and not back within "
                                f"{self.reopen_timeout:.0f} s (last error: {last})")
            time.sleep(self.poll)
