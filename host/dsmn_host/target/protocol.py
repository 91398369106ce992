"""Protocol v1 (revision 2), host side (docs/protocol.md): frames, message payloads, and a `Session`.

Three layers, each usable alone: `encode_frame` / `FrameParser` (bytes), `Hello` / `Result`
payload codecs, and `Session`, which owns a serial port, does the handshake and runs
requests with per-chunk acknowledgement and retries. `Session` only needs an object with
pyserial's `read(n)`, `write(b)`, `timeout` and `reset_input_buffer()`, so a pty to QEMU,
/dev/ttyACM0 and a pipe to a host-built test harness all work the same way.
"""

import struct
import time
import zlib
from dataclasses import dataclass, field

from dsmn_host.errors import DsmnError

VERSION = 1
SYNC = b"\xA5\x5A"
HEADER = struct.Struct("<2sBBHHHH")  # sync, type, flags, msg_id, index, count, len
CRC = struct.Struct("<I")
MAX_PAYLOAD = 1024

HELLO, PING, PONG, ACK, NAK, INFER, RESULT, ERROR = 0x01, 0x02, 0x03, 0x06, 0x15, 0x10, 0x11, 0x7F
AUDIO, AUDIO_RESULT, INPUT = 0x12, 0x13, 0x14
TYPE_NAMES = {HELLO: "HELLO", PING: "PING", PONG: "PONG", ACK: "ACK", NAK: "NAK",
              INFER: "INFER", RESULT: "RESULT", ERROR: "ERROR", AUDIO: "AUDIO",
              AUDIO_RESULT: "AUDIO_RESULT", INPUT: "INPUT"}
ERROR_NAMES = {1: "unknown message type", 2: "bad length", 3: "message larger than the board's buffer",
               4: "runtime failed to initialise", 5: "unsupported INFER kind", 6: "no front end",
               7: "runtime failed during inference"}
FLAG_WINDOWED = 0x01  # frame flags bit 0: this sender keeps several chunks in flight
FEATURE_AUDIO = 0x01  # HELLO extension features bit 0: AUDIO and INPUT requests
FEATURE_PIPELINE = 0x02  # bit 1: the next request's first window may arrive while the board computes
CLIP_SAMPLES = 44100
MIN_CHUNK = 32  # the adaptive chunk size never goes below this (frame overhead 16 bytes)
RUNTIMES = {0: "native", 1: "tflm"}
COUNTERS = {0: "none", 1: "dwt", 2: "systick"}
INFER_KIND_TENSOR = 0
POLL_S = 0.02


class ProtocolError(DsmnError):
    """The link failed: retries exhausted, a reset, or bytes that make no sense."""


class BoardReset(ProtocolError):
    """The board sent an unsolicited HELLO in the middle of a request."""


class BoardError(DsmnError):
    """The board answered with an ERROR message."""

    def __init__(self, code, text):
        super().__init__(f"board error {code} ({ERROR_NAMES.get(code, 'unknown')}): {text}")
        self.code = code
        self.text = text


def crc32(data):
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_frame(ftype, msg_id, index, count, payload=b"", flags=0):
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    head = HEADER.pack(SYNC, ftype, flags, msg_id & 0xFFFF, index, count, len(payload))
    return head + payload + CRC.pack(crc32(head[2:] + payload))


@dataclass
class Frame:
    type: int
    msg_id: int
    index: int
    count: int
    payload: bytes

    @property
    def name(self):
        return TYPE_NAMES.get(self.type, f"0x{self.type:02x}")


BAD = object()  # FrameParser.feed yields this for a frame whose header or CRC was wrong


