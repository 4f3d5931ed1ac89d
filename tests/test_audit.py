"""EAGLE and reliance through the Auditor on real models: the reference model and a tiny LLaVA."""

from __future__ import annotations

import base64
import copy
import io
import re

import numpy as np
import pytest
import torch
from mllm_audit.explainers import eagle
from mllm_audit.explainers.audit import Auditor
from mllm_audit.explainers.engine import Job, run_jobs
from mllm_audit.explainers.regions import region_masks, rle_decode, superpixel_regions
from mllm_audit.explainers.request import AuditInputError, AuditRequest, RequestAbandoned, TokenRange
from mllm_audit.models.loading import load_model
from mllm_audit.models.scorer import Scorer
from mllm_audit.service.serialize import audit_body
from PIL import Image
from scipy.stats import spearmanr

from bench.faithfulness import run as run_faithfulness
from tests.conftest import held_out_sample

pytestmark = pytest.mark.integration


def wire(results, encoding="array", size=None):
    """Results as the service sends them (dicts), exceptions as they are."""
    return [r if isinstance(r, Exception) else audit_body(r, encoding, size) for r in results]


@pytest.fixture(scope="module")
def auditor(reference_scorer):
    return Auditor(reference_scorer, forward_batch_size=48)


def test_engine_results_do_not_depend_on_the_forward_batch_size(reference_scorer):
    a, b = held_out_sample("colour", 11), held_out_sample("shape", 12)
    runs = []
    for batch_size in (7, 64):
        jobs = []
        for s in (a, b):
            audit = reference_scorer.prepare(s.prompt, s.truth, (96, 96))
            masks = region_masks(superpixel_regions(s.scene.image, 12))
            jobs.append(Job(audit, eagle.fast_search(s.scene.image, masks)))
        stats = run_jobs(jobs, reference_scorer.log_probs, batch_size)
        assert all(j.error is None for j in jobs)
        assert stats.forward_passes == sum(j.forward_passes for j in jobs)
        runs.append([(j.result.ranking, j.result.region_scores, j.forward_passes) for j in jobs])
    for (rank1, score1, n1), (rank2, score2, n2) in zip(*runs):
        assert rank1 == rank2 and n1 == n2
        np.testing.assert_allclose(score1, score2, atol=1e-6)


def test_explain_returns_the_contract_fields(auditor):
    s = held_out_sample("caption", 21)
    req = AuditRequest(
        s.scene.image,
        s.prompt,
        s.truth,
        targets="tokens",
        regions=10,
        max_forward_passes=400,
    )
    [out] = wire(auditor.run([req]), "png", (48, 32))
    assert not isinstance(out, Exception), out
    tokens = out["tokens"]
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    for t in tokens:
        assert s.truth[t["start"] : t["end"]] == t["text"]
        assert abs(t["visual_reliance"] + t["language_reliance"] - 1) < 1e-9
        assert t["risk_label"] in ("low", "medium", "high", "not_visual")
    labels = {t["text"]: t["risk_label"] for t in tokens}
    assert labels["a"] == "not_visual" and labels["."] == "not_visual"
    assert len(out["attributions"]) == len(tokens)
    assert out["stats"]["forward_passes"] <= 400  # the request's budget covers every target
    att = out["attributions"][0]
    heat = Image.open(io.BytesIO(base64.b64decode(att["heatmap"]["data"])))
    assert heat.size == (48, 32)
    top = att["regions"][0]
    mask = rle_decode(top["mask"])
    assert mask.shape == (96, 96) and mask.any()
    x0, y0, x1, y1 = top["bbox"]
    ys, xs = np.nonzero(mask)
    assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    # the curves come back, and token 0's EAGLE reliance I_t is read off its own insertion curve
    areas, probs = np.array(att["insertion_curve"]).T
    assert areas[0] == 0 and areas[-1] == 1 and np.all(np.diff(areas) > 0)
    assert len(att["deletion_curve"]) >= 2 and att["search_complete"] in (True, False)
    assert tokens[0]["eagle_reliance"] == pytest.approx(np.trapezoid(probs, areas) - probs.min(), abs=1e-4)


