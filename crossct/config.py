"""Everything needed to use a set of weights, as frozen dataclasses.

A :class:`ModelSpec` travels with the weights: as ``model.json`` beside ``model.onnx`` /
``model.pt``, and inside every checkpoint.  Loading code builds the network and the whole
inference chain from it, so nothing is ever re-declared by hand.

Output channel order (fixed by :data:`OUTPUT_CHANNELS`): 0 background, 1 interior, 2 boundary
(3-class logits), 3 cell distance, 4 neighbour distance (Scherr et al. 2020).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = [
    "OUTPUT_CHANNELS",
    "NormalizeConfig",
    "TilingConfig",
    "PostprocessConfig",
    "ModelConfig",
    "ModelSpec",
    "UNET_PAPER",
    "RESUNET_PAPER",
    "UNETR_PAPER",
    "SWIN_UNETR_PAPER",
    "fixed_input_size",
    "spec_for_crop",
    "load_spec",
    "save_spec",
]

OUTPUT_CHANNELS: tuple[str, ...] = ("background", "interior", "boundary", "cell_distance", "neighbor_distance")
SPEC_FORMAT_VERSION = 1

Architecture = Literal["unet", "resunet", "unetr", "swin_unetr"]
Blending = Literal["gaussian", "constant"]
PostMethod = Literal["watershed", "threshold"]


def _check_choice(name: str, value: Any, literal: Any) -> None:
    choices = get_args(literal)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")


@dataclass(frozen=True)
class NormalizeConfig:
    """Per-channel percentile normalisation (the organisers' rule, see :mod:`crossct.normalize`)."""

    lower_percentile: float = 1.0
    upper_percentile: float = 99.0
    # A channel whose percentile range is narrower than this is left unscaled (organisers: 0.001).
    min_range: float = 1e-3

    def __post_init__(self) -> None:
        if not 0 <= self.lower_percentile < self.upper_percentile <= 100:
            raise ValueError(
                f"percentiles must satisfy 0 <= lower < upper <= 100, got "
                f"({self.lower_percentile}, {self.upper_percentile})"
            )


@dataclass(frozen=True)
class TilingConfig:
    """Sliding-window settings."""

    tile_size: int = 256
    overlap: float = 0.25  # fraction of the tile shared with each neighbour
    blending: Blending = "gaussian"
    sigma_scale: float = 0.125  # Gaussian sigma as a fraction of the tile size
    batch_size: int = 8  # tiles per network call on a GPU
    # ... and per call on a CPU, where small batches stay in cache (one call per core runs at
    # once, see crossct.predictors.cpu_calls_and_threads): 1 and 2 tiles per call measure the same.
    cpu_batch_size: int = 2
    # Images larger than block_size + 2 * block_margin on a side are segmented block by block
    # (bounded memory on whole slides); the margin gives each block's cells their full extent.
    block_size: int = 2048
    block_margin: int = 256

    def __post_init__(self) -> None:
        _check_choice("blending", self.blending, Blending)
        if self.block_size < self.tile_size or self.block_margin < 0:
            raise ValueError(f"block_size={self.block_size} must be >= tile_size and block_margin >= 0")
        if self.tile_size < 16 or self.tile_size % 16:
            raise ValueError(f"tile_size={self.tile_size} must be a multiple of 16 and >= 16")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap={self.overlap} must be in [0, 1)")
        if self.batch_size < 1 or self.cpu_batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} and cpu_batch_size={self.cpu_batch_size} must be >= 1")

    @property
    def stride(self) -> int:
        return max(1, int(round(self.tile_size * (1 - self.overlap))))


