"""scripts/long_run.sh on tiny synthetic data: both arms from one start, the caller's flags
overriding the script's settings, the arms kept in CROSSCT_LONG_KEEP and restored from there once
their run folder is gone, and a later call finding both arms done."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import manifest_folder, training_folders
from crossct.train.config import TrainConfig
from crossct.train.loops import train

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_long_run_trains_both_arms_keeps_them_and_restores_them_when_their_folder_is_lost(tmp_path):
    synthetic = training_folders(tmp_path / "synthetic")
    data = manifest_folder(synthetic, tmp_path / "data")
    start = tmp_path / "start"
    train(TrainConfig.from_dict({**synthetic, "run_dir": str(start), "crop": 64, "batch_size": 2, "steps": 1,
                                 "warmup_steps": 1, "val_every": 0, "threads": 1}))
    checkpoint = str(start / "best_unet.pt")  # a U-Net as its own partner keeps the test fast
    env = {**os.environ, "CROSSCT_DATA": str(data), "CROSSCT_LONG_STEPS": "2", "CROSSCT_LONG_UNLABELLED_BATCH": "1",
           "CROSSCT_LONG_FLAGS": "--batch-size 2 --crop 64 --no-cpu-amp --threads 1 --val-every 2",
           "CROSSCT_LONG_KEEP": str(tmp_path / "kept")}
    runs = tmp_path / "runs"

    def long_run() -> str:
        done = subprocess.run(["bash", "scripts/long_run.sh", str(runs), checkpoint, checkpoint, "10"], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    long_run()
    for arm, unlabelled in (("control", None), ("crossct", 1)):
        config = json.loads((runs / arm / "config.json").read_text())
        assert (config["steps"], config["batch_size"], config["crop"], config["cpu_amp"]) == (2, 2, 64, False)
        if unlabelled is not None:
            assert config["unlabelled_batch_size"] == unlabelled
        assert json.loads((runs / arm / "time_report.json").read_text())["final_step"] == 2
    kept = tmp_path / "kept"
    for arm in ("control", "crossct"):
        assert (kept / arm / "last.pt").read_bytes() == (runs / arm / "last.pt").read_bytes()
        assert "done: " in (kept / arm / "arm.log").read_text()  # the training log went with it
    assert not [p.name for p in kept.iterdir() if p.name.startswith(".")]  # no half-copied folder left
    shutil.rmtree(runs)  # the machine was replaced: only the kept copy is left
    lines = long_run().splitlines()
    assert lines[:2] == ["control: restored from " + str(kept / "control"), "control: done"], lines
    assert "crossct: done" in lines
    assert json.loads((runs / "crossct" / "time_report.json").read_text())["final_step"] == 2
