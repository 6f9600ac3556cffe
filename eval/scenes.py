"""scenes: a seeded procedural benchmark where which vision tokens survive decides the answer.

Each scene is a 336 x 336 image (LLaVA-1.5's input size: a 24 x 24 grid of 14 px patches) with 3..6 small
objects (circle, square, triangle, cross; six saturated colours; 28..44 px, i.e. 2..4 patches across) on a
textured grey background with grey clutter (specks and strokes, never an object colour). Every question needs
one specific object (or two, or all of one colour):

=========  ===========================================  ==========================  ===========================
type       question                                     answer                      evidence
=========  ===========================================  ==========================  ===========================
color      what color is the <shape>?                   colour (shape unique)       that object
shape      what shape is the <color> object?            shape (colour unique)       that object
present    is there a <color> <shape>?                  yes / no (50/50)            the object (yes); the objects
                                                                                    of that colour or shape (no)
count      how many <color> objects are there?          1 / 2 / 3                   those objects
relation   is the <c s> left of / above the <c s>?      yes / no (50/50)            both objects
=========  ===========================================  ==========================  ===========================

**Evidence** is a sorted list of patch indices (raster order of the 24 x 24 grid, index = row * 24 + col) of
the patches the objects cover (at least ``COVER`` of the patch's pixels), stored in
``Record.extra["recorded"]["evidence"]`` (the runner copies ``extra["recorded"]`` into predictions.jsonl).
A "no" to ``present`` needs every near miss seen (the objects that share the colour or the shape: a scene
always has one), so its evidence is those objects.

Determinism: scene ``i`` of a split is drawn from ``numpy.random.default_rng((SPLIT_SEEDS[split], i))``; the
question set of a scene from the same generator (no iteration over sets: the same in every process), so any scene and its questions are rebuilt alone (the loader
keeps only the scene specs; images are drawn on demand). ``scenes(split, n)`` takes ~1 ms per scene.
Scoring: exact match (the ``gqa`` scorer). Question ids ``<split>-<scene>-<q>``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
from PIL import Image, ImageDraw

from svdprune.errors import UserError

from .datasets import Dataset, Record

SIZE, PATCH, GRID = 336, 14, 24
SHAPES = ("circle", "square", "triangle", "cross")
COLORS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 85, 225), "yellow": (235, 205, 35),
          "purple": (145, 55, 190), "orange": (245, 135, 25)}
COUNT_WORDS = ("1", "2", "3")
ANSWERS = tuple(COLORS) + SHAPES + ("yes", "no") + COUNT_WORDS
QUESTION_TYPES = ("color", "shape", "present", "count", "relation")
SPLIT_SEEDS = {"train": 1, "test": 2}
SPLIT_SIZES = {"train": 4000, "test": 400}  # scenes; ~5 questions each
COVER = 0.2  # a patch is evidence when the object covers at least this share of its pixels
SIZES = (28, 36, 44)  # object bounding-box side in px


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    x: int  # top-left corner, px
    y: int
    size: int

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.size / 2, self.y + self.size / 2

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass
class Scene:
    index: int
    split: str
    objects: list[Obj]
    background_seed: int
    questions: list[tuple[str, str, str, list[int]]] = field(default_factory=list)  # (type, q, answer, objects)


# ---------------------------------------------------------------------------------------------- drawing


def object_mask(obj: Obj) -> np.ndarray:
    """(SIZE, SIZE) bool: the pixels the object covers."""
    canvas = Image.new("L", (SIZE, SIZE), 0)
    _draw_shape(ImageDraw.Draw(canvas), obj, 255)
    return np.asarray(canvas) > 0


def _draw_shape(draw: ImageDraw.ImageDraw, obj: Obj, fill) -> None:
    x0, y0, s = obj.x, obj.y, obj.size
    x1, y1 = x0 + s - 1, y0 + s - 1
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        m = s // 8
        draw.rectangle((x0 + m, y0 + m, x1 - m, y1 - m), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x0 + s / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:  # cross: two bars a third of the side wide
        t = s // 3
        draw.rectangle((x0 + t, y0, x1 - t, y1), fill=fill)
        draw.rectangle((x0, y0 + t, x1, y1 - t), fill=fill)


def render(scene: Scene) -> Image.Image:
    """The scene as a 336 x 336 RGB image: smooth grey texture, grey clutter, then the objects."""
    rng = np.random.default_rng(scene.background_seed)
    base = rng.uniform(90, 170)
    coarse = rng.normal(0, 18, (7, 7))
    texture = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((SIZE, SIZE), Image.BICUBIC))
    fine = rng.normal(0, 7, (SIZE, SIZE))
    grey = np.clip(base + texture + fine, 0, 255)
    tint = rng.uniform(-6, 6, 3)  # a faint tint, far from any object colour
    pixels = np.clip(grey[..., None] + tint, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(15, 30))):  # clutter: grey specks and strokes, below a patch in size
        level = int(rng.uniform(30, 230))
        x, y = rng.uniform(0, SIZE, 2)
        if rng.random() < 0.5:
            r = rng.uniform(2, 5)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(level,) * 3)
        else:
            dx, dy = rng.uniform(-12, 12, 2)
            draw.line((x, y, x + dx, y + dy), fill=(level,) * 3, width=int(rng.integers(1, 3)))
    for obj in scene.objects:
        jitter = rng.integers(-12, 13, 3)
        _draw_shape(draw, obj, tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLORS[obj.color], jitter)))
    return image


def patch_shares(obj: Obj) -> dict[int, float]:
    """{patch index: share of its pixels the object covers} for the patches it touches. Drawn on a small
    canvas of whole patches around the object (PIL rasterises integer translations identically, so this
    equals ``object_mask`` pooled per patch, tested) -- the loader computes it for every question."""
    c0, r0 = obj.x // PATCH, obj.y // PATCH
    c1, r1 = -(-(obj.x + obj.size) // PATCH), -(-(obj.y + obj.size) // PATCH)
    canvas = Image.new("L", ((c1 - c0) * PATCH, (r1 - r0) * PATCH), 0)
    _draw_shape(ImageDraw.Draw(canvas), replace(obj, x=obj.x - c0 * PATCH, y=obj.y - r0 * PATCH), 255)
    share = (np.asarray(canvas) > 0).reshape(r1 - r0, PATCH, c1 - c0, PATCH).mean((1, 3))
    return {int((r0 + r) * GRID + c0 + c): float(share[r, c]) for r, c in zip(*np.nonzero(share))}


def patches_of(obj: Obj) -> list[int]:
    """Sorted raster indices of the patches the object covers (share of pixels >= COVER)."""
    return sorted(p for p, share in patch_shares(obj).items() if share >= COVER)


def patch_labels(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Per patch (576,): index of the object covering it most (-1: background) and that object's pixel share."""
    shares = np.zeros((len(scene.objects), GRID * GRID))  # (n_objects, 576)
    for i, obj in enumerate(scene.objects):
        for p, share in patch_shares(obj).items():
            shares[i, p] = share
    best = shares.argmax(0)
    share = shares.max(0)
    return np.where(share > 0, best, -1), share


