"""The image processor as a lookup table, for images already at its output size.

At its output size (nothing to resize or crop) a CLIP-style processor works pixel by pixel:
each channel value is rescaled and normalised on its own. That is a table of 256 floats per
channel, read here off the processor's own output for a probe image holding every value, so
it reproduces the processor's numbers bit for bit. An EAGLE search scores hundreds of masked
copies of one image; the table turns the processor's per-image Python (about 0.5 ms per 96-px
image, a tenth of a forward of the reference model on a CPU) into one gather per image, and a
masked copy (explainers/masking.py) into a choice, pixel by pixel, between its image's and its
baseline's prepared values, made on the model's device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from mllm_audit.explainers.masking import ImageLike, MaskedImage
from numpy.typing import NDArray

CHANNEL_OFFSETS = (0, 85, 170)  # the probe's channels differ, so no channel can be read for another


def output_size(image_processor: Any) -> tuple[int, int] | None:
    """(height, width) of the processor's pixel values, where its config fixes them."""
    for attr, enabled in (("crop_size", "do_center_crop"), ("size", "do_resize")):
        size = getattr(image_processor, attr, None)
        if getattr(image_processor, enabled, False) and size is not None:
            height, width = getattr(size, "height", None), getattr(size, "width", None)
            shortest = getattr(size, "shortest_edge", None)
            if height and width:
                return int(height), int(width)
            if shortest and attr == "size" and not getattr(image_processor, "do_center_crop", False):
                return None  # the output keeps the input's aspect ratio: no one size
            if shortest:
                return int(shortest), int(shortest)
    return None


def _probe_image(height: int, width: int) -> NDArray[np.uint8]:
    index = np.arange(height * width).reshape(height, width)
    return np.stack([(index + offset) % 256 for offset in CHANNEL_OFFSETS], axis=-1).astype(np.uint8)


@dataclass(frozen=True)
class PixelLookup:
    table: NDArray[np.float32]  # [3, 256]: the processor's value for each channel and uint8 value
    size: tuple[int, int]  # (height, width) of the images it applies to

    @classmethod
    def probe(cls, image_processor: Any) -> PixelLookup | None:
        """The processor's table, or None where its output at its own size is not pixel by pixel
        and channel by channel (checked on a second probe with each channel's values shuffled on
        their own) or is not one `pixel_values` array."""
        size = output_size(image_processor)
        if size is None or size[0] * size[1] < 256:
            return None
        probe = _probe_image(*size)
        rng = np.random.default_rng(0)
        shuffled = np.stack([rng.permutation(probe[..., c].ravel()).reshape(size) for c in range(3)], axis=-1)
        out = image_processor(images=[probe, shuffled], return_tensors="pt")
        if set(out.keys()) != {"pixel_values"} or tuple(out["pixel_values"].shape) != (2, 3, *size):
            return None
        values = out["pixel_values"].numpy()
        table = np.zeros((3, 256), dtype=np.float32)
        for c in range(3):
            table[c, probe[..., c].ravel()] = values[0, c].ravel()  # every value occurs; any one occurrence will do
        lookup = cls(table, size)
        if not np.array_equal(lookup.pixel_values([probe, shuffled]).numpy(), values):
            return None  # a value's output depends on where it is or what is around it
        return lookup

    def applies(self, images: Sequence[ImageLike]) -> bool:
        return all(i.shape == (*self.size, 3) and i.dtype == np.uint8 for i in images)

    def pixel_values(self, images: Sequence[ImageLike], device: torch.device | str = "cpu") -> torch.Tensor:
        """`[images, 3, height, width]` float32 on `device`, as the processor would give them.

        A `MaskedImage` is composed from its image's and its baseline's values, each prepared once
        per call and moved to `device` once: per masked image only its mask is moved there."""
        out = torch.empty((len(images), 3, *self.size), dtype=torch.float32, device=device)
        prepared: dict[int, torch.Tensor] = {}  # id of a source array -> its values on the device

        def values(pixels: NDArray[np.uint8]) -> torch.Tensor:
            if id(pixels) not in prepared:
                channels = np.stack([self.table[c][pixels[..., c]] for c in range(3)])
                prepared[id(pixels)] = torch.from_numpy(channels).to(device)
            return prepared[id(pixels)]

        for row, image in enumerate(images):
            if isinstance(image, MaskedImage):
                keep = torch.from_numpy(image.keep).to(device)
                torch.where(keep, values(image.image), values(image.baseline), out=out[row])
            else:
                out[row] = values(image)
        return out
