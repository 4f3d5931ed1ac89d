"""Draw a heatmap over its image, for people to look at."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw


def overlay_heatmap(
    image: NDArray[np.uint8],
    heat: NDArray[np.float32],
    box: tuple[int, int, int, int] | None = None,
    alpha: float = 0.6,
) -> Image.Image:
    """Red (0) to yellow (1) blended into the image in proportion to the heat; `box` in cyan.

    `heat` is resized to the image when its size differs; `box` is (x0, y0, x1, y1), x1 and y1 exclusive.
    """
    h, w = image.shape[:2]
    values = np.asarray(Image.fromarray(np.asarray(heat, dtype=np.float32)).resize((w, h), Image.Resampling.BILINEAR))
    values = np.clip(values, 0.0, 1.0)[..., None]
    colour = np.concatenate([np.ones_like(values), values, np.zeros_like(values)], axis=2) * 255.0
    weight = alpha * values
    blended = (image.astype(np.float32) * (1 - weight) + colour * weight).astype(np.uint8)
    out = Image.fromarray(blended)
    if box is not None:
        x0, y0, x1, y1 = box  # PIL's rectangle includes its far corner
        ImageDraw.Draw(out).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(0, 255, 255))
    return out
