"""Regions, masking, metrics and reliance on scripted inputs (no model)."""

from __future__ import annotations

import numpy as np
import pytest
from mllm_audit.explainers.eagle import fast_search, heatmap_from_regions
from mllm_audit.explainers.faithfulness import (
    RankingCurves,
    auc,
    aucs_within_end_points,
    insertion_deletion_from_ranking,
    pixel_ranking_curves,
    pointing_game,
)
from mllm_audit.explainers.masking import baseline_image, compose
from mllm_audit.explainers.regions import region_bbox, region_masks, rle_decode, rle_encode, superpixel_regions
from mllm_audit.explainers.reliance import (
    NOT_VISUAL,
    assess_tokens,
    black_probs,
    is_visual_claim,
    reliance_score,
    summarize,
    visual_claims,
    visual_reliance,
)
from mllm_audit.explainers.results import ClaimResult

from tests.test_eagle import drive, make_audit

pytestmark = pytest.mark.unit


def shapes_image(h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 235, dtype=np.uint8)
    img[8:30, 10:34] = (220, 30, 30)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - 44) ** 2 + (xx - 56) ** 2 < 12**2] = (30, 60, 210)
    noise = rng.integers(-6, 7, size=img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- regions


def test_superpixels_cover_the_image_and_are_deterministic():
    img = shapes_image()
    labels = superpixel_regions(img, n_regions=32)
    again = superpixel_regions(img, n_regions=32)
    assert labels.shape == img.shape[:2] and labels.dtype == np.int32
    assert np.array_equal(labels, again)
    k = labels.max() + 1
    assert np.array_equal(np.unique(labels), np.arange(k))  # consecutive ids, every pixel labelled
    assert 16 <= k <= 48
    masks = region_masks(labels)
    assert masks.shape == (k, *img.shape[:2])
    assert np.all(masks.sum(axis=0) == 1)  # a partition


def test_superpixels_degenerate_sizes():
    img = shapes_image(8, 8)
    assert superpixel_regions(img, n_regions=1).max() == 0
    labels = superpixel_regions(img, n_regions=200)  # more regions asked than sensible
    assert labels.shape == (8, 8) and labels.min() == 0
    with pytest.raises(ValueError):
        superpixel_regions(img[:, :, 0])


def test_region_bbox_is_exclusive():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    assert region_bbox(mask) == [3, 2, 9, 5]
    assert region_bbox(np.zeros((4, 4), dtype=bool)) == [0, 0, 0, 0]


@pytest.mark.parametrize("seed", range(4))
def test_rle_round_trip(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((7, 9)) < 0.4
    if seed == 1:
        mask[0, 0] = True  # starts with a set pixel: leading zero-length run
    rle = rle_encode(mask)
    assert rle["encoding"] == "rle" and rle["size"] == [7, 9] and rle["order"] == "row-major"
    assert sum(rle["counts"]) == 63
    assert np.array_equal(rle_decode(rle), mask)
    if mask[0, 0]:
        assert rle["counts"][0] == 0


def test_rle_known_counts_and_extremes():
    mask = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    assert rle_encode(mask)["counts"] == [1, 3, 2]  # row-major runs: 0 | 1 1 1 | 0 0
    for full in (np.zeros((3, 4), bool), np.ones((3, 4), bool)):
        assert np.array_equal(rle_decode(rle_encode(full)), full)
    col = {"encoding": "rle", "size": [2, 3], "order": "column-major", "counts": [1, 2, 2, 1]}
    assert np.array_equal(rle_decode(col), np.array([[0, 1, 0], [1, 0, 1]], dtype=bool))
    with pytest.raises(ValueError):
        rle_decode({"size": [2, 2], "counts": [1, 1]})


def test_superpixel_search_finds_the_object():
    """End to end without a model: superpixels, fast EAGLE, heatmap, pointing game."""
    img = shapes_image()
    square = np.zeros(img.shape[:2], dtype=bool)
    square[8:30, 10:34] = True  # the red square the scripted "model" looks at

    def score(image: np.ndarray) -> np.ndarray:
        showing = (image[square] == img[square]).all(axis=-1).mean()
        return np.log(np.array([0.05 + 0.9 * showing]))

    labels = superpixel_regions(img, n_regions=32)
    gen = fast_search(img, region_masks(labels), token_indices=[0])
    try:
        batch = next(gen)
        while True:
            batch = gen.send(np.stack([score(np.asarray(im)) for im in batch]))
    except StopIteration as stop:
        result = stop.value
    heat = heatmap_from_regions(labels, result.region_scores)
    assert pointing_game(heat, [10, 8, 34, 30])
    top = region_masks(labels)[result.ranking[0]]
    assert (top & square).sum() > 0.5 * top.sum()
    assert result.insertion_auc() > 0.6 > 0.4 > result.deletion_auc()
    assert result.forward_passes < (labels.max() + 1) * (labels.max() + 2) / 2


# ---------------------------------------------------------------- masking


def test_baselines_and_compose():
    img = shapes_image(16, 20)
    assert not baseline_image(img, "black").any()
    mean = baseline_image(img, "mean")
    assert mean.shape == img.shape and len(np.unique(mean.reshape(-1, 3), axis=0)) == 1
    blur = baseline_image(img, "blur")
    assert blur.shape == img.shape and blur.dtype == np.uint8 and blur.std() < img.std()
    with pytest.raises(ValueError):
        baseline_image(img, "noise")
    keep = np.zeros(img.shape[:2], dtype=bool)
    keep[:, :10] = True
    out = compose(img, mean, keep)
    assert out.dtype == np.uint8
    assert np.array_equal(out[:, :10], img[:, :10]) and np.array_equal(out[:, 10:], mean[:, 10:])


# ---------------------------------------------------------------- metrics


def test_auc_trapezoid():
    assert auc([0, 1], [0, 1]) == pytest.approx(0.5)
    assert auc([0, 0.5, 1], [1, 1, 0]) == pytest.approx(0.75)
    assert auc([0], [1]) == 0.0
    with pytest.raises(ValueError):
        auc([1, 0], [0, 1])
    ins, dele = insertion_deletion_from_ranking(
        np.array([0, 0.5, 1]), np.array([[0, 1], [1, 1], [1, 1]]), np.array([[1, 1], [0, 1], [0, 1]]), token_indices=[0]
    )
    assert ins == pytest.approx(0.75) and dele == pytest.approx(0.25)


def test_within_end_points_cuts_only_what_passes_the_end_points():
    areas = np.linspace(0.0, 1.0, 5)
    # token 0 overshoots the whole image's probability on the way in and undershoots the
    # blank image's on the way out; token 1 (not a target) would change the means if read
    insertion = np.array([[0.1, 0.0], [0.9, 0.0], [0.9, 0.0], [0.5, 0.0], [0.5, 0.0]])
    deletion = np.array([[0.5, 1.0], [0.3, 1.0], [0.0, 1.0], [0.0, 1.0], [0.2, 1.0]])
    curves = RankingCurves(areas, insertion, deletion, [0])
    plain_ins, plain_del = insertion_deletion_from_ranking(areas, insertion, deletion, [0])
    ins, dele = aucs_within_end_points(curves)
    assert ins == pytest.approx(np.trapezoid([0.1, 0.5, 0.5, 0.5, 0.5], areas))
    assert dele == pytest.approx(np.trapezoid([0.5, 0.3, 0.2, 0.2, 0.2], areas))
    assert ins < plain_ins and dele > plain_del
    # curves inside the end points keep their AUCs
    inside = RankingCurves(areas, np.sort(insertion, axis=0), np.sort(deletion, axis=0)[::-1], [0])
    assert aucs_within_end_points(inside) == pytest.approx(
        insertion_deletion_from_ranking(areas, inside.insertion, inside.deletion, [0])
    )


def test_pointing_game_rule():
    heat = np.zeros((10, 10))
    heat[2, 3] = 1.0
    heat[7, 7] = 1.0  # two equal maxima: a hit if either is inside
    heat[5, 5] = 0.5
    assert pointing_game(heat, [3, 2, 4, 3])  # box [x0, y0, x1, y1], exclusive end
    assert not pointing_game(heat, [4, 2, 6, 6])
    mask = np.zeros((10, 10), dtype=bool)
    mask[7, 7] = True
    assert pointing_game(heat, mask)
    mask[:] = False
    mask[5, 5] = True
    assert not pointing_game(heat, mask)
    assert not pointing_game(heat, np.zeros((10, 10), dtype=bool))


def test_pixel_ranking_curves_prefers_the_true_map():
    audit = make_audit(rows=4, cols=4, seed=4)
    true_map = audit.weights[0][audit.labels]
    sizes = []
    good, _n_images, yields = drive(
        pixel_ranking_curves(audit.image, true_map, token_indices=[0], steps=16),
        audit,
        on_batch=lambda b: sizes.append(len(b)),
    )
    bad, _, _ = drive(pixel_ranking_curves(audit.image, -true_map, token_indices=[0], steps=16), audit)
    assert yields == 1 and sizes == [32]  # 2 * steps images in one batch
    ins, dele, curves = good
    assert curves.areas[0] == 0 and curves.areas[-1] == 1 and len(curves.areas) == 17
    assert np.allclose(curves.insertion[0], curves.deletion[-1])  # both the baseline image
    assert ins > bad[0] and dele < bad[1]
    # 16 equal-area steps on a 4x4 grid of equal regions = exact region steps
    w = np.sort(audit.weights[0])[::-1]
    expect = audit.bias[0] + np.concatenate(([0.0], np.cumsum(w)))
    assert np.allclose(curves.insertion[::1, 0][[0, 1, 16]], expect[[0, 1, 16]])


def test_pixel_ranking_curves_resizes_a_small_heatmap():
    audit = make_audit(rows=2, cols=2, cell=8)
    small = audit.weights[0].reshape(2, 2)
    (ins, dele, curves), n, _ = drive(pixel_ranking_curves(audit.image, small, steps=64), audit)
    assert n == 128 and curves.insertion.shape == (65, 2)
    assert ins > dele


# ---------------------------------------------------------------- reliance and risk


def test_not_visual_rule():
    for text in ("the", " The", "\u2581the", "\u0120is", ".", ",", " ", "", "of", "'s", "image", "!"):
        assert not is_visual_claim(text), text
    for text in ("circle", "\u2581circle", "red", "3", "two", "left", "above", "yes", "No", "not", "circ"):
        assert is_visual_claim(text), text


def test_a_content_word_insensitive_to_the_image_rests_on_language():
    texts = ["the", "circle", "red"]
    p_full = np.array([0.9, 0.92, 0.98])
    p_blank = np.array([0.9, 0.92, 0.21])
    the, circle, red = assess_tokens(texts, p_full, p_blank)
    assert the.risk_label == NOT_VISUAL and the.risk_score == 0.0
    assert circle.visual_reliance == 0.0 and circle.language_reliance == 1.0 and circle.risk_label == "low"
    assert red.visual_reliance > 0.7
    contradicted = assess_tokens(["dog"], np.array([0.05]), np.array([0.6]))[0]  # the image argues against it
    assert contradicted.visual_reliance == 0.0


def test_summary_takes_the_worst_claim():
    tokens = assess_tokens(["red", "circle", "and", "blue", "square"], np.full(5, 0.9), np.full(5, 0.1))
    claims = [
        ClaimResult(0, "object", 0, 10, "red circle", [0, 1], 0.02, "low", {"confidence": -0.01}),
        ClaimResult(1, "object", 15, 26, "blue square", [3, 4], 0.8, "high", {"confidence": -1.2}),
    ]
    summary = summarize(tokens, claims)
    assert (summary.risk_label, summary.risk_score, summary.claims, summary.flagged_claims) == ("high", 0.8, 2, 1)
    assert summary.expected_hallucinations == pytest.approx(0.82)
    assert summarize(assess_tokens(["the", "."], np.array([0.5, 0.5]), np.array([0.5, 0.5]))).risk_label == NOT_VISUAL


def test_reliance_score_and_curve_term():
    areas = np.array([0.0, 0.5, 1.0])
    curve = np.array([[0.1, 0.9], [0.9, 0.9], [0.9, 0.9]])  # token 0 needs the image, token 1 does not
    score = reliance_score(areas, curve)
    assert score == pytest.approx([0.7 - 0.1, 0.0])
    vis = visual_reliance(np.array([0.9, 0.9]), np.array([0.1, 0.9]), areas, curve)
    assert vis == pytest.approx([0.5 * 8 / 9 + 0.5 * 0.6 / 0.9, 0.0])  # w * contrast + (1 - w) * I / max c
    cheap = visual_reliance(np.array([0.9, 0.9]), np.array([0.1, 0.9]))
    assert cheap == pytest.approx([8 / 9, 0.0])


def test_black_probs_generator():
    audit = make_audit(rows=2, cols=2)
    p_blank, n, yields = drive(black_probs(audit.image), audit)
    assert n == 1 and yields == 1
    assert p_blank == pytest.approx(audit.bias)  # nothing of the image is left


def test_word_pieces_share_their_words_verdict():
    # "an island." as a tokenizer might split it: "an" | " is" | "land" | "."
    answer, spans = "an island.", [(0, 2), (2, 5), (5, 9), (9, 10)]
    assert visual_claims(answer, spans) == [False, True, True, False]
    # a token spanning a function word and a content word claims what the content word claims
    assert visual_claims("it's red", [(0, 2), (2, 4), (4, 8)]) == [False, False, True]
    assert visual_claims("a dog", [(0, 5)]) == [True]
    tokens = assess_tokens(
        ["an", " is", "land", "."], np.full(4, 0.5), np.full(4, 0.5), visual=visual_claims(answer, spans)
    )
    assert [t.risk_label for t in tokens] == ["not_visual", "low", "low", "not_visual"]


@pytest.mark.unit
@pytest.mark.parametrize("scene", ["checkerboard", "flat", "photo-like"])
def test_the_region_count_is_the_one_asked_for(scene):
    # SLIC's count is a hint: 16 asked on a checkerboard gave 3; the service must return 16 +- 10 %
    h, w = 96, 128
    yy, xx = np.mgrid[0:h, 0:w]
    if scene == "checkerboard":
        image = np.repeat((((yy // 24) + (xx // 32)) % 2 * 255).astype(np.uint8)[..., None], 3, axis=2)
    elif scene == "flat":
        image = np.full((h, w, 3), 128, dtype=np.uint8)
    else:  # smooth gradients, sensor noise and a few sharp-edged shapes
        rng = np.random.default_rng(4)
        photo = np.stack([yy / h * 200, xx / w * 200, (yy + xx) / (h + w) * 255], axis=-1) + rng.normal(
            0, 12, (h, w, 3)
        )
        photo[20:50, 30:70] = (220, 40, 40)
        photo[(yy - 70) ** 2 + (xx - 95) ** 2 < 225] = (40, 80, 225)
        image = np.clip(photo, 0, 255).astype(np.uint8)
    for asked in (16, 32, 64):
        labels = superpixel_regions(image, asked)
        ids = np.unique(labels)
        assert abs(len(ids) - asked) <= 0.1 * asked, (scene, asked, len(ids))
        assert list(ids) == list(range(len(ids)))  # consecutive: id == row of region_masks
