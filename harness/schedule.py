"""The generation loop of a run: which questions go together, images decoded ahead, CUDA OOM recovery.

Two schedules (``schedule=`` in the run config), same predictions:

* ``by_image`` (default): the questions still to answer are grouped by image (images in the order of their
  first question, each image's questions in dataset order) and cut into batches of ``batch_size``. The
  engine's :func:`~svdprune.families.generate_by_image` runs the vision tower, the encoder-side cut and the
  prompt prefix once per image and keeps them (``prefixes``) while the next batch still has questions on that
  image. Images are decoded and preprocessed ahead of the model by a thread pool (:class:`Prefetcher`).
* ``per_question``: the straightforward path: batches in dataset order, every question pays for its own
  image (decoded on the main thread) and its whole prompt (:func:`~svdprune.families.generate`).

Either way a CUDA out-of-memory error in a batch (torch's OutOfMemoryError, or a cuBLAS/cuSOLVER/cuDNN allocation
failure reported as a RuntimeError) halves the batch size for the rest of the run and retries
the same questions (nothing is written for a failed batch, so nothing is lost or answered twice), and an
image that cannot be decoded stops the run with a one-line error saying how to go on, or, with
``on_bad_image="skip"``, leaves its questions out (their ids are appended to ``skipped``).
"""
from __future__ import annotations

import gc
import logging
import sys
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Hashable, Iterator

import torch

from eval.datasets import Record, UnreadableImage, load_image
from svdprune.errors import UserError
from svdprune.families import generate, generate_by_image, preprocess
from svdprune.surgery import Generation

SCHEDULES = ("by_image", "per_question")
LOG = logging.getLogger(__name__)


def check_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise UserError(f"schedule={schedule!r}; allowed: {', '.join(SCHEDULES)}")
    return schedule


def image_key(record: Record) -> Hashable:
    """What names a record's image: its file path, or for images held in a table its image id."""
    if callable(record.image):
        return ("image_id", record.image_id) if record.image_id else ("object", id(record.image))
    return ("path", str(record.image))


def order_by_image(records: list[Record]) -> list[Record]:
    """Records grouped by image: images in the order of their first record, records of an image in their
    given order (stable, deterministic)."""
    groups: dict[Hashable, list[Record]] = {}
    for record in records:
        groups.setdefault(image_key(record), []).append(record)
    return [record for group in groups.values() for record in group]


class Prefetcher:
    """Decodes and preprocesses images ahead of the model in a thread pool (PIL releases the GIL).

    keys: the distinct images in the order they will be asked for; load: key -> preprocessed (3, S, S) tensor.
    At most ``ahead`` images beyond the one last asked for are decoded in advance; an image stays held
    until :meth:`release`, so memory is bounded by (images in use + ahead) preprocessed images.
    """

    def __init__(self, keys: list[Hashable], load: Callable[[Hashable], torch.Tensor], workers: int, ahead: int):
        self._keys, self._load, self._ahead = keys, load, max(ahead, 1)
        self._position = {key: i for i, key in enumerate(keys)}
        self._futures: dict[Hashable, Future] = {}
        self._submitted = 0
        self._pool = ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="svdprune-images")

    def get(self, key: Hashable) -> torch.Tensor:
        until = min(self._position[key] + 1 + self._ahead, len(self._keys))
        while self._submitted < until:
            next_key = self._keys[self._submitted]
            self._futures[next_key] = self._pool.submit(self._load, next_key)
            self._submitted += 1
        return self._futures[key].result()

    def release(self, key: Hashable) -> None:
        self._futures.pop(key, None)

    @property
    def held(self) -> int:
        """Images submitted and not released (decoded, or being decoded)."""
        return len(self._futures)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()


# How CUDA reports running out of memory besides torch.cuda.OutOfMemoryError: allocations made by cuBLAS,
# cuSOLVER (torch.linalg.svd), cuDNN or a kernel launch arrive as a RuntimeError with one of these in the text.
_OOM_MESSAGES = ("CUDA out of memory", "CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED",
                 "CUSOLVER_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
                 "cudaErrorMemoryAllocation")


def _is_oom(error: BaseException) -> bool:
    """Every form in which CUDA reports that it ran out of memory."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _OOM_MESSAGES)


def _detached(error: BaseException) -> BaseException:
    """``error`` without its traceback (and chained exceptions): the traceback's frames hold the failed
    batch's tensors, which must be freed before the cache is emptied."""
    error.__context__ = error.__cause__ = None
    return error.with_traceback(None)


