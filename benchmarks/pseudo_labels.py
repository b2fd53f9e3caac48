"""How often a network's pseudo-labels are right, by confidence: the share of pixels whose softmax
maximum reaches each threshold, and the class accuracy (background / interior / boundary, against
the labels' class map) on those pixels, over val images at their own scale.

    python -m benchmarks.pseudo_labels CKPT [CKPT ...] [--thresholds 0 0.8 0.9] [--max-images 40]

This is what cross-teaching's ``--pseudo-confidence`` trades: a higher threshold keeps fewer of the
teacher's pixels and, where the teacher is better calibrated, fewer of its mistakes.  CKPT: a
``best_<role>.pt`` or ``model.pt`` (anything ``crossct.export`` reads).  Runs the network on every
core; take it with nothing else running.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def pixel_table(probabilities: np.ndarray, classes: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """``[[kept pixels, correct kept pixels] per threshold]`` for one image: ``probabilities`` (3, H, W)
    softmax, ``classes`` (H, W) the true class map."""
    top = probabilities.max(axis=0)
    right = probabilities.argmax(axis=0) == classes
    return np.array([[np.count_nonzero(top >= t), np.count_nonzero(right & (top >= t))] for t in thresholds],
                    dtype=np.int64)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--data", default="", help="data folder or training pack (default: $CROSSCT_DATA or ../shared/data)")
    p.add_argument("--split", default="val")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.5, 0.7, 0.8, 0.9, 0.95])
    p.add_argument("--max-images", type=int, default=0, help="at most N images, spread over sources (0: all)")
    args = p.parse_args(argv)

    import torch

    from crossct.export import weights_from_checkpoint
    from crossct.nets import build_network
    from crossct.train.checkpoint import load_checkpoint
    from crossct.train.loops import ModulePredictor, load_val_items
    from crossct.train.records import data_records, default_data_dir
    from crossct.train.targets import class_map, remove_small_objects
    from crossct.whole_image import predict_outputs

    items = load_val_items(data_records(args.data or default_data_dir(), split=args.split), args.max_images)
    truths = [class_map(remove_small_objects(item["label"])) for item in items]  # as training sees them
    total = sum(t.size for t in truths)
    print(f"{len(items)} {args.split} images, {total / 1e6:.1f} M pixels\n")
    header = "| threshold | " + " | ".join(f"{c.parent.name}/{c.name}: kept, accuracy" for c in args.checkpoints) + " |"
    columns = []
    for path in args.checkpoints:
        weights, spec, _ = weights_from_checkpoint(load_checkpoint(path), path)
        network = build_network(spec.model)
        network.load_state_dict(weights)
        predictor = ModulePredictor(network, spec, torch.device("cpu"))
        counts = sum(pixel_table(predict_outputs(item["image"], predictor, spec)[:3], truth, args.thresholds)
                     for item, truth in zip(items, truths))
        columns.append([f"{kept / total:.3f}, {right / max(kept, 1):.4f}" for kept, right in counts])
    print(header)
    print("|" + "---|" * (len(args.checkpoints) + 1))
    for i, t in enumerate(args.thresholds):
        print(f"| {t:g} | " + " | ".join(col[i] for col in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
