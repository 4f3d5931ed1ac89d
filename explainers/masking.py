"""Build the masked images that black-box explainers score.

Masking happens in pixel space, before the model's processor (EAGLE, arXiv 2509.22496,
step 2): kept pixels come from the image, removed pixels from a baseline image.
EAGLE's baseline is black; blur and mean-colour baselines are offered for comparisons.

Searches yield `MaskedImage`s, not composed pixels: a search scores hundreds of masked copies
of one image, and a scorer that prepares pixels one by one (models/pixel_lookup.py) prepares
the image and the baseline once and composes the prepared values, on the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter

BASELINES = ("black", "blur", "mean")


def baseline_image(image: np.ndarray, kind: str = "black", blur_sigma: float | None = None) -> np.ndarray:
    """The "nothing to see" image that removed pixels are replaced with, same shape, uint8."""
    image = np.asarray(image, dtype=np.uint8)
    if kind == "black":
        return np.zeros_like(image)
    if kind == "mean":
        mean = image.reshape(-1, image.shape[-1]).mean(axis=0)
        return np.broadcast_to(np.round(mean).astype(np.uint8), image.shape).copy()
    if kind == "blur":
        # Strong enough to erase object shapes while keeping the global colour layout;
        # the default scales with the image so it means the same at every resolution.
        sigma = blur_sigma if blur_sigma is not None else max(image.shape[:2]) / 16.0
        out: NDArray[np.float32] = gaussian_filter(image.astype(np.float32), sigma=(sigma, sigma, 0), mode="nearest")
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown baseline {kind!r}; expected one of {BASELINES}")


def resolve_baseline(image: np.ndarray, baseline: str | np.ndarray) -> np.ndarray:
    """Accept a baseline kind or a ready baseline image of the image's shape."""
    if isinstance(baseline, str):
        return baseline_image(image, baseline)
    baseline = np.asarray(baseline, dtype=np.uint8)
    if baseline.shape != np.shape(image):
        raise ValueError(f"baseline shape {baseline.shape} differs from image shape {np.shape(image)}")
    return baseline


def compose(image: np.ndarray, baseline: np.ndarray, keep_mask: np.ndarray) -> np.ndarray:
    """Kept pixels (keep_mask True) from the image, the others from the baseline, as uint8."""
    keep = np.asarray(keep_mask, dtype=bool)
    if keep.shape != np.shape(image)[:2]:
        raise ValueError(f"mask shape {keep.shape} does not match image {np.shape(image)[:2]}")
    return np.where(keep[:, :, None], image, baseline).astype(np.uint8, copy=False)  # no second copy of uint8


@dataclass(frozen=True, eq=False)
class MaskedImage:
    """`image` where `keep` is True, `baseline` elsewhere, composed only when read as an array."""

    image: NDArray[np.uint8]
    baseline: NDArray[np.uint8]
    keep: NDArray[np.bool_]

    def __post_init__(self) -> None:
        if self.baseline.shape != self.image.shape or self.keep.shape != self.image.shape[:2]:
            raise ValueError(
                f"image {self.image.shape}, baseline {self.baseline.shape} and mask {self.keep.shape} do not match"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        return self.image.shape

    @property
    def dtype(self) -> np.dtype[np.uint8]:
        return self.image.dtype

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> NDArray[Any]:
        pixels = compose(self.image, self.baseline, self.keep)
        return pixels if dtype is None else pixels.astype(dtype, copy=False)


# What a black-box explainer yields to be scored: pixels, or pixels still to be composed.
ImageLike: TypeAlias = NDArray[np.uint8] | MaskedImage
