"""No run can hurt another: temporaries that belong to a live process are never removed, and several
processes writing one output folder at once all finish every image, whatever the timing.

A temporary (``.<name>.tmp-<pid>-<id>``) is locked by its writer until it is renamed into place;
a run cleaning up after a killed one removes only temporaries whose lock it can take.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import REPO, write_png

from crossct import io
from crossct.batch import find_work, remove_stale_temporaries, run_batch
from crossct.synthetic import synthetic_cells


def temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if ".tmp-" in p.name)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # renamed into place meanwhile
        return 0


def hold_a_write(path: Path, release: Path) -> subprocess.Popen:
    """A child process in the middle of ``write_atomically(path)``: it waits for ``release`` to exist."""
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from crossct.io import write_atomically

        def write(fh):
            fh.write(b"whole")
            fh.flush()
            while not Path({str(release)!r}).exists():
                time.sleep(0.01)

        write_atomically({str(path)!r}, write)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)
    deadline = time.monotonic() + 60
    # Bytes in the temporary: the writer holds its lock (it locks before writing; a temporary that
    # merely exists may be in the created-not-yet-locked window, which another test covers).
    while not any(_size(t) for t in temporaries(path.parent)):
        assert proc.poll() is None and time.monotonic() < deadline, "the writer did not start"
        time.sleep(0.01)
    return proc


def test_a_live_writers_temporary_is_kept_a_dead_ones_removed(tmp_path):
    target = tmp_path / "a_label.tiff"
    writer = hold_a_write(target, tmp_path / "release")
    try:
        (tmp,) = temporaries(tmp_path)
        assert tmp.name.startswith(".a_label.tiff.tmp-")
        assert remove_stale_temporaries([target]) == []  # another run starting now keeps it
        assert tmp.exists()
        (tmp_path / "release").touch()
        assert writer.wait(timeout=60) == 0
    finally:
        writer.kill()
    assert target.read_bytes() == b"whole" and temporaries(tmp_path) == []

    (tmp_path / "release").unlink()
    killed = hold_a_write(tmp_path / "b_label.tiff", tmp_path / "release")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    (tmp,) = temporaries(tmp_path)
    assert remove_stale_temporaries([tmp_path / "b_label.tiff"]) == [tmp]  # its owner is gone
    assert temporaries(tmp_path) == []


def test_a_cleaner_between_creation_and_locking_makes_the_writer_start_over(tmp_path, monkeypatch):
    """The one window a lock cannot close (created, not yet locked): the writer notices and writes again."""
    real_lock = io._lock
    raced = []

    def lock(fd, block):
        if block and not raced:  # the writer, right after creating its temporary: a cleaner gets there first
            (tmp,) = temporaries(tmp_path)
            raced.append(tmp)
            assert io.temporary_owner_gone(tmp)
        return real_lock(fd, block)

    monkeypatch.setattr(io, "_lock", lock)
    io.write_atomically(tmp_path / "x_label.tiff", lambda fh: fh.write(b"data"))
    assert raced and (tmp_path / "x_label.tiff").read_bytes() == b"data"
    assert temporaries(tmp_path) == []


def test_temporary_names_are_unique_per_write(tmp_path):
    """Processes with the same pid (containers) writing the same label never share a temporary."""
    names = set()
    real_replace = os.replace

    def record(src, dst):
        names.add(Path(src).name)
        real_replace(src, dst)

    for _ in range(5):
        os.replace = record
        try:
            io.write_atomically(tmp_path / "x_label.tiff", lambda fh: fh.write(b"x"))
        finally:
            os.replace = real_replace
    assert len(names) == 5 and all(n.startswith(f".x_label.tiff.tmp-{os.getpid()}-") for n in names)


SLOW_WRITES = """
import os, time
if os.environ.get("CROSSCT_TEST_SLOW_WRITES"):
    import crossct.io as io

    _write_atomically = io.write_atomically

    def write_atomically(path, write):
        def slow(fh):
            write(fh)
            time.sleep(float(os.environ["CROSSCT_TEST_SLOW_WRITES"]))  # a temporary in flight most of the time
        return _write_atomically(path, slow)

    io.write_atomically = write_atomically
"""


@pytest.mark.slow  # about 20-40 s: three predict.py processes and a clean run
def test_processes_sharing_an_output_folder_all_finish(tmp_path, tiny_weights, onnx_predictor):
    """Three unsharded runs on one folder, started while the others have writes in flight: each
    cleans up "stale" temporaries at its start, and none may take another's."""
    inp, out, overlays = tmp_path / "in", tmp_path / "out", tmp_path / "overlays"
    inp.mkdir()
    for i in range(10):
        write_png(inp / f"img_{i:02d}.png", synthetic_cells(128, 160, seed=i)[0])
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_WRITES)
    env = {**os.environ, "PYTHONPATH": f"{hooks}{os.pathsep}{REPO}", "CROSSCT_TEST_SLOW_WRITES": "0.15"}
    env.pop("CROSSCT_WEIGHTS", None)
    command = [sys.executable, str(REPO / "predict.py"), "-i", str(inp), "-o", str(out), "-w", str(tiny_weights),
               "--overlay", str(overlays), "-q"]
    procs = [subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)]
    try:
        for _ in range(2):  # the next run starts while a write of the running ones is in flight
            deadline = time.monotonic() + 120
            while not (out.is_dir() and temporaries(out) and len(list(out.glob("*_label.tiff"))) >= 2):
                assert time.monotonic() < deadline and procs[0].poll() is None, "no write in flight to race with"
                time.sleep(0.005)
            procs.append(subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True))
        logs = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(logs)
    for log in logs:
        assert "crossct: 10 image(s) segmented, 0 failed" in log, log

    names = [f"img_{i:02d}_label.tiff" for i in range(10)]
    assert sorted(os.listdir(out)) == names and sorted(os.listdir(overlays)) == [n[:-5] + ".png" for n in names]
    clean = tmp_path / "clean"
    clean.mkdir()
    work, _, _ = find_work(inp, clean)
    assert run_batch(work, onnx_predictor).done == 10
    for name in names:
        np.testing.assert_array_equal(tifffile.imread(out / name), tifffile.imread(clean / name))
