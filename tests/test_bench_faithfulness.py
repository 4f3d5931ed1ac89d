"""bench.faithfulness's AUCs within the image's end points."""

from __future__ import annotations

import numpy as np
import pytest
from mllm_audit.explainers.faithfulness import RankingCurves, insertion_deletion_from_ranking

from bench.faithfulness import aucs_within_end_points

pytestmark = pytest.mark.unit


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
