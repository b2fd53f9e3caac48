"""``predict.py`` / ``crossct-predict``: a folder of images in, one ``<stem>_label.tiff`` per image out.

Arguments are parsed before anything heavy is imported, so ``--help`` is instant.
Exit codes: 0 every image written, 1 some images failed (the rest were written), 2 nothing could
be done (bad arguments, missing input folder, unwritable output folder, no weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]

logger = logging.getLogger("crossct.predict")

EXIT_OK, EXIT_SOME_FAILED, EXIT_FATAL = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predict.py",
        description=(
            "Segment every image in a folder (png, bmp, jpg, tif; gray, RGB, 8/16-bit, float) and write "
            "one instance-label TIFF per image: <stem>_label.tiff, 0 = background, 1..N = cells, "
            "uint16 (uint32 above 65535 cells), zlib-compressed."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-i", "--input", default="/inputs", help="folder of images (sub-folders and hidden files are skipped)")
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
    p.add_argument("--overlay", metavar="DIR", default=None, help="also write PNG previews with cell outlines here")
    p.add_argument("--skip-existing", action="store_true", help="skip images whose label file already exists (resume)")
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


def _check_folders(args: argparse.Namespace) -> str | None:
    """A message when the input or output folder is unusable, else None."""
    inp, out = Path(args.input), Path(args.output)
    if not inp.exists():
        return f"input folder {inp} does not exist"
    if not inp.is_dir():
        return f"input {inp} is not a folder"
    folders = [out] + ([Path(args.overlay)] if args.overlay else [])
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".crossct-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            return f"output folder {folder} is not writable ({exc.strerror or exc})"
    return None


def _progress(items, enabled: bool):
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(items, unit="img", dynamic_ncols=True)
    return items


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.quiet, args.verbose)
    if args.zarr is not None:
        from .zarr_predict import predict_zarr

        return predict_zarr(args)
    problem = _check_folders(args)
    if problem:
        logger.error(problem)
        return EXIT_FATAL

    from .batch import find_work, run_batch, shard_from_env
    from .predictors import WeightsError, load_predictor

    rank, world = shard_from_env()
    work, errors, skipped = find_work(Path(args.input), Path(args.output), skip_existing=args.skip_existing,
                                      rank=rank, world=world)
    if world > 1:
        logger.info("process %d of %d: %d image(s) in this share", rank, world, len(work))
    try:
        predictor = load_predictor(args.weights, backend=args.backend, device=args.device)
    except (WeightsError, ValueError) as exc:
        logger.error("%s", exc)
        return EXIT_FATAL
    spec = predictor.spec
    if args.postprocess:
        spec = spec.replace(postprocess=dataclasses.replace(spec.postprocess, method=args.postprocess))

    start = time.perf_counter()
    summary = run_batch(work, predictor, spec, overlay_dir=Path(args.overlay) if args.overlay else None,
                        progress=lambda items: _progress(items, not args.quiet))
    summary.failed.extend(errors)
    summary.skipped += len(skipped)
    elapsed = time.perf_counter() - start
    for name, reason in summary.failed:
        logger.error("FAILED %s: %s", name, reason)
    print(
        f"crossct: {summary.done} image(s) segmented, {len(summary.failed)} failed, {summary.skipped} skipped, "
        f"{summary.cells} cells, {elapsed:.1f} s ({predictor.description})",
        file=sys.stderr,
    )
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