class FrameParser:
    """Incremental parser: feed any bytes, get Frames (and BAD markers) in order.

    Bytes outside frames (the boot banner, line noise) are kept in `text` for diagnostics.
    """

    def __init__(self, max_payload=MAX_PAYLOAD):
        self.max_payload = max_payload
        self.buf = bytearray()
        self.text = bytearray()

    def feed(self, data):
        self.buf += data
        out = []
        while True:
            start = self.buf.find(SYNC)
            if start < 0:
                keep = 1 if self.buf.endswith(SYNC[:1]) else 0
                self.text += self.buf[: len(self.buf) - keep]
                del self.buf[: len(self.buf) - keep]
                return out
            self.text += self.buf[:start]
            del self.buf[:start]
            if len(self.buf) < HEADER.size:
                return out
            _, ftype, _, msg_id, index, count, n = HEADER.unpack_from(self.buf)
            if n > self.max_payload or count == 0 or index >= count:
                del self.buf[:2]
                out.append(BAD)
                continue
            total = HEADER.size + n + CRC.size
            if len(self.buf) < total:
                return out
            body = bytes(self.buf[2 : HEADER.size + n])
            (crc,) = CRC.unpack_from(self.buf, HEADER.size + n)
            if crc != crc32(body):
                # Resync just past this sync pair: the real frame may start inside the junk.
                del self.buf[:2]
                out.append(BAD)
                continue
            del self.buf[:total]
            out.append(Frame(ftype, msg_id, index, count, body[HEADER.size - 2 :]))


    def resync(self):
        """Give up on a partial frame and rescan what followed its sync bytes.

        A corrupted length field can make the parser wait for hundreds of bytes that are not
        coming; the session calls this when a wait times out, so the good frames queued
        behind the bad header are found instead of being swallowed as its "payload".
        """
        if not self.buf.startswith(SYNC):
            return []
        del self.buf[:2]
        return [BAD] + self.feed(b"")


def chunk_frames(ftype, msg_id, payload, max_chunk, flags=0):
    """The frames of one request, max_chunk payload bytes each (an empty message is one frame)."""
    payload = bytes(payload)
    pieces = [payload[i : i + max_chunk] for i in range(0, len(payload), max_chunk)] or [b""]
    return [encode_frame(ftype, msg_id, i, len(pieces), p, flags) for i, p in enumerate(pieces)]


def _read_str(buf, off):
    n = buf[off]
    if off + 1 + n > len(buf):
        raise IndexError(f"string of {n} bytes at offset {off} runs past the {len(buf)}-byte payload")
    return bytes(buf[off + 1 : off + 1 + n]).decode("utf-8"), off + 1 + n


def _put_str(s):
    b = s.encode("utf-8")
    if len(b) > 255:
        raise ValueError(f"string {s!r} longer than 255 bytes")
    return bytes([len(b)]) + b


_HELLO_FIXED = struct.Struct("<BBBBIIHH32s" + "BB4HfiBB4Hfi")
_HELLO_EXT = struct.Struct("<BBBBII")  # revision, window, features, 0, clip samples, scratch bytes


