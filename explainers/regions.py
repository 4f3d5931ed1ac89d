"""Split an image into superpixel regions, and describe regions compactly for the API.

EAGLE ranks regions, not pixels: the image is sparsified into about N superpixels
(EAGLE, arXiv 2509.22496, step 1). We use scikit-image's SLIC in its zero-parameter
form (SLICO, `slic_zero=True`), the same family as the OpenCV SLICO of the reference code.

Masks go over the wire as run-length encodings in ROW-MAJOR order (unlike COCO, which
is column-major): flatten the [h, w] mask row by row, then count alternating runs,
starting with a run of zeros (0 when the first pixel is set).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from skimage.segmentation import slic


def superpixel_regions(
    image: np.ndarray, n_regions: int = 64, compactness: float = 10.0, max_num_iter: int = 20
) -> np.ndarray:
    """Label every pixel of an H x W x 3 uint8 image with a region id in 0..K-1, K ~ n_regions.

    Deterministic: SLIC uses no randomness, so the same image always gives the same labels.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {image.shape}")
    if n_regions < 1:
        raise ValueError("n_regions must be at least 1")
    h, w = image.shape[:2]
    if n_regions == 1 or h * w == 1:
        return np.zeros((h, w), dtype=np.int32)
    raw = slic(
        image,
        n_segments=n_regions,
        compactness=compactness,
        max_num_iter=max_num_iter,
        slic_zero=True,
        start_label=0,
        enforce_connectivity=True,
        channel_axis=-1,
    )
    # SLIC may skip ids after merging small segments: relabel to consecutive 0..K-1 so
    # region id == row of region_masks().
    _, consecutive = np.unique(raw, return_inverse=True)
    # SLIC's count is a hint (a checkerboard of 16 cells asked for 16 gave 3): split or merge to n
    return fit_region_count(consecutive.reshape(h, w).astype(np.int32), n_regions)


def fit_region_count(labels: np.ndarray, n_regions: int) -> NDArray[np.int32]:
    """Split the largest or merge the smallest regions until there are n_regions (or one per pixel).

    Splitting halves a region at the median of its pixels along its longer side; merging gives the
    smallest region to the neighbour it shares the longest border with. Ids stay consecutive.
    """
    out = np.asarray(labels, dtype=np.int32).copy()
    target = min(int(n_regions), out.size)
    count = int(out.max()) + 1
    while count < target:
        sizes = np.bincount(out.ravel(), minlength=count)
        biggest = int(np.argmax(sizes))
        ys, xs = np.nonzero(out == biggest)
        coord = ys if np.ptp(ys) >= np.ptp(xs) else xs
        order = np.argsort(coord, kind="stable")
        half = order[len(order) // 2 :]
        out[ys[half], xs[half]] = count
        count += 1
    while count > target:
        sizes = np.bincount(out.ravel(), minlength=count)
        smallest = int(np.argmin(sizes))
        into = _longest_border_neighbour(out, smallest)
        out[out == smallest] = into
        out[out == count - 1] = smallest  # the last id fills the hole: ids stay 0..count-2
        count -= 1
    return out


def _longest_border_neighbour(labels: np.ndarray, region: int) -> int:
    pairs = []
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        touch = (a == region) ^ (b == region)
        pairs.append(np.where(a[touch] == region, b[touch], a[touch]))
    neighbours = np.concatenate(pairs)
    if neighbours.size == 0:  # an island: merge with any other region
        return 1 if region == 0 else 0
    values, counts = np.unique(neighbours, return_counts=True)
    return int(values[np.argmax(counts)])


def region_adjacency(labels: np.ndarray) -> list[set[int]]:
    """The ids of the regions touching each region (4-connected), by region id."""
    labels = np.asarray(labels)
    k = int(labels.max()) + 1 if labels.size else 0
    touching: list[set[int]] = [set() for _ in range(k)]
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        differ = a != b
        for u, v in set(zip(a[differ].tolist(), b[differ].tolist())):
            touching[u].add(v)
            touching[v].add(u)
    return touching


def region_masks(labels: np.ndarray) -> np.ndarray:
    """One boolean mask per region id: bool [K, H, W] with K = labels.max() + 1."""
    labels = np.asarray(labels)
    k = int(labels.max()) + 1 if labels.size else 0
    masks: NDArray[np.bool_] = labels[None, :, :] == np.arange(k)[:, None, None]
    return masks


def labels_at(labels: np.ndarray, size: tuple[int, int]) -> NDArray[np.int32]:
    """A label map at (width, height), nearest-neighbour so regions keep their ids (no blended borders)."""
    resized = Image.fromarray(np.asarray(labels).astype(np.int32)).resize(size, Image.Resampling.NEAREST)
    return np.asarray(resized, dtype=np.int32)


def region_bbox(mask: np.ndarray) -> list[int]:
    """Tight box [x0, y0, x1, y1] of a boolean mask, x1 and y1 exclusive; [0, 0, 0, 0] if empty."""
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Run-length encode a boolean [h, w] mask, row-major, first run counts zeros."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    flat = mask.ravel(order="C").astype(np.int8)
    # Run boundaries are where the value changes; a leading zero-length run of zeros
    # keeps "even index = zeros" true when the mask starts with a set pixel.
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"encoding": "rle", "size": [int(h), int(w)], "order": "row-major", "counts": [int(c) for c in counts]}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of rle_encode; also reads column-major counts when `order` says so."""
    h, w = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {counts.sum()}, expected {h * w}")
    values = np.arange(counts.size) % 2 == 1  # runs alternate zeros, ones, zeros, ...
    flat = np.repeat(values, counts)
    order: Literal["C", "F"] = "F" if rle.get("order", "row-major") == "column-major" else "C"
    return flat.reshape((h, w), order=order)
