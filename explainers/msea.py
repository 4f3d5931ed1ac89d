"""MSEA, Multi-Scale Explanation Aggregation (arXiv 2509.22415, visual branch).

The base token map is computed on the image shown at several scales, every map is brought
back to the image's pixels, and the maps are averaged: at a larger scale an object spans
more image tokens (finer detail), at a smaller one fewer (a more holistic view).

Many families (LLaVA among them) resize every image to one fixed input size, so resizing
the image would change nothing; the scale is realised in image space instead, and every
view has the image's own size (so the audit's token sequence fits every view, also for
families whose token count depends on the image size):

- scale s < 1: the image shrunk by s, centred on a canvas of its own size filled with the
  image's mean colour (objects cover fewer tokens);
- s = 1: the image itself;
- s > 1: zoom. The image is cut into tiles of 1/s of its width and height, overlapping by
  half a tile (n = ceil(2 (s - 1)) + 1 tiles per side), and each tile is enlarged to the
  image size. Each tile costs one forward; the tile maps are stitched back, averaging
  where tiles overlap.

Default scales (0.75, 1, 1.5, 2): 1 + 1 + 4 + 9 = 15 forwards. Each scale's map is scaled
to a maximum of 1 before the average, so every scale has the same say.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from mllm_audit.explainers.masking import baseline_image
from numpy.typing import NDArray
from PIL import Image

DEFAULT_SCALES = (0.75, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class View:
    """One image shown to the model: ``image[dst] = resize(original[src])``. Boxes are (x0, y0, x1, y1)."""

    image: np.ndarray  # uint8 [h, w, 3], the original's size
    scale: float
    src: tuple[int, int, int, int]  # the part of the original image shown
    dst: tuple[int, int, int, int]  # where it lies in the view


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an image (uint8 RGB) or a float map to size (width, height), bilinear."""
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    img = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F")
    return np.asarray(img.resize(size, Image.Resampling.BILINEAR))


def tile_offsets(length: int, tile: int, n: int) -> list[int]:
    if n <= 1 or tile >= length:
        return [0]
    return sorted({int(round(i * (length - tile) / (n - 1))) for i in range(n)})


def make_views(image: np.ndarray, scales: Iterable[float] = DEFAULT_SCALES) -> list[View]:
    """The views of ``image`` for each scale (see the module docstring), in order of ``scales``."""
    image = np.asarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    full = (0, 0, w, h)
    views: list[View] = []
    for s in scales:
        s = float(s)
        if s <= 0:
            raise ValueError(f"scales must be positive, got {s}")
        if math.isclose(s, 1.0):
            views.append(View(image, 1.0, full, full))
        elif s < 1:
            sw, sh = max(1, round(w * s)), max(1, round(h * s))
            x0, y0 = (w - sw) // 2, (h - sh) // 2
            canvas = baseline_image(image, "mean")
            canvas[y0 : y0 + sh, x0 : x0 + sw] = _resize(image, (sw, sh))
            views.append(View(canvas, s, full, (x0, y0, x0 + sw, y0 + sh)))
        else:
            tw, th = max(1, round(w / s)), max(1, round(h / s))
            n = math.ceil(2 * (s - 1) - 1e-9) + 1
            for y in tile_offsets(h, th, n):
                for x in tile_offsets(w, tw, n):
                    tile = image[y : y + th, x : x + tw]
                    views.append(View(_resize(tile, (w, h)), s, (x, y, x + tw, y + th), full))
    return views


def to_source(view: View, heat: np.ndarray) -> np.ndarray:
    """A map in the view's pixels, cut to the shown part and resized onto its place in the original."""
    x0, y0, x1, y1 = view.dst
    sx0, sy0, sx1, sy1 = view.src
    shown: NDArray[np.float32] = _resize(np.asarray(heat, dtype=np.float32)[y0:y1, x0:x1], (sx1 - sx0, sy1 - sy0))
    return np.maximum(shown, 0.0)


class ScaleStitcher:
    """Accumulates per-view maps (in view pixels) into one map per scale in the original's pixels."""

    def __init__(self, shape: tuple[int, int]):
        self.shape = shape
        self._sum: dict[float, np.ndarray] = {}
        self._cover: dict[float, np.ndarray] = {}

    def add(self, view: View, heat: np.ndarray, seen: np.ndarray) -> None:
        """``seen`` [h, w] in view pixels: 1 where the model's tokens cover the view, else 0."""
        if view.scale not in self._sum:
            self._sum[view.scale] = np.zeros(self.shape, dtype=np.float64)
            self._cover[view.scale] = np.zeros(self.shape, dtype=np.float64)
        sx0, sy0, sx1, sy1 = view.src
        self._sum[view.scale][sy0:sy1, sx0:sx1] += to_source(view, heat)
        self._cover[view.scale][sy0:sy1, sx0:sx1] += to_source(view, seen)

    def scale_maps(self) -> dict[float, np.ndarray]:
        """Mean map per scale (0 where no view saw the pixel)."""
        out = {}
        for s, total in self._sum.items():
            cover = self._cover[s]
            out[s] = np.where(cover > 1e-6, total / np.maximum(cover, 1e-6), 0.0)
        return out


def agreement_weights(maps: list[np.ndarray]) -> NDArray[np.float64]:
    """A weight per map: its Pearson correlation with the mean of the others, clipped at 0.

    A view the model reads out of its training distribution gives a map that agrees with no
    other scale, and gets little say. Equal weights where no map agrees with the rest (or
    with fewer than three maps, where "the others" is one map).
    """
    n = len(maps)
    if n < 3:
        return np.ones(n)
    flat = np.stack([np.asarray(m, dtype=np.float64).ravel() for m in maps])
    total = flat.sum(axis=0)
    weights = np.zeros(n)
    for i in range(n):
        others = (total - flat[i]) / (n - 1)
        if flat[i].std() > 0 and others.std() > 0:
            weights[i] = max(0.0, float(np.corrcoef(flat[i], others)[0, 1]))
    return weights if weights.sum() > 0 else np.ones(n)