@dataclass
class Hello:
    protocol_version: int
    runtime: str
    counter: str
    core_clock_hz: int
    arena_bytes: int
    max_chunk: int
    max_message: int
    model_sha256: str
    input_shape: tuple
    input_scale: float
    input_zero_point: int
    output_shape: tuple
    output_scale: float
    output_zero_point: int
    firmware_version: str
    board: str
    runtime_name: str
    labels: list = field(default_factory=list)
    # Revision 2 extension (after the labels); a v1 board has none: stop-and-wait, no audio.
    revision: int = 1
    window: int = 1
    features: int = 0
    clip_samples: int = 0
    frontend_scratch_bytes: int = 0

    @property
    def audio(self):
        return bool(self.features & FEATURE_AUDIO)

    @property
    def pipeline(self):
        """The board takes the next request's first `window` chunks while it computes (they
        wait in its UART ring) and keeps its last response until that request completes."""
        return bool(self.features & FEATURE_PIPELINE) and self.revision >= 2 and self.window > 1

    @property
    def input_bytes(self):
        n = 1
        for d in self.input_shape:
            n *= d
        return n

    @classmethod
    def decode(cls, payload):
        if len(payload) < _HELLO_FIXED.size:
            raise ProtocolError(f"HELLO payload is {len(payload)} bytes, shorter than the fixed {_HELLO_FIXED.size}")
        f = _HELLO_FIXED.unpack_from(payload)
        ver, rt, ctr, nlab, clock, arena, max_chunk, max_msg, sha = f[:9]
        in_rank, _in_type, *rest = f[9:]
        in_dims, in_scale, in_zp = rest[0:4], rest[4], rest[5]
        out_rank, _out_type = rest[6], rest[7]
        out_dims, out_scale, out_zp = rest[8:12], rest[12], rest[13]
        off = _HELLO_FIXED.size
        try:
            fw, off = _read_str(payload, off)
            board, off = _read_str(payload, off)
            rt_name, off = _read_str(payload, off)
            labels = []
            for _ in range(nlab):
                lab, off = _read_str(payload, off)
                labels.append(lab)
        except (IndexError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"HELLO strings are truncated or not UTF-8: {exc}") from None
        ext = {}
        if len(payload) - off >= _HELLO_EXT.size:
            rev, window, feats, _, clip, scratch = _HELLO_EXT.unpack_from(payload, off)
            if rev >= 2:
                ext = {"revision": rev, "window": max(1, window), "features": feats,
                       "clip_samples": clip, "frontend_scratch_bytes": scratch}
        return cls(ver, RUNTIMES.get(rt, str(rt)), COUNTERS.get(ctr, str(ctr)), clock, arena, max_chunk,
                   max_msg, sha.hex(), tuple(in_dims[:in_rank]), in_scale, in_zp,
                   tuple(out_dims[:out_rank]), out_scale, out_zp, fw, board, rt_name, labels, **ext)

    def encode(self):
        """The payload the firmware would send (used by tests to check the C side against ours)."""
        rt = {v: k for k, v in RUNTIMES.items()}[self.runtime]
        ctr = {v: k for k, v in COUNTERS.items()}[self.counter]
        ind = list(self.input_shape) + [0] * (4 - len(self.input_shape))
        outd = list(self.output_shape) + [0] * (4 - len(self.output_shape))
        fixed = _HELLO_FIXED.pack(self.protocol_version, rt, ctr, len(self.labels), self.core_clock_hz,
                                  self.arena_bytes, self.max_chunk, self.max_message,
                                  bytes.fromhex(self.model_sha256), len(self.input_shape), 1, *ind,
                                  self.input_scale, self.input_zero_point, len(self.output_shape), 1,
                                  *outd, self.output_scale, self.output_zero_point)
        tail = _put_str(self.firmware_version) + _put_str(self.board) + _put_str(self.runtime_name)
        ext = b""
        if self.revision >= 2:
            ext = _HELLO_EXT.pack(self.revision, self.window, self.features, 0, self.clip_samples,
                                  self.frontend_scratch_bytes)
        return fixed + tail + b"".join(_put_str(x) for x in self.labels) + ext


def encode_infer(seq, data, kind=INFER_KIND_TENSOR):
    return struct.pack("<IB3x", seq & 0xFFFFFFFF, kind) + bytes(data)


_RESULT_HEAD = struct.Struct("<IBBHQ")


@dataclass
class Result:
    seq: int
    status: int
    counter_kind: str
    counter: int
    output: bytes

    @classmethod
    def decode(cls, payload):
        if len(payload) < _RESULT_HEAD.size:
            raise ProtocolError(f"RESULT payload is {len(payload)} bytes, shorter than its {_RESULT_HEAD.size}-byte header")
        seq, status, ctr, n, counter = _RESULT_HEAD.unpack_from(payload)
        out = bytes(payload[_RESULT_HEAD.size :])
        if len(out) != n:
            raise ProtocolError(f"RESULT says {n} output bytes but carries {len(out)}")
        return cls(seq, status, COUNTERS.get(ctr, str(ctr)), counter, out)


def encode_audio(seq, pcm):
    """AUDIO payload: u32 seq, u8 kind 0 (int16 PCM), 3 bytes 0, 44,100 little-endian int16."""
    import numpy as np

    pcm = np.asarray(pcm)
    if pcm.shape != (CLIP_SAMPLES,):
        raise DsmnError(f"AUDIO needs {CLIP_SAMPLES} samples (1 s at 44.1 kHz), got shape {pcm.shape}")
    return struct.pack("<IB3x", seq & 0xFFFFFFFF, 0) + pcm.astype("<i2").tobytes()