def test_span_targets_and_bad_requests(auditor):
    s = held_out_sample("caption", 22)
    word = s.truth.split()[1]  # a colour word
    start = s.truth.index(word)
    good = AuditRequest(s.scene.image, s.prompt, s.truth, targets=[(start, start + len(word))], regions=8)
    bad_span = AuditRequest(s.scene.image, s.prompt, s.truth, targets=[(0, 999)], regions=8)
    bad_method = AuditRequest(s.scene.image, s.prompt, s.truth, method="gradcam")
    n = len(auditor.scorer.prepare(s.prompt, s.truth, (96, 96)).tokens.ids)
    poor = AuditRequest(s.scene.image, s.prompt, s.truth, targets="tokens", max_forward_passes=2 * n - 1)
    poor_tam = AuditRequest(s.scene.image, s.prompt, s.truth, method="tam", max_forward_passes=130, curves=True)
    one_pass_tam = AuditRequest(s.scene.image, s.prompt, s.truth, method="tam", max_forward_passes=3)
    out = wire(auditor.run([good, bad_span, bad_method, poor, poor_tam, one_pass_tam]))
    assert out[0]["attributions"][0]["target"]["text"] == word
    assert isinstance(out[1], AuditInputError) and "outside the answer" in str(out[1])
    assert isinstance(out[2], AuditInputError) and "unknown method" in str(out[2])
    # below a first scan of the 64 regions: a 422 that names the minimum (full, blank, 2 per region)
    floor = re.search(r"with (\d+) regions and (\d+) target\(s\): it needs at least (\d+) \((\d+) per", str(out[3]))
    assert isinstance(out[3], AuditInputError) and floor, out[3]
    regions, targets, total, per_target = (int(g) for g in floor.groups())
    assert targets == n and per_target == 2 + 2 * regions and total == n * per_target
    assert isinstance(out[4], AuditInputError) and "needs 131 forward passes" in str(out[4])
    # curves are opt-in for a one-pass method: the map costs one pass, the response says the curves cost 0
    tam_map = out[5]["attributions"][0]
    assert (tam_map["forward_passes"], tam_map["curve_forward_passes"]) == (1, 0)
    assert tam_map["insertion_auc"] is None and tam_map["insertion_curve"] == []
    assert out[5]["stats"]["forward_passes"] == 1 + 2  # and the readout and black images


def test_an_abandoned_request_stops_and_the_rest_of_its_batch_runs_on(auditor):
    a, b = held_out_sample("colour", 31), held_out_sample("colour", 32)
    slow = AuditRequest(a.scene.image, a.prompt, a.truth, method="eagle_greedy", regions=32)
    kept = AuditRequest(b.scene.image, b.prompt, b.truth, regions=8)
    together = auditor.run([slow, kept], abandoned=lambda: {0})  # its client left: stopped after a round
    [alone] = auditor.run([kept])
    assert isinstance(together[0], RequestAbandoned)
    assert not isinstance(together[1], Exception) and not isinstance(alone, Exception)
    # the same map whoever shared its batches (scores to float noise: the batch's shape picks the kernel)
    mixed, single = together[1].attributions[0].regions, alone.attributions[0].regions
    assert [(r.rank, r.region_id, r.bbox) for r in mixed] == [(r.rank, r.region_id, r.bbox) for r in single]
    np.testing.assert_allclose([r.score for r in mixed], [r.score for r in single], atol=1e-9)
    [complete] = auditor.run([slow])  # what it would have cost: the stopped batch ran a fraction of that
    assert complete.stats.forward_passes > 4 * together[1].stats.forward_passes


def test_reliance_path_matches_explain_fields_in_two_passes(auditor):
    s = held_out_sample("colour", 23)
    [cheap] = wire(auditor.run([AuditRequest(s.scene.image, s.prompt, s.truth, with_attributions=False)]))
    assert cheap["stats"]["forward_passes"] == 2 and "attributions" not in cheap
    assert all(t["eagle_reliance"] is None for t in cheap["tokens"])
    [full] = wire(auditor.run([AuditRequest(s.scene.image, s.prompt, s.truth, regions=8)]))
    for a, b in zip(cheap["tokens"], full["tokens"]):
        assert set(a) == set(b)
        assert a["p_full"] == pytest.approx(b["p_full"], abs=1e-6)
        assert a["p_blank"] == pytest.approx(b["p_blank"], abs=1e-6)


