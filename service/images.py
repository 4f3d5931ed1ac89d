"""Decode a client's image safely: base64 or data URL in, RGB uint8 array out.

Every failure is an `ImageError` carrying the HTTP status to answer:
  400  not base64, empty, or an image whose data is truncated or corrupt
  413  more pixels than the limit (checked from the header, before any pixel is decoded)
  422  a side shorter than MIN_IMAGE_SIDE (also from the header)
  415  not an image, or a format the service does not decode
Only the decoders in FORMATS are ever tried, and a header that claims a huge size is refused
before decoding, so a decompression bomb costs a few bytes of header parsing.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
from mllm_audit.explainers.request import MIN_IMAGE_SIDE
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Pillow format names the service decodes; anything else is answered 415.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_DATA_URL = re.compile(r"^data:(?P<media>[^;,]*)(?P<params>(;[^;,]*)*),", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a half-grey image


class ImageError(ValueError):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def decode_base64(data: str) -> bytes:
    """Bytes of a base64 string or a base64 data URL (line breaks and missing padding are fine)."""
    text = data.strip()
    match = _DATA_URL.match(text)
    if match:
        if ";base64" not in match.group("params").lower():
            raise ImageError(400, "a data URL image must be base64-encoded (data:image/png;base64,...)")
        text = text[match.end() :]
    elif text[:5].lower() == "data:":
        raise ImageError(400, "image is not a valid data URL")
    text = _WHITESPACE.sub("", text)
    if not text:
        raise ImageError(400, "image is empty")
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(400, "image is not valid base64") from None
    if not raw:
        raise ImageError(400, "image is empty")
    return raw


def decode_image(data: str, max_pixels: int) -> np.ndarray:
    """RGB uint8 array [H, W, 3] of a base64 / data-URL image, or ImageError."""
    return image_to_rgb(decode_base64(data), max_pixels)


def image_to_rgb(raw: bytes, max_pixels: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(raw), formats=FORMATS)
        except UnidentifiedImageError:
            raise ImageError(415, _unsupported(raw)) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(413, f"image has more than {max_pixels} pixels") from None
        except Exception as exc:
            raise ImageError(400, f"image header is corrupt: {type(exc).__name__}") from None
        with img:
            width, height = img.size
            if width < 1 or height < 1:
                raise ImageError(400, f"image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise ImageError(413, f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
            if min(width, height) < MIN_IMAGE_SIDE:
                side = MIN_IMAGE_SIDE
                raise ImageError(422, f"image is {width}x{height}; it must be at least {side}x{side} pixels")
            try:
                img.load()
                rgb = _to_rgb(ImageOps.exif_transpose(img))
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise ImageError(413, f"image has more than {max_pixels} pixels") from None
            except Exception as exc:
                raise ImageError(400, f"image data is truncated or corrupt ({img.format})") from exc
    return rgb


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Transparent pixels are composited on white, as a viewer shows them."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() or 1.0
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8))
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def _unsupported(raw: bytes) -> str:
    try:  # which format is it, if Pillow knows it at all? (identify only: nothing is decoded)
        with Image.open(io.BytesIO(raw)) as other:
            return f"image format {other.format} is not supported; send {', '.join(FORMATS)}"
    except Exception:
        return f"data is not an image in a supported format ({', '.join(FORMATS)})"
