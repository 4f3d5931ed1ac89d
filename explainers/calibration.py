"""Calibrated hallucination risk: from a claim's signals to an estimated probability.

A calibration file holds one or more logistic models, each over a set of signals (see
`signals.SIGNALS`); a claim is scored by the model with the most signals among those measured
for it (verification is optional per request, grounding needs a white-box family). Thresholds
turn the probability into labels: `medium` and `high` are chosen by the share of *correct*
claims they flag on the calibration data (5 % and 1 % by default).

Without labels (`fit_unlabelled`) the models are z-score sums in each signal's known
direction, squashed by a logistic: a ranking, not a probability, and the file says so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from mllm_audit.explainers.claims import CLAIM_KINDS
from mllm_audit.explainers.signals import DIRECTION, SIGNALS
from numpy.typing import NDArray

FORMAT = "mllm-audit-risk-calibration/1"
CALIBRATION_FILE = "risk_calibration.json"  # a model directory's own calibration, used by default
RiskLabel = Literal["low", "medium", "high"]
FloatArray = NDArray[np.float64]


class CalibrationError(ValueError):
    """A calibration file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class RiskModel:
    signals: tuple[str, ...]
    mean: tuple[float, ...]  # standardisation of each signal
    scale: tuple[float, ...]
    weights: tuple[float, ...]  # logistic weights of the standardised signals
    bias: float
    medium: float  # probability thresholds of the labels
    high: float
    measured: dict[str, Any] = field(default_factory=dict)  # held-out precision, recall, AUROC...
    kinds: tuple[str, ...] = ()  # the claim kinds it scores (claims.ClaimKind); empty: every kind

    def probability(self, signals: Mapping[str, float]) -> float:
        z = [(signals[s] - m) / sc for s, m, sc in zip(self.signals, self.mean, self.scale)]
        logit = self.bias + float(np.dot(self.weights, z))
        return float(1.0 / (1.0 + np.exp(-np.clip(logit, -50.0, 50.0))))

    def label(self, probability: float) -> RiskLabel:
        if probability >= self.high:
            return "high"
        return "medium" if probability >= self.medium else "low"


@dataclass(frozen=True)
class Calibration:
    id: str
    model_id: str
    kind: Literal["logistic", "zscore"]  # zscore: fitted without labels, scores are not probabilities
    models: tuple[RiskModel, ...]
    verify_template: str = "Is there a {claim}?"

    def model_for(self, available: set[str], kind: str | None = None) -> RiskModel | None:
        """The model for a claim of `kind` with the most signals among those available, or None.

        Among models with as many signals, one fitted to the claim's kind wins over one for every kind.
        """
        usable = [m for m in self.models if set(m.signals) <= available and (not m.kinds or kind in m.kinds)]
        return max(usable, key=lambda m: (len(m.signals), bool(m.kinds)), default=None)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")


