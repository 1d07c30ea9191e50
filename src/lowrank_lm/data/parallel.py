"""Tokenizing in worker processes: batches of texts go out, arrays of ids come back in the same order.

Workers are started with ``spawn`` (not ``fork``): the caller may be a training process with torch threads,
CUDA or a tokenizers thread pool already running, none of which survive a fork safely. Each worker loads the
tokenizer once from the data dir and encodes single-threaded; parallelism comes from the processes. At most
``2 x workers`` batches are in flight, so a stream far larger than memory flows through at constant memory.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Generator, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lowrank_lm.data.tokenizer import Tokenizer, open_tokenizer

Meta = TypeVar("Meta")

_worker_tokenizer: Tokenizer | None = None


def default_workers() -> int:
    """One worker per CPU this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _init_worker(kind: str, name: str, data_dir: str) -> None:
    global _worker_tokenizer
    # one thread per worker: the processes are the parallelism, and nested thread pools would oversubscribe
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    _worker_tokenizer = open_tokenizer(kind, name, Path(data_dir))


def _encode(texts: list[str]) -> list[np.ndarray]:
    assert _worker_tokenizer is not None
    # uint32 halves what travels back through the pipe; ids are far below 2**32
    return [ids.astype(np.uint32) for ids in _worker_tokenizer.encode_batch(texts)]


class Encoder:
    """Encodes ``(meta, texts)`` batches with ``workers`` processes (in this process when ``workers == 1``)."""

    def __init__(self, kind: str, name: str, data_dir: Path, workers: int) -> None:
        self.workers = workers
        self._args = (kind, name, str(data_dir))
        self._local: Tokenizer | None = open_tokenizer(kind, name, data_dir) if workers == 1 else None

    def map(self, batches: Iterable[tuple[Meta, list[str]]]) -> Generator[tuple[Meta, list[np.ndarray]], None, None]:
        """Yield ``(meta, ids of each text)`` in input order. Closing the iterator early stops the workers."""
        if self._local is not None:
            for meta, texts in batches:
                yield meta, [ids.astype(np.uint32) for ids in self._local.encode_batch(texts)]
            return
        pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=self._args)
        pending: deque[tuple[Any, Future]] = deque()
        try:
            for meta, texts in batches:
                pending.append((meta, pool.submit(_encode, texts)))
                if len(pending) >= 2 * self.workers:
                    meta_out, fut = pending.popleft()
                    yield meta_out, fut.result()
            while pending:
                meta_out, fut = pending.popleft()
                yield meta_out, fut.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
