"""`mllm-audit calibrate`: fit a model's risk calibration on labelled claims; and how the service
finds and checks the calibration file it serves with.

    mllm-audit calibrate --labelled cases.jsonl --out risk_calibration.json [--model DIR] [--verify]

Every case of the labelled file (JSONL, docs/risk.md) is audited in this process on the
reliance path (with `--verify`, also one verification question per object claim),
the file's claims are matched to the computed ones by character overlap, and the cases are
split into a fit part and a held-out part. One logistic model is fitted per signal set:
confidence and entropy, with grounding where the model's family has an image-token grid, and
the same plus verification with `--verify` (a request without `verify` still has a model).
Label thresholds are set on the fit part's correct claims by the share they flag; the
held-out figures (AUROC, AUPRC, false flags at 90 % recall, precision and recall at each
label, with bootstrap 95 % intervals) are printed and kept in the file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mllm_audit.explainers.calibration import CALIBRATION_FILE, Calibration, RiskModel, load

BASE_SIGNALS = ("confidence", "entropy")
KIND_GROUPS: tuple[tuple[str, ...], ...] = ((), ("existence",), ("object", "count", "relation"))
MIN_PER_CLASS = 5  # hallucinated and correct claims a group of kinds needs for a model of its own
BOOTSTRAP = 1000
SPLIT_SEED = 0


# ------------------------------------------------------------------------------ the service's file


def computable_signals(family: str) -> set[str]:
    """The signals a service of this model family measures: grounding needs a known image-token grid."""
    from mllm_audit.models.families import FAMILIES

    signals = {"confidence", "entropy", "verification"}
    if family in {f.name for f in FAMILIES}:
        signals.add("grounding")
    return signals


def calibration_path(settings: Any) -> Path | None:
    """The file `risk_calibration` names; empty: the model directory's, if it has one; "none": none."""
    value = settings.risk_calibration.strip()
    if value.lower() == "none":
        return None
    if value:
        return Path(value).expanduser()
    from mllm_audit.models.loading import REFERENCE_MODEL_DIR

    model_dir = Path(settings.model).expanduser() if settings.model else REFERENCE_MODEL_DIR
    found = model_dir / CALIBRATION_FILE
    return found if found.is_file() else None


def service_calibration(settings: Any, model_id: str, family: str) -> Calibration | None:
    """The calibration to serve with, checked against the model; CalibrationError names the file."""
    path = calibration_path(settings)
    if path is None:
        return None
    return load(path, model_id=model_id, computable=computable_signals(family))


def risk_block(calibration: Calibration | None) -> dict[str, Any]:
    """/info's `risk`: which calibration is in use and each model's thresholds and held-out figures."""
    if calibration is None:
        return {"calibration": None, "calibrated": False, "models": []}
    return {
        "calibration": calibration.id,
        "calibrated": calibration.kind == "logistic",
        "models": [
            {
                "signals": list(m.signals),
                "kinds": list(m.kinds),
                "medium": m.medium,
                "high": m.high,
                "measured": m.measured,
            }
            for m in calibration.models
        ],
    }


# ------------------------------------------------------------------------------ the labelled file


@dataclass(frozen=True)
class LabelledClaim:
    start: int
    end: int
    hallucinated: bool


@dataclass
class Case:
    line: int
    id: str
    image: Path
    prompt: str
    answer: str
    claims: list[LabelledClaim] | None  # None: the case carries no labels


class BadCase(ValueError):
    pass


