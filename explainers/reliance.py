"""Per-token visual and language reliance, and the answer's summary.

Signals (EAGLE, arXiv 2509.22496: modality reliance and hallucination analysis), all from
teacher-forced token probabilities:

* visual contrast (VCD-style, bounded): how much of the token's probability the image
  adds over a content-free baseline, ``contrast_t = clip((p_full - p_blank) / p_full, 0, 1)``.
  Needs only two images (full + blank): the cheap /v1/reliance path.
* EAGLE insertion reliance: ``I_t = AUC(c_t) - min_k c_t(a_k)`` over the insertion curve
  c_t along the region ranking. Normalised by the curve's maximum to [0, 1]:
  ``I_norm_t = clip(I_t / max_k c_t(a_k), 0, 1)`` (AUC - min <= max - min <= max).

``visual_reliance_t = contrast_t`` on the cheap path, and
``w * contrast_t + (1 - w) * I_norm_t`` (w = ``contrast_weight``, 0.5) when an insertion
curve exists; ``language_reliance_t = 1 - visual_reliance_t``.

Reliance is not risk: a word bound to the wrong object ("purple triangle" where the purple
object is a square) rests on the image as much as a correct one. Risk is estimated per claim
(`explainers.risk`) and a token carries its claim's. Function words and punctuation get
``not_visual`` and risk 0: they make no claim about the image. The rule reads whole words
of the answer, not tokens: a piece of a longer word ("is" in "island") claims what the word
claims.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Generator, Sequence
from typing import Final

import numpy as np
from mllm_audit.explainers.faithfulness import auc
from mllm_audit.explainers.masking import resolve_baseline
from mllm_audit.explainers.results import ClaimResult, RiskLabel, Summary, TokenResult
from numpy.typing import NDArray

EPS = 1e-8
NOT_VISUAL: Final[RiskLabel] = "not_visual"
LABEL_ORDER = {NOT_VISUAL: -1, "low": 0, "medium": 1, "high": 2}

# English function words: articles, determiners, pronouns, generic prepositions,
# conjunctions, auxiliaries and contraction pieces. Deliberately NOT here: numbers and
# quantifiers (counts are visual claims), spatial words (above, left, behind: relation
# claims), and yes / no / not (in an existence answer the yes or no IS the claim).
FUNCTION_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "this",
        "that",
        "these",
        "those",
        "its",
        "it's",
        "his",
        "her",
        "hers",
        "their",
        "theirs",
        "our",
        "ours",
        "your",
        "yours",
        "my",
        "mine",
        "some",
        "any",
        "each",
        "every",
        "such",
        "another",
        "other",
        "own",
        "same",
        "it",
        "they",
        "them",
        "he",
        "him",
        "she",
        "we",
        "us",
        "you",
        "i",
        "me",
        "itself",
        "themselves",
        "himself",
        "herself",
        "which",
        "who",
        "whom",
        "whose",
        "what",
        "where",
        "when",
        "why",
        "how",
        "there",
        "here",
        "of",
        "in",
        "on",
        "at",
        "to",
        "with",
        "for",
        "from",
        "by",
        "as",
        "into",
        "onto",
        "about",
        "than",
        "via",
        "within",
        "upon",
        "per",
        "and",
        "or",
        "but",
        "so",
        "if",
        "then",
        "because",
        "while",
        "although",
        "though",
        "nor",
        "also",
        "too",
        "either",
        "neither",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "do",
        "does",
        "did",
        "done",
        "has",
        "have",
        "had",
        "having",
        "can",
        "could",
        "will",
        "would",
        "shall",
        "should",
        "may",
        "might",
        "must",
        "s",
        "t",
        "re",
        "ve",
        "ll",
        "d",
        "m",
        "just",
        "very",
        "really",
        "like",
    ]
)
# Words about the picture itself rather than its content ("The image shows ...").
META_WORDS = frozenset(
    [
        "image",
        "images",
        "picture",
        "pictures",
        "photo",
        "photos",
        "photograph",
        "scene",
        "shows",
        "show",
        "showing",
        "shown",
        "depicts",
        "depict",
        "depicting",
        "displays",
        "display",
        "features",
        "contains",
        "see",
        "seen",
    ]
)
_PIECE_MARKERS = "\u2581\u0120\u010a#"  # SentencePiece "▁", GPT-2 byte "Ġ" / "Ċ", WordPiece "##"


def _is_punct_or_symbol(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch)[0] in "PS"


def is_visual_claim(token_text: str) -> bool:
    """Lexical rule: does this token claim something about the image?

    False for empty / whitespace / punctuation-only tokens, function words and words
    about the picture itself; True for everything else, numbers included (counts).
    """
    text = token_text.strip().strip(_PIECE_MARKERS).strip()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("Z"))
    core = text
    while core and _is_punct_or_symbol(core[0]):
        core = core[1:]
    while core and _is_punct_or_symbol(core[-1]):
        core = core[:-1]
    if not core:
        return False
    word = core.lower()
    return word not in FUNCTION_WORDS and word not in META_WORDS


_WORD = re.compile(r"\w+|[^\w\s]")  # a word, or one punctuation mark / symbol


def visual_claims(answer: str, spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Per token (character spans of ``answer``): does the word it belongs to claim something?

    A token is judged by the words of the answer it overlaps, so the pieces of a word
    split by the tokenizer share that word's verdict; a token that spans several words
    is a visual claim when any of them is.
    """
    words = [(m.start(), m.end(), is_visual_claim(m.group())) for m in _WORD.finditer(answer)]
    out = []
    for start, end in spans:
        overlapped = [visual for s, e, visual in words if s < end and e > start]
        out.append(any(overlapped))
    return out