_AUDIO_RESULT_HEAD = struct.Struct("<IBBHQQ")


@dataclass
class AudioResult(Result):
    """RESULT of an AUDIO request: `counter` is the network's, `frontend_counter` the front end's
    (streaming transforms plus the final deltas/normalisation/quantization)."""

    frontend_counter: int = 0

    @classmethod
    def decode(cls, payload):
        if len(payload) < _AUDIO_RESULT_HEAD.size:
            raise ProtocolError(f"AUDIO_RESULT payload is {len(payload)} bytes, shorter than its "
                                f"{_AUDIO_RESULT_HEAD.size}-byte header")
        seq, status, ctr, n, counter, fe = _AUDIO_RESULT_HEAD.unpack_from(payload)
        out = bytes(payload[_AUDIO_RESULT_HEAD.size :])
        if len(out) != n:
            raise ProtocolError(f"AUDIO_RESULT says {n} output bytes but carries {len(out)}")
        return cls(seq, status, COUNTERS.get(ctr, str(ctr)), counter, out, fe)


def decode_error(payload):
    if len(payload) < 2:
        return BoardError(0, "(truncated ERROR payload)")
    (code,) = struct.unpack_from("<H", payload)
    return BoardError(code, bytes(payload[2:]).decode("utf-8", "replace"))