def parse_case(text: str, line: int, base: Path, need_labels: bool) -> Case:
    """One line of the labelled file; BadCase says what is wrong with it."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise BadCase(f"not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise BadCase("not a JSON object")
    for key in ("image", "prompt", "answer"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise BadCase(f'"{key}" must be a non-empty string')
    image = base / raw["image"]
    if not image.is_file():
        raise BadCase(f"image {raw['image']} not found (looked for {image})")
    answer: str = raw["answer"]
    claims = None
    if "claims" in raw or need_labels:
        if not isinstance(raw.get("claims"), list):
            raise BadCase('"claims" must be a list')
        claims = []
        position = 0
        for i, item in enumerate(raw["claims"]):
            where = f"claims[{i}]"
            if not isinstance(item, dict) or not isinstance(item.get("hallucinated"), bool):
                raise BadCase(f'{where} needs "hallucinated": true or false')
            if "start" in item or "end" in item:
                start, end = item.get("start"), item.get("end")
                if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(answer)):
                    raise BadCase(f"{where}: [start, end) must lie inside the answer (0..{len(answer)})")
            elif isinstance(item.get("text"), str) and item["text"]:
                start = answer.find(item["text"], position)
                if start < 0:
                    raise BadCase(f"{where}: text {item['text']!r} not in the answer after character {position}")
                end = start + len(item["text"])
            else:
                raise BadCase(f'{where} needs "start" and "end", or "text"')
            claims.append(LabelledClaim(start, end, item["hallucinated"]))
            position = end
    return Case(line, str(raw.get("id", f"line-{line}")), image, raw["prompt"], answer, claims)


def read_labelled(path: Path, need_labels: bool, report: Any) -> list[Case]:
    """The usable cases of the file; each unusable line is reported (naming it) and skipped."""
    cases = []
    with path.open(encoding="utf-8") as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                cases.append(parse_case(text, line, path.parent, need_labels))
            except BadCase as exc:
                report(f"{path} line {line}: {exc}; skipped")
    return cases


def overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def match_claims(labelled: list[LabelledClaim], computed: list[Any]) -> tuple[dict[int, bool], list[LabelledClaim]]:
    """Computed claim index -> hallucinated (any labelled claim on it is), and the labelled claims
    that overlap no computed claim."""
    labels: dict[int, bool] = {}
    unmatched = []
    for claim in labelled:
        best = max(computed, key=lambda c: overlap((claim.start, claim.end), (c.start, c.end)), default=None)
        if best is None or overlap((claim.start, claim.end), (best.start, best.end)) == 0:
            unmatched.append(claim)
            continue
        labels[best.index] = labels.get(best.index, False) or claim.hallucinated
    return labels, unmatched


def split_cases(n: int, holdout: float, seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    """(fit, held-out) case indices: a fixed random split of cases, never of one case's claims."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(n)
    n_held = int(round(n * holdout))
    if holdout > 0 and n >= 2:
        n_held = min(max(n_held, 1), n - 1)
    return sorted(int(i) for i in order[n_held:]), sorted(int(i) for i in order[:n_held])


# ------------------------------------------------------------------------------ measuring


@dataclass
class ClaimRow:
    case: int  # index into the cases
    kind: str  # the claim's kind
    signals: dict[str, float]
    label: int | None  # 1 hallucinated, 0 correct, None unlabelled


def _finite(value: float) -> float | None:
    return round(float(value), 4) if math.isfinite(value) else None


def _interval(metric: Any, scores: Any, labels: Any, n: int) -> dict[str, Any]:
    from mllm_audit.explainers.calibration import bootstrap

    value, lo, hi = bootstrap(metric, scores, labels, n=n)
    return {"value": _finite(value), "ci95": [_finite(lo), _finite(hi)]}


def held_out_figures(model: RiskModel, rows: list[ClaimRow], cases: int, n_bootstrap: int) -> dict[str, Any]:
    """Detection figures of `model` on held-out labelled claims, with bootstrap 95 % intervals."""
    import numpy as np
    from mllm_audit.explainers.calibration import auprc, auroc, false_flags_at_recall, operating_point

    scores = np.array([model.probability(r.signals) for r in rows], dtype=np.float64)
    labels = np.array([r.label for r in rows], dtype=np.float64)
    figures: dict[str, Any] = {
        "held_out_cases": cases,
        "held_out_claims": len(rows),
        "hallucinated": int(labels.sum()),
        "auroc": _interval(auroc, scores, labels, n_bootstrap),
        "auprc": _interval(auprc, scores, labels, n_bootstrap),
        "false_flags_at_90_recall": _interval(false_flags_at_recall, scores, labels, n_bootstrap),
    }
    for name, threshold in (("medium", model.medium), ("high", model.high)):
        figures[name] = {
            key: _interval(lambda s, y, t=threshold, k=key: operating_point(s, y, t)[k], scores, labels, n_bootstrap)
            for key in ("precision", "recall", "false_flag_rate")
        }
    return figures


def _shown(figure: dict[str, Any]) -> str:
    value, (lo, hi) = figure["value"], figure["ci95"]
    if value is None:
        return "n/a"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{value:.3f}"