def visual_contrast(p_full: np.ndarray, p_blank: np.ndarray) -> np.ndarray:
    """Share of each token's probability that the image adds: clip((pf - pb) / pf, 0, 1)."""
    pf = np.asarray(p_full, dtype=np.float64)
    pb = np.asarray(p_blank, dtype=np.float64)
    return np.clip((pf - pb) / np.maximum(pf, EPS), 0.0, 1.0)


def reliance_score(areas: np.ndarray, insertion: np.ndarray) -> np.ndarray:
    """EAGLE's I_t = AUC(c_t) - min_k c_t(a_k) per token, insertion [n_points, T] -> [T]."""
    curve = np.asarray(insertion, dtype=np.float64)
    if curve.ndim == 1:
        curve = curve[:, None]
    return np.array([auc(areas, curve[:, t]) - curve[:, t].min() for t in range(curve.shape[1])])


def normalised_reliance(areas: np.ndarray, insertion: np.ndarray) -> np.ndarray:
    """I_t / max_k c_t(a_k), in [0, 1]: scale-free, so likely and rare tokens compare."""
    curve = np.asarray(insertion, dtype=np.float64)
    if curve.ndim == 1:
        curve = curve[:, None]
    normalised: NDArray[np.float64] = np.clip(
        reliance_score(areas, curve) / np.maximum(curve.max(axis=0), EPS), 0.0, 1.0
    )
    return normalised


def visual_reliance(
    p_full: np.ndarray,
    p_blank: np.ndarray,
    areas: np.ndarray | None = None,
    insertion: np.ndarray | None = None,
    contrast_weight: float = 0.5,
) -> np.ndarray:
    """Per-token visual reliance in [0, 1] (formula in the module docstring)."""
    contrast = visual_contrast(p_full, p_blank)
    if insertion is None or areas is None:
        return contrast
    return contrast_weight * contrast + (1.0 - contrast_weight) * normalised_reliance(areas, insertion)


def assess_tokens(
    texts: Sequence[str],
    p_full: np.ndarray,
    p_blank: np.ndarray,
    areas: np.ndarray | None = None,
    insertion: np.ndarray | None = None,
    contrast_weight: float = 0.5,
    visual: Sequence[bool] | None = None,
) -> list[TokenResult]:
    """Visual and language reliance of every answer token (probabilities, not log-probs).

    ``areas`` / ``insertion`` ([n_points, T]) are an EAGLE insertion curve when the
    explain path has one; without them the cheap contrast-only formula is used.
    ``visual`` says which tokens make a visual claim (``visual_claims`` of the answer);
    without it each token's own text is judged. Risk is a claim's (explainers.risk): here a
    visual token gets risk 0 and "low" until its claim's risk is known, the others "not_visual".
    """
    pf = np.asarray(p_full, dtype=np.float64)
    pb = np.asarray(p_blank, dtype=np.float64)
    if len(texts) != pf.size or pf.shape != pb.shape:
        raise ValueError(f"{len(texts)} texts, p_full {pf.shape}, p_blank {pb.shape}: sizes differ")
    vis = visual_reliance(pf, pb, areas, insertion, contrast_weight)
    eagle = reliance_score(areas, insertion) if insertion is not None and areas is not None else None
    if visual is None:
        visual = [is_visual_claim(text) for text in texts]
    out = []
    for t, text in enumerate(texts):
        lang = 1.0 - float(vis[t])
        label: RiskLabel = "low" if visual[t] else NOT_VISUAL
        out.append(
            TokenResult(
                t,
                text,
                float(pf[t]),
                float(pb[t]),
                float(vis[t]),
                lang,
                0.0,
                label,
                None if eagle is None else float(eagle[t]),
            )
        )
    return out


def summarize(tokens: Sequence[TokenResult], claims: Sequence[ClaimResult] = ()) -> Summary:
    """Answer-level view: the worst claim, the mean visual reliance of visual tokens, counts.

    ``visual_reliance`` is the mean over visual tokens (over all tokens when none is visual).
    """
    visual = [t for t in tokens if t.risk_label != NOT_VISUAL]
    pool = visual or list(tokens)
    reliance = float(np.mean([t.visual_reliance for t in pool])) if pool else 0.0
    flagged_tokens = sum(t.risk_label == "high" for t in tokens)
    if not claims:
        return Summary(NOT_VISUAL, 0.0, reliance, flagged_tokens)
    worst = max(claims, key=lambda c: (LABEL_ORDER[c.risk_label], c.risk_score))
    return Summary(
        risk_label=worst.risk_label,
        risk_score=max(c.risk_score for c in claims),
        visual_reliance=reliance,
        flagged_tokens=flagged_tokens,
        claims=len(claims),
        flagged_claims=sum(c.risk_label == "high" for c in claims),
        expected_hallucinations=float(sum(c.risk_score for c in claims)),
    )


def black_probs(image: np.ndarray) -> Generator[list[np.ndarray], np.ndarray, np.ndarray]:
    """Engine generator: ONE yield ``[black image]``; returns p_blank [T] (probabilities).

    The full image's probabilities come from the risk readout's pass, so the cheap path
    stays at two forward passes.
    """
    image = np.asarray(image, dtype=np.uint8)
    received = np.asarray((yield [resolve_baseline(image, "black")]), dtype=np.float64)
    if received.ndim != 2 or received.shape[0] != 1:
        raise ValueError(f"expected log-probs of shape [1, n_tokens], got {received.shape}")
    p_blank: NDArray[np.float64] = np.exp(received[0])
    return p_blank
