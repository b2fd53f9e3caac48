"""Training loops, shaped like torchvision's reference scripts: ``train_one_step``, ``evaluate``, ``main``.

Both modes share one loop over :class:`Role` objects (a network with its optimiser and scheduler):

- supervised: one role, DiceCE + MSE against the targets;
- cross-teach: a CNN and a Transformer role, each supervised on labelled crops, plus
  lambda(t) x cross-teaching on unlabelled crops (the other network's argmax as pseudo-label).

Sampling is a pure function of (seed, step), so a resumed run draws exactly the batches an
uninterrupted one would.  Under ``torchrun`` every process takes its slice of each global batch and
gradients are averaged by DistributedDataParallel (NCCL on GPUs, Gloo on CPU).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import (RESUNET_PAPER, SWIN_UNETR_LITE, SWIN_UNETR_PAPER, UNET_PAPER, UNETR_PAPER, ModelSpec, PostprocessConfig,
                      fixed_input_size, spec_for_crop)
from ..nets import FULLY_CONVOLUTIONAL, build_network, with_probabilities
from .budget import PROBE_SKIP, PROBE_STEPS, StepPlan, TimeAccount, plan_steps, replan_steps
from .checkpoint import FORMAT, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import AugmentConfig, LabelledDataset, UnlabelledDataset, collate, source_weights
from .losses import CrossTeachingLoss, SupervisedLoss, consistency_weight
from .records import (Record, data_records, default_data_dir, folder_unlabelled_records, paired_folder_records,
                      read_record_image, read_record_label, unlabelled_records)
from .targets import TargetCache, prepare_all

__all__ = ["Role", "Distributed", "train", "evaluate", "ModulePredictor"]

logger = logging.getLogger(__name__)

MODEL_SPECS = {"unet": UNET_PAPER, "resunet": RESUNET_PAPER, "unetr": UNETR_PAPER, "swin": SWIN_UNETR_PAPER,
               "swin-lite": SWIN_UNETR_LITE}


# ----------------------------------------------------------------------------- distributed
@dataclass
class Distributed:
    """Rank and world size; a no-op when not launched by torchrun."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def setup(cls, device: str = "auto") -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
        cuda = device != "cpu" and torch.cuda.is_available()
        if world > 1:
            backend = "nccl" if cuda else "gloo"
            torch.distributed.init_process_group(backend=backend)
            rank = torch.distributed.get_rank()
            local = int(os.environ.get("LOCAL_RANK", "0"))
            device = torch.device("cuda", local) if cuda else torch.device("cpu")
            if cuda:
                torch.cuda.set_device(device)
            logger.info("distributed: rank %d of %d, backend %s", rank, world, backend)
            return cls(rank, world, device)
        return cls(0, 1, torch.device("cuda" if cuda else "cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def from_main(self, values: list[float]) -> list[float]:
        """The main process's ``values`` on every process (decisions taken from timings, which
        differ between processes, must agree, or the processes' step counts part and DDP hangs)."""
        if self.world == 1:
            return list(values)
        shared = torch.tensor([float(v) if self.main else 0.0 for v in values], dtype=torch.float64,
                              device=self.device)
        torch.distributed.all_reduce(shared, op=torch.distributed.ReduceOp.SUM)
        return shared.tolist()

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class StopRequest:
    """SIGTERM / SIGINT while training: finish the step, write last.pt, return (resume with --resume).

    A session or batch-job time limit then costs one step, not the minutes since the last
    checkpoint.  Under torchrun every process must stop at the same step, so the flag is shared.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, dist: Distributed) -> None:
        self.dist, self.received, self._previous = dist, None, {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:  # a second signal: stop now, the usual way
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        logger.warning("%s received: stopping after this step with a checkpoint", self.received)

    def __bool__(self) -> bool:
        stop = self.received is not None
        if self.dist.world > 1:
            flag = torch.tensor([float(stop)], device=self.dist.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop


def _train_seconds(account: TimeAccount) -> float:
    """Seconds spent on training steps so far: compute, waiting for data, and checkpoints."""
    return sum(account.seconds.get(k, 0.0) for k in ("compute", "data", "checkpoint"))


# ----------------------------------------------------------------------------- roles
def scaled_lr(cfg: TrainConfig, world: int = 1) -> float:
    """Peak learning rate for this run's global batch: ``lr * sqrt(batch * world / lr_batch)``
    (square-root scaling, the usual rule for Adam; 1 for the default batch of 8 on one process)."""
    return cfg.lr * math.sqrt(cfg.batch_size * world / cfg.lr_batch)


def _lr_factor(step: int, warmup: int, total: int, power: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 1.0 - progress) ** power


@dataclass
class Role:
    """One network in training: the module (maybe DDP-wrapped), its optimiser, scheduler and spec."""

    name: str
    spec: ModelSpec
    network: torch.nn.Module
    module: torch.nn.Module  # what forward() is called on (DDP wrapper or the network)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    best_score: float = -1.0
    best_step: int = -1

    @classmethod
    def create(cls, name: str, spec: ModelSpec, cfg: TrainConfig, dist: Distributed,
               init_weights: dict[str, torch.Tensor] | None = None, plan: StepPlan | None = None) -> "Role":
        network = build_network(spec.model)
        if init_weights is not None:
            network.load_state_dict({k.removeprefix("module."): v for k, v in init_weights.items()})
        network.to(dist.device)
        if spec.model.arch in FULLY_CONVOLUTIONAL:
            # NHWC convolutions are markedly faster on CPU (and on tensor cores).
            network.to(memory_format=torch.channels_last)
        module: torch.nn.Module = network
        if dist.world > 1:
            module = torch.nn.parallel.DistributedDataParallel(
                network, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
        optimizer = torch.optim.AdamW(network.parameters(), lr=scaled_lr(cfg, dist.world), weight_decay=cfg.weight_decay)
        plan = plan or StepPlan(cfg.steps)
        # The schedule reads the plan's total when it is stepped: a time-budgeted run sets it after
        # its probe steps (inside the warm-up, so the schedule is the one a fixed plan would give).
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: _lr_factor(s, cfg.warmup_steps, plan.total, cfg.poly_power))
        return cls(name, spec, network, module, optimizer, scheduler)

    def state(self) -> dict[str, Any]:
        return {"model": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "spec": self.spec.to_dict(),
                "best_score": self.best_score, "best_step": self.best_step}

    def restore(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best_score, self.best_step = state["best_score"], state["best_step"]


# ----------------------------------------------------------------------------- data
class StepBatches:
    """Batches as a pure function of the step: indices drawn with the source-balancing weights,
    items augmented with an RNG keyed by (seed, step, slot).  Process ``rank`` takes its slice."""

    def __init__(self, dataset, weights: np.ndarray | None, batch_size: int, seed: int, stream: int,
                 dist: Distributed) -> None:
        self.dataset, self.batch_size, self.seed, self.stream, self.dist = dataset, batch_size, seed, stream, dist
        n = len(dataset)
        p = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
        self.p = p

    def indices(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.stream, step])
        total = self.batch_size * self.dist.world
        return rng.choice(len(self.p), size=total, p=self.p)

    def batch(self, step: int) -> dict[str, Any]:
        chosen = self.indices(step)
        slots = range(self.dist.rank * self.batch_size, (self.dist.rank + 1) * self.batch_size)
        return collate([self.dataset.sample(int(chosen[s]), np.random.default_rng([self.seed, self.stream, step, s]))
                        for s in slots])


# ----------------------------------------------------------------------------- validation
class ModulePredictor:
    """Adapts an in-memory network to the :class:`~crossct.predictors.Predictor` interface."""

    def __init__(self, network: torch.nn.Module, spec: ModelSpec, device: torch.device) -> None:
        self.spec, self.device = spec, device
        self.module = with_probabilities(network).eval()
        self.description = f"in-memory {spec.model.arch}"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)).float().cpu().numpy()


def evaluate(network: torch.nn.Module, spec: ModelSpec, val_items: list[dict[str, Any]], device: torch.device,
             methods: dict[str, PostprocessConfig] | None = None, log_every: float = 0.0) -> dict[str, Any]:
    """Full inference pipeline + challenge F1 on the validation images.

    The network runs on this thread; next to a GPU, post-processing and scoring run on the host's
    other cores meanwhile.  ``log_every``: seconds between progress lines (0: none).

    Returns ``{method: {"mean": .., "median": .., "source_mean": .., "per_source": {..}}}``.
    """
    from evaluate import f1_score

    from ..parallel import ordered_map
    from ..pipeline import predict_outputs
    from ..postprocess import postprocess
    from ..predictors import available_cpus

    methods = methods or {"watershed": spec.postprocess, "threshold": PostprocessConfig(method="threshold")}
    was_training = network.training
    predictor = ModulePredictor(network, spec, device)

    def score(pair: tuple[dict[str, Any], np.ndarray]) -> tuple[str, dict[str, float]]:
        item, outputs = pair
        return item["source"], {m: float(f1_score(item["label"], postprocess(outputs, post))["f1"])
                                for m, post in methods.items()}

    concurrency = max(1, min(8, available_cpus() - 1)) if device.type == "cuda" else 1
    outputs = ((item, predict_outputs(item["image"], predictor, spec)) for item in val_items)
    scores: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    t0 = t_log = time.perf_counter()
    for done, (source, f1s) in enumerate(ordered_map(score, outputs, concurrency), 1):
        for method, f1 in f1s.items():
            scores[method].setdefault(source, []).append(f1)
        if log_every and time.perf_counter() - t_log > log_every and done < len(val_items):
            logger.info("validating: %d of %d images, %.0f s", done, len(val_items), time.perf_counter() - t0)
            t_log = time.perf_counter()
    network.train(was_training)
    return {m: summarize(s) for m, s in scores.items()}


def summarize(per_source: dict[str, list[float]]) -> dict[str, Any]:
    everything = [f for fs in per_source.values() for f in fs]
    means = {s: float(np.mean(fs)) for s, fs in sorted(per_source.items())}
    return {
        "mean": float(np.mean(everything)) if everything else 0.0,
        "median": float(np.median(everything)) if everything else 0.0,
        "source_mean": float(np.mean(list(means.values()))) if means else 0.0,
        "per_source": means,
        "n": len(everything),
    }


def balanced_f1(summary: dict[str, Any]) -> float:
    """The one score that picks checkpoints and post-processing thresholds: the mean of the overall
    mean F1 and the mean over sources (the val split is mostly one source; neither the big source
    nor the small ones may be sacrificed)."""
    return 0.5 * (summary["mean"] + summary["source_mean"])


def selection_score(result: dict[str, Any]) -> float:
    """:func:`balanced_f1` of the watershed post-processing, for keeping checkpoints."""
    return balanced_f1(result["watershed"])


def round_robin(records: list, limit: int = 0) -> list:
    """``records`` taken in turn from each source (sorted by name); the first ``limit`` (0: all)."""
    by_source: dict[str, list] = {}
    for r in records:
        by_source.setdefault(r.source, []).append(r)
    ordered = []
    queues = [list(v) for _, v in sorted(by_source.items())]
    while any(queues):
        for q in queues:
            if q:
                ordered.append(q.pop(0))
    return ordered[:limit] if limit else ordered


def load_val_items(records, limit: int = 0) -> list[dict[str, Any]]:
    """Read validation images and labels once; ``limit`` picks images round-robin over sources."""
    ordered = round_robin(records, limit)
    return [{"image": read_record_image(r), "label": read_record_label(r)[0], "source": r.source, "name": r.name}
            for r in ordered]


# ----------------------------------------------------------------------------- the loop
class RunLog:
    """CSV of training losses and validation scores, plus a JSON history, in the run folder."""

    def __init__(self, run_dir: Path) -> None:
        self.train_csv, self.val_csv = run_dir / "train_log.csv", run_dir / "val_log.csv"

    @staticmethod
    def _append(path: Path, row: dict[str, Any]) -> None:
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def train(self, row: dict[str, Any]) -> None:
        self._append(self.train_csv, row)

    def val(self, row: dict[str, Any]) -> None:
        self._append(self.val_csv, row)


def load_weights(path: str | os.PathLike) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """(spec, state dict) of a network from a ``best_*.pt`` checkpoint, a weights folder
    (``model.pt``) or its ``model.pt``; a training state (``last.pt``) with one network, too."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    ckpt = load_checkpoint(path)
    if "roles" in ckpt:
        if len(ckpt["roles"]) != 1:
            raise ValueError(f"{path}: a training state of {sorted(ckpt['roles'])}; name one network's best_*.pt instead")
        ckpt = next(iter(ckpt["roles"].values()))
    weights = ckpt.get("model", ckpt.get("state_dict"))
    if weights is None or "spec" not in ckpt:
        raise ValueError(f"{path}: holds no network weights with their spec")
    return ModelSpec.from_dict(ckpt["spec"]), weights


def _roles_for(cfg: TrainConfig, dist: Distributed, plan: StepPlan | None = None) -> list[Role]:
    if cfg.mode == "supervised":
        spec, weights = spec_for_crop(MODEL_SPECS[cfg.model], cfg.crop), None
        if cfg.init:
            init_spec, weights = load_weights(cfg.init)
            if init_spec.model != spec.model:
                raise ValueError(f"--init {cfg.init}: a {init_spec.model.arch} with {init_spec.model.kwargs}, "
                                 f"not the {cfg.model} being trained")
        return [Role.create(cfg.model, spec, cfg, dist, init_weights=weights, plan=plan)]
    roles = []
    for name, path in (("cnn", cfg.cnn), ("transformer", cfg.transformer)):
        spec, weights = load_weights(path)
        size = fixed_input_size(spec.model)
        if size is not None and size != cfg.crop:
            raise ValueError(f"--{name} {path}: its {spec.model.arch} takes {size} x {size} inputs only; "
                             f"cross-teach with --crop {size}")
        roles.append(Role.create(name, spec, cfg, dist, init_weights=weights, plan=plan))
    return roles


# The last labelled dataset built, by its records and settings: the stages of one process
# (crossct.train full) train on the same data, which is then read and held once.
_DATASETS: dict[tuple, Any] = {}


def split_records(cfg: TrainConfig) -> tuple[list, list]:
    """(train records, val records) of the data the settings name."""
    if cfg.images_dir:
        train_records = paired_folder_records(Path(cfg.images_dir), Path(cfg.labels_dir))
        val_records: list = (paired_folder_records(Path(cfg.val_images_dir), Path(cfg.val_labels_dir))
                             if cfg.val_images_dir else [])
        return train_records, val_records
    data_dir = Path(cfg.data) if cfg.data else default_data_dir()
    source = Path(cfg.manifest) if cfg.manifest else data_dir
    return data_records(source, split="train"), data_records(source, split="val")


def _build_data(cfg: TrainConfig, dist: Distributed):
    data_dir = Path(cfg.data) if cfg.data else default_data_dir()
    train_records, val_records = split_records(cfg)
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else Path.home() / ".cache" / "crossct" / "targets"
    augmentation = AugmentConfig(scale=(1.0 / cfg.zoom_max, cfg.zoom_max), p_scale=cfg.p_zoom,
                                 diameter=(cfg.zoom_min_diameter, cfg.zoom_max_diameter), p_colour=cfg.p_colour)
    key = (tuple(train_records), str(cache_root), cfg.crop, cfg.seed, augmentation)
    labelled = _DATASETS.get(key)
    if labelled is None:
        from ..predictors import available_cpus

        # Targets missing from the cache are computed on every core first (a minute on one core
        # for ../shared/data); the dataset then reads them all from the cache.
        if available_cpus() > 1:
            prepare_all(train_records, cache_root, workers=min(16, available_cpus()))
        labelled = LabelledDataset(train_records, TargetCache(cache_root), crop=cfg.crop, augment=True,
                                   seed=cfg.seed, augmentation=augmentation)
        _DATASETS.clear()  # one kept: the stages of `crossct.train full` share it
        _DATASETS[key] = labelled
    batches = {"labelled": StepBatches(labelled, source_weights(train_records, cfg.source_alpha, shapes=labelled.shapes),
                                       cfg.batch_size, cfg.seed, 1, dist)}
    if cfg.mode == "cross-teach":
        if cfg.unlabelled:
            unl_records = unlabelled_records([Path(u) for u in cfg.unlabelled])
        elif data_dir.is_file():  # a training pack: its unlabelled images
            unl_records = data_records(data_dir, split="unlabelled")
        else:
            unl_records = folder_unlabelled_records(data_dir)
        if cfg.labelled_as_unlabelled:
            unl_records = unl_records + [Record(r.image, None, r.source, r.name, r.split, r.archive) for r in train_records]
        if not unl_records:
            raise ValueError("cross-teach found no unlabelled images (--unlabelled DIR ...)")
        unlabelled = UnlabelledDataset(unl_records, crop=cfg.crop, augment=True, seed=cfg.seed)
        batches["unlabelled"] = StepBatches(unlabelled, source_weights(unl_records, cfg.unlabelled_source_alpha,
                                                                       shapes=unlabelled.shapes),
                                            cfg.unlabelled_batch_size, cfg.seed, 2, dist)
    return batches, val_records


def train_one_step(step: int, roles: list[Role], batch: dict[str, Any], cfg: TrainConfig, sup_loss: SupervisedLoss,
                   ct_loss: CrossTeachingLoss, device: torch.device, total_steps: int | None = None,
                   amp: bool = False) -> dict[str, float]:
    """One optimisation step of every role on ``batch`` (``{"labelled": .., "unlabelled": ..}`` as
    built by :class:`StepBatches`); returns the logged losses.  ``amp``: bf16 autocast (CUDA)."""
    total_steps = total_steps or cfg.steps
    lab = batch["labelled"]
    x = lab["image"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    classes = lab["classes"].to(device, non_blocking=True).long()
    distances = lab["distances"].to(device, non_blocking=True).float()
    for role in roles:
        role.optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    parts_all: dict[str, torch.Tensor] = {}
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        for role in roles:
            # Losses in float32 whatever the forward pass ran in.
            loss, parts = sup_loss(role.module(x).float(), classes, distances)
            total = total + loss
            parts_all[f"{role.name}_sup"] = loss.detach()
            parts_all.update({f"{role.name}_{k}": v.detach() for k, v in parts.items()})
        lam = None
        if len(roles) == 2:
            u = batch["unlabelled"]["image"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            ctl, parts = ct_loss(roles[0].module(u).float(), roles[1].module(u).float())
            lam = consistency_weight(step, total_steps, cfg.lambda_max)
            total = total + lam * ctl
            parts_all.update({k: torch.as_tensor(v).detach() for k, v in parts.items()})
    # One device-to-host copy for every logged number (each float() would wait for the GPU).
    values = torch.stack([v.float().reshape(()) for v in (*parts_all.values(), total.detach())]).tolist()
    logged = dict(zip(parts_all, values[:-1]))
    if lam is not None:
        logged["lambda"] = lam
    logged["loss"] = values[-1]  # column order as in existing logs: parts, lambda, loss, lr
    if not math.isfinite(logged["loss"]):
        raise FloatingPointError(f"loss is {logged['loss']} at step {step}; stopping before the weights are ruined")
    total.backward()
    for role in roles:
        role.optimizer.step()
        role.scheduler.step()
    logged["lr"] = roles[0].scheduler.get_last_lr()[0]
    return logged


def val_fingerprint(val_items: list[dict[str, Any]]) -> str:
    """sha256 over the validation images' names, sources and label contents: best scores are only
    comparable while it stays the same."""
    import hashlib

    h = hashlib.sha256()
    for item in sorted(val_items, key=lambda i: (i["source"], i["name"])):
        h.update(f"{item['source']}/{item['name']}/{item['label'].shape}\n".encode())
        h.update(np.ascontiguousarray(item["label"]).tobytes())
    return h.hexdigest()


def _training_state(step: int, roles: list[Role], cfg: TrainConfig, history: list, val_split: str) -> dict[str, Any]:
    return {"format": FORMAT, "step": step, "config": cfg.to_dict(), "val_split": val_split,
            "roles": {r.name: r.state() for r in roles},
            "rng": {"torch": torch.get_rng_state()}, "history": json.dumps(history)}


def _save_best(role: Role, run_dir: Path, step: int, result: dict[str, Any]) -> None:
    save_checkpoint(run_dir / f"best_{role.name}.pt", {
        "model": role.network.state_dict(), "spec": role.spec.to_dict(), "step": step,
        "val": json.dumps(result)})


RESUME_KEEPS = ("stop_after", "stop_after_minutes", "checkpoint_minutes", "checkpoint_every", "threads", "num_workers", "device")


def _resolve_batch(cfg: TrainConfig, on_gpu: bool) -> TrainConfig:
    """Automatic batch sizes (0) made concrete, so that the saved settings say what ran."""
    batch = cfg.batch_size or (32 if on_gpu else 8)
    return dataclasses.replace(cfg, batch_size=batch, unlabelled_batch_size=cfg.unlabelled_batch_size or batch)


def train(cfg: TrainConfig, resume: bool = False, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) training as configured; returns the best validation results per role.

    On ``resume`` the run's saved settings are used, with ``overrides`` (the flags given on the
    command line) on top; without ``overrides``, only the process-level settings in
    :data:`RESUME_KEEPS` are taken from ``cfg``.  Changing ``steps`` on resume re-plans the
    learning-rate decay for the new total (the run is then no longer identical to one planned so).

    With ``time_budget`` the step count is planned from the throughput of the first steps (see
    :mod:`crossct.train.budget`); a resumed budgeted run plans what is left of its budget.  Every
    run writes ``time_report.json``: where the wall time went.
    """
    account = TimeAccount()
    run_dir = Path(cfg.run_dir)
    last = run_dir / "last.pt"
    start_step, history, budget_used = 0, [], 0.0
    if resume:
        if not last.exists():
            raise FileNotFoundError(f"--resume: {last} does not exist")
        state = load_checkpoint(last)
        saved = TrainConfig.from_dict(state["config"])
        if overrides is None:
            overrides = {k: getattr(cfg, k) for k in RESUME_KEEPS}
        if overrides:
            logger.info("resuming with changed settings: %s", overrides)
        cfg = TrainConfig.from_dict({**saved.to_dict(), **overrides})
        budget_used = float(state.get("budget_used_s", 0.0))
    dist = Distributed.setup(cfg.device)
    on_gpu = dist.device.type == "cuda"
    cfg = _resolve_batch(cfg, on_gpu)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # fixed crop size: pick the fastest kernels once
    amp = cfg.amp if on_gpu else cfg.cpu_amp
    torch.manual_seed(cfg.seed)
    plan = StepPlan(cfg.steps)
    roles = _roles_for(cfg, dist, plan)
    if resume:
        for role in roles:
            role.restore(state["roles"][role.name])
        torch.set_rng_state(state["rng"]["torch"])
        start_step, history = int(state["step"]), json.loads(state["history"])
        logger.info("resumed %s at step %d", last, start_step)
    budget = cfg.time_budget * 60.0 - budget_used if cfg.time_budget else None
    if budget is not None and budget <= 0:
        logger.warning("the time budget of %.1f min is spent (%.1f min used): nothing to do", cfg.time_budget,
                       budget_used / 60)
        return {r.name: {"best_score": r.best_score, "best_step": r.best_step} for r in roles}

    def save_config() -> None:
        if dist.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    save_config()
    with account.timed("setup"):
        batches, val_records = _build_data(cfg, dist)
        val_items = load_val_items(val_records, cfg.val_max_images) if (dist.main and val_records) else []
    val_split = val_fingerprint(val_items)
    if resume and state.get("val_split") != val_split:
        # A best score measured on other validation images cannot be compared with new ones.
        for role in roles:
            if role.best_step >= 0:
                logger.warning("%s: the validation images changed since the best score %.4f (step %d) was "
                               "measured; the next validation starts a new best", role.name, role.best_score,
                               role.best_step)
            role.best_score, role.best_step = -1.0, -1
    log = RunLog(run_dir)
    sup_loss, ct_loss = SupervisedLoss(cfg.mse_weight), CrossTeachingLoss(cfg.mse_weight, cfg.pseudo_confidence)
    for role in roles:
        role.module.train()
    from .prefetch import auto_workers, step_batches

    workers = auto_workers(cfg.num_workers, on_gpu)
    logger.info("training on %s: batch %d x %d process(es), peak lr %.2e, %s, %d loader worker(s)%s",
                dist.device, cfg.batch_size, dist.world, scaled_lr(cfg, dist.world),
                "bf16 autocast" if amp else "float32", workers,
                f", time budget {budget / 60:.1f} min" if budget is not None else "")

    def checkpoint(step: int) -> None:
        if dist.main:
            with account.timed("checkpoint"):
                save_checkpoint(last, {**_training_state(step, roles, cfg, history, val_split),
                                       "budget_used_s": budget_used + account.elapsed})
            # The pace so far, beside the checkpoint: `crossct.train status` reads it while the run goes on.
            _write_time_report(account, run_dir, dist, step, steps_this_run, budget, cfg, workers, amp, quiet=True)

    last_validated = -1

    def validate(step: int) -> None:
        nonlocal last_validated
        if not (dist.main and val_items) or step == last_validated:
            return
        last_validated = step
        with account.timed("validation"):
            for role in roles:
                t0 = time.perf_counter()
                result = evaluate(role.network, role.spec, val_items, dist.device, log_every=20.0)
                score = selection_score(result)
                ws = result["watershed"]
                row = {"step": step, "role": role.name,
                       "minutes": round((time.time() - started_wall) / 60 + prior_minutes, 2), "score": round(score, 4),
                       **{f"{m}_{k}": round(v[k], 4) for m, v in result.items() for k in ("mean", "median", "source_mean")},
                       **{f"ws_{s}": round(f, 4) for s, f in ws["per_source"].items()},
                       "seconds": round(time.perf_counter() - t0, 1)}
                log.val(row)
                history.append(row)
                logger.info("val step %d %s: score %.4f = mean of (watershed mean F1 %.4f, mean over sources %.4f); "
                            "threshold post-processing mean F1 %.4f; %d images, %.0f s", step, role.name, score,
                            ws["mean"], ws["source_mean"], result["threshold"]["mean"], ws["n"], row["seconds"])
                if score > role.best_score:
                    role.best_score, role.best_step = score, step
                    _save_best(role, run_dir, step, result)

    prior_minutes = float(history[-1]["minutes"]) if history and "minutes" in history[-1] else 0.0
    started_wall = time.time()
    last_save = time.monotonic()
    steps_this_run = 0
    planned = budget is None
    seconds_per_step = seconds_per_val = 0.0
    probe_start = 0.0
    plan_mark = (start_step, 0.0)  # (step, training seconds) when the steps were last planned
    progress = None
    if dist.main and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=plan.total, initial=start_step, unit="step", dynamic_ncols=True)
    step = start_step
    t_log, log_step = time.perf_counter(), step
    stream = step_batches(batches, step, workers, pin_memory=on_gpu)
    stop_reason = None
    with StopRequest(dist) as stop:
        while step < plan.total:
            with account.timed("data"):
                batch = next(stream)
            with account.timed("compute"):
                logged = train_one_step(step, roles, batch, cfg, sup_loss, ct_loss, dist.device, plan.total, amp)
            step += 1
            steps_this_run += 1
            if progress:
                progress.update(1)
                progress.set_postfix(loss=f"{logged['loss']:.3f}")
            if dist.main and (step % 25 == 0 or step == plan.total):
                elapsed = time.perf_counter() - t_log
                log.train({"step": step, **{k: round(v, 5) for k, v in logged.items()}})
                if not progress:
                    logger.info("step %d/%d loss %.4f lr %.2e (%.2f s/step)", step, plan.total, logged["loss"],
                                logged["lr"], elapsed / max(1, step - log_step))
                t_log, log_step = time.perf_counter(), step
            if not planned:
                if steps_this_run == PROBE_SKIP:
                    probe_start = time.perf_counter()
                if steps_this_run >= PROBE_SKIP + PROBE_STEPS or step >= plan.total:
                    timed = steps_this_run - PROBE_SKIP
                    seconds_per_step = ((time.perf_counter() - probe_start) / timed if timed > 0
                                        else account.seconds["compute"] / steps_this_run)
                    t0 = time.perf_counter()
                    validate(step)
                    seconds_per_val = time.perf_counter() - t0
                    left = budget - account.elapsed
                    total, every = plan_steps(step, left, seconds_per_step, seconds_per_val, cfg.val_count)
                    plan.total, every = (int(v) for v in dist.from_main([total, every]))
                    cfg = dataclasses.replace(cfg, steps=max(plan.total, 1), val_every=every)
                    save_config()
                    planned = True
                    plan_mark = (step, _train_seconds(account))
                    if progress:
                        progress.total = plan.total
                    logger.info("time budget: %.2f s/step, %.1f s per validation, %.1f min left -> %d steps "
                                "(validating every %d)", seconds_per_step, seconds_per_val, left / 60, plan.total, every)
            if cfg.val_every and step % cfg.val_every == 0 and step < plan.total:
                t0 = time.perf_counter()
                validate(step)
                if budget is not None and planned and step - plan_mark[0] >= PROBE_STEPS:
                    # Throughput drifts (a GPU's first steps are slow, a shared machine's load
                    # changes): re-plan the rest from the steps since the last plan (at least as
                    # many as the probe timed), so the run neither stops short of its schedule's
                    # end nor leaves budget unused.  The validation interval stays.
                    seconds_per_step = (_train_seconds(account) - plan_mark[1]) / (step - plan_mark[0])
                    seconds_per_val = time.perf_counter() - t0 if dist.main else seconds_per_val
                    total = replan_steps(step, plan.total, budget - account.elapsed, seconds_per_step,
                                         seconds_per_val, cfg.val_every)
                    total = int(dist.from_main([total])[0])
                    if abs(total - plan.total) > 0.02 * plan.total and total > step:
                        logger.info("time budget: %.2f s/step since step %d -> %d steps instead of %d",
                                    seconds_per_step, plan_mark[0], total, plan.total)
                        plan.total = total
                        cfg = dataclasses.replace(cfg, steps=total)
                        save_config()
                        if progress:
                            progress.total = plan.total
                    plan_mark = (step, _train_seconds(account))
            timed_out = time.monotonic() - last_save > cfg.checkpoint_minutes * 60
            if timed_out or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                checkpoint(step)
                last_save = time.monotonic()
            asked = bool(cfg.stop_after) and steps_this_run >= cfg.stop_after
            out_of_time = bool(cfg.stop_after_minutes) and account.elapsed > cfg.stop_after_minutes * 60
            if step < plan.total and (asked or out_of_time or stop):
                stop_reason = "--stop-after" if asked else "--stop-after-minutes" if out_of_time else stop.received
                break
            if budget is not None and planned and step < plan.total:
                # The plan overran (a slower moment than the probe): keep the final validation's time.
                spent = budget - account.elapsed < seconds_per_val + seconds_per_step + 5.0
                if dist.from_main([spent])[0]:
                    logger.warning("time budget nearly spent at step %d of %d: stopping with a final validation",
                                   step, plan.total)
                    break
    del stream  # stops the loader's workers
    if progress:
        progress.close()
    if stop_reason:
        logger.info("stopping at step %d (%s); resume with --resume", step, stop_reason)
        checkpoint(step)
        _write_time_report(account, run_dir, dist, step, steps_this_run, budget, cfg, workers, amp)
        dist.barrier()
        dist.close()
        return {"stopped_at": step}
    validate(step)
    checkpoint(step)
    dist.barrier()
    if dist.main and not val_items:
        for role in roles:  # no validation data: the last weights are the best we know
            _save_best(role, run_dir, step, {})
    _write_time_report(account, run_dir, dist, step, steps_this_run, budget, cfg, workers, amp)
    dist.close()
    return {r.name: {"best_score": r.best_score, "best_step": r.best_step} for r in roles}


def _write_time_report(account: TimeAccount, run_dir: Path, dist: Distributed, step: int, steps: int,
                       budget: float | None, cfg: TrainConfig, workers: int, amp: bool, quiet: bool = False) -> None:
    if not dist.main:
        return
    compute = account.seconds.get("compute", 0.0)
    extra: dict[str, Any] = {
        "device": str(dist.device), "processes": dist.world, "batch_size": cfg.batch_size, "loader_workers": workers,
        "bf16_autocast": amp, "steps_this_run": steps, "final_step": step,
        "seconds_per_step": round(compute / steps, 4) if steps else None,
        "crops_per_second": round(steps * cfg.batch_size * dist.world / compute, 1) if compute else None,
        "time_budget_seconds": round(budget, 1) if budget is not None else None,
    }
    if dist.device.type == "cuda":
        extra["gpu"] = torch.cuda.get_device_name(dist.device)
        extra["gpu_peak_memory_gib"] = round(torch.cuda.max_memory_allocated(dist.device) / 2**30, 2)
    report = account.write(run_dir / "time_report.json", **extra)
    if quiet:
        return
    seconds = report["seconds"]
    logger.info("time: %.0f s wall = %s; waiting for data %.1f %% of training time",
                report["wall_seconds"], ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()),
                100 * (report["data_wait_share"] or 0.0))
