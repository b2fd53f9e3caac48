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

from .helpformat import DefaultsHelpFormatter


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossct.demo", description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--out", default="demo", help="folder for inputs/, outputs/ and overlays/")
    p.add_argument("-w", "--weights", default=None, help="weights folder (default: the shipped weights/)")
    args = p.parse_args(argv)

    import cv2
    import skimage

    from . import cli

    data_dir = Path(skimage.__file__).parent / "data"
    inputs = Path(args.out) / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    from .synthetic import synthetic_cells

    shutil.copyfile(data_dir / "ihc.png", inputs / "ihc.png")
    cv2.imwrite(str(inputs / "synthetic_nuclei.png"), synthetic_cells(384, 512, seed=7)[0])
    cli_args = ["-i", str(inputs), "-o", str(Path(args.out) / "outputs"), "--overlay", str(Path(args.out) / "overlays")]
    if args.weights:
        cli_args += ["-w", args.weights]
    code = cli.main(cli_args)
    print(f"labels in {Path(args.out) / 'outputs'}, previews in {Path(args.out) / 'overlays'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
