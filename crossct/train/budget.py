"""Training inside a time budget: where the time went, and how many steps fit.

A run given ``--time-budget M`` first trains a few probe steps and validates once, timing both;
:func:`plan_steps` then turns the seconds left into a step count (the learning-rate schedule decays
to it) and a validation interval.  At every validation after that the rest is planned again from
the steps since the last plan (a GPU's first steps are slow, a shared machine's load changes), so
the schedule ends when the budget does.  A guard stops the run early, with its final validation and
checkpoint, should the plan still overrun.

:class:`TimeAccount` sums wall time per kind of work (setup, data, compute, validation,
checkpoints) for the report written at the end of every run (``time_report.json``); ``data`` is
the time the training loop waited for batches, so ``data / (data + compute)`` is the share of time
the accelerator sat idle waiting for data.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

__all__ = ["StepPlan", "TimeAccount", "plan_steps", "replan_steps", "PROBE_STEPS", "PROBE_SKIP"]

# Steps timed to measure throughput, after PROBE_SKIP steps that carry one-off costs (CUDA kernel
# selection, allocator growth, the first batches of the loader's workers).
PROBE_STEPS = 20
PROBE_SKIP = 3
# Seconds kept free at the end for the last checkpoint and the report.
END_MARGIN = 5.0


@dataclass
class StepPlan:
    """The step count the learning-rate schedule decays to; set once the throughput is known."""

    total: int


@dataclass
class TimeAccount:
    """Wall seconds per kind of work since ``start``."""

    start: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, kind: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(kind, time.perf_counter() - t0)

    def add(self, kind: str, seconds: float) -> None:
        self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def report(self, **extra: Any) -> dict[str, Any]:
        """Seconds per kind (``other``: the rest of the wall time), the data-wait share, ``extra``."""
        wall = self.elapsed
        kinds = {k: round(v, 2) for k, v in sorted(self.seconds.items())}
        kinds["other"] = round(max(0.0, wall - sum(self.seconds.values())), 2)
        data, compute = self.seconds.get("data", 0.0), self.seconds.get("compute", 0.0)
        return {"wall_seconds": round(wall, 2), "seconds": kinds,
                "data_wait_share": round(data / (data + compute), 4) if data + compute > 0 else None, **extra}

    def write(self, path: Path, **extra: Any) -> dict[str, Any]:
        report = self.report(**extra)
        tmp = path.with_name(path.name + ".tmp")  # replaced whole: a reader never sees half a report
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(path)
        return report


def plan_steps(step: int, seconds_left: float, seconds_per_step: float, seconds_per_validation: float,
               validations: int) -> tuple[int, int]:
    """(total steps, validate every N steps) that fit ``seconds_left`` from ``step`` on.

    ``validations`` during the run plus one at the end are paid for out of the budget first.

    >>> plan_steps(20, 100.0, 0.5, 10.0, 3)  # 100 s - 5 s margin - 4 validations = 55 s: 110 more steps
    (130, 27)
    """
    if seconds_per_step <= 0:
        raise ValueError(f"seconds_per_step must be > 0, got {seconds_per_step}")
    spare = seconds_left - END_MARGIN - (validations + 1) * max(0.0, seconds_per_validation)
    more = max(0, int(spare / seconds_per_step))
    total = step + more
    every = max(1, more // (validations + 1)) if validations else 0
    return total, every


def replan_steps(step: int, total: int, seconds_left: float, seconds_per_step: float, seconds_per_validation: float,
                 val_every: int) -> int:
    """The total steps that fit ``seconds_left`` from ``step`` on, validating every ``val_every``
    steps as before: the validations to pay for depend on the total, so it is planned twice, from
    the current ``total`` and then from the first answer.

    At step 100 with 100 s left, 0.25 s per step, 5 s per validation every 50 steps: 440 steps
    would fit one validation, but hold six (+ the last), which leave 100 - 5 - 35 = 60 s: 240 more.

    >>> replan_steps(100, 200, 100.0, 0.25, 5.0, 50)
    340
    """
    for _ in range(2):
        validations = max(0, (total - 1 - step) // val_every)
        total, _ = plan_steps(step, seconds_left, seconds_per_step, seconds_per_validation, validations)
    return total
