"""A folder of images -> label files: the work list, and the loop that survives bad files.

Each image is read, segmented and written on its own; a failure is recorded with the file and the
reason and the batch goes on.  Labels are written atomically, so a killed run leaves either a
whole label file or none, and ``skip_existing`` resumes it; the hidden temporary a killed write
leaves beside its label (``.<name>.tmp-<pid>``) is removed when a later run writes that label.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .config import ModelSpec
from .io import ImageReadError, list_images, output_name, read_image, write_labels
from .pipeline import Timings, segment_stages
from .predictors import Predictor

__all__ = ["WorkItem", "Summary", "find_work", "remove_stale_temporaries", "run_batch", "shard_from_env"]

logger = logging.getLogger(__name__)

# (image path, label path, image, labels, seconds since the image was started) -> None
OnLabels = Callable[[Path, Path, object, object, float], None]


@dataclass(frozen=True)
class WorkItem:
    image: Path
    output: Path


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    cells: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's ``RANK`` / ``WORLD_SIZE`` (0, 1 when not set)."""
    import os

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    return rank, world


def find_work(
    input_dir: Path, output_dir: Path, skip_existing: bool = False, rank: int = 0, world: int = 1
) -> tuple[list[WorkItem], list[tuple[str, str]], list[WorkItem]]:
    """The images to segment, the ones refused up front (file, reason), and the ones skipped.

    Two inputs whose names map to the same ``<stem>_label.tiff`` are both refused, naming each
    other: writing either would silently overwrite the other's result.  With ``skip_existing``,
    images whose label file already exists are returned as skipped, not as work.  With
    ``world > 1`` only every ``world``-th output name from ``rank`` on is this process's share
    (N processes or GPUs split one folder without talking to each other).
    """
    by_output: dict[str, list[Path]] = {}
    for image in list_images(input_dir):
        by_output.setdefault(output_name(image), []).append(image)
    work: list[WorkItem] = []
    skipped: list[WorkItem] = []
    errors: list[tuple[str, str]] = []
    for position, (name, images) in enumerate(sorted(by_output.items())):
        if position % world != rank:
            continue
        if len(images) > 1:
            names = ", ".join(p.name for p in images)
            for image in images:
                errors.append((str(image), f"output name {name} is shared by {names}; rename the inputs"))
            continue
        item = WorkItem(images[0], output_dir / name)
        if skip_existing and item.output.exists():
            logger.debug("skipping %s: %s exists", item.image, item.output)
            skipped.append(item)
            continue
        work.append(item)
    return work, errors, skipped


def remove_stale_temporaries(outputs: Iterable[Path]) -> list[Path]:
    """Delete the hidden temporaries (``.<name>.tmp-<pid>``, see :func:`~crossct.io.write_labels`)
    that a killed run left for these output files; returns the ones removed.

    Only the given outputs' temporaries are touched, so processes writing other shares of the same
    folder keep theirs.
    """
    wanted: dict[Path, set[str]] = {}
    for output in outputs:
        wanted.setdefault(output.parent, set()).add(output.name)
    removed: list[Path] = []
    for folder, names in wanted.items():
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue  # no folder yet (nothing to clean) or unreadable: writing will report it
        for entry in entries:
            stem, sep, pid = entry.name.rpartition(".tmp-")
            if sep and pid.isdigit() and stem.startswith(".") and stem[1:] in names:
                try:
                    entry.unlink()
                except OSError as exc:
                    logger.warning("cannot remove stale temporary %s: %s", entry, exc.strerror or exc)
                    continue
                logger.info("removed stale temporary %s (left by an interrupted run)", entry)
                removed.append(entry)
    return removed


def run_batch(
    work: Iterable[WorkItem],
    predictor: Predictor,
    spec: ModelSpec | None = None,
    overlay_dir: Path | None = None,
    progress: Callable[[list], Iterable] = lambda items: items,
    on_labels: OnLabels | None = None,
) -> Summary:
    """Segment every item, recording failures (in the order of the work list) instead of raising.

    ``on_labels(image_path, label_path, image, labels, seconds)`` is called for each image once
    its label file is written (the one place where per-image extras such as
    :class:`crossct.reports.BatchReports` hook in); an error in it fails that image.

    Two stages overlap: while one image's outputs are post-processed and written on a second
    thread, the next image is read and goes through the network.  Post-processing runs on one
    core and the network on all, so the batch is faster than one image after another (see
    benchmarks/README.md); at most two images are in flight.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    work = list(work)
    summary = Summary()
    remove_stale_temporaries(item.output for item in work)
    pending: tuple[WorkItem, Future, float] | None = None

    def collect() -> None:
        nonlocal pending
        if pending is None:
            return
        item, future, t0 = pending
        pending = None
        failure = _failure(item, future.exception())
        if failure:
            summary.failed.append(failure)
            return
        n, shape = future.result()
        summary.done += 1
        summary.cells += n
        logger.info("%s: %d cells, %dx%d, %.2f s", item.image.name, n, shape[0], shape[1], time.perf_counter() - t0)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="crossct-finish") as finisher:
        for item in progress(work):
            t0 = time.perf_counter()
            try:
                image = read_image(item.image)
                finish_segmenting = segment_stages(image, predictor, spec, summary.timings)
            except Exception as exc:  # noqa: BLE001 - reported by _failure; the batch goes on
                collect()  # keep failures in the order of the work list
                summary.failed.append(_failure(item, exc))
                continue
            collect()
            pending = (item, finisher.submit(_finish, item, image, finish_segmenting, overlay_dir, on_labels, t0), t0)
        collect()
    return summary


def _finish(item: WorkItem, image, finish_segmenting: Callable[[], object], overlay_dir: Path | None,
            on_labels: OnLabels | None = None, t0: float = 0.0) -> tuple[int, tuple[int, ...]]:
    """The second stage: post-process, write the labels (and the overlay); returns (cells, shape)."""
    labels = finish_segmenting()
    write_labels(item.output, labels)
    if on_labels is not None:
        on_labels(item.image, item.output, image, labels, time.perf_counter() - t0)
    if overlay_dir is not None:
        from .overlay import write_overlay

        write_overlay(overlay_dir / (item.output.name.removesuffix(".tiff") + ".png"), image, labels)
    return int(labels.max()), labels.shape


def _failure(item: WorkItem, exc: BaseException | None) -> tuple[str, str] | None:
    """(file, reason) for an image that failed with ``exc``; None when it did not."""
    if exc is None:
        return None
    if isinstance(exc, ImageReadError):
        return (str(item.image), str(exc).removeprefix(f"{item.image}: "))
    if isinstance(exc, OSError):
        return (str(item.image), f"cannot write {item.output}: {exc.strerror or exc}")
    if isinstance(exc, MemoryError):
        return (str(item.image), "out of memory while segmenting")
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: not an image's fault
        raise exc
    logger.debug("traceback for %s", item.image, exc_info=exc)
    return (str(item.image), f"{type(exc).__name__}: {exc}")
