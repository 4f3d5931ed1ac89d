"""White-box token maps: TAM's building blocks, ARC's RBO, MSEA's views, and the maps on real models."""

from __future__ import annotations

import numpy as np
import pytest
from mllm_audit.explainers import arc, msea, tam
from mllm_audit.explainers.faithfulness import pointing_game
from mllm_audit.explainers.methods import WHITE_BOX as METHODS
from mllm_audit.explainers.methods import get as get_method
from mllm_audit.explainers.methods.token_maps import TokenMap
from mllm_audit.explainers.request import AuditRequest
from mllm_audit.explainers.token_maps import MapVariant, TokenMapParams
from mllm_audit.models.loading import load_model
from mllm_audit.models.scorer import Scorer

from tests.conftest import held_out_sample

# ---------------------------------------------------------------- TAM building blocks


@pytest.mark.unit
def test_eci_scale_is_the_least_squares_fit():
    rng = np.random.default_rng(0)
    target = rng.random((6, 7))
    contexts = rng.random((3, 6, 7))
    r = np.array([0.5, 2.0, 1.5])
    interference = np.tensordot(r / r.sum(), contexts, axes=1)
    fit = np.linalg.lstsq(interference.reshape(-1, 1), target.ravel(), rcond=None)[0][0]
    assert tam.eci_scale(target, interference) == pytest.approx(fit, rel=1e-10)
    corrected, s = tam.eci(target, contexts, r)
    assert s == pytest.approx(fit, rel=1e-10)
    assert np.allclose(corrected, np.maximum(target - fit * interference, 0))
    # ARC weights: coherent contexts (rho 1) are kept, rho 0 everywhere is plain TAM
    kept, _ = tam.eci(target, contexts, r, coherence=np.ones(3))
    assert np.allclose(kept, target)
    same, _ = tam.eci(target, contexts, r, coherence=np.zeros(3))
    assert np.allclose(same, corrected)
    # no context or no relevance: nothing is removed
    alone, s0 = tam.eci(target, contexts[:0], r[:0])
    assert s0 == 0 and np.allclose(alone, target)


@pytest.mark.unit
def test_rank_gaussian_filter():
    assert np.allclose(tam.rank_gaussian_filter(np.full((4, 5), 2.5)), 2.5)  # constant windows stay
    assert np.all(tam.rank_gaussian_filter(np.zeros((3, 3))) == 0)  # mean <= 0 gives 0
    spike = np.zeros((7, 7))
    spike[3, 3] = 9.0  # an isolated spike is noise: the filter flattens it towards the window's median
    out = tam.rank_gaussian_filter(spike)
    assert out.shape == spike.shape and np.all(np.isfinite(out)) and out.max() < 9.0
    block = np.zeros((8, 8))
    block[2:6, 2:6] = 1.0  # a solid object survives
    assert tam.rank_gaussian_filter(block)[3:5, 3:5].min() == pytest.approx(1.0)


@pytest.mark.unit
def test_view_box_follows_the_centre_crop(reference_scorer):
    """The reference LLaVA's processor resizes the shortest edge and centre-crops."""
    assert reference_scorer.view_box((96, 96)) == (0, 0, 96, 96)
    assert reference_scorer.view_box((60, 100)) == (20, 0, 80, 60)  # the central square of a wide image


# ---------------------------------------------------------------- ARC


@pytest.mark.unit
def test_rank_biased_overlap():
    a = np.arange(50)
    assert arc.rank_biased_overlap(a, a) == pytest.approx(1.0)
    assert arc.rank_biased_overlap(a, a + 50) == pytest.approx(0.0)
    half = np.concatenate([a[:25], a[25:] + 100])  # same top half, different tail
    swapped = a[::-1]  # same items, opposite order
    for b in (half, swapped):
        assert 0.0 < arc.rank_biased_overlap(a, b) < 1.0
    assert arc.rank_biased_overlap(a, half) > arc.rank_biased_overlap(a, swapped)  # top-heavy
    assert arc.rank_biased_overlap(a, a, p=0.5) == pytest.approx(1.0)
    # the vectorised form equals the formula term by term
    rng = np.random.default_rng(1)
    x, y, p, k = rng.permutation(80)[:20], rng.permutation(80)[:20], 0.8, 20
    direct = sum(p ** (d - 1) * len(set(x[:d]) & set(y[:d])) / d for d in range(1, k + 1)) * (1 - p) / (1 - p**k)
    assert arc.rank_biased_overlap(x, y, p=p) == pytest.approx(direct)