def load(path: str | Path, model_id: str | None = None, computable: set[str] | None = None) -> Calibration:
    """Read a calibration file; CalibrationError (naming the file) when it is unusable here.

    `model_id`: the served model's id, which the file must be for. `computable`: the signals
    this service can measure; a model needing another is refused.
    """
    path = Path(path)
    where = f"risk calibration {path}"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"{where}: no such file") from None
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{where}: not readable JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CalibrationError(f"{where}: not a calibration file (format must be {FORMAT!r})")
    try:
        models = tuple(
            RiskModel(
                signals=tuple(m["signals"]),
                mean=tuple(float(x) for x in m["mean"]),
                scale=tuple(float(x) for x in m["scale"]),
                weights=tuple(float(x) for x in m["weights"]),
                bias=float(m["bias"]),
                medium=float(m["medium"]),
                high=float(m["high"]),
                measured=dict(m.get("measured") or {}),
                kinds=tuple(str(k) for k in m.get("kinds") or ()),
            )
            for m in raw["models"]
        )
        calibration = Calibration(
            id=str(raw["id"]),
            model_id=str(raw["model_id"]),
            kind=raw["kind"],
            models=models,
            verify_template=str(raw.get("verify_template", "Is there a {claim}?")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibrationError(f"{where}: malformed ({type(exc).__name__}: {exc})") from None
    if calibration.kind not in ("logistic", "zscore") or not models:
        raise CalibrationError(f"{where}: kind must be logistic or zscore, with at least one model")
    for m in models:
        unknown = set(m.signals) - set(SIGNALS)
        if unknown:
            raise CalibrationError(f"{where}: unknown signals {sorted(unknown)}; known: {', '.join(SIGNALS)}")
        if set(m.kinds) - set(CLAIM_KINDS):
            raise CalibrationError(f"{where}: unknown claim kinds {sorted(set(m.kinds) - set(CLAIM_KINDS))}")
        if not len(m.signals) == len(m.mean) == len(m.scale) == len(m.weights):
            raise CalibrationError(f"{where}: a model's signals, mean, scale and weights differ in length")
        if len(set(m.signals)) != len(m.signals) or not m.signals:
            raise CalibrationError(f"{where}: a model needs one or more signals, each named once")
        numbers = (*m.mean, *m.scale, *m.weights, m.bias, m.medium, m.high)
        if not all(np.isfinite(numbers)) or min(m.scale) <= 0:
            raise CalibrationError(f"{where}: a model's numbers must be finite and its scales positive")
        if not 0 <= m.medium <= m.high <= 1:
            raise CalibrationError(f"{where}: thresholds must satisfy 0 <= medium <= high <= 1")
        if computable is not None and not set(m.signals) <= computable:
            missing = sorted(set(m.signals) - computable)
            raise CalibrationError(f"{where}: needs {missing}, which this model and backend cannot compute")
    if model_id is not None and calibration.model_id != model_id:
        raise CalibrationError(f"{where}: is for model {calibration.model_id!r}, not the served {model_id!r}")
    return calibration


# ---------------------------------------------------------------------------------- fitting


def _standardise(x: FloatArray) -> tuple[FloatArray, FloatArray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    return mean, np.where(scale > 1e-12, scale, 1.0)


def logistic_fit(x: FloatArray, y: FloatArray, l2: float = 1e-2, steps: int = 100) -> tuple[FloatArray, float]:
    """Weights and bias of an L2-regularised logistic regression (Newton's method)."""
    n, d = x.shape
    design = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    penalty = np.diag([l2] * d + [0.0])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -50, 50)))
        grad = design.T @ (p - y) + penalty @ w
        hess = design.T @ (design * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w[:d], float(w[d])


def threshold_at(scores_of_correct: FloatArray, flag_rate: float) -> float:
    """The score above which `flag_rate` of the correct claims lie."""
    return float(np.quantile(scores_of_correct, 1.0 - flag_rate, method="higher")) if len(scores_of_correct) else 1.0


def fit_model(
    signals: Sequence[str],
    rows: Sequence[Mapping[str, float]],
    labels: Sequence[int] | None,
    medium_rate: float = 0.05,
    high_rate: float = 0.01,
    kinds: Sequence[str] = (),
) -> RiskModel:
    """A model over `signals` from claims' measured signals; labels 1 = hallucinated (None: z-scores)."""
    x = np.array([[row[s] for s in signals] for row in rows], dtype=np.float64)
    mean, scale = _standardise(x)
    z = (x - mean) / scale
    if labels is None:
        weights = np.array([DIRECTION[s] for s in signals], dtype=np.float64) / max(1, len(signals))
        bias, correct = 0.0, np.ones(len(rows), dtype=bool)  # without labels, most claims are taken as correct
    else:
        y = np.asarray(labels, dtype=np.float64)
        weights, bias = logistic_fit(z, y)
        correct = y == 0
    model = RiskModel(tuple(signals), tuple(mean), tuple(scale), tuple(weights), bias, 0.5, 0.5, kinds=tuple(kinds))
    probs = np.array([model.probability(r) for r in rows])
    medium = threshold_at(probs[correct], medium_rate)
    high = max(medium, threshold_at(probs[correct], high_rate))
    return replace(model, medium=medium, high=high)


def calibration_id(models: Sequence[RiskModel], model_id: str) -> str:
    digest = hashlib.sha256(json.dumps([asdict(m) for m in models], sort_keys=True).encode()).hexdigest()
    return f"{model_id}-{digest[:10]}"


# ------------------------------------------------------------------------ held-out measurement


def auroc(scores: FloatArray, labels: FloatArray) -> float:
    """Probability that a hallucinated claim scores above a correct one (ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(values):  # average ranks of ties
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def auprc(scores: FloatArray, labels: FloatArray) -> float:
    """Average precision of ranking by score."""
    order = np.argsort(-scores, kind="mergesort")
    hits = labels[order] == 1
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def operating_point(scores: FloatArray, labels: FloatArray, threshold: float) -> dict[str, float]:
    flagged = scores >= threshold
    hallucinated = labels == 1
    caught = float(flagged[hallucinated].mean()) if hallucinated.any() else float("nan")
    false_flags = float(flagged[~hallucinated].mean()) if (~hallucinated).any() else float("nan")
    precision = float(hallucinated[flagged].mean()) if flagged.any() else float("nan")
    return {"recall": caught, "false_flag_rate": false_flags, "precision": precision}


def false_flags_at_recall(scores: FloatArray, labels: FloatArray, recall: float = 0.9) -> float:
    """Share of correct claims flagged by the lowest threshold that catches `recall` of the hallucinated."""
    pos = np.sort(scores[labels == 1])[::-1]
    if not len(pos) or not (labels == 0).any():
        return float("nan")
    threshold = pos[max(0, int(np.ceil(recall * len(pos))) - 1)]
    return float((scores[labels == 0] >= threshold).mean())


def bootstrap(
    metric: Any, scores: FloatArray, labels: FloatArray, n: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """(estimate, 2.5 %, 97.5 %) of `metric(scores, labels)` over resampled claims."""
    rng = np.random.default_rng(seed)
    estimate = float(metric(scores, labels))
    samples = []
    for _ in range(n):
        idx = rng.integers(0, len(scores), len(scores))
        value = metric(scores[idx], labels[idx])
        if np.isfinite(value):
            samples.append(value)
    if not samples:
        return estimate, float("nan"), float("nan")
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return estimate, float(lo), float(hi)
