"""The run loop of `dsmn-host eval`: clips through one or more boards into the journal.

One producer thread prepares each clip's input on the host (the training preprocessing,
quantized with the board's own input scale and zero point, by `dsmn_host.data.int8io`) and hands
the same bytes to the TFLite-Micro Python interpreter (`HostReference`) in a worker process
(`ReferenceProcess`): the board must reproduce that reference, which separates "the model is
inaccurate" from "the port of it is wrong". The interpreter holds the GIL for its whole invoke
(60-90 ms for model1), which in a thread stalled the consumers' ACK handling with the line idle.
One consumer thread per board sends clips and journals results, handing the next clip's request
to the session to send ahead while the board computes; a board that fails hands its clips back
for another board to take. The state the threads share is the fields of one `EvalRun`.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
from concurrent.futures import Future
import time
from pathlib import Path

from dsmn_host.deploy import modelcard
from dsmn_host.link.boardsession import Board
from dsmn_host.errors import DsmnError
from dsmn_host.data.int8io import prepare_input
from dsmn_host.link.journal import RUN_JSON

INPUT_MODES = ("features", "audio")


class EvalRun:
    """One evaluation: the boards, the clips still to do, and what the threads share."""

    def __init__(self, ports, clips, card, card_path, journal, out_dir, *, split, limit=None, stratify=False,
                 baud=921600, force=False, reference=True, reopen_timeout=30.0, log=print,
                 input_mode="features", check_input=True, board_kwargs=None):
        self.ports, self.clips, self.card, self.card_path = list(ports), clips, card, card_path
        self.journal, self.out_dir = journal, Path(out_dir)
        self.split, self.limit, self.stratify = split, limit, stratify
        self.baud, self.force, self.reference, self.reopen_timeout = baud, force, reference, reopen_timeout
        self.log, self.input_mode, self.check_input = log, input_mode, check_input
        self.board_kwargs = dict(board_kwargs or {})
        self.audio = input_mode == "audio"
        self.boards = []
        # shared between the producer and the consumers
        self.work = None
        self.stop = threading.Event()
        self.producer_done = threading.Event()
        self.lock = threading.Lock()
        self.errors = []          # (where, exception)
        self.retry = []           # clips a failed board had taken
        self.alive = 0            # consumers still running
        self.sent_clips = 0
        self.sent_bytes = 0
        self.t_start = self.last_print = None
        self.seconds = None

    # ---- boards

    def connect(self):
        try:
            for url in self.ports:
                b = Board(url, self.baud, expected_sha=self.card["sha256"], force=self.force,
                          reopen_timeout=self.reopen_timeout, log=self.log, **self.board_kwargs)
                b.connect()
                self.boards.append(b)
                h = b.hello
                self.log(f"{url}: {h.board}, firmware {h.firmware_version}, runtime {h.runtime_name}, "
                         f"model {h.model_sha256[:16]}, clock {h.core_clock_hz / 1e6:g} MHz")
        except BaseException:
            self.close()
            raise
        for b in self.boards:
            b.measure_link()
        try:
            self._check_boards()
        except BaseException:
            self.close()
            raise

    def _check_boards(self):
        h0 = self.boards[0].hello
        if self.audio:
            for b in self.boards:
                if not b.hello.audio:
                    raise DsmnError(f"board on {b.url} ({b.hello.board}) has no on-device front end "
                                    "(protocol revision 2 with AUDIO); rebuild its firmware with the front end "
                                    "or evaluate with --input features")
        for b in self.boards[1:]:
            if (b.hello.input_scale, b.hello.input_zero_point) != (h0.input_scale, h0.input_zero_point):
                raise DsmnError(f"boards disagree on input quantization: {self.boards[0].url} vs {b.url}")
        self.in_scale, self.in_zp = h0.input_scale, h0.input_zero_point
        card_in = self.card.get("input", {})
        if card_in.get("scale") is not None and abs(float(card_in["scale"]) - self.in_scale) > 1e-6 * abs(self.in_scale):
            self.log(f"warning: board input scale {self.in_scale} differs from the model card's {card_in['scale']}")

    def close(self):
        for b in self.boards:
            b.close()

    # ---- the threads

    def produce(self, pending, ref):
        """Items (row, what the board gets, a Future of the host side): features mode the
        reference output; audio mode (host int8 input from the PCM, its reference output, the
        cached features' reference output). `ref` is a ReferenceProcess or None."""
        try:
            for row in pending:
                q = prepare_input(np_logmel(self.clips.cache, row), self.in_scale, self.in_zp)
                if self.audio:
                    pcm = clip_pcm(self.clips.cache, row)
                    if ref is not None:
                        host = ref.audio(pcm, q, self.in_scale, self.in_zp)
                    else:
                        from dsmn_host.target import frontend

                        host = _done((frontend.reference_input(pcm, self.in_scale, self.in_zp), None, None))
                    item = (row, pcm, host)
                else:
                    item = (row, q, ref.features(q) if ref is not None else _done(None))
                while not self.stop.is_set():
                    try:
                        self.work.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 -- reported by the main thread
            self.errors.append(("host preprocessing", exc))
            self.stop.set()
        finally:
            self.producer_done.set()

    def _next_item(self, timeout=0.2):
        with self.lock:
            if self.retry:
                return self.retry.pop()
        try:
            return self.work.get(timeout=timeout) if timeout else self.work.get_nowait()
        except queue.Empty:
            return None

    def _follow(self, item):
        """The request the board gets for `item`, to go ahead of its turn (None: no item)."""
        from dsmn_host.target import protocol

        if item is None:
            return None
        if self.audio:
            return (protocol.AUDIO, protocol.encode_audio(item[0], item[1]))
        return (protocol.INFER, protocol.encode_infer(item[0], item[1].tobytes()))

    def consume(self, board):
        clips, journal = self.clips, self.journal
        nxt = None
        while not self.stop.is_set():
            item, nxt = (nxt, None) if nxt is not None else (self._next_item(), None)
            if item is None:
                if self.producer_done.is_set() and self.work.empty() and not self.retry:
                    return
                continue
            # The clip after this one, if it is ready: its first window goes out while the board
            # computes this one. Not waited for: a late producer costs that overlap, not time.
            nxt = self._next_item(timeout=0)
            row, q, host = item
            try:
                if self.audio:
                    result, board_input = board.audio(row, q, read_input=self.check_input, follow=self._follow(nxt))
                    q_audio, host_out, features_out = host.result()
                    extra = (q_audio, board_input, features_out)
                else:
                    result, extra = board.infer(row, q, follow=self._follow(nxt)), None
                    host_out = host.result()
            except BaseException as exc:  # noqa: BLE001
                with self.lock:
                    self.retry.append(item)  # another board may take them
                    if nxt is not None:
                        self.retry.append(nxt)
                    self.errors.append((board.url, exc))
                    self.alive -= 1
                    if self.alive == 0:
                        self.stop.set()
                return
            if result.status != 0:
                self.errors.append((board.url, DsmnError(
                    f"board on {board.url}: runtime failed on {clips.filename[row]} (status {result.status})")))
                self.stop.set()
                return
            journal.append(_record(clips, row, result, host_out, board.hello, extra))
            with self.lock:
                self.sent_clips += 1
                self.sent_bytes += _wire_bytes(board.hello, self.input_mode)
                now = time.monotonic()
                if now - self.last_print > 10 or len(journal) == len(clips):
                    self.last_print = now
                    self.log(f"{len(journal)}/{len(clips)} clips, {self.sent_clips / (now - self.t_start):.2f} clips/s")

    # ---- the whole run

    def run(self, report_mod):
        """Connect, evaluate every clip not in the journal, write run.json and the report."""
        self.connect()
        clips, journal = self.clips, self.journal
        pending = [r for r in clips.rows if clips.filename[r] not in journal]
        self.log(f"{len(clips)} clips in {self.split}"
                 + (f" (limit {self.limit}{', stratified' if self.stratify else ''})" if self.limit else "")
                 + f"; {len(clips) - len(pending)} already in {journal.path}, {len(pending)} to go on "
                 f"{len(self.boards)} board(s)")
        ref = ReferenceProcess(modelcard.card_model(self.card_path, self.card)) if self.reference else None
        self.work = queue.Queue(maxsize=2 * len(self.boards) + 1)
        self.alive = len(self.boards)
        self.t_start = self.last_print = time.monotonic()
        producer = threading.Thread(target=self.produce, args=(pending, ref), daemon=True, name="eval-prepare")
        workers = [threading.Thread(target=self.consume, args=(b,), daemon=True, name=f"eval-{b.url}")
                   for b in self.boards]
        producer.start()
        for w in workers:
            w.start()
        try:
            for w in workers:
                while w.is_alive():
                    w.join(0.2)
        except BaseException:
            self.stop.set()
            raise
        finally:
            self.stop.set()
            producer.join(5)
            self.seconds = time.monotonic() - self.t_start
            self.close()
            if ref is not None:
                ref.close()

        missing = [r for r in clips.rows if clips.filename[r] not in journal]
        if missing:
            why = "; ".join(f"{where}: {exc}" for where, exc in self.errors) or "no board left"
            raise DsmnError(f"{len(missing)} of {len(clips)} clips not evaluated ({why}); "
                            f"results so far are in {journal.path}, rerun with --resume to continue")
        for where, exc in self.errors:
            self.log(f"warning: {where}: {exc} (its clips were taken by other boards)")
        meta = self.meta()
        (self.out_dir / RUN_JSON).write_text(json.dumps(meta, indent=1) + "\n")
        return report_mod.write_report(self.out_dir, journal.records, meta)

    def meta(self):
        boards, h0 = self.boards, self.boards[0].hello
        meta = {
            "model_sha256": self.card["sha256"],
            "model_card": str(self.card_path),
            "source": str(self.clips.cache.path),
            "split": self.split,
            "input": self.input_mode,
            "limit": self.limit,
            "stratify": self.stratify,
            "boards": [{"port": b.url, "board": b.hello.board, "firmware_version": b.hello.firmware_version,
                        "runtime": b.hello.runtime_name, "counter": b.hello.counter,
                        "clock_hz": b.hello.core_clock_hz, "stats": b.stats} for b in boards],
            "board": ", ".join(sorted({b.hello.board for b in boards})),
            "runtime": h0.runtime_name,
            "input_scale": self.in_scale, "input_zero_point": self.in_zp,
            "output_scale": h0.output_scale, "output_zero_point": h0.output_zero_point,
            "clock_hz": systick_hz(h0),   # what latency and the real-time factor count in (QEMU: the machine's)
            "link": {"clips": self.sent_clips, "bytes": self.sent_bytes, "seconds": self.seconds,
                     "bytes_per_clip": _wire_bytes(h0, self.input_mode), "baud": self.baud,
                     "window": h0.window if self.board_kwargs.get("windowed", True) else 1},
        }
        rates = [b.link_rate for b in boards if b.link_rate]
        if len(rates) == len(boards):
            # What the links carry at most with this protocol, all boards together.
            meta["link"]["limit_bytes_per_s"] = sum(rates)
        meta["link"]["baud_limit_bytes_per_s"] = self.baud / 10 * len(boards)  # 8N1: 10 bits a byte
        return meta


# ----------------------------------------------------------------------------------------------
# Host int8 reference, which clips, and one clip's record

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


def _done(value):
    f = Future()
    f.set_result(value)
    return f


def _serve_reference(tflite_path, result_fd):
    """The worker process's loop: (id, kind, args) pickles on stdin, (id, ok, value) pickles on
    `result_fd` (not stdout, where the TFLM library may print)."""
    import pickle

    from dsmn_host.target import frontend

    ref = HostReference(tflite_path)
    out = os.fdopen(result_fd, "wb")
    inp = sys.stdin.buffer
    pickle.dump((0, True, None), out)  # loaded: ready
    out.flush()
    while True:
        try:
            job_id, kind, args = pickle.load(inp)
        except EOFError:
            return
        try:
            if kind == "features":
                value = ref(args[0])
            else:
                pcm, q, scale, zero_point = args
                q_audio = frontend.reference_input(pcm, scale, zero_point)
                value = (q_audio, ref(q_audio), ref(q))
            pickle.dump((job_id, True, value), out)
        except Exception as exc:  # noqa: BLE001 -- sent back, raised where the result is wanted
            pickle.dump((job_id, False, f"{type(exc).__name__}: {exc}"), out)
        out.flush()


class ReferenceProcess:
    """HostReference in a worker process: off the GIL that the consumer threads need to answer
    the link, so reference work overlaps the transfer instead of pausing it. A plain subprocess
    running this module (not multiprocessing, whose spawn re-imports the caller's main script),
    loaded before the clock starts, like the in-thread reference was."""

    def __init__(self, tflite_path):
        import pickle
        import subprocess

        self.path = Path(tflite_path)
        HostReference(self.path)  # a model TFLM cannot load fails here, with its one-line error
        rfd, wfd = os.pipe()
        pkg_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([pkg_root] + [x for x in [os.environ.get("PYTHONPATH")] if x]))
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "dsmn_host.link.evalrun", str(self.path), str(wfd)],
                                          stdin=subprocess.PIPE, pass_fds=(wfd,), env=env)
        finally:
            os.close(wfd)
        self._results = os.fdopen(rfd, "rb")
        self._lock = threading.Lock()
        self._futures = {}
        self._ids = 0
        try:
            pickle.load(self._results)
        except Exception as exc:
            self.close()
            raise DsmnError(f"{self.path}: the host reference process did not start ({exc or 'it exited'})") from None
        self._reader = threading.Thread(target=self._read, daemon=True, name="eval-reference")
        self._reader.start()

    def _read(self):
        import pickle

        while True:
            try:
                job_id, ok, value = pickle.load(self._results)
            except Exception:  # EOF or a dead worker: whoever waits gets the error
                with self._lock:
                    futures, self._futures = self._futures, {}
                for f in futures.values():
                    f.set_exception(DsmnError(f"host reference process for {self.path} exited "
                                              f"(code {self._proc.poll()})"))
                return
            with self._lock:
                f = self._futures.pop(job_id)
            if ok:
                f.set_result(value)
            else:
                f.set_exception(DsmnError(f"host reference on {self.path}: {value}"))

    def _submit(self, kind, *args):
        import pickle

        f = Future()
        with self._lock:
            self._ids += 1
            self._futures[self._ids] = f
            pickle.dump((self._ids, kind, args), self._proc.stdin)
            self._proc.stdin.flush()
        return f

    def features(self, q):
        return self._submit("features", q)

    def audio(self, pcm, q, scale, zero_point):
        return self._submit("audio", pcm, q, scale, zero_point)

    def close(self):
        try:
            self._proc.stdin.close()
        except Exception:
            pass
        try:
            self._proc.wait(10)
        except Exception:
            self._proc.kill()
            self._proc.wait()