class Session:
    """Request/response over one serial port, with the retries of docs/protocol.md.

    Typical use::

        with Session.open("/dev/ttyACM0") as s:
            print(s.hello.board, s.hello.model_sha256)
            result = s.infer(0, int8_tensor_bytes)

    `port` is anything with pyserial's read/write/timeout; `log`, if given, is called with one
    line per frame sent or received (for tracing a misbehaving link). Real boards need their
    baud rate (`dsmn_host.boards.get_board(name).baud`, 921600 on the Nucleos) in `open`.
    """

    def __init__(self, port, *, ack_timeout=1.0, response_timeout=60.0, retries=8, log=None, windowed=True,
                 pipelined=True):
        self.port = port
        if getattr(port, "timeout", None) != POLL_S:
            port.timeout = POLL_S
        self.ack_timeout = ack_timeout
        self.response_timeout = response_timeout
        self.retries = retries
        self.parser = FrameParser()
        self.pending = []
        self.hello = None
        self.msg_id = 0
        self.log = log
        self.windowed = windowed  # False: stop-and-wait even with a board that offers a window
        self.pipelined = pipelined  # False: never send a request before the previous one's response
        self._ahead = None  # the next request's chunks sent while the board computed (see request)
        self.chunk = None  # adapted chunk size (None: the board's max_chunk)
        self.clean = 0
        self.srtt = None
        self.stats = {"resent_chunks": 0, "naks_received": 0, "bad_frames": 0, "response_resends": 0,
                      "restarts": 0, "filler_bytes": 0, "sent_ahead_chunks": 0}

    @classmethod
    def open(cls, url, baud=115200, *, handshake=True, boot_timeout=10.0, **kwargs):
        import serial

        try:
            port = serial.serial_for_url(url, baudrate=baud, timeout=POLL_S)
        except (serial.SerialException, OSError) as exc:
            raise DsmnError(f"cannot open serial port {url}: {exc}") from None
        session = cls(port, **kwargs)
        if handshake:
            try:
                session.handshake(boot_timeout)
            except BaseException:
                port.close()
                raise
        return session

    def close(self):
        self.port.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- low level -------------------------------------------------------------------------

    def _next_frame(self, deadline):
        """The next frame or BAD before deadline (monotonic), else None."""
        while True:
            if self.pending:
                return self.pending.pop(0)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.pending.extend(self.parser.resync())
                return self.pending.pop(0) if self.pending else None
            # One fixed short timeout: pyserial re-applies the whole termios setup on every
            # timeout change, which would be a tcsetattr per read.
            data = self.port.read(max(1, getattr(self.port, "in_waiting", 0) or 1))
            if data:
                frames = self.parser.feed(data)
                if self.log:
                    for f in frames:
                        self.log("rx BAD" if f is BAD else f"rx {f.name} id={f.msg_id} idx={f.index} {f.payload[:8].hex()}")
                self.pending.extend(frames)

    def _new_id(self):
        self.msg_id = (self.msg_id % 0xFFFF) + 1  # 0 is the board's boot HELLO
        return self.msg_id

    def _unsolicited(self, frame, msg_id):
        if frame.type == HELLO and frame.msg_id == 0 and msg_id != 0:
            self.hello = Hello.decode(frame.payload)
            raise BoardReset(f"board {self.hello.board} reset during request {msg_id} (it sent its boot HELLO)")

    # -- chunk size and window ---------------------------------------------------------------

    def _rto(self):
        """How long to wait for an ACK before going back: four smoothed round trips (chunk
        sent -> its ACK, measured on first sends only), at least 0.2 s, never more than
        ack_timeout. A lost last chunk or a lost NAK then costs 0.2 s, not a second."""
        if self.srtt is None:
            return self.ack_timeout
        return min(self.ack_timeout, max(0.2, 4 * self.srtt))

    def _max_chunk(self):
        return self.hello.max_chunk if self.hello else 256

    def _link_params(self):
        """(chunk, window) for the next request: the board's limits, the adapted chunk size."""
        max_chunk = self.hello.max_chunk if self.hello else 256
        if self.chunk is None or self.chunk > max_chunk:
            self.chunk = max_chunk
        window = self.hello.window if (self.hello and self.windowed) else 1
        return max(1, min(self.chunk, max_chunk)), max(1, window)

    def _adapt(self, sent, failures):
        """Shrink the chunk on a lossy line, grow it back when clean: at 1 % byte errors a
        512-byte chunk arrives intact ~0.5 % of the time, a 64-byte one ~45 %."""
        max_chunk = self.hello.max_chunk if self.hello else 256
        if failures and failures * 8 > sent:
            self.chunk = max(MIN_CHUNK, self.chunk // 2)
            self.clean = 0
        elif failures == 0:
            self.clean += 1
            if self.clean >= 4 and self.chunk < max_chunk:
                self.chunk = min(max_chunk, self.chunk * 2)
                self.clean = 0

    def request(self, ftype, payload=b"", window=None, follow=None):
        """Send one request and return the board's response Frame (ACK/NAK handled here).

        Go-back-N with cumulative ACKs: up to `window` chunks (the board's, from HELLO) are in
        flight; an ACK of chunk i acknowledges 0..i, a NAK names the chunk the board expects
        next and the host resends from there. A message that keeps failing is restarted under a
        new id with half the chunk size (a streamed AUDIO restarts the front end with it).

        `follow` = (type, payload) of the request the caller sends next: with a board that
        says it can pipeline, its first window goes out as soon as this request's last chunk
        is acknowledged, so the line carries it while the board computes instead of idling;
        the next `request` with exactly that type and payload continues from there. Fewer
        chunks than the follow-up has go ahead, so it cannot complete (and replace the board's
        last response) before this response is in hand."""
        payload = bytes(payload)
        try:
            while True:
                chunk, win = self._link_params()
                if window is not None:
                    win = window
                result = self._send(ftype, payload, chunk, win, follow)
                if result is not None:
                    return result
                self.stats["restarts"] += 1
        except BaseException:
            self._ahead = None  # a reset or a failure: the board's partial message is moot
            raise

    def _send_ahead(self, follow, win):
        """Send the first chunks of the next request while the board computes this one."""
        ftype, payload = follow[0], bytes(follow[1])
        chunk = self._link_params()[0]
        msg_id = self._new_id()
        frames = chunk_frames(ftype, msg_id, payload, chunk, FLAG_WINDOWED)
        k = min(win, len(frames) - 1)
        if k < 1:
            self.msg_id -= 1  # nothing sent: give the id back
            return
        for i in range(k):
            if self.log:
                self.log(f"tx {TYPE_NAMES.get(ftype, ftype)} id={msg_id} chunk {i}/{len(frames)} (ahead)")
            self.port.write(frames[i])
        self.stats["sent_ahead_chunks"] += k
        self._ahead = {"type": ftype, "payload": payload, "msg_id": msg_id, "frames": frames, "win": win,
                       "sent": k, "chunk": chunk}

    def _send(self, ftype, payload, chunk, win, follow=None):
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead["type"] == ftype and ahead["win"] == win and ahead["payload"] == payload:
            # Its first chunks went out while the board computed the previous request; their
            # round trips included that computation, so they give no RTT sample (None).
            msg_id, frames, nxt, chunk = ahead["msg_id"], ahead["frames"], ahead["sent"], ahead["chunk"]
            sent_at = {i: None for i in range(nxt)}
        else:
            msg_id = self._new_id()  # any other partial message on the board is restarted by chunk 0
            frames = chunk_frames(ftype, msg_id, payload, chunk, FLAG_WINDOWED if win > 1 else 0)
            nxt, sent_at = 0, {}
        name = TYPE_NAMES.get(ftype, ftype)
        response = None
        base = 0
        tries = failures = 0
        sent = nxt
        went_back = (-1, 0.0)
        progress_at = time.monotonic()
        while base < len(frames) and response is None:
            while nxt < len(frames) and nxt < base + win:
                if self.log:
                    self.log(f"tx {name} id={msg_id} chunk {nxt}/{len(frames)}")
                self.port.write(frames[nxt])
                sent_at[nxt] = None if nxt in sent_at else time.monotonic()  # Karn: first sends only
                nxt += 1
                sent += 1
            # Exponential backoff after timeouts: the filler and resends take time to drain.
            f = self._next_frame(time.monotonic() + min(self.ack_timeout, self._rto() * (2 ** min(tries, 6))))
            if f is None or (f is not BAD and f.type == NAK and len(f.payload) >= 2):
                failures += 1
                if f is None:
                    tries += 1
                    self.stats["resent_chunks"] += nxt - base
                    nxt = base  # timeout: go back to the oldest unacknowledged chunk
                    # The board may be inside a "frame" whose corrupted len promised up to
                    # max_chunk bytes, swallowing our resends: fill it up (bytes outside frames
                    # are ignored) so its CRC fails and the resend lands on a hunting parser.
                    if tries >= 2:  # once is more likely a slow board than a swallowing one
                        self.port.write(bytes(self._max_chunk() + CRC.size))
                        self.stats["filler_bytes"] += self._max_chunk() + CRC.size
                else:
                    self.stats["naks_received"] += 1
                    (idx,) = struct.unpack_from("<H", f.payload)
                    # The chunk the board wants next: of this message (it may already hold ones
                    # whose ACK we lost), or of another one (start over).
                    if f.msg_id == msg_id and idx <= len(frames):
                        if went_back[0] == idx and time.monotonic() - went_back[1] < self._rto():
                            continue  # set off by chunks sent before we went back to idx
                        if idx > base:
                            base, tries, progress_at = idx, 0, time.monotonic()
                        else:
                            tries += 1
                        self.stats["resent_chunks"] += max(0, nxt - idx)
                        nxt = idx
                        went_back = (idx, time.monotonic())
                    else:
                        self.stats["resent_chunks"] += nxt
                        base = nxt = 0
                        tries += 1
                if chunk > MIN_CHUNK and (tries >= 3 or (failures >= 8 and failures * 2 > base + 1)):
                    # Hopeless at this size: restart the message (new id) with half the chunk.
                    self.chunk = max(MIN_CHUNK, chunk // 2)
                    self.clean = 0
                    return None
                # Give up after `retries` resends without progress that also took at least
                # `retries` ACK timeouts (short adaptive timeouts must not make it hastier).
                if tries > self.retries and time.monotonic() - progress_at > self.retries * self.ack_timeout:
                    raise ProtocolError(f"{name} chunk {base}/{len(frames)}: no ACK after {self.retries} resends")
                continue
            if f is BAD:
                self.stats["bad_frames"] += 1
                continue
            self._unsolicited(f, msg_id)
            if f.type == ACK and f.msg_id == msg_id and len(f.payload) >= 2:
                (idx,) = struct.unpack_from("<H", f.payload)
                if base <= idx < len(frames):
                    if sent_at.get(idx) is not None:
                        sample = time.monotonic() - sent_at[idx]
                        self.srtt = sample if self.srtt is None else 0.875 * self.srtt + 0.125 * sample
                    base, tries, progress_at = idx + 1, 0, time.monotonic()
                    nxt = max(nxt, base)
            elif f.msg_id == msg_id and f.type not in (ACK, NAK):
                response = f  # overtook the last ACK
        self._adapt(sent, failures)
        if response is None and follow is not None and self.pipelined and self.hello is not None \
                and self.hello.pipeline and win > 1:
            self._send_ahead(follow, win)
        ahead_id = self._ahead["msg_id"] if self._ahead else None
        deferred = []  # the follow-up's ACKs/NAKs that arrive before this response was had
        tries = 0
        # A lost response is asked for again (NAK) after `probe` seconds, not after the whole
        # response timeout: while the board still computes, the NAK waits in its UART ring and
        # only makes it resend its previous response, which carries another id and is ignored.
        probe = min(self.response_timeout, max(1.0, 4 * self.ack_timeout))
        give_up = time.monotonic() + self.response_timeout
        while response is None:
            deadline = time.monotonic() + probe
            f = self._next_frame(deadline)
            if f is not None and f is not BAD:
                self._unsolicited(f, msg_id)
                if f.msg_id == msg_id and f.type not in (ACK, NAK):
                    response = f
                elif ahead_id is not None and f.type in (ACK, NAK) and (
                        f.msg_id == ahead_id or (f.type == NAK and f.msg_id == msg_id)):
                    # The board went on to the follow-up (this response was lost on the way):
                    # its ACKs, and a NAK saying it waits for a new message's chunk 0, are the
                    # follow-up's to act on.
                    deferred.append(f)
                continue
            if f is BAD:
                self.stats["bad_frames"] += 1
            tries += 1
            # A long response (HELLO) on a lossy line needs more asks than a chunk does.
            if tries > 4 * self.retries and time.monotonic() > give_up:
                raise ProtocolError(f"no response to {name} (msg {msg_id}) after {4 * self.retries} NAKs")
            self.stats["response_resends"] += 1
            if ahead_id is not None and tries >= 2:
                # A follow-up chunk with a corrupted len may hold the board's parser, which would
                # swallow the NAK: complete that frame first (its CRC fails, the board NAKs it).
                self.port.write(bytes(self._max_chunk() + CRC.size))
                self.stats["filler_bytes"] += self._max_chunk() + CRC.size
            self.port.write(encode_frame(NAK, msg_id, 0, 1))
        self.pending[:0] = deferred
        if response.type == ERROR:
            raise decode_error(response.payload)
        return response

    # -- messages --------------------------------------------------------------------------

    def handshake(self, boot_timeout=10.0):
        """Take the boot HELLO if it is (or soon will be) in the input, else ask for one."""
        deadline = time.monotonic() + min(boot_timeout, 1.0)
        while True:
            f = self._next_frame(deadline)
            if f is None:
                break
            if f is not BAD and f.type == HELLO and f.msg_id == 0:
                self.hello = Hello.decode(f.payload)
        if self.hello is None:
            end = time.monotonic() + boot_timeout
            last = None
            while time.monotonic() < end:
                try:
                    saved, self.response_timeout = self.response_timeout, 1.0
                    try:
                        self.hello = Hello.decode(self.request(HELLO).payload)
                    finally:
                        self.response_timeout = saved
                    break
                except BoardReset:
                    break  # the HELLO that came in is the one we want
                except ProtocolError as exc:
                    last = exc
            if self.hello is None:
                raise ProtocolError(f"no HELLO from the board within {boot_timeout:.0f} s "
                                    f"(banner bytes seen: {bytes(self.parser.text[-80:])!r}; last error: {last})")
        if self.hello.protocol_version != VERSION:
            raise ProtocolError(f"board speaks protocol v{self.hello.protocol_version}, host speaks v{VERSION}")
        # Asking for HELLO set the chunk to the 256-byte guess made before the board's max_chunk
        # was known; starting there cost the first clips half-size chunks (a quarter of the
        # bytes in flight) until four clean messages grew it back. Start at the board's max.
        self.chunk, self.clean = None, 0
        return self.hello

    def get_hello(self):
        self.hello = Hello.decode(self.request(HELLO).payload)
        return self.hello

    def ping(self, payload, window=None):
        """Send payload, return (length, crc32) the board computed over what it received.
        `window` overrides the board's (a PING with many chunks in flight measures what the
        line itself carries: the link's limit)."""
        f = self.request(PING, payload, window=window)
        if f.type != PONG or len(f.payload) != 8:
            raise ProtocolError(f"expected an 8-byte PONG, got {f.name} of {len(f.payload)} bytes")
        n, crc = struct.unpack("<II", f.payload)
        if n != len(payload) or crc != crc32(bytes(payload)):
            raise ProtocolError(f"PONG mismatch: board got {n} bytes crc {crc:08x}, sent {len(payload)} "
                                f"crc {crc32(bytes(payload)):08x}")
        return n, crc

    def infer(self, seq, tensor, follow=None):
        """Run one inference on an int8 input (bytes or numpy int8 array); returns a Result.
        `follow`: the (type, payload) the caller sends next, sent ahead (see `request`)."""
        data = tensor.tobytes() if hasattr(tensor, "tobytes") else bytes(tensor)
        if self.hello is not None and len(data) != self.hello.input_bytes:
            raise DsmnError(f"input is {len(data)} bytes but the board's model takes "
                            f"{self.hello.input_bytes} ({self.hello.input_shape})")
        return self._sequenced(INFER, encode_infer(seq, data), RESULT, Result, seq, follow)

    def audio(self, seq, pcm, follow=None):
        """Stream one clip's int16 PCM (44,100 samples) through the board's front end and
        network; returns an AudioResult (network and front-end counters separately)."""
        if self.hello is not None and not self.hello.audio:
            raise DsmnError(f"board {self.hello.board} has no on-device front end (firmware built "
                            "without it, or its scratch does not fit); use features input")
        return self._sequenced(AUDIO, encode_audio(seq, pcm), AUDIO_RESULT, AudioResult, seq, follow)

    def _sequenced(self, kind, payload, want, result_cls, seq, follow=None):
        """One request whose answer (type `want`) carries the request's sequence number back:
        decoded with `result_cls`, and refused if it answers another clip."""
        f = self.request(kind, payload, follow=follow)
        name = TYPE_NAMES.get(want, want)
        if f.type != want:
            raise ProtocolError(f"expected {name}, got {f.name}")
        r = result_cls.decode(f.payload)
        if r.seq != seq & 0xFFFFFFFF:
            raise ProtocolError(f"{name} for seq {r.seq}, asked for {seq}")
        return r

    def read_input(self, follow=None):
        """The int8 input the board's front end computed for the last AUDIO (bytes), read in
        pieces of the current chunk size (the largest response on a clean line) so a lossy line
        shrinks them too. `follow` goes ahead
        behind the last piece (not before: the next AUDIO's chunk 0 restarts the front end)."""
        total = self.hello.input_bytes
        out = bytearray()
        while len(out) < total:
            # Each piece is a round trip with the host->board line idle: on a clean line (the
            # chunk at the board's max) ask for the largest response, half the round trips.
            chunk = self._link_params()[0]
            n = min(MAX_PAYLOAD - 6 if chunk >= self._max_chunk() else chunk, MAX_PAYLOAD - 6, total - len(out))
            last = len(out) + n >= total
            f = self.request(INPUT, struct.pack("<IH", len(out), n), follow=follow if last else None)
            if f.type != INPUT or len(f.payload) < 6:
                raise ProtocolError(f"expected INPUT, got {f.name} of {len(f.payload)} bytes")
            off, got = struct.unpack_from("<IH", f.payload)
            if off != len(out) or got != len(f.payload) - 6 or got == 0:
                raise ProtocolError(f"INPUT piece at {off} of {got} bytes, asked for {len(out)} (+{n})")
            out += f.payload[6:]
        return bytes(out)
