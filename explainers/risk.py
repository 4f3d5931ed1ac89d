"""Claim-level hallucination risk: measure each claim's signals and turn them into a probability.

Per request: the claims (`claims.group_claims`), one readout pass of the full image (the
scorer's `readout`: confidence, entropy, patch readouts), and optionally one verification
pass per claim, batched by the engine with every other image. A calibration file
(`calibration.Calibration`) maps the signals to an estimated probability and a label;
without one, the risk is 1 − the claim's geometric-mean token probability, labelled with
the auditor's fixed thresholds, and the result says it is uncalibrated.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
from mllm_audit.explainers import signals
from mllm_audit.explainers.calibration import Calibration
from mllm_audit.explainers.claims import WORD, Claim, group_claims
from mllm_audit.explainers.engine import Job
from mllm_audit.explainers.results import ClaimResult, RiskInfo, RiskLabel
from numpy.typing import NDArray

DEFAULT_VERIFY_TEMPLATE = "Is there a {claim}?"


def one_image(image: NDArray[np.uint8]) -> Generator[list[NDArray[np.uint8]], NDArray[np.float64], float]:
    """Engine generator: score one image, return the summed log-probability of its audit's answer."""
    received = yield [image]
    return float(np.asarray(received, dtype=np.float64)[0].sum())


def verification_jobs(scorer: Any, image: NDArray[np.uint8], claims: list[Claim], template: str) -> dict[int, Job]:
    """One job per verifiable claim: the model's log p("yes") to the template's question about it."""
    size = (image.shape[1], image.shape[0])
    return {
        c.index: Job(scorer.prepare(template.format(claim=c.text), "yes", size), one_image(image))
        for c in claims
        if c.kind in signals.VERIFIED_KINDS
    }


def question_phrase(prompt: str) -> str | None:
    """The object or count phrase a yes/no question asks about ("Is there a red circle?" -> "red circle")."""
    words = [(m.start(), m.end()) for m in WORD.finditer(prompt)]
    asked = [c for c in group_claims(prompt, words) if c.kind in ("object", "count")]
    return asked[-1].text if asked else None


@dataclass(frozen=True)
class Thresholds:
    medium: float
    high: float

    def label(self, risk: float) -> RiskLabel:
        if risk >= self.high:
            return "high"
        return "medium" if risk >= self.medium else "low"


def measure(claim: Claim, readout: Any, verified: Job | None) -> tuple[dict[str, float], int | None]:
    """The claim's signals, and the index of its grounding's best patch (None without a grid)."""
    measured = {
        "confidence": signals.confidence(readout.log_probs, claim.token_indices),
        "entropy": signals.entropy(readout.entropy, claim.token_indices),
    }
    best = None
    if claim.kind == "existence":  # a yes/no claims the question's object: ground that phrase
        phrase = readout.phrase_patch_log_probs
        if phrase is not None:
            measured["grounding"], best = signals.grounding(phrase, range(phrase.shape[1]))
    elif readout.patch_log_probs is not None:
        measured["grounding"], best = signals.grounding(readout.patch_log_probs, claim.token_indices)
    if verified is not None and verified.error is None:
        measured["verification"] = signals.verification(verified.result)
    return measured, best


def assess_claims(
    claims: list[Claim],
    readout: Any,
    verified: dict[int, Job],
    calibration: Calibration | None,
    fallback: Thresholds,
    evidence_box: Any,
) -> tuple[list[ClaimResult], RiskInfo]:
    """Risk of every claim; `evidence_box(patch index)` gives a patch's box in the client's pixels."""
    results = []
    used: set[str] = set()
    for claim in claims:
        measured, best = measure(claim, readout, verified.get(claim.index))
        model = calibration.model_for(set(measured), claim.kind) if calibration else None
        if model is not None:
            risk = model.probability(measured)
            label: RiskLabel = model.label(risk)
            used |= set(model.signals)
        else:
            risk = 1.0 - float(np.exp(measured["confidence"]))
            label = fallback.label(risk)
            used.add("confidence")
        box = evidence_box(best) if best is not None else None
        results.append(
            ClaimResult(
                claim.index, claim.kind, claim.start, claim.end, claim.text, claim.token_indices,
                risk, label, {k: round(v, 6) for k, v in measured.items()}, box,
            )
        )  # fmt: skip
    info = RiskInfo(
        calibration.id if calibration else None,
        calibration is not None and calibration.kind == "logistic",
        [s for s in signals.SIGNALS if s in used],
    )
    return results, info
