"""The held-out reference-world samples every faithfulness benchmark explains."""

from __future__ import annotations

import numpy as np
from mllm_audit.explainers.faithfulness import box_mask
from mllm_audit.models.reference import world
from mllm_audit.models.reference.evaluate import held_out_samples


def bench_samples(n: int) -> list[world.Sample]:
    """n samples: 40% colour, 40% shape (object words), 20% captions, all held out; the answer is the truth."""
    n_obj = round(n * 0.4)
    out = held_out_samples("colour", n_obj, seed=20_000) + held_out_samples("shape", n_obj, seed=20_000)
    out += held_out_samples("caption", n - 2 * n_obj, seed=20_000)
    for s in out:
        s.answer = s.truth  # explain the correct answer
    return out


def target_masks(sample: world.Sample) -> tuple[np.ndarray, np.ndarray]:
    """(mask, box mask) of what the answer is about: the queried object, or every object."""
    objs = [sample.target] if sample.target is not None else sample.scene.objects
    shape = sample.scene.image.shape[:2]
    mask = np.any([o.mask for o in objs], axis=0)
    boxes = np.any([box_mask(o.bbox, shape) for o in objs], axis=0)
    return mask, boxes
