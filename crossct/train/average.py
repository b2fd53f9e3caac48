"""``python -m crossct.train average A B [...] --out FILE.pt``: the mean of several networks' weights.

Weights of checkpoints from one run, or from a run and its fine-tune, lie in one basin: their mean
("model soup", Wortsman et al. 2022) often scores at least as well as the best of them, for no cost at
inference.  The inputs are anything :func:`crossct.train.loops.load_weights` reads (``best_*.pt``,
``last.pt`` with one network, a weights folder); they must be the same architecture.  The output is a
slim checkpoint (``{"model", "spec", "averaged"}``) that ``python -m crossct.export`` and ``--init`` take.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["average_weights", "main"]


def average_weights(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of state dicts with the same keys and shapes (computed in float64, stored in
    each tensor's own dtype); integer tensors (counters) are taken from the first.

    PyTorch's ``torch.optim.swa_utils.AveragedModel`` keeps a running mean of a live module during
    training; here the inputs are finished checkpoints on disk, so plain state dicts suffice.
    """
    if not states:
        raise ValueError("nothing to average")
    keys = list(states[0])
    for i, state in enumerate(states[1:], 2):
        if list(state) != keys:
            missing, extra = set(keys) - set(state), set(state) - set(keys)
            raise ValueError(f"network {i} has other parameters than network 1 "
                             f"(missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]})")
    out = {}
    for key in keys:
        first = states[0][key]
        for i, state in enumerate(states[1:], 2):
            if state[key].shape != first.shape:
                raise ValueError(f"{key}: shape {tuple(state[key].shape)} in network {i}, "
                                 f"{tuple(first.shape)} in network 1")
        if first.is_floating_point():
            out[key] = (sum(s[key].double() for s in states) / len(states)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import save_checkpoint
    from .loops import load_weights

    p = argparse.ArgumentParser(prog="python -m crossct.train average", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", type=Path, help="checkpoints or weights folders (two or more)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (.pt)")
    args = p.parse_args(argv)
    if len(args.inputs) < 2:
        p.error("give two or more networks to average")
    try:
        loaded = [load_weights(path) for path in args.inputs]
    except (FileNotFoundError, ValueError) as exc:
        p.error(str(exc))
    spec = loaded[0][0]
    for path, (other, _) in zip(args.inputs[1:], loaded[1:]):
        if other.model != spec.model:
            p.error(f"{path}: a {other.model.arch} with {other.model.kwargs}, "
                    f"not the {spec.model.arch} of {args.inputs[0]}")
    try:
        state = average_weights([weights for _, weights in loaded])
    except ValueError as exc:
        p.error(str(exc))
    save_checkpoint(args.out, {"model": state, "spec": spec.to_dict(), "averaged": [str(x) for x in args.inputs]})
    print(f"wrote {args.out}: mean of {len(loaded)} networks")
    return 0
