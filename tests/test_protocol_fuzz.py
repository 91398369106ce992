"""libFuzzer + AddressSanitizer on the firmware's protocol parser, for a bounded time (~15 s).

Seeds are valid frames and chunked messages from the Python implementation, so the fuzzer
starts from inputs that reach reassembly, duplicates, NAK resends, overflow, windowed and
pipelined (next message ahead of a response probe) paths.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dsmn_host.target import protocol as P

ROOT = Path(__file__).resolve().parents[1]
FUZZ_SECONDS = 15


def _seeds(corpus):
    corpus.mkdir()
    seeds = {
        "ping": P.encode_frame(P.PING, 1, 0, 1, b"hello"),
        "chunks": b"".join(P.chunk_frames(P.INFER, 2, bytes(range(200)), 64)),
        "dup": b"".join(P.chunk_frames(P.PING, 3, bytes(150), 64)[i] for i in (0, 0, 1, 1, 2)),
        "gap": b"".join(P.chunk_frames(P.PING, 4, bytes(150), 64)[i] for i in (0, 2, 1, 2)),
        "overflow": b"".join(P.chunk_frames(P.PING, 5, bytes(400), 64)),
        "nak": P.encode_frame(P.PING, 6, 0, 1, b"x") + P.encode_frame(P.NAK, 6, 0, 1),
        "noise": b"\xa5\xa5\x5a\x00" + P.encode_frame(P.HELLO, 7, 0, 1)[:-1] + b"\xa5\x5a" + bytes(10),
        # revision 2: a windowed sender's go-back (gap, repeated round) and a streamed AUDIO
        "window": b"".join(P.chunk_frames(P.PING, 8, bytes(200), 64, P.FLAG_WINDOWED)[i] for i in (0, 2, 3, 1, 2, 3)),
        "audio": b"".join(P.chunk_frames(P.AUDIO, 9, bytes(range(250)), 63, P.FLAG_WINDOWED)[i]
                          for i in (0, 1, 1, 3, 2, 3)),
        # pipelining: a whole message, the next one's first window, a host NAK (response
        # probe) between its chunks, then the rest of it
        "pipelined": b"".join(P.chunk_frames(P.INFER, 10, bytes(130), 64, P.FLAG_WINDOWED))
        + b"".join(P.chunk_frames(P.INFER, 11, bytes(range(200)), 64, P.FLAG_WINDOWED)[i] for i in (0, 1))
        + P.encode_frame(P.NAK, 10, 0, 1)
        + b"".join(P.chunk_frames(P.INFER, 11, bytes(range(200)), 64, P.FLAG_WINDOWED)[i] for i in (2, 3)),
    }
    for name, data in seeds.items():
        (corpus / name).write_bytes(data)


def test_protocol_parser_under_libfuzzer_and_asan(tmp_path):
    clang = shutil.which("clang")
    if clang is None:
        pytest.fail("clang is not installed (scripts/bootstrap.sh installs it); libFuzzer needs it")
    exe = tmp_path / "fuzz_protocol"
    subprocess.run([clang, "-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
                    f"-I{ROOT / 'firmware' / 'app'}", "-o", str(exe),
                    str(ROOT / "tests" / "fuzz" / "fuzz_protocol.c"), str(ROOT / "firmware" / "app" / "protocol.c")],
                   check=True)
    corpus = tmp_path / "corpus"
    _seeds(corpus)
    proc = subprocess.run([str(exe), f"-max_total_time={FUZZ_SECONDS}", "-timeout=5", "-rss_limit_mb=2048",
                           "-print_final_stats=1", str(corpus)], capture_output=True, text=True,
                          timeout=FUZZ_SECONDS + 60,
                          # RSS here is ASan's quarantine and shadow, not the parser (whose heap
                          # stays ~24 MB); a smaller quarantine keeps the run far from the limit
                          env=dict(os.environ, ASAN_OPTIONS="quarantine_size_mb=64"))
    log = proc.stderr
    assert proc.returncode == 0, log[-3000:]
    runs = int(log.split("stat::number_of_executed_units:")[1].split()[0])
    assert runs > 1000, f"the fuzzer ran only {runs} inputs"
