"""Training throughput (crops per second) of the U-Net and the Swin-UNETR, supervised and cross-teaching.

    python -m benchmarks.bench_train [--steps 6] [--batch-size 8] [--crop 256]

Runs :func:`crossct.train.loops.train_one_step` on synthetic crops (data loading included, as in a
real run) after one warm-up step, and prints a table.  Cross-teaching counts the labelled and the
unlabelled crops of a step.  Take it on an idle machine: it uses every core.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--only", choices=["unet", "swin", "cross-teach"], action="append")
    args = p.parse_args(argv)

    import torch

    from crossct.synthetic import write_synthetic_dataset
    from crossct.train import loops
    from crossct.train.config import TrainConfig
    from crossct.train.losses import CrossTeachingLoss, SupervisedLoss
    from crossct.train.checkpoint import save_checkpoint
    from crossct.config import ModelSpec, SWIN_UNETR_PAPER, UNET_PAPER
    from crossct.nets import build_network

    tmp = Path(tempfile.mkdtemp(prefix="crossct-bench-train-"))
    images, labels = write_synthetic_dataset(tmp / "data", n_images=8, size=(384, 384), seed=0)
    for name, model in (("unet", UNET_PAPER), ("swin", SWIN_UNETR_PAPER)):
        save_checkpoint(tmp / f"{name}.pt", {"model": build_network(model).state_dict(), "spec": ModelSpec(model=model).to_dict()})
    common = dict(images_dir=str(images), labels_dir=str(labels), unlabelled=(str(images),), cache_dir=str(tmp / "cache"),
                  run_dir=str(tmp / "run"), crop=args.crop, batch_size=args.batch_size,
                  unlabelled_batch_size=args.batch_size, steps=1000, warmup_steps=1)
    configs = {
        "unet": TrainConfig.from_dict({**common, "model": "unet"}),
        "swin": TrainConfig.from_dict({**common, "model": "swin"}),
        "cross-teach": TrainConfig.from_dict({**common, "mode": "cross-teach", "cnn": str(tmp / "unet.pt"),
                                              "transformer": str(tmp / "swin.pt")}),
    }
    dist = loops.Distributed()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size} x {args.crop}^2, "
          f"{args.steps} timed steps\n")
    print("| configuration | s / step | crops / s |")
    print("|---|---|---|")
    for name, cfg in configs.items():
        if args.only and name not in args.only:
            continue
        torch.manual_seed(0)
        roles = loops._roles_for(cfg, dist)
        batches, _ = loops._build_data(cfg, dist)
        sup, ct = SupervisedLoss(), CrossTeachingLoss()
        loops.train_one_step(0, roles, batches, cfg, sup, ct, dist.device)  # warm-up
        t0 = time.perf_counter()
        for step in range(1, args.steps + 1):
            loops.train_one_step(step, roles, batches, cfg, sup, ct, dist.device)
        per_step = (time.perf_counter() - t0) / args.steps
        crops = args.batch_size * (2 if name == "cross-teach" else 1)
        print(f"| {name} | {per_step:.2f} | {crops / per_step:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
