"""The auditor: audit a batch of requests against one model, their images sharing forward batches.

    auditor = Auditor(scorer)               # or Auditor.from_pretrained(path)
    auditor.explain(image, prompt, answer)  # one request -> AuditResult (raises AuditInputError)
    auditor.run(requests)                   # one AuditResult or one Exception per request, same order

Every request gets per-token reliance and risk (`mllm_audit.explainers.reliance`); with
attributions, its method (`mllm_audit.explainers.methods`) plans the images to score.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mllm_audit.explainers import methods, reliance, risk, signals
from mllm_audit.explainers.calibration import CALIBRATION_FILE, Calibration
from mllm_audit.explainers.calibration import load as load_calibration
from mllm_audit.explainers.claims import Claim, group_claims
from mllm_audit.explainers.diagnosis import PairedAudit, correction_search
from mllm_audit.explainers.engine import EngineStats, Job, cancel, run_jobs
from mllm_audit.explainers.masking import BASELINES, ImageLike
from mllm_audit.explainers.methods import MethodResult, Plan, PlanContext
from mllm_audit.explainers.regions import labels_at, region_bbox, region_masks, superpixel_regions
from mllm_audit.explainers.reliance import NOT_VISUAL
from mllm_audit.explainers.request import (
    MIN_IMAGE_SIDE,
    AuditInputError,
    AuditRequest,
    RequestAbandoned,
    TokenRange,
)
from mllm_audit.explainers.results import AuditResult, Diagnosis, MethodInfo, Stats, Target
from numpy.typing import NDArray
from PIL import Image

if TYPE_CHECKING:  # the scorer module imports torch; explainers do not need it at run time
    from mllm_audit.models.scorer import Audit, ScorerProtocol


@dataclass
class _Work:
    """A request on its way through the engine."""

    request: AuditRequest
    audit: Audit
    targets: list[Target]
    image: NDArray[np.uint8]  # the working image
    plan: Plan | None  # None on the cheap reliance path
    contrast: Job | None  # p_blank (black), when the method does not measure it
    claims: list[Claim]
    verified: dict[int, Job]  # claim index -> its verification question's job
    diagnosis: Job | None = None
    diagnosis_labels: NDArray[np.int32] | None = None  # the superpixels the diagnosis removes
    readout: Any = None  # the scorer's Readout of the full image

    @property
    def jobs(self) -> list[Job]:
        jobs = ([self.contrast] if self.contrast else []) + (self.plan.jobs if self.plan else [])
        return jobs + list(self.verified.values()) + ([self.diagnosis] if self.diagnosis else [])


def working_image(image: NDArray[np.uint8], max_side: int) -> NDArray[np.uint8]:
    """Masked images are built at this size; results are mapped back to client pixels."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def as_rgb_array(image: Image.Image | NDArray[Any]) -> NDArray[np.uint8]:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    return np.asarray(image, dtype=np.uint8)


