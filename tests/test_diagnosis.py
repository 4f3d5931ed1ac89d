"""EAGLE's correction analysis (`correct_to`) on the reference model, where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from mllm_audit.models.reference import world
from mllm_audit.service.schemas import ExplainResponse

from mllm_audit import AuditInputError, Auditor, serialize

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def auditor(reference_scorer):
    return Auditor(reference_scorer, forward_batch_size=64, max_answer_tokens=8)


@pytest.mark.parametrize("seed", [50_000, 50_003])
def test_removing_the_object_turns_yes_into_no(auditor, seed):
    """ "Is there a <object>?" - "yes" is true; the region the model must lose to say "no" is the object."""
    scene = world.render_scene(np.random.default_rng(seed))
    obj = scene.objects[0]
    result = auditor.explain(scene.image, f"Is there a {obj.name}?", "yes", regions=16, correct_to="no")
    diagnosis = result.diagnosis
    assert diagnosis is not None and diagnosis.alternative == "no"
    x0, y0, x1, y1 = diagnosis.boxes[0]
    assert obj.mask[y0:y1, x0:x1].sum() > 0.8 * obj.mask.sum()  # the top region holds the object
    assert diagnosis.flip_regions is not None and diagnosis.flip_area is not None and diagnosis.flip_area < 0.2
    margins = diagnosis.curve[:, 1]
    assert margins[0] < 0 < margins[diagnosis.flip_regions]  # the model preferred "yes", then "no"
    regions = len(diagnosis.ranking)
    assert diagnosis.forward_passes == 2 * (1 + 2 * regions)
    body = serialize(result, "none")
    stats = {**body["stats"], "batch_size": 1, "queue_ms": 0.0}
    ExplainResponse.model_validate({"request_id": "r", "model": {"id": "m", "family": "llava"}, **body, "stats": stats})
    assert body["diagnosis"]["flip_regions"] == diagnosis.flip_regions


def test_bad_alternatives_are_refused(auditor):
    scene = world.render_scene(np.random.default_rng(50_001))
    for alternative, reason in (("yes", "equals the answer"), ("  ", "empty"), ("red " * 20, "limit is 8")):
        with pytest.raises(AuditInputError, match=reason):
            auditor.explain(scene.image, "Is there a red circle?", "yes", correct_to=alternative)
