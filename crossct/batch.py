"""A list of images -> label files: the work list, and the loop that survives bad files.

Each image is read, segmented and written on its own; a failure is recorded with the file, what
failed (the image, its labels, its overlay) and the reason, and the batch goes on.  Every image is
checked against the memory budget (:mod:`crossct.budget`) from its header before it is decoded.
Labels are written atomically, so a killed run leaves either a whole label file or none, and
``skip_existing`` resumes it (an image whose labels exist but whose overlay does not gets its
overlay).  The hidden temporary a killed write leaves beside its label (``.<name>.tmp-<pid>-<id>``)
is removed by a later run, unless a live process (another run on the same folder) still holds it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .budget import MemoryBudget
from .config import ModelSpec
from .env import shard_from_env
from .io import (
    ImageReadError,
    is_temporary_of,
    list_images,
    output_name,
    read_header,
    read_image,
    temporary_owner_gone,
    write_labels,
)
from .pipeline import Timings, segment_stages
from .predictors import Predictor

__all__ = [
    "WorkItem",
    "Summary",
    "OutputError",
    "find_work",
    "overlay_name",
    "remove_stale_temporaries",
    "run_batch",
    "shard_from_env",
]

logger = logging.getLogger(__name__)

LABEL_SUFFIX = "_label.tiff"

# (image path, label path, image, labels, seconds since the image was started) -> None
OnLabels = Callable[[Path, Path, object, object, float], None]


def overlay_name(image: str | os.PathLike) -> str:
    """The preview's file name: ``<stem>_label.png``."""
    return output_name(image).removesuffix(".tiff") + ".png"


@dataclass(frozen=True)
class WorkItem:
    """One image and where its results go.  ``labels_exist``: only the overlay is still to make."""

    image: Path
    output: Path
    overlay: Path | None = None
    labels_exist: bool = False


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    cells: int = 0
    overlays_only: int = 0  # images whose existing labels got the missing overlay
    failed: list[tuple[str, str]] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)


class OutputError(Exception):
    """Writing one of an image's results failed: ``what`` (labels, overlay) at ``path``."""

    def __init__(self, what: str, path: Path, cause: BaseException, labels_written: bool = False) -> None:
        self.what, self.path, self.cause, self.labels_written = what, path, cause, labels_written
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause) or type(cause).__name__
        prefix = f"labels written, but " if labels_written else ""
        super().__init__(f"{prefix}cannot write {what} {path}: {reason}")


def _own_outputs(images: list[Path], output_dir: Path, overlay_dir: Path | None) -> set[Path]:
    """The images that are this run's own results (``-o`` or ``--overlay`` inside the input)."""
    ours: set[Path] = set()
    folders = [(output_dir, LABEL_SUFFIX)] + ([(overlay_dir, "_label.png")] if overlay_dir else [])
    for folder, suffix in folders:
        try:
            resolved = folder.resolve()
        except OSError:
            continue
        for image in images:
            if image.name.endswith(suffix) and image.parent.resolve() == resolved:
                ours.add(image)
    return ours


