"""The segmentation settings the napari widget offers: one table, one adapter to the pipeline.

Each :class:`Setting` says where its value goes: a field of the weights' :class:`~crossct.config.ModelSpec`
(``"postprocess.seed_threshold"``), whose default is the weights' own value, or a keyword argument
of :func:`crossct.pipeline.segment` (target :data:`SEGMENT`), whose default is that function's.
The widget builds one control per row of :data:`SETTINGS`, so offering a new pipeline option
(such as the cell diameter or flip averaging below) is one more row.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Mapping, get_args

import numpy as np

from ..config import ModelSpec, PostMethod

__all__ = ["SEGMENT", "Setting", "SETTINGS", "default_values", "apply_settings", "segment_with_settings"]

SEGMENT = "segment"  # target of settings passed to crossct.pipeline.segment as keyword arguments


@dataclass(frozen=True)
class Setting:
    """One user-facing setting: its keyword, label, target, and the range or choices a control offers."""

    name: str
    label: str
    target: str  # "section.field" of ModelSpec, or SEGMENT
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    tooltip: str = ""
    # Shown only while the "method" setting has this value (thresholds of the other method hide).
    method: str | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("method", "post-processing", "postprocess.method", choices=get_args(PostMethod),
            tooltip="watershed: distance-map watershed that splits touching cells; "
                    "threshold: the challenge organisers' interior > threshold + connected components"),
    Setting("seed_threshold", "seed threshold", "postprocess.seed_threshold", minimum=0.0, maximum=1.0, step=0.05,
            tooltip="cell distance - neighbour distance^2 above this starts a cell (lower: more cells)",
            method="watershed"),
    Setting("mask_threshold", "mask threshold", "postprocess.mask_threshold", minimum=0.0, maximum=1.0, step=0.05,
            tooltip="P(interior) + P(boundary) above this is cell (lower: larger cells)", method="watershed"),
    Setting("interior_threshold", "interior threshold", "postprocess.interior_threshold", minimum=0.0,
            maximum=1.0, step=0.05, tooltip="P(interior) above this is cell", method="threshold"),
    Setting("min_size", "min cell area (px)", "postprocess.min_size", minimum=0, maximum=100_000, step=1,
            tooltip="smaller objects are removed"),
    Setting("min_relative_size", "min cell area (x median)", "postprocess.min_relative_size", minimum=0.0,
            maximum=0.95, step=0.05, tooltip="objects smaller than this fraction of the image's median cell area are "
                                             "removed: fragments of cells at any cell size (0: off)",
            method="watershed"),
    Setting("overlap", "tile overlap", "tiling.overlap", minimum=0.0, maximum=0.75, step=0.05,
            tooltip="fraction of each 256-px tile shared with its neighbours (more: smoother, slower)"),
    Setting("tta", "flip averaging", "test_time.flips",
            tooltip="average the network over the image's flips (4 passes: slower, often cleaner outlines)"),
    Setting("auto_size", "automatic cell size", "size.auto",
            tooltip="measure the cells' size and segment again at a better scale when they are far from the "
                    "sizes the network was trained on"),
    Setting("diameter", "cell diameter (px, 0 = not given)", "size.diameter", minimum=0.0, maximum=1000.0, step=1.0,
            tooltip="cells' typical diameter: the image is rescaled to the trained sizes (0: use automatic size, if on)"),
)


def _segment_defaults() -> dict[str, Any]:
    from ..pipeline import segment

    return {name: p.default for name, p in inspect.signature(segment).parameters.items()
            if p.default is not inspect.Parameter.empty}


def default_values(spec: ModelSpec, settings: tuple[Setting, ...] = SETTINGS) -> dict[str, Any]:
    """Every setting's default: the weights' value for spec fields, ``segment``'s for its keywords."""
    values: dict[str, Any] = {}
    keywords = _segment_defaults()
    for setting in settings:
        if setting.target == SEGMENT:
            if setting.name not in keywords:
                raise ValueError(f"crossct.pipeline.segment has no keyword {setting.name!r} with a default")
            values[setting.name] = keywords[setting.name]
        else:
            section, name = setting.target.split(".")
            values[setting.name] = getattr(getattr(spec, section), name)
    return values


def apply_settings(spec: ModelSpec, values: Mapping[str, Any],
                   settings: tuple[Setting, ...] = SETTINGS) -> tuple[ModelSpec, dict[str, Any]]:
    """(spec with the spec-field settings replaced, keyword arguments for ``segment``).

    Unknown names are refused with the valid ones; invalid values raise the config's own
    ``ValueError`` (e.g. an overlap of 1).
    """
    by_name = {s.name: s for s in settings}
    unknown = set(values) - set(by_name)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; valid: {sorted(by_name)}")
    sections: dict[str, dict[str, Any]] = {}
    keywords: dict[str, Any] = {}
    for name, value in values.items():
        target = by_name[name].target
        if target == SEGMENT:
            keywords[name] = value
        else:
            section, field = target.split(".")
            sections.setdefault(section, {})[field] = value
    replaced = {section: dataclasses.replace(getattr(spec, section), **fields) for section, fields in sections.items()}
    return spec.replace(**replaced), keywords


def segment_with_settings(image: np.ndarray, predictor, values: Mapping[str, Any], timings=None) -> np.ndarray:
    """:func:`crossct.pipeline.segment` of ``image`` with ``values`` applied to the predictor's spec."""
    from ..pipeline import segment

    spec, keywords = apply_settings(predictor.spec, values)
    return segment(image, predictor, spec, timings, **keywords)
