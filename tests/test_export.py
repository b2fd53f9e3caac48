"""crossct.export: any checkpoint of a run exports (best_*.pt or last.pt, by role), shipped weights are
never overwritten by accident, and a replaced folder never keeps a model card describing another model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_python

from crossct.export import main, tiny_spec
from crossct.nets import build_network
from crossct.train.checkpoint import save_checkpoint
from crossct.train.config import TrainConfig


def network_state(seed: int) -> dict:
    torch.manual_seed(seed)
    return build_network(tiny_spec().model).state_dict()


@pytest.fixture
def last_pt(tmp_path) -> Path:
    """A run's last.pt with two roles, written by the training loop's own state builder."""
    from crossct.train.loops import _training_state

    spec = tiny_spec()
    roles = [SimpleNamespace(name=name, state=lambda seed=seed: {
        "model": network_state(seed), "optimizer": {}, "scheduler": {}, "spec": spec.to_dict(),
        "best_score": 0.5, "best_step": 3}) for name, seed in (("cnn", 1), ("transformer", 2))]
    return save_checkpoint(tmp_path / "run" / "last.pt", _training_state(7, roles, TrainConfig(), [], "abc"))


def exported_weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", weights_only=True)["state_dict"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_last_pt_exports_the_role_asked_for(last_pt, tmp_path, capsys):
    assert main([str(last_pt), str(tmp_path / "first")]) == 0  # default: the first role
    assert same_weights(exported_weights(tmp_path / "first"), network_state(1))
    assert main([str(last_pt), str(tmp_path / "tr"), "--role", "transformer"]) == 0
    assert same_weights(exported_weights(tmp_path / "tr"), network_state(2))
    assert main([str(last_pt), str(tmp_path / "nope"), "--role", "swin"]) == 2
    err = capsys.readouterr().err
    assert f"{last_pt}: no role 'swin' in this training state; it holds ['cnn', 'transformer']" in err
    assert not (tmp_path / "nope" / "model.json").exists()


def test_existing_weights_refused_without_force_and_card_moved_aside_with_it(tiny_weights, last_pt, tmp_path, capsys):
    folder = tmp_path / "weights"
    shutil.copytree(tiny_weights, folder)
    (folder / "MODEL_CARD.md").write_text("# The shipped model\nval F1 0.83\n")
    (folder / "training").mkdir()
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

    assert main([str(last_pt), str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"{folder} already holds weights (model.json, model.onnx, model.pt)" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before

    assert main([str(last_pt), str(folder), "--force"]) == 0
    assert same_weights(exported_weights(folder), network_state(1))
    assert json.loads((folder / "model.json").read_text())["checksums"] != json.loads(before["model.json"])["checksums"]
    assert (folder / "MODEL_CARD.previous.md").read_bytes() == before["MODEL_CARD.md"]
    card = (folder / "MODEL_CARD.md").read_text()
    assert str(last_pt) in card and "role cnn" in card and "step 7" in card
    assert "`MODEL_CARD.previous.md` describes; that card does not describe these, nor do the other files here (training)" in card
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_failed_export_leaves_the_old_weights(tiny_weights, tmp_path, monkeypatch, capsys):
    import crossct.export as export

    folder = tmp_path / "weights"
    shutil.copytree(tiny_weights, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(export, "check_onnx_matches_torch", lambda *a, **k: 1.0)  # ONNX and PyTorch disagree
    assert main(["--tiny-untrained", str(folder), "--force"]) == 2
    assert "differs from PyTorch" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_not_a_checkpoint_exit_2_without_traceback(tmp_path):
    torch.save({"weights": {}}, tmp_path / "x.pt")
    result = run_python(["-m", "crossct.export", str(tmp_path / "x.pt"), str(tmp_path / "out")], timeout=120)
    assert result.returncode == 2
    assert f"{tmp_path / 'x.pt'}: not a crossct checkpoint" in result.stderr and "Traceback" not in result.stderr
    result = run_python(["-m", "crossct.export", str(tmp_path / "absent.pt"), str(tmp_path / "out")], timeout=120)
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_weights_trained_from_other_weights_do_not_inherit_their_training_record(tmp_path):
    # A run started from shipped weights keeps their spec, metadata included; exported outside its
    # run folder (no config.json to read), the new weights must not claim the old ones' training.
    from crossct.export import export_weights

    old = {"training": {"mode": "crossct", "step": 373}, "postprocess_tuning": {"score_after": 0.77},
           "source_checkpoint": "best_cnn.pt", "note": "kept"}
    spec = tiny_spec().replace(metadata=old)
    save_checkpoint(tmp_path / "elsewhere" / "best_unet.pt", {"model": network_state(3), "spec": spec.to_dict(), "step": 5})
    assert main([str(tmp_path / "elsewhere" / "best_unet.pt"), str(tmp_path / "out")]) == 0
    meta = json.loads((tmp_path / "out" / "model.json").read_text())["metadata"]
    assert not {"training", "postprocess_tuning", "source_checkpoint"} & meta.keys() and meta["note"] == "kept"
    record = {"mode": "supervised", "step": 5}
    exported = export_weights(network_state(3), spec, tmp_path / "given", metadata={"training": record})
    assert exported.metadata["training"] == record
