"""Gradient x input at the language model's input embeddings (a white-box baseline map).

`capture_input_embeds` swaps the embeddings the language model receives (text and image
features already merged by the family's forward) for a leaf tensor that requires grad, so a
backward stops there: the vision tower is never differentiated. `embedding_attributions`
then gives, per target, the gradient of its log-probability times those embeddings, summed
over the hidden dimension, at the image-token positions (signed: the caller picks the part).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray


@contextmanager
def capture_input_embeds(language_model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every call of `language_model` gets its `inputs_embeds` as a fresh leaf
    that requires grad; the leaves are appended to the yielded list, in call order."""
    leaves: list[torch.Tensor] = []

    def swap(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            raise ValueError("the language model was called without inputs_embeds: no embeddings to attribute to")
        leaf = embeds.detach().requires_grad_(True)
        leaves.append(leaf)
        return args, {**kwargs, "inputs_embeds": leaf}

    handle = language_model.register_forward_pre_hook(swap, with_kwargs=True)
    try:
        yield leaves
    finally:
        handle.remove()


def embedding_attributions(
    target_log_probs: Sequence[torch.Tensor], embeds: torch.Tensor, positions: Sequence[int]
) -> NDArray[np.float64]:
    """`[targets, positions]`: sum_d (d log p_target / d e_pd) * e_pd for each scalar in
    `target_log_probs`, all computed from one graph (one backward each, the graph kept between them).

    `embeds` is `[1, seq, d]` (a leaf from `capture_input_embeds`); `positions` index its sequence.
    """
    at = torch.as_tensor(list(positions), dtype=torch.long, device=embeds.device)
    rows = []
    for i, log_p in enumerate(target_log_probs):
        last = i == len(target_log_probs) - 1
        (grad,) = torch.autograd.grad(log_p, embeds, retain_graph=not last)
        rows.append((grad[0, at].float() * embeds[0, at].detach().float()).sum(dim=-1).double().cpu().numpy())
    return np.stack(rows) if rows else np.zeros((0, len(positions)))
