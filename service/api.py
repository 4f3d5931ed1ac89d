"""The LitServe worker side: one LitAPI that audits /v1/explain and /v1/reliance requests.

Why one LitAPI for both endpoints: LitServe gives every LitAPI its own worker processes, so
two LitAPIs would load the model twice (twice the GPU memory for a 7B model) and could never
put an explain and a reliance request into the same forward batch. Both routes feed this
API's queue (mllm_audit.service.server); `Envelope.kind` tells them apart.

Per batch the worker loop (mllm_audit.service.worker_loop) calls `decode_request` for each
request, then `predict` once with all of them, then `encode_response` for each. These hooks
never raise: a bad request becomes a `Failure` (its HTTP status and detail) that travels
through the batch and is turned into that request's own error response by the API server
(mllm_audit.service.server.AuditHandler). The others in the batch are answered normally.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import litserve as ls
import numpy as np
from mllm_audit.explainers.methods import WHITE_BOX as WHITE_BOX_METHODS
from mllm_audit.explainers.request import AuditInputError, AuditRequest, RequestAbandoned, TokenRange
from mllm_audit.explainers.results import AuditResult
from mllm_audit.service import logs, metrics
from mllm_audit.service.config import Settings, env_name
from mllm_audit.service.images import ImageError, decode_image
from mllm_audit.service.serialize import audit_body, estimated_bytes
from mllm_audit.service.shared import Failure, Shared
from mllm_audit.service.worker_loop import AuditLoop

# streamed requests: how often the worker writes their forward passes to Shared.progress (a queue-manager round trip)
PROGRESS_INTERVAL_S = 0.5

# LitServe's api_path, here only the key of the one request queue (never routed): service.server feeds both endpoints
QUEUE_PATH = "/_audit_queue"


@dataclass
class Envelope:
    """What an API server puts on the queue: the validated body plus what the worker needs."""

    kind: str  # "explain" or "reliance"
    request_id: str
    received: float  # time.monotonic() when the request arrived (system-wide clock on Linux)
    deadline: float  # time.monotonic() after which the client has been answered 504
    body: dict[str, Any]  # every field, defaults included
    explicit: frozenset[str] = frozenset()  # the fields the client gave
    uid: str = ""  # LitServe's id of the request on the queue, set by the worker loop (Shared.cancelled names it)


@dataclass
class Decoded:
    envelope: Envelope
    request: AuditRequest
    queue_s: float
    heatmap_encoding: str = "array"
    heatmap_size: tuple[int, int] | None = None  # (width, height); None: the image's


class DeadlinePassed(Exception):
    """Every request of the batch has already been answered 504: stop spending compute on it."""


class AuditAPI(ls.LitAPI):
    def __init__(self, settings: Settings):
        # The batched loop for every batch size (1 included): predict always gets a list.
        super().__init__(
            max_batch_size=settings.max_batch_size,
            batch_timeout=settings.batch_timeout,
            api_path=QUEUE_PATH,
            loop=AuditLoop(),
        )
        self.settings = settings
        self.shared: Shared | None = None  # set by the server before the workers start (service.shared)
        self.configure_logs = True  # False when the caller (the CLI) has set logging up itself
        self.auditor: Any = None  # an Auditor once setup() has loaded the model
        self.model_block: dict[str, Any] | None = None

    # ------------------------------------------------------------------ worker start
    def setup(self, device):
        import torch
        from mllm_audit.explainers.audit import Auditor
        from mllm_audit.models.backends import load_scorer
        from mllm_audit.service.calibrate import service_calibration
        from PIL import Image
        from transformers.utils import logging as hf_logging

        s = self.settings
        if self.configure_logs:
            logs.configure(s.log_level)
        log = logs.get("mllm_audit.worker")
        Image.MAX_IMAGE_PIXELS = s.max_image_pixels
        # LitServe hands each worker its own device for "auto" and "cuda" (see accelerator_of)
        chosen = str(device) if s.device in ("auto", "cuda") else s.device
        if chosen.startswith("cpu"):  # workers share the cores instead of fighting over them
            torch.set_num_threads(cpu_threads(s))
        hf_logging.disable_progress_bar()  # the weights' loading bar is not a JSON log line
        started = time.monotonic()
        scorer = load_scorer(
            s.model or None,
            device=chosen,
            dtype=s.dtype,
            backend=s.backend,
            trust_remote_code=s.trust_remote_code,
            model_id=s.model_id or None,
            onnx_cache=s.onnx_cache,
        )
        loaded = scorer.loaded
        backend = scorer.run_model if s.backend == "onnx" else None
        if backend is not None and backend.providers[0] != backend.requested[0]:  # ORT falls back without a word
            log.warning("onnx_provider_fallback", requested=backend.requested, granted=backend.providers)
        # checked by `serve` before the workers start; a file changed since fails the worker here
        calibration = service_calibration(s, loaded.model_id, loaded.family.name)
        self.auditor = Auditor(
            scorer,
            calibration=calibration,
            forward_batch_size=s.forward_batch_size,
            risk_medium=s.risk_medium,
            risk_high=s.risk_high,
            max_prompt_tokens=s.max_prompt_tokens,
            max_answer_tokens=s.max_answer_tokens,
            max_regions=s.max_regions,
        )
        self.model_block = {"id": loaded.model_id, "family": loaded.family.name, "revision": loaded.revision}
        self._warm_up(log)
        metrics.registry_metrics().model_info.labels(
            model_id=loaded.model_id, family=loaded.family.name, revision=loaded.revision or ""
        ).set(1)
        log.info(
            "model_loaded",
            model_id=loaded.model_id,
            family=loaded.family.name,
            revision=loaded.revision,
            device=str(loaded.device),
            dtype=str(loaded.dtype).removeprefix("torch."),
            backend=s.backend,
            onnx_providers=backend.providers if backend else None,
            # whether this start exported the graphs or reused an earlier start's (MLLM_AUDIT_ONNX_CACHE)
            onnx_graphs=str(backend.graphs) if backend else None,
            onnx_exported=backend.exported if backend else None,
            risk_calibration=calibration.id if calibration else None,
            threads=torch.get_num_threads(),
            seconds=round(time.monotonic() - started, 2),
        )

    def _warm_up(self, log) -> None:
        """One tiny reliance audit, so lazy initialisation is paid before /health says ready."""
        image = np.full((32, 32, 3), 128, dtype=np.uint8)
        result = self.auditor.run([AuditRequest(image, "warm up", "warm", with_attributions=False, regions=2)])[0]
        if isinstance(result, Exception):
            log.warning("warm_up_failed", error=f"{type(result).__name__}: {result}")

    def cancelled_uids(self) -> set[str]:
        """Queue ids of requests whose client has gone; AuditLoop makes it read Shared.cancelled."""
        return set()

    def report_progress(self, entries: dict[str, tuple[int, int | None]]) -> None:
        """uid -> (forward passes, budget) of streamed requests; AuditLoop makes it write Shared.progress."""

    # ------------------------------------------------------------------ per request
    def decode_request(self, request: Envelope):
        queue_s = max(0.0, time.monotonic() - request.received)
        metrics.registry_metrics().queue_wait.observe(queue_s)
        try:
            return self.audit_request(request, queue_s)
        except Exception as exc:
            return failure_of(exc, request.request_id)

    def audit_request(self, envelope: Envelope, queue_s: float = 0.0) -> Decoded:
        """The explainers' AuditRequest of a validated body, checked; raises ImageError / AuditInputError."""
        s, body = self.settings, envelope.body
        image = decode_image(body["image"], s.max_image_pixels)
        if envelope.kind == "reliance":
            # regions is unused on this path, but Auditor.check range-checks it: keep it inside any limit
            req = AuditRequest(
                image,
                body["prompt"],
                body["answer"],
                with_attributions=False,
                regions=2,
                verify=bool(body.get("verify", False)),
            )
            decoded = Decoded(envelope, req, queue_s)
        else:
            targets = body["targets"]
            if not isinstance(targets, str):
                targets = [
                    TokenRange(t["token_start"], t["token_end"]) if "token_start" in t else (t["start"], t["end"])
                    for t in targets
                ]
            budget = body.get("max_forward_passes")
            if budget is not None and budget > s.max_forward_passes:
                raise AuditInputError(f"max_forward_passes is {budget}; the limit is {s.max_forward_passes}")
            heatmap = body.get("heatmap") or {}
            regions = int(body["regions"])
            if "regions" not in envelope.explicit:  # the default (64) never exceeds the service's limit
                regions = min(regions, s.max_regions)
            req = AuditRequest(
                image,
                body["prompt"],
                body["answer"],
                method=body["method"],
                targets=targets,
                regions=regions,
                max_forward_passes=s.max_forward_passes if budget is None else int(budget),
                curves=bool(body.get("curves", False)),
                baseline=body["baseline"],
                lambda1=body["lambda1"],
                lambda2=body["lambda2"],
                verify=bool(body.get("verify", False)),
                correct_to=body.get("correct_to"),
                heatmap_kind=heatmap.get("kind"),
            )
            size = heatmap_size(heatmap, image.shape[1], image.shape[0], s.max_heatmap_pixels, s.default_heatmap_pixels)
            decoded = Decoded(envelope, req, queue_s, heatmap.get("encoding", "array"), size)
        self.auditor.check(req)
        if req.with_attributions:
            self.check_response_size(decoded)
        return decoded

    def check_response_size(self, decoded: Decoded) -> None:
        """422 before any compute when the response would pass MLLM_AUDIT_MAX_RESPONSE_BYTES."""
        req, limit = decoded.request, self.settings.max_response_bytes
        tokens = self.auditor.scorer.count_tokens(req.answer)
        targets = tokens if req.targets == "tokens" else 1 if req.targets == "answer" else len(req.targets)
        image = (req.image.shape[1], req.image.shape[0])
        heatmap = decoded.heatmap_size or image
        regions = 0 if req.method in WHITE_BOX_METHODS else req.regions
        size = estimated_bytes(targets, heatmap, decoded.heatmap_encoding, image, regions, tokens)
        if size > limit:
            raise AuditInputError(
                f"the response would be about {size / 1e6:.1f} MB ({targets} target(s), heatmaps of "
                f"{heatmap[0]}x{heatmap[1]} as {decoded.heatmap_encoding}); the limit is {limit / 1e6:.1f} MB "
                f"({env_name('max_response_bytes')}): ask for heatmap encoding png or none, a smaller heatmap, "
                "or fewer targets"
            )

    # ------------------------------------------------------------------ the batch
    def predict(self, items):
        outputs: list[Any] = list(items)
        valid = [i for i, item in enumerate(items) if isinstance(item, Decoded)]
        metrics.registry_metrics().batch_size.observe(len(items))
        if not valid:
            return outputs
        deadline = max(items[i].envelope.deadline for i in valid)
        counted = 0
        streamed = [items[i].envelope.uid for i in valid if items[i].envelope.body.get("stream")]
        budget = batch_budget([items[i].request for i in valid])
        reported = 0.0

        def on_progress(stats):  # after each engine round: count the images run, stop when nobody waits
            nonlocal counted, reported
            metrics.registry_metrics().forward_passes.inc(stats.forward_passes - counted)
            counted = stats.forward_passes
            if time.monotonic() > deadline:
                raise DeadlinePassed()
            if streamed and time.monotonic() - reported >= PROGRESS_INTERVAL_S:
                reported = time.monotonic()
                self.report_progress({uid: (stats.forward_passes, budget) for uid in streamed})

        def abandoned() -> set[int]:  # stopped at the next engine round; the rest of the batch runs on
            gone = self.cancelled_uids()
            return {n for n, i in enumerate(valid) if items[i].envelope.uid in gone} if gone else set()

        try:
            requests = [items[i].request for i in valid]
            results = self.auditor.run(requests, on_progress=on_progress, checked=True, abandoned=abandoned)
        except Exception as exc:
            results = [exc] * len(valid)
        for i, result in zip(valid, results):
            item = items[i]
            if isinstance(result, Exception):
                outputs[i] = failure_of(result, item.envelope.request_id)
            else:
                outputs[i] = self.response_body(item, result, len(items))
        return outputs

    def response_body(self, item: Decoded, result: AuditResult, batch_size: int) -> dict:
        env = item.envelope
        fields = audit_body(result, item.heatmap_encoding, item.heatmap_size)
        stats = {**fields["stats"], "batch_size": batch_size, "queue_ms": round(item.queue_s * 1000, 2)}
        body = {"request_id": env.request_id, "model": self.model_block, **fields, "stats": stats}
        self._count(body, env)
        return body

    def _count(self, body: dict, env: Envelope) -> None:
        m = metrics.registry_metrics()
        stats = body["stats"]  # forward passes are counted as they run (predict's on_progress)
        m.images_scored.inc()
        method = env.body["method"] if env.kind == "explain" else "reliance"
        m.explanation.labels(method=method).observe(stats.get("compute_ms", 0.0) / 1000)
        for token in body.get("tokens", []):
            m.tokens.labels(risk_label=token["risk_label"]).inc()
        m.answers.labels(risk_label=body["summary"]["risk_label"]).inc()
        for claim in body.get("claims", []):  # rate(claim_risk_sum) / rate(claims_total): estimated hallucination rate
            m.claims.labels(risk_label=claim["risk_label"]).inc()
            m.claim_risk.observe(claim["risk_score"])

    def encode_response(self, output):
        """(JSON bytes, fields for the API server's log line), or the request's Failure."""
        if isinstance(output, Failure):
            return output
        try:
            data = json.dumps(output, default=_plain, allow_nan=False, separators=(",", ":")).encode()
        except Exception as exc:
            return failure_of(exc, output.get("request_id", "?"))
        stats, summary = output.get("stats", {}), output.get("summary", {})
        method = (output.get("method") or {}).get("name")
        log = {
            "audit_method": method,
            "forward_passes": stats.get("forward_passes"),
            "model_calls": stats.get("model_calls"),
            "batch_size": stats.get("batch_size"),
            "queue_ms": stats.get("queue_ms"),
            "compute_ms": stats.get("compute_ms"),
            "risk_label": summary.get("risk_label"),
            "risk_score": _round(summary.get("risk_score")),
            "flagged_tokens": summary.get("flagged_tokens"),
            "tokens": len(output.get("tokens", [])),
        }
        return data, log


