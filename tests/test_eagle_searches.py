"""The default lazy search and the published efficient search, on scripted scores."""

from __future__ import annotations

import numpy as np
import pytest
from mllm_audit.explainers.eagle import greedy_search
from mllm_audit.explainers.eagle_lazy import lazy_search, minimum_passes, region_groups
from mllm_audit.explainers.eagle_published import published_fast_search
from mllm_audit.explainers.regions import region_masks

from tests.test_eagle import drive, expected_ranking, grid_labels, make_audit, toy_logp

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------- the published efficient search

# Recorded probabilities of one answer token for a 1 x 6 strip of regions: each region adds its
# weight when shown, and regions 1 and 4 together add 0.35 more (an interaction the stale
# window cannot see).
WEIGHTS = {0: 0.05, 1: 0.30, 2: 0.12, 3: 0.25, 4: 0.08, 5: 0.20}


class Strip:
    image = np.random.default_rng(3).integers(1, 256, size=(4, 24, 3), dtype=np.uint8)
    labels = grid_labels(4, 24, 1, 6)
    masks = region_masks(labels)

    def logp(self, image: np.ndarray) -> np.ndarray:
        shown = {int(v) for v in np.unique(self.labels[(image == self.image).all(axis=-1)])}
        p = 0.02 + sum(WEIGHTS[v] for v in shown) + (0.35 if {1, 4} <= shown else 0.0)
        return np.log([p])


def drive_strip(gen, strip=None):
    strip, images = strip or Strip(), 0
    try:
        batch = next(gen)
        while True:
            images += len(batch)
            batch = gen.send(np.stack([strip.logp(im) for im in batch]))
    except StopIteration as stop:
        return stop.value, images


def test_published_search_returns_the_published_ranking_on_recorded_scores():
    # insight only (lambda2 = 0): F(S) = p(keep S). By the published rules, with s = 2, p = 1:
    # step 0 re-ranks all six: order 1, 3, 5, 2, 4, 0; 1 is selected, 0 (the worst) goes to the tail.
    # step 1: window [3, 5] at S = {1}: 3 (0.57 > 0.52); bottom-up candidate: the order's last
    #   remaining region outside the window, 4, goes to the tail (though 1 + 4 would score 0.75).
    # step 2: window [5, 2] at {1, 3}: 5; one region (2) is left: stop, it keeps its place.
    result, images = drive_strip(published_fast_search(Strip.image, Strip.masks, lam2=0.0, s=2, p=1, u=3))
    assert result.ranking == [1, 3, 5, 2, 4, 0]
    greedy, _ = drive_strip(greedy_search(Strip.image, Strip.masks, lam2=0.0))
    assert greedy.ranking == [1, 4, 3, 5, 2, 0]  # plain greedy sees the pair
    # full + blank, 6 x 2 at step 0, 2 x 2 + 2 (bottom-up) at step 1, 2 x 2 at step 2; every prefix
    # of the ranking was among them, so the curves cost nothing
    assert images == result.forward_passes == 2 + 12 + 6 + 4
    assert result.curve_forward_passes == 0 and list(result.prefix_sizes) == list(range(7))


def test_published_search_on_an_additive_toy_is_exact():
    audit = make_audit(rows=4, cols=6, cell=3, seed=5)  # constant gains: the step-0 order is the truth
    result, images, _ = drive(published_fast_search(audit.image, audit.masks, token_indices=[0]), audit)
    assert result.ranking == expected_ranking(audit, 0)
    assert images == result.forward_passes < 24 * 25


# ---------------------------------------------------------------- the default lazy search


