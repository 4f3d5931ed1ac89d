"""The ONNX Runtime backend scores as the torch model does, and says which provider runs it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from mllm_audit.explainers.audit import Auditor
from mllm_audit.explainers.request import AuditRequest
from mllm_audit.models.families import family_of
from mllm_audit.models.loading import load_model
from mllm_audit.models.onnx_backend import OnnxBackend
from mllm_audit.models.scorer import Scorer
from PIL import Image

from tests.conftest import held_out_sample

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def onnx_scorer(reference):
    return Scorer(reference, OnnxBackend(reference))


def test_onnx_scores_equal_torch_for_mixed_batches(reference_scorer, onnx_scorer):
    a, b = held_out_sample("caption", 80), held_out_sample("colour", 81)
    audit_a = reference_scorer.prepare(a.prompt, a.truth, (96, 96))
    audit_b = reference_scorer.prepare(b.prompt, b.truth, (96, 96))
    black = np.zeros_like(a.scene.image)
    # batches of 1 and 3 rows of different lengths: the exported graphs have a dynamic batch and sequence
    for pairs in ([(audit_b, b.scene.image)], [(audit_a, a.scene.image), (audit_b, b.scene.image), (audit_a, black)]):
        for torch_lp, onnx_lp in zip(reference_scorer.log_probs(pairs), onnx_scorer.log_probs(pairs)):
            np.testing.assert_allclose(onnx_lp, torch_lp, atol=1e-4)
    torch_logits = reference_scorer.white_box([(audit_b, b.scene.image)])[0].logits
    onnx_logits = onnx_scorer.white_box([(audit_b, b.scene.image)])[0].logits
    np.testing.assert_allclose(onnx_logits.numpy(), torch_logits.numpy(), atol=1e-3)


def test_providers_are_reported_as_granted(onnx_scorer):
    backend = onnx_scorer.run_model
    assert backend.requested == ["CPUExecutionProvider"]
    assert backend.providers == backend.vision.get_providers() == ["CPUExecutionProvider"]


def test_an_audit_on_onnx_matches_torch(reference_scorer, onnx_scorer):
    s = held_out_sample("colour", 82)
    request = AuditRequest(s.scene.image, s.prompt, s.truth, regions=8, max_forward_passes=80)
    [with_torch] = Auditor(reference_scorer).run([request])
    [with_onnx] = Auditor(onnx_scorer).run([request])
    assert [r.bbox for r in with_onnx.attributions[0].regions] == [r.bbox for r in with_torch.attributions[0].regions]
    assert with_onnx.tokens[0].p_full == pytest.approx(with_torch.tokens[0].p_full, abs=1e-4)


def test_another_llava_shape_and_other_families(tiny_llava_dir, reference):
    tiny = load_model(tiny_llava_dir)  # 56 px, patch 14, features from the second-to-last layer
    audit = Scorer(tiny).prepare("Describe the image.", "a red circle.", (70, 40))
    images = [np.random.default_rng(i).integers(0, 255, (40, 70, 3), dtype=np.uint8) for i in range(2)]
    np.testing.assert_allclose(
        Scorer(tiny, OnnxBackend(tiny)).score_images(audit, images), Scorer(tiny).score_images(audit, images), atol=1e-4
    )
    qwen = dataclasses.replace(reference, family=family_of("qwen2_vl"))
    with pytest.raises(ValueError, match="llava family"):
        OnnxBackend(qwen)


@pytest.mark.parametrize("which", ["reference", "tiny"])
def test_the_llava_family_computes_the_image_features_as_the_model_does(which, reference, tiny_llava_dir):
    """The part the ONNX backend exports: the family's image features are the model's own
    (the tiny model reads the second-to-last vision layer, the reference model the last)."""
    loaded = reference if which == "reference" else load_model(tiny_llava_dir)
    probe = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 70, 3), dtype=np.uint8))
    pixels = loaded.family.image_inputs(loaded.processor, [probe, probe.rotate(90)])["pixel_values"]
    with torch.inference_mode():
        ours = loaded.family.image_features(loaded.model, pixels)
        theirs = torch.stack(list(loaded.model.model.get_image_features(pixel_values=pixels).pooler_output))
    assert ours.shape == theirs.shape and ours.shape[:2] == (2, loaded.model.config.image_seq_length)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    with pytest.raises(NotImplementedError):
        family_of("qwen2_vl").image_features(loaded.model, pixels)