def find_work(
    inputs: Path | Sequence[Path], output_dir: Path, skip_existing: bool = False, rank: int = 0, world: int = 1,
    overlay_dir: Path | None = None,
) -> tuple[list[WorkItem], list[tuple[str, str]], list[WorkItem]]:
    """The images to segment, the ones refused up front (file, reason), and the ones skipped.

    ``inputs`` is a folder or a list of image files.  Label files (``*_label.tiff``) in the
    output folder, and previews in the overlay folder, are never taken for images: with ``-o``
    equal to ``-i`` a second run does not segment the first run's results.  Two inputs whose
    names map to the same ``<stem>_label.tiff`` are both refused, naming each other: writing
    either would silently overwrite the other's result.  With ``skip_existing``, images whose
    label file (and overlay, when asked for) exist are returned as skipped; those with labels but
    no overlay come back as work that only makes the overlay.  With ``world > 1`` only every
    ``world``-th output name from ``rank`` on is this process's share (N processes or GPUs split
    one folder without talking to each other).
    """
    images = list_images(inputs) if isinstance(inputs, (str, os.PathLike)) else [Path(p) for p in inputs]
    ours = _own_outputs(images, output_dir, overlay_dir)
    if ours:
        logger.info("skipping %d file(s) that are this run's own outputs (e.g. %s)", len(ours), min(ours))
    by_output: dict[str, list[Path]] = {}
    for image in images:
        if image not in ours:
            by_output.setdefault(output_name(image), []).append(image)
    work: list[WorkItem] = []
    skipped: list[WorkItem] = []
    errors: list[tuple[str, str]] = []
    for position, (name, group) in enumerate(sorted(by_output.items())):
        if position % world != rank:
            continue
        if len(group) > 1:
            one_folder = len({p.parent for p in group}) == 1
            names = ", ".join(p.name if one_folder else str(p) for p in group)
            for image in group:
                errors.append((str(image), f"output name {name} is shared by {names}; rename the inputs"))
            continue
        overlay = overlay_dir / overlay_name(group[0]) if overlay_dir is not None else None
        item = WorkItem(group[0], output_dir / name, overlay)
        if skip_existing and item.output.exists():
            if overlay is None or overlay.exists():
                logger.debug("skipping %s: %s exists", item.image, item.output)
                skipped.append(item)
                continue
            item = WorkItem(item.image, item.output, overlay, labels_exist=True)
        work.append(item)
    return work, errors, skipped


def remove_stale_temporaries(outputs: Iterable[Path]) -> list[Path]:
    """Delete the hidden temporaries (see :func:`crossct.io.write_atomically`) that killed runs left
    for these output files; returns the ones removed.

    Only the given outputs' temporaries are looked at, and only those no live process holds are
    removed: other processes writing into the same folder keep theirs, whatever the timing.
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
            if not is_temporary_of(entry, names):
                continue
            try:
                gone = temporary_owner_gone(entry)
            except OSError as exc:
                logger.warning("cannot remove stale temporary %s: %s", entry, exc.strerror or exc)
                continue
            if gone:
                logger.info("removed stale temporary %s (left by an interrupted run)", entry)
                removed.append(entry)
    return removed


def run_batch(
    work: Iterable[WorkItem],
    predictor: Predictor,
    spec: ModelSpec | None = None,
    overlay_dir: Path | None = None,
    progress: Callable[[list], Iterable] = lambda items: items,
    budget: MemoryBudget | None = None,
    on_labels: OnLabels | None = None,
) -> Summary:
    """Segment every item, recording failures (in the order of the work list) instead of raising.

    ``on_labels(image_path, label_path, image, labels, seconds)`` is called for each image once
    its label file is written (the one place where per-image extras such as
    :class:`crossct.reports.BatchReports` hook in); an error in it fails that image.

    Two stages overlap: while one image's outputs are post-processed and written on a second
    thread, the next image is read and goes through the network.  Post-processing runs on one
    core and the network on all, so the batch is faster than one image after another (see
    benchmarks/README.md); at most two images are in flight, and only when their memory
    estimates together fit the ``budget`` (else the next waits).  ``overlay_dir`` gives items
    without an overlay path one.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    spec = spec or predictor.spec
    budget = budget or MemoryBudget()
    work = [WorkItem(i.image, i.output, overlay_dir / overlay_name(i.image), i.labels_exist)
            if overlay_dir is not None and i.overlay is None else i for i in work]
    summary = Summary()
    remove_stale_temporaries([item.output for item in work] + [item.overlay for item in work if item.overlay])
    pending: tuple[WorkItem, Future, float, int] | None = None

    def collect() -> None:
        nonlocal pending
        if pending is None:
            return
        item, future, t0, _ = pending
        pending = None
        failure = _failure(item, future.exception())
        if failure:
            summary.failed.append(failure)
            return
        n, shape = future.result()
        if item.labels_exist:
            summary.overlays_only += 1
            logger.info("%s: overlay from the existing labels, %.2f s", item.image.name, time.perf_counter() - t0)
            return
        summary.done += 1
        summary.cells += n
        logger.info("%s: %d cells, %dx%d, %.2f s", item.image.name, n, shape[0], shape[1], time.perf_counter() - t0)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="crossct-finish") as finisher:
        for item in progress(work):
            t0 = time.perf_counter()
            try:
                header = read_header(item.image)
                needed = budget.check(item.image, header, spec, overlay=item.overlay is not None)
                if pending is not None and pending[3] + needed > budget.limit:
                    collect()  # the image in flight and this one would not fit together
                image = read_image(item.image, max_bytes=None, header=header)
                if item.labels_exist:
                    finish_segmenting = _existing_labels(item, image.shape[:2])
                else:
                    finish_segmenting = segment_stages(image, predictor, spec, summary.timings)
            except Exception as exc:  # noqa: BLE001 - reported by _failure; the batch goes on
                collect()  # keep failures in the order of the work list
                summary.failed.append(_failure(item, exc))
                continue
            collect()
            pending = (item, finisher.submit(_finish, item, image, finish_segmenting, on_labels, t0), t0, needed)
            del image, finish_segmenting  # held by the finisher alone: freed when it is done
        collect()
    return summary


