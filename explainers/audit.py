"""One entry point for the service: audit a batch of requests against one scorer.

Contract (the service depends on it):
    auditor = Auditor(scorer, forward_batch_size=32, risk_medium=0.35, risk_high=0.65)
    auditor.check(request)          # raises AuditInputError (-> HTTP 422) for bad input
    results = auditor.run(requests) # one dict or one Exception per request, same order

Each dict has the response fields of the API contract that do not depend on the service:
`tokens`, `summary`, `method` ({"name", "params"}), `attributions` (explain only) and
`stats` ({"forward_passes", "model_calls", "compute_ms"}).

The scorer is duck-typed (models.scorer.Scorer): `prepare(prompt, answer, image_size)`,
`log_probs(pairs)`, and for white-box methods `white_box(pairs)`,
`image_token_positions(audit)`, `image_grid(audit, image)`.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass, field

import numpy as np
from mllm_audit.explainers import eagle, reliance
from mllm_audit.explainers.engine import EngineStats, Job, run_jobs
from mllm_audit.explainers.masking import BASELINES
from mllm_audit.explainers.metrics import pixel_ranking_curves
from mllm_audit.explainers.regions import region_bbox, region_masks, rle_encode, superpixel_regions
from PIL import Image

METHODS = ("eagle", "eagle_greedy", "tam", "msea", "arc", "msea+arc")
WHITE_BOX = ("tam", "msea", "arc", "msea+arc")
CURVE_STEPS = 64  # equal-area steps of a heatmap's insertion / deletion curves
FAST_SEARCH = {"s": 6, "p": 4, "u": 15}


class AuditInputError(ValueError):
    """The request is well-formed JSON but cannot be audited (HTTP 422)."""


@dataclass(frozen=True)
class TokenSpan:
    """Answer tokens [start, end) as one target (indices as /v1/reliance returns them)."""

    start: int
    end: int


@dataclass
class AuditRequest:
    image: np.ndarray  # H x W x 3 uint8
    prompt: str
    answer: str
    method: str = "eagle"
    # "answer", "tokens", or a list of targets: (start, end) character spans or TokenSpans
    targets: str | list[tuple[int, int] | TokenSpan] = "answer"
    regions: int = 64
    max_forward_passes: int | None = None
    heatmap_encoding: str = "array"  # "png", "array" or "none"
    heatmap_size: tuple[int, int] | None = None  # (width, height); default the image size
    with_attributions: bool = True  # False: the cheap reliance path (/v1/reliance)
    baseline: str = "black"  # EAGLE: what removed regions become (black, blur or mean colour)
    lambda1: float = 1.0  # EAGLE: weight of insight, p_t(keep S)
    lambda2: float = 1.0  # EAGLE: weight of necessity, 1 - p_t(remove S)


@dataclass
class _Target:
    start: int
    end: int
    text: str
    token_indices: list[int]


@dataclass
class _Work:
    """A request on its way through the engine."""

    request: AuditRequest
    audit: object
    image: np.ndarray  # the working image (downscaled when large)
    targets: list[_Target]
    jobs: list[Job] = field(default_factory=list)  # every job of the request, `contrast` included
    contrast: Job | None = None  # p_full and p_blank (black), when no explainer job yields them
    labels: np.ndarray | None = None  # superpixel label map of the working image
    maps: list[dict] | None = None  # white-box heatmaps per target


def working_image(image: np.ndarray, max_side: int) -> np.ndarray:
    """Masked images are built at this size; results are mapped back to client pixels."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def encode_heatmap(heat: np.ndarray, encoding: str, size: tuple[int, int]) -> dict | None:
    if encoding == "none":
        return None
    width, height = size
    img = Image.fromarray(np.asarray(heat, dtype=np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    data = np.clip(np.asarray(img), 0.0, 1.0)
    if encoding == "array":
        return {"width": width, "height": height, "encoding": "array", "data": np.round(data, 4).tolist()}
    buf = io.BytesIO()
    Image.fromarray(np.round(data * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return {"width": width, "height": height, "encoding": "png", "data": base64.b64encode(buf.getvalue()).decode()}


class Auditor:
    def __init__(
        self,
        scorer,
        forward_batch_size: int = 32,
        risk_medium: float = 0.35,
        risk_high: float = 0.65,
        max_prompt_tokens: int = 512,
        max_answer_tokens: int = 256,
        max_regions: int = 256,
        work_side: int = 336,
    ):
        self.scorer = scorer
        self.forward_batch_size = forward_batch_size
        self.risk = {"risk_medium": risk_medium, "risk_high": risk_high}
        self.max_prompt_tokens = max_prompt_tokens
        self.max_answer_tokens = max_answer_tokens
        self.max_regions = max_regions
        self.work_side = work_side

    # ------------------------------------------------------------------ input checks
    def check(self, req: AuditRequest) -> None:
        """Raise AuditInputError for a request that cannot be audited; cheap, no model call."""
        if req.method not in METHODS:
            raise AuditInputError(f"unknown method {req.method!r}; use one of {', '.join(METHODS)}")
        if not req.answer.strip():
            raise AuditInputError("answer is empty: there is nothing to audit")
        if not req.prompt.strip():
            raise AuditInputError("prompt is empty")
        if req.image.ndim != 3 or req.image.shape[2] != 3 or min(req.image.shape[:2]) < 8:
            raise AuditInputError(f"image must be RGB and at least 8x8 pixels, got shape {list(req.image.shape)}")
        if not 2 <= req.regions <= self.max_regions:
            raise AuditInputError(f"regions must be between 2 and {self.max_regions}, got {req.regions}")
        if req.max_forward_passes is not None and req.max_forward_passes < 2:
            raise AuditInputError("max_forward_passes must be at least 2 (the full and the blank image)")
        if req.heatmap_encoding not in ("png", "array", "none"):
            raise AuditInputError(f"unknown heatmap encoding {req.heatmap_encoding!r}")
        if req.baseline not in BASELINES:
            raise AuditInputError(f"unknown baseline {req.baseline!r}; use one of {', '.join(BASELINES)}")
        if min(req.lambda1, req.lambda2) < 0 or req.lambda1 + req.lambda2 <= 0:
            raise AuditInputError("lambda1 and lambda2 must be non-negative and not both 0")
        tokenizer = self.scorer.processor.tokenizer
        n_prompt = len(tokenizer(req.prompt, add_special_tokens=False)["input_ids"])
        if n_prompt > self.max_prompt_tokens:
            raise AuditInputError(f"prompt has {n_prompt} tokens; the limit is {self.max_prompt_tokens}")
        n_answer = len(tokenizer(req.answer, add_special_tokens=False)["input_ids"])
        if n_answer > self.max_answer_tokens:
            raise AuditInputError(f"answer has {n_answer} tokens; the limit is {self.max_answer_tokens}")
        if isinstance(req.targets, str) and req.targets not in ("answer", "tokens"):
            raise AuditInputError(f"targets must be 'answer', 'tokens' or a list of spans, got {req.targets!r}")
        if not isinstance(req.targets, str):
            for target in req.targets:
                if isinstance(target, TokenSpan):
                    if not 0 <= target.start < target.end:
                        raise AuditInputError(f"token span [{target.start}, {target.end}) is empty or negative")
                    continue  # its upper end is checked against the answer's tokens in _targets
                start, end = target
                if not 0 <= start < end <= len(req.answer):
                    raise AuditInputError(f"target span [{start}, {end}) is outside the answer (0..{len(req.answer)})")

    def _targets(self, req: AuditRequest, audit) -> list[_Target]:
        tokens = audit.tokens
        every = list(range(len(tokens.ids)))
        if req.targets == "answer":
            return [_Target(0, len(req.answer), req.answer, every)]
        if req.targets == "tokens":
            return [_Target(s, e, t, [i]) for i, ((s, e), t) in enumerate(zip(tokens.spans, tokens.texts))]
        out = []
        for target in req.targets:
            if isinstance(target, TokenSpan):
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
            out.append(_Target(start, end, req.answer[start:end], idx))
        return out

    # ------------------------------------------------------------------ jobs per request
    def _plan(self, req: AuditRequest) -> _Work:
        self.check(req)
        image = working_image(req.image, self.work_side)
        audit = self.scorer.prepare(req.prompt, req.answer, (image.shape[1], image.shape[0]))
        work = _Work(req, audit, image, self._targets(req, audit))
        if not req.with_attributions or req.method in WHITE_BOX or req.baseline != "black":
            # p_full and p_blank (black) for reliance; EAGLE's own first yield has them when its baseline is black
            work.contrast = Job(audit, reliance.blank_contrast(image))
            work.jobs.append(work.contrast)
        if not req.with_attributions:
            return work
        n_targets = len(work.targets)
        if req.method in WHITE_BOX:
            from mllm_audit.explainers.msea import make_views
            from mllm_audit.explainers.token_maps import target_heatmaps

            # the budget covers everything: contrast (2), the views, each target's pixel-ranking curves
            views = len(make_views(image)) if req.method.startswith("msea") else 1
            cost = 2 + views + n_targets * 2 * CURVE_STEPS
            if req.max_forward_passes is not None and cost > req.max_forward_passes:
                raise AuditInputError(
                    f"{req.method} with {n_targets} targets needs {cost} forward passes "
                    f"(maps and insertion/deletion curves); max_forward_passes is "
                    f"{req.max_forward_passes}: ask for fewer targets or a larger budget"
                )
            work.maps = target_heatmaps(self.scorer, audit, image, req.method, [t.token_indices for t in work.targets])
            for target, m in zip(work.targets, work.maps):
                work.jobs.append(
                    Job(
                        audit,
                        pixel_ranking_curves(
                            image, m["heatmap"], target.token_indices, baseline=req.baseline, steps=CURVE_STEPS
                        ),
                    )
                )
            return work
        work.labels = superpixel_regions(image, req.regions)
        masks = region_masks(work.labels)
        budget = None if req.max_forward_passes is None else req.max_forward_passes // n_targets
        if budget is not None and budget < 2:  # each target's search scores at least the full and blank images
            raise AuditInputError(
                f"max_forward_passes {req.max_forward_passes} is too small for {n_targets} "
                f"targets: each needs at least 2"
            )
        options = {"baseline": req.baseline, "lam1": req.lambda1, "lam2": req.lambda2, "max_forward_passes": budget}
        for target in work.targets:
            if req.method == "eagle_greedy":
                search = eagle.greedy_search(image, masks, target.token_indices, **options)
            else:
                search = eagle.fast_search(image, masks, target.token_indices, **options, **FAST_SEARCH)
            work.jobs.append(Job(audit, search))
        return work

    # ------------------------------------------------------------------ results
    def _eagle_attribution(self, work: _Work, target: _Target, result: eagle.EagleResult) -> dict:
        req = work.request
        h, w = req.image.shape[:2]
        size = req.heatmap_size or (w, h)
        labels = np.asarray(Image.fromarray(work.labels.astype(np.int32)).resize((w, h), Image.Resampling.NEAREST))
        regions = []
        for rank, region in enumerate(result.ranking, start=1):
            mask = labels == region
            if not mask.any():  # a sliver lost when mapping back to client pixels
                continue
            regions.append(
                {
                    "rank": rank,
                    "region_id": int(region),
                    "score": round(float(result.region_scores[region]), 6),
                    "bbox": region_bbox(mask),
                    "mask": rle_encode(mask),
                }
            )
        heat = eagle.heatmap_from_regions(work.labels, result.region_scores, size)  # flat regions at any size
        return {
            "target": {
                "start": target.start,
                "end": target.end,
                "text": target.text,
                "token_indices": target.token_indices,
            },
            "regions": regions,
            "heatmap": encode_heatmap(heat, req.heatmap_encoding, size),
            "insertion_auc": result.insertion_auc(),
            "deletion_auc": result.deletion_auc(),
            "insertion_curve": _curve(result.areas, result.insertion, target.token_indices),
            "deletion_curve": _curve(result.areas, result.deletion, target.token_indices),
            "forward_passes": result.forward_passes,
            "search_complete": result.search_complete,
        }

    def _white_box_attribution(self, work: _Work, target: _Target, maps: dict, job: Job) -> dict:
        req = work.request
        h, w = req.image.shape[:2]
        ins_auc, del_auc, curves = job.result
        out = {
            "target": {
                "start": target.start,
                "end": target.end,
                "text": target.text,
                "token_indices": target.token_indices,
            },
            "regions": [],
            "heatmap": encode_heatmap(maps["heatmap"], req.heatmap_encoding, req.heatmap_size or (w, h)),
            "insertion_auc": ins_auc,
            "deletion_auc": del_auc,
            "insertion_curve": _curve(curves.areas, curves.insertion, target.token_indices),
            "deletion_curve": _curve(curves.areas, curves.deletion, target.token_indices),
            "forward_passes": job.forward_passes + maps.get("forward_passes", 0),
            "search_complete": True,
        }
        if maps.get("context") is not None:
            out["context"] = maps["context"]
        return out

    def _finish(self, work: _Work, model_calls: int, compute_ms: float) -> dict:
        req = work.request
        failed = [j.error for j in work.jobs if j.error is not None]
        if failed:
            raise failed[0]
        tokens = work.audit.tokens
        claims = reliance.visual_claims(req.answer, tokens.spans)
        explainer_jobs = [j for j in work.jobs if j is not work.contrast]
        attributions = []
        if req.with_attributions and req.method not in WHITE_BOX:
            results = [j.result for j in explainer_jobs]
            first = results[0]
            p_full, p_blank = work.contrast.result if work.contrast else (first.p_full, first.p_blank)
            # each token's insertion curve comes from the ranking of the first target that holds it
            owner = {t: r for target, r in reversed(list(zip(work.targets, results))) for t in target.token_indices}
            assessed = []
            for t in range(len(tokens.ids)):
                curve = owner.get(t, first)
                assessed += reliance.assess_tokens(
                    [tokens.texts[t]],
                    p_full[[t]],
                    p_blank[[t]],
                    curve.areas,
                    curve.insertion[:, [t]],
                    visual=[claims[t]],
                    **self.risk,
                )
            attributions = [self._eagle_attribution(work, tg, r) for tg, r in zip(work.targets, results)]
        else:
            p_full, p_blank = work.contrast.result
            assessed = reliance.assess_tokens(tokens.texts, p_full, p_blank, visual=claims, **self.risk)
            if req.with_attributions:
                attributions = [
                    self._white_box_attribution(work, target, maps, job)
                    for target, maps, job in zip(work.targets, work.maps, explainer_jobs)
                ]
        token_context = {t: c for maps in work.maps or [] for t, c in maps["token_context"].items()}
        token_rows = []
        for t, a in enumerate(assessed):
            row = a.as_dict()
            row["index"] = t
            row["start"], row["end"] = tokens.spans[t]
            if t in token_context:
                row["context"] = token_context[t]
            token_rows.append(row)
        out = {
            "method": {"name": req.method if req.with_attributions else "reliance", "params": self._params(req)},
            "tokens": token_rows,
            "summary": reliance.summarize(assessed),
            "stats": {
                "forward_passes": sum(j.forward_passes for j in work.jobs) + _map_stats(work).forward_passes,
                "model_calls": model_calls,
                "compute_ms": round(compute_ms, 2),
            },
        }
        if req.with_attributions:
            out["attributions"] = attributions
        return out

    def _params(self, req: AuditRequest) -> dict:
        # the cheap path's only masked image is the black one (p_blank)
        params: dict = {"baseline": req.baseline if req.with_attributions else "black"}
        if not req.with_attributions:
            return params
        if req.method.startswith("eagle"):
            params.update(
                {
                    "regions": req.regions,
                    "lambda1": req.lambda1,
                    "lambda2": req.lambda2,
                    "max_forward_passes": req.max_forward_passes,
                }
            )
            if req.method == "eagle":
                params.update(FAST_SEARCH)
        elif req.method in WHITE_BOX:
            from mllm_audit.explainers.token_maps import method_params

            params.update(method_params(req.method))
        return params

    def run(self, requests: list[AuditRequest], on_progress=None) -> list[dict | Exception]:
        """Audit every request; their masked images share forward batches."""
        start = time.perf_counter()
        works: list[_Work | Exception] = []
        for req in requests:
            try:
                works.append(self._plan(req))
            except Exception as exc:
                works.append(exc)
        planned = [w for w in works if isinstance(w, _Work)]
        jobs = [j for w in planned for j in w.jobs]
        # white-box maps ran while planning, outside the engine: their forwards count too
        maps = EngineStats(
            sum(_map_stats(w).forward_passes for w in planned), sum(_map_stats(w).model_calls for w in planned)
        )

        def progress(engine: EngineStats) -> None:
            on_progress(EngineStats(engine.forward_passes + maps.forward_passes, engine.model_calls + maps.model_calls))

        if on_progress and maps.forward_passes:
            progress(EngineStats())  # report the maps (and check the deadline) before the engine starts
        stats = run_jobs(
            jobs, self.scorer.log_probs, self.forward_batch_size, on_round=progress if on_progress else None
        )
        model_calls = stats.model_calls + maps.model_calls
        compute_ms = (time.perf_counter() - start) * 1000
        results: list[dict | Exception] = []
        for work in works:
            if isinstance(work, Exception):
                results.append(work)
                continue
            try:
                results.append(self._finish(work, model_calls, compute_ms))
            except Exception as exc:
                results.append(exc)
        return results


def _map_stats(work: _Work) -> EngineStats:
    """White-box forwards of a request: shared by all its targets, counted once."""
    if not work.maps:
        return EngineStats()
    return EngineStats(work.maps[0]["forward_passes"], work.maps[0]["model_calls"])


def _curve(areas: np.ndarray, probs: np.ndarray, token_indices: list[int]) -> list[list[float]]:
    """[[area, mean target probability], ...] for plotting."""
    ys = probs[:, token_indices].mean(axis=1)
    return [[round(float(a), 5), round(float(y), 6)] for a, y in zip(areas, ys)]
