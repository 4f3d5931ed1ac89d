"""The `similarity` baseline (GLSim-style patch similarity): a planted state, and the map on
the reference model against an independent forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mllm_audit.explainers.methods import get as get_method
from mllm_audit.models.similarity import patch_similarity

from tests.conftest import held_out_sample


@pytest.mark.unit
def test_the_image_token_that_shares_the_targets_direction_is_the_peak():
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(10, 16, generator=generator)
    states[8] = 3.0 * states[4] + 0.01 * torch.randn(16, generator=generator)  # position 8 (the target) ~ image token 4
    states[9] = -states[2]  # a second target token pointing away from image token 2
    values = patch_similarity(states, [2, 3, 4, 5], [8])
    assert values.shape == (4,) and int(values.argmax()) == 2 and float(values[2]) == pytest.approx(1.0, abs=1e-3)
    both = patch_similarity(states, [2, 3, 4, 5], [8, 9])  # the mean of the two targets' states
    expected = torch.nn.functional.cosine_similarity(states[[2, 3, 4, 5]], (states[8] + states[9])[None] / 2)
    assert torch.allclose(both, expected) and (both >= -1).all() and (both <= 1).all()


@pytest.mark.integration
def test_the_similarity_map_is_the_last_layers_cosine_shifted_to_zero(reference_scorer):
    sample = held_out_sample("colour", 0)
    image = sample.scene.image
    scorer = reference_scorer
    audit = scorer.prepare(sample.prompt, sample.truth, (96, 96))
    targets = [[0], list(range(audit.n_tokens))]
    maps = get_method("similarity").heatmaps(scorer, audit, image, targets)
    # an independent path: the model's own hidden states, the cosine written out
    with torch.no_grad():
        last = scorer.model_outputs([(audit, image)], output_hidden_states=True).hidden_states[-1][0].double()
    positions = scorer.image_token_positions(audit)
    rows, cols = scorer.image_grid(audit, image)
    for target, m in zip(targets, maps):
        own = last[[audit.sequence.answer_start + t for t in target]].mean(0)
        cosine = (last[positions] @ own) / (last[positions].norm(dim=-1) * own.norm())
        shifted = (cosine - cosine.min()).numpy().reshape(rows, cols)
        heat = m["heatmap"]
        assert heat.shape == image.shape[:2] and heat.dtype == np.float32 and m["forward_passes"] == 1
        assert heat.min() == 0.0 and heat.max() == pytest.approx(1.0)
        # each 16-px cell of the 96-px image carries its token's value over the peak
        np.testing.assert_allclose(heat[8::16, 8::16], shifted / shifted.max(), atol=1e-5)
