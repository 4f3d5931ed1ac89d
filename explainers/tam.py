"""TAM, the Token Activation Map (arXiv 2506.23270): one white-box forward, no backward.

For answer token t with token id c, the activation at an earlier position j is the logit of c
read at j, clipped at zero: ``a_j = ReLU(h_j . w_c)`` (h_j the last decoder layer's hidden
state, w_c the LM-head row of c). Image positions give a map on the image-token grid;
prompt text and earlier answer positions give textual relevances ``r_j``.

Estimated causal inference (ECI) removes what earlier answer tokens put into the map: with
J the earlier answer tokens that are not the same word as t, ``w_j = r_j / sum r``,
interference ``I = sum_j w_j A_j`` (A_j the raw image map of token j's own class),
``s* = <A_t, I> / <I, I>`` (the least-squares scale of I against A_t) and the corrected map
``ReLU(A_t - s* I)``. ARC (explainers/arc.py) passes a coherence ``rho_j`` per context
token; the removed term then becomes ``s* sum_j w_j (1 - rho_j) A_j`` (see `eci`).

The rank Gaussian filter then denoises the grid map (see `rank_gaussian_filter`).

This module works on one forward's outputs and knows nothing about models: the layout of
the sequence (`SequenceLayout`) comes from the scorer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from mllm_audit.explainers import arc
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray
from PIL import Image

if TYPE_CHECKING:  # the scorer module imports torch; explainers do not need it at run time
    from mllm_audit.models.scorer import Audit, ScorerProtocol

# ---------------------------------------------------------------------------- building blocks


def rank_gaussian_filter(grid: np.ndarray, size: int = 3) -> np.ndarray:
    """Denoise a non-negative grid map with TAM's rank Gaussian filter.

    For every cell, the ``size x size`` window around it (edges replicated) is sorted; the
    output is a Gaussian-weighted mean of the sorted values over their rank index, centred
    on the median rank, with width ``sigma = std / mean`` of the window (in rank units).
    A calm window (small sigma) gives its median, a busy one something closer to its mean.
    Cells whose window mean is <= 0 give 0.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError("size must be a positive odd number")
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 2:
        raise ValueError(f"expected a 2-D grid, got shape {grid.shape}")
    pad = size // 2
    windows = sliding_window_view(np.pad(grid, pad, mode="edge"), (size, size))
    values = np.sort(windows.reshape(*grid.shape, size * size), axis=-1)
    mean = values.mean(axis=-1)
    std = values.std(axis=-1)
    positive = mean > 0
    sigma = np.where(positive, std / np.where(positive, mean, 1.0), 0.0)
    offsets = np.arange(size * size) - (size * size - 1) / 2  # rank index relative to the median
    sigma = np.maximum(sigma, 1e-6)[..., None]  # sigma -> 0: all weight on the median
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    out = (weights * values).sum(axis=-1) / weights.sum(axis=-1)
    return np.where(positive, out, 0.0)


def eci_scale(target: np.ndarray, interference: np.ndarray) -> float:
    """``s* = <A_t, I> / <I, I>``: the scale of I that best explains A_t (least squares); 0 if I = 0."""
    i = np.asarray(interference, dtype=np.float64).ravel()
    denom = float(i @ i)
    if denom <= 0:
        return 0.0
    return float(np.asarray(target, dtype=np.float64).ravel() @ i) / denom


