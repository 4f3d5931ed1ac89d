"""The ONNX Runtime backend scores as the torch model does, says which provider runs it, and
reuses its exported graphs from the cache while the model is unchanged."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mllm_audit.explainers.audit import Auditor
from mllm_audit.explainers.request import AuditRequest
from mllm_audit.models.backends import onnx_precision
from mllm_audit.models.families import family_of
from mllm_audit.models.loading import REFERENCE_MODEL_DIR, load_model
from mllm_audit.models.onnx_backend import OnnxBackend
from mllm_audit.models.onnx_cache import PARTIAL_PREFIX
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
    # batches of 1 and 3 rows of different lengths: the exported graphs have a dynamic batch and sequence;
    # the scores come from the answer positions' logits alone, the white-box logits from every position
    assert onnx_scorer.keeps_some_logits
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


# ---------------------------------------------------------------------------- the graphs' cache


def cache_entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith(PARTIAL_PREFIX))


def graph_mtimes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}


def logits_of(backend: OnnxBackend, loaded) -> np.ndarray:
    scorer = Scorer(loaded, backend)
    s = held_out_sample("colour", 83)
    return scorer.white_box([(scorer.prepare(s.prompt, s.truth, (96, 96)), s.scene.image)])[0].logits.numpy()


def test_a_second_start_loads_the_cached_graphs_instead_of_exporting(reference, tmp_path, monkeypatch):
    first = OnnxBackend(reference, cache=tmp_path)
    assert first.exported and cache_entries(tmp_path) == [first.graphs.name]
    written = graph_mtimes(first.graphs)
    assert {"vision.onnx", "language.onnx", "manifest.json"} <= set(written)

    def no_export(*args, **kwargs):
        raise AssertionError("the graphs were exported again")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    second = OnnxBackend(reference, cache=tmp_path)
    assert not second.exported and second.graphs == first.graphs
    assert graph_mtimes(second.graphs) == written and cache_entries(tmp_path) == [first.graphs.name]
    np.testing.assert_array_equal(logits_of(second, reference), logits_of(first, reference))


def test_a_changed_weights_file_gets_a_new_cache_entry(tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(REFERENCE_MODEL_DIR, model_dir)
    loaded = load_model(model_dir)
    cache = tmp_path / "cache"
    before = OnnxBackend(loaded, cache=cache)
    weights = next(model_dir.glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten a second later
    after = OnnxBackend(loaded, cache=cache)
    assert before.exported and after.exported
    assert after.graphs != before.graphs and cache_entries(cache) == sorted([before.graphs.name, after.graphs.name])
    assert OnnxBackend(loaded, cache=cache).graphs == after.graphs  # and that entry is reused


def test_a_partial_export_is_never_used(reference, tmp_path, monkeypatch):
    # what a crash mid-export leaves: a .partial-* directory with a truncated graph
    crashed = tmp_path / f"{PARTIAL_PREFIX}crashed"
    crashed.mkdir()
    for name in ("vision.onnx", "language.onnx"):
        (crashed / name).write_bytes(b"\x08\x07truncated")

    real_export = torch.onnx.export

    def fail_on_the_second_graph(model, args, f, **kwargs):
        if Path(f).name == "language.onnx":
            raise RuntimeError("killed mid-export")
        real_export(model, args, f, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", fail_on_the_second_graph)
    with pytest.raises(RuntimeError, match="killed mid-export"):
        OnnxBackend(reference, cache=tmp_path)
    # the failed export left neither an entry nor a partial directory of its own
    assert sorted(p.name for p in tmp_path.iterdir()) == [crashed.name]

    monkeypatch.setattr(torch.onnx, "export", real_export)
    backend = OnnxBackend(reference, cache=tmp_path)
    assert backend.exported and backend.graphs.parent == tmp_path and backend.graphs != crashed
    assert (crashed / "vision.onnx").read_bytes() == b"\x08\x07truncated"  # left alone, not read
    np.testing.assert_allclose(logits_of(backend, reference), logits_of(OnnxBackend(reference), reference), atol=1e-5)


def test_float16_is_refused_on_the_cpu_and_converts_the_graphs(reference, tmp_path):
    import onnxruntime as ort

    with pytest.raises(ValueError, match="CUDA provider only"):
        OnnxBackend(reference, precision="float16")
    with pytest.raises(ValueError, match="float16 on CUDA only"):
        onnx_precision("fp16", "cpu")
    assert onnx_precision("auto", "cuda:0") == "float32" and onnx_precision("fp16", "cuda:0") == "float16"
    with pytest.raises(ValueError, match="not 'bf16'"):
        onnx_precision("bf16", "cuda")
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine grants the CUDA provider: nothing falls back to refuse")
    # asked for CUDA on a machine without it, ONNX Runtime grants the CPU: refused after the export
    with pytest.raises(RuntimeError, match="need the CUDA provider"):
        OnnxBackend(reference, use_cuda=True, cache=tmp_path, precision="float16")
    [entry] = cache_entries(tmp_path)
    float32 = OnnxBackend(reference, cache=tmp_path)
    assert float32.graphs.name != entry  # precision is part of the key
    # the float16 graph takes and gives float16 and computes the float32 one's features
    half = ort.InferenceSession(str(tmp_path / entry / "vision.onnx"), providers=["CPUExecutionProvider"])
    assert [i.type for i in half.get_inputs()] == ["tensor(float16)"]
    pixels = np.random.default_rng(0).standard_normal((2, *half.get_inputs()[0].shape[1:])).astype(np.float32)
    [features16] = half.run(None, {"pixel_values": pixels.astype(np.float16)})
    [features32] = float32.vision.run(None, {"pixel_values": pixels})
    assert features16.dtype == np.float16
    np.testing.assert_allclose(features16.astype(np.float32), features32, atol=0.02 * np.abs(features32).max())