@pytest.mark.unit
def test_top_k_rankings_clip_to_the_vocabulary():
    logits = np.array([[0.1, 3.0, 2.0], [5.0, 5.0, -1.0]])
    assert arc.top_k_rankings(logits, 50).tolist() == [[1, 2, 0], [0, 1, 2]]
    x = np.random.default_rng(0).normal(size=(5, 300))
    assert np.array_equal(arc.top_k_rankings(x, 20), np.argsort(-x, axis=-1)[:, :20])


# ---------------------------------------------------------------- MSEA views


@pytest.mark.unit
def test_views_cover_the_image_and_map_back():
    img = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    views = msea.make_views(img, (0.5, 1.0, 1.5, 2.0))
    assert [v.scale for v in views].count(1.5) == 4 and [v.scale for v in views].count(2.0) == 9
    assert all(v.image.shape == img.shape for v in views)
    stitch = msea.ScaleStitcher(img.shape[:2])
    for v in views:
        stitch.add(v, np.ones(img.shape[:2]), np.ones(img.shape[:2]))
    for s, m in stitch.scale_maps().items():
        assert np.allclose(m, 1.0, atol=1e-5), s  # every pixel seen at every scale


class _RednessScorer:
    """A model-free white-box scorer: the logit of class 1 at image token (r, c) is the redness of
    that patch of the (resized) view, so every view's map marks where red things are."""

    GRID, SIDE = 8, 64

    def __init__(self):
        self.calls = 0

    def special_token_ids(self):
        return frozenset({0})

    def token_texts(self, ids):
        return ["w"] * len(ids)

    def view_box(self, image_shape):
        h, w = image_shape
        return 0, 0, w, h  # the whole image, as a processor that resizes without cropping

    def prepare(self, prompt, answer, image_size):
        from mllm_audit.models.scorer import Audit
        from mllm_audit.models.sequence import AnswerTokens, TokenizedSequence

        ids = [0] + [4] * self.GRID**2 + [2, 3] + [1]
        return Audit(
            prompt, answer, image_size, TokenizedSequence(ids, len(ids) - 1, AnswerTokens([1], [(0, 3)], ["red"]))
        )

    def image_token_positions(self, audit):
        return list(range(1, 1 + self.GRID**2))

    def image_grid(self, audit, image):
        return self.GRID, self.GRID

    def white_box(self, pairs):
        import torch
        from mllm_audit.models.scorer import WhiteBoxOutput
        from PIL import Image

        self.calls += 1
        outs = []
        for audit, image in pairs:
            view = np.asarray(Image.fromarray(image).resize((self.SIDE, self.SIDE)), dtype=np.float32)
            red = view[..., 0] - view[..., 1:].mean(axis=-1)
            patch = self.SIDE // self.GRID
            grid = red.reshape(self.GRID, patch, self.GRID, patch).mean(axis=(1, 3))
            logits = torch.zeros(len(audit.sequence.input_ids), 5)
            logits[1 : 1 + self.GRID**2, 1] = torch.from_numpy(grid.ravel() / 255)
            outs.append(WhiteBoxOutput(logits))
        return outs

    def input_gradients(self, audit, image, targets):
        """Scripted gradient x input: the redness of each patch, for every target."""
        logits = self.white_box([(audit, image)])[0].logits
        self.calls -= 1  # not a white-box forward of the token maps
        return np.stack([logits[1 : 1 + self.GRID**2, 1].double().numpy()] * len(targets))

    def attention_maps(self, audit, image, targets, with_relevancy=False):
        """Scripted attention and relevancy: every target looks at the red patches."""
        from mllm_audit.models.scorer import AttentionReadout

        red = self.input_gradients(audit, image, targets)
        return AttentionReadout(red, red**2 if with_relevancy else None)

    def hidden_similarity(self, audit, image, targets):
        """Scripted cosine similarity: in (-1, 1), highest at the red patches, negative elsewhere."""
        return np.tanh(self.input_gradients(audit, image, targets)) - 0.2


@pytest.mark.unit
def test_agreement_weights_silence_the_scale_that_agrees_with_no_other():
    rng = np.random.default_rng(0)
    blob = np.zeros((12, 12))
    blob[3:6, 7:10] = 1.0
    agreeing = [blob + 0.05 * rng.random((12, 12)) for _ in range(3)]
    odd = np.zeros((12, 12))
    odd[8:11, 0:3] = 1.0  # a view out of the model's distribution marks somewhere else
    weights = msea.agreement_weights([*agreeing, odd])
    assert weights[:3].min() > 0.8 and weights[3] == 0.0  # the others' mean includes the odd map
    assert msea.agreement_weights([blob, odd]).tolist() == [1.0, 1.0]  # too few maps to judge
    assert msea.agreement_weights([blob, odd, np.zeros((12, 12))]).tolist() == [1.0, 1.0, 1.0]  # none agrees


