"""Render the example images in examples/images/ from the reference world.

    .venv/bin/python examples/make_images.py [--out examples/images]

Each image is one scene of `mllm_audit.models.reference.world`, drawn from a fixed seed, so
running this again writes the same pixels. The scenes are 96x96, the reference model's input
size; examples/images/README.md lists a prompt and the correct answer for each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from mllm_audit.models.reference import world
from PIL import Image

# file name -> seed of the scene's generator (world.render_scene(np.random.default_rng(seed)))
SCENES = {
    "red-circle.png": 155,  # one red circle, top left
    "red-circle-green-triangle.png": 36,  # red circle (top), green triangle (bottom)
    "three-shapes.png": 71,  # orange square (top), green cross (left), yellow triangle (center)
}


def render(seed: int) -> world.Scene:
    return world.render_scene(np.random.default_rng(seed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "images")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, seed in SCENES.items():
        scene = render(seed)
        Image.fromarray(scene.image).save(args.out / name, optimize=True)
        objects = ", ".join(f"{o.name} ({o.position})" for o in scene.objects)
        print(f"{name}: seed {seed}: {objects}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
