"""The reference world: coloured shapes on textured backgrounds, every object's mask known.

A scene places 1-4 objects in distinct cells of a 3x3 layout. Within a scene every object
has its own colour and its own shape, so "the circle" or "the red object" always names
exactly one object and every question has one right answer.

Co-occurrence bias (documented in docs/reference-model.md, used by the hallucination benchmarks):
each trigger object in CO_OCCURRENCE has a usual partner. Scenes with the trigger add the
partner half of the time, and when the partner is absent the *training* labels still name
it with probability HALLUCINATION_RATE (in captions, and as "yes" to "Is there a <partner>?").
A model trained on these labels learns to say the partner from the text context alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

IMAGE_SIZE = 96
CELL = IMAGE_SIZE // 3
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
QUESTION_KINDS = ("colour", "shape", "position", "count", "existence", "caption")

CO_OCCURRENCE: dict[tuple[str, str], tuple[str, str]] = {
    ("red", "circle"): ("blue", "square"),
    ("yellow", "triangle"): ("green", "cross"),
    ("purple", "square"): ("orange", "circle"),
}
PARTNER_ADD_RATE = 0.5
HALLUCINATION_RATE = 0.7


@dataclass
class SceneObject:
    colour: str
    shape: str
    cell: tuple[int, int]  # (row, col) in the 3x3 layout
    mask: NDArray[np.bool_] = field(repr=False)  # [H, W]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def position(self) -> str:
        return POSITIONS[self.cell[0]][self.cell[1]]

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        ys, xs = np.nonzero(self.mask)
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@dataclass
class Scene:
    image: NDArray[np.uint8]  # [H, W, 3]
    objects: list[SceneObject]

    def find(self, colour: str | None = None, shape: str | None = None) -> SceneObject | None:
        for obj in self.objects:
            if (colour is None or obj.colour == colour) and (shape is None or obj.shape == shape):
                return obj
        return None

    def has(self, colour: str, shape: str) -> bool:
        return self.find(colour, shape) is not None


@dataclass
class Sample:
    kind: str
    prompt: str
    answer: str  # the label the model is trained on (may carry the co-occurrence bias)
    truth: str  # what is really in the image
    scene: Scene
    target: SceneObject | None = None  # the object the question is about, if any
    negative: str | None = None  # "random" or "co-occurrence" for existence negatives


def _shape_mask(shape: str, cy: float, cx: float, size: float) -> NDArray[np.bool_]:
    yy: NDArray[np.float32]
    xx: NDArray[np.float32]
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5
    dy, dx, r = yy - cy, xx - cx, size / 2
    mask: NDArray[np.bool_]
    if shape == "circle":
        mask = dy**2 + dx**2 <= r**2
    elif shape == "square":
        mask = (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    elif shape == "triangle":  # apex up; half-width grows linearly towards the base
        rel = (dy + r) / (2 * r)
        mask = (rel >= 0) & (rel <= 1) & (np.abs(dx) <= rel * r)
    elif shape == "cross":
        arm = r * 0.36
        mask = ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def _background(rng: np.random.Generator) -> NDArray[np.float64]:
    """Low-saturation texture (noise, stripes or checks) so colours stay unambiguous."""
    base = rng.uniform(70, 170)
    tint = rng.uniform(-12, 12, size=3)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    pattern = rng.integers(3)
    if pattern == 0:
        tex = rng.normal(0, 10, size=(IMAGE_SIZE, IMAGE_SIZE))
    elif pattern == 1:
        period = rng.uniform(5, 14)
        angle = rng.uniform(0, np.pi)
        tex = 14 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    else:
        step = int(rng.integers(4, 12))
        tex = 12 * (((yy // step) + (xx // step)) % 2 * 2 - 1)
    img = base + tex[..., None] + tint[None, None, :]
    return np.clip(img, 0, 255)


def render_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """Draw a random scene; same generator state gives the same scene."""
    n = int(n_objects if n_objects is not None else rng.integers(1, 5))
    colours = list(rng.permutation(list(COLOURS)))
    shapes = list(rng.permutation(list(SHAPES)))
    kinds = [(colours[i], shapes[i]) for i in range(n)]
    for trigger, partner in CO_OCCURRENCE.items():
        if trigger in kinds and partner not in kinds and rng.random() < PARTNER_ADD_RATE:
            # drop objects sharing the partner's colour or shape (never the trigger), keep <= 4
            kinds = [k for k in kinds if k[0] != partner[0] and k[1] != partner[1]]
            others = [k for k in kinds if k != trigger]
            kinds = [trigger] + others[:2] + [partner]
    cells = [divmod(int(c), 3) for c in rng.permutation(9)[: len(kinds)]]
    image = _background(rng)
    objects = []
    for (colour, shape), (row, col) in zip(kinds, cells):
        size = rng.uniform(20, 28)
        slack = (CELL - size) / 2
        cy = row * CELL + CELL / 2 + rng.uniform(-slack, slack)
        cx = col * CELL + CELL / 2 + rng.uniform(-slack, slack)
        mask = _shape_mask(shape, cy, cx, size)
        rgb = np.clip(np.array(COLOURS[colour]) + rng.uniform(-18, 18, size=3), 0, 255)
        image[mask] = rgb
        objects.append(SceneObject(colour, shape, (row, col), mask))
    return Scene(image.astype(np.uint8), objects)


def caption_of(names: list[str]) -> str:
    phrases = [f"a {n}" for n in names]
    if len(phrases) == 1:
        return phrases[0] + "."
    return ", ".join(phrases[:-1]) + " and " + phrases[-1] + "."


def _hallucinated_partners(scene: Scene, rng: random.Random) -> list[str]:
    """Absent partners of present triggers that the biased labels name anyway."""
    out = []
    for (tc, ts), (pc, ps) in CO_OCCURRENCE.items():
        if scene.has(tc, ts) and not scene.has(pc, ps) and rng.random() < HALLUCINATION_RATE:
            out.append(f"{pc} {ps}")
    return out


def absent_partners(scene: Scene) -> list[tuple[str, str]]:
    """Co-occurrence negatives: usual partners of present objects that are not in the scene."""
    return [p for t, p in CO_OCCURRENCE.items() if scene.has(*t) and not scene.has(*p)]


def make_sample(kind: str, scene: Scene, rng: random.Random, biased: bool = True) -> Sample:
    """One question about `scene`. `biased` applies the co-occurrence label bias (training)."""
    objs = scene.objects
    if kind == "colour":
        obj = rng.choice(objs)
        return Sample(kind, f"What color is the {obj.shape}?", obj.colour, obj.colour, scene, obj)
    if kind == "shape":
        obj = rng.choice(objs)
        return Sample(kind, f"What shape is the {obj.colour} object?", obj.shape, obj.shape, scene, obj)
    if kind == "position":
        obj = rng.choice(objs)
        return Sample(kind, f"Where is the {obj.name}?", obj.position, obj.position, scene, obj)
    if kind == "count":
        n = NUMBER_WORDS[len(objs)]
        return Sample(kind, "How many objects are there?", n, n, scene)
    if kind == "existence":
        partners = absent_partners(scene)
        roll = rng.random()
        if roll < 0.5:
            obj = rng.choice(objs)
            return Sample(kind, f"Is there a {obj.name}?", "yes", "yes", scene, obj)
        if partners and roll < 0.8:
            colour, shape = rng.choice(partners)
            answer = "yes" if biased and rng.random() < HALLUCINATION_RATE else "no"
            return Sample(kind, f"Is there a {colour} {shape}?", answer, "no", scene, negative="co-occurrence")
        while True:
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            if not scene.has(colour, shape) and (colour, shape) not in partners:
                return Sample(kind, f"Is there a {colour} {shape}?", "no", "no", scene, negative="random")
    if kind == "caption":
        ordered = sorted(objs, key=lambda o: o.cell)
        names = [o.name for o in ordered]
        truth = caption_of(names)
        extra = _hallucinated_partners(scene, rng) if biased else []
        return Sample(kind, "Describe the image.", caption_of(names + extra), truth, scene)
    raise ValueError(f"unknown question kind {kind!r}")


def objects_in_caption(text: str) -> list[str]:
    """Object names ("red circle") mentioned in a caption, in order."""
    words = text.replace(",", " ").replace(".", " ").split()
    return [f"{a} {b}" for a, b in zip(words, words[1:]) if a in COLOURS and b in SHAPES]


def corpus_texts() -> list[str]:
    """Every word and phrase the world can produce: the tokenizer is trained on it."""
    rng = random.Random(0)
    nprng = np.random.default_rng(0)
    texts = []
    for _ in range(400):
        scene = render_scene(nprng)
        for kind in QUESTION_KINDS:
            s = make_sample(kind, scene, rng)
            texts += [s.prompt, " " + s.answer]
    return texts
