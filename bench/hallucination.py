"""Does the calibrated claim risk find the reference model's real hallucinations?

    python -m bench.hallucination --n-captions 1000 --n-existence 300 [--n-count 300]
        [--model DIR] [--calibration FILE] [--labelled FILE] [--json OUT]

Answers (greedy decoding, held-out scenes, truth labels, never the biased training labels):
- captions ("Describe the image.") of `--n-captions` scenes; every object claim ("red
  circle") is checked against the scene. A hallucinated one is a *co-occurrence* error when
  it is the usual partner (world.CO_OCCURRENCE) of a trigger object in the scene, else a
  *binding* error when its colour and its shape are both in the scene but not on one object,
  else *other*;
- POPE-style existence questions ("Is there a blue square?", arXiv 2305.10355): `--n-existence`
  positives and as many negatives of each kind: *random* (any absent object that is not a
  co-occurrence partner, as world.make_sample draws them), *popular* (the most frequent
  object of the bench's scene pool that is absent and not a partner of a present trigger) and
  *adversarial* (the absent usual partner of a present trigger). A "yes" to a negative is an
  existence hallucination; only "yes" answers are audited;
- counts ("How many objects are there?"), `--n-count` of them; a wrong number is a hallucination.

Every claim's signals are measured once, on the reliance path with `verify=True` (the
readout, the black-image contrast and one verification question per object or count
claim). Each setting then scores the same claims with the calibration model it would get:

- `all + verification`: confidence, entropy, grounding, verification;
- `no verification`: confidence, entropy, grounding, the /v1/reliance default (2 passes);
- `black-box + verification` and `black-box`: without grounding (the logit-lens readout of
  the image tokens, which only white-box families give), with and without verification.

Each claim gets the model for its kind (object, existence, count) and for the signals it has
(an existence "yes" is never verified), as in the service. Reported per answer kind and
hallucination type: AUROC, AUPRC, the share of correct claims flagged at 90 % recall, and
recall and false-flag rate at the calibration's medium and high thresholds, with bootstrap
95 % intervals over claims. A few answers are also audited with `verify=False` and with
`method="tam"` (/v1/explain's white-box path) to check that their claim signals and risks
equal the reliance path's.

Calibration: the model directory's `risk_calibration.json` (`mllm-audit calibrate`), or
`--calibration FILE`. A setting the file has no model for (a file with white-box models only)
gets one fitted here with `calibration.fit_model`, as `mllm-audit calibrate` fits its pooled
models: on the fit part (70 %) of the calibration's labelled cases (`--labelled FILE`, else
drawn afresh with `mllm_audit.models.reference.labelled` at its default seed), thresholds at
5 % and 1 % of correct claims; the report names such models. Without any calibration the
bench reports the uncalibrated risk.

Seeds: the bench's scenes come from the streams seeded 30_003 (counts), 30_004 (the existence
pool) and 30_005 (captions), i.e. 30_000 + the kind's index in `world.QUESTION_KINDS` as
`evaluate.held_out_samples(kind, n, 30_000)` draws them. The calibration's labelled claims
(`mllm_audit.models.reference.labelled`) come from 40_000-40_006, evaluate.py from
10_000-10_005, `bench.samples` from 20_000 up, training from seeds 0-2 and the tests from
50_000 and 80_000 up: the bench never sees a scene the calibration was fitted on.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mllm_audit.explainers import calibration as cal
from mllm_audit.explainers.audit import Auditor
from mllm_audit.explainers.request import AuditRequest
from mllm_audit.explainers.results import AuditResult, ClaimResult
from mllm_audit.explainers.signals import SIGNALS, VERIFIED_KINDS
from mllm_audit.models.loading import load_model
from mllm_audit.models.reference import world
from mllm_audit.models.reference.evaluate import generate_answers, held_out_samples
from mllm_audit.models.scorer import Scorer

BENCH_SEED = 30_000
EXISTENCE_SEED = BENCH_SEED + world.QUESTION_KINDS.index("existence")
CALIBRATION_FILE = "risk_calibration.json"  # next to the weights

WHITE_BOX = frozenset({"confidence", "entropy", "grounding"})
BLACK_BOX = frozenset({"confidence", "entropy"})
# name -> (signals its calibration model may use, whether it needs the verification passes)
SETTINGS: dict[str, tuple[frozenset[str], bool]] = {
    "all + verification": (WHITE_BOX | {"verification"}, True),
    "no verification": (WHITE_BOX, False),
    "black-box + verification": (BLACK_BOX | {"verification"}, True),
    "black-box": (BLACK_BOX, False),
}
UNCALIBRATED = "uncalibrated"  # no calibration file: 1 - the claim's geometric-mean token probability
HALLUCINATION_TYPES = ("binding", "co-occurrence", "other")
NEGATIVE_KINDS = ("random", "popular", "adversarial")


@dataclass
class ClaimRow:
    """One audited claim with its truth: answer is caption, existence or count."""

    answer: str
    type: str  # correct / binding / co-occurrence / other; positive / random / popular / adversarial
    hallucinated: int
    signals: dict[str, float]
    service_risk: float  # what the auditor itself reported (its calibration, every signal measured)
    claim_kind: str = "object"  # the service's kind of the claim: object, existence or count


@dataclass
class Slice:
    name: str
    rows: list[ClaimRow]
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------- questions


def caption_type(claim: str, scene: world.Scene) -> str | None:
    """correct / co-occurrence / binding / other for a caption claim "<colour> <shape>"; None: not one."""
    words = claim.lower().split()
    if len(words) != 2 or words[0] not in world.COLOURS or words[1] not in world.SHAPES:
        return None
    colour, shape = words
    if scene.has(colour, shape):
        return "correct"
    if any(scene.has(*trigger) and partner == (colour, shape) for trigger, partner in world.CO_OCCURRENCE.items()):
        return "co-occurrence"
    if scene.find(colour=colour) is not None and scene.find(shape=shape) is not None:
        return "binding"
    return "other"


def existence_questions(n: int, seed: int = EXISTENCE_SEED) -> tuple[list[world.Sample], list[str]]:
    """n positives and n negatives of each kind, POPE-style; also the world's objects by frequency."""
    np_rng, rng = np.random.default_rng(seed), random.Random(seed)
    pool: list[world.Scene] = []
    while len(pool) < n or sum(bool(world.absent_partners(s)) for s in pool) < n:
        pool.append(world.render_scene(np_rng))
    frequency = Counter(o.name for s in pool for o in s.objects)
    popular = sorted(frequency, key=lambda name: (-frequency[name], name))
    questions: list[world.Sample] = []
    adversarial = 0

    def ask(scene: world.Scene, colour: str, shape: str, kind: str) -> None:
        truth = "yes" if kind == "positive" else "no"
        sample = world.Sample("existence", f"Is there a {colour} {shape}?", truth, truth, scene)
        sample.negative = None if kind == "positive" else kind
        questions.append(sample)

    for i, scene in enumerate(pool):
        partners = world.absent_partners(scene)
        if partners and adversarial < n:
            ask(scene, *rng.choice(partners), "adversarial")
            adversarial += 1
        if i >= n:
            continue
        obj = rng.choice(scene.objects)
        ask(scene, obj.colour, obj.shape, "positive")
        while True:  # as world.make_sample's random negatives
            colour, shape = rng.choice(list(world.COLOURS)), rng.choice(world.SHAPES)
            if not scene.has(colour, shape) and (colour, shape) not in partners:
                break
        ask(scene, colour, shape, "random")
        colour, shape = next(
            (c, s) for c, s in (name.split() for name in popular) if not scene.has(c, s) and (c, s) not in partners
        )
        ask(scene, colour, shape, "popular")
    return questions, popular


