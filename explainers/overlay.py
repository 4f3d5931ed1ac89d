"""Draw a heatmap over its image, for people to look at: the plain overlay, and a figure with
a colour bar and a caption (the target text and what the values mean)."""

from __future__ import annotations

import numpy as np
from mllm_audit.explainers.colormap import colourise
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

BOX_COLOUR = (255, 64, 160)  # magenta: apart from every colour of the heat map
MIN_SIDE = 320  # small images are enlarged (nearest) so the caption and the bar stay readable


def overlay_heatmap(
    image: NDArray[np.uint8],
    heat: NDArray[np.float32],
    box: tuple[int, int, int, int] | None = None,
    alpha: float = 0.6,
) -> Image.Image:
    """The colour map (mllm_audit.explainers.colormap) blended into the image at `alpha`; `box` drawn.

    The same alpha everywhere, so every colour reads against the colour bar as it is.
    `heat` is resized to the image when its size differs; `box` is (x0, y0, x1, y1), x1 and y1 exclusive.
    """
    h, w = image.shape[:2]
    values = np.asarray(Image.fromarray(np.asarray(heat, dtype=np.float32)).resize((w, h), Image.Resampling.BILINEAR))
    colour = colourise(values).astype(np.float32)
    blended = (image.astype(np.float32) * (1 - alpha) + colour * alpha).round().astype(np.uint8)
    out = Image.fromarray(blended)
    if box is not None:
        x0, y0, x1, y1 = box  # PIL's rectangle includes its far corner
        ImageDraw.Draw(out).rectangle([x0, y0, x1 - 1, y1 - 1], outline=BOX_COLOUR, width=max(1, w // 160))
    return out


def heatmap_figure(
    image: NDArray[np.uint8],
    heat: NDArray[np.float32],
    title: str,
    note: str,
    box: tuple[int, int, int, int] | None = None,
    alpha: float = 0.6,
) -> Image.Image:
    """The overlay with a colour bar (0 to 1) on its right, `title` above and `note` below."""
    overlay = overlay_heatmap(image, heat, box, alpha)
    scale = max(1, -(-MIN_SIDE // min(overlay.size)))
    if scale > 1:
        overlay = overlay.resize((overlay.width * scale, overlay.height * scale), Image.Resampling.NEAREST)
    w, h = overlay.size
    size = max(12, min(w, h) // 28)
    font = ImageFont.load_default(size=size)
    line = int(size * 1.6)
    bar_w, margin = max(14, w // 30), max(8, w // 60)
    labels_w = int(font.getlength("1.0")) + margin
    figure = Image.new("RGB", (w + 3 * margin + bar_w + labels_w, h + 2 * line + 2 * margin), "white")
    figure.paste(overlay, (margin, line + margin))
    draw = ImageDraw.Draw(figure)
    draw.text((margin, margin // 2), _fit(title, font, figure.width - 2 * margin), fill="black", font=font)
    draw.text(
        (margin, h + line + margin * 3 // 2), _fit(note, font, figure.width - 2 * margin), fill="black", font=font
    )
    x0, top = w + 2 * margin, line + margin
    ramp = colourise(np.linspace(1.0, 0.0, h))[:, None, :].repeat(bar_w, axis=1)  # top is 1
    figure.paste(Image.fromarray(ramp), (x0, top))
    draw.rectangle([x0, top, x0 + bar_w - 1, top + h - 1], outline="black")
    for value in (0.0, 0.5, 1.0):
        y = top + round((1 - value) * (h - 1))
        draw.line([x0 + bar_w, y, x0 + bar_w + margin // 2, y], fill="black")
        draw.text((x0 + bar_w + margin // 2 + 2, y), f"{value:.1f}", fill="black", font=font, anchor="lm")
    return figure


def _fit(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> str:
    """The text, cut with an ellipsis where it would run past `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"
