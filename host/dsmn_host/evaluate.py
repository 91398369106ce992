"""`dsmn-host eval`: stream clips to one or more boards over protocol v1 and measure them.

The harness keeps exactly one piece of durable state, the results journal
(`REPORT_DIR/results.jsonl`, one fsynced JSON line per clip). Everything else — which clips are
still to do, the report — is derived from it, so a run killed at any instant resumes without
losing or repeating a clip, and several boards can share one journal.

The input tensor of every clip is computed here, on the host, with the training preprocessing
(`features.logmel_to_input`) and quantized with the board's own input scale/zero point, and the
same bytes are run through the TFLite-Micro Python interpreter: the board must reproduce that
reference, which separates "the model is inaccurate" from "the port of it is wrong".
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from dsmn_host import modelcard
from dsmn_host.errors import DsmnError
from dsmn_host.int8io import prepare_input, quantize  # noqa: F401  (the one quantizer, as evaluate.quantize)

RESULTS = "results.jsonl"
RUN_JSON = "run.json"


# ----------------------------------------------------------------------------------------------
# Results journal


class Journal:
    """Append-only JSONL of per-clip results keyed by clip filename.

    A `kill -9` can leave at most one partial last line (the write of the record in flight);
    it is cut off on open, so that record is simply redone. Records are fsynced one by one:
    once `append` returns, the clip is never sent again.
    """

    def __init__(self, path, resume=False):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.records = []
        self.done = set()
        if self.path.exists() and self.path.stat().st_size:
            if not resume:
                raise DsmnError(f"{self.path}: results of an earlier run exist; pass --resume to continue it "
                                "or choose another --out")
            self._load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "ab")

    def _load(self):
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # torn last record: drop it, it will be redone
            with open(self.path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        for lineno, line in enumerate(data[:end].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = rec["filename"]
            except (ValueError, KeyError, TypeError):
                raise DsmnError(f"{self.path}, line {lineno}: not a results record; "
                                "the journal is corrupt (delete it to start over)") from None
            if key in self.done:
                raise DsmnError(f"{self.path}, line {lineno}: {key} recorded twice; the journal is corrupt")
            self.done.add(key)
            self.records.append(rec)

    def __contains__(self, filename):
        return filename in self.done

    def __len__(self):
        return len(self.records)

    def append(self, record) -> bool:
        """Write one record durably; False (and nothing written) if its clip is already done."""
        line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if record["filename"] in self.done:
                return False
            self._f.write(line)
            self._f.flush()
            os.fsync(self._f.fileno())
            self.done.add(record["filename"])
            self.records.append(record)
            return True

    def close(self):
        self._f.close()


def read_results(report_dir):
    """The records of `REPORT_DIR/results.jsonl` (ignoring a torn last line)."""
    path = Path(report_dir) / RESULTS
    if not path.is_file():
        raise DsmnError(f"{path}: no results journal")
    out = []
    data = path.read_bytes()
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


# ----------------------------------------------------------------------------------------------
# Host int8 reference (model card: dsmn_host.modelcard; input preparation: dsmn_host.int8io)


class HostReference:
    """The int8 model run by the TFLite-Micro Python interpreter: what the board must reproduce."""

    def __init__(self, tflite_path):
        from tflite_micro.python.tflite_micro import runtime

        self.path = Path(tflite_path)
        try:
            self._interp = runtime.Interpreter.from_file(str(self.path), arena_size=32 << 20)
        except Exception as exc:  # the TFLM binding raises bare RuntimeErrors
            raise DsmnError(f"{self.path}: TFLite-Micro cannot load it ({exc})") from None

    def __call__(self, q):
        import numpy as np

        self._interp.set_input(np.asarray(q, dtype=np.int8)[None], 0)
        self._interp.invoke()
        return np.asarray(self._interp.get_output(0)).reshape(-1).astype(int).tolist()


# ----------------------------------------------------------------------------------------------
# Which clips


class Clips:
    """The clips to evaluate: rows of a feature cache, in split order (or stratified)."""

    def __init__(self, cache, rows):
        from dsmn_host import tau

        self.cache = cache
        self.rows = [int(r) for r in rows]
        self.filename = {r: str(cache.filename[r]) for r in self.rows}
        self.scene = {r: tau.SCENES[int(cache.scene_idx[r])] for r in self.rows}
        self.device = {r: str(cache.device[r]) for r in self.rows}

    def __len__(self):
        return len(self.rows)


def select_clips(source, split="fold1_evaluate", limit=None, stratify=False) -> Clips:
    from dsmn_host import features

    cache = source if isinstance(source, features.FeatureCache) else features.open_features(source)
    rows = [int(r) for r in cache.indices(split)]
    if not rows:
        raise DsmnError(f"{cache.path}: split {split} has no clips")
    if limit is not None and limit < len(rows):
        if stratify:
            rows = _stratified(cache, rows, limit)
        else:
            rows = rows[:limit]
    return Clips(cache, rows)


def _stratified(cache, rows, limit):
    """Round-robin over scenes, and within a scene over devices, in split order: every class
    and device is represented as evenly as `limit` allows, and the choice is deterministic
    (resume depends on that)."""
    per_scene = {}
    for r in rows:
        per_scene.setdefault(int(cache.scene_idx[r]), {}).setdefault(str(cache.device[r]), []).append(r)
    sequences = []
    for scene in sorted(per_scene):
        devs = per_scene[scene]
        seq = []
        for i in range(max(len(v) for v in devs.values())):
            seq += [devs[d][i] for d in sorted(devs) if i < len(devs[d])]
        sequences.append(seq)
    out, i = [], 0
    while len(out) < limit:
        for seq in sequences:
            if i < len(seq) and len(out) < limit:
                out.append(seq[i])
        i += 1
    position = {r: k for k, r in enumerate(rows)}
    return sorted(out, key=position.__getitem__)


# ----------------------------------------------------------------------------------------------
# One board: a protocol Session plus what a long run needs on top of it (reset, re-enumeration)


def _port_errors():
    import serial

    return (serial.SerialException, OSError)


class Board:
    """A board behind one port. `infer` returns a Result or raises DsmnError; it survives
    board resets (handshake redone, model checked again) and a port that vanishes for up to
    `reopen_timeout` seconds (the USB CDC device re-enumerating after a reset)."""

    def __init__(self, url, baud=921600, *, expected_sha=None, force=False, reopen_timeout=30.0,
                 max_failures=20, boot_timeout=10.0, ack_timeout=1.0, response_timeout=30.0, log=None,
                 windowed=True):
        self.url = url
        self.baud = baud
        self.expected_sha = expected_sha
        self.force = force
        self.reopen_timeout = reopen_timeout
        self.max_failures = max_failures
        self.boot_timeout = boot_timeout
        self.session_kwargs = {"ack_timeout": ack_timeout, "response_timeout": response_timeout,
                               "windowed": windowed}
        self.log = log or (lambda msg: None)
        self.session = None
        self.hello = None
        self.events = {"resets": 0, "reopens": 0, "failed_requests": 0}
        self._dead_stats = {}

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
        from dsmn_host import protocol

        self.session = protocol.Session.open(self.url, self.baud, boot_timeout=self.boot_timeout,
                                             **self.session_kwargs)
        self._accept(self.session.hello)
        return self.hello

    def _accept(self, hello):
        from dsmn_host import tau

        if self.expected_sha and hello.model_sha256 != self.expected_sha:
            msg = (f"board on {self.url} ({hello.board}) runs model sha256 {hello.model_sha256}, "
                   f"but the model card says {self.expected_sha}")
            if not self.force:
                self.close()
                raise DsmnError(msg + "; flash the matching firmware, pass the right --model-card, or --force")
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

    def _reopen(self, why):
        """Close and reopen the port until it answers a handshake or `reopen_timeout` passes."""
        self.events["reopens"] += 1
        self.log(f"{self.url}: {why}; reopening (for up to {self.reopen_timeout:.0f} s)")
        self.close()
        deadline = time.monotonic() + self.reopen_timeout
        last = why
        while True:
            try:
                self.connect()
                return
            except DsmnError as exc:
                if "model sha256" in str(exc):
                    raise
                last = exc
            except _port_errors() as exc:
                last = exc
            if time.monotonic() > deadline:
                raise DsmnError(f"serial port {self.url} gone and not back within "
                                f"{self.reopen_timeout:.0f} s (last error: {last})")
            time.sleep(0.5)

    def infer(self, seq, tensor):
        return self._retrying(seq, lambda s: s.infer(seq, tensor))

    def audio(self, seq, pcm, read_input=True):
        """(AudioResult, the board's int8 input bytes or None) for one clip's int16 PCM."""
        return self._retrying(seq, lambda s: (s.audio(seq, pcm), s.read_input() if read_input else None))

    def _retrying(self, seq, op):
        from dsmn_host import protocol

        failures = 0
        while True:
            try:
                if self.session is None:
                    self._reopen("not connected")
                return op(self.session)
            except protocol.BoardReset as exc:
                # The session already decoded the boot HELLO; check it is still our model.
                self.events["resets"] += 1
                self.log(f"{self.url}: {exc}; handshake redone, resending clip {seq}")
                self._accept(self.session.hello)
            except protocol.BoardError:
                raise
            except protocol.ProtocolError as exc:
                failures += 1
                self.events["failed_requests"] += 1
                if failures > self.max_failures:
                    raise DsmnError(f"board on {self.url}: clip {seq} failed {failures} times; last: {exc}") from None
                self.log(f"{self.url}: {exc}; retrying clip {seq}")
                try:
                    self.session.port.reset_input_buffer()
                except Exception:
                    pass
            except _port_errors() as exc:
                self._reopen(f"port error ({exc})")

    def ping_rate(self, nbytes=None):
        """Host->board bytes/s of a PING the size of one INFER with 32 chunks in flight (the
        board's ACKs never wait on ours): what the line carries at most, whatever the
        protocol's window. Not unbounded: host and board (or a relay) both blocked writing
        into full buffers would deadlock."""
        from dsmn_host import protocol

        n = min(nbytes or self.hello.input_bytes + 8, self.hello.max_message)
        payload = bytes((i * 37) & 0xFF for i in range(n))
        t0 = time.monotonic()
        try:
            self.session.ping(payload, window=LIMIT_WINDOW)
        except protocol.BoardReset:
            self.events["resets"] += 1  # counted like one during a clip; the caller goes on without a limit
            self._accept(self.session.hello)
            raise
        return n / (time.monotonic() - t0)


# ----------------------------------------------------------------------------------------------
# The run


def _record(clips, row, result, host_out, hello, audio=None):
    import numpy as np

    out = np.frombuffer(result.output, dtype=np.int8).astype(int).tolist()
    rec = {
        "filename": clips.filename[row],
        "row": row,
        "scene": clips.scene[row],
        "device": clips.device[row],
        "output": out,
        "counter_kind": result.counter_kind,
        "counter": int(result.counter),
        "board": hello.board,
    }
    if host_out is not None:
        rec["host_output"] = host_out
    if result.counter_kind == "dwt":
        rec["cycles"] = int(result.counter)
    elif result.counter_kind == "systick" and systick_hz(hello):
        # docs/protocol.md: under QEMU -icount shift=0 SysTick ticks once per 1e9/clock instructions
        rec["instructions"] = int(round(result.counter * 1e9 / systick_hz(hello)))
    if audio is not None:
        rec.update(_audio_fields(result, hello, audio))
    return rec


def systick_hz(hello):
    """The clock SysTick counted: on an emulated board QEMU's machine clock (netduinoplus2's
    firmware never sees its PLL lock under QEMU and reports 16 MHz, while QEMU's SysTick runs at
    168 MHz), else the core clock the board reports."""
    from dsmn_host.boards import BOARDS

    b = BOARDS.get(hello.board)
    if b is not None and b.qemu_machine and b.qemu_cpu_hz:
        return b.qemu_cpu_hz
    return hello.core_clock_hz


def _audio_fields(result, hello, audio):
    """Per clip in audio mode: the front end's counter, its input against the host's, and the
    host-features path's output (the cached 24-bit clip's features) for top-1 agreement."""
    import numpy as np

    from dsmn_host import frontend

    q_host, board_input, features_out = audio
    rec = {"input": "audio", "frontend_counter": int(result.frontend_counter)}
    if result.counter_kind == "dwt":
        rec["frontend_cycles"] = int(result.frontend_counter)
    elif result.counter_kind == "systick" and systick_hz(hello):
        rec["frontend_instructions"] = int(round(result.frontend_counter * 1e9 / systick_hz(hello)))
    if board_input is not None:
        c = frontend.compare(np.frombuffer(board_input, dtype=np.int8).reshape(q_host.shape), q_host)
        rec["input_elements"] = c["elements"]
        rec["input_elements_equal"] = c["elements_equal"]
        rec["input_max_abs_lsb"] = c["max_abs_lsb"]
    if features_out is not None:
        rec["features_host_output"] = features_out
    return rec


def _wire_bytes(hello, input_mode="features"):
    """Message bytes the host sends per clip (INFER header + input, or AUDIO header + PCM), as
    PING's rate counts them."""
    if input_mode == "audio":
        return 8 + 2 * 44100
    return 8 + hello.input_bytes


