"""Synthetic VQA folders in the ``local`` format, for tests and a first offline run.

    python -m eval.fixtures /tmp/shapes --questions 300 --images 60

Each image is one coloured shape on a plain background; questions ask its colour, its shape, or yes/no.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40),
          "black": (15, 15, 15), "gray": (128, 128, 128)}
SHAPES = ("circle", "rectangle", "triangle")


def _draw(shape: str, color: tuple, size: tuple[int, int], rng: random.Random) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size, (245, 245, 245))
    draw = ImageDraw.Draw(image)
    r = rng.randint(min(size) // 6, min(size) // 3)
    cx, cy = rng.randint(r, width - r), rng.randint(r, height - r)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "rectangle":
        draw.rectangle([cx - r, cy - r // 2, cx + r, cy + r // 2], fill=color)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    return image


def write_local_fixture(folder: str | Path, questions: int = 20, images: int = 5, seed: int = 0) -> Path:
    """Write ``questions`` questions over ``images`` images (JPEG, varied aspect ratios). Returns the folder."""
    rng = random.Random(seed)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    facts = []
    for i in range(images):
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        size = (rng.choice([96, 160, 224, 320]), rng.choice([96, 160, 224, 320]))
        _draw(shape, COLORS[color], size, rng).save(folder / "images" / f"img{i:04d}.jpg", quality=95)
        facts.append((f"img{i:04d}.jpg", shape, color))
    with (folder / "questions.jsonl").open("w") as f:
        for q in range(questions):
            image, shape, color = facts[q % images]
            kind = q // images % 3
            if kind == 0:
                question, answer, qtype = "What color is the shape?", color, "color"
            elif kind == 1:
                question, answer, qtype = "What shape is in the image?", shape, "shape"
            else:
                asked = rng.choice(SHAPES)
                question, answer, qtype = f"Is there a {asked}?", "yes" if asked == shape else "no", "yesno"
            f.write(json.dumps({"question_id": f"q{q:05d}", "image": image, "question": question,
                                "answer": answer, "question_type": qtype}) + "\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_local_fixture(args.folder, args.questions, args.images, args.seed))


if __name__ == "__main__":
    main()
