"""The image processor as a lookup table: the processor's numbers bit for bit where it applies,
the processor itself everywhere else."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mllm_audit.models.pixel_lookup import PixelLookup
from mllm_audit.models.scorer import to_pil

from tests.conftest import held_out_sample


def random_images(n: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(*size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.integration
def test_the_table_gives_the_processors_numbers_and_the_same_scores(reference_scorer):
    scorer = reference_scorer
    lookup = scorer.pixel_lookup
    assert lookup is not None and lookup.size == (96, 96)
    images = random_images(5, (96, 96))
    processed = scorer.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    assert torch.equal(lookup.pixel_values(images), processed)
    # the scorer takes the table for arrays at the model's size, the processor for PIL images
    sample = held_out_sample("colour", 1)
    audit = scorer.prepare(sample.prompt, sample.truth, (96, 96))
    pairs = [(audit, sample.scene.image), *[(audit, i) for i in images]]
    fast = scorer.log_probs(pairs)
    slow = scorer.log_probs([(a, to_pil(i)) for a, i in pairs])
    assert all(np.array_equal(f, s) for f, s in zip(fast, slow))
    assert not lookup.applies([np.zeros((80, 96, 3), np.uint8)]) and not lookup.applies([images[0].astype(np.int16)])


@pytest.mark.unit
def test_no_table_where_the_processor_resizes_or_keeps_the_aspect_ratio():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    common = {"image_mean": [0.5] * 3, "image_std": [0.25] * 3}
    per_pixel = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, **common)
    assert PixelLookup.probe(per_pixel) is not None
    # resized up to 48 and cropped to 32: a pixel's value mixes its neighbours', so no table
    resizing = CLIPImageProcessorPil(size={"shortest_edge": 48}, crop_size={"height": 32, "width": 32}, **common)
    assert PixelLookup.probe(resizing) is None
    no_crop = CLIPImageProcessorPil(size={"shortest_edge": 32}, do_center_crop=False, **common)
    assert PixelLookup.probe(no_crop) is None  # the output size follows the input's aspect ratio
    tiny = CLIPImageProcessorPil(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}, **common)
    assert PixelLookup.probe(tiny) is None  # 64 pixels cannot hold 256 values


@pytest.mark.unit
def test_no_table_where_a_channel_depends_on_another():
    """A processor that mixes channels (here: swaps red and blue) is per pixel but not per channel."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    class SwappingProcessor(CLIPImageProcessorPil):
        def __call__(self, images, **kwargs):
            return super().__call__(images=[np.ascontiguousarray(i[..., ::-1]) for i in images], **kwargs)

    common = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}
    assert PixelLookup.probe(CLIPImageProcessorPil(image_mean=[0.1, 0.5, 0.9], image_std=[0.2] * 3, **common))
    assert PixelLookup.probe(SwappingProcessor(image_mean=[0.1, 0.5, 0.9], image_std=[0.2] * 3, **common)) is None