INPUT_MODES = ("features", "audio")
LIMIT_WINDOW = 32


def clip_pcm(cache, row):
    """The int16 PCM of a cache row's clip, read from the data set the cache was built from."""
    from dsmn_host import frontend, tau

    data_dir = cache.info.get("data_dir")
    if not data_dir:
        raise DsmnError(f"{cache.path}: the feature cache does not say which data set it was built from; "
                        "--input audio needs the WAV files")
    return frontend.to_pcm16(tau.load_wav(Path(data_dir) / str(cache.filename[row])))


def run_eval(ports, *, source, split="fold1_evaluate", limit=None, stratify=False, card_path=None,
             out_dir="eval", resume=False, baud=921600, force=False, reference=True,
             reopen_timeout=30.0, log=print, input_mode="features", check_input=True, **board_kwargs):
    """Evaluate on the boards at `ports` (one thread each) into `out_dir`; returns the report."""
    import queue

    from dsmn_host import report as report_mod

    ports = list(ports) if not isinstance(ports, str) else [ports]
    if not ports:
        raise DsmnError("give at least one --port")
    if len(set(ports)) != len(ports):
        raise DsmnError(f"the same port given twice: {ports}")
    out_dir = Path(out_dir)
    if card_path is None:
        from dsmn_host.firmware import DEFAULT_MODEL

        card_path = modelcard.card_paths(DEFAULT_MODEL)["json"]
    card = modelcard.read_card(card_path)
    clips = select_clips(source, split, limit, stratify)

    run_path = out_dir / RUN_JSON
    if resume and run_path.is_file():
        prev = json.loads(run_path.read_text())
        if prev.get("model_sha256") != card["sha256"]:
            raise DsmnError(f"{out_dir}: holds results of model {prev.get('model_sha256')}, not of "
                            f"{card['sha256']} ({card_path}); choose another --out")
    if input_mode not in INPUT_MODES:
        raise DsmnError(f"unknown --input {input_mode!r}; choose {' or '.join(INPUT_MODES)}")
    if resume and run_path.is_file():
        if json.loads(run_path.read_text()).get("input", "features") != input_mode:
            raise DsmnError(f"{out_dir}: holds a run with another --input; choose another --out")
    journal = Journal(out_dir / RESULTS, resume=resume)
    try:
        return _run(ports, clips, card, card_path, journal, out_dir, split, limit, stratify, baud,
                    force, reference, reopen_timeout, log, board_kwargs, report_mod, queue,
                    input_mode, check_input)
    finally:
        journal.close()


