"""Bounded work per request, and the service's own output: response-size budget, image header
checks, third-party warnings as JSON log lines."""

from __future__ import annotations

import io
import json
import logging
import time
import warnings

import numpy as np
import pytest
from mllm_audit.service.api import AuditAPI, Envelope
from mllm_audit.service.config import Settings
from mllm_audit.service.images import ImageError, image_to_rgb
from mllm_audit.service.schemas import ExplainRequest, HeatmapOptions
from mllm_audit.service.serialize import estimated_bytes
from PIL import Image

from tests.test_service_units import b64, encode


@pytest.mark.unit
def test_a_thin_image_is_refused_from_its_header_without_decoding(monkeypatch):
    buf = io.BytesIO()
    Image.new("L", (16_000_000, 1)).save(buf, format="PNG")  # 16 MP: within the pixel limit, 1 pixel tall

    def no_decoding(self, *args):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    with pytest.raises(ImageError) as refused:
        image_to_rgb(buf.getvalue(), max_pixels=16_000_000)
    assert refused.value.status == 422 and "16000000x1" in refused.value.detail and "8x8" in refused.value.detail


@pytest.mark.unit
def test_token_span_targets_serialise_without_a_pydantic_warning():
    body = {"image": "aGk=", "prompt": "p", "answer": "a b", "targets": [{"token_start": 0, "token_end": 1}]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dumped = ExplainRequest.model_validate(body).model_dump(mode="json")
    assert dumped["targets"] == [{"token_start": 0, "token_end": 1}]


@pytest.mark.unit
def test_warnings_and_library_logs_are_json_lines():
    from mllm_audit.service import logs

    stream = io.StringIO()
    try:
        with warnings.catch_warnings():  # pytest records warnings itself: route them to logging again
            warnings.simplefilter("always")
            logging.captureWarnings(False)
            logs.configure("info", stream=stream)
            warnings.warn("a library's warning", UserWarning, stacklevel=1)
        logging.getLogger("litserve").error("a litserve error")
        logging.getLogger("uvicorn.error").warning("a uvicorn warning")
    finally:
        logs.configure("info")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("py.warnings", "warning"),
        ("litserve", "error"),
        ("uvicorn.error", "warning"),
    ]
    assert "a library's warning" in lines[0]["event"]


@pytest.mark.unit
def test_the_response_estimate_grows_with_targets_pixels_and_encoding():
    one = estimated_bytes(1, (512, 512), "array", (512, 512), 64, 8)
    assert 7 * 512 * 512 < one < 9 * 512 * 512
    assert estimated_bytes(8, (512, 512), "array", (512, 512), 64, 8) > 7.5 * one
    assert estimated_bytes(1, (512, 512), "png", (512, 512), 64, 8) < one / 3
    assert estimated_bytes(1, (512, 512), "none", (512, 512), 0, 8) < 20_000


@pytest.mark.integration
def test_the_estimate_bounds_real_responses_and_a_runaway_request_is_refused(reference_scorer):
    """On the reference model: the estimate is above the real body and within a few times it;
    the 437 MB request of the reliability report is a 422 naming the limit, before any forward pass."""
    import torch
    from mllm_audit.explainers.audit import Auditor
    from mllm_audit.models.reference import world

    api = AuditAPI(Settings(max_regions=16, max_forward_passes=400))
    api.auditor = Auditor(reference_scorer, forward_batch_size=16, max_regions=16)
    api.model_block = {"id": "reference", "family": "llava", "revision": None}
    scene = world.render_scene(np.random.default_rng(50_011))
    image = b64(encode(Image.fromarray(scene.image)))
    answer = f"a {scene.objects[0].colour} {scene.objects[0].shape}"

    def envelope(**fields) -> Envelope:
        body = ExplainRequest.model_construct(image=image, prompt="Describe the image.", answer=answer, **fields)
        now = time.monotonic()
        return Envelope("explain", "e", now, now + 120, body.model_dump(mode="json"), frozenset(fields))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for fields in (
            {"method": "eagle", "regions": 12, "heatmap": HeatmapOptions(encoding="array")},
            {"method": "tam", "targets": "tokens", "heatmap": HeatmapOptions(encoding="array", width=96)},
            {"method": "tam", "targets": "tokens", "heatmap": HeatmapOptions(encoding="png")},
        ):
            decoded = api.decode_request(envelope(**fields))
            req = decoded.request
            targets = reference_scorer.count_tokens(answer) if req.targets == "tokens" else 1
            size = decoded.heatmap_size or (req.image.shape[1], req.image.shape[0])
            regions = 0 if req.method == "tam" else req.regions
            estimate = estimated_bytes(
                targets, size, decoded.heatmap_encoding, req.image.shape[1::-1], regions, targets
            )
            [output] = api.predict([decoded])
            actual = len(api.encode_response(output)[0])
            assert actual < estimate, (fields, actual, estimate)  # an upper bound: refusals are never wrong
            if decoded.heatmap_encoding == "array":  # and, where heatmaps dominate, not far above
                assert estimate < 6 * actual, (fields, actual, estimate)
    finally:
        torch.set_num_threads(threads)

    runaway = envelope(
        method="tam", targets="tokens", heatmap=HeatmapOptions(encoding="array", width=2048, height=2048)
    )
    refused = api.decode_request(runaway)
    assert refused.status == 422 and "MLLM_AUDIT_MAX_RESPONSE_BYTES" in refused.detail and "MB" in refused.detail


