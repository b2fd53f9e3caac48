"""Checkpoints: written atomically, always read back with ``weights_only=True``.

Two kinds:

- ``last.pt`` - the whole training state (every network's weights, optimiser and scheduler, the
  step, the settings, RNG state, best scores, history), enough for ``--resume`` to continue a
  killed run to the same result;
- ``best_<role>.pt`` - a slim ``{"model", "spec", ...}`` file per network, what export, the
  PyTorch predictor and cross-teaching load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "FORMAT"]

FORMAT = "crossct-train-1"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only, no code)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except Exception as exc:
        raise ValueError(f"{path}: not a loadable weights-only checkpoint ({exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path}: checkpoint is a {type(state).__name__}, expected a dict")
    return state