# ---------------------------------------------------------------------------------------------- scenes


def _place_objects(rng: np.random.Generator) -> list[Obj]:
    """3..6 non-overlapping objects (8 px gap at least). Colours are drawn with repeats so that counts of 2
    and 3 occur; shapes freely."""
    n = int(rng.integers(3, 7))
    palette = list(COLORS)
    colors = list(rng.choice(palette, size=int(rng.integers(2, n + 1)), replace=False))
    colors += list(rng.choice(colors, size=n - len(colors)))
    objects: list[Obj] = []
    for color in colors:
        for _ in range(100):
            size = int(rng.choice(SIZES))
            x, y = (int(v) for v in rng.integers(4, SIZE - size - 4, 2))
            if all(x + size + 8 <= o.x or o.x + o.size + 8 <= x or y + size + 8 <= o.y or o.y + o.size + 8 <= y
                   for o in objects):
                objects.append(Obj(str(rng.choice(SHAPES)), str(color), x, y, size))
                break
    return objects


def _questions(objects: list[Obj], rng: np.random.Generator) -> list[tuple[str, str, str, list[int]]]:
    """One question of each type the scene allows: (type, question, answer, indices of the evidence objects)."""
    out = []
    by_shape = {s: [i for i, o in enumerate(objects) if o.shape == s] for s in SHAPES}
    by_color = {c: [i for i, o in enumerate(objects) if o.color == c] for c in COLORS}
    unique_shapes = [s for s, idx in by_shape.items() if len(idx) == 1]
    if unique_shapes:
        s = str(rng.choice(unique_shapes))
        i = by_shape[s][0]
        out.append(("color", f"what color is the {s}?", objects[i].color, [i]))
    unique_colors = [c for c, idx in by_color.items() if len(idx) == 1]
    if unique_colors:
        c = str(rng.choice(unique_colors))
        i = by_color[c][0]
        out.append(("shape", f"what shape is the {c} object?", objects[i].shape, [i]))
    names = {o.name for o in objects}
    if rng.random() < 0.5:
        i = int(rng.integers(len(objects)))
        out.append(("present", f"is there a {objects[i].name}?", "yes", [i]))
    else:  # a near miss: the colour of one object with the shape of another, not in the scene
        colors = [c for c in COLORS if any(o.color == c for o in objects)]  # in a fixed order: a set's order
        shapes = [s for s in SHAPES if any(o.shape == s for o in objects)]  # changes with PYTHONHASHSEED
        misses = [(c, s) for c in colors for s in shapes if f"{c} {s}" not in names]
        if misses:
            c, s = misses[int(rng.integers(len(misses)))]
            near = [i for i, o in enumerate(objects) if o.color == c or o.shape == s]
            out.append(("present", f"is there a {c} {s}?", "no", near))
    colors_present = [c for c, idx in by_color.items() if idx]
    weights = np.array([len(by_color[c]) for c in colors_present], dtype=float)  # favour repeated colours
    c = str(rng.choice(colors_present, p=weights / weights.sum()))
    if len(by_color[c]) <= 3:
        out.append(("count", f"how many {c} objects are there?", str(len(by_color[c])), by_color[c]))
    unique = [i for i, o in enumerate(objects) if sum(p.name == o.name for p in objects) == 1]
    pairs = [(i, j) for i in unique for j in unique if i != j]
    rng.shuffle(pairs)
    for i, j in pairs:  # a pair clearly apart on the asked axis (centres >= 28 px apart)
        axis = int(rng.integers(2))  # 0: left of, 1: above
        a, b = objects[i].center[axis], objects[j].center[axis]
        if abs(a - b) >= 28:
            word = "left of" if axis == 0 else "above"
            out.append(("relation", f"is the {objects[i].name} {word} the {objects[j].name}?",
                        "yes" if a < b else "no", [i, j]))
            break
    return out