def _run(ports, clips, card, card_path, journal, out_dir, split, limit, stratify, baud, force,
         reference, reopen_timeout, log, board_kwargs, report_mod, queue, input_mode="features",
         check_input=True):
    audio = input_mode == "audio"
    boards = []
    try:
        for url in ports:
            b = Board(url, baud, expected_sha=card["sha256"], force=force, reopen_timeout=reopen_timeout,
                      log=log, **board_kwargs)
            b.connect()
            boards.append(b)
            h = b.hello
            log(f"{url}: {h.board}, firmware {h.firmware_version}, runtime {h.runtime_name}, "
                f"model {h.model_sha256[:16]}, clock {h.core_clock_hz / 1e6:g} MHz")
    except BaseException:
        for b in boards:
            b.close()
        raise
    for b in boards:
        b.link_rate = None
        try:
            b.link_rate = b.ping_rate()
            log(f"{b.url}: link moves {b.link_rate:,.0f} B/s host->board (PING of one input's size)")
        except DsmnError as exc:
            log(f"{b.url}: could not measure the link with PING ({exc})")
    h0 = boards[0].hello
    if audio:
        for b in boards:
            if not b.hello.audio:
                for x in boards:
                    x.close()
                raise DsmnError(f"board on {b.url} ({b.hello.board}) has no on-device front end "
                                "(protocol revision 2 with AUDIO); rebuild its firmware with the front end "
                                "or evaluate with --input features")
    for b in boards[1:]:
        if (b.hello.input_scale, b.hello.input_zero_point) != (h0.input_scale, h0.input_zero_point):
            raise DsmnError(f"boards disagree on input quantization: {boards[0].url} vs {b.url}")
    in_scale, in_zp = h0.input_scale, h0.input_zero_point
    card_in = card.get("input", {})
    if card_in.get("scale") is not None and abs(float(card_in["scale"]) - in_scale) > 1e-6 * abs(in_scale):
        log(f"warning: board input scale {in_scale} differs from the model card's {card_in['scale']}")

    pending = [r for r in clips.rows if clips.filename[r] not in journal]
    log(f"{len(clips)} clips in {split}"
        + (f" (limit {limit}{', stratified' if stratify else ''})" if limit else "")
        + f"; {len(clips) - len(pending)} already in {journal.path}, {len(pending)} to go on {len(boards)} board(s)")

    ref = HostReference(modelcard.card_model(card_path, card)) if reference else None
    work = queue.Queue(maxsize=2 * len(boards) + 1)
    stop = threading.Event()
    producer_done = threading.Event()
    errors = []
    sent = {"clips": 0, "bytes": 0}
    lock = threading.Lock()
    retry = []  # clips a failed board had taken
    alive = [len(boards)]

    def produce():
        try:
            for row in pending:
                # The one host quantizer (evaluate.quantize) for both paths.
                q = prepare_input(np_logmel(clips.cache, row), in_scale, in_zp)
                host_out = ref(q) if ref is not None else None
                item = (row, q, host_out)
                if audio:
                    from dsmn_host import frontend

                    pcm = clip_pcm(clips.cache, row)
                    q_audio = frontend.reference_input(pcm, in_scale, in_zp)
                    audio_out = ref(q_audio) if ref is not None else None
                    item = (row, pcm, audio_out, (q_audio, host_out))
                while not stop.is_set():
                    try:
                        work.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 -- reported by the main thread
            errors.append(("host preprocessing", exc))
            stop.set()
        finally:
            producer_done.set()

    last_print = [time.monotonic()]
    t_start = time.monotonic()

    def next_item():
        with lock:
            if retry:
                return retry.pop()
        try:
            return work.get(timeout=0.2)
        except queue.Empty:
            return None

    def consume(board):
        while not stop.is_set():
            item = next_item()
            if item is None:
                if producer_done.is_set() and work.empty() and not retry:
                    return
                continue
            row, q, host_out = item[:3]
            try:
                if audio:
                    result, board_input = board.audio(row, q, read_input=check_input)
                    extra = (item[3][0], board_input, item[3][1])
                else:
                    result, extra = board.infer(row, q), None
            except BaseException as exc:  # noqa: BLE001
                with lock:
                    retry.append(item)  # another board may take it
                    errors.append((board.url, exc))
                    alive[0] -= 1
                    if alive[0] == 0:
                        stop.set()
                return
            if result.status != 0:
                errors.append((board.url, DsmnError(
                    f"board on {board.url}: runtime failed on {clips.filename[row]} (status {result.status})")))
                stop.set()
                return
            journal.append(_record(clips, row, result, host_out, board.hello, extra))
            with lock:
                sent["clips"] += 1
                sent["bytes"] += _wire_bytes(board.hello, input_mode)
                now = time.monotonic()
                if now - last_print[0] > 10 or len(journal) == len(clips):
                    last_print[0] = now
                    rate = sent["clips"] / (now - t_start)
                    log(f"{len(journal)}/{len(clips)} clips, {rate:.2f} clips/s")

    producer = threading.Thread(target=produce, daemon=True, name="eval-prepare")
    workers = [threading.Thread(target=consume, args=(b,), daemon=True, name=f"eval-{b.url}") for b in boards]
    producer.start()
    for w in workers:
        w.start()
    try:
        for w in workers:
            while w.is_alive():
                w.join(0.2)
    except BaseException:
        stop.set()
        raise
    finally:
        stop.set()
        producer.join(5)
        seconds = time.monotonic() - t_start
        for b in boards:
            b.close()

    missing = [r for r in clips.rows if clips.filename[r] not in journal]
    if missing:
        why = "; ".join(f"{where}: {exc}" for where, exc in errors) or "no board left"
        raise DsmnError(f"{len(missing)} of {len(clips)} clips not evaluated ({why}); "
                        f"results so far are in {journal.path}, rerun with --resume to continue")
    for where, exc in errors:
        log(f"warning: {where}: {exc} (its clips were taken by other boards)")

    meta = {
        "model_sha256": card["sha256"],
        "model_card": str(card_path),
        "source": str(clips.cache.path),
        "split": split,
        "input": input_mode,
        "limit": limit,
        "stratify": stratify,
        "boards": [{"port": b.url, "board": b.hello.board, "firmware_version": b.hello.firmware_version,
                    "runtime": b.hello.runtime_name, "counter": b.hello.counter,
                    "clock_hz": b.hello.core_clock_hz, "stats": b.stats} for b in boards],
        "board": ", ".join(sorted({b.hello.board for b in boards})),
        "runtime": h0.runtime_name,
        "input_scale": in_scale, "input_zero_point": in_zp,
        "output_scale": h0.output_scale, "output_zero_point": h0.output_zero_point,
        "clock_hz": systick_hz(h0),   # what latency and the real-time factor count in (QEMU: the machine's)
        "link": {"clips": sent["clips"], "bytes": sent["bytes"], "seconds": seconds,
                 "bytes_per_clip": _wire_bytes(h0, input_mode), "baud": baud,
                 "window": h0.window if board_kwargs.get("windowed", True) else 1},
    }
    rates = [b.link_rate for b in boards if b.link_rate]
    if len(rates) == len(boards):
        # What the links carry at most with this protocol, all boards together.
        meta["link"]["limit_bytes_per_s"] = sum(rates)
    meta["link"]["baud_limit_bytes_per_s"] = baud / 10 * len(boards)  # 8N1: 10 bits a byte
    run_path = out_dir / RUN_JSON
    run_path.write_text(json.dumps(meta, indent=1) + "\n")
    rep = report_mod.write_report(out_dir, journal.records, meta)
    return rep


