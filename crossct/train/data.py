"""Training data: in-memory datasets of augmented crops, source-balanced sampling.

Data flow: :class:`~crossct.train.records.Record` s (of a manifest CSV, paired folders or a
training pack: :mod:`crossct.train.records`) -> :class:`LabelledDataset` (images
read and normalised once, targets from the :class:`~crossct.train.targets.TargetCache`, all held in
memory) -> one augmented ``crop x crop`` item per index, drawn with an RNG keyed by
``(seed, epoch, index)`` -> a sampler whose weights keep the largest source from drowning the small
ones (:func:`source_weights`).

Memory: normalised images and distance maps are kept as ``uint8`` (value / 255: steps of 0.004, far
finer than the intensity jitter and than any network's regression error; converting uint8 is also
several times faster than float16 per crop), images with a single channel when the three normalised
channels are equal, class maps as ``uint8``, and the instance labels as ``uint16`` (zoomed crops
recompute their class map from them): 6 bytes per pixel for a grey image (the 685 training pairs of
``../shared/data``: 1,523 MB in all). Images used by both a labelled and an unlabelled dataset are
held once (shared through the weak-value store of :func:`~crossct.train.records.load_normalized`).

Scale jitter (over cell sizes, see :class:`AugmentConfig`): the window cut from the image is
``crop / scale`` pixels and is resized to ``crop``:
the image and the distance maps linearly, the class map with (centre-aligned) nearest neighbour.
Recomputing the targets from a resized *instance* label would be exact but costs tens of ms to a
second per item; the distance maps are normalised per cell, hence nearly scale invariant, so
interpolating them is close.  The class map of a zoomed window is recomputed from the window's
zoomed instance labels (about 3 ms), so its boundary ring is 3 px wide at every zoom.

Why plain NumPy / OpenCV rather than MONAI's ``Rand*`` transforms: these draw from a random state
owned by each transform object, so the augmentation of an item would depend on the worker and the
order of calls, not on ``(seed, epoch, index)`` alone (needed to resume a run on the same samples);
and the few 2-D operations here (window, resize, flip/rot90, contrast, gamma, noise, blur) take
about 3 ms per 256 x 256 item in all, without MetaTensor bookkeeping.  Items are plain dicts of
tensors, so ``torch.utils.data.DataLoader`` (or ``monai.data.DataLoader``) batches them as is.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from ..config import NormalizeConfig
from ..size import median_diameter, resize_labels
from .records import Record, quantise, read_record_label, record_hw, record_image
from .targets import TargetCache, class_map, remove_small_objects

__all__ = [
    "AugmentConfig",
    "LabelledDataset",
    "UnlabelledDataset",
    "source_weights",
    "balanced_sampler",
    "collate",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation of labelled crops (each step applied with its probability).

    Geometric: with probability ``p_scale`` a zoom drawn log-uniformly so that the image's median
    cell diameter ``d`` lands in ``diameter`` (px), the zoom itself kept inside ``scale``:
    ``zoom in [max(scale[0], diameter[0] / d), min(scale[1], diameter[1] / d)]`` (a cell size the
    data lacks is seen at every size the network has to handle: 8 px DSB nuclei zoomed in, 100 px
    Coelho nuclei zoomed out); then flips and 90-degree rotations (always, 8 orientations equally
    likely).  Photometric, on the normalised [0, 1] image: for colour images (three channels) with
    probability ``p_colour`` a gain drawn log-uniformly in ``colour_gain`` and a shift in
    +-``colour_shift`` per channel (stain and white-balance differences between labs that the
    per-channel percentile normalisation leaves); then, the same for all channels: contrast
    ``x -> mean + c (x - mean)`` and brightness ``+ b``; gamma; Gaussian noise of standard
    deviation up to ``noise_std``; Gaussian blur with sigma in ``blur_sigma``.  The result is
    clipped to [0, 1], the range the network sees at inference.
    """

    scale: tuple[float, float] = (0.25, 4.0)
    diameter: tuple[float, float] = (8.0, 80.0)
    p_scale: float = 0.5
    contrast: tuple[float, float] = (0.75, 1.25)
    brightness: tuple[float, float] = (-0.1, 0.1)
    p_contrast: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.5)
    p_gamma: float = 0.3
    noise_std: float = 0.05
    p_noise: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    p_blur: float = 0.2
    # Off by default: drawing for it would change the random stream of every run trained before it.
    colour_gain: tuple[float, float] = (0.8, 1.25)
    colour_shift: float = 0.05
    p_colour: float = 0.0

    def __post_init__(self) -> None:
        for name in ("scale", "diameter", "contrast", "gamma", "blur_sigma", "colour_gain"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range 0 < low <= high, got {(lo, hi)}")
        for name in ("p_scale", "p_contrast", "p_gamma", "p_noise", "p_blur", "p_colour"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")

    def zoom_range(self, diameter: float) -> tuple[float, float]:
        """Zoom range for an image whose median cell diameter is ``diameter`` px (see the class
        docstring).  Without cells (NaN) the zoom spans ``scale`` restricted to [0.5, 2]; when no
        zoom inside ``scale`` reaches the diameter range, the one closest to it."""
        if not math.isfinite(diameter) or diameter <= 0:
            return max(self.scale[0], 0.5), min(self.scale[1], 2.0)
        lo = max(self.scale[0], self.diameter[0] / diameter)
        hi = min(self.scale[1], self.diameter[1] / diameter)
        if lo > hi:  # cells too small (largest zoom) or too large (smallest zoom) to reach the range
            lo = hi = self.scale[1] if self.diameter[0] / diameter > self.scale[1] else self.scale[0]
        return lo, hi


def _offset(rng: np.random.Generator, size: int, window: int) -> int:
    """Top-left of a window along one axis; negative when the image is smaller (it is then
    placed at a random position inside the zero-padded window)."""
    if size >= window:
        return int(rng.integers(0, size - window + 1))
    return -int(rng.integers(0, window - size + 1))


def _window(array: np.ndarray, y0: int, x0: int, size: int) -> np.ndarray:
    """``array[y0:y0+size, x0:x0+size]`` with zeros outside the array (a view when inside)."""
    height, width = array.shape[:2]
    if y0 >= 0 and x0 >= 0 and y0 + size <= height and x0 + size <= width:
        return array[y0:y0 + size, x0:x0 + size]
    out = np.zeros((size, size, *array.shape[2:]), array.dtype)
    ys, ye = max(y0, 0), min(y0 + size, height)
    xs, xe = max(x0, 0), min(x0 + size, width)
    if ys < ye and xs < xe:
        out[ys - y0:ye - y0, xs - x0:xe - x0] = array[ys:ye, xs:xe]
    return out


def _resize(array: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    """Resize (h, w[, c]) to (size, size[, c]); cv2 drops a trailing axis of 1, which is restored."""
    if array.shape[0] == size and array.shape[1] == size:
        return array
    out = cv2.resize(np.ascontiguousarray(array), (size, size), interpolation=interpolation)
    return out.reshape(size, size, *array.shape[2:])


def _orient(array: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """One of the 8 orientations of the last two axes (a view)."""
    if flip:
        array = array[..., ::-1]
    return np.rot90(array, k, axes=(-2, -1))


def _finish(array: np.ndarray, k: int, flip: bool, dtype: type) -> np.ndarray:
    """Orient a (..., h, w) array and make it contiguous in ``dtype``, in one copy.

    Orienting last, on channel-first planes, keeps the transposing copy cache friendly (rotating
    channel-last arrays costs several times more).
    """
    return np.ascontiguousarray(_orient(array, k, flip), dtype=dtype)


def _photometric(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Intensity jitter of a float32 (h, w, c) image in [0, 1]; returns a new array."""
    out = image.astype(np.float32, copy=True)
    if cfg.p_colour > 0 and out.shape[-1] == 3 and rng.random() < cfg.p_colour:
        low, high = np.log(cfg.colour_gain)
        gain = np.exp(rng.uniform(low, high, 3)).astype(np.float32)
        out = out * gain + rng.uniform(-cfg.colour_shift, cfg.colour_shift, 3).astype(np.float32)
    if rng.random() < cfg.p_contrast:
        mean = float(out.mean())
        c = rng.uniform(*cfg.contrast)
        out = (out - mean) * np.float32(c) + np.float32(mean + rng.uniform(*cfg.brightness))
    if rng.random() < cfg.p_gamma:
        gamma = math.exp(rng.uniform(math.log(cfg.gamma[0]), math.log(cfg.gamma[1])))
        out = np.power(np.clip(out, 0.0, 1.0), np.float32(gamma))
    if rng.random() < cfg.p_blur:
        sigma = rng.uniform(*cfg.blur_sigma)
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=sigma, sigmaY=sigma,
                               borderType=cv2.BORDER_REFLECT_101).reshape(out.shape)
    if rng.random() < cfg.p_noise:
        std = rng.uniform(0.0, cfg.noise_std)
        out = out + rng.standard_normal(out.shape, dtype=np.float32) * np.float32(std)
    return np.clip(out, 0.0, 1.0, out=out)


def _to_chw3(image: np.ndarray, k: int = 0, flip: bool = False, scale: float = 1.0) -> torch.Tensor:
    """(h, w, 1 or 3) image -> oriented (3, h, w) contiguous float32 tensor of ``image * scale``
    (grey repeated).  NumPy throughout: torch's intra-op threads slow small ops under CPU contention."""
    chw = _finish(np.moveaxis(image, -1, 0), k, flip, np.float32)
    if scale != 1.0:
        chw *= np.float32(scale)
    if chw.shape[0] == 1:
        chw = np.repeat(chw, 3, axis=0)
    return torch.from_numpy(chw)


class _EpochSeeded(Dataset):
    """Items are a pure function of ``(seed, epoch, index)``; subclasses define :meth:`sample`."""

    seed: int
    epoch: int

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random crops :meth:`__getitem__` returns.

        With ``DataLoader(persistent_workers=True)`` the workers keep their copy: call this before
        the loader's iterator is created, or use non-persistent workers.
        """
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator of item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = int(index) % len(self)
        return self.sample(index, self.rng(index))


def _check_common(records: Sequence[Record], crop: int) -> None:
    if not records:
        raise ValueError("no records: the dataset would be empty")
    if int(crop) < 1:
        raise ValueError(f"crop must be a positive number of pixels, got {crop}")


class LabelledDataset(_EpochSeeded):
    """Augmented crops of labelled images with their targets, all held in memory.

    Parameters
    ----------
    records : labelled :class:`Record` s.
    cache : target cache; missing targets are computed on construction (see
        :func:`crossct.train.targets.prepare_all` to do it in parallel beforehand).
    crop : side of the square crops.
    augment : scale jitter, flips/rot90 and photometric jitter (``False``: a random window only).
    normalize : image normalisation.
    seed : base of every item's RNG, ``np.random.default_rng([seed, epoch, index])``.
    augmentation : probabilities and ranges of the augmentation.

    Items
    -----
    ``{"image": (3, crop, crop) float32 in [0, 1], "classes": (crop, crop) int64 in {0, 1, 2},
    "distances": (2, crop, crop) float32 in [0, 1], "source": str}``.  Images smaller than the
    window are zero-padded (class 0, distance 0) at a random position.

    Attributes
    ----------
    nbytes : memory held by the images and targets, in bytes.
    shapes : (H, W) of every image.
    """

    def __init__(self, records: Sequence[Record], cache: TargetCache, crop: int = 256, augment: bool = True,
                 normalize: NormalizeConfig = NormalizeConfig(), seed: int = 0,
                 augmentation: AugmentConfig = AugmentConfig()) -> None:
        _check_common(records, crop)
        unlabelled = [r.name for r in records if r.label is None]
        if unlabelled:
            raise ValueError(f"{len(unlabelled)} record(s) have no label, e.g. {unlabelled[:3]}; "
                             "use UnlabelledDataset for them")
        self.records = list(records)
        self.crop, self.augment, self.seed, self.epoch = int(crop), bool(augment), int(seed), 0
        self.augmentation = augmentation
        self.images: list[np.ndarray] = []
        self.classes: list[np.ndarray] = []
        # (H, W, 2) uint8, value / 255: channel-last for windowing and resizing.
        self.distances: list[np.ndarray] = []
        # Cleaned instance labels (the class map of a zoomed window is recomputed from them, so the
        # boundary ring stays 3 px wide at every zoom) and their median cell diameter (px), the
        # scale augmentation's reference.
        self.labels: list[np.ndarray] = []
        self.diameters: list[float] = []
        start, misses = time.perf_counter(), cache.misses
        t_log = start
        for i, record in enumerate(self.records):
            if time.perf_counter() - t_log > 15:  # computing targets takes a while on first use
                logger.info("labelled dataset: %d of %d images read, %d targets computed so far", i,
                            len(self.records), cache.misses - misses)
                t_log = time.perf_counter()
            image = record_image(record, normalize)
            raw_labels, label_bytes = read_record_label(record)
            classes, distances = cache.get(record.label, label_bytes)
            labels = remove_small_objects(raw_labels)
            self.labels.append(labels.astype(np.uint16 if labels.max(initial=0) < 2**16 else np.uint32))
            self.diameters.append(median_diameter(labels))
            if classes.shape != image.shape[:2]:
                raise ValueError(f"{record.label}: label shape {classes.shape} does not match image "
                                 f"{record.image} shape {image.shape[:2]}")
            self.images.append(image)
            self.classes.append(np.ascontiguousarray(classes, np.uint8))
            self.distances.append(quantise(np.moveaxis(distances, 0, -1)))
        self.shapes = [c.shape for c in self.classes]
        logger.info("labelled dataset: %d images, %.0f MB in memory, %d targets computed, %.1f s",
                    len(self.records), self.nbytes / 2**20, cache.misses - misses, time.perf_counter() - start)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for arrays in (self.images, self.classes, self.distances, self.labels) for a in arrays)

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """Item ``index`` cropped and augmented with ``rng`` (see the class docstring)."""
        image, classes, distances = self.images[index], self.classes[index], self.distances[index]
        cfg, crop = self.augmentation, self.crop
        scale = 1.0
        if self.augment and rng.random() < cfg.p_scale:
            lo, hi = cfg.zoom_range(self.diameters[index])
            scale = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        window = max(1, int(round(crop / scale)))
        y0, x0 = _offset(rng, classes.shape[0], window), _offset(rng, classes.shape[1], window)
        image_w = _resize(_window(image, y0, x0, window), crop, cv2.INTER_LINEAR)
        if window == crop:
            classes_w = _window(classes, y0, x0, window)
        else:
            # Classes of the zoomed labels, not zoomed classes: the boundary ring keeps its 3 px
            # (zooming the class map by 4 would teach a 12 px ring).  Centre-aligned nearest
            # neighbour, as INTER_LINEAR samples the image.
            classes_w = class_map(resize_labels(_window(self.labels[index], y0, x0, window), (crop, crop)))
        distances_w = _resize(_window(distances, y0, x0, window), crop, cv2.INTER_LINEAR)
        image_f = image_w.astype(np.float32) * np.float32(1.0 / 255.0)
        k, flip = 0, False
        if self.augment:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            # Photometric jitter commutes with flips/rotations (pointwise, isotropic blur, noise
            # i.i.d. per pixel), so the orientation is applied last, in the copy to the output layout.
            image_f = _photometric(image_f, rng, cfg)
        distances_out = _finish(np.moveaxis(distances_w, -1, 0), k, flip, np.float32)
        distances_out *= np.float32(1.0 / 255.0)
        return {
            "image": _to_chw3(image_f, k, flip),
            "classes": torch.from_numpy(_finish(classes_w, k, flip, np.int64)),
            "distances": torch.from_numpy(distances_out),
            "source": self.records[index].source,
        }


class UnlabelledDataset(_EpochSeeded):
    """Weakly augmented crops (random window, flips, 90-degree rotations) of unlabelled images.

    Parameters
    ----------
    records : :class:`Record` s (labels, if any, are ignored).
    crop, augment, normalize, seed : as for :class:`LabelledDataset`.

    Items
    -----
    ``{"image": (3, crop, crop) float32 in [0, 1]}``.  For cross-teaching, feed the *same* item
    tensor to both networks: the augmentation is applied once, here, never per network.
    """

    def __init__(self, records: Sequence[Record], crop: int = 256, augment: bool = True,
                 normalize: NormalizeConfig = NormalizeConfig(), seed: int = 0) -> None:
        _check_common(records, crop)
        self.records = list(records)
        self.crop, self.augment, self.seed, self.epoch = int(crop), bool(augment), int(seed), 0
        start = time.perf_counter()
        self.images = [record_image(r, normalize) for r in self.records]
        self.shapes = [im.shape[:2] for im in self.images]
        logger.info("unlabelled dataset: %d images, %.0f MB (shared with other datasets where the files are "
                    "the same), %.1f s", len(self.records), self.nbytes / 2**20, time.perf_counter() - start)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.images)

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """Item ``index`` cropped and (weakly) augmented with ``rng``."""
        image = self.images[index]
        y0, x0 = _offset(rng, image.shape[0], self.crop), _offset(rng, image.shape[1], self.crop)
        image_w = _window(image, y0, x0, self.crop)
        k, flip = (int(rng.integers(4)), bool(rng.integers(2))) if self.augment else (0, False)
        return {"image": _to_chw3(image_w, k, flip, scale=1.0 / 255.0)}


# ----------------------------------------------------------------------------- sampling
def source_weights(records: Sequence[Record], alpha: float = 0.5, *, shapes: Sequence[tuple[int, int]] | None = None,
                   crop: int = 256, max_area_factor: float = 4.0) -> np.ndarray:
    """Sampling weight of every record, so that no source drowns the others.

    ``w = n_source ** -alpha * clip(H * W / crop**2, 1, max_area_factor)``: with ``alpha = 0`` every
    image is equally likely, with ``alpha = 1`` every source is; a source's share grows as
    ``n_source ** (1 - alpha)``.  The area factor lets large images yield more crops (an image no
    larger than a crop counts as one).

    Parameters
    ----------
    records : the records sampled from.
    alpha : balancing exponent, in [0, 1].
    shapes : (H, W) of every image (default: read from the file headers).
    crop : training crop side.
    max_area_factor : cap of the area factor.

    Returns
    -------
    (N,) float64 weights summing to 1.
    """
    if not records:
        raise ValueError("no records to weight")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if max_area_factor < 1.0:
        raise ValueError(f"max_area_factor must be >= 1, got {max_area_factor}")
    if shapes is None:
        shapes = [record_hw(r) for r in records]
    if len(shapes) != len(records):
        raise ValueError(f"{len(shapes)} shapes for {len(records)} records")
    counts: dict[str, int] = {}
    for r in records:
        counts[r.source] = counts.get(r.source, 0) + 1
    n_source = np.array([counts[r.source] for r in records], np.float64)
    area = np.array([float(h) * float(w) for h, w in shapes], np.float64) / float(crop) ** 2
    weights = n_source ** -alpha * np.clip(area, 1.0, max_area_factor)
    return weights / weights.sum()


def balanced_sampler(records: Sequence[Record], num_samples: int, alpha: float = 0.5, seed: int = 0,
                     **weight_options: Any) -> WeightedRandomSampler:
    """A sampler of record indices, with replacement, weighted by :func:`source_weights`.

    Parameters
    ----------
    records : the dataset's records (same order as the dataset).
    num_samples : indices per pass (one "epoch").
    alpha : balancing exponent (see :func:`source_weights`).
    seed : seed of the sampler's own generator (global torch RNG untouched).
    **weight_options : ``shapes``, ``crop``, ``max_area_factor`` of :func:`source_weights`.
    """
    weights = source_weights(records, alpha, **weight_options)
    generator = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.float64), int(num_samples),
                                 replacement=True, generator=generator)


# ----------------------------------------------------------------------------- batching
def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack dataset items into a batch: tensors gain a leading batch axis, strings become lists.

    Stacks with NumPy, in one thread: with the machine's cores busy (the network's own intra-op
    threads, other jobs), ``torch.stack`` on 2 threads was measured at ~80-300 ms for a batch of
    8 crops of 256 x 256 against ~2 ms single-threaded.  Usable as a ``DataLoader`` ``collate_fn``.

    Parameters
    ----------
    items : dicts with the same keys, e.g. from :class:`LabelledDataset`.

    Returns
    -------
    dict: ``(B, ...)`` CPU tensors, lists for non-array values.
    """
    if not items:
        raise ValueError("cannot collate an empty list of items")
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], (torch.Tensor, np.ndarray)):
            arrays = [v.numpy() if isinstance(v, torch.Tensor) else v for v in values]
            batch[key] = torch.from_numpy(np.stack(arrays))
        else:
            batch[key] = values
    return batch
