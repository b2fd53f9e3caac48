"""Optional outputs beside the labels, chosen on the command line: per-cell measurements
(``--measure``), outlines for Fiji and QuPath (``--export imagej geojson``) and a QC contact sheet
(``--qc``).

The batch calls :meth:`BatchReports.add` for each image right after its label file is written (on
the batch's writer thread, one image at a time, in the order of the work list) and the CLI calls
:meth:`BatchReports.finish` once at the end.  Every file is written atomically.  Nothing heavy is
imported here until an option is used, so ``--help`` stays instant.

Files, for an image ``<stem>.png`` whose labels are ``OUT/<stem>_label.tiff``:

- ``--measure``: ``OUT/<stem>_cells.csv`` (one row per cell, :mod:`crossct.measure`) and
  ``OUT/summary.csv`` (one row per image: size, cells, median area, seconds, or the error);
- ``--export imagej``: ``OUT/<stem>_rois.zip``; ``--export geojson``: ``OUT/<stem>_cells.geojson``
  (:mod:`crossct.outlines`);
- ``--qc``: ``OUT/qc.png`` (:mod:`crossct.qc`).

Under ``torchrun`` each process writes its own ``summary-rank<R>.csv`` and ``qc-rank<R>.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy as np

__all__ = ["EXPORT_FORMATS", "ReportOptionError", "ReportWriteError", "BatchReports", "add_arguments",
           "reports_from_args"]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("imagej", "geojson")
LABEL_SUFFIX = "_label.tiff"


class ReportOptionError(ValueError):
    """An option that cannot be honoured (a missing optional package); nothing has been done yet."""


class ReportWriteError(RuntimeError):
    """A report file that could not be written; the message names the file and the reason."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("measurements, exports and QC (optional, beside the labels)")
    group.add_argument("--measure", action="store_true",
                       help="write <stem>_cells.csv per image (label, area, centroid, bbox, equivalent diameter, "
                            "eccentricity, solidity, mean/max intensity per channel) and summary.csv for the batch")
    group.add_argument("--export", nargs="+", choices=EXPORT_FORMATS, default=[], metavar="FORMAT",
                       help="cell outlines: 'imagej' writes <stem>_rois.zip for Fiji's ROI Manager (needs "
                            "roifile: pip install 'crossct[reports]'), 'geojson' <stem>_cells.geojson for QuPath")
    group.add_argument("--qc", action="store_true",
                       help="write qc.png: a thumbnail of every image with its outlines and cell count, "
                            "the most unusual counts and sizes first")


def reports_from_args(args: argparse.Namespace, rank: int = 0, world: int = 1) -> "BatchReports | None":
    """The reports the options ask for (None when none), checked before any image is segmented."""
    exports = tuple(dict.fromkeys(args.export or ()))
    if not (args.measure or exports or args.qc):
        return None
    if "imagej" in exports and importlib.util.find_spec("roifile") is None:
        raise ReportOptionError("--export imagej needs the roifile package: pip install 'crossct[reports]' "
                                "(or pip install roifile)")
    return BatchReports(Path(args.output), measure=args.measure, exports=exports, qc=args.qc,
                        shard_suffix=f"-rank{rank}" if world > 1 else "")


@dataclass
class BatchReports:
    """Writes the chosen reports of one batch into ``output_dir``."""

    output_dir: Path
    measure: bool = False
    exports: tuple[str, ...] = ()
    qc: bool = False
    shard_suffix: str = ""
    summary_rows: list[dict] = field(default_factory=list)
    qc_entries: list = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = set(self.exports) - set(EXPORT_FORMATS)
        if unknown:
            raise ValueError(f"export formats {sorted(unknown)} are not among {list(EXPORT_FORMATS)}")

    def files_for(self, label_path: Path) -> dict[str, Path]:
        """The per-image files this batch writes beside ``label_path``, by kind."""
        stem = label_path.name.removesuffix(LABEL_SUFFIX)
        folder = label_path.parent
        files = {}
        if self.measure:
            files["measure"] = folder / f"{stem}_cells.csv"
        if "imagej" in self.exports:
            files["imagej"] = folder / f"{stem}_rois.zip"
        if "geojson" in self.exports:
            files["geojson"] = folder / f"{stem}_cells.geojson"
        return files

    def add(self, image_path: Path, label_path: Path, image: "np.ndarray", labels: "np.ndarray",
            seconds: float) -> None:
        """Write one image's files and remember its summary row and QC thumbnail."""
        from .measure import measure_cells, summary_row, write_table_csv
        from .outlines import write_geojson, write_imagej_zip

        writers = {
            "measure": lambda path: write_table_csv(path, measure_cells(labels, image)),
            "imagej": lambda path: write_imagej_zip(path, labels),
            "geojson": lambda path: write_geojson(path, labels),
        }
        for kind, path in self.files_for(label_path).items():
            _write(path, writers[kind])
        if self.measure:
            self.summary_rows.append(summary_row(image_path.name, labels, seconds))
        if self.qc:
            from .qc import qc_entry

            self.qc_entries.append(qc_entry(image_path.name, image, labels))

    def finish(self, failed: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
        """Write the batch files (``summary.csv``, ``qc.png``), listing the ``failed`` images
        (file, reason) too; returns (file, reason) for each batch file that could not be written."""
        problems: list[tuple[str, str]] = []
        if self.measure:
            from .measure import SUMMARY_COLUMNS, write_table_csv

            rows = self.summary_rows + [{"image": Path(name).name, "error": reason} for name, reason in failed]
            path = self.output_dir / f"summary{self.shard_suffix}.csv"
            problems += _try_write(path, lambda p: write_table_csv(p, rows, SUMMARY_COLUMNS))
        if self.qc:
            from .qc import failed_entry, write_contact_sheet

            entries = self.qc_entries + [failed_entry(Path(name).name, reason) for name, reason in failed]
            path = self.output_dir / f"qc{self.shard_suffix}.png"
            problems += _try_write(path, lambda p: write_contact_sheet(p, entries))
        return problems


def _write(path: Path, write) -> None:
    """``write(path)``; a failure to write becomes a :class:`ReportWriteError` naming ``path``."""
    try:
        write(path)
    except OSError as exc:
        raise ReportWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
    logger.debug("wrote %s", path)


def _try_write(path: Path, write) -> list[tuple[str, str]]:
    try:
        _write(path, write)
    except ReportWriteError as exc:
        return [(str(path), f"not written: {exc.__cause__.strerror or exc.__cause__}")]
    logger.info("wrote %s", path)
    return []
