"""Training settings: one frozen dataclass, filled from defaults < a JSON file < command-line flags.

Every field is a ``--flag`` of ``python -m crossct.train``; the resolved settings are saved with the
run (``config.json``) and inside every checkpoint, so a run can be resumed and reproduced exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, get_args

__all__ = ["TrainConfig", "add_config_arguments", "config_from_args"]

Mode = Literal["supervised", "cross-teach"]
ModelName = Literal["unet", "resunet", "unetr", "swin", "swin-lite"]
Device = Literal["auto", "cpu", "cuda"]


def _help(text: str, modes: tuple[str, ...] = ("supervised", "cross-teach"), **kw: Any) -> Any:
    """A field with its ``--help`` text and the modes whose command line offers it."""
    return field(metadata={"help": text, "modes": modes}, **kw)


_CT = ("cross-teach",)
_SUP = ("supervised",)


@dataclass(frozen=True)
class TrainConfig:
    mode: Mode = _help("supervised pre-training of one network, or cross-teaching of two", default="supervised")
    model: ModelName = _help("network to pre-train (supervised mode)", _SUP, default="unet")
    init: str = _help("start from these weights (a checkpoint or a weights folder) instead of random ones", _SUP, default="")
    run_dir: str = _help("folder for checkpoints, logs and the saved config", default="runs/crossct")
    data: str = _help("data folder holding manifest.csv, or a training pack file (python -m crossct.train pack; default: $CROSSCT_DATA or ../shared/data)", default="")
    manifest: str = _help("manifest CSV (default: DATA/manifest.csv)", default="")
    images_dir: str = _help("paired-folder alternative to the manifest: images", default="")
    labels_dir: str = _help("paired-folder alternative to the manifest: <stem>_label.tiff labels", default="")
    val_images_dir: str = _help("paired-folder validation images (with --images-dir)", default="")
    val_labels_dir: str = _help("paired-folder validation labels (with --images-dir)", default="")
    unlabelled: tuple[str, ...] = _help("folders of unlabelled images for cross-teaching (default: DATA/unlabeled/*)", _CT, default=())
    labelled_as_unlabelled: bool = _help("also use the labelled training images, labels withheld, as unlabelled data", _CT, default=True)
    cache_dir: str = _help("target cache (default: ~/.cache/crossct/targets)", default="")
    cnn: str = _help("supervised U-Net or ResUnet checkpoint to start from", _CT, default="")
    transformer: str = _help("supervised Swin-UNETR (or UNETR) checkpoint to start from", _CT, default="")

    steps: int = _help("total optimisation steps (with --time-budget: planned from measured throughput)", default=2000)
    time_budget: float = _help("minutes for the whole run, data loading, validation and checkpoints included: the step "
                               "count (and so the learning-rate schedule) is planned from the throughput of the first "
                               "steps; 0: run --steps", default=0.0)
    val_count: int = _help("with --time-budget: validations during the run, besides one after the first steps and one at the end", default=3)
    batch_size: int = _help("labelled crops per step and process (0: 8 on a CPU, 32 on a GPU)", default=8)
    unlabelled_batch_size: int = _help("unlabelled crops per step and process (0: as --batch-size)", _CT, default=8)
    crop: int = _help("training crop size", default=256)
    lr: float = _help("peak learning rate (AdamW) for a global batch of --lr-batch crops; scaled by "
                      "sqrt(global batch / lr-batch)", default=2e-3)
    lr_batch: int = _help("the global batch that --lr is given for", default=8)
    device: Device = _help("where to train: auto (CUDA when available), cpu or cuda", default="auto")
    amp: bool = _help("bf16 autocast on CUDA", default=True)
    cpu_amp: bool = _help("bf16 autocast on the CPU too: on CPUs with AVX-512 BF16 / AMX a U-Net step about 2x faster "
                          "(benchmarks/bench_partner.py); off by default, so earlier float32 runs resume unchanged",
                          default=False)
    weight_decay: float = _help("AdamW weight decay", default=1e-4)
    warmup_steps: int = _help("linear warm-up steps", default=100)
    poly_power: float = _help("polynomial decay power after warm-up", default=0.9)
    lambda_max: float = _help("cross-teaching weight maximum (paper: 0.1)", _CT, default=0.1)
    pseudo_confidence: float = _help("teach only with the pixels whose pseudo-label the teaching network gives at least "
                                     "this softmax probability (0: every pixel, as the paper)", _CT, default=0.0)
    mse_weight: float = _help("weight of the distance-map MSE terms", default=1.0)
    zoom_min_diameter: float = _help("scale augmentation: zoom so that median cell diameters land in [min, max] px", default=8.0)
    zoom_max_diameter: float = _help("scale augmentation: upper end of that diameter range (px)", default=80.0)
    zoom_max: float = _help("scale augmentation: largest zoom in or out (factor)", default=4.0)
    p_zoom: float = _help("scale augmentation: probability that a crop is zoomed", default=0.5)
    p_colour: float = _help("colour augmentation: probability that a colour crop gets a gain and shift per channel", default=0.0)
    source_alpha: float = _help("sampling weight per image ~ 1 / n_source**alpha (0: uniform over images, 1: uniform over sources)", default=0.5)
    unlabelled_source_alpha: float = _help("the same for the unlabelled images of cross-teaching (1: every source as "
                                           "likely, so 522 dsb images do not drown 2 bacteria crops)", _CT, default=1.0)
    num_workers: int = _help("processes preparing batches ahead of the network (-1: none on a CPU, up to 12 on a GPU)", default=-1)
    seed: int = _help("seed for weights, sampling and augmentation", default=0)
    threads: int = _help("torch CPU threads (0: all cores)", default=0)

    val_every: int = _help("validate every N steps (0: only at the end)", default=500)
    val_max_images: int = _help("validate on at most N val images, spread over sources (0: all)", default=0)
    checkpoint_minutes: float = _help("write last.pt at least this often", default=5.0)
    checkpoint_every: int = _help("also write last.pt every N steps (0: off)", default=0)
    stop_after: int = _help("stop this process after N steps of this run (testing resume; 0: off)", default=0)
    stop_after_minutes: float = _help("stop this process cleanly (last.pt written) after this many minutes of wall "
                                      "time, to fit a work period; continue with --resume (0: off)", default=0.0)

    def __post_init__(self) -> None:
        for name, literal in (("mode", Mode), ("model", ModelName), ("device", Device)):
            if getattr(self, name) not in get_args(literal):
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {list(get_args(literal))}")
        if self.mode == "cross-teach" and not (self.cnn and self.transformer):
            raise ValueError("cross-teach needs --cnn CKPT and --transformer CKPT (supervised checkpoints)")
        if self.steps < 1 or self.batch_size < 0 or self.unlabelled_batch_size < 0 or self.lr_batch < 1:
            raise ValueError("steps and lr_batch must be >= 1, batch sizes >= 0 (0: automatic)")
        if not 0.0 <= self.pseudo_confidence < 1.0:
            raise ValueError(f"pseudo_confidence ({self.pseudo_confidence}) must be in [0, 1)")
        if self.time_budget < 0 or self.val_count < 0 or self.stop_after_minutes < 0:
            raise ValueError(f"time_budget ({self.time_budget}), val_count ({self.val_count}) and stop_after_minutes "
                             f"({self.stop_after_minutes}) must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["unlabelled"] = list(self.unlabelled)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}; valid: {sorted(known)}")
        d = dict(d)
        if "unlabelled" in d:
            d["unlabelled"] = tuple(d["unlabelled"])
        return cls(**d)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, skip: Sequence[str] = (), mode: str | None = None) -> None:
    """One flag per :class:`TrainConfig` field (those of ``mode`` only, when given), default None so
    that only given flags override."""
    parser.add_argument("--config", help="JSON file of settings (flags given on the command line win)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip or (mode is not None and mode not in f.metadata.get("modes", (mode,))):
            continue
        default = f.default
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})"
        if f.type in (bool, "bool"):
            parser.add_argument(_flag(f.name), dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        elif f.name == "unlabelled":
            parser.add_argument(_flag(f.name), dest=f.name, default=None, nargs="*", help=help_text)
        else:
            kind = {int: int, float: float}.get(type(default), str)
            choices = None
            if f.name in ("mode", "model", "device"):
                choices = list(get_args({"mode": Mode, "model": ModelName, "device": Device}[f.name]))
            parser.add_argument(_flag(f.name), dest=f.name, default=None, type=kind, choices=choices, help=help_text)


def config_from_args(args: argparse.Namespace, **fixed: Any) -> TrainConfig:
    """Defaults < ``--config`` JSON < explicit flags < ``fixed``."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(json.loads(Path(args.config).read_text()))
    for f in dataclasses.fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    values.update(fixed)
    return TrainConfig.from_dict(values)
