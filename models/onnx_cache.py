"""On-disk cache of the ONNX backend's exported graphs, keyed by the model's revision.

An entry is a directory `<cache>/<model dir name>-<key>/` holding `vision.onnx`, `language.onnx`
and `manifest.json` (what the key was made of, for people). The key hashes what the graphs
depend on:

* the model's revision: the names, sizes and modification times of its `*.safetensors` files
  (cheap: the weights are never read) and the contents of its config and processor config;
* the export's settings: graph format, opset, precision, and the torch, transformers and
  onnxruntime versions (the traced code and the float16 converter are theirs).

A changed weights file therefore gives a new entry; the old one stays until someone deletes it.
An entry is written into a `.partial-*` directory and renamed into place once complete, so a
crash mid-export leaves only a `.partial-*` directory, which is never read (delete it at will).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

GRAPH_FILES = ("vision.onnx", "language.onnx")
# bump when the exported graphs change (their inputs, outputs or what they compute)
GRAPH_FORMAT = 2
PARTIAL_PREFIX = ".partial-"
REVISION_FILES = ("config.json", "processor_config.json", "preprocessor_config.json")


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/mllm-audit/onnx`, else `~/.cache/mllm-audit/onnx`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mllm-audit" / "onnx"


def resolve_cache_dir(setting: str | os.PathLike[str] | None) -> Path | None:
    """The cache directory a setting names: empty is the default one, "none" (or None) no cache."""
    if setting is None or str(setting).lower() == "none":
        return None
    return Path(setting).expanduser() if str(setting) else default_cache_dir()


def model_revision(model_dir: Path) -> dict[str, object]:
    """What identifies the weights and the shapes the export traces, without reading the weights."""
    weights = []
    for path in sorted(model_dir.glob("*.safetensors")):
        stat = path.stat()
        weights.append([path.name, stat.st_size, stat.st_mtime_ns])
    configs = {
        name: hashlib.sha256((model_dir / name).read_bytes()).hexdigest()
        for name in REVISION_FILES
        if (model_dir / name).is_file()
    }
    return {"weights": weights, "configs": configs}


def export_settings(opset: int, precision: str) -> dict[str, object]:
    import onnxruntime
    import torch
    import transformers

    return {
        "format": GRAPH_FORMAT,
        "opset": opset,
        "precision": precision,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def cache_key(model_dir: Path, settings: dict[str, object]) -> str:
    described = json.dumps({"revision": model_revision(model_dir), "export": settings}, sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class CachedGraphs:
    directory: Path
    exported: bool  # False: an earlier start's export was reused

    @property
    def vision(self) -> Path:
        return self.directory / GRAPH_FILES[0]

    @property
    def language(self) -> Path:
        return self.directory / GRAPH_FILES[1]


def _complete(entry: Path) -> bool:
    return all((entry / name).is_file() for name in GRAPH_FILES)


def cached_graphs(
    cache: Path, model_dir: Path, settings: dict[str, object], export: Callable[[Path], None]
) -> CachedGraphs:
    """The entry for this model and these settings; `export(directory)` writes the graphs on a miss."""
    entry = cache / f"{model_dir.name}-{cache_key(model_dir, settings)}"
    if _complete(entry):
        return CachedGraphs(entry, exported=False)
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=cache))
    try:
        export(partial)
        manifest = {"model": str(model_dir), "revision": model_revision(model_dir), "export": settings}
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=2))
        _move_into_place(partial, entry)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already after a successful rename
    return CachedGraphs(entry, exported=True)


def _move_into_place(partial: Path, entry: Path) -> None:
    try:
        partial.rename(entry)  # atomic: readers see no entry or a complete one
    except OSError:
        if _complete(entry):  # another worker exported the same graphs first: keep theirs
            return
        shutil.rmtree(entry)  # an incomplete entry someone else left: replace it
        partial.rename(entry)
