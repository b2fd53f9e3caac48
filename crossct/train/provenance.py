"""How a network was trained, for ``model.json``'s ``metadata.training``.

Read from the run folder a checkpoint lies in (its ``config.json``, saved by every training run),
so that exported weights say by themselves whether they come from supervised training or
cross-teaching, at which step, with which partner and on which data sources.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["training_record"]

logger = logging.getLogger(__name__)


def _network(path: str) -> dict[str, Any]:
    """A network a run started from: its architecture when its checkpoint is readable."""
    from .checkpoint import load_checkpoint

    try:
        spec = load_checkpoint(path).get("spec", {})
        return {"checkpoint": Path(path).name, **spec.get("model", {})}
    except (OSError, ValueError, RuntimeError) as exc:
        logger.info("%s not readable (%s): recorded by name only", path, exc)
        return {"checkpoint": Path(path).name}


def training_record(checkpoint: str | Path, step: int | None, role: str | None = None) -> dict[str, Any] | None:
    """``{"mode": "supervised" | "crossct", "network", "step", "steps_planned", "start", "partner",
    "data_sources", ...}`` for the network saved in ``checkpoint`` (``role``: which network of a
    cross-teaching run; default from the name ``best_<role>.pt``), or None when the checkpoint's
    folder holds no ``config.json`` (weights from elsewhere)."""
    checkpoint = Path(checkpoint)
    config_path = checkpoint.parent / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    crossct = config.get("mode") == "cross-teach"
    if crossct:
        role = role or checkpoint.stem.removeprefix("best_")
        if role not in ("cnn", "transformer"):
            role = "cnn"
        other = "transformer" if role == "cnn" else "cnn"
    record: dict[str, Any] = {
        "mode": "crossct" if crossct else "supervised",
        "network": role if crossct else config.get("model"),
        "step": step,
        "steps_planned": config.get("steps"),
        "start": Path(config[role] if crossct else config.get("init") or "").name or None,
        "batch_size": config.get("batch_size"),
        "peak_lr": config.get("lr"),
        "seed": config.get("seed"),
        "bf16_on_cpu": config.get("cpu_amp", False),
    }
    if crossct:
        record["partner"] = _network(config[other])
        record["unlabelled_batch_size"] = config.get("unlabelled_batch_size")
        record["pseudo_confidence"] = config.get("pseudo_confidence", 0.0)  # 0: every pixel teaches (the paper)
    sources = data_sources(config)
    if sources is not None:
        record["data_sources"] = sources
    return record


def data_sources(config: dict[str, Any]) -> list[str] | None:
    """The sources of the training split the run read (None when its data is no longer there)."""
    from .config import TrainConfig
    from .loops import split_records  # the run's own way to find its records

    try:
        records = split_records(TrainConfig.from_dict(config))[0]
    except (OSError, ValueError) as exc:
        logger.info("training data not readable (%s): data sources not recorded", exc)
        return None
    return sorted({r.source for r in records})
