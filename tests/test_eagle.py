"""EAGLE searches on scripted scores: a toy world where each region's weight is known."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from mllm_audit.explainers.eagle import (
    EagleResult,
    fast_search,
    greedy_search,
    heatmap_from_regions,
    objective,
    scores_from_gains,
)
from mllm_audit.explainers.regions import region_masks

pytestmark = pytest.mark.unit

# ---------------------------------------------------------------- toy world (also used by test_engine)


def grid_labels(h: int, w: int, rows: int, cols: int) -> np.ndarray:
    """Regions as a rows x cols grid of equal cells."""
    r = np.minimum(np.arange(h) * rows // h, rows - 1)
    c = np.minimum(np.arange(w) * cols // w, cols - 1)
    return (r[:, None] * cols + c[None, :]).astype(np.int32)


@dataclass
class ToyAudit:
    """p_t(image) = bias_t + sum_r weights[t, r] * (fraction of region r still showing)."""

    image: np.ndarray
    labels: np.ndarray
    weights: np.ndarray  # [T, K]
    bias: np.ndarray  # [T]
    sharp: float = 0.0  # > 0: squash through a sigmoid, so regions interact

    @property
    def masks(self) -> np.ndarray:
        return region_masks(self.labels)


def make_audit(
    rows: int = 4, cols: int = 4, n_tokens: int = 2, seed: int = 0, sharp: float = 0.0, cell: int = 4
) -> ToyAudit:
    rng = np.random.default_rng(seed)
    h, w = rows * cell, cols * cell
    image = rng.integers(1, 256, size=(h, w, 3), dtype=np.uint8)  # no black pixel: black = removed
    labels = grid_labels(h, w, rows, cols)
    k = rows * cols
    raw = rng.permutation(k).astype(np.float64) + 1.0  # distinct weights: one true ranking
    weights = np.stack([rng.permutation(raw) for _ in range(n_tokens)])
    weights = 0.9 * weights / weights.sum(axis=1, keepdims=True)
    return ToyAudit(image, labels, weights, np.full(n_tokens, 0.05), sharp)


def toy_logp(audit: ToyAudit, image: np.ndarray) -> np.ndarray:
    showing = (image == audit.image).all(axis=-1).ravel()
    k = audit.weights.shape[1]
    area = np.bincount(audit.labels.ravel(), minlength=k)
    frac = np.bincount(audit.labels.ravel(), weights=showing, minlength=k) / area
    if audit.sharp:
        p = 1.0 / (1.0 + np.exp(-audit.sharp * (audit.weights @ frac - 0.45)))
    else:
        p = audit.bias + audit.weights @ frac
    return np.log(np.clip(p, 1e-12, 1.0))


def drive(gen, audit: ToyAudit, on_batch=None):
    """Run a generator by hand: returns (result, images scored, number of yields)."""
    images = yields = 0
    try:
        batch = next(gen)
        while True:
            images += len(batch)
            yields += 1
            if on_batch:
                on_batch(batch)
            batch = gen.send(np.stack([toy_logp(audit, im) for im in batch]))
    except StopIteration as stop:
        return stop.value, images, yields


def expected_ranking(audit: ToyAudit, token: int) -> list[int]:
    return [int(v) for v in np.argsort(-audit.weights[token], kind="stable")]


# ---------------------------------------------------------------- objective


def test_objective_formula():
    keep = np.log(np.array([[0.8, 0.2], [0.5, 0.5]]))
    remove = np.log(np.array([[0.1, 0.4], [0.5, 0.5]]))
    f = objective(keep, remove)
    assert f == pytest.approx([((0.8 + 0.9) + (0.2 + 0.6)) / 2, 1.0])
    assert objective(keep[0], remove[0], token_indices=[1]) == pytest.approx(0.8)
    assert objective(keep[0], remove[0], lam1=2.0, lam2=0.0, token_indices=[0]) == pytest.approx(1.6)


# ---------------------------------------------------------------- greedy


def test_greedy_recovers_additive_ranking_with_exact_cost():
    audit = make_audit(rows=4, cols=4)
    k = 16
    first: list = []
    result, images, yields = drive(
        greedy_search(audit.image, audit.masks, token_indices=[0]),
        audit,
        on_batch=lambda b: first.append(b) if not first else None,
    )
    assert isinstance(result, EagleResult)
    assert result.ranking == expected_ranking(audit, 0)
    # full + baseline first. Each distinct image is scored once: the forced last step is
    # full/baseline again, and the 4 images of the two-region step were scored at step 1.
    assert np.array_equal(first[0][0], audit.image) and not np.asarray(first[0][1]).any()
    assert images == result.forward_passes == k * (k + 1) - 4
    assert yields == 1 + (k - 2)  # full/baseline, then one per step with new images
    assert result.search_complete


def test_greedy_ranks_each_target_token_on_its_own():
    audit = make_audit(rows=3, cols=3, n_tokens=2, seed=3)
    r1, _, _ = drive(greedy_search(audit.image, audit.masks, token_indices=[1]), audit)
    assert r1.ranking == expected_ranking(audit, 1)
    both, _, _ = drive(greedy_search(audit.image, audit.masks), audit)  # all tokens
    assert both.token_indices == [0, 1]
    mean_w = audit.weights.mean(axis=0)[both.ranking]  # ties possible: check the order, not ids
    assert np.all(np.diff(mean_w) <= 1e-12)


def test_greedy_result_fields_match_the_toy():
    audit = make_audit(rows=3, cols=4, seed=1)
    res, _, _ = drive(greedy_search(audit.image, audit.masks, token_indices=[0]), audit)
    k = 12
    assert list(res.prefix_sizes) == list(range(k + 1))
    assert res.areas[0] == 0 and res.areas[-1] == pytest.approx(1.0)
    assert np.allclose(np.diff(res.areas), 1.0 / k)
    # insertion = p(keep S_k): bias + cumulative weight along the ranking; deletion its mirror
    w = audit.weights[0][res.ranking]
    ins = audit.bias[0] + np.concatenate(([0.0], np.cumsum(w)))
    assert np.allclose(res.insertion[:, 0], ins)
    assert np.allclose(res.deletion[:, 0], audit.bias[0] + w.sum() - np.concatenate(([0.0], np.cumsum(w))))
    assert np.allclose(res.p_full, res.insertion[-1]) and np.allclose(res.p_blank, res.insertion[0])
    assert np.allclose(res.gains, 2 * w)  # additive toy: Δ_k = 2 w_k
    # heatmap rule: top region 1, last 0, non-increasing along the ranking
    ordered = res.region_scores[res.ranking]
    assert ordered[0] == 1.0 and ordered[-1] == 0.0 and np.all(np.diff(ordered) <= 1e-12)
    assert res.insertion_auc() > res.deletion_auc()


def test_greedy_budget_stops_early_but_ranks_everything():
    audit = make_audit(rows=4, cols=4)
    res, images, _ = drive(greedy_search(audit.image, audit.masks, token_indices=[0], max_forward_passes=100), audit)
    assert images == res.forward_passes <= 100
    assert not res.search_complete
    assert sorted(res.ranking) == list(range(16))
    # steps taken before the stop are exact greedy; the tail follows the last known gains,
    # which in the additive toy are exact too
    assert res.ranking == expected_ranking(audit, 0)
    assert res.prefix_sizes[0] == 0 and res.prefix_sizes[-1] == 16
    assert res.region_scores.max() == 1.0 and res.region_scores.min() == 0.0


def test_budget_below_two_is_an_error():
    audit = make_audit(rows=2, cols=2)
    with pytest.raises(ValueError):
        drive(greedy_search(audit.image, audit.masks, max_forward_passes=1), audit)


def test_bad_token_indices_raise():
    audit = make_audit(rows=2, cols=2, n_tokens=2)
    with pytest.raises(ValueError):
        drive(greedy_search(audit.image, audit.masks, token_indices=[5]), audit)


def test_wrong_score_shape_raises():
    audit = make_audit(rows=2, cols=2)
    gen = greedy_search(audit.image, audit.masks)
    batch = next(gen)
    with pytest.raises(ValueError):
        gen.send(np.zeros((len(batch) + 1, 2)))


def test_overlapping_masks_still_work():
    """Masks that do not partition the image: remove S is scored as its own image."""
    audit = make_audit(rows=2, cols=3)
    masks = audit.masks.copy()
    masks[0] |= masks[1]  # region 0 overlaps region 1
    res, images, _ = drive(greedy_search(audit.image, masks, token_indices=[0]), audit)
    assert sorted(res.ranking) == list(range(6))
    assert images == res.forward_passes == 6 * 7 + 2  # nothing aliases: last step scored too


# ---------------------------------------------------------------- fast search


def test_fast_search_matches_greedy_on_additive_toy_and_is_cheap():
    audit = make_audit(rows=6, cols=8, cell=3, seed=7)  # K = 48
    k = 48
    res, images, _ = drive(fast_search(audit.image, audit.masks, token_indices=[0]), audit)
    assert images == res.forward_passes
    assert res.forward_passes <= 600 < k * (k + 1)
    assert res.ranking == expected_ranking(audit, 0)  # constant gains: stale estimates are exact
    assert list(res.prefix_sizes) == list(range(k + 1))  # curves complete
    assert res.search_complete


def test_fast_search_recovers_top_regions_when_regions_interact():
    audit = make_audit(rows=5, cols=6, cell=3, seed=11, sharp=12.0)  # K = 30, sigmoid: non-additive
    greedy, g_images, _ = drive(greedy_search(audit.image, audit.masks, token_indices=[0]), audit)
    fast, f_images, _ = drive(fast_search(audit.image, audit.masks, token_indices=[0]), audit)
    assert sorted(fast.ranking) == list(range(30))
    assert f_images < g_images / 2
    assert len(set(fast.ranking[:5]) & set(greedy.ranking[:5])) >= 4
    assert set(fast.ranking[-3:]) & set(expected_ranking(audit, 0)[-5:])
    assert fast.insertion_auc() == pytest.approx(greedy.insertion_auc(), abs=0.05)


def test_fast_search_budget():
    audit = make_audit(rows=6, cols=8, cell=3, seed=2)
    res, images, _ = drive(fast_search(audit.image, audit.masks, token_indices=[0], max_forward_passes=150), audit)
    assert images == res.forward_passes <= 150
    assert sorted(res.ranking) == list(range(48))
    assert not res.search_complete
    assert res.prefix_sizes[0] == 0 and res.prefix_sizes[-1] == 48
    assert res.ranking[0] == expected_ranking(audit, 0)[0]


def test_fast_search_tiny_inputs():
    for rows, cols in ((1, 1), (1, 2), (1, 3), (2, 2)):
        audit = make_audit(rows=rows, cols=cols)
        res, _, _ = drive(fast_search(audit.image, audit.masks, token_indices=[0]), audit)
        assert res.ranking == expected_ranking(audit, 0)


# ---------------------------------------------------------------- heatmap


def test_scores_from_gains_rule():
    ranking = [2, 0, 1, 3]
    gains = np.array([0.5, 0.3, 0.1, 0.1])  # sum_{j>1} = 0.5
    scores = scores_from_gains(ranking, gains)
    # raw by rank: 0.5/0.5, 0.2/0.5, 0.1/0.5, 0 -> min-max keeps them
    assert scores[[2, 0, 1, 3]] == pytest.approx([1.0, 0.4, 0.2, 0.0])
    flat = scores_from_gains([1, 0, 2], np.zeros(3))  # nothing to go on: rank ramp
    assert flat[[1, 0, 2]] == pytest.approx([1.0, 0.5, 0.0])
    assert scores_from_gains([0], np.array([0.3])) == pytest.approx([1.0])


def test_heatmap_from_regions_paints_and_resizes():
    labels = grid_labels(4, 6, 2, 3)
    scores = np.array([0.0, 0.2, 1.0, 0.4, 0.6, 0.8])
    heat = heatmap_from_regions(labels, scores)
    assert heat.dtype == np.float32 and heat.shape == (4, 6)
    assert np.allclose(heat, scores[labels])
    big = heatmap_from_regions(labels, scores, size=(12, 8))  # (width, height)
    assert big.shape == (8, 12)
    assert np.allclose(big[::2, ::2], scores[labels])
    assert big.min() >= 0.0 and big.max() <= 1.0


def test_heatmap_of_search_ranks_pixels_like_the_ranking():
    audit = make_audit(rows=3, cols=3, seed=5)
    res, _, _ = drive(greedy_search(audit.image, audit.masks, token_indices=[0]), audit)
    heat = heatmap_from_regions(audit.labels, res.region_scores)
    per_region = [heat[audit.labels == r].mean() for r in res.ranking]
    assert per_region[0] == 1.0 and np.all(np.diff(per_region) <= 0)


def test_overlapping_masks_on_a_budget_keep_the_curve_end_point():
    audit = make_audit(rows=2, cols=3)
    masks = audit.masks.copy()
    masks[0] |= masks[1]
    res, images, _ = drive(greedy_search(audit.image, masks, token_indices=[0], max_forward_passes=30), audit)
    assert images == res.forward_passes <= 30 and not res.search_complete
    assert res.prefix_sizes[0] == 0 and res.prefix_sizes[-1] == 6
    assert len(res.gains) == 6 and sorted(res.ranking) == list(range(6))
