"""``python -m crossct.demo``: segment example images that ship with scikit-image (no download, no GPU).

Copies scikit-image's ``cell.png`` (phase contrast) and a crop of ``ihc.png`` (stained histology)
into ``DEMO/inputs``, runs the normal prediction on them into ``DEMO/outputs`` with outline
previews in ``DEMO/overlays``, and prints where everything went.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Sequence

EXAMPLES = {"cell.png": None, "ihc.png": (slice(0, 256), slice(0, 256))}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossct.demo", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="demo", help="folder for inputs/, outputs/ and overlays/")
    p.add_argument("-w", "--weights", default=None, help="weights folder (default: the shipped weights/)")
    args = p.parse_args(argv)

    import cv2
    import skimage

    from . import cli

    data_dir = Path(skimage.__file__).parent / "data"
    inputs = Path(args.out) / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for name, crop in EXAMPLES.items():
        if crop is None:
            shutil.copyfile(data_dir / name, inputs / name)
        else:
            image = cv2.imread(str(data_dir / name), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(inputs / name), image[crop])
    cli_args = ["-i", str(inputs), "-o", str(Path(args.out) / "outputs"), "--overlay", str(Path(args.out) / "overlays")]
    if args.weights:
        cli_args += ["-w", args.weights]
    code = cli.main(cli_args)
    print(f"labels in {Path(args.out) / 'outputs'}, previews in {Path(args.out) / 'overlays'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
