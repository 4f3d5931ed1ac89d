"""bench.map_lead: its spliced orders put the object first and order the rest by what they say;
end to end on two answers of the reference model."""

from __future__ import annotations

import numpy as np
import pytest

from bench import map_lead


def _strips_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eight vertical strips of 4 px: strip 1 is the red object, strip 7 is red too, the rest grey."""
    image = np.full((8, 32, 3), 90, dtype=np.uint8)
    labels = np.repeat(np.arange(8)[None, :], 4, axis=1).reshape(1, 32).repeat(8, axis=0)
    image[:, 4:8] = (220, 30, 30)
    image[:, 28:32] = (200, 40, 40)
    masks = np.stack([labels == r for r in range(8)])
    object_mask = labels == 1
    return image, masks, object_mask


@pytest.mark.unit
def test_spliced_orders_put_the_object_first_and_sort_the_rest_by_their_prior():
    image, masks, object_mask = _strips_scene()
    eagle_scores = np.array([0.1, 0.9, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    map_scores = eagle_scores[::-1].copy()
    others_mask = np.zeros_like(object_mask)
    others_mask[:, 24:28] = True  # strip 6 is another object
    orders = map_lead.spliced_orders(image, masks, object_mask, others_mask, eagle_scores, map_scores)
    assert len(orders) == 6
    for order in orders.values():
        assert sorted(order) == list(range(8)) and order[0] == 1
    assert orders["object, then rest: both in eagle's order"] == [1, 7, 6, 5, 4, 3, 2, 0]
    assert orders["object in eagle's order, rest in the map's"] == [1, 6, 0, 2, 3, 4, 5, 7]
    assert orders["object, rest in the map's order, other objects last"] == [1, 0, 2, 3, 4, 5, 7, 6]
    assert orders["object, then rest nearest first"][1:3] in ([0, 2], [2, 0])
    assert orders["object, then rest closest in colour first"][1] == 7  # the other red strip


@pytest.mark.integration
def test_every_row_on_two_answers_of_the_reference_model(tmp_path):
    out = tmp_path / "lead.json"
    table = map_lead.main(["--n", "2", "--model", "ref", "--maps", "attention+relevancy", "--json", str(out)])
    assert len(table) == 8 and {"eagle", "attention+relevancy"} <= set(table)  # and the six spliced orders
    assert table["eagle"]["lead"] == 0.0 and table["eagle"]["answers"] == 2
    first = table["object, then rest: both in eagle's order"]
    assert first["pointing_mask"] == 1.0  # the object's own region is ranked first
    for row in table.values():
        assert 0.0 <= row["insertion_auc"] <= 1.0 and 0.0 <= row["deletion_auc"] <= 1.0
        assert np.isfinite(row["lead_se"])
    assert out.read_text().startswith("{")