def describe(model: RiskModel) -> str:
    m = model.measured
    kinds = f" ({', '.join(model.kinds)} claims)" if model.kinds else ""
    head = f"{'+'.join(model.signals)}{kinds}: thresholds medium {model.medium:.4f}, high {model.high:.4f}"
    if "auroc" not in m:
        return head + "\n  no held-out labelled claims: nothing measured"
    lines = [
        head,
        f"  held out: {m['held_out_cases']} cases, {m['held_out_claims']} claims, {m['hallucinated']} hallucinated",
        f"  AUROC {_shown(m['auroc'])}  AUPRC {_shown(m['auprc'])}",
        f"  false flags at 90 % recall {_shown(m['false_flags_at_90_recall'])}",
    ]
    for name in ("medium", "high"):
        point = m[name]
        lines.append(
            f"  {name + '+':7s} precision {_shown(point['precision'])}  recall {_shown(point['recall'])}  "
            f"false flags {_shown(point['false_flag_rate'])}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labelled", required=True, type=Path, help="labelled cases, JSONL (docs/risk.md)")
    parser.add_argument("--out", required=True, type=Path, help="the calibration file to write")
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also ask the verification question of each object claim, and fit a model with it",
    )
    parser.add_argument("--holdout", type=float, default=0.3, help="share of the cases held out for measuring")
    parser.add_argument(
        "--medium-rate", type=float, default=0.05, help="share of correct claims labelled medium or high"
    )
    parser.add_argument("--high-rate", type=float, default=0.01, help="share of correct claims labelled high")
    parser.add_argument(
        "--unlabelled",
        action="store_true",
        help="fit without labels: z-scores in each signal's known direction (a ranking, not a probability)",
    )
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP, help="resamples for the 95 %% intervals")


def _progress(done: int, total: int, started: float) -> None:
    rate = done / max(time.monotonic() - started, 1e-9)
    end = "\r" if sys.stderr.isatty() and done < total else "\n"
    print(f"calibrate: {done}/{total} cases, {rate:.1f} cases/s", end=end, file=sys.stderr, flush=True)


def audit_cases(auditor: Any, cases: list[Case], verify: bool, report: Any) -> list[tuple[Case, Any]]:
    """Each case's AuditResult (reliance path), in chunks, with a progress line; failures reported."""
    import numpy as np
    from mllm_audit.explainers.request import AuditRequest
    from PIL import Image

    chunk = max(16, auditor.forward_batch_size)
    done: list[tuple[Case, Any]] = []
    started = time.monotonic()
    for first in range(0, len(cases), chunk):
        part, requests = [], []
        for case in cases[first : first + chunk]:
            try:
                with Image.open(case.image) as img:
                    image = np.asarray(img.convert("RGB"))
            except Exception as exc:
                report(f"line {case.line}: image {case.image} unreadable ({exc}); skipped")
                continue
            part.append(case)
            requests.append(
                AuditRequest(image, case.prompt, case.answer, with_attributions=False, regions=2, verify=verify)
            )
        for case, result in zip(part, auditor.run(requests)):
            if isinstance(result, Exception):
                report(f"line {case.line}: cannot be audited ({result}); skipped")
            else:
                done.append((case, result))
        _progress(min(first + chunk, len(cases)), len(cases), started)
    return done


