"""What one training step costs on this CPU: the U-Net, candidate Transformer partners, and a
cross-teaching step, in float32 and with bf16 autocast.

    python -m benchmarks.bench_partner [--steps 4] [--batch-size 8] [--crop 256] [--only NAME ...]

Each configuration runs :func:`crossct.train.loops.train_one_step` (forward, losses, backward,
AdamW) on fixed random crops, so the numbers are the networks' cost alone (data loading and
validation excluded, as they are the same for every partner).  One warm-up step, then the best of
``--steps`` (the least disturbed by anything else running).  It uses every core: take it with
nothing else running, or say what ran beside it.  ``x U-Net`` is relative to the float32 U-Net
step, the step the shipped weights were trained with.
"""

from __future__ import annotations

import argparse
import sys
import time

# name -> (networks of the step, bf16 autocast).  "swin-fs12" is the lite partner at full
# resolution (no 2x pooling), to show what the pooling saves.
CONFIGS = {
    "unet": (("unet",), False),
    "unet bf16": (("unet",), True),
    "swin (paper)": (("swin",), False),
    "swin (paper) bf16": (("swin",), True),
    "swin-fs12 bf16": (("swin-fs12",), True),
    "swin-lite": (("swin-lite",), False),
    "swin-lite bf16": (("swin-lite",), True),
    "cross-teach unet + swin (paper) bf16": (("unet", "swin"), True),
    "cross-teach unet + swin-lite bf16": (("unet", "swin-lite"), True),
}


def _spec(name: str):
    from crossct.config import SWIN_UNETR_LITE, ModelConfig, ModelSpec
    from crossct.train.loops import MODEL_SPECS

    if name == "swin-fs12":
        kwargs = {k: v for k, v in SWIN_UNETR_LITE.kwargs.items() if k != "input_pool"}
        return ModelSpec(model=ModelConfig("swin_unetr", kwargs))
    return ModelSpec(model=MODEL_SPECS[name])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=4, help="timed steps per configuration (the best is reported)")
    p.add_argument("--batch-size", type=int, default=8, help="labelled crops per step (and as many unlabelled)")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--only", choices=list(CONFIGS), action="append", help="configurations to run (default: all)")
    args = p.parse_args(argv)

    import torch

    from crossct.nets import count_parameters
    from crossct.train import loops
    from crossct.train.config import TrainConfig
    from crossct.train.losses import CrossTeachingLoss, SupervisedLoss

    torch.manual_seed(0)
    b, c = args.batch_size, args.crop
    batch = {"labelled": {"image": torch.rand(b, 3, c, c), "classes": torch.randint(0, 3, (b, c, c)),
                          "distances": torch.rand(b, 2, c, c)},
             "unlabelled": {"image": torch.rand(b, 3, c, c)}}
    cfg = TrainConfig(steps=1000, warmup_steps=1)
    dist = loops.Distributed()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {b} x {c}^2 "
          f"(+ {b} unlabelled for cross-teaching), best of {args.steps} steps after one warm-up\n")
    print("| configuration | parameters (M) | s / step | x U-Net |")
    print("|---|---|---|---|")
    reference = None
    for name, (networks, amp) in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        roles = [loops.Role.create(role, _spec(net), cfg, dist)
                 for role, net in zip(("cnn", "transformer") if len(networks) == 2 else (networks[0],), networks)]
        sup, ct = SupervisedLoss(), CrossTeachingLoss()
        loops.train_one_step(0, roles, batch, cfg, sup, ct, dist.device, amp=amp)  # warm-up
        times = []
        for step in range(1, args.steps + 1):
            t0 = time.perf_counter()
            loops.train_one_step(step, roles, batch, cfg, sup, ct, dist.device, amp=amp)
            times.append(time.perf_counter() - t0)
        best = min(times)
        if name == "unet":
            reference = best
        params = sum(count_parameters(r.network) for r in roles) / 1e6
        ratio = f"{best / reference:.2f}" if reference else ""
        print(f"| {name} | {params:.2f} | {best:.3f} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
