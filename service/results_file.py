"""The results file of `mllm-audit audit`: JSONL, one whole line per case, appended as cases finish.

Each line goes out in one write(2) on an O_APPEND descriptor, so a run that is interrupted (Ctrl+C,
kill, a crash) leaves only whole lines in the kernel, except perhaps a last line cut short
mid-write; resuming cuts that fragment off and skips every case whose id already has a line: no
case is done twice, none is lost. The file is fsync'd at most once a second and at the end, so
that a power loss costs at most the last second, and fsync's wait does not hold up the run.
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


def finished_ids(path: Path) -> set[str]:
    """The ids with a line in `path`; cuts off a last line left half-written by an interrupted run."""
    done: set[str] = set()
    keep = 0  # bytes of whole lines
    with path.open("rb") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.endswith(b"\n"):
                break
            try:
                done.add(str(json.loads(text)["id"]))
            except (ValueError, KeyError, TypeError):
                raise ResultsFileError(f"{path} line {number} is not a results line; is this the right file?") from None
            keep += len(text)
    if keep != path.stat().st_size:
        with path.open("r+b") as fh:
            fh.truncate(keep)
    return done


class ResultsWriter:
    def __init__(self, path: Path, resume: bool):
        if path.exists() and not resume:
            raise ResultsFileError(f"{path} exists: pass --resume to continue that run, or choose another --out")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.done = finished_ids(path) if path.exists() else set()
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
