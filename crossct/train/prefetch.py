"""Batches prepared ahead of the network by worker processes.

A batch is a pure function of its step (:class:`crossct.train.loops.StepBatches`), so workers can
build steps ``s, s+1, ...`` in any order and the loop receives exactly what it would have built
itself: the run stays reproducible and resumable with any number of workers.  With none, batches
are built on the training thread (the CPU default: its cores are busy with the network).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["step_batches", "auto_workers"]


def auto_workers(requested: int, on_gpu: bool) -> int:
    """``requested`` when >= 0; else none on a CPU, and up to 12 (leaving a core) next to a GPU."""
    if requested >= 0:
        return requested
    if not on_gpu:
        return 0
    from ..predictors import available_cpus

    return max(0, min(12, available_cpus() - 1))


class _Steps(Dataset):
    def __init__(self, streams: dict[str, Any]) -> None:
        self.streams = streams

    def __len__(self) -> int:  # indices come from the sampler, never from len()
        return 2**62

    def __getitem__(self, step: int) -> dict[str, Any]:
        return {name: stream.batch(step) for name, stream in self.streams.items()}


class _From(Sampler):
    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # the batch code is NumPy / OpenCV; torch threads would oversubscribe


def step_batches(streams: dict[str, Any], start: int, workers: int, pin_memory: bool = False) -> Iterator[dict[str, Any]]:
    """``{stream: batch}`` for steps ``start, start + 1, ...`` (endless; stop iterating to end it)."""
    if workers <= 0:
        return ({name: s.batch(step) for name, s in streams.items()} for step in itertools.count(start))
    # fork shares the in-memory datasets copy-on-write; spawn would pickle gigabytes per worker.
    context = multiprocessing.get_context("fork") if os.name == "posix" else None
    loader = DataLoader(_Steps(streams), batch_size=None, sampler=_From(start), num_workers=workers,
                        pin_memory=pin_memory, prefetch_factor=4, worker_init_fn=_worker_init,
                        multiprocessing_context=context, persistent_workers=False)
    return iter(loader)
