"""The whole CrossCT protocol in one command, inside one time budget.

``python -m crossct.train full --time-budget MINUTES --run-dir RUN [training flags]`` runs, each
stage in its own folder of ``RUN`` and with its share of the budget:

1. ``cnn``: supervised pre-training of the CNN (``--cnn-model``, default the U-Net);
2. ``transformer``: supervised pre-training of the Swin-UNETR;
3. ``crossct``: cross-teaching of the two from their best checkpoints (labelled + unlabelled images);
4. ``control`` (with ``--control``): the fair comparison for 3., the same CNN from the same
   checkpoint trained supervised for as many steps, with the same learning-rate schedule;
5. ``finish``: the CNNs (supervised, cross-taught, control) exported, their post-processing tuned on
   val, the best one (by the score that picks checkpoints) copied to ``RUN/weights``; the
   Transformers' weights in float16 (small enough to copy off a GPU host); ``RUN/report.md``:
   every stage's wall time, throughput and data-wait share, and the val table of every stage.

A stage's budget is its share of the time still left, so time one stage leaves unused goes to
the next.  ``protocol.json`` records the finished stages: rerun the same command (``--resume``)
after an interruption and finished stages are skipped, a stage that was stopped resumes from its
``last.pt``.  Flags other than the ones below are training settings (``python -m crossct.train
supervised --help``) applied to every stage, e.g. ``--data PACK --batch-size 0 --val-max-images 40``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["STAGES", "DEFAULT_SHARES", "run_full", "main"]

logger = logging.getLogger(__name__)

STAGES = ("cnn", "transformer", "crossct", "control", "finish")
# The control stage runs as many steps as cross-teaching did, not a share of the time.
DEFAULT_SHARES = {"cnn": 0.3, "transformer": 0.3, "crossct": 0.3, "control": 0.0, "finish": 0.1}
# Cross-teaching starts from two trained networks: a lower peak learning rate and a short warm-up.
CROSS_TEACH_DEFAULTS = {"lr": 5e-4, "warmup_steps": 25}
# Settings that belong to one stage, never passed to all of them.
_PER_STAGE = ("mode", "model", "run_dir", "steps", "time_budget", "cnn", "transformer", "init")
_OWN_FLAGS = ("mode", "model", "steps", "cnn", "transformer", "init")  # not offered by `full` at all


def _shares(text: str | None) -> dict[str, float]:
    shares = dict(DEFAULT_SHARES)
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in shares:
            raise ValueError(f"--shares {text!r}: expected STAGE=FRACTION,... with stages {list(STAGES)}")
        shares[name.strip()] = float(value)
    if any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise ValueError(f"--shares {text!r}: fractions must be >= 0 and not all 0")
    return shares


class Protocol:
    """State of a ``full`` run: its settings, the stages done, and what each produced."""

    def __init__(self, run_dir: Path, budget_minutes: float, shares: dict[str, float], cnn_model: str = "unet",
                 transformer_model: str = "swin-lite") -> None:
        self.run_dir, self.path = run_dir, run_dir / "protocol.json"
        self.state: dict[str, Any] = {"budget_minutes": budget_minutes, "shares": shares, "cnn_model": cnn_model,
                                      "transformer_model": transformer_model, "stages": {}}
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            self.state["stages"] = saved.get("stages", {})

    def done(self, stage: str) -> bool:
        return self.state["stages"].get(stage, {}).get("status") == "done"

    def record(self, stage: str, **info: Any) -> None:
        self.state["stages"][stage] = {"status": "done", **info}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        tmp.replace(self.path)

    def seconds_used(self) -> float:
        return sum(s.get("seconds", 0.0) for s in self.state["stages"].values())

    def stage_budget(self, stage: str) -> float:
        """Seconds for ``stage``: its share of what is left, among the stages not yet done."""
        shares = self.state["shares"]
        left = self.state["budget_minutes"] * 60.0 - self.seconds_used()
        later = [s for s in STAGES if not self.done(s) and STAGES.index(s) >= STAGES.index(stage)]
        total = sum(shares[s] for s in later)
        return max(0.0, left * shares[stage] / total) if total > 0 else 0.0


def _train_stage(protocol: Protocol, stage: str, cfg, resume: bool, budgeted: bool = True) -> dict[str, Any]:
    """Train one stage (resuming its last.pt when there is one) within its budget, or for its
    ``steps`` when not ``budgeted``."""
    from .loops import train

    run = Path(cfg.run_dir)
    seconds = protocol.stage_budget(stage) if budgeted else 0.0
    cfg = dataclasses.replace(cfg, time_budget=seconds / 60.0)
    t0 = time.perf_counter()
    logger.info("stage %s: %s in %s", stage, f"{seconds / 60:.1f} min" if budgeted else f"{cfg.steps} steps", run)
    again = resume and (run / "last.pt").exists()
    # A resumed stage gets its budget anew: what it spent before its interruption is not known
    # to this protocol (its own budget_used covers the time inside train()).
    result = train(cfg, resume=again, overrides={"time_budget": cfg.time_budget} if again else None)
    if "stopped_at" in result:
        raise KeyboardInterrupt(f"stage {stage} stopped at step {result['stopped_at']}; rerun with --resume")
    report = json.loads((run / "time_report.json").read_text()) if (run / "time_report.json").exists() else {}
    protocol.record(stage, seconds=round(time.perf_counter() - t0, 1), budget_seconds=round(seconds, 1),
                    result=result, time_report=report)
    return result


def _best(run: Path, role: str) -> Path:
    path = run / f"best_{role}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the stage kept no best checkpoint")
    return path


def _half_copy(checkpoint: Path) -> Path:
    """``checkpoint``'s weights in float16 beside it (``.fp16.pt``): a Swin-UNETR's 25 MB become
    12.6, under the 16 MiB a file may have to come back from a GPU host; loads as usual."""
    import torch

    from .checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(checkpoint)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    out = checkpoint.with_suffix(".fp16.pt")
    save_checkpoint(out, {**ckpt, "model": half, "dtype": str(torch.float16)})
    return out


def _export_and_tune(checkpoint: Path, out: Path, val_records: list) -> dict[str, Any]:
    """Export ``checkpoint`` into ``out``, tune its post-processing on the val records, store the
    thresholds; returns the tuned summary."""
    from ..config import save_spec
    from ..export import export_weights
    from ..predictors import load_predictor
    from .loops import balanced_f1, load_weights
    from .tune import cache_outputs, score_outputs, tune_postprocess

    spec, weights = load_weights(checkpoint)
    if out.exists():
        shutil.rmtree(out)
    export_weights(weights, spec, out, metadata={"source_checkpoint": checkpoint.name})
    predictor = load_predictor(out)
    cached = cache_outputs(predictor, val_records)
    before = score_outputs(cached, predictor.spec.postprocess)
    best, summary, trace = tune_postprocess(cached, predictor.spec.postprocess)
    tuning = {"split": "val", "score_before": round(balanced_f1(before), 4), "score_after": round(balanced_f1(summary), 4)}
    save_spec(predictor.spec.replace(postprocess=best, metadata={**predictor.spec.metadata, "postprocess_tuning": tuning}),
              out / "model.json")
    return {"before": before, "after": summary, "score": balanced_f1(summary), "settings": len(trace)}


def _finish(protocol: Protocol, base, cnn_role: str) -> dict[str, Any]:
    from .loops import round_robin, split_records

    t0 = time.perf_counter()
    run = protocol.run_dir
    _, val_records = split_records(base)
    val_records = round_robin(val_records, base.val_max_images)
    candidates = {"supervised": _best(run / "cnn", cnn_role), "crossct": _best(run / "crossct", "cnn")}
    if protocol.done("control"):
        candidates["control"] = _best(run / "control", cnn_role)
    tuned = {}
    for name, checkpoint in candidates.items():
        tuned[name] = _export_and_tune(checkpoint, run / f"weights-{name}", val_records) if val_records else None
    winner = max(tuned, key=lambda n: tuned[n]["score"] if tuned[n] else -1.0) if val_records else "crossct"
    if (run / "weights").exists():
        shutil.rmtree(run / "weights")
    shutil.copytree(run / f"weights-{winner}", run / "weights")
    halves = [str(_half_copy(_best(run / "transformer", protocol.state["transformer_model"])).relative_to(run)),
              str(_half_copy(_best(run / "crossct", "transformer")).relative_to(run))]
    info = {"winner": winner, "tuned": tuned, "fp16": halves, "seconds": round(time.perf_counter() - t0, 1)}
    (run / "report.md").write_text(report_markdown(protocol, info))
    protocol.record("finish", **info)
    return info


def _stage_val(run: Path, role: str) -> dict[str, Any] | None:
    """The watershed summary stored with a stage's best checkpoint (default thresholds)."""
    from .checkpoint import load_checkpoint

    path = run / f"best_{role}.pt"
    if not path.exists():
        return None
    val = load_checkpoint(path).get("val")
    result = json.loads(val) if isinstance(val, str) and val else {}
    return {**result.get("watershed", {}), "step": load_checkpoint(path).get("step")} if result else None


