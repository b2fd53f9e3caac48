#!/usr/bin/env python3
"""Segment a folder of microscopy images: ``python predict.py -i INPUT_DIR -o OUTPUT_DIR``.

CLI only; everything else lives in the ``crossct`` package (see crossct/cli.py).
"""

import sys

from crossct.cli import main

if __name__ == "__main__":
    sys.exit(main())