def calibrate(args: argparse.Namespace, settings: Any) -> int:
    """The `calibrate` command; 2 when nothing usable comes out."""
    from mllm_audit.explainers.audit import Auditor
    from mllm_audit.explainers.calibration import FORMAT, calibration_id, fit_model
    from mllm_audit.explainers.risk import DEFAULT_VERIFY_TEMPLATE
    from mllm_audit.models.backends import load_scorer

    def report(message: str) -> None:
        print(f"mllm-audit calibrate: {message}", file=sys.stderr, flush=True)

    if not 0 <= args.holdout < 1:
        raise ValueError(f"--holdout must be in [0, 1), got {args.holdout}")
    if not 0 < args.high_rate <= args.medium_rate < 1:
        raise ValueError("need 0 < --high-rate <= --medium-rate < 1")
    if not args.labelled.is_file():
        raise ValueError(f"labelled file {args.labelled} does not exist")
    cases = read_labelled(args.labelled, need_labels=not args.unlabelled, report=report)
    if not cases:
        report(f"{args.labelled}: no usable case")
        return 2

    scorer = load_scorer(
        settings.model or None,
        device=settings.device,
        dtype=settings.dtype,
        backend=settings.backend,
        trust_remote_code=settings.trust_remote_code,
        model_id=settings.model_id or None,
        onnx_cache=settings.onnx_cache,
    )
    loaded = scorer.loaded
    auditor = Auditor(
        scorer,
        forward_batch_size=settings.forward_batch_size,
        max_prompt_tokens=settings.max_prompt_tokens,
        max_answer_tokens=settings.max_answer_tokens,
    )
    audited = audit_cases(auditor, cases, args.verify, report)

    rows: list[ClaimRow] = []
    unmatched = 0
    for i, (case, result) in enumerate(audited):
        labels: dict[int, bool] = {}
        if case.claims is not None:
            labels, missed = match_claims(case.claims, result.claims)
            for claim in missed:
                unmatched += 1
                report(
                    f"line {case.line}: claim {case.answer[claim.start : claim.end]!r} "
                    f"[{claim.start}, {claim.end}) matches no claim of the answer; left out"
                )
        for claim in result.claims:
            label = labels.get(claim.index)
            if label is None and not args.unlabelled:
                continue  # a computed claim the file does not label
            rows.append(ClaimRow(i, claim.kind, dict(claim.signals), None if label is None else int(label)))
    labelled_rows = [r for r in rows if r.label is not None]
    if not rows or (not args.unlabelled and not labelled_rows):
        report("no claim to fit on (no case could be audited, or no labelled claim matched)")
        return 2

    fit_cases, held_cases = split_cases(len(audited), args.holdout)
    held = set(held_cases)
    computable = computable_signals(loaded.family.name)
    grounded = "grounding" in computable and any("grounding" in r.signals for r in rows)
    base = BASE_SIGNALS + (("grounding",) if grounded else ())
    signal_sets = [base] + ([(*base, "verification")] if args.verify else [])
    # the base signals alone too: a yes/no answer has no grounding
    without_grounding = [BASE_SIGNALS] + ([(*BASE_SIGNALS, "verification")] if args.verify else [])
    signal_sets += [s for s in without_grounding if s not in signal_sets]

    def fit(kinds: tuple[str, ...], signals: tuple[str, ...]) -> RiskModel | None:
        """A model of `signals` for claims of `kinds` (all: ()), or None when the data cannot fit one."""
        measured_all = [r for r in rows if set(signals) <= set(r.signals)]
        usable = [r for r in measured_all if not kinds or r.kind in kinds]
        if kinds and len(usable) == len(measured_all):
            return None  # the same claims as the model for every kind
        fit_rows = [r for r in usable if r.case not in held]
        labels = None
        if not args.unlabelled:
            fit_rows = [r for r in fit_rows if r.label is not None]
            hallucinated = sum(r.label == 1 for r in fit_rows)
            if min(hallucinated, len(fit_rows) - hallucinated) < (MIN_PER_CLASS if kinds else 1):
                return None
            labels = [int(r.label or 0) for r in fit_rows]
        elif kinds or not fit_rows:
            return None
        model = fit_model(signals, [r.signals for r in fit_rows], labels, args.medium_rate, args.high_rate, kinds)
        held_rows = [r for r in usable if r.case in held and r.label is not None]
        measured: dict[str, Any] = {
            "fit_cases": len({r.case for r in fit_rows}),
            "fit_claims": len(fit_rows),
            "medium_rate": args.medium_rate,
            "high_rate": args.high_rate,
        }
        if held_rows:
            measured.update(held_out_figures(model, held_rows, len({r.case for r in held_rows}), args.bootstrap))
        return replace(model, measured=measured)

    # a model per signal set for every kind (the fallback), then per group of kinds with enough
    # labelled claims of its own: a yes/no answer's signals mean other things than an object's
    models = [m for kinds in KIND_GROUPS for signals in signal_sets if (m := fit(kinds, signals)) is not None]
    if not any(not m.kinds and m.signals == BASE_SIGNALS for m in models):
        report(f"{'+'.join(BASE_SIGNALS)}: the fit cases need both hallucinated and correct claims")
        return 2

    calibration = Calibration(
        id=calibration_id(models, loaded.model_id),
        model_id=loaded.model_id,
        kind="zscore" if args.unlabelled else "logistic",
        models=tuple(models),
        verify_template=DEFAULT_VERIFY_TEMPLATE,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(calibration.to_json(), indent=2, allow_nan=False) + "\n")
    load(args.out, model_id=loaded.model_id, computable=computable)  # what the service will read back
    total = len(audited)
    print(
        f"{args.labelled}: {total} cases audited ({len(cases) - total} skipped), {len(labelled_rows)} labelled claims "
        f"({sum(r.label == 1 for r in labelled_rows)} hallucinated), {unmatched} labelled claims unmatched; "
        f"{len(fit_cases)} cases fit, {len(held_cases)} held out"
    )
    for model in models:
        print(describe(model))
    print(f"wrote {args.out} ({FORMAT}, id {calibration.id}, model {loaded.model_id})")
    return 0
