"""Per-family details in one place: which token is the image placeholder, and the grid its
tokens form (so white-box maps can be laid out as an image). Explainers never see these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]

    def image_token_id(self, model) -> int:
        cfg = model.config
        for attr in ("image_token_id", "image_token_index"):
            if getattr(cfg, attr, None) is not None:
                return int(getattr(cfg, attr))
        raise ValueError(f"{self.name}: the model config names no image token")

    def image_grid(self, model, image_inputs: dict, n_image_tokens: int) -> tuple[int, int]:
        """(rows, cols) of one image's tokens as they appear in the sequence."""
        side = math.isqrt(n_image_tokens)
        if side * side != n_image_tokens:
            raise ValueError(f"{self.name}: {n_image_tokens} image tokens do not form a square grid")
        return side, side


@dataclass(frozen=True)
class Qwen2VLFamily(Family):
    def image_grid(self, model, image_inputs: dict, n_image_tokens: int) -> tuple[int, int]:
        # image_grid_thw holds (t, h, w) in vision patches; tokens merge spatial_merge_size² patches
        t, h, w = (int(v) for v in image_inputs["image_grid_thw"][0])
        merge = int(getattr(model.config.vision_config, "spatial_merge_size", 2))
        return h // merge, w // merge


FAMILIES = (
    Family("llava", ("llava",)),
    Qwen2VLFamily("qwen2_vl", ("qwen2_vl", "qwen2_5_vl")),
    Family("idefics3", ("idefics3", "smolvlm")),
)


def family_of(model_type: str) -> Family:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    # An unknown image-text-to-text family still works for black-box methods (square grid guess).
    return Family(model_type, (model_type,))
