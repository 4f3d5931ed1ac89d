"""What heatmaps mean (kind), flat maps flagged, the colour map and the overlay figure."""

from __future__ import annotations

import numpy as np
import pytest
from mllm_audit.explainers.colormap import COLORMAP, COLORMAP_HEX, colourise
from mllm_audit.explainers.eagle import scores_from_gains, scores_from_marginal_gains
from mllm_audit.explainers.heatmap_kinds import flat_reason
from mllm_audit.explainers.overlay import heatmap_figure
from mllm_audit.service.serialize import audit_body
from mllm_audit.service.ui_routes import colormap_script

from mllm_audit import AuditInputError, Auditor
from tests.conftest import held_out_sample


def lightness(rgb: np.ndarray) -> np.ndarray:
    """CIELAB L* of sRGB uint8 colours."""
    c = rgb / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = linear @ np.array([0.2126, 0.7152, 0.0722])
    return 116 * np.cbrt(y) - 16


@pytest.mark.unit
def test_gain_scores_follow_the_marginal_gains_and_use_the_whole_scale():
    ranking = [2, 0, 3, 1]
    gains = np.array([0.5, 0.1, -0.2, 0.25])  # by rank
    gain = scores_from_marginal_gains(ranking, gains)
    assert gain.max() == 1.0 and gain[2] == 1.0  # the largest gain is the top of the scale
    assert gain[3] == 0.0  # a region that lowered the objective
    assert gain[0] == pytest.approx(0.2) and gain[1] == pytest.approx(0.5)
    cumulative = scores_from_gains(ranking, gains)
    assert cumulative[2] == 1.0 and cumulative[1] == 0.0
    assert np.all(np.diff(cumulative[ranking]) <= 0)  # the cumulative view only falls along the ranking
    assert flat_reason(gain) is None
    nothing = scores_from_marginal_gains(ranking, np.array([0.0, -0.1, 0.0, 0.0]))
    assert np.all(nothing == 0) and "0" in flat_reason(nothing)


@pytest.mark.unit
def test_flat_maps_are_told_apart_from_maps_with_information():
    assert "every value is 0" in flat_reason(np.zeros((4, 4)))
    assert "0.5" in flat_reason(np.full((3, 3), 0.5))
    assert flat_reason(np.array([]))
    assert flat_reason(np.array([[0.0, 0.01]])) is None


@pytest.mark.unit
def test_the_colour_map_reads_in_greyscale_and_is_the_one_the_viewer_gets():
    l_star = lightness(COLORMAP.astype(np.float64))
    assert np.all(np.diff(l_star) >= -0.05)  # lightness never falls: equal heat, equal lightness steps
    assert l_star[-1] - l_star[0] > 60
    steps = np.diff(l_star[::32])
    assert steps.max() / steps.min() < 1.6  # close to uniform
    script = colormap_script().decode()
    assert all(h in script for h in (COLORMAP_HEX[0], COLORMAP_HEX[128], COLORMAP_HEX[-1]))


@pytest.mark.unit
def test_the_figure_has_a_colour_bar_and_a_caption():
    image = np.full((48, 64, 3), 128, dtype=np.uint8)
    heat = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (48, 1))
    figure = np.asarray(heatmap_figure(image, heat, "target: 'red'", "gain: ...", (0, 0, 16, 16)))
    height, width = figure.shape[:2]
    assert width > 64 * 5 and height > 48 * 5  # enlarged so the text is readable
    bar = None
    for x in range(width - 1, width // 2, -1):  # the colour bar: a column running from value 1 down to value 0
        column = figure[:, x].astype(int)
        top, bottom = np.abs(column - COLORMAP[-1]).sum(axis=1), np.abs(column - COLORMAP[0]).sum(axis=1)
        if top.min() <= 24 and bottom.min() <= 24 and top.argmin() < bottom.argmin():
            bar = x
            break
    assert bar is not None, "no colour bar"
    caption = figure[:20, :]
    assert (caption.sum(axis=2) < 200).any()  # dark text over the white band
    np.testing.assert_array_equal(colourise(np.array([0.0, 1.0])), COLORMAP[[0, -1]])


@pytest.fixture(scope="module")
def auditor(reference_scorer):
    return Auditor(reference_scorer, forward_batch_size=48)


@pytest.mark.integration
def test_kinds_in_the_result_and_the_response(auditor):
    s = held_out_sample("colour", 43)
    gain = auditor.explain(s.scene.image, s.prompt, s.truth, regions=8)
    cumulative = auditor.explain(s.scene.image, s.prompt, s.truth, regions=8, heatmap_kind="cumulative")
    a, b = gain.attributions[0], cumulative.attributions[0]
    assert [r.region_id for r in a.regions] == [r.region_id for r in b.regions]  # one search, two views
    assert a.heatmap_kind == "gain" and b.heatmap_kind == "cumulative"
    assert max(r.score for r in a.regions) == pytest.approx(1.0)
    assert b.regions[0].score == 1.0 and all(x.score >= y.score for x, y in zip(b.regions, b.regions[1:]))
    # the cumulative view saturates: it is above 0.9 at least as often as the gain view
    assert (b.heatmap() > 0.9).mean() >= (a.heatmap() > 0.9).mean()
    body = audit_body(gain, "png")["attributions"][0]["heatmap"]
    assert body["kind"] == "gain" and body["flat"] is (a.flat_reason is not None)
    tam = auditor.explain(s.scene.image, s.prompt, s.truth, method="tam")
    heat = tam.attributions[0]
    assert heat.heatmap_kind == "activation"
    assert (heat.flat_reason is not None) == (np.ptp(heat.heatmap()) < 1e-6)
    with pytest.raises(AuditInputError, match="heatmap kind"):
        auditor.explain(s.scene.image, s.prompt, s.truth, method="tam", heatmap_kind="gain")