def eci(
    target: np.ndarray, contexts: np.ndarray, relevances: np.ndarray, coherence: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Estimated causal inference: the target map with its context interference removed.

    ``target`` A_t [rows, cols]; ``contexts`` A_j [n, rows, cols]; ``relevances`` r_j [n] (>= 0).
    Returns ``(ReLU(A_t - s* R), s*)`` where ``I = sum w_j A_j``, ``w_j = r_j / sum r``,
    ``s* = <A_t, I> / <I, I>``, and R = I (TAM) or, with ARC's ``coherence`` rho_j in [0, 1],
    ``R = sum w_j (1 - rho_j) A_j``: an irrelevant context (rho 0) is removed as in TAM, a
    coherent one (rho 1) is kept. With rho = 0 everywhere this is exactly TAM.
    """
    target = np.asarray(target, dtype=np.float64)
    contexts = np.asarray(contexts, dtype=np.float64).reshape(-1, *target.shape)
    r = np.clip(np.asarray(relevances, dtype=np.float64).ravel(), 0, None)
    if len(r) != len(contexts):
        raise ValueError(f"{len(contexts)} context maps but {len(r)} relevances")
    total = r.sum()
    if len(r) == 0 or total <= 0:
        return np.maximum(target, 0.0), 0.0
    w = r / total
    interference = np.tensordot(w, contexts, axes=1)
    s = eci_scale(target, interference)
    if coherence is not None:
        keep = np.clip(np.asarray(coherence, dtype=np.float64).ravel(), 0.0, 1.0)
        removed = np.tensordot(w * (1.0 - keep), contexts, axes=1)
    else:
        removed = interference
    return np.maximum(target - s * removed, 0.0), s


def grid_to_pixels(grid_map: np.ndarray, shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """Nearest upsampling of a grid map onto ``box`` (x0, y0, x1, y1) of an [h, w] canvas, 0 elsewhere.

    A token map knows nothing finer than a patch: nearest keeps each patch's value over the
    patch; bilinear would put the peak at the patch centre, which can miss a thin object the
    patch does show.

    ``box`` is the part of the image the token grid covers (all of it unless the processor
    crops, see the scorer's `view_box`).
    """
    h, w = shape
    x0, y0, x1, y1 = box
    out = np.zeros((h, w), dtype=np.float32)
    if x1 <= x0 or y1 <= y0:
        return out
    img = Image.fromarray(np.asarray(grid_map, dtype=np.float32), mode="F")
    out[y0:y1, x0:x1] = np.asarray(img.resize((x1 - x0, y1 - y0), Image.Resampling.NEAREST))
    return np.maximum(out, 0.0)


def normalise(heat: np.ndarray) -> np.ndarray:
    """Scale a non-negative map to [0, 1] by its maximum (0 stays 0); an all-zero map stays zero."""
    heat = np.nan_to_num(np.maximum(np.asarray(heat, dtype=np.float64), 0.0), nan=0.0, posinf=0.0)
    peak = heat.max() if heat.size else 0.0
    return heat / peak if peak > 0 else np.zeros_like(heat)


# ---------------------------------------------------------------------------- the sequence


@dataclass(frozen=True)
class SequenceLayout:
    """Where things sit in one audit's token sequence (the same for every view of the image)."""

    image_positions: np.ndarray  # [rows * cols] sequence positions of the image tokens, row-major
    grid: tuple[int, int]  # (rows, cols)
    answer_start: int
    answer_ids: list[int]
    answer_texts: list[str]
    word_of: list[int]  # per answer token: index of the word it belongs to (-1: none)
    prompt_positions: list[int]  # text positions of the prompt (no image or special tokens)
    position_texts: dict[int, str]  # text of every prompt position in `prompt_positions`

    def position(self, t: int) -> int:
        return self.answer_start + t


def words_of_tokens(answer: str, spans: list[tuple[int, int]]) -> list[int]:
    """Word index of each answer token (a word is a run of word characters or one punctuation mark)."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", answer)]
    out = []
    for start, end in spans:
        text = answer[start:end]
        first = start + (len(text) - len(text.lstrip()))
        out.append(next((i for i, (ws, we) in enumerate(words) if ws <= first < we), -1))
    return out


def sequence_layout(scorer: ScorerProtocol, audit: Audit, image: np.ndarray) -> SequenceLayout:
    positions = np.asarray(scorer.image_token_positions(audit), dtype=np.int64)
    rows, cols = scorer.image_grid(audit, image)
    if rows * cols != len(positions):
        raise ValueError(
            f"the image grid {rows}x{cols} does not match the {len(positions)} image tokens "
            "(several images or tiles per request are not supported by white-box maps)"
        )
    seq = audit.sequence
    special = scorer.special_token_ids()
    image_set = set(positions.tolist())
    prompt = [j for j in range(1, seq.answer_start) if j not in image_set and seq.input_ids[j] not in special]
    texts = dict(zip(prompt, scorer.token_texts([seq.input_ids[j] for j in prompt])))
    tokens = audit.tokens
    return SequenceLayout(
        positions,
        (int(rows), int(cols)),
        seq.answer_start,
        list(tokens.ids),
        list(tokens.texts),
        words_of_tokens(audit.answer, list(tokens.spans)),
        prompt,
        texts,
    )


def _same_word(layout: SequenceLayout, k: int, t: int) -> bool:
    if layout.word_of[k] >= 0 and layout.word_of[k] == layout.word_of[t]:
        return True  # another piece of the same word
    if layout.answer_ids[k] == layout.answer_ids[t]:
        return True
    a, b = layout.answer_texts[k].strip().lower(), layout.answer_texts[t].strip().lower()
    return bool(a) and a == b  # the same word said again


# ---------------------------------------------------------------------------- one forward


@dataclass
class TokenGridMap:
    """One answer token's map from one forward: grid map after ECI and the filter, and its context."""

    grid: np.ndarray  # [rows, cols] float64, >= 0, in logit units
    eci_scale: float
    context_positions: list[int]  # sequence positions of the context (prompt text, earlier answer)
    context_scores: np.ndarray  # textual relevance of each context position, for reports


def token_grid_maps(
    logits: np.ndarray,
    layout: SequenceLayout,
    tokens: list[int],
    arc_params: arc.ArcParams | None = None,
    use_filter: bool = True,
    filter_size: int = 3,
) -> dict[int, TokenGridMap]:
    """TAM (or TAM with ARC when ``arc_params`` is given) for each answer token index in ``tokens``.

    ``logits`` [seq, vocab] come from one white-box forward of the audit's sequence.
    Context scores are TAM's relevances as shares ``r_j / sum r`` over all context positions,
    or with ARC the rank-biased overlap ``rho_j`` of each context token's ranking with t's.
    """
    logits = np.asarray(logits, dtype=np.float32)
    rows, cols = layout.grid
    image_logits: NDArray[np.float32] = logits[layout.image_positions]  # [n_img, vocab]

    def raw_map(cls: int) -> np.ndarray:
        return np.maximum(image_logits[:, cls].astype(np.float64), 0.0).reshape(rows, cols)

    rankings = None
    if arc_params is not None:
        # the ranking "of" the token at position j is the prediction the model made for it, at
        # j - 1; only text positions need one (image positions are most of a long sequence)
        needed = sorted(
            {j - 1 for j in layout.prompt_positions} | {layout.position(t) - 1 for t in range(max(tokens) + 1)}
        )
        ranked = arc.top_k_rankings(logits[needed], arc_params.k)
        rankings = {j: row for j, row in zip(needed, ranked)}

    out: dict[int, TokenGridMap] = {}
    for t in tokens:
        pos_t = layout.position(t)
        cls = layout.answer_ids[t]
        earlier = list(range(t))
        context_positions = layout.prompt_positions + [layout.position(k) for k in earlier]
        relevance = (
            np.maximum(logits[context_positions, cls].astype(np.float64), 0.0) if context_positions else np.zeros(0)
        )
        coherence = None
        if arc_params is not None and rankings is not None and context_positions:
            coherence = arc.coherence(
                rankings[pos_t - 1], np.stack([rankings[j - 1] for j in context_positions]), arc_params.p
            )
        n_prompt = len(layout.prompt_positions)
        J = [i for i, k in enumerate(earlier) if not _same_word(layout, k, t)]
        target = raw_map(cls)
        if J:
            maps = np.stack([raw_map(layout.answer_ids[earlier[i]]) for i in J])
            r = relevance[[n_prompt + i for i in J]]
            keep = None if coherence is None else coherence[[n_prompt + i for i in J]]
            corrected, s = eci(target, maps, r, keep)
        else:
            corrected, s = target, 0.0
        if use_filter:
            corrected = rank_gaussian_filter(corrected, filter_size)
        if coherence is not None:
            scores = coherence
        else:
            total = relevance.sum()
            scores = relevance / total if total > 0 else np.zeros_like(relevance)
        out[t] = TokenGridMap(corrected, s, context_positions, scores)
    return out
