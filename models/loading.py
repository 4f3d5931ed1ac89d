"""Load a local Hugging Face image-text-to-text checkpoint directory, and nothing from a hub."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from mllm_audit.models.families import Family, Processor, family_of

if TYPE_CHECKING:
    from transformers import PreTrainedModel

REFERENCE_MODEL_DIR = Path(__file__).resolve().parent / "reference" / "weights"
REFERENCE_MODEL_ID = "mllm-audit-reference"
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


class ModelLoadError(RuntimeError):
    """A model directory that cannot be used; the message names the path and the problem."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    processor: Processor
    family: Family
    path: Path
    model_id: str
    revision: str | None
    device: torch.device
    dtype: torch.dtype


def choose_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def model_id_for(path: Path, configured: str | None = None) -> str:
    """The id to report: the configured one, the bundled model's name, else the directory's name."""
    if configured:
        return configured
    return REFERENCE_MODEL_ID if path.resolve() == REFERENCE_MODEL_DIR else path.name


DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def choose_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_model_dir(path: Path) -> dict[str, Any]:
    """Fail early, with the path in the message, on anything that would break loading later."""
    if not path.exists():
        raise ModelLoadError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise ModelLoadError(f"model path {path} is not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"model directory {path} has no config.json")
    try:
        config: dict[str, Any] = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {exc}") from exc
    if "model_type" not in config:
        raise ModelLoadError(f"{config_file} names no model_type")
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"model directory {path} has no *.safetensors weights (only safetensors are loaded)")
    if not any((path / f).is_file() for f in PROCESSOR_FILES):
        raise ModelLoadError(f"model directory {path} has no processor config ({' or '.join(PROCESSOR_FILES)})")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(f"model directory {path} has no tokenizer ({', '.join(TOKENIZER_FILES)})")
    return config


def load_model(
    path: str | os.PathLike[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    model_id: str | None = None,
) -> LoadedModel:
    """Load weights and processor from a local directory (default: the bundled reference model)."""
    from transformers import AutoModelForImageTextToText

    directory = (Path(path) if path else REFERENCE_MODEL_DIR).expanduser().resolve()
    config = check_model_dir(directory)
    dev = choose_device(device)
    dt = choose_dtype(dtype, dev)
    family = family_of(config["model_type"])
    try:
        processor = family.load_processor(directory, trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(
            directory, local_files_only=True, trust_remote_code=trust_remote_code, dtype=dt, use_safetensors=True
        )
    except Exception as exc:  # transformers raises many types; the caller needs one with the path
        raise ModelLoadError(f"could not load the model in {directory}: {type(exc).__name__}: {exc}") from exc
    # transformers wraps `to` with functools.wraps(Module.to), which hides its signature from mypy
    model.to(dev).eval()  # type: ignore[arg-type]
    revision = (directory / "REVISION").read_text().strip() if (directory / "REVISION").is_file() else None
    return LoadedModel(
        model=model,
        processor=processor,
        family=family,
        path=directory,
        model_id=model_id_for(directory, model_id),
        revision=revision,
        device=dev,
        dtype=dt,
    )
