"""Sharded inference: with RANK / WORLD_SIZE set, each process takes its own share of a folder."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from crossct.batch import find_work
from crossct.synthetic import synthetic_cells

REPO = Path(__file__).resolve().parent.parent


def _folder(tmp_path, n):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(n):
        cv2.imwrite(str(folder / f"img_{i:02d}.png"), synthetic_cells(64, 80, seed=i)[0])
    return folder


def test_shares_are_disjoint_and_cover_the_folder(tmp_path):
    folder = _folder(tmp_path, 7)
    shares = [find_work(folder, tmp_path / "out", rank=r, world=3)[0] for r in range(3)]
    names = [item.image.name for share in shares for item in share]
    assert sorted(names) == [f"img_{i:02d}.png" for i in range(7)]
    assert [len(s) for s in shares] == [3, 2, 2]


@pytest.mark.slow
def test_two_processes_split_one_folder(tmp_path, tiny_weights):
    folder = _folder(tmp_path, 5)
    out = tmp_path / "out"
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
        env.pop("CROSSCT_WEIGHTS", None)
        procs.append(subprocess.Popen([sys.executable, "predict.py", "-i", str(folder), "-o", str(out), "-w",
                                       str(tiny_weights)], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True))
    logs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert sorted(p.name for p in out.iterdir()) == [f"img_{i:02d}_label.tiff" for i in range(5)]
    assert "3 image(s) segmented" in logs[0] and "2 image(s) segmented" in logs[1]
