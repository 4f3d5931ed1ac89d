"""The image processor as a lookup table: the processor's numbers bit for bit where it applies,
the processor itself everywhere else."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mllm_audit.explainers.masking import MaskedImage
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


@pytest.mark.integration
def test_masked_images_are_composed_from_prepared_values_bit_for_bit(reference_scorer):
    lookup = reference_scorer.pixel_lookup
    a, b, grey = *random_images(2, (96, 96), seed=3), np.full((96, 96, 3), 128, np.uint8)
    rng = np.random.default_rng(4)
    masks = [rng.random((96, 96)) < share for share in (0.0, 0.3, 0.7, 1.0)]
    # masked copies of two images over two baselines, mixed with plain arrays in one batch
    batch = [MaskedImage(a, np.zeros_like(a), m) for m in masks] + [b, MaskedImage(b, grey, masks[1]), a]
    composed = [np.asarray(i) for i in batch]
    assert np.array_equal(composed[0], np.zeros_like(a)) and np.array_equal(composed[3], a)
    assert torch.equal(lookup.pixel_values(batch), lookup.pixel_values(composed))
    assert torch.equal(
        lookup.pixel_values(composed),
        reference_scorer.processor.image_processor(images=composed, return_tensors="pt")["pixel_values"],
    )
    # and the scorer gives them the scores of the composed pixels
    sample = held_out_sample("colour", 2)
    audit = reference_scorer.prepare(sample.prompt, sample.truth, (96, 96))
    lazy = reference_scorer.log_probs([(audit, i) for i in batch])
    eager = reference_scorer.log_probs([(audit, to_pil(i)) for i in composed])
    assert all(np.array_equal(x, y) for x, y in zip(lazy, eager))
    with pytest.raises(ValueError, match="do not match"):
        MaskedImage(a, grey[:80], masks[0])


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
