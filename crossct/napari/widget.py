"""The "Segment cells" dock widget: the selected image layer -> a Labels layer named after it.

Controls: the image layer, the weights folder (the shipped weights by default), one control per
row of :data:`crossct.napari.settings.SETTINGS` starting at the weights' own defaults, Segment and
Cancel buttons and a progress bar counting network tiles.  The work runs in napari's
``thread_worker`` (:func:`crossct.napari.run.run_segmentation`), so the viewer stays responsive;
problems are napari notifications.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar,
                              PushButton, SpinBox, create_widget)
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from ..predictors import WeightsError, resolve_weights
from .run import Outcome, run_segmentation, weights_spec
from .settings import SETTINGS, Setting, default_values

__all__ = ["SegmentCellsWidget", "labels_layer_name"]


def labels_layer_name(image_name: str) -> str:
    return f"{image_name} labels"


class _Progress(QObject):
    """Carries tile counts from the worker's threads to the widget (a queued Qt connection)."""

    tiles = Signal(int, int)


def _control(setting: Setting, value: Any):
    common = {"name": setting.name, "label": setting.label, "tooltip": setting.tooltip or None}
    if setting.choices:
        return ComboBox(choices=list(setting.choices), value=value, **common)
    if isinstance(value, bool):
        return CheckBox(value=value, **common)
    bounds = {k: v for k, v in (("min", setting.minimum), ("max", setting.maximum), ("step", setting.step))
              if v is not None}
    if isinstance(value, int):
        return SpinBox(value=value, **{k: int(v) for k, v in bounds.items()}, **common)
    return FloatSpinBox(value=value, **bounds, **common)


class SegmentCellsWidget(Container):
    """Segment the chosen image layer with CrossCT; see the module docstring."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__()
        self._viewer = napari_viewer
        self._image = create_widget(label="image", annotation="napari.layers.Image")
        self._weights = FileEdit(label="weights", mode="d", value=resolve_weights(None))
        try:
            defaults = default_values(weights_spec(self._weights.value))
        except (WeightsError, ValueError):
            from ..config import ModelSpec

            defaults = default_values(ModelSpec())
        self._settings = {s.name: _control(s, defaults[s.name]) for s in SETTINGS}
        self._run_button = PushButton(text="Segment")
        self._cancel_button = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(value=0, min=0, max=1,
                                     tooltip="network tiles done, of those planned so far (a rescaled pass adds more)")
        self._status = Label(value="")
        self.extend([self._image, self._weights, *self._settings.values(),
                     Container(widgets=[self._run_button, self._cancel_button], layout="horizontal", labels=False),
                     Container(widgets=[self._progress, self._status], labels=False)])
        self._signals = _Progress()
        self._signals.tiles.connect(self._on_tiles)
        self._cancel = threading.Event()
        self.worker = None
        self._weights.changed.connect(self._load_defaults)
        if "method" in self._settings:
            self._settings["method"].changed.connect(self._show_method_settings)
        self._show_method_settings()
        self._run_button.changed.connect(self.run)
        self._cancel_button.changed.connect(self.cancel)

    # ------------------------------------------------------------------ settings

    def values(self) -> dict[str, Any]:
        """The current setting values, by name."""
        return {name: control.value for name, control in self._settings.items()}

    def _load_defaults(self) -> None:
        """New weights: their own defaults in every control."""
        try:
            defaults = default_values(weights_spec(self._weights.value))
        except (WeightsError, ValueError) as exc:
            show_error(f"CrossCT: {exc}")
            return
        for name, control in self._settings.items():
            control.value = defaults[name]

    def _show_method_settings(self) -> None:
        method = self._settings["method"].value if "method" in self._settings else None
        for setting in SETTINGS:
            if setting.method is not None:
                self._settings[setting.name].visible = setting.method == method

    # ------------------------------------------------------------------ running

    def run(self):
        """Start segmenting the chosen layer in a worker thread; returns the worker (None if not started)."""
        layer = self._image.value
        if layer is None:
            show_info("CrossCT: open or choose an image layer first")
            return None
        if self.worker is not None:
            return self.worker
        self._cancel = threading.Event()
        self._progress.value = 0
        self._status.value = f"segmenting {layer.name} ..."
        self._run_button.enabled, self._cancel_button.enabled = False, True
        worker = thread_worker(run_segmentation)(layer.data, bool(layer.rgb), layer.name, Path(self._weights.value),
                                                 self.values(), self._signals.tiles.emit, self._cancel)
        worker.returned.connect(lambda outcome: self._on_returned(layer, outcome))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the run at the next batch of tiles; no layer is added."""
        self._cancel.set()
        self._status.value = "cancelling ..."

    def _on_tiles(self, done: int, total: int) -> None:
        self._progress.max = max(total, 1)
        self._progress.value = done

    def _on_returned(self, layer, outcome: Outcome) -> None:
        self._status.value = outcome.message
        if outcome.status == "failed":
            show_error(outcome.message)
            return
        if outcome.status == "cancelled":
            show_info(outcome.message)
            return
        name = labels_layer_name(layer.name)
        metadata = {"crossct": {"weights": str(self._weights.value), "settings": outcome.settings,
                                "seconds": round(outcome.seconds, 3)}}
        if name in self._viewer.layers:
            existing = self._viewer.layers[name]
            existing.data = outcome.labels
            existing.metadata.update(metadata)
        else:
            self._viewer.add_labels(outcome.labels, name=name, scale=layer.scale[-2:],
                                    translate=layer.translate[-2:], metadata=metadata)

    def _on_finished(self) -> None:
        self.worker = None
        self._run_button.enabled, self._cancel_button.enabled = True, False
