"""Protocol v1 (docs/protocol.md): both implementations against the spec and each other.

The C side is firmware/app/protocol.c built for the host with ASan/UBSan (tests/protocol_harness.c);
the Python side is dsmn_host.target.protocol. The session tests run the real Session over a real pty,
with and without the fault-injecting relay in between.
"""

import os
import shutil
import struct
import subprocess
import tty
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from dsmn_host.target import protocol as P

ROOT = Path(__file__).resolve().parents[1]


def test_crc_is_ieee_crc32():
    assert P.crc32(b"123456789") == 0xCBF43926 == zlib.crc32(b"123456789")


def test_frame_layout_matches_spec_table():
    frame = P.encode_frame(P.PING, 0x1234, 2, 3, b"\x01\x02\x03")
    # sync, type, flags, msg_id, index, count, len (little-endian), payload, crc over [2:]
    assert frame[:12] == bytes([0xA5, 0x5A, 0x02, 0x00, 0x34, 0x12, 0x02, 0x00, 0x03, 0x00, 0x03, 0x00])
    assert frame[12:15] == b"\x01\x02\x03"
    assert struct.unpack("<I", frame[15:])[0] == zlib.crc32(frame[2:15])
    with pytest.raises(ValueError):
        P.encode_frame(P.PING, 1, 0, 1, bytes(P.MAX_PAYLOAD + 1))


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.fail("no host C compiler (gcc) on PATH")
    out = tmp_path_factory.mktemp("harness") / "protocol_harness"
    subprocess.run([cc, "-std=c99", "-D_DEFAULT_SOURCE", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    f"-I{ROOT / 'firmware' / 'app'}", "-o", str(out),
                    str(ROOT / "tests" / "protocol_harness.c"), str(ROOT / "firmware" / "app" / "protocol.c")],
                   check=True)
    return out


def test_c_encoder_matches_python(harness):
    lines = subprocess.run([str(harness), "vectors"], capture_output=True, text=True, check=True).stdout.split()
    assert int(lines[0], 16) == 0xCBF43926
    assert bytes.fromhex(lines[1]) == P.encode_frame(P.PING, 0x1234, 2, 3, bytes([1, 2, 3, 0xA5, 0x5A]))
    assert bytes.fromhex(lines[2]) == P.encode_frame(P.HELLO, 0, 0, 1)
    assert lines[3] == "0"  # a frame that does not fit the buffer is refused, not truncated


frames_st = st.lists(st.tuples(st.sampled_from([P.PING, P.INFER, P.ACK, P.RESULT]),
                               st.integers(0, 0xFFFF), st.binary(max_size=300)), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(frames_st, st.lists(st.binary(max_size=20), min_size=7, max_size=7), st.integers(1, 64))
def test_python_parser_finds_frames_among_noise_and_any_split(frames, noise, step):
    noise = [n.replace(b"\xA5", b"") for n in noise]  # noise without sync bytes
    stream = noise[0] + b"".join(P.encode_frame(t, i, 0, 1, p) + noise[k + 1] for k, (t, i, p) in enumerate(frames))
    parser = P.FrameParser()
    got = []
    for k in range(0, len(stream), step):
        got += parser.feed(stream[k : k + step])
    assert [(f.type, f.msg_id, f.payload) for f in got] == frames


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.data())
def test_python_parser_never_accepts_a_corrupted_frame(payload, data):
    frame = bytearray(P.encode_frame(P.INFER, 7, 0, 1, payload))
    pos = data.draw(st.integers(2, len(frame) - 1))
    frame[pos] ^= data.draw(st.integers(1, 255))
    out = P.FrameParser().feed(bytes(frame))
    assert all(f is P.BAD for f in out)


def _parse_all(stream):
    """Python parser over a whole stream, resyncing at the end like a Session on timeout (a fake
    header inside the corrupted frame's payload may claim more bytes than follow)."""
    parser = P.FrameParser()
    events = parser.feed(stream)
    while True:
        more = parser.resync()
        if not more:
            return events
        events += more


