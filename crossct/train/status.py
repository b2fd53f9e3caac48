"""``python -m crossct.train status RUN [RUN ...]``: where each training run stands.

One line per run folder: mode, networks, steps done of steps planned, steps left and the time they
will take at the run's own measured pace (``time_report.json``, written with every checkpoint),
and the best validation so far (``val_log.csv``).  It reads ``last.pt`` for the step, so it is right
even after a run was killed (a finished run kept without it: the final step of ``time_report.json``);
it writes nothing, and a run may be training while it reads.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["run_status", "main"]


def run_status(run: Path) -> dict[str, Any]:
    """The state of one run folder (``FileNotFoundError`` when it holds no ``config.json``)."""
    from .checkpoint import load_checkpoint

    config_path = run / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{run}: no config.json, not a training run folder")
    config = json.loads(config_path.read_text())
    last = run / "last.pt"
    report = json.loads((run / "time_report.json").read_text()) if (run / "time_report.json").exists() else {}
    # A finished run kept without its last.pt (the optimiser state is not worth keeping) still tells
    # its last step through the time report written with its final checkpoint.
    step = int(load_checkpoint(last)["step"]) if last.exists() else int(report.get("final_step") or 0)
    seconds_per_step = report.get("seconds_per_step")
    steps = int(config["steps"])
    best: dict[str, dict[str, Any]] = {}  # role -> its best validation row
    if (run / "val_log.csv").exists():
        with open(run / "val_log.csv", newline="") as f:
            for row in csv.DictReader(f):
                role = row.get("role", "")
                if row.get("score") and (role not in best or float(row["score"]) > float(best[role]["score"])):
                    best[role] = row
    return {"run": str(run), "mode": config["mode"], "model": config.get("model", ""), "step": step, "steps": steps,
            "left": max(0, steps - step), "seconds_per_step": seconds_per_step,
            "hours_left": round(max(0, steps - step) * seconds_per_step / 3600, 1) if seconds_per_step else None,
            "best": {role: {"score": float(r["score"]), "step": int(r["step"])} for role, r in best.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossct.train status", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (--run-dir of python -m crossct.train)")
    p.add_argument("--json", action="store_true", help="one JSON object per run instead of the table")
    args = p.parse_args(argv)
    if not args.json:
        print("| run | mode | step | of | left | s / step | hours left | best val score (step) |")
        print("|---|---|---|---|---|---|---|---|")
    failed = 0
    for run in args.runs:
        try:
            s = run_status(run)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps(s))
            continue
        mode = s["mode"] if s["mode"] != "supervised" else f"supervised {s['model']}"
        best = ", ".join(f"{role} {b['score']:.4f} ({b['step']})" for role, b in s["best"].items())
        hours = "" if s["hours_left"] is None else s["hours_left"]
        print(f"| {s['run']} | {mode} | {s['step']} | {s['steps']} | {s['left']} | {s['seconds_per_step'] or ''} | "
              f"{hours} | {best} |")
    return 1 if failed else 0