def _existing_labels(item: WorkItem, shape: tuple[int, int]) -> Callable[[], object]:
    """The labels a previous run wrote for ``item`` (to draw its missing overlay)."""

    def load():
        import tifffile

        try:
            labels = tifffile.imread(item.output)
        except Exception as exc:  # noqa: BLE001 - reported with the file
            raise ImageReadError(f"{item.image}: cannot read its existing labels {item.output} "
                                 f"({type(exc).__name__}: {exc})") from exc
        if labels.shape != shape:
            raise ImageReadError(f"{item.image}: its existing labels {item.output} are {labels.shape}, "
                                 f"the image is {shape}; delete them to segment it again")
        return labels

    return load


def _finish(item: WorkItem, image, finish_segmenting: Callable[[], object], on_labels: OnLabels | None = None,
            t0: float = 0.0) -> tuple[int, tuple[int, ...]]:
    """The second stage: post-process, write the labels (and the overlay); returns (cells, shape)."""
    labels = finish_segmenting()
    if not item.labels_exist:
        try:
            write_labels(item.output, labels)
        except OSError as exc:
            raise OutputError("labels", item.output, exc) from exc
        if on_labels is not None:
            on_labels(item.image, item.output, image, labels, time.perf_counter() - t0)
    if item.overlay is not None:
        from .overlay import write_overlay

        try:
            write_overlay(item.overlay, image, labels)
        except (OSError, ValueError, MemoryError) as exc:
            raise OutputError("overlay", item.overlay, exc, labels_written=not item.labels_exist) from exc
    return int(labels.max()) if labels.size else 0, labels.shape


def _failure(item: WorkItem, exc: BaseException | None) -> tuple[str, str] | None:
    """(file, reason) for an image that failed with ``exc``; None when it did not."""
    if exc is None:
        return None
    if isinstance(exc, ImageReadError):
        return (str(item.image), str(exc).removeprefix(f"{item.image}: "))
    if isinstance(exc, OutputError):
        return (str(item.image), str(exc))
    if isinstance(exc, OSError):
        return (str(item.image), f"{exc.strerror or exc}")
    if isinstance(exc, MemoryError):
        return (str(item.image), "out of memory while segmenting")
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: not an image's fault
        raise exc
    logger.debug("traceback for %s", item.image, exc_info=exc)
    return (str(item.image), f"{type(exc).__name__}: {exc}")