@settings(max_examples=40, deadline=None)
@given(frames_st, st.lists(st.binary(max_size=20), min_size=7, max_size=7), st.data())
def test_c_parser_agrees_with_python_parser(harness, frames, noise, data):
    """Same stream, same frames: valid frames among noise, plus one corrupted frame whose
    loss both sides must report (as BAD) without losing the frames after it."""
    noise = [n.replace(b"\xA5", b"") for n in noise]
    encoded = [P.encode_frame(t, i, 0, 1, p) for t, i, p in frames]
    victim = data.draw(st.integers(0, len(encoded) - 1))
    bad = bytearray(encoded[victim])
    bad[-1] ^= 0xFF  # break its CRC only: both parsers consume it whole, then resync
    stream = noise[0] + b"".join(bytes(bad if k == victim else e) + noise[k + 1] for k, e in enumerate(encoded))
    out = subprocess.run([str(harness), "parse"], input=stream, capture_output=True, check=True).stdout.decode()
    c_events = [tuple(line.split()) for line in out.splitlines()]
    py_events = [("B",) if f is P.BAD else ("F", str(f.type), str(f.msg_id), str(f.index), str(f.count),
                                            str(len(f.payload)), f"{P.crc32(f.payload):08x}")
                 for f in _parse_all(stream)]
    expected = [("F", str(t), str(i), "0", "1", str(len(p)), f"{P.crc32(p):08x}") if k != victim else ("B",)
                for k, (t, i, p) in enumerate(frames)]
    assert c_events == expected
    assert [e for e in py_events if e[0] == "F"] == [e for e in expected if e[0] == "F"]


def _hello():
    return P.Hello(1, "native", "systick", 25_000_000, 1234, 256, 4096, "ab" * 32, (1, 44, 256, 2), 0.03125,
                   -2, (1, 13), 0.001953125, 9, "1.0.0", "harness", "native", ["airport", "bus", "tram"])


def test_hello_round_trip_and_fixed_offsets():
    h = _hello()
    raw = h.encode()
    assert raw[0] == 1 and struct.unpack_from("<I", raw, 4)[0] == 25_000_000
    assert raw[16:48] == bytes.fromhex("ab" * 32) and raw[48] == 4
    assert struct.unpack_from("<4H", raw, 50) == (1, 44, 256, 2)
    assert raw[84] == len("1.0.0")
    assert P.Hello.decode(raw) == h
    with pytest.raises(P.ProtocolError):
        P.Hello.decode(raw[:-2])  # a label cut short


def _serve(harness, hello, tmp_path):
    """The C protocol layer serving `hello` on a real pty: yields the pty path, then checks the
    layer did not crash (ASan/UBSan)."""
    hello_file = tmp_path / "hello.bin"
    hello_file.write_bytes(hello.encode())
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    env = dict(os.environ, HARNESS_HELLO=str(hello_file), ASAN_OPTIONS="detect_leaks=0")
    proc = subprocess.Popen([str(harness), "serve"], stdin=master, stdout=master, env=env)
    try:
        yield os.ttyname(slave)
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
        os.close(slave)
    assert proc.returncode in (-9, 0), "the C protocol layer crashed (ASan/UBSan)"


@pytest.fixture
def served(harness, tmp_path):
    """The C protocol layer serving on a real pty; yields the pty path."""
    yield from _serve(harness, _hello(), tmp_path)


def _expected(data):
    return bytes(b ^ 0x5A for b in data[:13])


