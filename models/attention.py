"""The language model's attention at the image tokens: what the `attention` and `relevancy` maps read.

`eager_attention` switches a model to the eager attention implementation for a block: the
only one that forms the attention probabilities (SDPA and flash kernels never do), so the
only one that can return them. `attention_to_image` is the attention the positions that
emit a target pay to each image token, averaged over heads and the chosen layers.
`relevancy` propagates gradient-weighted attention through the layers (Chefer et al.,
arXiv 2103.15679, as LVLM-Interpret uses it, arXiv 2404.03118).

Attentions are `[layers, heads, seq, seq]` with rows the querying position: the row of the
position that predicts answer token t is `answer_start + t - 1`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import PreTrainedModel


@contextmanager
def eager_attention(model: PreTrainedModel) -> Iterator[None]:
    """Within the block the model runs eager attention (and so can return attention probabilities).

    The switch is the model's own setting: fine for a worker that runs one forward at a time,
    which is how the engine runs them."""
    before = model.config._attn_implementation
    if before == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def upper_layers(n_layers: int) -> range:
    """The upper half of the layers: where attention localises best on both reference checkpoints
    (docs/benchmarks.md, "Which readout localises")."""
    return range(n_layers // 2, n_layers)


def attention_to_image(
    attentions: torch.Tensor, rows: Sequence[int], columns: Sequence[int], layers: Sequence[int]
) -> torch.Tensor:
    """`[columns]`: the mean over `layers`, heads and query `rows` of the attention paid to each of `columns`."""
    picked = attentions[list(layers)][:, :, list(rows)][:, :, :, list(columns)]  # [layers, heads, rows, columns]
    return picked.float().mean(dim=(0, 1, 2))


def relevancy(
    attentions: torch.Tensor, gradients: torch.Tensor, rows: Sequence[int], columns: Sequence[int]
) -> torch.Tensor:
    """`[columns]`: the relevance of each of `columns` for the query `rows` (averaged).

    ``R = I``; for every layer in order, ``R <- R + mean_heads(ReLU(dA * A)) R``, where dA is the
    gradient of the target's log-probability with respect to that layer's attention A.
    """
    seq = attentions.shape[-1]
    weighted = (gradients.float() * attentions.float()).clamp_min(0).mean(dim=1)  # [layers, seq, seq]
    relevance = torch.eye(seq, dtype=weighted.dtype, device=weighted.device)
    for layer in weighted:
        relevance = relevance + layer @ relevance
    return relevance[list(rows)][:, list(columns)].mean(dim=0)