def test_region_groups_partition_the_regions_into_compact_groups():
    labels = grid_labels(32, 32, 8, 8)
    groups = region_groups(region_masks(labels), 8)
    assert sorted(v for g in groups for v in g) == list(range(64))
    assert len(groups) == 8
    for g in groups:  # compact: a group spans few grid rows and columns
        rows, cols = {v // 8 for v in g}, {v % 8 for v in g}
        assert len(rows) <= 4 and len(cols) <= 4


def test_lazy_search_is_exact_with_enough_probes_and_cheap_by_default():
    audit = make_audit(rows=6, cols=8, cell=3, seed=7)  # K = 48, additive
    exact, _, _ = drive(lazy_search(audit.image, audit.masks, [0], probes=48, flat=0.0), audit)
    assert exact.ranking == expected_ranking(audit, 0)
    cheap, images, _ = drive(lazy_search(audit.image, audit.masks, [0]), audit)
    assert images == cheap.forward_passes and cheap.curve_forward_passes == 0
    assert images < 48 * 49 / 10
    assert cheap.ranking[:3] == expected_ranking(audit, 0)[:3]


def order_auc(audit, order: list[int]) -> float:
    """Insertion AUC of a region order, every prefix scored by the toy (equal-area regions)."""
    probs = []
    for i in range(len(order) + 1):
        image = np.where(np.isin(audit.labels, order[:i])[..., None], audit.image, 0).astype(np.uint8)
        probs.append(np.exp(toy_logp(audit, image)[0]))
    return float(np.trapezoid(probs, np.linspace(0, 1, len(order) + 1)))


def test_every_budget_from_the_floor_gives_a_ranking_better_than_random_and_quality_rises():
    audit = make_audit(rows=6, cols=8, cell=3, seed=11, sharp=12.0)  # K = 48, regions interact
    floor = minimum_passes(48)
    with pytest.raises(ValueError, match=f"minimum {floor}"):
        drive(lazy_search(audit.image, audit.masks, [0], max_forward_passes=floor - 1), audit)
    rng = np.random.default_rng(0)
    chance = np.mean([order_auc(audit, [int(v) for v in rng.permutation(48)]) for _ in range(20)])
    aucs = []
    for budget in (floor, 40, 80, None):
        result, images, _ = drive(lazy_search(audit.image, audit.masks, [0], max_forward_passes=budget), audit)
        assert budget is None or images <= budget
        assert sorted(result.ranking) == list(range(48))
        aucs.append(order_auc(audit, result.ranking))
    assert min(aucs) > chance + 0.05, (aucs, chance)
    assert all(b >= a - 0.01 for a, b in zip(aucs, aucs[1:])), aucs  # no budget does worse than a smaller one
    assert aucs[-1] > aucs[0]


class SliverStrip(Strip):
    """A 1 x 8 strip whose object is regions 5 and 6 together, with a sliver, 7, that only
    counts next to 6: alone it gains nothing, so its single-region gain ranks it last."""

    image = np.random.default_rng(4).integers(1, 256, size=(4, 32, 3), dtype=np.uint8)
    labels = grid_labels(4, 32, 1, 8)
    masks = region_masks(labels)

    def logp(self, image: np.ndarray) -> np.ndarray:
        shown = {int(v) for v in np.unique(self.labels[(image == self.image).all(axis=-1)])}
        p = 0.02 + 0.05 * (6 in shown) + 0.01 * (5 in shown) + 0.88 * ({5, 6} <= shown) + 0.015 * ({6, 7} <= shown)
        return np.log([p])


def test_the_sweep_takes_the_neighbouring_sliver_the_flat_stop_left_behind():
    strip = SliverStrip()

    def run(**options):
        return drive_strip(lazy_search(strip.image, strip.masks, [0], lam2=0.0, **options), strip)

    # F({5, 6}) = 0.96 is within 2% of F(all) = 0.975: the greedy steps stop there
    without, cheaper = run(sweep=0)
    assert without.ranking[:2] == [6, 5] and without.ranking[-1] == 7
    swept, images = run()
    assert swept.ranking[:3] == [6, 5, 7]  # 7 touches 6 and still gains 0.015 > 0.2% of the span
    # one sweep step measures both neighbours of {5, 6} (4 and 7), the next finds nothing to gain
    assert images == cheaper + 2 * 2 + 2
