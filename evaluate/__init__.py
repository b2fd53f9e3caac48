"""Evaluation by the NeurIPS 2022 CellSeg challenge's rules: F1 at IoU 0.5 and running time.

- :mod:`evaluate.metrics`: :func:`f1_score` (boundary removal, sparse IoU, Hungarian-equivalent
  matching, 2000-pixel tiles for images of 25 Mpx or more), folder / manifest scoring.
- :mod:`evaluate.timing`: :func:`tolerance`, :func:`rank_time` and :func:`time_command`, the
  one-image-per-run timing harness.
- ``python -m evaluate f1 ...`` / ``python -m evaluate timing ...``: the command line.

Names are loaded on first use, so ``python -m evaluate --help`` does not import NumPy or SciPy.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "f1_score",
    "foreground_dice",
    "remove_boundary_cells",
    "sparse_iou",
    "count_true_positives",
    "read_labels",
    "score_cases",
    "summarize",
    "Case",
    "LabelReadError",
    "tolerance",
    "rank_time",
    "image_hw",
    "time_command",
    "write_timing_csv",
    "timing_totals",
]

_HOME = {
    **dict.fromkeys(
        [
            "f1_score", "foreground_dice", "remove_boundary_cells", "sparse_iou", "count_true_positives",
            "read_labels", "score_cases", "summarize", "Case", "LabelReadError",
        ],
        "metrics",
    ),
    **dict.fromkeys(["tolerance", "rank_time", "image_hw", "time_command", "write_timing_csv", "timing_totals"], "timing"),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