def batch_budget(requests: list[AuditRequest]) -> int | None:
    """The most forward passes the batch's searches may run (None for a batch of cheap-path requests only).

    The engine counts the batch's passes together, so a streamed request's progress is its batch's.
    A search may stop well before its budget; the readouts add a pass or two per request.
    """
    searches = [r.max_forward_passes for r in requests if r.with_attributions]
    if not searches or None in searches:
        return None
    return sum(s for s in searches if s is not None) + len(requests)


def cpu_threads(settings: Settings) -> int:
    if settings.cpu_threads:
        return settings.cpu_threads
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, usable // settings.workers)


def heatmap_size(
    options: dict, width: int, height: int, max_pixels: int, default_pixels: int
) -> tuple[int, int] | None:
    """(width, height) asked for; one side given keeps the image's aspect ratio.

    None (the image's size) by default, unless the image has more than `default_pixels` pixels:
    then the largest size of its aspect ratio within that (a 12 MP photo's heatmap as JSON
    floats would be ~80 MB).
    """
    w, h = options.get("width"), options.get("height")
    if w is None and h is None:
        if width * height <= default_pixels:
            return None
        scale = math.sqrt(default_pixels / (width * height))
        return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    if w is None:
        assert h is not None
        w = max(1, round(h * width / height))
    if h is None:
        h = max(1, round(w * height / width))
    if w * h > max_pixels:
        raise AuditInputError(f"heatmap of {w}x{h} has more than {max_pixels} pixels")
    return int(w), int(h)


def failure_of(exc: BaseException, request_id: str) -> Failure:
    """The HTTP answer to an exception raised while auditing one request."""

    if isinstance(exc, ImageError):
        return Failure(exc.status, exc.detail)
    if isinstance(exc, AuditInputError):
        return Failure(422, str(exc))
    if isinstance(exc, DeadlinePassed):
        return Failure(504, "request timed out")
    if isinstance(exc, RequestAbandoned):
        return Failure(499, "the client closed the request")
    if isinstance(exc, (ImportError, NotImplementedError)):
        return Failure(501, f"this method is not available in this build: {exc}")
    if type(exc).__name__ == "OutOfMemoryError":
        return Failure(503, "the model ran out of memory; retry later or with fewer regions", {"Retry-After": "5"})
    logs.get("mllm_audit.worker").error("audit_failed", request_id=request_id, error=type(exc).__name__, exc_info=exc)
    return Failure(500, f"internal error while auditing (request_id {request_id}); see the service logs")


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _round(value):
    return None if value is None or not math.isfinite(value) else round(float(value), 4)