def scene(split: str, index: int) -> Scene:
    """Scene ``index`` of ``split`` with its questions (deterministic)."""
    rng = np.random.default_rng((SPLIT_SEEDS[split], index))
    objects = _place_objects(rng)
    return Scene(index=index, split=split, objects=objects, background_seed=int(rng.integers(2 ** 31)),
                 questions=_questions(objects, rng))


def scenes(split: str, n: int | None = None) -> list[Scene]:
    return [scene(split, i) for i in range(SPLIT_SIZES[split] if n is None else n)]


def evidence(scene_: Scene, objects: list[int]) -> list[int]:
    """Sorted patch indices covered by the given objects of the scene."""
    return sorted({p for i in objects for p in patches_of(scene_.objects[i])})


def describe(scene_: Scene) -> str:
    """A caption listing the objects left to right (for a text tower)."""
    ordered = sorted(scene_.objects, key=lambda o: o.center[0])
    return "a " + ", a ".join(o.name for o in ordered)


def records(split: str, n: int | None = None) -> list[Record]:
    """One Record per question, scenes in index order, questions in generation order; the image is drawn on
    demand; ``extra["recorded"]["evidence"]``: the evidence patch indices."""
    out = []
    for s in scenes(split, n):
        image = partial(render, s)
        for q, (kind, question, answer, objs) in enumerate(s.questions):
            out.append(Record(question_id=f"{split}-{s.index}-{q}", question=question, answers=[answer],
                              image=image, image_id=f"{split}-{s.index}", question_type=kind,
                              extra={"recorded": {"evidence": evidence(s, objs)}}))
    return out


def load(cfg) -> Dataset:
    split = cfg.get("split", "test")
    if split not in SPLIT_SIZES:
        raise UserError(f"dataset.split={split!r}; allowed: {', '.join(SPLIT_SIZES)}")
    n = cfg.get("scenes")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise UserError(f"dataset.scenes={n!r} must be a positive integer (or null for the split's "
                        f"{SPLIT_SIZES[split]})")
    return Dataset(name="scenes", records=records(split, n), scorer="gqa", revision="scenes-v2",
                   info={"split": split, "scenes": n or SPLIT_SIZES[split]})
