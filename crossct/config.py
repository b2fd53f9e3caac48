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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from .schema import Checked, SpecError, from_dict, setting

__all__ = [
    "OUTPUT_CHANNELS",
    "NormalizeConfig",
    "TilingConfig",
    "PostprocessConfig",
    "SizeConfig",
    "TestTimeConfig",
    "ModelConfig",
    "ModelSpec",
    "NETWORK_ARGUMENTS",
    "SpecError",
    "UNET_PAPER",
    "RESUNET_PAPER",
    "UNETR_PAPER",
    "SWIN_UNETR_PAPER",
    "SWIN_UNETR_LITE",
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


@dataclass(frozen=True)
class NormalizeConfig(Checked):
    """Per-channel percentile normalisation (the organisers' rule, see :mod:`crossct.normalize`)."""

    lower_percentile: float = setting(1.0, ge=0, le=100)
    upper_percentile: float = setting(99.0, ge=0, le=100)
    # A channel whose percentile range is narrower than this is left unscaled (organisers: 0.001).
    min_range: float = setting(1e-3, ge=0)

    def _check(self) -> None:
        if not self.lower_percentile < self.upper_percentile:
            raise SpecError("upper_percentile", f"percentiles must satisfy 0 <= lower < upper <= 100, got "
                                                f"({self.lower_percentile}, {self.upper_percentile})")


@dataclass(frozen=True)
class TilingConfig(Checked):
    """Sliding-window settings."""

    tile_size: int = setting(256, ge=16, le=4096, multiple_of=16)
    # Fraction of the tile shared with each neighbour.
    overlap: float = setting(0.25, ge=0, le=0.9, why="tiles per pixel grow as 1 / (1 - overlap)^2: 100 at 0.9")
    blending: Blending = "gaussian"
    sigma_scale: float = setting(0.125, gt=0, le=10)  # Gaussian sigma as a fraction of the tile size
    batch_size: int = setting(8, ge=1, le=1024)  # tiles per network call on a GPU
    # ... and per call on a CPU, where small batches stay in cache (one call per core runs at
    # once, see crossct.predictors.cpu_calls_and_threads): 1 and 2 tiles per call measure the same.
    cpu_batch_size: int = setting(2, ge=1, le=1024)
    # Images larger than block_size + 2 * block_margin on a side are segmented block by block
    # (bounded memory on whole slides); the margin gives each block's cells their full extent.
    block_size: int = setting(2048, ge=16, le=65536)
    block_margin: int = setting(256, ge=0, le=65536)

    def _check(self) -> None:
        if self.block_size < self.tile_size:
            raise SpecError("block_size", f"{self.block_size} must be >= tile_size ({self.tile_size})")

    @property
    def stride(self) -> int:
        return max(1, int(round(self.tile_size * (1 - self.overlap))))


@dataclass(frozen=True)
class PostprocessConfig(Checked):
    """Network outputs -> instance labels (see :mod:`crossct.postprocess`).

    ``watershed``: seeds where ``cell_distance - neighbor_distance**2 > seed_threshold``,
    flooded over ``-cell_distance`` inside the mask ``P(interior)+P(boundary) > mask_threshold``.
    ``threshold``: the organisers' ``P(interior) > interior_threshold`` + connected components.
    Thresholds are in [0, 1): the maps they cut are in [0, 1], so 1 or more would find nothing.
    """

    method: PostMethod = "watershed"
    seed_threshold: float = setting(0.5, ge=0, lt=1)
    mask_threshold: float = setting(0.5, ge=0, lt=1)
    smooth_sigma: float = setting(1.0, ge=0, le=16)  # Gaussian on the cell-distance map before seeding (0 = off)
    min_seed_size: int = setting(3, ge=0)
    min_size: int = setting(16, ge=0)  # smaller objects are removed (pixels of the input image, at every scale)
    # Objects smaller than this fraction of the median object area are removed (0 = off): scale-free,
    # it drops fragments and specks at any cell size.
    min_relative_size: float = setting(0.0, ge=0, lt=1)
    interior_threshold: float = setting(0.5, ge=0, lt=1)


@dataclass(frozen=True)
class SizeConfig(Checked):
    """Cell size: images whose cells are far from the sizes the network was trained on are
    segmented at a scale that brings them into range (see :func:`crossct.pipeline.segment_stages`).

    ``diameter`` > 0: the user's cell diameter (px); the image is rescaled by
    ``reference_diameter / diameter``.  Else, with ``auto``, a first segmentation at the image's own
    scale measures the median cell diameter ``d``; only when ``d`` is outside
    ``[min_diameter, max_diameter]`` is the image segmented again, rescaled by
    ``reference_diameter / d`` (the factor kept within ``[1 / max_zoom, max_zoom]``, and enlarging
    by at most ``max_enlarge``).  Labels are always returned at the image's own size.

    ``max_area_diameter`` > 0: cells are also too large when half the area of the segmented cells
    clear of the image's edge lies in cells wider than this
    (:func:`crossct.size.area_weighted_diameter`), the image then rescaled by that size: large
    cells in noise come out as a few big pieces among many fragments, and the fragments keep the
    median small.  ``area_reference_diameter`` > 0: the size those cells are brought to (else
    ``reference_diameter``, the median cell's).
    """

    auto: bool = False
    diameter: float = setting(0.0, ge=0, le=10000)
    reference_diameter: float = setting(30.0, gt=0, le=10000)
    min_diameter: float = setting(20.0, gt=0, le=10000)
    max_diameter: float = setting(60.0, gt=0, le=10000)
    max_zoom: float = setting(4.0, ge=1, le=16)
    # Small cells are enlarged at most this much (and at most max_zoom).  4 in the shipped weights: on
    # val a limit of 2.5 lifts the 10-px H&E nuclei but costs fluorescence nuclei of 11-14 px (model card).
    max_enlarge: float = setting(4.0, ge=1, le=16)
    # 0 (off) in weights tuned before this setting existed, so that they segment as they were measured.
    max_area_diameter: float = setting(0.0, ge=0, le=10000)
    # The area-weighted diameter of long thin cells is far above their width: shrunk until it reads
    # reference_diameter, a 10-px-wide cell is 1 px wide. 0: reference_diameter, as tuned before it existed.
    area_reference_diameter: float = setting(0.0, ge=0, le=10000)

    def _check(self) -> None:
        if not self.min_diameter < self.max_diameter:
            raise SpecError("max_diameter", f"must be above min_diameter ({self.min_diameter}), got {self.max_diameter}")
        if self.max_area_diameter and not self.max_area_diameter > self.max_diameter:
            raise SpecError("max_area_diameter",
                            f"must be 0 (off) or above max_diameter ({self.max_diameter}), got {self.max_area_diameter}")


@dataclass(frozen=True)
class TestTimeConfig(Checked):
    """Test-time augmentation: ``flips`` averages the network's outputs over the image and its
    horizontal, vertical and double flips (4 network passes; thresholds should be tuned with it)."""

    flips: bool = False


# ----------------------------------------------------------------------------- network arguments
# The constructor arguments each architecture may take in model.json (MONAI's names; the network
# is built from them by crossct.nets).  The pipeline feeds 3 channels and reads 5 outputs, in 2-D.
_Sizes = tuple[int, ...]


def _positive_sizes(n_min: int, n_max: int, largest: int) -> Any:
    def check(values: tuple) -> str | None:
        if not n_min <= len(values) <= n_max:
            return f"must hold {n_min} to {n_max} values"
        if not all(1 <= v <= largest for v in values):
            return f"values must be in [1, {largest}]"
        return None

    return check


@dataclass(frozen=True)
class UNetArguments(Checked):
    """MONAI ``UNet`` (``monai.networks.nets.UNet``)."""

    spatial_dims: Literal[2]
    in_channels: Literal[3]
    out_channels: Literal[5]
    channels: _Sizes = setting(check=_positive_sizes(2, 8, 4096))
    strides: _Sizes = setting(check=_positive_sizes(1, 7, 4))
    kernel_size: int | _Sizes = 3
    up_kernel_size: int | _Sizes = 3
    num_res_units: int = setting(0, ge=0, le=8)
    act: str | list[Any] = "PRELU"  # a name, or [name, {arguments}]
    norm: str | list[Any] = "INSTANCE"
    dropout: float = setting(0.0, ge=0, lt=1)
    bias: bool = True
    adn_ordering: str = "NDA"

    def _check(self) -> None:
        if len(self.strides) != len(self.channels) - 1:
            raise SpecError("strides", f"{list(self.strides)} must hold one stride fewer than channels "
                                       f"{list(self.channels)}")


@dataclass(frozen=True)
class SwinUNETRArguments(Checked):
    """MONAI ``SwinUNETR`` (``monai.networks.nets.SwinUNETR``)."""

    spatial_dims: Literal[2]
    in_channels: Literal[3]
    out_channels: Literal[5]
    feature_size: int = setting(24, ge=12, le=768, multiple_of=12)
    patch_size: int = setting(2, ge=1, le=16)
    depths: _Sizes = setting((2, 2, 2, 2), check=_positive_sizes(4, 4, 64))
    num_heads: _Sizes = setting((3, 6, 12, 24), check=_positive_sizes(4, 4, 256))
    window_size: int | _Sizes = 7
    qkv_bias: bool = True
    mlp_ratio: float = setting(4.0, gt=0, le=64)
    norm_name: str | list[Any] = "instance"
    drop_rate: float = setting(0.0, ge=0, lt=1)
    attn_drop_rate: float = setting(0.0, ge=0, lt=1)
    dropout_path_rate: float = setting(0.0, ge=0, lt=1)
    normalize: bool = True
    patch_norm: bool = False
    use_checkpoint: bool = False
    downsample: str = "merging"
    use_v2: bool = False
    # Not MONAI's: the network sees its input average-pooled by this factor and its outputs are
    # upsampled back (crossct.nets.PooledInput); 2 makes a step about 3x cheaper on a CPU.
    input_pool: int = setting(1, ge=1, le=4)


@dataclass(frozen=True)
class UNETRArguments(Checked):
    """MONAI ``UNETR`` (``monai.networks.nets.UNETR``): a fixed input size, ``img_size``."""

    spatial_dims: Literal[2]
    in_channels: Literal[3]
    out_channels: Literal[5]
    img_size: int | _Sizes = setting(check=lambda v: None if all(16 <= int(x) <= 4096 and int(x) % 16 == 0 for x in
                                                                 (v if isinstance(v, tuple) else (v,)))
                                     else "must be a multiple of 16 in [16, 4096]")
    feature_size: int = setting(16, ge=1, le=1024)
    hidden_size: int = setting(768, ge=12, le=8192)
    mlp_dim: int = setting(3072, ge=1, le=32768)
    num_heads: int = setting(12, ge=1, le=128)
    proj_type: Literal["conv", "perceptron"] = "conv"
    norm_name: str | list[Any] = "instance"
    conv_block: bool = True
    res_block: bool = True
    dropout_rate: float = setting(0.0, ge=0, lt=1)
    qkv_bias: bool = False
    save_attn: bool = False

    def _check(self) -> None:
        if self.hidden_size % self.num_heads:
            raise SpecError("hidden_size", f"{self.hidden_size} must be divisible by num_heads ({self.num_heads})")


# Architecture name -> the arguments it takes; crossct.nets builds each (tests check both agree).
# The paper's ResUnet is MONAI's UNet with more residual units (crossct.nets says why).
NETWORK_ARGUMENTS: dict[str, type] = {"unet": UNetArguments, "resunet": UNetArguments, "unetr": UNETRArguments,
                                      "swin_unetr": SwinUNETRArguments}


@dataclass(frozen=True)
class ModelConfig(Checked):
    """The architecture: a registered name plus its constructor arguments (see :mod:`crossct.nets`)."""

    arch: Architecture = setting("unet", required=True)
    kwargs: dict[str, Any] = setting({}, required=True)

    def _check(self) -> None:
        try:
            from_dict(NETWORK_ARGUMENTS[self.arch], self.kwargs)
        except SpecError as exc:
            raise exc.under("kwargs") from None


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
# The cross-teaching partner a 2-core CPU can afford (benchmarks/bench_partner.py): the same four
# Swin stages (depths 2, 2, 2, 2) at half the width, one head per 12 channels, on a 2x pooled input.
SWIN_UNETR_LITE = ModelConfig(
    "swin_unetr",
    {"spatial_dims": 2, "in_channels": 3, "out_channels": 5, "feature_size": 12, "num_heads": [1, 2, 4, 8],
     "input_pool": 2},
)

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _checksums_problem(checksums: dict[str, str]) -> str | None:
    for name, digest in checksums.items():
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            return f"key {name!r} must be a file name beside model.json"
        if not _SHA256.fullmatch(digest):
            return f"key {name!r} must map to a sha256 (64 lowercase hex digits), got {digest!r}"
    return None


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
class ModelSpec(Checked):
    """Architecture + every inference setting; the one object that travels with the weights.

    In JSON only ``model`` is required; a missing section takes its defaults.
    """

    model: ModelConfig = setting(UNET_PAPER, required=True)
    normalize: NormalizeConfig = NormalizeConfig()
    tiling: TilingConfig = TilingConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    size: SizeConfig = SizeConfig()
    test_time: TestTimeConfig = TestTimeConfig()
    output_channels: tuple[str, ...] = OUTPUT_CHANNELS
    # sha256 of the weight files this spec belongs to, by file name; verified at load.
    checksums: dict[str, str] = setting({}, check=_checksums_problem)
    metadata: dict[str, Any] = field(default_factory=dict)
    format_version: int = setting(SPEC_FORMAT_VERSION, ge=1)

    def _check(self) -> None:
        if tuple(self.output_channels) != OUTPUT_CHANNELS:
            raise SpecError("output_channels", f"{list(self.output_channels)} differ from the order this code "
                                               f"understands {list(OUTPUT_CHANNELS)}")
        size = fixed_input_size(self.model)
        if size is not None and size != self.tiling.tile_size:
            raise SpecError("tiling.tile_size", f"{self.tiling.tile_size}, but {self.model.arch} takes {size} x {size} "
                                                f"inputs only (model.kwargs.img_size); set both to the same size")
        if self.format_version > SPEC_FORMAT_VERSION:
            raise SpecError("format_version", f"{self.format_version} is newer than this crossct understands "
                                              f"({SPEC_FORMAT_VERSION}); upgrade crossct")

    def replace(self, **sections: Any) -> "ModelSpec":
        """A copy with whole sections or fields replaced, e.g. ``replace(postprocess=...)``."""
        return dataclasses.replace(self, **sections)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["output_channels"] = list(self.output_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        """Build from parsed JSON; raises :class:`SpecError` naming the first invalid key."""
        return from_dict(cls, d)


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
    """Read a :class:`ModelSpec` from JSON, with errors that name the file and the key."""
    path = Path(path)
    problem = "not a valid CrossCT model spec"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: {problem}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:  # not UTF-8
        raise ValueError(f"{path}: {problem}: not a text file ({exc})") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"{path}: {problem}: nested too deeply to be a model spec") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {problem}: not JSON ({exc})") from None
    try:
        return ModelSpec.from_dict(data)
    except SpecError as exc:
        raise ValueError(f"{path}: {problem}: {exc}") from exc
