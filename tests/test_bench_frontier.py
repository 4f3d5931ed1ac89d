"""bench.faithfulness's frontier: each budget's change from the budget before is a paired difference."""

from __future__ import annotations

import pytest

from bench.faithfulness import _add_budget_steps, print_frontier

pytestmark = pytest.mark.unit


def _row(ins: float, dele: float) -> dict:
    return {"insertion_auc": ins, "deletion_auc": dele}


def test_budget_steps_are_paired_differences_within_each_search(capsys):
    got = {
        "random order": [_row(0.5, 0.5), _row(0.4, 0.6)],
        "eagle_lazy @ 32": [_row(0.80, 0.20), _row(0.60, 0.30)],
        "eagle_lazy @ 64": [_row(0.90, 0.10), _row(0.60, 0.40)],
        "eagle @ 32": [{"refused": True}, {"refused": True}],
        "eagle @ 64": [_row(0.7, 0.2), _row(0.7, 0.2)],
    }
    table = {key: {} for key in got}
    _add_budget_steps(table, got)
    ins, ins_sem = table["eagle_lazy @ 64"]["insertion_auc_step"]
    assert ins == pytest.approx(0.05) and ins_sem == pytest.approx(0.05)  # steps +0.1 and 0: sd 0.0707 / sqrt 2
    assert table["eagle_lazy @ 64"]["deletion_auc_step"][0] == pytest.approx(0.0)
    for key in ("random order", "eagle_lazy @ 32", "eagle @ 32", "eagle @ 64"):  # no budget before, or it was refused
        assert "insertion_auc_step" not in table[key]
    rows = {
        "eagle_lazy @ 64": {
            **table["eagle_lazy @ 64"],
            **{"insertion_sem": 0.0, "deletion_sem": 0.0, "pointing": 1.0, "forward_passes": 64.0},
            **_row(0.75, 0.25),
        },
        "eagle @ 32": {"refused": True},
    }
    print_frontier({"ref": rows})
    out = capsys.readouterr().out
    assert "| +0.050 ± 0.050, +0.000 ± 0.100 |" in out
    assert "| eagle @ 32 | 422: below the floor | | | | | |" in out
