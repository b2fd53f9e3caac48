"""``python -m crossct.train supervised|cross-teach [flags]`` (or ``crossct-train``).

Examples::

    python -m crossct.train supervised --model unet --run-dir runs/unet --steps 6000
    python -m crossct.train supervised --model swin --run-dir runs/swin
    python -m crossct.train supervised --model resunet --run-dir runs/resunet   # also: --model unetr
    python -m crossct.train cross-teach --cnn runs/unet/best_unet.pt --transformer runs/swin/best_swin.pt \\
        --run-dir runs/crossct
    python -m crossct.train supervised --run-dir runs/unet --resume        # continue a stopped run
    torchrun --nproc_per_node 4 -m crossct.train supervised ...            # several GPUs / processes

Settings come from defaults < ``--config FILE.json`` < flags; all are saved in RUN_DIR/config.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from .config import add_config_arguments

    p = argparse.ArgumentParser(prog="python -m crossct.train", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("full", add_help=False, help="the whole protocol (both networks, cross-teaching, export, tuning) "
                   "inside one time budget (python -m crossct.train full --help)")
    sub.add_parser("average", add_help=False, help="the mean of several networks' weights, for export or --init "
                   "(python -m crossct.train average --help)")
    sub.add_parser("status", add_help=False, help="where training runs stand: steps done and left, best validation "
                   "(python -m crossct.train status RUN ...)")
    sub.add_parser("pack", add_help=False, help="write every image and label training needs into one file "
                   "(python -m crossct.train pack --help)")
    for name, text in (("supervised", "supervised pre-training of one network (--model unet|resunet|unetr|swin)"),
                       ("cross-teach", "cross-teaching of a CNN and a Transformer from supervised checkpoints")):
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("--resume", action="store_true", help="continue RUN_DIR/last.pt")
        sp.add_argument("-v", "--verbose", action="store_true")
        add_config_arguments(sp, skip=("mode",), mode=name)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pack"]:
        from .pack import pack_main

        return pack_main(argv[1:])
    if argv[:1] == ["average"]:
        from .average import main as average_main

        return average_main(argv[1:])
    if argv[:1] == ["status"]:
        from .status import main as status_main

        return status_main(argv[1:])
    if argv[:1] == ["full"]:
        from .protocol import main as full_main

        return full_main(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from .config import config_from_args
    from .loops import train

    cfg = config_from_args(args, mode=args.command)
    # On --resume, only the flags actually given change the saved run's settings.
    given = {f: v for f, v in vars(args).items() if f in cfg.to_dict() and v is not None and f != "mode"}
    if args.config:
        given = {**json.loads(Path(args.config).read_text()), **given}
    result = train(cfg, resume=args.resume, overrides=given if args.resume else None)
    logging.getLogger("crossct.train").info("done: %s", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
