"""The heat colour map of every picture the service draws: overlays, the viewer, the report.

Perceptually uniform by construction and readable in greyscale: CIELAB lightness rises
linearly from dark blue-violet through teal to yellow (a viridis-like path), so equal steps
of heat are equal steps of perceived lightness. Where a colour of the path is outside sRGB
its chroma is reduced, never its lightness. The viewer and the HTML report get the same
table (`COLORMAP_HEX`), so the three never disagree.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

SIZE = 256
_LIGHTNESS = (20.0, 92.0)  # L* of value 0 and of value 1
# (a*, b*) at values 0, 0.5 and 1: blue-violet, teal-green, yellow (a quadratic Bezier through them)
_CHROMA_PATH = ((28.0, -52.0), (-42.0, 2.0), (-6.0, 82.0))
_WHITE = (0.95047, 1.0, 1.08883)  # D65
_XYZ_TO_RGB = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]])


def _lab_to_linear_rgb(lab: NDArray[np.float64]) -> NDArray[np.float64]:
    lightness, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    fy = (lightness + 16.0) / 116.0
    f = np.stack([fy + a / 500.0, fy, fy - b / 200.0], axis=-1)
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * np.array(_WHITE)
    rgb: NDArray[np.float64] = xyz @ _XYZ_TO_RGB.T
    return rgb


def _gamma(linear: NDArray[np.float64]) -> NDArray[np.float64]:
    c = np.clip(linear, 0.0, 1.0)
    out: NDArray[np.float64] = np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)
    return out


def _colour(t: float) -> NDArray[np.float64]:
    p0, p1, p2 = (np.array(p) for p in _CHROMA_PATH)
    # the Bezier's control point that makes it pass through p1 at t = 0.5
    control = 2 * p1 - (p0 + p2) / 2
    ab = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * control + t**2 * p2
    lightness = _LIGHTNESS[0] + t * (_LIGHTNESS[1] - _LIGHTNESS[0])
    low, high = 0.0, 1.0  # the largest chroma scale that stays inside sRGB (bisection)
    for _ in range(30):
        scale = high if low == high else (low + high) / 2
        linear = _lab_to_linear_rgb(np.array([lightness, *(ab * scale)]))
        inside = bool(np.all(linear >= -1e-9) and np.all(linear <= 1 + 1e-9))
        if scale == 1.0 and inside:
            low = 1.0
            break
        low, high = (scale, high) if inside else (low, scale)
    return _gamma(_lab_to_linear_rgb(np.array([lightness, *(ab * low)])))


def _table() -> NDArray[np.uint8]:
    rgb = np.stack([_colour(t) for t in np.linspace(0.0, 1.0, SIZE)])
    return np.round(rgb * 255).astype(np.uint8)


COLORMAP: NDArray[np.uint8] = _table()  # [256, 3] sRGB, value 0 first
COLORMAP_HEX: list[str] = ["#" + "".join(f"{int(c):02x}" for c in row) for row in COLORMAP]


def colourise(values: NDArray[np.floating]) -> NDArray[np.uint8]:
    """Values in [0, 1] (clipped) to sRGB uint8 [..., 3]."""
    index = np.round(np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (SIZE - 1)).astype(np.int64)
    out: NDArray[np.uint8] = COLORMAP[index]
    return out
