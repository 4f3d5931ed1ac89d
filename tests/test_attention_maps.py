"""The `attention` and `relevancy` baselines: planted signals in scripted attentions, the
switch to eager attention, and localisation on both reference checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mllm_audit.explainers.faithfulness import pointing_game
from mllm_audit.explainers.methods import get as get_method
from mllm_audit.explainers.methods.attention import unit_scale
from mllm_audit.models.attention import attention_to_image, eager_attention, relevancy, upper_layers
from mllm_audit.models.loading import REFERENCE_MODEL_DIR, load_model
from mllm_audit.models.scorer import AttentionReadout, Scorer

from tests.conftest import held_out_sample

SEQ, IMAGE = 10, [2, 3, 4, 5]  # positions 2..5 are the image tokens


def uniform_attention(layers: int, heads: int = 2) -> torch.Tensor:
    """Causal, uniform over the visible positions: no position stands out."""
    causal = torch.tril(torch.ones(SEQ, SEQ))
    return (causal / causal.sum(-1, keepdim=True)).expand(layers, heads, SEQ, SEQ).clone()


@pytest.mark.unit
def test_attention_reads_the_emitting_row_in_the_upper_layers():
    attentions = uniform_attention(4)
    attentions[3, :, 8, 4] += 1.0  # the row that emits the target looks at image token 4, in an upper layer
    attentions[0, :, 8, 2] += 5.0  # a lower layer's stronger look elsewhere is not read
    attentions[3, :, 7, 5] += 5.0  # nor is another row's
    assert list(upper_layers(4)) == [2, 3] and list(upper_layers(1)) == [0]
    values = attention_to_image(attentions, [8], IMAGE, upper_layers(4))
    assert values.shape == (4,) and int(values.argmax()) == IMAGE.index(4)
    base = 1 / 9  # row 8 sees 9 positions
    assert float(values[IMAGE.index(4)]) == pytest.approx(base + 1.0 / 2)  # mean of two layers, one raised
    assert float(values[0]) == pytest.approx(base)


@pytest.mark.unit
def test_relevancy_follows_gradient_weighted_attention_through_the_layers():
    """Two layers: the emitting row relies on position 7 (layer 2), which relies on image token 3 (layer 1)."""
    attentions = uniform_attention(2, heads=1)
    gradients = torch.zeros_like(attentions)
    gradients[1, 0, 8, 7] = 2.0
    gradients[0, 0, 7, 3] = 4.0
    gradients[0, 0, 8, 5] = -4.0  # a negative contribution is clipped away
    values = relevancy(attentions, gradients, [8], IMAGE)
    # R = I + W1; R <- R + W2 R with W1[7, 3] = 4/8, W2[8, 7] = 2/9: R[8, 3] = (2/9) * (4/8)
    assert values.tolist() == pytest.approx([0.0, (2 / 9) * (4 / 8), 0.0, 0.0])


@pytest.mark.integration
def test_eager_attention_is_switched_for_the_block_only(reference_scorer):
    model = reference_scorer.model
    before = model.config._attn_implementation
    with eager_attention(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == before


@pytest.mark.unit
def test_the_combined_map_is_the_product_of_both_maps_scaled_to_one():
    attention = np.array([[0.2, 0.1, 0.0, 0.4], [0.0, 0.0, 0.0, 0.0]])
    relevancy = np.array([[1.0, 4.0, 2.0, -1.0], [3.0, 0.0, 1.0, 0.0]])
    product = get_method("attention+relevancy").combine(AttentionReadout(attention, relevancy))
    # row 0: (0.5, 0.25, 0, 1) * (0.25, 1, 0.5, 0): the peak is where both are high, not either alone
    assert product[0].tolist() == pytest.approx([0.125, 0.25, 0.0, 0.0])
    assert product[1].tolist() == [0.0] * 4  # no attention: nothing, and no division by zero
    assert unit_scale(np.array([[np.nan, 2.0]])).tolist() == [[0.0, 1.0]]


@pytest.mark.integration
@pytest.mark.parametrize("method", ["attention", "relevancy", "attention+relevancy"])
def test_attention_maps_point_at_the_named_object_on_both_checkpoints(reference_scorer, method):
    """Neither map reads image tokens through the LM head, so the checkpoint trained without the
    patch-word loss (where TAM fails) should not stop them localising."""
    npw = Scorer(load_model(REFERENCE_MODEL_DIR.parent / "weights-no-patch-words"))
    for scorer in (reference_scorer, npw):
        hits, n = 0, 10
        for seed in range(n):
            sample = held_out_sample("colour", seed)
            image = sample.scene.image
            audit = scorer.prepare(sample.prompt, sample.truth, (96, 96))
            with torch.no_grad():  # relevancy turns grad on for itself
                [m] = get_method(method).heatmaps(scorer, audit, image, [list(range(audit.n_tokens))])
            heat = m["heatmap"]
            assert heat.shape == image.shape[:2] and heat.dtype == np.float32
            assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
            assert m["forward_passes"] == (1 if method == "attention" else 2)
            hits += pointing_game(heat, sample.target.mask)
        assert hits / n >= 0.8, f"{method} pointing game {hits}/{n} on {scorer.loaded.path.name}"
    assert all(p.grad is None for p in npw.model.parameters())
