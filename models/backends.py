"""Open a local checkpoint as a scorer, on the torch or the ONNX Runtime backend."""

from __future__ import annotations

import os
from typing import Any

from mllm_audit.models.loading import load_model
from mllm_audit.models.scorer import Scorer

BACKENDS = ("torch", "onnx")


def load_scorer(
    path: str | os.PathLike[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    backend: str = "torch",
    trust_remote_code: bool = False,
    model_id: str | None = None,
) -> Scorer:
    """A scorer of the model in `path` (default: the bundled reference model).

    The ONNX backend exports the float32 model from the CPU and runs it with ONNX Runtime on
    `device` (CUDA where granted; `scorer.run_model.providers` says which provider runs it).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    onnx = backend == "onnx"
    loaded = load_model(
        path,
        device="cpu" if onnx else device,
        dtype="float32" if onnx else dtype,
        trust_remote_code=trust_remote_code,
        model_id=model_id,
    )
    runner: Any = None
    if onnx:
        from mllm_audit.models.onnx_backend import OnnxBackend

        runner = OnnxBackend(loaded, use_cuda=device.startswith("cuda"))
    return Scorer(loaded, runner)
