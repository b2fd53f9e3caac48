"""``predict.py`` / ``crossct-predict``: images in, one ``<stem>_label.tiff`` per image out.

Arguments are parsed before anything heavy is imported, so ``--help`` is instant.
Exit codes: 0 every image written; 1 some images failed (the rest were written); 2 nothing could
be done (bad arguments or environment, an input that does not exist, no images found, unwritable
output folder, missing or invalid weights).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from .reports import add_arguments as add_report_arguments

__all__ = ["main", "build_parser"]

logger = logging.getLogger("crossct.predict")

IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")  # as crossct.io, without importing NumPy

EXIT_OK, EXIT_SOME_FAILED, EXIT_FATAL = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    from .helpformat import DefaultsHelpFormatter

    p = argparse.ArgumentParser(
        description=(
            "Segment images (png, bmp, jpg, tif; gray, RGB, 8/16-bit, float) and write one instance-label "
            "TIFF per image: <stem>_label.tiff, 0 = background, 1..N = cells, uint16 (uint32 above 65535 "
            "cells), zlib-compressed. Exit code 0: all written; 1: some images failed (named on stderr); "
            "2: nothing could be done (no images found, bad weights, ...)."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("-i", "--input", nargs="+", default=["/inputs"], metavar="PATH",
                   help="folders of images (sub-folders and hidden files are skipped), image files, or glob "
                        "patterns such as 'data/*.tif' (default: /inputs)")
    p.add_argument("-o", "--output", default="/outputs", help="folder for the label TIFFs (created if missing)")
    p.add_argument("-w", "--weights", default=None,
                   help="weights folder (model.json + model.onnx/.pt) or a model file; "
                        "default: $CROSSCT_WEIGHTS, else weights/ beside the package")
    p.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto",
                   help="auto: ONNX Runtime when a .onnx model is present, else PyTorch")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA when available, else CPU")
    p.add_argument("--postprocess", choices=["watershed", "threshold"], default=None,
                   help="override the weights' post-processing (threshold = the organisers' interior > 0.5)")
    p.add_argument("--diameter", metavar="PX", default=None,
                   help="typical cell diameter in pixels: the image is rescaled so that its cells match the sizes "
                        "the network was trained on; 'auto' measures it per image (a second pass only for images "
                        "whose cells are far from those sizes); 'native': one pass at the image's own scale; "
                        "default: the weights' setting")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="flip test-time augmentation (4 network passes per tile, outputs averaged); "
                        "default: the weights' setting")
    p.add_argument("--overlay", metavar="DIR", default=None, help="also write PNG previews with cell outlines here")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip images whose label file (and overlay, with --overlay) already exists (resume)")
    p.add_argument("--max-memory", metavar="SIZE", default=None,
                   help="most memory one image may need (decoded image + segmentation, estimated from its header; "
                        "larger files are refused before decoding), e.g. 16G for whole slides; "
                        "default: $CROSSCT_MAX_MEMORY, else 3G")
    add_report_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and the summary")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    slide = p.add_argument_group("whole slides in OME-Zarr, block-parallel on Dask (pip install 'crossct[zarr]')")
    slide.add_argument("--zarr", metavar="STORE", default=None,
                       help="segment the image of this OME-Zarr store and write labels/crossct into it (-i/-o unused)")
    slide.add_argument("--level", type=int, default=0, help="resolution level of --zarr to segment (0 = full resolution)")
    slide.add_argument("--scheduler", metavar="ADDRESS", default=None,
                       help="dask.distributed scheduler to run on (e.g. tcp://host:8786); none: a local cluster")
    slide.add_argument("--workers", type=int, default=1, help="worker processes of the local cluster (without --scheduler)")
    return p


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    # tifffile logs an error per page about malformed tags (400 lines for a 200-page bomb); our own
    # FAILED line names the file and the reason.  -v shows them.
    logging.getLogger("tifffile").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def _check_output_folders(args: argparse.Namespace) -> str | None:
    """A message when the output (or overlay) folder cannot be created or written, else None."""
    import tempfile

    folders = [Path(args.output)] + ([Path(args.overlay)] if args.overlay else [])
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # A unique probe: processes with the same pid (containers) may share the folder.
            fd, probe = tempfile.mkstemp(prefix=".crossct-write-test-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            return f"output folder {folder} is not writable ({exc.strerror or exc})"
    return None


def _memory_limit(value: str | None) -> int:
    from .budget import DEFAULT_MEMORY_LIMIT, parse_memory

    if value is not None:
        return parse_memory(value)
    env = os.environ.get("CROSSCT_MAX_MEMORY", "").strip()
    if env:
        try:
            return parse_memory(env)
        except ValueError as exc:
            raise ValueError(f"environment variable CROSSCT_MAX_MEMORY: {exc}") from None
    return DEFAULT_MEMORY_LIMIT


@contextlib.contextmanager
def _progress(enabled: bool):
    """A progress bar over the work list when stderr is a terminal, with log records printed above
    it (never across it); a plain pass-through otherwise."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda items: items
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger()]):
        yield lambda items: tqdm(items, unit="img", dynamic_ncols=True, leave=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.quiet, args.verbose)
    if args.zarr is not None:
        from .zarr_predict import predict_zarr

        return predict_zarr(args)
    try:
        return _run(args)
    except _Fatal as exc:
        logger.error("%s", exc)
        return EXIT_FATAL


