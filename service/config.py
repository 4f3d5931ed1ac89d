"""Service configuration from `MLLM_AUDIT_*` environment variables (CLI flags override them).

Every setting is one field of `Settings`; its environment variable is the field name in
upper case with the `MLLM_AUDIT_` prefix. `ENV_VARS` lists them for docs and the Helm chart.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields

PREFIX = "MLLM_AUDIT_"
LOG_LEVELS = ("debug", "info", "warning", "error")
BACKENDS = ("torch", "onnx")
DTYPE_NAMES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")  # mllm_audit.models.loading.DTYPES
ONNX_DTYPE_NAMES = ("auto", "float32", "fp32", "float16", "fp16")  # mllm_audit.models.backends.onnx_precision


def _describe(default, doc: str):
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Settings:
    model: str = _describe("", "local model directory (empty: the bundled reference model)")
    model_id: str = _describe(
        "",
        "model id reported in responses and metrics (empty: the directory name; "
        "mllm-audit-reference for the bundled model)",
    )
    device: str = _describe("auto", "auto, cpu, cuda or cuda:N")
    dtype: str = _describe("auto", "auto (bf16/fp16 on GPU, float32 on CPU), float32, bfloat16, float16")
    trust_remote_code: bool = _describe(False, "allow model code shipped with the checkpoint")
    backend: str = _describe(
        "torch",
        "torch, or onnx: the model exported to ONNX and run by ONNX Runtime (LLaVA family; float32, "
        "or float16 with dtype float16 on its CUDA provider, which it uses with a cuda device)",
    )
    onnx_cache: str = _describe(
        "",
        "directory of the onnx backend's exported graphs, one entry per model revision and export "
        "settings, reused by later starts (empty: $XDG_CACHE_HOME/mllm-audit/onnx, else "
        "~/.cache/mllm-audit/onnx; none: export into a temporary directory at every start)",
    )
    host: str = _describe("127.0.0.1", "address to listen on")
    port: int = _describe(8000, "port to listen on")
    api_servers: int = _describe(1, "HTTP server processes")
    workers: int = _describe(1, "model worker processes per device")
    max_batch_size: int = _describe(8, "requests batched together by LitServe")
    batch_timeout: float = _describe(0.05, "seconds LitServe waits to fill a batch")
    forward_batch_size: int = _describe(32, "images per model forward pass (shared across batched requests)")
    cpu_threads: int = _describe(
        0,
        "torch threads per worker on CPU (0: the usable cores / workers); set it to "
        "the pod's CPU limit, since more threads than cores is many times slower",
    )
    request_timeout: float = _describe(300.0, "seconds before a request is answered 504")
    drain_timeout: float = _describe(
        60.0,
        "seconds in-flight audits get to finish after SIGTERM; queued ones are answered 503 at once "
        "(keep it below the pod's terminationGracePeriodSeconds: the chart derives it from that)",
    )
    header_timeout: float = _describe(10.0, "seconds a client has to send a request's headers")
    body_timeout: float = _describe(30.0, "seconds a client may pause while sending a request body (408 after)")
    max_queue: int = _describe(64, "requests waiting or running before new ones get 503")
    max_payload_bytes: int = _describe(10_000_000, "largest request body (413 above)")
    max_image_pixels: int = _describe(16_000_000, "largest decoded image, width x height (413 above)")
    max_heatmap_pixels: int = _describe(
        4_194_304, "largest heatmap in a response, width x height: a larger one asked for is 422"
    )
    default_heatmap_pixels: int = _describe(
        262_144,
        "heatmap size when a request gives none: the image's size, scaled down to at most this many pixels "
        "(512x512: about 1.8 MB per heatmap as an array, 0.1 MB as png)",
    )
    max_response_bytes: int = _describe(
        64_000_000,
        "largest response body, estimated from targets x heatmap pixels x encoding before any compute (422 above)",
    )
    max_prompt_tokens: int = _describe(512, "longest prompt in tokens (422 above)")
    max_answer_tokens: int = _describe(256, "longest answer in tokens (422 above)")
    max_regions: int = _describe(256, "largest region count a request may ask for")
    max_forward_passes: int = _describe(20_000, "largest forward-pass budget a request may ask for")
    risk_medium: float = _describe(0.35, "risk score from which a visual token is labelled medium")
    risk_high: float = _describe(0.65, "risk score from which a visual token is labelled high")
    risk_calibration: str = _describe(
        "",
        "risk calibration file (mllm-audit calibrate); empty: the model directory's risk_calibration.json "
        "if it has one, else uncalibrated; none: uncalibrated. A file that does not fit the model stops the start",
    )
    api_key: str = _describe("", "API key; when set, requests need `Authorization: Bearer KEY` or `X-API-Key: KEY`")
    protect_health: bool = _describe(False, "require the API key on /health, /livez and /readyz too")
    protect_metrics: bool = _describe(False, "require the API key on /metrics/ too")
    log_level: str = _describe("info", "debug, info, warning or error")
    debug: bool = _describe(False, "log prompts and answers (never image bytes)")
    metrics_dir: str = _describe("", "prometheus multiprocess directory (empty: a fresh temporary one)")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> Settings:
        env = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = env.get(env_name(f.name))
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, type(f.default), raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = (
            "port",
            "api_servers",
            "workers",
            "max_batch_size",
            "forward_batch_size",
            "max_queue",
            "max_payload_bytes",
            "max_image_pixels",
            "max_heatmap_pixels",
            "default_heatmap_pixels",
            "max_response_bytes",
            "max_prompt_tokens",
            "max_answer_tokens",
            "max_regions",
            "max_forward_passes",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{env_name(name)} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.risk_medium <= self.risk_high <= 1:
            raise ValueError(f"need 0 <= {env_name('risk_medium')} <= {env_name('risk_high')} <= 1")
        if self.cpu_threads < 0:
            raise ValueError(f"{env_name('cpu_threads')} must be 0 (automatic) or more, got {self.cpu_threads}")
        if self.batch_timeout < 0 or min(self.request_timeout, self.header_timeout, self.body_timeout) <= 0:
            raise ValueError("batch, request, header and body timeouts must be positive")
        if self.drain_timeout < 0:
            raise ValueError(f"{env_name('drain_timeout')} must be 0 or more, got {self.drain_timeout}")
        # checked here, so a typo stops `serve` at once instead of failing in every worker later
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"{env_name('device')} must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"{env_name('backend')} must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"{env_name('dtype')} must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}")
        if self.backend == "onnx" and self.dtype not in ONNX_DTYPE_NAMES:
            raise ValueError(
                f"{env_name('dtype')}={self.dtype} with {env_name('backend')}=onnx: the onnx backend runs "
                "auto or float32, or float16 on a cuda device"
            )
        if self.backend == "onnx" and self.dtype in ("float16", "fp16") and self.device == "cpu":
            raise ValueError(f"{env_name('dtype')}={self.dtype} with {env_name('backend')}=onnx needs a cuda device")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"{env_name('log_level')} must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")


def env_name(field_name: str) -> str:
    return PREFIX + field_name.upper()


def _parse(name: str, kind: type, raw: str):
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise ValueError(f"{env_name(name)}={raw!r} is not a valid {kind.__name__}") from None


ENV_VARS: dict[str, tuple[object, str]] = {env_name(f.name): (f.default, f.metadata["doc"]) for f in fields(Settings)}
