"""The paper's losses on hand-made tensors, and the consistency weight lambda(t)."""

import math

import pytest
import torch

from crossct.train.losses import CrossTeachingLoss, SupervisedLoss, consistency_weight


def _outputs_from(classes: torch.Tensor, distances: torch.Tensor, confidence: float = 20.0) -> torch.Tensor:
    """(B,5,H,W) network outputs whose argmax is ``classes`` and whose distance channels are ``distances``."""
    logits = torch.nn.functional.one_hot(classes, 3).permute(0, 3, 1, 2).float() * confidence
    return torch.cat([logits, distances], dim=1)


def test_lambda_follows_the_gaussian_warm_up():
    assert consistency_weight(0, 1000) == pytest.approx(0.1 * math.exp(-5))
    assert consistency_weight(500, 1000) == pytest.approx(0.1 * math.exp(-5 * 0.25))
    assert consistency_weight(1000, 1000) == pytest.approx(0.1)
    assert consistency_weight(5000, 1000) == pytest.approx(0.1)  # clipped past the end
    assert consistency_weight(1000, 1000, maximum=0.3) == pytest.approx(0.3)


def test_supervised_loss_is_near_zero_for_a_perfect_prediction_and_large_for_a_wrong_one():
    classes = torch.zeros(2, 8, 8, dtype=torch.long)
    classes[:, 2:6, 2:6] = 1
    classes[:, 2, 2:6] = 2
    distances = torch.rand(2, 2, 8, 8)
    loss_fn = SupervisedLoss()
    perfect, parts = loss_fn(_outputs_from(classes, distances), classes, distances)
    assert parts["mse"] == pytest.approx(0.0, abs=1e-7)
    assert float(perfect) < 0.01
    wrong_classes = (classes + 1) % 3
    wrong, parts = loss_fn(_outputs_from(wrong_classes, distances + 0.5), classes, distances)
    assert parts["mse"] == pytest.approx(0.25, rel=1e-5)
    assert float(parts["dice_ce"]) > 5  # CE of a confidently wrong class ~ 20


def test_supervised_mse_is_the_mean_squared_error_of_the_distance_channels():
    classes = torch.zeros(1, 4, 4, dtype=torch.long)
    target = torch.zeros(1, 2, 4, 4)
    predicted = torch.zeros(1, 2, 4, 4)
    predicted[0, 0, 0, 0] = 4.0  # one pixel off by 4 among 32 values -> 16 / 32
    _, parts = SupervisedLoss()(_outputs_from(classes, predicted), classes, target)
    assert float(parts["mse"]) == pytest.approx(0.5)


def test_cross_teaching_pseudo_labels_are_detached_argmax_and_mse_couples_both_networks():
    classes = torch.randint(0, 3, (2, 8, 8))
    d = torch.rand(2, 2, 8, 8)
    cnn = _outputs_from(classes, d).requires_grad_(True)
    transformer = _outputs_from(classes, d + 0.1).requires_grad_(True)
    loss, parts = CrossTeachingLoss()(cnn, transformer)
    # Agreeing classes: both DiceCE terms tiny; distance maps differ by 0.1 everywhere.
    assert float(parts["ctl_cnn"]) < 0.01 and float(parts["ctl_transformer"]) < 0.01
    assert float(parts["ctl_mse"]) == pytest.approx(0.01, rel=1e-4)
    loss.backward()
    # The MSE term pulls the two distance maps towards each other, with opposite gradients.
    assert torch.allclose(cnn.grad[:, 3:], -transformer.grad[:, 3:])
    assert cnn.grad[:, 3:].abs().sum() > 0


def test_cross_teaching_disagreement_is_penalised_both_ways():
    classes = torch.zeros(1, 8, 8, dtype=torch.long)
    d = torch.zeros(1, 2, 8, 8)
    cnn = _outputs_from(classes, d)
    transformer = _outputs_from(classes + 1, d)
    _, parts = CrossTeachingLoss()(cnn, transformer)
    assert float(parts["ctl_cnn"]) > 5 and float(parts["ctl_transformer"]) > 5


def test_confidence_masking_keeps_every_pixel_at_a_threshold_nothing_fails_and_then_is_the_papers_loss():
    torch.manual_seed(0)
    cnn, transformer = torch.randn(2, 5, 16, 16), torch.randn(2, 5, 16, 16)
    paper, paper_parts = CrossTeachingLoss()(cnn, transformer)
    masked, parts = CrossTeachingLoss(confidence=1e-6)(cnn, transformer)
    assert float(masked) == pytest.approx(float(paper), rel=1e-6)
    assert float(parts["ctl_cnn"]) == pytest.approx(float(paper_parts["ctl_cnn"]), rel=1e-6)
    assert float(parts["ctl_kept_cnn"]) == 1.0 and float(parts["ctl_kept_transformer"]) == 1.0
    assert "ctl_kept_cnn" not in paper_parts  # the paper's loss logs what it always did


def test_unconfident_teacher_pixels_do_not_teach():
    classes = torch.zeros(1, 8, 8, dtype=torch.long)
    classes[:, :, 4:] = 1
    d = torch.zeros(1, 2, 8, 8)
    teacher = _outputs_from(classes, d)          # softmax max ~1 everywhere
    teacher[:, :3, :2] = torch.tensor([0.2, 0.0, 0.1]).view(1, 3, 1, 1)  # rows 0-1: max ~0.36, class 0
    student = _outputs_from(classes, d).requires_grad_(True)
    with torch.no_grad():
        student[:, :3, :2] = _outputs_from(torch.full((1, 2, 8), 2), d[:, :, :2])[:, :3]  # disagrees there
    loss_fn = CrossTeachingLoss(confidence=0.9)
    _, parts = loss_fn(student, teacher)
    assert float(parts["ctl_kept_cnn"]) == pytest.approx(48 / 64)   # rows 2-7 of 8
    assert float(parts["ctl_cnn"]) < 0.01                           # only the agreeing pixels are scored
    assert float(CrossTeachingLoss()(student, teacher)[1]["ctl_cnn"]) > 1  # the paper's loss counts them
    ctl_cnn, _ = loss_fn._taught_by(student, teacher)
    ctl_cnn.backward()
    assert student.grad[:, :3, :2].abs().max() == 0     # no gradient from the masked rows
    assert student.grad[:, :3, 2:].abs().max() > 0


def test_confidence_must_be_a_probability_below_one():
    with pytest.raises(ValueError, match="confidence"):
        CrossTeachingLoss(confidence=1.0)
