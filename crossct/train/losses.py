"""The paper's losses (equations 3-12).

Network outputs are (B, 5, H, W): channels 0-2 are the logits of background / interior / boundary
(softmax over those three only), channels 3-4 the cell-distance and neighbour-distance maps.

- supervised, per network (eq. 4-5): DiceCE(3 classes, ground truth) + MSE(distance maps, ground truth)
- cross-teaching (eq. 8-11): DiceCE(CNN classes, Transformer's argmax) + DiceCE(Transformer classes,
  CNN's argmax) + MSE(CNN distance maps, Transformer distance maps); pseudo-labels are detached
- total (eq. 12): supervised + lambda(t) * cross-teaching, lambda(t) = 0.1 exp(-5 (1 - t/T)^2)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

__all__ = ["SupervisedLoss", "CrossTeachingLoss", "consistency_weight", "N_CLASSES"]

N_CLASSES = 3


def consistency_weight(step: float, total_steps: float, maximum: float = 0.1) -> float:
    """Gaussian warm-up of the cross-teaching weight: ``maximum * exp(-5 (1 - t/T)^2)``, t clipped to [0, T]."""
    if total_steps <= 0:
        return maximum
    t = min(max(step / total_steps, 0.0), 1.0)
    return maximum * math.exp(-5.0 * (1.0 - t) ** 2)


def _dice_ce() -> DiceCELoss:
    # Softmax over the 3 class channels only; the target is an index map (B, 1, H, W).
    return DiceCELoss(to_onehot_y=True, softmax=True)


class SupervisedLoss(torch.nn.Module):
    """DiceCE on the 3 classes + MSE on the 2 distance maps, against ground truth.

    ``forward(outputs (B,5,H,W), classes (B,H,W) int64, distances (B,2,H,W) float) ->
    (total, {"dice_ce": ..., "mse": ...})``.
    """

    def __init__(self, mse_weight: float = 1.0) -> None:
        super().__init__()
        self.dice_ce = _dice_ce()
        self.mse_weight = mse_weight

    def forward(self, outputs: torch.Tensor, classes: torch.Tensor, distances: torch.Tensor):
        dice_ce = self.dice_ce(outputs[:, :N_CLASSES], classes.unsqueeze(1))
        mse = F.mse_loss(outputs[:, N_CLASSES:], distances)
        return dice_ce + self.mse_weight * mse, {"dice_ce": dice_ce.detach(), "mse": mse.detach()}


class CrossTeachingLoss(torch.nn.Module):
    """Each network's classes supervised by the other's detached argmax, plus MSE between their distance maps.

    ``forward(cnn_outputs, transformer_outputs) -> (total, parts)``; both (B, 5, H, W).
    """

    def __init__(self, mse_weight: float = 1.0) -> None:
        super().__init__()
        self.dice_ce = _dice_ce()
        self.mse_weight = mse_weight

    def forward(self, cnn: torch.Tensor, transformer: torch.Tensor):
        pseudo_from_t = transformer[:, :N_CLASSES].detach().argmax(dim=1, keepdim=True)
        pseudo_from_c = cnn[:, :N_CLASSES].detach().argmax(dim=1, keepdim=True)
        ctl_cnn = self.dice_ce(cnn[:, :N_CLASSES], pseudo_from_t)
        ctl_transformer = self.dice_ce(transformer[:, :N_CLASSES], pseudo_from_c)
        regression = F.mse_loss(cnn[:, N_CLASSES:], transformer[:, N_CLASSES:])
        total = ctl_cnn + ctl_transformer + self.mse_weight * regression
        return total, {
            "ctl_cnn": ctl_cnn.detach(),
            "ctl_transformer": ctl_transformer.detach(),
            "ctl_mse": regression.detach(),
        }
