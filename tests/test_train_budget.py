"""Training inside a time budget, prefetching workers, batch-scaled learning rates, --init, resumes
across a changed val split, and the whole protocol (``crossct.train full``) on tiny data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import training_folders
from crossct.synthetic import write_synthetic_dataset
from crossct.train import loops
from crossct.train.budget import PROBE_SKIP, PROBE_STEPS, plan_steps, replan_steps
from crossct.train.checkpoint import load_checkpoint
from crossct.train.config import TrainConfig
from crossct.train.prefetch import auto_workers, step_batches


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    other_images, other_labels = write_synthetic_dataset(root / "val2", n_images=2, size=(96, 128), seed=300)
    return {**training_folders(root), "_other_val": (str(other_images), str(other_labels))}


def _cfg(synthetic, run_dir, **kw):
    base = {k: v for k, v in synthetic.items() if not k.startswith("_")}
    base.update(run_dir=str(run_dir), crop=64, batch_size=2, unlabelled_batch_size=2, steps=4, warmup_steps=1,
                val_every=0, checkpoint_minutes=60.0, threads=1)
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_plan_steps_pays_for_validations_first():
    # 100 s - 5 s kept for the end - 4 validations = 55 s = 110 more steps, validated every 110 / 4.
    assert plan_steps(20, 100.0, 0.5, 10.0, 3) == (130, 27)
    assert plan_steps(20, 100.0, 0.5, 10.0, 0) == (190, 0)
    assert plan_steps(50, 10.0, 0.5, 10.0, 3) == (50, 1)  # nothing left: no more steps
    with pytest.raises(ValueError):
        plan_steps(0, 10.0, 0.0, 1.0, 1)


def test_replan_steps_pays_for_the_validations_of_the_total_it_plans():
    # From 200 planned: 440 would fit 1 validation, but 440 steps hold 6 + the last: 100 - 5 - 35 = 60 s.
    assert replan_steps(100, 200, 100.0, 0.25, 5.0, 50) == 340
    # Steps twice as slow as planned: fewer steps, whose time and validations fit what is left (two
    # passes may leave one validation's worth of error), and never fewer than the current one.
    total = replan_steps(100, 340, 100.0, 0.5, 5.0, 50)
    validations = (total - 1 - 100) // 50
    assert 100 < total < 340
    assert (total - 100) * 0.5 + (validations + 1) * 5.0 + 5.0 <= 100.0 + 5.0
    assert replan_steps(100, 340, 1.0, 0.5, 5.0, 50) == 100


def test_a_budgeted_run_plans_its_steps_and_reports_its_time(synthetic, tmp_path):
    cfg = _cfg(synthetic, tmp_path / "run", steps=100000, time_budget=0.5, warmup_steps=30)
    result = loops.train(cfg)
    run = tmp_path / "run"
    planned = json.loads((run / "config.json").read_text())
    last = load_checkpoint(run / "last.pt")
    # The schedule was re-planned from the 100000 asked for to what fits, and the run got there (or,
    # on a machine that slowed down after the probe, stopped cleanly near it when the budget ran out).
    assert 23 <= planned["steps"] < 100000
    assert 0.5 * planned["steps"] <= last["step"] <= planned["steps"]
    assert result["unet"]["best_step"] >= 23
    report = json.loads((run / "time_report.json").read_text())
    assert {"setup", "data", "compute", "validation", "checkpoint", "other"} <= set(report["seconds"])
    assert 0.0 <= report["data_wait_share"] <= 1.0 and report["final_step"] == last["step"]
    assert report["time_budget_seconds"] == 30.0
    val = (run / "val_log.csv").read_text().splitlines()
    assert len(val) >= 3  # after the probe steps, during the run, at the end



def test_a_budgeted_run_replans_when_its_steps_get_faster(synthetic, tmp_path, monkeypatch, caplog):
    """Steps slow while the probe times them (a GPU's first steps, a busy moment), fast afterwards:
    the run re-plans at its validations and ends at its new schedule's end instead of stopping short
    of the budget by the difference."""
    import logging
    import re
    import time

    real_step, calls = loops.train_one_step, {"n": 0}

    def slow_then_fast(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= PROBE_SKIP + PROBE_STEPS:
            time.sleep(0.2)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loops, "train_one_step", slow_then_fast)
    cfg = _cfg(synthetic, tmp_path / "run", steps=100000, time_budget=0.5, warmup_steps=5, val_count=3)
    with caplog.at_level(logging.INFO, logger="crossct.train.loops"):
        loops.train(cfg)
    first = int(re.search(r"time budget: [\d.]+ s/step.* -> (\d+) steps", caplog.text).group(1))
    replanned = [int(n) for n in re.findall(r"-> (\d+) steps instead of", caplog.text)]
    planned = json.loads((tmp_path / "run" / "config.json").read_text())["steps"]
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert replanned and planned == replanned[-1] > first
    # Past the first plan; at the new plan's end, or stopped by the guard close to it (the budget
    # here is 30 s, so a few seconds of jitter matter).
    assert first < last["step"] <= planned


def test_loader_workers_give_the_batches_built_in_the_loop(synthetic, tmp_path):
    cfg = _cfg(synthetic, tmp_path / "w", mode="cross-teach", cnn="x", transformer="y")
    batches, _ = loops._build_data(cfg, loops.Distributed())
    inline, workers = step_batches(batches, 5, 0), step_batches(batches, 5, 2)
    for _ in range(4):
        a, b = next(inline), next(workers)
        for stream in ("labelled", "unlabelled"):
            for key, value in a[stream].items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(value, b[stream][key]), (stream, key)
    del workers
    assert auto_workers(-1, on_gpu=False) == 0 and auto_workers(3, on_gpu=False) == 3
    assert auto_workers(-1, on_gpu=True) <= 12


def test_learning_rate_scales_with_the_square_root_of_the_global_batch(synthetic, tmp_path):
    assert loops.scaled_lr(_cfg(synthetic, tmp_path, batch_size=8, lr=1e-3)) == pytest.approx(1e-3)
    assert loops.scaled_lr(_cfg(synthetic, tmp_path, batch_size=32, lr=1e-3)) == pytest.approx(2e-3)
    assert loops.scaled_lr(_cfg(synthetic, tmp_path, batch_size=8, lr=1e-3), world=4) == pytest.approx(2e-3)
    resolved = loops._resolve_batch(_cfg(synthetic, tmp_path, batch_size=0, unlabelled_batch_size=0), on_gpu=True)
    assert (resolved.batch_size, resolved.unlabelled_batch_size) == (32, 32)


def test_init_starts_from_given_weights(synthetic, tmp_path):
    loops.train(_cfg(synthetic, tmp_path / "first", steps=2))
    best = tmp_path / "first" / "best_unet.pt"
    roles = loops._roles_for(_cfg(synthetic, tmp_path / "second", init=str(best)), loops.Distributed())
    for key, value in load_checkpoint(best)["model"].items():
        assert torch.equal(roles[0].network.state_dict()[key], value), key
    with pytest.raises(ValueError, match="not the swin being trained"):
        loops._roles_for(_cfg(synthetic, tmp_path / "third", model="swin", init=str(best)), loops.Distributed())


def test_resume_on_other_val_images_starts_a_new_best(synthetic, tmp_path, caplog):
    run = tmp_path / "run"
    loops.train(_cfg(synthetic, run, steps=6, stop_after=3, val_every=2))
    before = load_checkpoint(run / "last.pt")["roles"]["unet"]
    assert before["best_step"] == 2
    images, labels = synthetic["_other_val"]
    loops.train(_cfg(synthetic, run, steps=6), resume=True,
                overrides={"val_images_dir": images, "val_labels_dir": labels})
    assert "the validation images changed" in caplog.text
    after = load_checkpoint(run / "last.pt")["roles"]["unet"]
    # Scores on the new images: the best is one of the steps validated after the resume.
    assert after["best_step"] in (4, 6)


@pytest.mark.slow
def test_full_protocol_hands_checkpoints_over_and_resumes_stage_by_stage(synthetic, tmp_path):
    from crossct.predictors import load_predictor
    from crossct.train.protocol import run_full

    run = tmp_path / "full"
    # crop 128: the lite partner sees it pooled to 64, which its five 2x reductions need.
    base = _cfg(synthetic, run, warmup_steps=5, val_max_images=2, crop=128)
    state = run_full(base, budget_minutes=1.2, control=True)
    assert [s for s in ("cnn", "transformer", "crossct", "control", "finish") if state["stages"][s]["status"] == "done"] == \
        ["cnn", "transformer", "crossct", "control", "finish"]
    cross = json.loads((run / "crossct" / "config.json").read_text())
    assert cross["cnn"] == str(run / "cnn" / "best_unet.pt")
    assert cross["transformer"] == str(run / "transformer" / "best_swin-lite.pt")
    assert cross["lr"] == 5e-4 and cross["mode"] == "cross-teach"
    # The control: the same start, as many steps, the same schedule, no partner.
    control = json.loads((run / "control" / "config.json").read_text())
    assert control["init"] == cross["cnn"] and control["mode"] == "supervised"
    assert (control["lr"], control["warmup_steps"]) == (cross["lr"], cross["warmup_steps"])
    assert control["steps"] == state["stages"]["crossct"]["time_report"]["final_step"]
    assert state["stages"]["control"]["time_report"]["final_step"] == control["steps"]
    assert set(state["stages"]["finish"]["tuned"]) == {"supervised", "crossct", "control"}
    winner = state["stages"]["finish"]["winner"]
    assert (run / "weights" / "model.json").read_text() == (run / f"weights-{winner}" / "model.json").read_text()
    assert load_predictor(run / "weights").spec.metadata["postprocess_tuning"]["split"] == "val"
    half = load_checkpoint(run / "transformer" / "best_swin-lite.fp16.pt")
    assert all(v.dtype == torch.float16 for v in half["model"].values() if v.is_floating_point())
    assert os.path.getsize(run / "transformer" / "best_swin-lite.fp16.pt") < 16 * 2**20
    report = (run / "report.md").read_text()
    assert "| cnn |" in report and "CNN cross-taught, tuned post-processing" in report
    assert "| control |" in report and "CNN control, tuned post-processing" in report
    # Resume: finished stages are skipped, an unfinished one runs again.
    stamp = (run / "cnn" / "last.pt").stat().st_mtime_ns
    saved = json.loads((run / "protocol.json").read_text())
    del saved["stages"]["finish"]
    (run / "protocol.json").write_text(json.dumps(saved))
    with pytest.raises(FileExistsError, match="--resume"):
        run_full(base, budget_minutes=1.2)
    state = run_full(base, budget_minutes=1.2, resume=True, control=True)
    assert state["stages"]["finish"]["status"] == "done"
    assert (run / "cnn" / "last.pt").stat().st_mtime_ns == stamp
