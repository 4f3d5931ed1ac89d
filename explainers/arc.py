"""ARC, Activation Ranking Correlation (arXiv 2509.22415, textual branch).

The relevance of a context token j to the current token t is the rank-biased overlap of
their top-k next-token rankings. The ranking "of" the token at sequence position j is the
prediction the model made for it, read from the logits at position j - 1 (so t's ranking
is the distribution it was drawn from, and a context token's is the one it was drawn from).

    RBO_p(R_t, R_j) = (1 - p) / (1 - p^k) * sum_{d=1..k} p^(d-1) |R_t[:d] & R_j[:d]| / d

The usual truncated RBO is ``(1 - p) * sum ...``; dividing by ``1 - p^k`` (the sum of the
weights) makes identical rankings score exactly 1 and disjoint ones 0. ``p`` sets how
top-heavy the comparison is: the first d ranks carry ``1 - p^d`` of the weight, so with
the default p = 0.9 the top 10 carry 65% and the top 22 90%; k = 50 (clipped to the
vocabulary size).

How it enters the map (our choice; the paper leaves it open): in TAM's estimated causal
inference each context term is weighted by ``1 - rho_j`` (see tam.eci), so the interference
of an irrelevant context (rho ~ 0) is removed as TAM removes it, and a coherent context
(rho ~ 1), whose activation belongs to the same prediction, is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray


@dataclass(frozen=True)
class ArcParams:
    k: int = 50  # ranking depth, clipped to the vocabulary size
    p: float = 0.9  # RBO persistence: weight of depth d is p^(d-1)


def top_k_rankings(logits: np.ndarray, k: int) -> np.ndarray:
    """Token ids of the k highest logits at every position, best first: int64 [seq, k].

    Linear in the vocabulary (a partition, then a sort of the k kept); within the top k,
    ties are broken by token id.
    """
    logits = np.asarray(logits)
    vocab = logits.shape[-1]
    k = max(1, min(int(k), vocab))
    flat = logits.reshape(-1, vocab)
    top = np.argpartition(-flat, k - 1, axis=-1)[:, :k] if k < vocab else np.tile(np.arange(vocab), (len(flat), 1))
    values = np.take_along_axis(flat, top, axis=-1)
    order = np.lexsort((top, -values), axis=-1)  # by value descending, then token id
    return np.take_along_axis(top, order, axis=-1).reshape(*logits.shape[:-1], k).astype(np.int64)


def _weights(k: int, p: float) -> NDArray[np.float64]:
    if not 0 < p <= 1:
        raise ValueError(f"p must be in (0, 1], got {p}")
    w: NDArray[np.float64] = p ** np.arange(k, dtype=np.float64)
    weights: NDArray[np.float64] = w / w.sum()  # = (1 - p) p^(d-1) / (1 - p^k); uniform when p = 1
    return weights


def coherence(target: np.ndarray, contexts: np.ndarray, p: float = 0.9) -> np.ndarray:
    """RBO of one ranking ``target`` [k] against each row of ``contexts`` [m, k]: float64 [m] in [0, 1].

    Rankings must not repeat an item. Vectorised: an item shared by both rankings enters the
    overlap at depth ``max(rank in target, rank in context) + 1`` and stays in it below.
    """
    target = np.asarray(target, dtype=np.int64).ravel()
    contexts = np.asarray(contexts, dtype=np.int64)
    contexts = contexts.reshape(-1, contexts.shape[-1]) if contexts.size else contexts.reshape(0, len(target))
    k = min(len(target), contexts.shape[1])
    if k == 0 or len(contexts) == 0:
        return np.zeros(len(contexts))
    target, contexts = target[:k], contexts[:, :k]
    lookup = np.full(int(max(target.max(), contexts.max())) + 1, k, dtype=np.int64)
    lookup[target] = np.arange(k)
    rank_in_target = lookup[contexts]  # [m, k]; k where absent from the target's ranking
    enters = np.where(rank_in_target < k, np.maximum(rank_in_target, np.arange(k)[None, :]), k)  # 0-based depth
    depths = np.arange(1, k + 1)
    overlap = (enters[:, :, None] < depths[None, None, :]).sum(axis=1)  # [m, k]: |R_t[:d] & R_j[:d]|
    agreement: NDArray[np.float64] = overlap / depths[None, :]
    return agreement @ _weights(k, p)


def rank_biased_overlap(a: ArrayLike, b: ArrayLike, p: float = 0.9, k: int | None = None) -> float:
    """Normalised RBO of two rankings (best first), truncated at depth k (default: the shorter one)."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    depth = min(len(a), len(b)) if k is None else min(int(k), len(a), len(b))
    if depth == 0:
        return 0.0
    return float(coherence(a[:depth], b[None, :depth], p)[0])
