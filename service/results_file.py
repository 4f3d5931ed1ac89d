"""The results file of `mllm-audit audit`: JSONL, one whole line per case, appended as cases finish.

Each line goes out in one write(2) on an O_APPEND descriptor, so a run that is interrupted (Ctrl+C,
kill, a crash) leaves only whole lines in the kernel, except perhaps a last line cut short
mid-write. Resuming cuts that fragment off, drops the lines of cases that failed (a service that
was down, a timeout: they are tried again) and skips every case with an audited line: no case is
audited twice, none is lost, each ends with one line. The file is fsync'd at most once a second
and at the end, so that a power loss costs at most the last second, and fsync's wait does not
hold up the run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class ResultsFileError(ValueError):
    pass


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every whole line of a results file, parsed (a cut-short last line is left out)."""
    with path.open("rb") as fh:
        for text in fh:
            if text.endswith(b"\n") and text.strip():
                yield json.loads(text)


def audited_ids(path: Path) -> set[str]:
    """The ids audited in `path`, which is rewritten without error lines (to be retried) and without
    a last line left half-written by an interrupted run."""
    kept: list[bytes] = []
    done: set[str] = set()
    with path.open("rb") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.endswith(b"\n"):
                break
            try:
                record = json.loads(text)
                case_id = str(record["id"])
            except (ValueError, KeyError, TypeError):
                raise ResultsFileError(f"{path} line {number} is not a results line; is this the right file?") from None
            if record.get("status") != "error":
                kept.append(text)
                done.add(case_id)
    if sum(map(len, kept)) != path.stat().st_size:
        spare = path.with_name(path.name + ".resume")
        with spare.open("wb") as fh:
            fh.writelines(kept)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(spare, path)  # atomic: a crash here leaves the old file or the new one
    return done


class ResultsWriter:
    def __init__(self, path: Path, resume: bool):
        if path.exists() and not resume:
            raise ResultsFileError(f"{path} exists: pass --resume to continue that run, or choose another --out")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.done = audited_ids(path) if path.exists() else set()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._synced = time.monotonic()

    def write(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        written = os.write(self._fd, data)
        while written < len(data):  # a short write (a full disk returns an error instead)
            written += os.write(self._fd, data[written:])
        if time.monotonic() - self._synced >= 1.0:
            os.fsync(self._fd)
            self._synced = time.monotonic()
        self.done.add(str(record["id"]))

    def close(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
