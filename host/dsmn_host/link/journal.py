"""The results journal of `dsmn-host eval`: the one piece of durable state of a run.

`REPORT_DIR/results.jsonl` holds one fsynced JSON line per clip. Everything else — which clips
are still to do, the report — is derived from it, so a run killed at any instant resumes without
losing or repeating a clip, and several boards can share one journal.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from dsmn_host.errors import DsmnError

RESULTS = "results.jsonl"
RUN_JSON = "run.json"


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
