"""Open a local checkpoint as a scorer, on the torch or the ONNX Runtime backend."""

from __future__ import annotations

import os
from typing import Any

from mllm_audit.models.loading import load_model
from mllm_audit.models.onnx_cache import resolve_cache_dir
from mllm_audit.models.scorer import Scorer

BACKENDS = ("torch", "onnx")


def onnx_precision(dtype: str, device: str) -> str:
    """The ONNX graphs' precision for a dtype setting: float16 only when asked for, on CUDA."""
    if dtype in ("auto", "float32", "fp32"):
        return "float32"
    if dtype in ("float16", "fp16"):
        if not device.startswith("cuda"):
            raise ValueError(f"the onnx backend runs float16 on CUDA only, not on {device!r}; use dtype float32")
        return "float16"
    raise ValueError(f"the onnx backend runs float32, or float16 on CUDA; not {dtype!r}")


def load_scorer(
    path: str | os.PathLike[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    backend: str = "torch",
    trust_remote_code: bool = False,
    model_id: str | None = None,
    onnx_cache: str | os.PathLike[str] | None = "",
) -> Scorer:
    """A scorer of the model in `path` (default: the bundled reference model).

    The ONNX backend exports the float32 model from the CPU and runs it with ONNX Runtime on
    `device` (CUDA where granted; `scorer.run_model.providers` says which provider runs it);
    dtype float16 converts the graphs to float16 (CUDA only). The graphs are cached in
    `onnx_cache` ("": the default directory, models.onnx_cache; "none" or None: no cache).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    onnx = backend == "onnx"
    precision = onnx_precision(dtype, device) if onnx else "float32"
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

        runner = OnnxBackend(
            loaded, use_cuda=device.startswith("cuda"), cache=resolve_cache_dir(onnx_cache), precision=precision
        )
    return Scorer(loaded, runner)