@pytest.mark.unit
def test_an_unsized_heatmap_of_a_photo_stays_small():
    from mllm_audit.service.api import heatmap_size

    s = Settings()
    width, height = heatmap_size({}, 4000, 3000, s.max_heatmap_pixels, s.default_heatmap_pixels)
    assert width * height <= s.default_heatmap_pixels and abs(width / height - 4 / 3) < 0.01
    # one map as an array was an 18 MB body at the photo's size; now about 2 MB
    assert estimated_bytes(1, (width, height), "array", (4000, 3000), 64, 8) < 3_000_000


@pytest.mark.unit
def test_retry_after_is_spread_so_refused_clients_do_not_return_together():
    from mllm_audit.service.shared import retry_after

    waits = [int(retry_after(10.0)) for _ in range(200)]
    assert min(waits) >= 10 and max(waits) <= 15 and len(set(waits)) >= 4
    assert {int(retry_after(0.01)) for _ in range(50)} <= {1, 2}  # never 0, never long for a short queue


@pytest.mark.unit
def test_an_upload_form_becomes_the_json_body():
    import base64

    import httpx
    from mllm_audit.service.multipart import FormError, form_to_json

    png = encode(Image.new("RGB", (16, 16), (200, 10, 10)))
    fields = {"prompt": "What colour?", "answer": "42", "regions": "16", "heatmap": '{"encoding": "png"}'}
    request = httpx.Request("POST", "http://x/", data=fields | {"method": "tam"}, files={"image": ("a.png", png)})
    body = json.loads(form_to_json(request.read(), request.headers["content-type"]))
    assert base64.b64decode(body.pop("image")) == png
    assert body == {
        "prompt": "What colour?",
        "answer": "42",
        "regions": 16,
        "heatmap": {"encoding": "png"},
        "method": "tam",
    }
    extra = httpx.Request("POST", "http://x/", data=fields, files={"image": ("a.png", png), "other": ("b.png", png)})
    with pytest.raises(FormError, match="only image"):
        form_to_json(extra.read(), extra.headers["content-type"])
    with pytest.raises(FormError, match="does not parse"):
        form_to_json(b"not a form", "multipart/form-data; boundary=xyz")


@pytest.mark.integration
def test_the_documented_response_examples_are_real_answers(reference_scorer):
    """The answers /docs shows (service/examples) validate, and the model still gives them."""
    from pathlib import Path

    from mllm_audit.explainers.audit import Auditor
    from mllm_audit.explainers.calibration import CALIBRATION_FILE
    from mllm_audit.explainers.calibration import load as load_calibration
    from mllm_audit.explainers.request import AuditRequest
    from mllm_audit.service.schemas import ExplainResponse, RelianceResponse
    from mllm_audit.service.server import response_example

    reliance = RelianceResponse.model_validate(response_example("reliance"))
    explain = ExplainResponse.model_validate(response_example("explain"))
    assert [(c.text, c.risk_label) for c in reliance.claims] == [("red circle", "low"), ("blue square", "high")]
    assert explain.attributions and explain.attributions[0].heatmap.encoding == "png"
    image = np.asarray(
        Image.open(Path(__file__).resolve().parents[1] / "examples/images/red-circle.png").convert("RGB")
    )
    request = AuditRequest(image, "Describe the image.", "a red circle and a blue square.", with_attributions=False)
    shipped = load_calibration(Path(reference_scorer.loaded.path) / CALIBRATION_FILE)  # as the service loads it
    [now] = Auditor(reference_scorer, calibration=shipped).run([request])
    assert [(c.text, c.risk_label) for c in now.claims] == [(c.text, c.risk_label) for c in reliance.claims]
    assert [t.text for t in now.tokens] == [t.text for t in reliance.tokens]