def report_markdown(protocol: Protocol, finish: dict[str, Any]) -> str:
    """The run's report: time per stage, then val F1 per source for every stage."""
    run, stages = protocol.run_dir, protocol.state["stages"]
    lines = [f"# CrossCT protocol run: {run.name}", "",
             f"Budget {protocol.state['budget_minutes']:.1f} min, shares {protocol.state['shares']}; "
             f"shipped candidate: **{finish['winner']}** (copied to `weights/`).", "",
             "| stage | wall min | budget min | steps | s/step | crops/s | data wait | device | batch | GPU peak GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in STAGES[:4]:
        s = stages.get(name, {})
        t = s.get("time_report", {})
        wait = "" if t.get("data_wait_share") is None else f"{100 * t['data_wait_share']:.1f} %"
        lines.append(f"| {name} | {s.get('seconds', 0) / 60:.1f} | {s.get('budget_seconds', 0) / 60:.1f} | "
                     f"{t.get('final_step', '')} | {t.get('seconds_per_step', '')} | {t.get('crops_per_second', '')} | "
                     f"{wait} | "
                     f"{t.get('gpu', t.get('device', ''))} | {t.get('batch_size', '')} | {t.get('gpu_peak_memory_gib', '')} |")
    lines.append(f"| finish (export, tuning, report) | {finish['seconds'] / 60:.1f} | | | | | | | | |")
    rows: list[tuple[str, dict[str, Any] | None]] = [
        ("CNN supervised, default thresholds", _stage_val(run / "cnn", protocol.state["cnn_model"])),
        ("Swin-UNETR supervised, default thresholds", _stage_val(run / "transformer", protocol.state["transformer_model"])),
        ("CNN cross-taught, default thresholds", _stage_val(run / "crossct", "cnn")),
        ("Swin-UNETR cross-taught, default thresholds", _stage_val(run / "crossct", "transformer")),
        ("CNN control (supervised, as many steps), default thresholds", _stage_val(run / "control", protocol.state["cnn_model"])),
    ]
    titles = {"supervised": "supervised", "crossct": "cross-taught", "control": "control"}
    for name in ("supervised", "crossct", "control"):
        tuned = finish["tuned"].get(name)
        if name == "control" and tuned is None:
            continue
        rows.append((f"CNN {titles[name]}, tuned post-processing", tuned["after"] if tuned else None))
    sources = sorted({s for _, r in rows if r for s in r.get("per_source", {})})
    lines += ["", "Validation F1 (IoU 0.5, challenge rules), watershed post-processing:", "",
              "| network | " + " | ".join(sources) + " | all images | mean over sources |",
              "|---|" + "---|" * (len(sources) + 2)]
    for label, r in rows:
        if not r:
            lines.append(f"| {label} | " + " | ".join("" for _ in sources) + " | n/a | n/a |")
            continue
        cells = " | ".join(f"{r['per_source'].get(s, float('nan')):.4f}" for s in sources)
        lines.append(f"| {label} | {cells} | {r['mean']:.4f} | {r['source_mean']:.4f} |")
    return "\n".join(lines) + "\n"


def run_full(base, budget_minutes: float, shares: dict[str, float] | None = None, cnn_model: str = "unet",
             init_cnn: str = "", init_transformer: str = "", resume: bool = False,
             cross_teach: dict[str, Any] | None = None, transformer_model: str = "swin-lite",
             cnn_stage: dict[str, Any] | None = None, control: bool = False) -> dict[str, Any]:
    """Run (or resume) the protocol; ``base`` (a TrainConfig) holds the settings of every stage and
    ``base.run_dir`` the run; ``cross_teach`` and ``cnn_stage`` override settings of the
    cross-teaching and the CNN stage only; ``control`` adds the supervised control stage."""
    shares = shares or dict(DEFAULT_SHARES)
    run = Path(base.run_dir)
    protocol = Protocol(run, budget_minutes, shares, cnn_model, transformer_model)
    if protocol.state["stages"] and not resume:
        raise FileExistsError(f"{run} holds a started protocol run: pass --resume to continue it, or use a new --run-dir")
    common = {k: v for k, v in base.to_dict().items() if k not in _PER_STAGE}
    from .config import TrainConfig

    stage_cfgs = {
        "cnn": TrainConfig.from_dict({**common, **(cnn_stage or {}), "mode": "supervised", "model": cnn_model,
                                      "init": init_cnn, "run_dir": str(run / "cnn")}),
        "transformer": TrainConfig.from_dict({**common, "mode": "supervised", "model": transformer_model,
                                              "init": init_transformer, "run_dir": str(run / "transformer")}),
    }
    for stage in ("cnn", "transformer"):
        if not protocol.done(stage):
            _train_stage(protocol, stage, stage_cfgs[stage], resume)
    if not protocol.done("crossct"):
        cross = TrainConfig.from_dict({**common, **CROSS_TEACH_DEFAULTS, **(cross_teach or {}),
                                       "mode": "cross-teach", "run_dir": str(run / "crossct"),
                                       "cnn": str(_best(run / "cnn", cnn_model)),
                                       "transformer": str(_best(run / "transformer", transformer_model))})
        _train_stage(protocol, "crossct", cross, resume)
    if control and not protocol.done("control"):
        # As many steps as cross-teaching ran, from the same checkpoint, with its learning rate,
        # warm-up and number of validations: only the partner and the unlabelled images differ.
        ct = json.loads((run / "crossct" / "config.json").read_text())
        steps = int(protocol.state["stages"]["crossct"]["time_report"]["final_step"])
        settings = {k: ct[k] for k in ("lr", "warmup_steps", "batch_size", "seed")}
        _train_stage(protocol, "control", TrainConfig.from_dict({
            **common, **settings, "mode": "supervised", "model": cnn_model, "init": ct["cnn"],
            "run_dir": str(run / "control"), "steps": steps,
            "val_every": max(1, steps // (base.val_count + 1))}), resume, budgeted=False)
    finish = protocol.state["stages"].get("finish") if protocol.done("finish") else _finish(protocol, base, cnn_model)
    logger.info("protocol done in %.1f min: %s -> %s", protocol.seconds_used() / 60, finish["winner"], run / "weights")
    return protocol.state


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m crossct.train full``."""
    from .config import add_config_arguments, config_from_args

    p = argparse.ArgumentParser(prog="python -m crossct.train full", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resume", action="store_true", help="continue the protocol run in RUN_DIR")
    p.add_argument("--time-budget", type=float, required=True, metavar="MINUTES",
                   help="minutes for the whole protocol, export and tuning included")
    p.add_argument("--shares", default=None,
                   help="fractions of the budget per stage, e.g. cnn=0.3,transformer=0.3,crossct=0.3,finish=0.1 "
                        f"(default: {','.join(f'{k}={v}' for k, v in DEFAULT_SHARES.items())})")
    p.add_argument("--cnn-model", default="unet", choices=["unet"], help="the CNN of the pair")
    p.add_argument("--transformer-model", default="swin-lite", choices=["swin-lite", "swin"],
                   help="the Transformer of the pair: swin-lite (the partner a CPU affords, default) or swin "
                        "(the paper's Swin-UNETR)")
    p.add_argument("--control", action="store_true",
                   help="also train the CNN supervised from the cross-teaching start for as many steps (a fair "
                        "comparison for cross-teaching)")
    p.add_argument("--cnn-lr", type=float, default=None,
                   help="peak lr of the CNN stage (e.g. lower when --init-cnn starts it from trained weights)")
    p.add_argument("--init-cnn", default="", help="start the CNN from these weights (checkpoint or weights folder)")
    p.add_argument("--init-transformer", default="", help="start the Swin-UNETR from these weights")
    p.add_argument("--ct-lr", type=float, default=None, help=f"cross-teaching peak lr (default {CROSS_TEACH_DEFAULTS['lr']})")
    p.add_argument("-v", "--verbose", action="store_true")
    add_config_arguments(p, skip=_OWN_FLAGS + ("time_budget",))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.time_budget > 0:
        p.error("--time-budget MINUTES must be above 0")
    if not args.run_dir:
        p.error("--run-dir RUN is required")
    try:
        shares = _shares(args.shares)
    except ValueError as exc:
        p.error(str(exc))
    base = config_from_args(args, mode="supervised", time_budget=0.0)
    run_full(base, args.time_budget, shares, args.cnn_model, args.init_cnn, args.init_transformer, args.resume,
             cross_teach={"lr": args.ct_lr} if args.ct_lr is not None else None,
             transformer_model=args.transformer_model, control=args.control,
             cnn_stage={"lr": args.cnn_lr} if args.cnn_lr is not None else None)
    print(f"report: {Path(args.run_dir) / 'report.md'}; weights: {Path(args.run_dir) / 'weights'}")
    return 0
