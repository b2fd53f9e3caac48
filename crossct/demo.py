"""``python -m crossct.demo``: segment built-in example images (no download, no GPU).

Writes scikit-image's ``ihc.png`` (immunohistochemistry, stained nuclei) and a synthetic
fluorescence-like field of touching nuclei (:mod:`crossct.synthetic`) into ``DEMO/inputs``, runs
the normal prediction on them into ``DEMO/outputs`` with outline previews in ``DEMO/overlays``,
and prints where everything went.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossct.demo", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="demo", help="folder for inputs/, outputs/ and overlays/")
    p.add_argument("-w", "--weights", default=None, help="weights folder (default: the shipped weights/)")
    args = p.parse_args(argv)

    import cv2

    from . import cli
    from .synthetic import synthetic_cells

    inputs = Path(args.out) / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_ihc_path(), inputs / "ihc.png")
    cv2.imwrite(str(inputs / "synthetic_nuclei.png"), synthetic_cells(*SYNTHETIC_SHAPE, seed=SYNTHETIC_SEED)[0])
    cli_args = ["-i", str(inputs), "-o", str(Path(args.out) / "outputs"), "--overlay", str(Path(args.out) / "overlays")]
    if args.weights:
        cli_args += ["-w", args.weights]
    code = cli.main(cli_args)
    print(f"labels in {Path(args.out) / 'outputs'}, previews in {Path(args.out) / 'overlays'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