def _diameter(text: str | None) -> float | None:
    """``--diameter``: None (the weights' setting), 0.0 ('auto'), -1.0 ('native': no rescaling) or a
    positive number of pixels."""
    if text is None:
        return None
    if text.strip().lower() == "auto":
        return 0.0
    if text.strip().lower() == "native":
        return -1.0
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < 10000):
        raise _Fatal(f"--diameter {text!r}: give a cell diameter in pixels (a number above 0), 'auto' or 'native'")
    return value


def _test_time_options(spec, args: argparse.Namespace):
    """``spec`` with ``--diameter`` and ``--tta`` applied."""
    diameter = _diameter(args.diameter)
    if diameter is not None:
        if diameter < 0:  # native: neither a given diameter nor the automatic estimate
            size = dataclasses.replace(spec.size, diameter=0.0, auto=False)
        else:
            size = dataclasses.replace(spec.size, diameter=diameter, auto=spec.size.auto or diameter == 0.0)
        spec = spec.replace(size=size)
    if args.tta is not None:
        spec = spec.replace(test_time=dataclasses.replace(spec.test_time, flips=args.tta))
    return spec


class _Fatal(Exception):
    """Nothing can be done: one message, exit code 2, no traceback."""


def _run(args: argparse.Namespace) -> int:
    from .batch import find_work, run_batch
    from .budget import MemoryBudget
    from .env import EnvError, shard_from_env
    from .inputs import InputError, resolve_inputs

    from .reports import ReportOptionError, reports_from_args

    try:
        budget = MemoryBudget(_memory_limit(args.max_memory))
        rank, world = shard_from_env()
        images = resolve_inputs(args.input)
        reports = reports_from_args(args, rank, world)
    except (EnvError, InputError, ReportOptionError, ValueError) as exc:
        raise _Fatal(str(exc)) from None
    problem = _check_output_folders(args)
    if problem:
        raise _Fatal(problem)
    overlay_dir = Path(args.overlay) if args.overlay else None
    work, errors, skipped = find_work(images, Path(args.output), skip_existing=args.skip_existing,
                                      rank=rank, world=world, overlay_dir=overlay_dir)
    if not (work or errors or skipped) and (world == 1 or not images):
        logger.warning("no images found in %s: nothing to segment (images are %s files; hidden files and "
                       "sub-folders are skipped)", " ".join(args.input), ", ".join(IMAGE_EXTENSIONS))
        return EXIT_FATAL
    if world > 1:
        logger.info("process %d of %d: %d image(s) in this share", rank, world, len(work))
    predictor = _load_predictor(args)
    spec = predictor.spec
    if args.postprocess:
        spec = spec.replace(postprocess=dataclasses.replace(spec.postprocess, method=args.postprocess))
    spec = _test_time_options(spec, args)

    start = time.perf_counter()
    with _progress(not args.quiet) as progress:
        summary = run_batch(work, predictor, spec, progress=progress, budget=budget,
                            on_labels=reports.add if reports else None)
    summary.failed.extend(errors)
    if reports:
        summary.failed.extend(reports.finish(summary.failed))
    summary.skipped += len(skipped)
    elapsed = time.perf_counter() - start
    for name, reason in summary.failed:
        logger.error("FAILED %s: %s", name, reason)
    overlays = f", {summary.overlays_only} overlay(s) made from existing labels" if summary.overlays_only else ""
    print(
        f"crossct: {summary.done} image(s) segmented, {len(summary.failed)} failed, {summary.skipped} skipped"
        f"{overlays}, {summary.cells} cells, {elapsed:.1f} s ({predictor.description})",
        file=sys.stderr,
    )
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


def _load_predictor(args: argparse.Namespace):
    from .predictors import load_predictor

    try:
        return load_predictor(args.weights, backend=args.backend, device=args.device)
    except Exception as exc:  # noqa: BLE001 - any failure to load weights is fatal: one line, exit 2
        logger.debug("traceback", exc_info=exc)
        message = str(exc) if isinstance(exc, (ValueError, RuntimeError, OSError)) else f"{type(exc).__name__}: {exc}"
        raise _Fatal(message) from None


if __name__ == "__main__":
    sys.exit(main())