def _halve(size: int, error: BaseException, device: torch.device) -> int:
    """The batch size after an out-of-memory error in a batch of ``size`` (re-raises at size 1). Called after
    the ``except`` block, with a :func:`_detached` error: nothing references the failed batch any more, so
    the collection below returns its memory before CUDA's cache is emptied."""
    if size == 1:
        raise error
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    LOG.warning("CUDA out of memory in a batch of %d questions: continuing with batch size %d", size, size // 2)
    return size // 2


def answer_batches(lm, method, records: list[Record], *, batch_size: int, instruction: str | None,
                   max_new_tokens: int, seed: int, schedule: str = "by_image", workers: int = 4,
                   ahead: int = 64, on_bad_image: str = "error",
                   skipped: list[str] | None = None) -> Iterator[tuple[list[Record], Generation, float]]:
    """Answer ``records``; yields (batch, its generation, engine seconds) as each batch finishes.

    ``workers`` / ``ahead``: image decoding threads and how many images they may run ahead (``by_image``).
    ``on_bad_image``: "error" (stop with a one-line UserError) or "skip" (ids appended to ``skipped``).
    """
    check_schedule(schedule)
    bad_image = _BadImages(on_bad_image, skipped if skipped is not None else [])
    if schedule == "per_question":
        yield from _per_question(lm, method, records, batch_size, instruction, max_new_tokens, seed, bad_image)
    else:
        yield from _by_image(lm, method, records, batch_size, instruction, max_new_tokens, seed, workers, ahead,
                             bad_image)


class _BadImages:
    """What to do with a question whose image cannot be decoded: stop the run, or skip it (noted once per image)."""

    def __init__(self, policy: str, skipped: list[str]):
        self.policy, self.skipped = policy, skipped

    def __call__(self, records: list[Record], error: UnreadableImage) -> None:
        if self.policy != "skip":
            raise UserError(f"{error}; the answers so far are kept: fix or remove the image and rerun the same "
                            "command, or add on_bad_image=skip to leave such questions out") from None
        new = [r.question_id for r in records if r.question_id not in self.skipped]  # a retried batch: once
        if new:
            print(f"note: skipped: {error}", file=sys.stderr)
            self.skipped.extend(new)


def _per_question(lm, method, records, batch_size, instruction, max_new_tokens, seed, bad_image):
    start, size = 0, batch_size
    while start < len(records):
        batch, images = [], []
        for record in records[start:start + size]:
            try:
                images.append(load_image(record))
                batch.append(record)
            except UnreadableImage as error:
                bad_image([record], error)
        if not batch:
            start += size
            continue
        started, failure = time.perf_counter(), None
        try:
            out = generate(lm, method, [r.question for r in batch], images, instruction=instruction,
                           max_new_tokens=max_new_tokens, seed=seed)
        except Exception as error:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not _is_oom(error):
                raise
            failure = _detached(error)
        if failure is not None:  # outside the except block: the failed batch's tensors are unreferenced now
            images = []
            size = _halve(size, failure, lm.device)
            continue
        yield batch, out, time.perf_counter() - started
        start += size


def _by_image(lm, method, records, batch_size, instruction, max_new_tokens, seed, workers, ahead, bad_image):
    order = order_by_image(records)
    keys = [image_key(r) for r in order]
    remaining = Counter(keys)  # questions still to answer per image
    first_record = {}
    for key, record in zip(keys, order):
        first_record.setdefault(key, record)

    def load(key):  # an unreadable image comes back as its error, handled on the main thread
        try:
            return preprocess(lm, load_image(first_record[key]))
        except UnreadableImage as error:
            return error

    prefetcher = Prefetcher(list(remaining), load, workers, ahead)
    prefixes: dict = {}  # image -> its prefix (the family's: llava15.ImagePrefix, _per_image.SharedPrefix), while a batch needs it
    start, size = 0, batch_size
    try:
        while start < len(order):
            first = prefetcher.get(keys[start])
            if isinstance(first, UnreadableImage):  # all of this image's questions are next in ``order``
                count = remaining[keys[start]]
                bad_image(order[start:start + count], first)
                remaining[keys[start]] = 0
                prefetcher.release(keys[start])
                start += count
                continue
            end, pixels = start, {}  # a batch stops before a question whose image cannot be decoded
            while end < len(order) and end - start < size:
                value = pixels[keys[end]] if keys[end] in pixels else prefetcher.get(keys[end])
                if isinstance(value, UnreadableImage):
                    break
                pixels[keys[end]] = value
                end += 1
            batch, batch_keys = order[start:end], keys[start:end]
            started, failure = time.perf_counter(), None
            try:
                out = generate_by_image(lm, method, [r.question for r in batch], batch_keys, pixels,
                                        instruction=instruction, max_new_tokens=max_new_tokens, seed=seed,
                                        prefixes=prefixes)
            except Exception as error:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if not _is_oom(error):
                    raise
                failure = _detached(error)
            if failure is not None:  # outside the except block: the failed batch's tensors are unreferenced now
                prefixes.clear()
                size = _halve(size, failure, lm.device)
                continue
            seconds = time.perf_counter() - started
            start += len(batch)
            remaining.subtract(batch_keys)
            following = set(keys[start:start + size])
            for key in list(prefixes):
                if key not in following:
                    del prefixes[key]
            for key in dict.fromkeys(batch_keys):
                if remaining[key] == 0:
                    prefetcher.release(key)
            yield batch, out, seconds
    finally:
        prefetcher.close()
