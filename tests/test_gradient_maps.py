"""The `grad` baseline (gradient x input at the image-token embeddings): a planted signal, the
layout on the real models, and localisation on the trained reference model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mllm_audit.explainers.faithfulness import pointing_game
from mllm_audit.explainers.gradient_maps import keep_part
from mllm_audit.explainers.methods import get as get_method
from mllm_audit.models.gradients import capture_input_embeds, embedding_attributions

from tests.conftest import held_out_sample


@pytest.mark.unit
def test_only_the_planted_token_gets_attribution():
    """A scripted 'model' whose log-probability reads one image token's embedding only."""
    torch.manual_seed(0)
    seq, d, planted = 12, 8, 7
    image_positions = list(range(2, 10))  # tokens 2..9 are the image; 0, 1, 10, 11 are text
    readout = torch.randn(d)

    class ReadsOneToken(torch.nn.Module):
        def forward(self, inputs_embeds):
            return torch.nn.functional.logsigmoid(inputs_embeds[0, planted] @ readout + inputs_embeds[0, 0].sum())

    model = ReadsOneToken()
    embeds = torch.randn(1, seq, d)
    with capture_input_embeds(model) as leaves:
        log_p = model(inputs_embeds=embeds)
        other = model(inputs_embeds=embeds)  # a second call gets its own leaf
        values = embedding_attributions([log_p, 2 * log_p], leaves[0], image_positions)
    assert len(leaves) == 2 and other.requires_grad
    assert values.shape == (2, len(image_positions))
    hit = image_positions.index(planted)
    assert np.count_nonzero(values[0]) == 1 and values[0, hit] != 0  # the text token 0 is not an image token
    # the closed form: d logsigmoid(z)/dz = sigmoid(-z), times readout . e
    z = embeds[0, planted] @ readout + embeds[0, 0].sum()
    expected = torch.sigmoid(-z) * (readout @ embeds[0, planted])
    assert values[0, hit] == pytest.approx(float(expected), rel=1e-5)
    assert np.allclose(values[1], 2 * values[0])  # the graph is kept between targets
    assert np.argmax(keep_part(values[0], "abs")) == hit


@pytest.mark.unit
def test_keep_part():
    v = np.array([-3.0, 0.5, 2.0])
    assert keep_part(v, "positive").tolist() == [0.0, 0.5, 2.0]
    assert keep_part(v, "abs").tolist() == [3.0, 0.5, 2.0]


@pytest.mark.integration
def test_grad_of_a_colour_answer_points_at_the_named_object(reference_scorer):
    hits, n = 0, 10
    for seed in range(n):
        sample = held_out_sample("colour", seed)
        image = sample.scene.image
        audit = reference_scorer.prepare(sample.prompt, sample.truth, (96, 96))
        [m] = get_method("grad").heatmaps(reference_scorer, audit, image, [list(range(audit.n_tokens))])
        heat = m["heatmap"]
        assert heat.shape == image.shape[:2] and heat.dtype == np.float32
        assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
        assert heat.std() > 0.01  # not flat
        assert m["forward_passes"] == 2  # one forward, one backward
        hits += pointing_game(heat, sample.target.mask)
    assert hits / n >= 0.7, f"pointing game {hits}/{n}"


@pytest.mark.integration
def test_grad_runs_under_no_grad_and_leaves_no_gradients(reference_scorer):
    """The service may call it where autograd is off; the model's parameters stay gradient-free."""
    sample = held_out_sample("colour", 0)
    audit = reference_scorer.prepare(sample.prompt, sample.truth, (96, 96))
    with torch.no_grad():
        values = reference_scorer.input_gradients(audit, sample.scene.image, [[0], list(range(audit.n_tokens))])
    assert values.shape == (2, len(reference_scorer.image_token_positions(audit))) and np.isfinite(values).all()
    assert all(p.grad is None for p in reference_scorer.model.parameters())
    with pytest.raises(ValueError):
        reference_scorer.input_gradients(audit, sample.scene.image, [[audit.n_tokens]])
