"""Seeded subsets of a dataset for quick runs (``subset=N seed=S``).

``limit=N`` (the first N records in the loader's fixed order) is applied by the runner itself; this module
is the stratified alternative, which spreads the questions over as many images as possible.
"""
from __future__ import annotations

import random
from collections import defaultdict

from eval.datasets import Record
from svdprune.errors import UserError


def stratified_subset(records: list[Record], n: int, seed: int) -> list[Record]:
    """``n`` records sampled with ``seed``, stratified by image, returned in their original order.

    Images are visited round-robin in a seeded order, and each image gives its questions in a seeded
    order: every image contributes one question before any image contributes a second, so while
    ``n >= number of images`` every image is represented (and with ``n`` smaller, ``n`` distinct images
    each give one question).

    The result depends only on the records' ids (image_id, question_id), ``n`` and ``seed``, not on the
    order the records come in: the same subset is drawn from any source (HF copy or LLaVA layout) of the
    same questions. ``n`` at or above the number of records returns all of them.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"subset size must be a positive integer, got {n!r}")
    records = list(records)
    if n >= len(records):
        return records
    by_image: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        by_image[record.image_id or f"question:{record.question_id}"].append(index)
    rng = random.Random(f"stratified_subset:{seed}")
    images = sorted(by_image)
    rng.shuffle(images)
    queues = []
    for image in images:
        members = sorted(by_image[image], key=lambda i: (records[i].question_id, i))
        rng.shuffle(members)
        queues.append(members)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n:
        for queue in queues:
            if depth < len(queue):
                chosen.append(queue[depth])
                if len(chosen) == n:
                    break
        depth += 1
    return [records[i] for i in sorted(chosen)]