@dataclass(frozen=True)
class PostprocessConfig:
    """Network outputs -> instance labels (see :mod:`crossct.postprocess`).

    ``watershed``: seeds where ``cell_distance - neighbor_distance**2 > seed_threshold``,
    flooded over ``-cell_distance`` inside the mask ``P(interior)+P(boundary) > mask_threshold``.
    ``threshold``: the organisers' ``P(interior) > interior_threshold`` + connected components.
    """

    method: PostMethod = "watershed"
    seed_threshold: float = 0.5
    mask_threshold: float = 0.5
    smooth_sigma: float = 1.0  # Gaussian on the cell-distance map before seeding (0 = off)
    min_seed_size: int = 3
    min_size: int = 16  # objects smaller than this (pixels) are removed
    interior_threshold: float = 0.5

    def __post_init__(self) -> None:
        _check_choice("method", self.method, PostMethod)
        if self.min_size < 0 or self.min_seed_size < 0:
            raise ValueError("min_size and min_seed_size must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture: a registered name plus its constructor arguments (see :mod:`crossct.nets`)."""

    arch: Architecture = "unet"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_choice("arch", self.arch, Architecture)


UNET_PAPER = ModelConfig(
    "unet",
    {
        "spatial_dims": 2,
        "in_channels": 3,
        "out_channels": 5,
        "channels": [16, 32, 64, 128, 256],
        "strides": [2, 2, 2, 2],
        "num_res_units": 2,
    },
)
# The paper's ResUnet (3.23 M parameters, 5 levels): see crossct.nets for why this stands for it.
RESUNET_PAPER = ModelConfig("resunet", {**UNET_PAPER.kwargs, "num_res_units": 4})
# The organisers' ViT + U-Net baseline (their UNETR2D, the paper's "VIT + U-Net").
UNETR_PAPER = ModelConfig(
    "unetr",
    {
        "spatial_dims": 2,
        "in_channels": 3,
        "out_channels": 5,
        "img_size": 256,
        "feature_size": 16,
        "hidden_size": 768,
        "mlp_dim": 3072,
        "num_heads": 12,
        "proj_type": "perceptron",
        "norm_name": "instance",
        "conv_block": False,
        "res_block": True,
        "dropout_rate": 0.0,
    },
)
SWIN_UNETR_PAPER = ModelConfig(
    "swin_unetr",
    {"spatial_dims": 2, "in_channels": 3, "out_channels": 5, "feature_size": 24},
)


def fixed_input_size(model: ModelConfig) -> int | None:
    """The one input size a network accepts (its ``img_size``: UNETR's learned position embeddings
    cover exactly that many patches), or None when it takes any tile size."""
    size = model.kwargs.get("img_size")
    if size is None:
        return None
    sizes = {int(s) for s in size} if isinstance(size, (list, tuple)) else {int(size)}
    if len(sizes) != 1:
        raise ValueError(f"{model.arch}: img_size={size!r} must be square (tiles are square)")
    return sizes.pop()


@dataclass(frozen=True)
class ModelSpec:
    """Architecture + every inference setting; the one object that travels with the weights."""

    model: ModelConfig = UNET_PAPER
    normalize: NormalizeConfig = NormalizeConfig()
    tiling: TilingConfig = TilingConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    output_channels: tuple[str, ...] = OUTPUT_CHANNELS
    # sha256 of the weight files this spec belongs to, by file name; verified at load.
    checksums: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    format_version: int = SPEC_FORMAT_VERSION

    def __post_init__(self) -> None:
        if tuple(self.output_channels) != OUTPUT_CHANNELS:
            raise ValueError(
                f"output_channels {list(self.output_channels)} differ from the order this code "
                f"understands {list(OUTPUT_CHANNELS)}"
            )
        size = fixed_input_size(self.model)
        if size is not None and size != self.tiling.tile_size:
            raise ValueError(
                f"{self.model.arch} takes {size} x {size} inputs only (img_size), but tiling.tile_size is "
                f"{self.tiling.tile_size}; set both to the same size"
            )
        if self.format_version > SPEC_FORMAT_VERSION:
            raise ValueError(
                f"spec format_version {self.format_version} is newer than this crossct "
                f"understands ({SPEC_FORMAT_VERSION}); upgrade crossct"
            )

    def replace(self, **sections: Any) -> "ModelSpec":
        """A copy with whole sections or fields replaced, e.g. ``replace(postprocess=...)``."""
        return dataclasses.replace(self, **sections)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["output_channels"] = list(self.output_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        d = dict(d)
        sections = {
            "model": ModelConfig,
            "normalize": NormalizeConfig,
            "tiling": TilingConfig,
            "postprocess": PostprocessConfig,
        }
        kwargs: dict[str, Any] = {}
        for name, klass in sections.items():
            if name in d:
                kwargs[name] = _build(klass, d.pop(name), name)
        if "output_channels" in d:
            kwargs["output_channels"] = tuple(d.pop("output_channels"))
        for name in ("checksums", "metadata", "format_version"):
            if name in d:
                kwargs[name] = d.pop(name)
        if d:
            raise ValueError(f"unknown keys in model spec: {sorted(d)}")
        return cls(**kwargs)


def _build(klass: type, values: dict[str, Any], section: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"spec section {section!r} must be an object, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(klass)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown keys in spec section {section!r}: {sorted(unknown)}; valid: {sorted(known)}")
    return klass(**values)


def spec_for_crop(model: ModelConfig, crop: int) -> ModelSpec:
    """The spec of a network about to be trained on ``crop`` x ``crop`` crops: a network with a
    fixed input size (UNETR) takes the crop as its img_size and is served on tiles of that size;
    the others keep the default tiling."""
    if fixed_input_size(model) is None:
        return ModelSpec(model=model)
    model = ModelConfig(model.arch, {**model.kwargs, "img_size": crop})
    return ModelSpec(model=model, tiling=TilingConfig(tile_size=crop))


def save_spec(spec: ModelSpec, path: str | os.PathLike) -> None:
    """Write ``spec`` as indented JSON, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def load_spec(path: str | os.PathLike) -> ModelSpec:
    """Read a :class:`ModelSpec` from JSON, with errors that name the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return ModelSpec.from_dict(data)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid CrossCT model spec: {exc}") from exc