def test_tiny_random_llava_is_explained_end_to_end(tiny_llava_dir):
    auditor = Auditor(Scorer(load_model(tiny_llava_dir)), forward_batch_size=16)
    image = np.random.default_rng(1).integers(0, 255, size=(50, 80, 3), dtype=np.uint8)
    [out] = wire(auditor.run([AuditRequest(image, "Describe the image.", "a red circle.", regions=6)]))
    assert not isinstance(out, Exception), out
    heat = np.array(out["attributions"][0]["heatmap"]["data"])
    assert heat.shape == (50, 80) and np.isfinite(heat).all()


@pytest.mark.slow  # a quality check of the method, not of the code: 8 searches on two models (~7 s of CPU)
def test_sanity_randomised_weights_change_the_attribution(reference, reference_scorer):
    """Adebayo et al.: an attribution that survives weight randomisation explains nothing."""
    randomised = copy.copy(reference)
    randomised.model = copy.deepcopy(reference.model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in randomised.model.parameters():
            p.normal_(0, 0.02)
    random_scorer = Scorer(randomised)
    correlations = []
    for seed in range(4):
        s = held_out_sample("colour", 30 + seed)
        masks = region_masks(superpixel_regions(s.scene.image, 16))
        scores = []
        for scorer in (reference_scorer, random_scorer):
            job = Job(scorer.prepare(s.prompt, s.truth, (96, 96)), eagle.fast_search(s.scene.image, masks))
            run_jobs([job], scorer.log_probs, 64)
            scores.append(job.result.region_scores)
        correlations.append(spearmanr(*scores).statistic)
    assert np.mean(correlations) < 0.3, correlations


@pytest.mark.slow  # the faithfulness bench on 12 scenes: about a minute of CPU
def test_faithfulness_targets_on_a_small_sample():
    table = run_faithfulness(n=12, regions=32, methods=["eagle", "random"], batch_size=64, model_dir=None)
    assert table["eagle"]["pointing_mask_objects"] >= 0.9, table
    assert table["eagle"]["insertion_auc"] >= table["random"]["insertion_auc"] + 0.2, table
    assert table["eagle"]["deletion_auc"] < table["random"]["deletion_auc"], table


def test_token_span_targets_baseline_and_weights(auditor):
    s = held_out_sample("caption", 24)
    audit = auditor.scorer.prepare(s.prompt, s.truth, (96, 96))
    spans = audit.tokens.spans
    # a multi-token target, given as token indices and as the characters it covers, is one target
    as_tokens = AuditRequest(s.scene.image, s.prompt, s.truth, targets=[TokenRange(1, 3)], regions=8)
    as_chars = AuditRequest(s.scene.image, s.prompt, s.truth, targets=[(spans[1][0], spans[2][1])], regions=8)
    blur = AuditRequest(s.scene.image, s.prompt, s.truth, regions=8, baseline="blur", lambda1=1.0, lambda2=0.0)
    too_far = AuditRequest(s.scene.image, s.prompt, s.truth, targets=[TokenRange(0, len(spans) + 1)], regions=8)
    out = wire(auditor.run([as_tokens, as_chars, blur, too_far]))
    by_tokens, by_chars = out[0]["attributions"][0], out[1]["attributions"][0]
    assert by_tokens["target"] == by_chars["target"]
    assert by_tokens["target"]["token_indices"] == [1, 2]
    assert [r["bbox"] for r in by_tokens["regions"]] == [r["bbox"] for r in by_chars["regions"]]
    # another baseline changes the masked images, so the curves, but p_blank stays the black image's
    params = out[2]["method"]["params"]
    assert (params["baseline"], params["lambda1"], params["lambda2"]) == ("blur", 1.0, 0.0)
    for a, b in zip(out[2]["tokens"], out[1]["tokens"]):
        assert a["p_blank"] == pytest.approx(b["p_blank"], abs=1e-6)
    blurred_start = out[2]["attributions"][0]["insertion_curve"][0][1]  # the whole answer on the blurred image
    black_start = np.mean([t["p_blank"] for t in out[2]["tokens"]])
    assert abs(blurred_start - black_start) > 1e-4
    assert out[2]["stats"]["forward_passes"] == out[2]["attributions"][0]["forward_passes"] + 2
    assert isinstance(out[3], AuditInputError) and "outside the answer" in str(out[3])
    with pytest.raises(AuditInputError, match="baseline"):
        auditor.check(AuditRequest(s.scene.image, s.prompt, s.truth, baseline="white"))
    with pytest.raises(AuditInputError, match="lambda"):
        auditor.check(AuditRequest(s.scene.image, s.prompt, s.truth, lambda1=0.0, lambda2=0.0))
