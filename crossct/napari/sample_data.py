"""The demo's images (:func:`crossct.demo.demo_image`) as napari sample data."""

from __future__ import annotations

from ..demo import demo_image

__all__ = ["ihc", "synthetic_nuclei"]


def ihc() -> list[tuple]:
    return [(demo_image("ihc"), {"name": "ihc", "rgb": True}, "image")]


def synthetic_nuclei() -> list[tuple]:
    return [(demo_image("synthetic_nuclei"), {"name": "synthetic_nuclei"}, "image")]
