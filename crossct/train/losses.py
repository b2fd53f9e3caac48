"""The paper's losses (equations 3-12).

Network outputs are (B, 5, H, W): channels 0-2 are the logits of background / interior / boundary
(softmax over those three only), channels 3-4 the cell-distance and neighbour-distance maps.

- supervised, per network (eq. 4-5): DiceCE(3 classes, ground truth) + MSE(distance maps, ground truth)
- cross-teaching (eq. 8-11): DiceCE(CNN classes, Transformer's argmax) + DiceCE(Transformer classes,
  CNN's argmax) + MSE(CNN distance maps, Transformer distance maps); pseudo-labels are detached.
  Optionally (``confidence`` > 0, not in the paper) only the pixels where the teaching network's
  softmax reaches that probability teach the other (FixMatch-style), so that a partner weaker than
  its student passes on fewer of its mistakes
- total (eq. 12): supervised + lambda(t) * cross-teaching, lambda(t) = 0.1 exp(-5 (1 - t/T)^2)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, MaskedDiceLoss

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
    ``confidence`` > 0: a pixel teaches only where the teacher's softmax maximum is at least that
    (the share kept is logged as ``ctl_kept_cnn`` / ``ctl_kept_transformer``); 0 is the paper's loss.
    """

    def __init__(self, mse_weight: float = 1.0, confidence: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= confidence < 1.0:
            raise ValueError(f"pseudo-label confidence must be in [0, 1), got {confidence}")
        self.dice_ce = _dice_ce()
        # The target is one-hot here: MaskedLoss multiplies the target by the mask, and an index map
        # masked to 0 would read as background wherever it is masked.
        self.masked_dice = MaskedDiceLoss(softmax=True)
        self.mse_weight = mse_weight
        self.confidence = confidence

    def _taught_by(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """DiceCE of ``student``'s classes against ``teacher``'s argmax, and the share of pixels kept."""
        teacher = teacher[:, :N_CLASSES].detach()
        pseudo = teacher.argmax(dim=1, keepdim=True)
        if self.confidence <= 0:
            return self.dice_ce(student[:, :N_CLASSES], pseudo), None
        keep = (torch.softmax(teacher, dim=1).amax(dim=1, keepdim=True) >= self.confidence).to(student.dtype)
        logits = student[:, :N_CLASSES]
        target = F.one_hot(pseudo[:, 0], N_CLASSES).permute(0, 3, 1, 2).to(student.dtype)
        dice = self.masked_dice(logits, target, mask=keep)
        ce = (F.cross_entropy(logits, pseudo[:, 0], reduction="none") * keep[:, 0]).sum() / keep.sum().clamp(min=1.0)
        return dice + ce, keep.mean()

    def forward(self, cnn: torch.Tensor, transformer: torch.Tensor):
        ctl_cnn, kept_cnn = self._taught_by(cnn, transformer)
        ctl_transformer, kept_transformer = self._taught_by(transformer, cnn)
        regression = F.mse_loss(cnn[:, N_CLASSES:], transformer[:, N_CLASSES:])
        total = ctl_cnn + ctl_transformer + self.mse_weight * regression
        parts = {
            "ctl_cnn": ctl_cnn.detach(),
            "ctl_transformer": ctl_transformer.detach(),
            "ctl_mse": regression.detach(),
        }
        if kept_cnn is not None:
            parts.update(ctl_kept_cnn=kept_cnn.detach(), ctl_kept_transformer=kept_transformer.detach())
        return total, parts