@pytest.mark.unit
def test_msea_with_agreement_weighting_reports_it_and_still_maps_the_right_place():
    scorer = _RednessScorer()
    image = np.full((72, 120, 3), 120, dtype=np.uint8)
    image[10:30, 80:104] = (230, 30, 30)
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[10:30, 80:104] = True
    audit = scorer.prepare("What color?", "red", (120, 72))
    weighted = TokenMap("msea", "", MapVariant(multiscale=True), TokenMapParams(view_weighting="agreement"))
    heat = weighted.heatmaps(scorer, audit, image, [[0]])[0]["heatmap"]
    assert pointing_game(heat, mask) and heat[mask].mean() > 4 * heat[~mask].mean()
    request = AuditRequest(image, "What color?", "red", method="msea")
    assert weighted.params(request)["view_weighting"] == "agreement"
    assert get_method("msea").params(request)["view_weighting"] == "equal"


@pytest.mark.unit
def test_every_method_maps_back_to_the_right_place_model_free():
    scorer = _RednessScorer()
    image = np.full((72, 120, 3), 120, dtype=np.uint8)
    image[10:30, 80:104] = (230, 30, 30)  # a red box off centre, in a non-square image
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[10:30, 80:104] = True
    audit = scorer.prepare("What color?", "red", (120, 72))
    for method in METHODS:
        m = get_method(method).heatmaps(scorer, audit, image, [[0]])[0]
        heat = m["heatmap"]
        assert heat.shape == (72, 120) and pointing_game(heat, mask), method
        assert heat[mask].mean() > 4 * heat[~mask].mean(), method
    assert scorer.calls == 1 + 1 + 2 + 2  # tam, arc, then msea / msea+arc: 15 views in 8-view calls


# ---------------------------------------------------------------- on models


@pytest.mark.integration
def test_all_methods_on_a_tiny_random_llava_with_a_non_square_image(tiny_llava_dir):
    scorer = Scorer(load_model(tiny_llava_dir))
    image = np.random.default_rng(3).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    audit = scorer.prepare("Describe the image.", "a red circle and a blue square.", (80, 50))
    n = audit.n_tokens
    targets = [[0], [1, 2], list(range(n))]
    for method in METHODS:
        maps = get_method(method).heatmaps(scorer, audit, image, targets)
        assert len(maps) == len(targets)
        for m in maps:
            heat = m["heatmap"]
            assert heat.shape == (50, 80) and heat.dtype == np.float32
            assert np.all(np.isfinite(heat)) and heat.min() >= 0 and heat.max() <= 1
            # grad and relevancy: a forward, then a backward per target
            passes = 1 + len(targets) if method in ("grad", "relevancy", "attention+relevancy") else 1
            assert m["forward_passes"] == (15 if method.startswith("msea") else passes)
            assert m["model_calls"] == (2 if method.startswith("msea") else 1)  # 8 views per call
            assert isinstance(m["context"], list) and len(m["context"]) <= 10
            for c in m["context"]:
                assert {"index", "source", "text", "score"} <= set(c) and np.isfinite(c["score"])
        if not method.startswith("msea"):  # one view: the model never saw the sides of the centre crop
            assert maps[2]["heatmap"][:, :10].max() == 0 and maps[2]["heatmap"][:, -10:].max() == 0
        # later targets see earlier answer tokens as context; each token on its own sees those before it
        assert all(c["index"] < 1 for c in maps[1]["context"] if c["source"] == "answer")
        assert set(maps[2]["token_context"]) == set(range(n))
        for t, context in maps[2]["token_context"].items():
            assert all(c["index"] < t for c in context if c["source"] == "answer")
    with pytest.raises(ValueError):
        get_method("tam").heatmaps(scorer, audit, image, [[n]])


@pytest.mark.integration
def test_tam_of_a_colour_answer_points_at_the_named_object(reference_scorer):
    """The key claim, on the trained reference model: 'What color is the circle?' -> the circle."""
    hits, n = 0, 50
    for seed in range(n):
        sample = held_out_sample("colour", seed)
        audit = reference_scorer.prepare(sample.prompt, sample.truth, (96, 96))
        image = sample.scene.image
        heat = get_method("tam").heatmaps(reference_scorer, audit, image, [list(range(audit.n_tokens))])[0]["heatmap"]
        assert heat.shape == image.shape[:2] and np.all(np.isfinite(heat))
        assert heat.max() > 0  # an all-zero map would "point" everywhere
        hits += pointing_game(heat, sample.target.mask)
    assert hits / n >= 0.8, f"pointing game {hits}/{n}"