def test_session_against_c_layer(served):
    with P.Session.open(served) as s:
        assert s.hello == _hello()
        assert s.get_hello() == _hello()
        for n in (0, 1, 255, 256, 257, 1000, 4000):  # 256 is the harness's chunk size
            payload = os.urandom(n)
            assert s.ping(payload) == (n, P.crc32(payload))
        for seq in range(5):
            x = os.urandom(44 * 256 * 2 // 8)  # the harness takes any length >= 13
            r = P.Result.decode(s.request(P.INFER, P.encode_infer(seq, x)).payload)
            assert r.seq == seq and r.status == 0 and r.output == _expected(x)
            assert r.counter == len(x) + 8  # the harness reports the message length it assembled
        with pytest.raises(P.BoardError) as e:
            s.request(0x42, b"?")
        assert e.value.code == 1
        with pytest.raises(P.BoardError) as e:
            s.ping(bytes(5000))  # larger than the harness's 4096-byte message buffer
        assert e.value.code == 3
        assert s.stats["resent_chunks"] == 0 and s.stats["bad_frames"] == 0


class NoisyPort:
    """A pyserial port whose traffic suffers seeded bursts of dropped or flipped bytes, both ways
    (bursty, like overruns and line noise; independent 1 % byte errors would wreck every chunk)."""

    def __init__(self, port, rate, max_burst, seed):
        import random

        self.port, self.rate, self.max_burst = port, rate, max_burst
        self.rng = random.Random(seed)
        self.burst = {"tx": [0, None], "rx": [0, None]}
        self.moved = self.faults = 0

    timeout = property(lambda self: self.port.timeout, lambda self, v: setattr(self.port, "timeout", v))
    in_waiting = property(lambda self: self.port.in_waiting)

    def _mangle(self, data, way):
        burst, out = self.burst[way], bytearray()
        for b in data:
            self.moved += 1
            if burst[0] == 0 and self.rng.random() < self.rate / ((1 + self.max_burst) / 2):
                burst[:] = [self.rng.randint(1, self.max_burst), self.rng.choice(("drop", "flip"))]
            if burst[0]:
                burst[0] -= 1
                self.faults += 1
                if burst[1] == "drop":
                    continue
                b ^= self.rng.randrange(1, 256)
            out.append(b)
        return bytes(out)

    def write(self, data):
        return self.port.write(self._mangle(data, "tx"))

    def read(self, n):
        return self._mangle(self.port.read(n), "rx")

    def close(self):
        self.port.close()


def test_session_survives_line_faults_and_never_returns_a_wrong_result(served):
    import serial

    port = NoisyPort(serial.Serial(served, 115200, timeout=P.POLL_S), rate=0.01, max_burst=16, seed=7)
    with P.Session(port, ack_timeout=0.2, response_timeout=0.3, retries=30) as s:
        s.handshake(boot_timeout=10)
        for seq in range(40):
            x = os.urandom(1500)
            r = P.Result.decode(s.request(P.INFER, P.encode_infer(seq, x)).payload)
            assert r.seq == seq and r.output == _expected(x)
        stats = dict(s.stats)
    assert port.faults / port.moved > 0.003, "no faults injected; the test would prove nothing"
    assert stats["resent_chunks"] + stats["response_resends"] > 0


def test_board_reset_is_detected_not_waited_out(harness, tmp_path):
    """A board that reboots mid-session announces itself with its boot HELLO; the pending
    request fails with BoardReset at once and the session knows the new HELLO."""
    hello_file = tmp_path / "hello.bin"
    hello_file.write_bytes(_hello().encode())
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    env = dict(os.environ, HARNESS_HELLO=str(hello_file), ASAN_OPTIONS="detect_leaks=0")
    procs = [subprocess.Popen([str(harness), "serve"], stdin=master, stdout=master, env=env)]
    try:
        with P.Session.open(os.ttyname(slave), response_timeout=5) as s:
            assert s.ping(b"before") == (6, P.crc32(b"before"))
            procs[0].kill()
            procs[0].wait()
            procs.append(subprocess.Popen([str(harness), "serve"], stdin=master, stdout=master, env=env))
            with pytest.raises(P.BoardReset):
                for _ in range(20):  # the new board's boot HELLO arrives during one of these
                    s.ping(b"x" * 300)
            assert s.hello == _hello()
            assert s.ping(b"after") == (5, P.crc32(b"after"))
    finally:
        for p in procs:
            p.kill()
            p.wait()
        os.close(master)
        os.close(slave)


def _hello_rev2(window=4, features=P.FEATURE_AUDIO | P.FEATURE_PIPELINE):
    import dataclasses

    return dataclasses.replace(_hello(), revision=2, window=window, features=features, clip_samples=44100,
                               frontend_scratch_bytes=86048)


@pytest.fixture
def served_rev2(harness, tmp_path):
    """The C layer behind a revision-2 HELLO (window 4, AUDIO): a windowed host."""
    yield from _serve(harness, _hello_rev2(), tmp_path)


def test_hello_extension_round_trip_and_v1_view():
    h = _hello_rev2()
    raw = h.encode()
    assert P.Hello.decode(raw) == h and len(raw) == len(_hello().encode()) + 12
    assert h.pipeline and not _hello_rev2(features=P.FEATURE_AUDIO).pipeline
    # what a v1 host reads of it: everything up to the labels, nothing else changed
    v1 = P.Hello.decode(_hello().encode())
    assert v1.window == 1 and not v1.pipeline and raw[0] == 1


def _pipelined_infers(s, xs):
    """INFERs of xs, each sent with the next one as its follow-up (as eval sends clips)."""
    out = []
    for seq, x in enumerate(xs):
        follow = (P.INFER, P.encode_infer(seq + 1, xs[seq + 1])) if seq + 1 < len(xs) else None
        r = P.Result.decode(s.request(P.INFER, P.encode_infer(seq, x), follow=follow).payload)
        out.append((r.seq, r.output))
    return out


def test_pipelined_requests_give_the_stop_and_wait_results(served_rev2):
    """Each request's follow-up goes ahead (window chunks) before its response; the responses,
    in order, equal those of one-request-at-a-time, and nothing had to be resent."""
    xs = [os.urandom(n) for n in (3000, 1025, 4000, 2000, 3000)]
    with P.Session.open(served_rev2) as s:
        assert s.hello.pipeline
        got = _pipelined_infers(s, xs)
        assert s.stats["sent_ahead_chunks"] == 4 * 4  # 4 follow-ups, a window of 4 each
        assert s.stats["resent_chunks"] == 0 and s.stats["bad_frames"] == 0
        # an unmatched follow-up (the caller changed its mind) is restarted, not mixed in
        s.request(P.INFER, P.encode_infer(7, xs[0]), follow=(P.INFER, P.encode_infer(8, xs[2])))
        r = P.Result.decode(s.request(P.INFER, P.encode_infer(9, xs[1])).payload)
        assert (r.seq, r.output) == (9, _expected(xs[1]))
    with P.Session.open(served_rev2, pipelined=False) as s:
        assert _pipelined_infers(s, xs) == got and s.stats["sent_ahead_chunks"] == 0
    assert got == [(i, _expected(x)) for i, x in enumerate(xs)]


@pytest.fixture
def served_rev2_no_pipeline(harness, tmp_path):
    """A revision-2 board with a window but without the pipelining capability bit."""
    yield from _serve(harness, _hello_rev2(features=P.FEATURE_AUDIO), tmp_path)


def test_board_without_the_capability_gets_stop_and_wait_between_requests(served_rev2_no_pipeline, served):
    xs = [os.urandom(n) for n in (3000, 2000, 3000)]
    for url in (served_rev2_no_pipeline, served):  # revision 2 without the bit; v1 (no extension)
        with P.Session.open(url) as s:
            assert not s.hello.pipeline
            assert _pipelined_infers(s, xs) == [(i, _expected(x)) for i, x in enumerate(xs)]
            assert s.stats["sent_ahead_chunks"] == 0


def test_pipelined_requests_under_bursty_faults(served_rev2):
    """Drops and corruption both ways (~1 % of bytes, bursts): lost responses are asked for
    again while the follow-up's chunks wait on the board, and every result is the right one."""
    import serial

    port = NoisyPort(serial.Serial(served_rev2, 115200, timeout=P.POLL_S), rate=0.01, max_burst=16, seed=11)
    xs = [os.urandom(1500 + 37 * i) for i in range(30)]
    with P.Session(port, ack_timeout=0.2, response_timeout=0.5, retries=30) as s:
        s.handshake(boot_timeout=10)
        assert _pipelined_infers(s, xs) == [(i, _expected(x)) for i, x in enumerate(xs)]
        stats = dict(s.stats)
    assert port.faults / port.moved > 0.003, "no faults injected; the test would prove nothing"
    assert stats["sent_ahead_chunks"] > 0 and stats["resent_chunks"] + stats["response_resends"] > 0


def _audio_check(s, seq, pcm):
    r = P.AudioResult.decode(s.request(P.AUDIO, P.encode_audio(seq, pcm)).payload)
    body = pcm.astype("<i2").tobytes()
    assert r.seq == seq and r.counter == len(body) and r.frontend_counter == P.crc32(body)


def test_windowed_session_and_streamed_audio(served_rev2):
    import numpy as np

    rng = np.random.default_rng(0)
    with P.Session.open(served_rev2) as s:
        assert s.hello.window == 4 and s.hello.audio
        for n in (0, 1, 255, 256, 257, 4000):
            payload = os.urandom(n)
            assert s.ping(payload) == (n, P.crc32(payload))
        _audio_check(s, 3, rng.integers(-32768, 32768, 44100).astype(np.int16))
        assert s.stats["resent_chunks"] == 0 and s.stats["bad_frames"] == 0


def test_windowed_session_at_one_percent_uniform_byte_errors(served_rev2):
    """Independent (not bursty) byte errors, 1 % both ways: the chunk shrinks from 256 to what
    gets through, every streamed byte arrives once and in order, nothing wrong is returned."""
    import numpy as np
    import serial

    rng = np.random.default_rng(1)
    port = NoisyPort(serial.Serial(served_rev2, 115200, timeout=P.POLL_S), rate=0.01, max_burst=1, seed=3)
    with P.Session(port, ack_timeout=0.2, response_timeout=5, retries=30) as s:
        s.handshake(boot_timeout=20)
        for seq in range(3):
            x = os.urandom(3000)
            r = P.Result.decode(s.request(P.INFER, P.encode_infer(seq, x)).payload)
            assert r.seq == seq and r.output == _expected(x)
        # a short streamed message (the harness takes any length; a clip is 88 KB)
        body = rng.integers(-32768, 32768, 3000).astype("<i2").tobytes()
        r = P.AudioResult.decode(s.request(P.AUDIO, struct.pack("<IB3x", 9, 0) + body).payload)
        assert r.seq == 9 and r.counter == len(body) and r.frontend_counter == P.crc32(body)
        assert s.chunk < 256 and s.stats["restarts"] > 0
    assert 0.005 < port.faults / port.moved < 0.02
