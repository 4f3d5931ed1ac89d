"""Patch similarity: how alike the image tokens' hidden states are to a target's (GLSim, arXiv 2508.19972)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def patch_similarity(
    states: torch.Tensor, image_positions: Sequence[int], target_positions: Sequence[int]
) -> torch.Tensor:
    """`[image positions]`: the cosine similarity of each image position's state (`states`: `[seq, hidden]`)
    with the mean state at `target_positions`, in [-1, 1]."""
    target = states[list(target_positions)].float().mean(dim=0, keepdim=True)
    return torch.nn.functional.cosine_similarity(states[list(image_positions)].float(), target, dim=-1)