class Auditor:
    def __init__(
        self,
        scorer: ScorerProtocol,
        forward_batch_size: int = 32,
        risk_medium: float = 0.35,
        risk_high: float = 0.65,
        max_prompt_tokens: int = 512,
        max_answer_tokens: int = 256,
        max_regions: int = 256,
        work_side: int = 336,
        calibration: Calibration | None = None,
    ):
        self.scorer = scorer
        self.forward_batch_size = forward_batch_size
        self.risk_medium, self.risk_high = risk_medium, risk_high
        self.max_prompt_tokens = max_prompt_tokens
        self.max_answer_tokens = max_answer_tokens
        self.max_regions = max_regions
        self.work_side = work_side
        self.calibration = calibration  # None: uncalibrated risk (see explainers.risk)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        backend: str = "torch",
        calibration: str | Path | None = "auto",
        **options: Any,
    ) -> Auditor:
        """An auditor of the model in a local directory (the bundled reference model by default).

        `backend` is "torch" or "onnx" (LLaVA family, exported at load). `calibration`: a risk
        calibration file; "auto" takes the model directory's `risk_calibration.json` when it
        has one; None: uncalibrated. `options` are the constructor's (forward_batch_size,
        risk thresholds, limits).
        """
        from mllm_audit.models.backends import load_scorer

        scorer = load_scorer(path, device=device, dtype=dtype, backend=backend)
        if calibration == "auto":
            found = Path(scorer.loaded.path) / CALIBRATION_FILE
            calibration = found if found.is_file() else None
        loaded = None if calibration is None else load_calibration(calibration, model_id=scorer.loaded.model_id)
        return cls(scorer, calibration=loaded, **options)

    # ------------------------------------------------------------------ one request
    def explain(self, image: Image.Image | NDArray[Any], prompt: str, answer: str, **options: Any) -> AuditResult:
        """Attributions, reliance and risk of one answer; options are AuditRequest's fields."""
        return self._one(AuditRequest(as_rgb_array(image), prompt, answer, **options))

    def reliance(self, image: Image.Image | NDArray[Any], prompt: str, answer: str) -> AuditResult:
        """Per-token reliance and risk only: two forward passes (the image and a black one)."""
        return self._one(AuditRequest(as_rgb_array(image), prompt, answer, with_attributions=False, regions=2))

    def _one(self, request: AuditRequest) -> AuditResult:
        [result] = self.run([request])
        if isinstance(result, Exception):
            raise result
        return result

    # ------------------------------------------------------------------ input checks
    def check(self, req: AuditRequest) -> None:
        """Raise AuditInputError for a request that cannot be audited; cheap, no model call."""
        if req.with_attributions:
            method = methods.get(req.method)  # raises for an unknown name
            if req.heatmap_kind is not None and req.heatmap_kind not in method.heatmap_kinds:
                raise AuditInputError(
                    f"{req.method} maps have no heatmap kind {req.heatmap_kind!r}; "
                    f"use {', '.join(method.heatmap_kinds)}"
                )
        if not req.answer.strip():
            raise AuditInputError("answer is empty: there is nothing to audit")
        if not req.prompt.strip():
            raise AuditInputError("prompt is empty")
        if req.image.ndim != 3 or req.image.shape[2] != 3 or min(req.image.shape[:2]) < MIN_IMAGE_SIDE:
            raise AuditInputError(
                f"image must be RGB and at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels, "
                f"got shape {list(req.image.shape)}"
            )
        if not 2 <= req.regions <= self.max_regions:
            raise AuditInputError(f"regions must be between 2 and {self.max_regions}, got {req.regions}")
        if req.max_forward_passes is not None and req.max_forward_passes < 2:
            raise AuditInputError("max_forward_passes must be at least 2 (the full and the blank image)")
        if req.baseline not in BASELINES:
            raise AuditInputError(f"unknown baseline {req.baseline!r}; use one of {', '.join(BASELINES)}")
        if min(req.lambda1, req.lambda2) < 0 or req.lambda1 + req.lambda2 <= 0:
            raise AuditInputError("lambda1 and lambda2 must be non-negative and not both 0")
        n_prompt = self.scorer.count_tokens(req.prompt)
        if n_prompt > self.max_prompt_tokens:
            raise AuditInputError(f"prompt has {n_prompt} tokens; the limit is {self.max_prompt_tokens}")
        n_answer = self.scorer.count_tokens(req.answer)
        if n_answer > self.max_answer_tokens:
            raise AuditInputError(f"answer has {n_answer} tokens; the limit is {self.max_answer_tokens}")
        if req.correct_to is not None:
            if not req.correct_to.strip():
                raise AuditInputError("correct_to is empty: name the answer the model should have given")
            if req.correct_to.strip() == req.answer.strip():
                raise AuditInputError("correct_to equals the answer: there is nothing to correct")
            n_alternative = self.scorer.count_tokens(req.correct_to)
            if n_alternative > self.max_answer_tokens:
                raise AuditInputError(f"correct_to has {n_alternative} tokens; the limit is {self.max_answer_tokens}")
        if isinstance(req.targets, str) and req.targets not in ("answer", "tokens"):
            raise AuditInputError(f"targets must be 'answer', 'tokens' or a list of spans, got {req.targets!r}")
        if not isinstance(req.targets, str):
            for target in req.targets:
                if isinstance(target, TokenRange):
                    if not 0 <= target.start < target.end:
                        raise AuditInputError(f"token span [{target.start}, {target.end}) is empty or negative")
                    continue  # its upper end is checked against the answer's tokens in _targets
                start, end = target
                if not 0 <= start < end <= len(req.answer):
                    raise AuditInputError(f"target span [{start}, {end}) is outside the answer (0..{len(req.answer)})")

    def _targets(self, req: AuditRequest, audit: Audit) -> list[Target]:
        tokens = audit.tokens
        every = list(range(len(tokens.ids)))
        if req.targets == "answer":
            return [Target(0, len(req.answer), req.answer, every)]
        if req.targets == "tokens":
            return [Target(s, e, t, [i]) for i, ((s, e), t) in enumerate(zip(tokens.spans, tokens.texts))]
        if isinstance(req.targets, str):  # any other word: check() refuses it
            raise AuditInputError(f"targets must be 'answer', 'tokens' or a list of spans, got {req.targets!r}")
        out = []
        for target in req.targets:
            if isinstance(target, TokenRange):
                if target.end > len(tokens.ids):
                    raise AuditInputError(
                        f"token span [{target.start}, {target.end}) is outside the answer's {len(tokens.ids)} tokens"
                    )
                idx = list(range(target.start, target.end))
                start, end = tokens.spans[idx[0]][0], tokens.spans[idx[-1]][1]
            else:
                start, end = target
                idx = [i for i, (s, e) in enumerate(tokens.spans) if s < end and e > start]
                if not idx:
                    raise AuditInputError(f"target span [{start}, {end}) covers no answer token")
            out.append(Target(start, end, req.answer[start:end], idx))
        return out

    # ------------------------------------------------------------------ jobs per request
    def _plan(self, req: AuditRequest, checked: bool) -> _Work:
        if not checked:
            self.check(req)
        image = working_image(req.image, self.work_side)
        audit = self.scorer.prepare(req.prompt, req.answer, (image.shape[1], image.shape[0]))
        targets = self._targets(req, audit)
        contrast = None
        # created before the method plans, so its images come first in the engine's queue
        needs_contrast = not req.with_attributions or req.method in methods.WHITE_BOX or req.baseline != "black"
        if needs_contrast:
            contrast = Job(audit, reliance.black_probs(image))
        plan = None
        if req.with_attributions:
            plan = methods.get(req.method).plan(PlanContext(req, self.scorer, audit, image, targets))
            if contrast is None and not plan.measures_contrast:
                raise RuntimeError(f"method {req.method} measures no contrast and none was planned")
        claims = group_claims(req.answer, audit.tokens.spans)
        template = self.calibration.verify_template if self.calibration else risk.DEFAULT_VERIFY_TEMPLATE
        verified = risk.verification_jobs(self.scorer, image, claims, template) if req.verify else {}
        work = _Work(req, audit, targets, image, plan, contrast, claims, verified)
        if req.correct_to is not None:
            alternative = self.scorer.prepare(req.prompt, req.correct_to, (image.shape[1], image.shape[0]))
            work.diagnosis_labels = superpixel_regions(image, req.regions)
            masks = region_masks(work.diagnosis_labels)
            work.diagnosis = Job(
                PairedAudit(audit, alternative), correction_search(image, masks, audit.n_tokens, req.correct_to)
            )
        return work

    # ------------------------------------------------------------------ results
    def _finish(self, work: _Work, model_calls: int, compute_ms: float) -> AuditResult:
        req = work.request
        failed = [j.error for j in work.jobs if j.error is not None]
        if failed:
            raise failed[0]
        tokens = work.audit.tokens
        visual = reliance.visual_claims(req.answer, tokens.spans)
        found: MethodResult | None = work.plan.finish() if work.plan else None
        p_full = np.exp(work.readout.log_probs)
        if work.contrast is not None:
            p_blank = work.contrast.result
        else:
            assert found is not None and found.contrast is not None
            p_blank = found.contrast[1]
        if found is not None and found.token_curves is not None:
            assessed = []
            for t in range(len(tokens.ids)):
                areas, insertion = found.token_curves[t]
                assessed += reliance.assess_tokens(
                    [tokens.texts[t]], p_full[[t]], p_blank[[t]], areas, insertion, visual=[visual[t]]
                )
        else:
            assessed = reliance.assess_tokens(tokens.texts, p_full, p_blank, visual=visual)
        claims, risk_info = risk.assess_claims(
            work.claims,
            work.readout,
            work.verified,
            self.calibration,
            risk.Thresholds(self.risk_medium, self.risk_high),
            lambda patch: self._patch_box(work, patch),
        )
        context = found.token_context if found else {}
        owner = {t: c for c in claims for t in c.token_indices}
        for t, row in enumerate(assessed):
            row.index, (row.start, row.end), row.context = t, tokens.spans[t], context.get(t)
            # a token carries its claim's risk; a token outside every claim claims nothing
            claim = owner.get(t)
            row.risk_score, row.risk_label = (claim.risk_score, claim.risk_label) if claim else (0.0, NOT_VISUAL)
        planning = work.plan.planning_cost if work.plan else EngineStats()
        passes = sum(j.forward_passes for j in work.jobs) + planning.forward_passes + 1  # + the readout
        diagnosis = None
        if work.diagnosis is not None:
            diagnosis = self._diagnosis(work)
            passes += diagnosis.forward_passes - work.diagnosis.forward_passes  # each image under both answers
        return AuditResult(
            method=MethodInfo(req.method if req.with_attributions else "reliance", self._params(req)),
            tokens=assessed,
            summary=reliance.summarize(assessed, claims),
            stats=Stats(passes, model_calls, round(compute_ms, 2)),
            attributions=found.attributions if found else None,
            claims=claims,
            risk=risk_info,
            diagnosis=diagnosis,
        )

    @staticmethod
    def _client_scale(work: _Work) -> tuple[float, float]:
        (h, w), (wh, ww) = work.request.image.shape[:2], work.image.shape[:2]
        return w / ww, h / wh

    def _patch_box(self, work: _Work, patch: int) -> tuple[int, int, int, int]:
        grid = work.readout.grid
        view = self.scorer.view_box(work.image.shape[:2])
        return signals.patch_box(patch, grid, view, self._client_scale(work))

    def _diagnosis(self, work: _Work) -> Diagnosis:
        assert work.diagnosis is not None
        found: Diagnosis = work.diagnosis.result
        h, w = work.request.image.shape[:2]
        assert work.diagnosis_labels is not None
        segments = labels_at(work.diagnosis_labels, (w, h))
        boxes: list[tuple[int, int, int, int]] = []
        for region in found.ranking:
            x0, y0, x1, y1 = region_bbox(segments == region)  # [0, 0, 0, 0]: a sliver lost at client size
            boxes.append((x0, y0, x1, y1))
        return replace(found, boxes=boxes)

    def _read_out(self, works: list[_Work]) -> int:
        """One full-image forward per request, batched: the risk signals. Returns the model calls."""
        size = self.forward_batch_size
        for start in range(0, len(works), size):
            chunk = works[start : start + size]
            phrases = [self._asked_phrase(w) for w in chunk]
            for work, readout in zip(chunk, self.scorer.readout([(w.audit, w.image) for w in chunk], phrases)):
                work.readout = readout
        return -(-len(works) // size)

    def _asked_phrase(self, work: _Work) -> list[int]:
        """Token ids of what a yes/no answer is about (the question's object), or none."""
        if not any(c.kind == "existence" for c in work.claims):
            return []
        phrase = risk.question_phrase(work.request.prompt)
        return self.scorer.token_ids(" " + phrase) if phrase else []

    def _score(self, pairs: list[tuple[Any, ImageLike]]) -> list[NDArray[np.float64]]:
        """The engine's score function: the scorer's, with a PairedAudit's image scored under both answers."""
        expanded: list[tuple[Any, ImageLike]] = []
        for audit, image in pairs:
            if isinstance(audit, PairedAudit):
                expanded += [(audit.answer, image), (audit.alternative, image)]
            else:
                expanded.append((audit, image))
        scored = iter(self.scorer.log_probs(expanded))
        return [
            np.concatenate([next(scored), next(scored)]) if isinstance(a, PairedAudit) else next(scored)
            for a, _ in pairs
        ]

    def _params(self, req: AuditRequest) -> dict[str, Any]:
        # the cheap path's only masked image is the black one (p_blank)
        params: dict[str, Any] = {"baseline": req.baseline if req.with_attributions else "black"}
        if req.with_attributions:
            params.update(methods.get(req.method).params(req))
        return params

    def run(
        self,
        requests: list[AuditRequest],
        on_progress: Callable[[EngineStats], None] | None = None,
        checked: bool = False,
        abandoned: Callable[[], set[int]] | None = None,
    ) -> list[AuditResult | Exception]:
        """Audit every request; their masked images share forward batches.

        `on_progress` is called after every engine round with the forwards so far (it may raise
        to stop the run, e.g. when a deadline has passed). `abandoned`, asked after every round,
        names the requests (indices into `requests`) nobody waits for any more: their jobs stop
        and their results are RequestAbandoned, while the others run on. `checked`: the caller
        has run `check` on every request already.
        """
        start = time.perf_counter()
        works: list[_Work | Exception] = []
        for req in requests:
            try:
                works.append(self._plan(req, checked))
            except Exception as exc:  # one bad request stays one bad request
                works.append(exc)
        planned = [w for w in works if isinstance(w, _Work)]
        jobs = [j for w in planned for j in w.jobs]
        readout_calls = self._read_out(planned)
        # white-box maps ran while planning and the readouts before the engine: their forwards count too
        spent = [w.plan.planning_cost for w in planned if w.plan]
        maps = EngineStats(
            sum(s.forward_passes for s in spent) + len(planned), sum(s.model_calls for s in spent) + readout_calls
        )

        def progress(engine: EngineStats) -> None:
            if on_progress:
                on_progress(
                    EngineStats(engine.forward_passes + maps.forward_passes, engine.model_calls + maps.model_calls)
                )
            for index in abandoned() if abandoned else ():
                work = works[index]
                for job in work.jobs if isinstance(work, _Work) else ():
                    cancel(job, RequestAbandoned(f"request {index} was abandoned"))

        watched = bool(on_progress or abandoned)
        if watched and maps.forward_passes:
            progress(EngineStats())  # report the maps (and check the deadline) before the engine starts
        stats = run_jobs(jobs, self._score, self.forward_batch_size, on_round=progress if watched else None)
        model_calls = stats.model_calls + maps.model_calls
        compute_ms = (time.perf_counter() - start) * 1000
        results: list[AuditResult | Exception] = []
        for work in works:
            if isinstance(work, Exception):
                results.append(work)
                continue
            try:
                results.append(self._finish(work, model_calls, compute_ms))
            except Exception as exc:
                results.append(exc)
        return results