def np_logmel(cache, row):
    import numpy as np

    return np.asarray(cache.logmel[row], dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# CLI


def register(subparsers):
    from dsmn_host.clihelp import style

    p = subparsers.add_parser(
        "eval",
        help="evaluate the int8 model on one or more boards over the serial link; write results and a report",
        description="Stream every clip of a split, preprocessed and quantized on the host exactly as in "
        "training, to the board(s) over protocol v1; append each RESULT to OUT/results.jsonl (fsynced, "
        "so --resume after a crash repeats and loses nothing); run the same int8 tensors through the "
        "TFLite-Micro Python interpreter for agreement; write OUT/report.json, report.md, confusion.png.",
        **style("dsmn-host eval --port /dev/ttyACM0 --data data/tau22-synth", "dsmn-host eval --port socket://127.0.0.1:5555 --cache data/tau22-synth.features --limit 100 --stratify --out build/eval"),
    )
    p.add_argument("--port", action="append", required=True, metavar="PORT",
                   help="serial port (/dev/ttyACM0, /dev/pts/N, socket://host:port); repeat for several boards")
    p.add_argument("--baud", type=int, default=921600, help="baud rate (default %(default)s)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="DATA", help="TAU22-layout data directory (features cached next to it)")
    src.add_argument("--cache", metavar="CACHE", help="feature cache directory (dsmn-host features)")
    p.add_argument("--split", default="fold1_evaluate", help="split to evaluate (default %(default)s)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N clips of the split")
    p.add_argument("--stratify", action="store_true", help="with --limit: spread the N clips over scenes and devices")
    p.add_argument("--model-card", metavar="CARD",
                   help="X.card.json of the model the board must run (default: the shipped models/model1)")
    p.add_argument("--out", metavar="REPORT_DIR", default="build/eval", help="output directory (default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in REPORT_DIR, skipping clips already there")
    p.add_argument("--force", action="store_true", help="evaluate even if the board's model hash differs from the card")
    p.add_argument("--no-reference", action="store_true", help="skip the host TFLM reference (no agreement metrics)")
    p.add_argument("--input", choices=INPUT_MODES, default="features",
                   help="features: send the host's int8 input (default); audio: stream each clip's int16 PCM "
                        "and let the board's front end compute the input (firmware with the front end; "
                        "the report gains a front_end section)")
    p.add_argument("--no-input-check", action="store_true",
                   help="with --input audio: do not read back the board's int8 input (faster; no element agreement)")
    p.add_argument("--reopen-timeout", type=float, default=30.0, metavar="S",
                   help="how long to keep reopening a port that disappeared (default %(default)s s)")
    from dsmn_host.flash import add_flash_arguments

    add_flash_arguments(p, firmware_flag=True)
    p.set_defaults(func=_cmd_eval)

    r = subparsers.add_parser("eval-report", help="recompute the report of an eval directory from its results.jsonl",
                              description="Rewrite REPORT_DIR/report.json, report.md and confusion.png from "
                              "results.jsonl and run.json (no board needed).",
        **style("dsmn-host eval-report build/eval"))
    r.add_argument("report_dir", metavar="REPORT_DIR", help="directory of an earlier `dsmn-host eval`")
    r.set_defaults(func=_cmd_report)


def _cmd_eval(args):
    if args.limit is not None and args.limit <= 0:
        raise DsmnError("--limit must be positive")
    if args.stratify and args.limit is None:
        raise DsmnError("--stratify needs --limit N")
    if args.flash:
        from dsmn_host.flash import flash_for_eval

        flash_for_eval(args)
    rep = run_eval(args.port, source=args.data or args.cache, split=args.split, limit=args.limit,
                   stratify=args.stratify, card_path=args.model_card, out_dir=args.out, resume=args.resume,
                   baud=args.baud, force=args.force, reference=not args.no_reference,
                   reopen_timeout=args.reopen_timeout, input_mode=args.input,
                   check_input=not args.no_input_check,
                   log=lambda m: print(f"eval: {m}", flush=True))
    _print_summary(rep, args.out)


def _print_summary(rep, out_dir):
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    print(f"{rep['n_clips']} clips: accuracy {pct(rep['accuracy'])}, macro {pct(rep['macro_class_accuracy'])}, "
          f"log loss {rep['log_loss']:.3f}, 3-class {pct(rep['coarse_accuracy'])}; agreement with host int8 "
          f"top-1 {pct(rep['agreement_top1'])}, exact {pct(rep['agreement_exact'])}")
    fe = rep.get("front_end")
    if fe:
        eq = fe.get("elements_equal")
        print(f"front end: {'-' if eq is None else f'{100 * eq:.3f} %'} of input elements equal to the host's, "
              f"max |diff| {fe.get('max_abs_lsb', '-')} LSB; top-1 vs host features path "
              f"{pct(fe.get('top1_agreement_features'))}; {fe.get('frontend_instructions_mean') or 0:,.0f} "
              "instructions/clip")
    tp = rep.get("throughput")
    if tp:
        print(f"throughput {tp['clips_per_s']:.3f} clips/s"
              + (f" (link limit {tp['limit_clips_per_s']:.3f} clips/s)" if "limit_clips_per_s" in tp else ""))
    print(f"wrote {Path(out_dir) / 'report.md'}, report.json, confusion.png")


def _cmd_report(args):
    from dsmn_host import report as report_mod

    run_path = Path(args.report_dir) / RUN_JSON
    meta = json.loads(run_path.read_text()) if run_path.is_file() else {}
    rep = report_mod.write_report(args.report_dir, read_results(args.report_dir), meta)
    _print_summary(rep, args.report_dir)