def kind_of(sample: world.Sample) -> str:
    return sample.negative or "positive"


def said_yes(answer: str) -> bool:
    words = answer.lower().replace(",", " ").replace(".", " ").split()
    return bool(words) and words[0] == "yes"


# ------------------------------------------------------------------------------- scoring


def claim_scores(
    rows: Sequence[ClaimRow], setting: str, calibration: cal.Calibration | None, thresholds: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Risk, medium-or-high flag and high flag of each claim under `setting`; the models used."""
    risks, medium, high, used = [], [], [], []
    for row in rows:
        if calibration is None:
            risk = 1.0 - float(np.exp(row.signals["confidence"]))
            lo, hi = thresholds
            risks.append(risk)
            medium.append(risk >= lo)
            high.append(risk >= hi)
            used.append(UNCALIBRATED)
            continue
        allowed, _ = SETTINGS[setting]
        model = calibration.model_for(set(row.signals) & allowed, row.claim_kind)
        if model is None:
            raise SystemExit(f"the calibration has no model for {sorted(set(row.signals) & allowed)} ({setting})")
        p = model.probability(row.signals)
        label = model.label(p)
        risks.append(p)
        medium.append(label in ("medium", "high"))
        high.append(label == "high")
        used.append("+".join(model.signals))
    return np.array(risks), np.array(medium, dtype=float), np.array(high, dtype=float), sorted(set(used))


def _recall(scores: np.ndarray, labels: np.ndarray) -> float:
    return cal.operating_point(scores, labels, 1.0)["recall"]


def _false_flags(scores: np.ndarray, labels: np.ndarray) -> float:
    return cal.operating_point(scores, labels, 1.0)["false_flag_rate"]


def measure(
    rows: Sequence[ClaimRow],
    setting: str,
    calibration: cal.Calibration | None,
    thresholds: tuple[float, float],
    n_boot: int,
) -> dict[str, Any]:
    labels = np.array([r.hallucinated for r in rows], dtype=float)
    risks, medium, high, used = claim_scores(rows, setting, calibration, thresholds)
    metrics: dict[str, tuple[Callable[..., float], np.ndarray]] = {
        "auroc": (cal.auroc, risks),
        "auprc": (cal.auprc, risks),
        "false_flags_at_90_recall": (cal.false_flags_at_recall, risks),
        "medium_recall": (_recall, medium),
        "medium_false_flags": (_false_flags, medium),
        "high_recall": (_recall, high),
        "high_false_flags": (_false_flags, high),
    }
    out: dict[str, Any] = {
        "hallucinated": int(labels.sum()),
        "claims": len(rows),
        "base_rate": float(labels.mean()) if len(rows) else float("nan"),
        "models": used,
    }
    for name, (metric, scores) in metrics.items():
        if not len(rows) or labels.min() == labels.max():
            out[name] = [float(metric(scores, labels)) if len(rows) else float("nan")] + [float("nan")] * 2
            continue
        out[name] = list(cal.bootstrap(metric, scores, labels, n=n_boot))
    return out


# ------------------------------------------------------------------------------- auditing


def audit_claims(auditor: Auditor, requests: list[AuditRequest]) -> list[AuditResult | None]:
    """The auditor's results, None for a request it refused (e.g. an empty generated answer)."""
    results = auditor.run(requests)
    return [None if isinstance(r, Exception) else r for r in results]


def agreement(auditor: Auditor, requests: list[AuditRequest], reference: list[AuditResult | None]) -> dict[str, Any]:
    """Claim signals and risks of the same answers with verify=False and with method="tam" vs `reference`."""
    cheap = audit_claims(auditor, [_replace(r, verify=False) for r in requests])
    tam = audit_claims(auditor, [_replace(r, with_attributions=True, method="tam", verify=True) for r in requests])
    signal_gap = risk_gap = tam_gap = 0.0
    passes_cheap, passes_tam, claims = [], [], 0
    for ref, c, t in zip(reference, cheap, tam):
        if ref is None or c is None or t is None:
            continue
        passes_cheap.append(c.stats.forward_passes)
        passes_tam.append(t.stats.forward_passes)
        for a, b, x in zip(ref.claims, c.claims, t.claims):
            claims += 1
            shared = set(b.signals) & set(a.signals)
            signal_gap = max([signal_gap] + [abs(a.signals[s] - b.signals[s]) for s in shared])
            tam_gap = max([tam_gap] + [abs(a.signals[s] - x.signals[s]) for s in a.signals])
            risk_gap = max(risk_gap, abs(a.risk_score - x.risk_score))
    return {
        "requests": len(requests),
        "claims": claims,
        "max_signal_gap_verify_false": signal_gap,
        "max_signal_gap_tam": tam_gap,
        "max_risk_gap_tam": risk_gap,
        "forward_passes_verify_false": float(np.mean(passes_cheap)) if passes_cheap else float("nan"),
        "forward_passes_tam": float(np.mean(passes_tam)) if passes_tam else float("nan"),
    }


def _replace(req: AuditRequest, **changes: Any) -> AuditRequest:
    fields = dict(req.__dict__)
    fields.update(changes)
    return AuditRequest(**fields)


def _row(answer: str, kind: str, claim: ClaimResult) -> ClaimRow:
    hallucinated = int(kind not in ("correct", "positive"))
    return ClaimRow(answer, kind, hallucinated, dict(claim.signals), claim.risk_score, claim.kind)


# ------------------------------------------------------------------------------- report


def fmt(value: Sequence[float], digits: int = 3) -> str:
    est, lo, hi = value
    if not np.isfinite(est):
        return "n/a"
    if not np.isfinite(lo):
        return f"{est:.{digits}f}"
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def tables(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        f"model `{report['model']}`, calibration `{report['calibration']}`"
        + (f" (fitted by the bench: {', '.join(report['fitted_by_bench'])})" if report["fitted_by_bench"] else ""),
        "",
        "| answers | setting (model's signals) | hallucinated / claims | AUROC | AUPRC (base rate) "
        "| false flags at 90 % recall |",
        "|---|---|---|---|---|---|",
    ]
    for name, by_setting in report["slices"].items():
        for setting in settings:
            m = by_setting[setting]
            lines.append(
                f"| {name} | {setting} ({', '.join(m['models'])}) | {m['hallucinated']} / {m['claims']} "
                f"| {fmt(m['auroc'])} | {fmt(m['auprc'])} ({m['base_rate']:.3f}) "
                f"| {fmt(m['false_flags_at_90_recall'])} |"
            )
    lines += [
        "",
        "| answers | setting | medium: caught | medium: correct flagged | high: caught | high: correct flagged |",
        "|---|---|---|---|---|---|",
    ]
    for name, by_setting in report["slices"].items():
        for setting in settings:
            m = by_setting[setting]
            lines.append(
                f"| {name} | {setting} | {fmt(m['medium_recall'], 2)} | {fmt(m['medium_false_flags'], 2)} "
                f"| {fmt(m['high_recall'], 2)} | {fmt(m['high_false_flags'], 2)} |"
            )
    per_request = report["forward_passes"]
    lines += ["", "| setting | forward passes per request: captions | existence | counts |", "|---|---|---|---|"]
    for setting in settings:
        verify = SETTINGS[setting][1] if setting in SETTINGS else False
        row = [f"{per_request[a]['verify' if verify else 'plain']:.2f}" for a in ("caption", "existence", "count")]
        lines.append(f"| {setting} | {' | '.join(row)} |")
    check = report["agreement"]
    lines += [
        "",
        f"Same {check['claims']} claims ({check['requests']} captions) audited again: verify=False changes no other "
        f"signal (max gap {check['max_signal_gap_verify_false']:.1e}, {check['forward_passes_verify_false']:.2f} "
        f'passes); method="tam" gives the same signals and risks (max gaps {check["max_signal_gap_tam"]:.1e} and '
        f"{check['max_risk_gap_tam']:.1e}) in {check['forward_passes_tam']:.1f} passes. The bench's risks with every "
        f"signal equal the auditor's own within {report['service_risk_gap']:.1e} (results round signals to 6 places).",
    ]
    if report.get("targets"):
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        for target in report["targets"]:
            lines.append(f"| {target['target']} | {target['measured']} | {'yes' if target['met'] else 'no'} |")
    counts = report["counts"]
    lines += [
        "",
        f"{counts['captions']} captions, {counts['caption_claims']} object claims ({counts['caption_types']}), "
        f"{counts['unparsed_caption_claims']} unparsed; existence 'yes' rates {counts['existence_yes_rate']}; "
        f"count accuracy {counts['count_accuracy']:.3f}; popular objects {', '.join(counts['popular'])}; "
        f"{report['seconds']:.0f} s in all.",
    ]
    return "\n".join(lines)


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The brief's targets, where the settings needed were measured."""
    slices, out = report["slices"], []

    def add(text: str, value: float, ok: bool, shown: str | None = None) -> None:
        out.append({"target": text, "measured": shown or f"{value:.3f}", "met": bool(ok)})

    caption = slices.get("caption objects", {})
    if "no verification" in caption:
        m = caption["no verification"]
        add("caption objects AUROC >= 0.95, no verification", m["auroc"][0], m["auroc"][0] >= 0.95)
        flagged, caught = m["medium_false_flags"][0], m["medium_recall"][0]
        add(
            "caption objects at medium, no verification: <= 5 % of correct flagged, >= 85 % caught",
            flagged,
            flagged <= 0.05 and caught >= 0.85,
            f"{flagged:.3f} flagged, {caught:.3f} caught",
        )
    if "black-box" in caption:
        value = caption["black-box"]["auroc"][0]
        add("caption objects AUROC >= 0.90, white-box signals off", value, value >= 0.90)
    adversarial = slices.get('existence "yes": adversarial', {})
    if "no verification" in adversarial:
        value = adversarial["no verification"]["auroc"][0]
        add('adversarial existence "yes" AUROC >= 0.90', value, value >= 0.90)
    return out


# ------------------------------------------------------------------------------- main


def load_calibration(path: str | None, model_dir: Path) -> cal.Calibration | None:
    if path:
        return cal.load(path)
    default = model_dir / CALIBRATION_FILE
    return cal.load(default) if default.is_file() else None


def complete(
    calibration: cal.Calibration,
    auditor: Auditor,
    model_dir: Path,
    labelled: str | None,
    log: Callable[[str], None],
) -> tuple[cal.Calibration, list[str]]:
    """The calibration plus a model for every setting it has none for, fitted on its labelled cases."""
    from mllm_audit.service import calibrate as cli

    kinds = ("object", "existence", "count")
    missing = [
        allowed
        for allowed, _ in SETTINGS.values()
        if any(calibration.model_for(set(allowed), kind) is None for kind in kinds)
    ]
    if not missing:
        return calibration, []
    if labelled is None:
        import tempfile

        from mllm_audit.models.reference.labelled import FILE_NAME, write_labelled

        where = Path(tempfile.mkdtemp(prefix="bench-labelled-"))
        log(f"no model for {[sorted(m) for m in missing]}: drawing the calibration's labelled cases into {where}")
        write_labelled(where, captions=1000, existence=600, model=str(model_dir))
        labelled = str(where / FILE_NAME)
    cases = cli.read_labelled(Path(labelled), need_labels=True, report=log)
    audited = cli.audit_cases(auditor, cases, verify=True, report=log)
    fit_cases, _ = cli.split_cases(len(audited), 0.3)
    rows, labels = [], []
    for i in fit_cases:
        case, result = audited[i]
        matched, _ = cli.match_claims(case.claims or [], result.claims)
        for claim in result.claims:
            if claim.index in matched:
                rows.append(dict(claim.signals))
                labels.append(int(matched[claim.index]))
    fitted = []
    for allowed in missing:
        signals = [s for s in SIGNALS if s in allowed]
        usable = [(r, y) for r, y in zip(rows, labels) if set(signals) <= set(r)]
        fitted.append(cal.fit_model(signals, [r for r, _ in usable], [y for _, y in usable]))
    models = calibration.models + tuple(fitted)
    names = ["+".join(m.signals) for m in fitted]
    log(f"fitted {names} on {len(rows)} claims of {len(fit_cases)} labelled cases ({labelled})")
    return cal.Calibration(calibration.id + "+bench", calibration.model_id, calibration.kind, models), names


def run(
    model: str | None,
    calibration_path: str | None,
    n_captions: int,
    n_existence: int,
    n_count: int,
    n_boot: int = 1000,
    n_check: int = 8,
    labelled: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    start = time.perf_counter()
    loaded = load_model(model)
    calibration = load_calibration(calibration_path, loaded.path)
    auditor = Auditor(Scorer(loaded), forward_batch_size=64, calibration=calibration)
    thresholds = (auditor.risk_medium, auditor.risk_high)
    fitted: list[str] = []
    if calibration is not None:
        calibration, fitted = complete(calibration, auditor, loaded.path, labelled, log)
        log(f"{time.perf_counter() - start:.0f} s: calibration {calibration.id}")

    captions = held_out_samples("caption", n_captions, seed=BENCH_SEED)
    existence, popular = existence_questions(n_existence)
    counts = held_out_samples("count", n_count, seed=BENCH_SEED)
    log(f"{time.perf_counter() - start:.0f} s: {len(captions) + len(existence) + len(counts)} questions drawn")
    caption_answers = generate_answers(loaded, captions)
    existence_answers = generate_answers(loaded, existence)
    count_answers = generate_answers(loaded, counts)
    log(f"{time.perf_counter() - start:.0f} s: answered")

    yes = [i for i, a in enumerate(existence_answers) if said_yes(a)]
    caption_req = requests(captions, caption_answers)
    caption_res = audit_claims(auditor, caption_req)
    existence_res = audit_claims(auditor, requests([existence[i] for i in yes], [existence_answers[i] for i in yes]))
    count_res = audit_claims(auditor, requests(counts, count_answers))
    log(f"{time.perf_counter() - start:.0f} s: audited")

    rows: dict[str, list[ClaimRow]] = {"caption": [], "existence": [], "count": []}
    unparsed = 0
    for sample, res in zip(captions, caption_res):
        for claim in res.claims if res else []:
            kind = caption_type(claim.text, sample.scene) if claim.kind == "object" else None
            if kind is None:
                unparsed += 1
            else:
                rows["caption"].append(_row("caption", kind, claim))
    for i, res in zip(yes, existence_res):
        rows["existence"] += [_row("existence", kind_of(existence[i]), c) for c in claims_of(res, "existence")]
    for sample, res in zip(counts, count_res):
        rows["count"] += [
            _row("count", "correct" if c.text.lower() == sample.truth else "wrong", c) for c in claims_of(res, "count")
        ]
    settings = list(SETTINGS) if calibration is not None else [UNCALIBRATED]
    report: dict[str, Any] = {
        "model": str(loaded.path),
        "calibration": calibration.id if calibration else None,
        "fitted_by_bench": fitted,
        "settings": settings,
        "slices": {
            s.name: {setting: measure(s.rows, setting, calibration, thresholds, n_boot) for setting in settings}
            for s in slices(rows)
        },
        "forward_passes": {
            name: {"verify": passes(res, True), "plain": passes(res, False)}
            for name, res in (("caption", caption_res), ("existence", existence_res), ("count", count_res))
        },
        "agreement": agreement(auditor, caption_req[:n_check], caption_res[:n_check]),
        "counts": {
            "captions": len(captions),
            "caption_claims": len(rows["caption"]),
            "caption_types": dict(Counter(r.type for r in rows["caption"])),
            "unparsed_caption_claims": unparsed,
            "existence_questions": dict(Counter(kind_of(s) for s in existence)),
            "existence_yes_rate": {
                k: rate([said_yes(a) for s, a in zip(existence, existence_answers) if kind_of(s) == k])
                for k in ("positive", *NEGATIVE_KINDS)
            },
            "count_accuracy": rate([a == s.truth for s, a in zip(counts, count_answers)]),
            "popular": popular[:3],
        },
        "service_risk_gap": _service_gap(rows, calibration),
    }
    report["targets"] = targets(report) if calibration is not None else []
    report["seconds"] = time.perf_counter() - start
    return report


def requests(samples: list[world.Sample], answers: list[str]) -> list[AuditRequest]:
    """The reliance path with verification: every signal of every claim."""
    return [
        AuditRequest(s.scene.image, s.prompt, a, with_attributions=False, verify=True) for s, a in zip(samples, answers)
    ]


def claims_of(result: AuditResult | None, kind: str) -> list[ClaimResult]:
    return [c for c in result.claims if c.kind == kind] if result else []


def rate(hits: list[bool]) -> float:
    return round(float(np.mean(hits)), 3) if hits else float("nan")


def slices(rows: dict[str, list[ClaimRow]]) -> list[Slice]:
    """Caption claims overall and per hallucination type (against every correct one), existence
    "yes" answers overall and per negative kind (against the true ones), and count answers."""
    caption, existence = rows["caption"], rows["existence"]
    correct = [r for r in caption if not r.hallucinated]
    positives = [r for r in existence if not r.hallucinated]
    out = [Slice("caption objects", caption)]
    out += [Slice(f"caption: {t}", correct + [r for r in caption if r.type == t]) for t in HALLUCINATION_TYPES]
    out.append(Slice('existence "yes": all negatives', existence))
    out += [Slice(f'existence "yes": {k}', positives + [r for r in existence if r.type == k]) for k in NEGATIVE_KINDS]
    out.append(Slice("count answers", rows["count"]))
    return out


def passes(results: list[AuditResult | None], verified: bool) -> float:
    """Mean forward passes per request, with or without its verification questions (one per claim)."""
    done = [r for r in results if r is not None]
    if not done:
        return float("nan")
    return float(
        np.mean([r.stats.forward_passes - (0 if verified else verified_claims(r)) for r in done], dtype=np.float64)
    )


def verified_claims(result: AuditResult) -> int:
    return sum(c.kind in VERIFIED_KINDS for c in result.claims)


def _service_gap(rows: dict[str, list[ClaimRow]], calibration: cal.Calibration | None) -> float:
    """Largest gap between the auditor's own claim risk and the bench's for all signals: should be 0."""
    gaps = [0.0]
    for group in rows.values():
        if not group:
            continue
        setting = "all + verification" if calibration is not None else UNCALIBRATED
        risks, *_ = claim_scores(group, setting, calibration, (0.35, 0.65))
        gaps += [abs(a - r.service_risk) for a, r in zip(risks, group)]
    return float(max(gaps))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-captions", type=int, default=1000)
    ap.add_argument("--n-existence", type=int, default=300, help="positives, and negatives of each kind")
    ap.add_argument("--n-count", type=int, default=300)
    ap.add_argument("--model", default=None, help="model directory (default: the bundled reference model)")
    ap.add_argument(
        "--calibration", default=None, help=f"calibration file (default: the model directory's {CALIBRATION_FILE})"
    )
    ap.add_argument(
        "--labelled",
        default=None,
        help="the calibration's labelled cases (labelled.jsonl), to fit the models the calibration lacks",
    )
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per interval")
    ap.add_argument("--check", type=int, default=8, help="captions audited again with verify=False and with TAM")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args(argv)
    report = run(
        args.model,
        args.calibration,
        args.n_captions,
        args.n_existence,
        args.n_count,
        n_boot=args.bootstrap,
        n_check=args.check,
        labelled=args.labelled,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    report["table"] = tables(report)
    print(report["table"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
