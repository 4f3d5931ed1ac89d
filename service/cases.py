"""The cases `mllm-audit audit` reads: JSONL files, a directory of them, or a Hugging Face
`datasets` directory written by `save_to_disk`.

A JSONL line is the labelled-file format of docs/risk.md (`mllm-audit calibrate` reads it too):
{"id": ..., "image": PATH relative to the file, "prompt": ..., "answer": ..., "claims": [...]},
id and claims optional. Cases are yielded one at a time, never held all in memory; a line that
cannot be used is yielded as a Case with its `error` set, so the run records it and goes on.

A save_to_disk directory is read with pyarrow alone (the `datasets` extra installs it): its
state.json names the Arrow stream files, read a record batch at a time. The image column holds
what `datasets.Image` stores ({bytes, path}), raw bytes, or a path relative to the directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mllm_audit.service.calibrate import BadCase, LabelledClaim, parse_case


@dataclass
class AuditCase:
    id: str
    source: str  # "FILE:LINE" or "DIR#ROW": where the case came from, for messages and the report
    prompt: str = ""
    answer: str = ""
    image_path: Path | None = None
    image_bytes: bytes | None = None
    claims: list[LabelledClaim] | None = None  # the labels, when given
    error: str | None = None  # why the case cannot be audited; set by the reader
    extra: dict[str, Any] = field(default_factory=dict)

    def image_data(self) -> bytes:
        if self.image_bytes is not None:
            return self.image_bytes
        assert self.image_path is not None
        return self.image_path.read_bytes()


@dataclass(frozen=True)
class Columns:
    """Column names of a save_to_disk data set."""

    image: str = "image"
    prompt: str = "prompt"
    answer: str = "answer"
    id: str = "id"


def is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def jsonl_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*.jsonl") if p.is_file())
    raise ValueError(f"{path}: no such file or directory")


def read_cases(path: Path, columns: Columns = Columns(), split: str | None = None) -> Iterator[AuditCase]:
    """Every case of `path`, in order; raises ValueError only when `path` itself is unusable."""
    if is_hf_dataset(path):
        yield from read_hf_dataset(path, columns, split)
        return
    files = jsonl_files(path)
    if not files:
        raise ValueError(f"{path}: no .jsonl file in it")
    for file in files:
        yield from read_jsonl(file)


def count_cases(path: Path, columns: Columns = Columns(), split: str | None = None) -> int:
    """How many cases `read_cases` will yield (non-blank lines, data set rows), without parsing them."""
    if is_hf_dataset(path):
        return sum(_arrow_rows(f) for f in _arrow_files(_split_dir(path, split)))
    total = 0
    for file in jsonl_files(path):
        with file.open("rb") as fh:
            total += sum(1 for line in fh if line.strip())
    return total


def read_jsonl(file: Path) -> Iterator[AuditCase]:
    with file.open(encoding="utf-8", errors="replace") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            source = f"{file}:{number}"
            default_id = f"{file.stem}:{number}"
            try:
                parsed = parse_case(text, number, file.parent, need_labels=False)
            except BadCase as exc:
                yield AuditCase(_id_of(text) or default_id, source, error=f"line {number}: {exc}")
                continue
            raw_id = _id_of(text)
            yield AuditCase(
                raw_id or default_id,
                source,
                parsed.prompt,
                parsed.answer,
                image_path=parsed.image,
                claims=parsed.claims,
            )


def _id_of(text: str) -> str | None:
    """The line's own id, when it has one that can be read (a bad line keeps its id in the results)."""
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    value = raw.get("id") if isinstance(raw, dict) else None
    return str(value) if value not in (None, "") else None


# ------------------------------------------------------------------------------ save_to_disk


def _split_dir(path: Path, split: str | None) -> Path:
    """A DatasetDict directory has one Dataset directory per split: --split picks one (default: the only one)."""
    if (path / "state.json").is_file():
        return path
    splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
    if split is None:
        if len(splits) != 1:
            raise ValueError(f"{path} has the splits {', '.join(splits)}: pick one with --split")
        split = splits[0]
    if split not in splits:
        raise ValueError(f"{path} has no split {split!r} (it has {', '.join(splits)})")
    return path / split


def _arrow_files(path: Path) -> list[Path]:
    state = json.loads((path / "state.json").read_text())
    return [path / entry["filename"] for entry in state["_data_files"]]


def _arrow_rows(file: Path) -> int:
    import pyarrow as pa

    with pa.memory_map(str(file)) as source:
        return sum(batch.num_rows for batch in pa.ipc.open_stream(source))


def _image_cell(value: Any, base: Path) -> tuple[Path | None, bytes | None]:
    if isinstance(value, dict):  # datasets.Image: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return None, bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, bytes | bytearray):
        return None, bytes(value)
    if isinstance(value, str) and value:
        return (Path(value) if Path(value).is_absolute() else base / value), None
    raise BadCase(f"image cell holds {type(value).__name__}, not an image")


def read_hf_dataset(path: Path, columns: Columns, split: str | None) -> Iterator[AuditCase]:
    try:
        import pyarrow as pa
    except ImportError:
        raise ValueError(
            f"{path} is a Hugging Face data set: reading it needs pyarrow (pip install 'mllm-audit[datasets]')"
        ) from None
    data_dir = _split_dir(path, split)
    row = 0
    for file in _arrow_files(data_dir):
        with pa.memory_map(str(file)) as source:
            reader = pa.ipc.open_stream(source)
            names = reader.schema.names
            missing = [c for c in (columns.image, columns.prompt, columns.answer) if c not in names]
            if missing:
                raise ValueError(f"{data_dir}: no column {', '.join(missing)} (it has {', '.join(names)})")
            for batch in reader:
                for record in batch.to_pylist():
                    source_name = f"{data_dir}#{row}"
                    case_id = str(record[columns.id]) if record.get(columns.id) not in (None, "") else f"row-{row}"
                    row += 1
                    yield _dataset_case(record, case_id, source_name, data_dir, columns)


def _dataset_case(record: dict[str, Any], case_id: str, source: str, base: Path, columns: Columns) -> AuditCase:
    prompt, answer = record.get(columns.prompt), record.get(columns.answer)
    if not isinstance(prompt, str) or not prompt or not isinstance(answer, str) or not answer:
        return AuditCase(case_id, source, error=f"{source}: prompt and answer must be non-empty strings")
    try:
        image_path, image_bytes = _image_cell(record.get(columns.image), base)
    except BadCase as exc:
        return AuditCase(case_id, source, prompt, answer, error=f"{source}: {exc}")
    if image_path is not None and not image_path.is_file():
        return AuditCase(case_id, source, prompt, answer, error=f"{source}: image {image_path} not found")
    return AuditCase(case_id, source, prompt, answer, image_path=image_path, image_bytes=image_bytes)
