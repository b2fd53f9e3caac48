"""Training end to end on tiny synthetic data: supervised U-Net and Swin-UNETR, cross-teaching,
resume equal to an uninterrupted run, export, and predict.py with the exported model."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import training_folders
from crossct.train.checkpoint import load_checkpoint
from crossct.train.config import TrainConfig
from crossct.train.records import paired_folder_records
from crossct.train.loops import train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return training_folders(tmp_path_factory.mktemp("synthetic"))


def _cfg(synthetic, run_dir, **kw):
    base = dict(synthetic, run_dir=str(run_dir), crop=64, batch_size=2, unlabelled_batch_size=2, steps=4,
                warmup_steps=1, val_every=0, checkpoint_minutes=60.0, threads=1)
    base.update(kw)
    return TrainConfig.from_dict(base)


def _weights(path):
    return load_checkpoint(path)["roles"]


def test_supervised_run_writes_logs_checkpoints_and_a_best_model(synthetic, tmp_path):
    result = train(_cfg(synthetic, tmp_path / "unet"))
    assert result["unet"]["best_step"] == 4
    run = tmp_path / "unet"
    assert json.loads((run / "config.json").read_text())["steps"] == 4
    assert (run / "train_log.csv").read_text().splitlines()[0].startswith("step,")
    val = (run / "val_log.csv").read_text().splitlines()
    assert len(val) == 2 and "watershed_mean" in val[0]
    best = load_checkpoint(run / "best_unet.pt")
    assert {"model", "spec", "step"} <= best.keys()
    last = load_checkpoint(run / "last.pt")
    assert last["step"] == 4 and {"model", "optimizer", "scheduler"} <= last["roles"]["unet"].keys()


# Stopped by a step count, or by a wall-clock limit already passed after the first step (a work
# period's end): either way last.pt is written, and the resumed run ends where the straight one did.
@pytest.mark.parametrize("stop, stopped_at", [({"stop_after": 3}, 3), ({"stop_after_minutes": 1e-6}, 1)])
def test_resumed_run_matches_an_uninterrupted_one(synthetic, tmp_path, stop, stopped_at):
    train(_cfg(synthetic, tmp_path / "straight", steps=6))
    stopped = train(_cfg(synthetic, tmp_path / "resumed", steps=6, **stop))
    assert stopped == {"stopped_at": stopped_at}
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == stopped_at
    train(_cfg(synthetic, tmp_path / "resumed", steps=6), resume=True)
    a, b = _weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "resumed" / "last.pt")
    for key, value in a["unet"]["model"].items():
        assert torch.equal(value, b["unet"]["model"][key]), key
    assert a["unet"]["optimizer"]["state"][0]["step"] == b["unet"]["optimizer"]["state"][0]["step"]


@pytest.mark.slow
def test_swin_then_cross_teaching_then_export_then_predict(synthetic, tmp_path):
    train(_cfg(synthetic, tmp_path / "unet", steps=3))
    train(_cfg(synthetic, tmp_path / "swin", model="swin", steps=2))
    result = train(_cfg(synthetic, tmp_path / "ct", mode="cross-teach", steps=3,
                        cnn=str(tmp_path / "unet" / "best_unet.pt"),
                        transformer=str(tmp_path / "swin" / "best_swin.pt")))
    assert set(result) == {"cnn", "transformer"}
    log = (tmp_path / "ct" / "train_log.csv").read_text().splitlines()
    assert "ctl_cnn" in log[0] and "lambda" in log[0]
    weights = tmp_path / "weights"
    subprocess.run([sys.executable, "-m", "crossct.export", str(tmp_path / "ct" / "best_cnn.pt"), str(weights)],
                   check=True, cwd=REPO, capture_output=True)
    spec = json.loads((weights / "model.json").read_text())
    assert spec["model"]["arch"] == "unet" and spec["metadata"]["onnx_max_abs_diff"] < 1e-4
    # model.json says how the network was trained: cross-taught, its partner, its start, its data.
    training = spec["metadata"]["training"]
    assert (training["mode"], training["network"], training["start"]) == ("crossct", "cnn", "best_unet.pt")
    assert training["partner"]["arch"] == "swin_unetr" and training["partner"]["checkpoint"] == "best_swin.pt"
    assert training["step"] == result["cnn"]["best_step"] and training["steps_planned"] == 3
    assert training["data_sources"] == sorted({r.source for r in paired_folder_records(
        Path(synthetic["images_dir"]), Path(synthetic["labels_dir"]))})
    out = tmp_path / "labels"
    done = subprocess.run([sys.executable, "predict.py", "-i", synthetic["val_images_dir"], "-o", str(out),
                           "-w", str(weights)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cell_00000_label.tiff", "cell_00001_label.tiff"]


@pytest.mark.slow
def test_confident_cross_teaching_logs_the_share_of_pixels_that_taught(synthetic, tmp_path):
    # swin-lite pools its input 2x and downsamples it 32x more: crops of 128 px at least.
    train(_cfg(synthetic, tmp_path / "unet", steps=1, crop=128))
    train(_cfg(synthetic, tmp_path / "partner", model="swin-lite", steps=1, crop=128))
    train(_cfg(synthetic, tmp_path / "ct", mode="cross-teach", steps=2, pseudo_confidence=0.6, crop=128,
               cnn=str(tmp_path / "unet" / "best_unet.pt"), transformer=str(tmp_path / "partner" / "best_swin-lite.pt")))
    import csv
    rows = list(csv.DictReader((tmp_path / "ct" / "train_log.csv").open()))
    kept = [float(r["ctl_kept_cnn"]) for r in rows] + [float(r["ctl_kept_transformer"]) for r in rows]
    assert rows and all(0.0 <= k <= 1.0 for k in kept)
    assert json.loads((tmp_path / "ct" / "config.json").read_text())["pseudo_confidence"] == 0.6
    from crossct.train.provenance import training_record
    assert training_record(tmp_path / "ct" / "best_cnn.pt", step=2)["pseudo_confidence"] == 0.6


def test_cross_teach_without_checkpoints_is_refused():
    with pytest.raises(ValueError, match="--cnn"):
        TrainConfig(mode="cross-teach")


@pytest.mark.slow
def test_torchrun_two_gloo_processes_complete_and_resume_identically(synthetic, tmp_path):
    def run(run_dir, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(29500 + os.getpid() % 1000), "-m", "crossct.train", "supervised", "--run-dir", str(run_dir),
               "--images-dir", synthetic["images_dir"], "--labels-dir", synthetic["labels_dir"],
               "--cache-dir", synthetic["cache_dir"], "--crop", "64", "--batch-size", "1", "--steps", "4",
               "--warmup-steps", "1", "--val-every", "0", "--threads", "1", *extra]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    run(tmp_path / "straight")
    run(tmp_path / "resumed", "--stop-after", "2")
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 2
    run(tmp_path / "resumed", "--resume")
    a, b = _weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "resumed" / "last.pt")
    for key, value in a["unet"]["model"].items():
        assert torch.equal(value, b["unet"]["model"][key]), key


def test_resume_with_a_new_total_replans_the_run(synthetic, tmp_path):
    train(_cfg(synthetic, tmp_path / "run", steps=8, stop_after=3))
    train(_cfg(synthetic, tmp_path / "run", steps=8), resume=True, overrides={"steps": 5})
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["step"] == 5 and last["config"]["steps"] == 5
    assert json.loads((tmp_path / "run" / "config.json").read_text())["steps"] == 5
    # The learning rate decayed to zero at the new end.
    assert last["roles"]["unet"]["scheduler"]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_the_run_resumes(synthetic, tmp_path):
    """A job killed by its time limit (SIGTERM) keeps every finished step, not the last timed checkpoint."""
    import signal
    import time

    run = tmp_path / "run"
    args = [sys.executable, "-m", "crossct.train", "supervised", "--run-dir", str(run), "--images-dir",
            synthetic["images_dir"], "--labels-dir", synthetic["labels_dir"], "--cache-dir", synthetic["cache_dir"],
            "--crop", "64", "--batch-size", "2", "--steps", "100000", "--warmup-steps", "1", "--val-every", "0",
            "--checkpoint-minutes", "600", "--threads", "1"]
    child = subprocess.Popen(args, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "train_log.csv").exists() or len((run / "train_log.csv").read_text().splitlines()) < 2:
        assert child.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert "SIGTERM received" in err and "stopping at step" in err
    stopped = load_checkpoint(run / "last.pt")["step"]
    assert 25 <= stopped < 100000  # at least the logged steps, saved although no timed checkpoint was due
    train(_cfg(synthetic, run, steps=stopped + 2), resume=True, overrides={"steps": stopped + 2})
    assert load_checkpoint(run / "last.pt")["step"] == stopped + 2


def test_cpu_amp_trains_in_bfloat16_on_the_cpu(synthetic, tmp_path):
    from crossct.train.config import TrainConfig

    seen = []
    original = torch.nn.Conv2d.forward

    def spy(self, x):
        out = original(self, x)
        seen.append(out.dtype)
        return out

    torch.nn.Conv2d.forward = spy
    try:
        train(_cfg(synthetic, tmp_path / "bf16", steps=1, cpu_amp=True))
        bf16 = set(seen)
        seen.clear()
        train(_cfg(synthetic, tmp_path / "fp32", steps=1))
    finally:
        torch.nn.Conv2d.forward = original
    assert torch.bfloat16 in bf16
    assert torch.bfloat16 not in set(seen)
    report = json.loads((tmp_path / "bf16" / "time_report.json").read_text())
    assert report["bf16_autocast"] is True and TrainConfig().cpu_amp is False


def test_unlabelled_sources_are_equally_likely_however_many_images_each_has(synthetic, tmp_path):
    from crossct.synthetic import write_synthetic_dataset
    from crossct.train import loops

    # An unlabelled record's source is its folder's name.
    few = write_synthetic_dataset(tmp_path / "few", n_images=1, size=(96, 128), seed=1)[0].rename(tmp_path / "few_src")
    many = write_synthetic_dataset(tmp_path / "many", n_images=3, size=(96, 128), seed=2)[0].rename(tmp_path / "many_src")
    cfg = _cfg(synthetic, tmp_path / "ct", mode="cross-teach", cnn="unused.pt", transformer="unused.pt",
               unlabelled=(str(few), str(many)), labelled_as_unlabelled=False)
    batches, _ = loops._build_data(cfg, loops.Distributed())
    p = batches["unlabelled"].p
    assert len(p) == 4
    # Each folder is a source: one image carries as much weight as the other three together.
    assert p[0] == pytest.approx(0.5) and p[1:] == pytest.approx([1 / 6] * 3)
    # alpha 0: every image as likely.
    cfg = dataclasses.replace(cfg, unlabelled_source_alpha=0.0)
    assert loops._build_data(cfg, loops.Distributed())[0]["unlabelled"].p == pytest.approx([0.25] * 4)


def test_status_tells_where_a_stopped_run_stands(synthetic, tmp_path, capsys):
    from crossct.train.__main__ import main
    from crossct.train.status import run_status

    run = tmp_path / "run"
    train(_cfg(synthetic, run, steps=6, stop_after=4, val_every=2))
    s = run_status(run)
    assert (s["mode"], s["step"], s["steps"], s["left"]) == ("supervised", 4, 6, 2)
    assert set(s["best"]) == {"unet"} and s["best"]["unet"]["step"] in (2, 4)
    assert main(["status", str(run), str(tmp_path / "missing")]) == 1
    out, err = capsys.readouterr()
    assert f"| {run} | supervised unet | 4 | 6 | 2 |" in out
    assert f"{tmp_path / 'missing'}: no config.json" in err
    # Finished and kept without its checkpoint: the step comes from the final time report.
    train(_cfg(synthetic, run, steps=6, val_every=2), resume=True)
    (run / "last.pt").unlink()
    assert (run_status(run)["step"], run_status(run)["left"]) == (6, 0)


def test_every_checkpoint_writes_the_pace_so_far(synthetic, tmp_path, monkeypatch):
    from crossct.train import loops

    reports = []
    original = loops._write_time_report

    def spy(account, run_dir, dist, step, steps, *args, quiet=False):
        reports.append((step, steps, quiet))
        return original(account, run_dir, dist, step, steps, *args, quiet=quiet)

    monkeypatch.setattr(loops, "_write_time_report", spy)
    train(_cfg(synthetic, tmp_path / "run", steps=4, checkpoint_every=2))
    # Quietly with the checkpoints at steps 2 and 4 (and the final one), then the final report.
    assert reports[:2] == [(2, 2, True), (4, 4, True)] and reports[-1] == (4, 4, False)
    assert json.loads((tmp_path / "run" / "time_report.json").read_text())["final_step"] == 4
