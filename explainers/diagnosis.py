"""EAGLE's correction analysis (arXiv 2509.22496): which image regions hold a flagged answer up.

With an alternative answer (`correct_to`), every superpixel is removed in turn and scored
under both answers; regions are ranked by how far their removal shifts the log-probability
from the given answer towards the alternative, then removed cumulatively in that order. The
smallest share of the image whose removal makes the model prefer the alternative is the
*minimum correction region*; averaged over cases it is EAGLE's AMCR, and the share of cases
corrected within 10 % of the image its CSR@10%.

Each image is scored under both answers (the engine job's audit is a `PairedAudit`: the
auditor scores it twice), so a diagnosis of K regions costs 2·(2K + 1) forward passes.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
from mllm_audit.explainers.masking import compose, resolve_baseline
from mllm_audit.explainers.results import Diagnosis
from numpy.typing import NDArray


@dataclass(frozen=True)
class PairedAudit:
    """An engine job's audit whose images are scored under two answers; results are concatenated."""

    answer: Any
    alternative: Any


def margin(log_probs: NDArray[np.float64], n_answer: int) -> NDArray[np.float64]:
    """log p(alternative) - log p(answer) per image, from concatenated [answer tokens | alternative tokens]."""
    shift: NDArray[np.float64] = log_probs[:, n_answer:].sum(axis=1) - log_probs[:, :n_answer].sum(axis=1)
    return shift


def correction_search(
    image: NDArray[np.uint8], masks: NDArray[np.bool_], n_answer: int, alternative: str
) -> Generator[list[NDArray[np.uint8]], NDArray[np.float64], Diagnosis]:
    """Engine generator over a PairedAudit: two yields, 1 + K then K images."""
    black = resolve_baseline(image, "black")
    k = len(masks)
    removed_one = [compose(image, black, ~m) for m in masks]
    first = margin(np.asarray((yield [image, *removed_one]), dtype=np.float64), n_answer)
    shift = first[1:] - first[0]
    ranking = [int(r) for r in np.argsort(-shift, kind="stable")]
    area = masks.reshape(k, -1).mean(axis=1)
    cumulative = np.cumsum(area[ranking])
    gone = np.zeros(masks.shape[1:], dtype=bool)
    removed_prefix = []
    for region in ranking:
        gone |= masks[region]
        removed_prefix.append(compose(image, black, ~gone))
    curve = margin(np.asarray((yield removed_prefix), dtype=np.float64), n_answer)
    flipped = np.nonzero(curve > 0)[0]
    flip = int(flipped[0]) if len(flipped) else None
    return Diagnosis(
        alternative=alternative,
        ranking=ranking,
        flip_area=None if flip is None else float(cumulative[flip]),
        flip_regions=None if flip is None else flip + 1,
        curve=np.column_stack([np.concatenate([[0.0], cumulative]), np.concatenate([[first[0]], curve])]),
        forward_passes=2 * (1 + 2 * k),
    )
