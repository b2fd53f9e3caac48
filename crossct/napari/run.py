"""What the napari widget's worker thread does, without Qt: layer data -> image -> labels.

:func:`run_segmentation` never raises for the failures a user can cause (a layer that is not a
2-D image, weights that do not load, settings out of range, not enough memory): it returns an
:class:`Outcome` whose message the widget shows as a napari notification.  Progress is counted in
network tiles (done of announced, see :class:`ProgressPredictor`) through a wrapper around the
predictor, which is also where a cancel request stops the run (between two batches of tiles).  The
image goes through :func:`crossct.pipeline.segment`, so large images take the CLI's bounded-memory
block path.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np

from ..config import ModelSpec
from ..predictors import WeightsError, load_predictor, resolve_weights
from .settings import segment_with_settings

__all__ = ["SegmentationCancelled", "ProgressPredictor", "Outcome", "layer_image",
           "cached_predictor", "run_segmentation", "weights_spec"]


class SegmentationCancelled(Exception):
    """Raised inside the pipeline (from the predictor) when the user pressed Cancel."""


class ProgressPredictor:
    """A predictor that reports tiles done of tiles announced, and stops when ``cancel`` is set.

    The pipeline announces each pass's tiles before running it (:func:`crossct.tiling.announce_tiles`):
    the automatic cell size's probe and rescaled passes, flips (4 views per tile), a whole slide's
    grid.  ``on_tiles(done, expected)`` follows both counts, so a second pass shows as more work
    rather than a bar held at 100 %.  Everything else (``spec``, ``on_gpu``, ``concurrent_calls``,
    ...) is the wrapped predictor's.  ``predict`` may be called from several threads at once.
    """

    def __init__(self, predictor, on_tiles: Callable[[int, int], None] | None = None,
                 cancel: threading.Event | None = None) -> None:
        self._predictor = predictor
        self._on_tiles = on_tiles
        self._cancel = cancel
        self._lock = threading.Lock()
        self.tiles_done = 0
        self.tiles_expected = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)

    def expect_tiles(self, tiles: int) -> None:
        with self._lock:
            self.tiles_expected += tiles
        self._report()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self._cancel is not None and self._cancel.is_set():
            raise SegmentationCancelled()
        outputs = self._predictor.predict(batch)
        with self._lock:
            self.tiles_done += len(batch)
        self._report()
        return outputs

    def _report(self) -> None:
        with self._lock:
            done, expected = self.tiles_done, self.tiles_expected
        if self._on_tiles is not None:
            # Tiles run without an announcement (a caller of its own) still count as done.
            self._on_tiles(done, max(done, expected))


def layer_image(data: Any, rgb: bool, name: str) -> np.ndarray:
    """An image layer's pixels as the pipeline takes them: (H, W) or (H, W, C).

    Multiscale data give their full-resolution level; singleton leading axes are dropped.
    Anything else that is not one 2-D plane (gray, RGB or RGBA) is refused, naming the layer.
    """
    if isinstance(data, (list, tuple)) or type(data).__name__ == "MultiScaleData":
        data = data[0]
    image = np.asarray(data)
    while image.ndim > (3 if rgb else 2) and image.shape[0] == 1:
        image = image[0]
    if rgb and (image.ndim != 3 or image.shape[-1] not in (3, 4)):
        raise ValueError(f"image layer {name!r} has shape {image.shape}; an RGB layer must be (H, W, 3 or 4)")
    if not rgb and image.ndim != 2:
        raise ValueError(
            f"image layer {name!r} has shape {image.shape}: CrossCT segments one 2-D plane (gray or RGB); "
            "split the stack or channels into 2-D layers first (right-click the layer > Split Stack)"
        )
    if min(image.shape[:2]) < 1:
        raise ValueError(f"image layer {name!r} has no pixels (shape {image.shape})")
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"image layer {name!r} has dtype {image.dtype}; CrossCT needs integer or real pixel values")
    return image


@lru_cache(maxsize=2)
def _load(path: str, stamp: tuple) -> Any:
    return load_predictor(path)


def cached_predictor(weights: str | os.PathLike | None):
    """:func:`crossct.predictors.load_predictor`, kept while the weights files do not change (so
    each run in a session does not rebuild the ONNX Runtime session)."""
    path = resolve_weights(weights)
    files = [path] if path.is_file() else sorted(path.glob("model.*")) if path.is_dir() else []
    stamp = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    return _load(str(path), stamp)


@dataclass
class Outcome:
    """What a run gave: ``labels`` when ``status`` is ``done``; a message for the user either way."""

    status: Literal["done", "failed", "cancelled"]
    message: str
    labels: np.ndarray | None = None
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)


def run_segmentation(data: Any, rgb: bool, name: str, weights: str | os.PathLike | None,
                     values: Mapping[str, Any], on_progress: Callable[[int, int], None] | None = None,
                     cancel: threading.Event | None = None) -> Outcome:
    """Segment an image layer's ``data`` with ``weights`` and the widget's setting ``values``."""
    t0 = time.perf_counter()
    try:
        image = layer_image(data, rgb, name)
        predictor = cached_predictor(weights)
        labels = segment_with_settings(image, ProgressPredictor(predictor, on_progress, cancel), values)
    except SegmentationCancelled:
        return Outcome("cancelled", f"CrossCT: segmentation of {name!r} cancelled", settings=dict(values))
    except (WeightsError, ValueError, MemoryError) as exc:
        reason = "not enough memory" if isinstance(exc, MemoryError) else str(exc)
        return Outcome("failed", f"CrossCT could not segment {name!r}: {reason}", settings=dict(values))
    seconds = time.perf_counter() - t0
    return Outcome("done", f"{name}: {int(labels.max())} cells in {seconds:.1f} s", labels, seconds, dict(values))


def weights_spec(weights: str | os.PathLike | None) -> ModelSpec:
    """The spec beside a weights folder (or .onnx file), read without loading the model."""
    from ..config import load_spec

    path = resolve_weights(weights)
    spec_path = path / "model.json" if path.is_dir() else path.with_suffix(".json")
    if not spec_path.is_file():
        raise WeightsError(f"no model.json at {Path(path)}: choose a CrossCT weights folder")
    return load_spec(spec_path)
