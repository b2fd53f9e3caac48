"""``python -m crossct.demo``: segment built-in example images (no download, no GPU).

Writes scikit-image's ``ihc.png`` (immunohistochemistry, stained nuclei) and a synthetic
fluorescence-like field of touching nuclei (:mod:`crossct.synthetic`) into ``DEMO/inputs``, runs
the normal prediction on them into ``DEMO/outputs`` with outline previews in ``DEMO/overlays``,
and prints where everything went. ``--images-only`` writes the example images and stops (sample
inputs for checking a container: ``scripts/check_submission.sh``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from .helpformat import DefaultsHelpFormatter

__all__ = ["DEMO_IMAGES", "demo_image", "main"]

DEMO_IMAGES = ("ihc", "synthetic_nuclei")
SYNTHETIC_SHAPE, SYNTHETIC_SEED = (384, 512), 7


def _ihc_path() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / "ihc.png"


def demo_image(name: str) -> np.ndarray:
    """One of the demo's images, as the CLI reads it from the demo's inputs/ folder:
    ``ihc`` (512, 512, 3) uint8 RGB or ``synthetic_nuclei`` (384, 512) uint8."""
    if name == "ihc":
        from .io import read_image

        return read_image(_ihc_path())
    if name == "synthetic_nuclei":
        from .synthetic import synthetic_cells

        return synthetic_cells(*SYNTHETIC_SHAPE, seed=SYNTHETIC_SEED)[0]
    raise ValueError(f"no demo image {name!r}; choose one of {list(DEMO_IMAGES)}")

def write_example_images(folder: Path) -> list[Path]:
    """Write the demo's inputs into ``folder``: scikit-image's ``ihc.png`` (512x512 RGB) and a
    synthetic field of touching nuclei ``synthetic_nuclei.png`` (384x512 gray)."""
    import cv2

    from .synthetic import synthetic_cells

    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "ihc.png", folder / "synthetic_nuclei.png"]
    shutil.copyfile(_ihc_path(), written[0])
    cv2.imwrite(str(written[1]), synthetic_cells(*SYNTHETIC_SHAPE, seed=SYNTHETIC_SEED)[0])
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossct.demo", description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--out", default="demo", help="folder for inputs/, outputs/ and overlays/")
    p.add_argument("-w", "--weights", default=None, help="weights folder (default: the shipped weights/)")
    p.add_argument("--images-only", action="store_true", help="write the example images to OUT/inputs and stop")
    args = p.parse_args(argv)

    inputs = Path(args.out) / "inputs"
    write_example_images(inputs)
    if args.images_only:
        print(f"example images in {inputs}")
        return 0

    from . import cli

    cli_args = ["-i", str(inputs), "-o", str(Path(args.out) / "outputs"), "--overlay", str(Path(args.out) / "overlays")]
    if args.weights:
        cli_args += ["-w", args.weights]
    code = cli.main(cli_args)
    print(f"labels in {Path(args.out) / 'outputs'}, previews in {Path(args.out) / 'overlays'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
