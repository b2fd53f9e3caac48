"""Weight averaging: the mean of known weights, refusals of networks that do not match, and a file
that export and ``--init`` read."""

from __future__ import annotations

import pytest
import torch

from crossct.config import spec_for_crop
from crossct.nets import build_network
from crossct.train.average import average_weights, main
from crossct.train.checkpoint import save_checkpoint
from crossct.train.loops import MODEL_SPECS, load_weights


def test_the_mean_of_known_weights_is_exact_and_keeps_dtypes():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5], dtype=torch.float16), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor([1.5], dtype=torch.float16), "n": torch.tensor(7)}
    out = average_weights([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0]))
    assert out["b"].dtype == torch.float16 and out["b"].item() == 1.0
    assert out["n"].item() == 3  # counters are not averaged


def test_networks_with_other_parameters_or_shapes_are_refused():
    with pytest.raises(ValueError, match="other parameters"):
        average_weights([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])
    with pytest.raises(ValueError, match="shape"):
        average_weights([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])
    with pytest.raises(ValueError, match="nothing"):
        average_weights([])


def test_the_command_writes_a_checkpoint_that_loads_as_the_mean(tmp_path):
    spec = spec_for_crop(MODEL_SPECS["unet"], 256)
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = build_network(spec.model)
        paths.append(save_checkpoint(tmp_path / f"n{seed}.pt", {"model": net.state_dict(), "spec": spec.to_dict()}))
    assert main([str(p) for p in paths] + ["--out", str(tmp_path / "mean.pt")]) == 0
    loaded_spec, mean = load_weights(tmp_path / "mean.pt")
    assert loaded_spec.model == spec.model
    first, second = (load_weights(p)[1] for p in paths)
    key = next(k for k in mean if mean[k].is_floating_point())
    assert torch.allclose(mean[key], (first[key] + second[key]) / 2)
    assert not torch.allclose(mean[key], first[key])


def test_a_missing_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing.pt"), str(tmp_path / "also-missing.pt"), "--out", str(tmp_path / "mean.pt")])
    assert exit_info.value.code == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
    assert not (tmp_path / "mean.pt").exists()
