"""Feeding chips to the detector: read ahead on threads, batched, worked in order.

Reading and decompressing chips (GDAL releases the GIL) overlaps the model and the
post-processing of the chips before them; on a CPU several chips are worked at once, each
with its own intra-op threads, and the results come back in the chips' order. Every
look-ahead is bounded, so memory stays a few batches whatever the scene's size.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from imagery.scene import SCENE_BANDS, SceneInfo
from imagery.tiling import chip_windows, iter_chips, read_chip


def batched(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_chips(info: SceneInfo, size: int, overlap: int, readers: int) -> Iterator:
    """The scene's chips in order, read by `readers` threads at once (GDAL decompresses
    without the GIL): one reader cannot feed a GPU from a deflate-compressed tile."""
    pairs = chip_windows(info.width, info.height, size, overlap)
    if readers <= 1:
        yield from iter_chips(info, size, overlap, SCENE_BANDS, with_scl=info.has_scl)
        return
    with ThreadPoolExecutor(readers, thread_name_prefix="detect-read") as pool:
        pending: deque = deque()
        for window, core in pairs:
            pending.append(pool.submit(read_chip, info, window, core, SCENE_BANDS, info.has_scl))
            if len(pending) > 2 * readers:  # bounded look-ahead: memory stays a few chips
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def staged_batches(chips: Iterator, size: int, pin: bool) -> Iterator[tuple]:
    """(chips, reflectance (B, C, h, w) with NaN past the edge, SCL (B, h, w) or None), the
    tensors in page-locked memory when bound for a GPU (an asynchronous copy)."""
    for batch in batched(chips, size):
        raw = torch.from_numpy(np.stack([c.array for c in batch]))
        scl = None
        if all(c.scl is not None for c in batch):
            scl = torch.from_numpy(np.stack([c.scl for c in batch]).astype(np.uint8))
        if pin:
            raw, scl = raw.pin_memory(), None if scl is None else scl.pin_memory()
        yield batch, raw, scl


def read_ahead(items: Iterator, depth: int = 2) -> Iterator:
    """`items`, produced by a thread up to `depth` ahead, so that reading and decompressing
    the next chips (GDAL releases the GIL) overlaps the model and post-processing of these.
    An error in the thread is raised here; leaving early stops the thread."""
    done, stop = object(), threading.Event()
    slots: queue.Queue = queue.Queue(maxsize=depth)

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failure(exc))

    thread = threading.Thread(target=work, name="detect-reader", daemon=True)
    thread.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


@dataclass
class _Failure:
    error: BaseException


@contextlib.contextmanager
def intra_op_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `count` for the block (None: left as they are)."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def in_order(work, items: Iterator[tuple], workers: int) -> Iterator[tuple]:
    """(item[0], work(*item)) for each item, in the items' order, `workers` at a time; the
    look-ahead is bounded, so memory stays a few batches. An error in a worker is raised here."""
    if workers <= 1:
        for item in items:
            yield item[0], work(*item)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="detect-work") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append((item[0], pool.submit(work, *item)))
                if len(pending) >= 2 * workers:
                    batch, future = pending.popleft()
                    yield batch, future.result()
            while pending:
                batch, future = pending.popleft()
                yield batch, future.result()
        finally:
            for _, future in pending:
                future.cancel()
