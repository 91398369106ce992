"""One board behind one port during `dsmn-host eval`: a protocol Session plus the checks a long
run needs on top of it (the board runs the card's model, its counters survive reopening).

What to do when the board resets or the port vanishes is `dsmn_host.link.recovery`'s job (the split
follows esptool's `loader` / `reset`): this module talks to the board, that one decides how
hard to try again.
"""

from __future__ import annotations

import time

from dsmn_host.errors import DsmnError, ModelMismatch
from dsmn_host.link.recovery import port_errors

LIMIT_WINDOW = 32   # chunks in flight for the PING that measures what the line carries


class Board:
    """A board behind one port. `infer` returns a Result or raises DsmnError; it survives
    board resets (handshake redone, model checked again) and a port that vanishes for up to
    `reopen_timeout` seconds (the USB CDC device re-enumerating after a reset): see `Recovery`."""

    def __init__(self, url, baud=921600, *, expected_sha=None, force=False, reopen_timeout=30.0,
                 max_failures=20, boot_timeout=10.0, ack_timeout=1.0, response_timeout=30.0, log=None,
                 windowed=True, pipelined=True):
        from dsmn_host.link.recovery import Recovery

        self.url = url
        self.baud = baud
        self.expected_sha = expected_sha
        self.force = force
        self.boot_timeout = boot_timeout
        self.session_kwargs = {"ack_timeout": ack_timeout, "response_timeout": response_timeout,
                               "windowed": windowed, "pipelined": pipelined}
        self.log = log or (lambda msg: None)
        self.recovery = Recovery(reopen_timeout=reopen_timeout, max_failures=max_failures)
        self.session = None
        self.hello = None
        self.link_rate = None
        self.events = {"resets": 0, "reopens": 0, "failed_requests": 0}
        self._dead_stats = {}

    @property
    def reopen_timeout(self):
        return self.recovery.reopen_timeout

    # Counters from Sessions that were replaced (reopen) so stats cover the whole run.
    @property
    def stats(self):
        out = dict(self._dead_stats)
        if self.session is not None:
            for k, v in self.session.stats.items():
                out[k] = out.get(k, 0) + v
        out.update(self.events)
        return out

    def connect(self):
        from dsmn_host.target import protocol

        self.session = protocol.Session.open(self.url, self.baud, boot_timeout=self.boot_timeout,
                                             **self.session_kwargs)
        self.accept(self.session.hello)
        return self.hello

    def accept(self, hello):
        """Take a HELLO (first or after a reset): the board must run the card's model."""
        from dsmn_host.data import tau

        if self.expected_sha and hello.model_sha256 != self.expected_sha:
            msg = (f"board on {self.url} ({hello.board}) runs model sha256 {hello.model_sha256}, "
                   f"but the model card says {self.expected_sha}")
            if not self.force:
                self.close()
                raise ModelMismatch(msg + "; flash the matching firmware, pass the right --model-card, or --force")
            self.log(f"warning: {msg} (--force)")
        if hello.labels and list(hello.labels) != list(tau.LABELS):
            self.log(f"warning: board {hello.board} labels {hello.labels} differ from {list(tau.LABELS)}")
        self.hello = hello

    def close(self):
        if self.session is not None:
            for k, v in self.session.stats.items():
                self._dead_stats[k] = self._dead_stats.get(k, 0) + v
            try:
                self.session.close()
            except Exception:
                pass
            self.session = None

    def infer(self, seq, tensor, follow=None):
        """`follow`: the (type, payload) of the next clip's request, sent ahead while the board
        computes this one (protocol.Session.request)."""
        return self.recovery.run(self, seq, lambda s: s.infer(seq, tensor, follow=follow))

    def audio(self, seq, pcm, read_input=True, follow=None):
        """(AudioResult, the board's int8 input bytes or None) for one clip's int16 PCM; `follow`
        goes ahead behind the last request for this clip (the AUDIO, or the last INPUT piece)."""
        def op(s):
            r = s.audio(seq, pcm, follow=None if read_input else follow)
            return r, (s.read_input(follow=follow) if read_input else None)

        return self.recovery.run(self, seq, op)

    def ping_rate(self, nbytes=None):
        """Host->board bytes/s of a PING the size of one INFER with 32 chunks in flight (the
        board's ACKs never wait on ours): what the line carries at most, whatever the
        protocol's window. Not unbounded: host and board (or a relay) both blocked writing
        into full buffers would deadlock."""
        from dsmn_host.target import protocol

        n = min(nbytes or self.hello.input_bytes + 8, self.hello.max_message)
        payload = bytes((i * 37) & 0xFF for i in range(n))
        t0 = time.monotonic()
        try:
            self.session.ping(payload, window=LIMIT_WINDOW)
        except protocol.BoardReset:
            self.events["resets"] += 1  # counted like one during a clip; the caller goes on without a limit
            self.accept(self.session.hello)
            raise
        return n / (time.monotonic() - t0)

    def measure_link(self):
        """Set `link_rate` (None if PING fails: the report then has no link limit)."""
        self.link_rate = None
        try:
            self.link_rate = self.ping_rate()
            self.log(f"{self.url}: link moves {self.link_rate:,.0f} B/s host->board (PING of one input's size)")
        except DsmnError as exc:
            self.log(f"{self.url}: could not measure the link with PING ({exc})")
        except port_errors() as exc:
            # the port vanished under the PING (a USB CDC device re-enumerating): no limit for
            # this run, and the board is reopened as during a clip
            self.log(f"{self.url}: could not measure the link with PING (port error: {exc})")
            self.recovery.reopen(self, f"port error ({exc})")