class Clips:
    """The clips to evaluate: rows of a feature cache, in split order (or stratified)."""

    def __init__(self, cache, rows):
        from dsmn_host.data import tau

        self.cache = cache
        self.rows = [int(r) for r in rows]
        self.filename = {r: str(cache.filename[r]) for r in self.rows}
        self.scene = {r: tau.SCENES[int(cache.scene_idx[r])] for r in self.rows}
        self.device = {r: str(cache.device[r]) for r in self.rows}

    def __len__(self):
        return len(self.rows)


def select_clips(source, split="fold1_evaluate", limit=None, stratify=False) -> Clips:
    from dsmn_host.data import features

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

    from dsmn_host.target import frontend

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


def clip_pcm(cache, row):
    """The int16 PCM of a cache row's clip, read from the data set the cache was built from."""
    from dsmn_host.data import tau
    from dsmn_host.target import frontend

    data_dir = cache.info.get("data_dir")
    if not data_dir:
        raise DsmnError(f"{cache.path}: the feature cache does not say which data set it was built from; "
                        "--input audio needs the WAV files")
    return frontend.to_pcm16(tau.load_wav(Path(data_dir) / str(cache.filename[row])))


def np_logmel(cache, row):
    import numpy as np

    return np.asarray(cache.logmel[row], dtype=np.float32)


if __name__ == "__main__":  # the ReferenceProcess worker: python -m dsmn_host.link.evalrun MODEL FD
    _serve_reference(sys.argv[1], int(sys.argv[2]))
