"""Shared fixtures: tiny exported weights, synthetic images and synthetic network outputs.

Everything is generated on the fly from fixed seeds; no test needs data from outside the repository.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- weights


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A weights folder (model.onnx + model.pt + model.json) for the tiny untrained U-Net, fixed seed."""
    import torch

    from crossct.export import export_weights, tiny_spec
    from crossct.nets import build_network

    out = tmp_path_factory.mktemp("tiny_weights")
    torch.manual_seed(0)
    spec = tiny_spec()
    export_weights(build_network(spec.model).state_dict(), spec, out)
    return out


@pytest.fixture(scope="session")
def onnx_predictor(tiny_weights):
    from crossct.predictors import load_predictor

    return load_predictor(tiny_weights, backend="onnx", device="cpu")


# --------------------------------------------------------------------------- images


def cells_image(height: int = 96, width: int = 128, n_cells: int = 6, seed: int = 0,
                dtype: type = np.uint8) -> np.ndarray:
    """(H, W) fluorescence-like image: bright Gaussian blobs on a dark, slightly noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = np.zeros((height, width), np.float64)
    for _ in range(n_cells):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(4, 10)
        image += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    image = np.clip(image, 0, 1) * 0.9 + rng.uniform(0, 0.05, image.shape)
    if np.issubdtype(dtype, np.integer):
        return (image * np.iinfo(dtype).max).astype(dtype)
    return image.astype(dtype)


def training_folders(root: Path, n_train: int = 4, val_size: tuple[int, int] = (96, 128)) -> dict:
    """Synthetic train / val / unlabelled image folders under ``root``, as training settings
    (``images_dir``, ``labels_dir``, ``val_images_dir``, ``val_labels_dir``, ``unlabelled``, ``cache_dir``)."""
    from crossct.synthetic import write_synthetic_dataset

    images, labels = write_synthetic_dataset(root / "train", n_images=n_train, size=(96, 128), seed=0)
    val_images, val_labels = write_synthetic_dataset(root / "val", n_images=2, size=val_size, seed=100)
    unlabelled, _ = write_synthetic_dataset(root / "unlabelled", n_images=2, size=(96, 128), seed=200)
    return {"images_dir": str(images), "labels_dir": str(labels), "val_images_dir": str(val_images),
            "val_labels_dir": str(val_labels), "unlabelled": (str(unlabelled),), "cache_dir": str(root / "cache")}


def manifest_folder(synthetic: dict, root: Path) -> Path:
    """A data folder with manifest.csv (the layout of ../shared/data) naming the synthetic images where they are."""
    rows = []
    for split, images, labels in (("train", synthetic["images_dir"], synthetic["labels_dir"]),
                                  ("val", synthetic["val_images_dir"], synthetic["val_labels_dir"])):
        for image in sorted(Path(images).iterdir()):
            label = next(Path(labels).glob(image.stem + "*"))
            rows.append({"source": "synthetic", "name": image.stem, "image": str(image), "label": str(label),
                         "split": split})
    root.mkdir(parents=True)
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write an (H, W) or (H, W, C) RGB(A) array as PNG (byte-exact; handles non-ASCII names)."""
    import cv2

    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] >= 3:
        array = array[:, :, [2, 1, 0, *range(3, array.shape[2])]]  # cv2 encodes BGR(A)
    ok, data = cv2.imencode(".png", array)
    assert ok
    Path(path).write_bytes(data.tobytes())
    return Path(path)


def write_image(path: Path, array: np.ndarray) -> Path:
    """Write with the encoder that matches the suffix (RGB order in, RGB order in the file)."""
    import cv2
    import tifffile

    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        tifffile.imwrite(path, array)
        return path
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] >= 3:
        array = array[:, :, [2, 1, 0, *range(3, array.shape[2])]]
    ok, data = cv2.imencode(path.suffix, array)
    assert ok
    path.write_bytes(data.tobytes())
    return path


# --------------------------------------------------------------------------- labels and network outputs


def two_touching_disks(height: int = 64, width: int = 80, radius: int = 14, distance: int = 26) -> np.ndarray:
    """(H, W) int32 labels: two disks whose centres are ``distance`` < 2 * radius apart, split on the midline."""
    yy, xx = np.mgrid[:height, :width]
    cy = height // 2
    d1 = np.hypot(yy - cy, xx - (width // 2 - distance // 2))
    d2 = np.hypot(yy - cy, xx - (width // 2 + distance // 2))
    labels = np.zeros((height, width), np.int32)
    labels[d1 <= radius] = 1
    labels[(d2 <= radius) & ((d2 < d1) | (d1 > radius))] = 2
    return labels


def outputs_from_labels(labels: np.ndarray) -> np.ndarray:
    """(5, H, W) float32 "perfect network" outputs for instance ``labels``, as the training targets define them.

    0-2: one-hot background / interior / boundary (inner label boundaries);
    3: cell distance, the distance transform of each cell normalised to 1 at its centre;
    4: neighbour distance, 1 where a cell touches another, falling to 0 one radius away.
    """
    from skimage.segmentation import find_boundaries

    out = np.zeros((5,) + labels.shape, np.float32)
    fg = labels > 0
    boundary = find_boundaries(labels, mode="inner") & fg
    out[0], out[1], out[2] = ~fg, fg & ~boundary, boundary
    for value in np.unique(labels[fg]):
        cell = labels == value
        dist = ndi.distance_transform_edt(cell)
        out[3][cell] = dist[cell] / dist.max()
        others = fg & ~cell
        if others.any():
            to_other = ndi.distance_transform_edt(~others)[cell]
            out[4][cell] = np.clip(1 - to_other / max(dist.max(), 1), 0, 1)
    return out


def squares(scale: int) -> np.ndarray:
    """Eight 10x10 cells and one 4x4 speck (16 % of their area), all sides times ``scale``."""
    labels = np.zeros((30, 70), np.int32)
    for i, (y, x) in enumerate(((y, x) for y in (2, 16) for x in (2, 16, 30, 44)), 1):
        labels[y:y + 10, x:x + 10] = i * 3
    labels[8:12, 60:64] = 40
    return np.kron(labels, np.ones((scale, scale), np.int32))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# --------------------------------------------------------------------------- subprocess


class CountingPredictor:
    """A predictor that counts the tiles its network really runs (``tiles``)."""

    def __init__(self, inner) -> None:
        self.inner, self.tiles = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, batch):
        self.tiles += len(batch)
        return self.inner.predict(batch)


def run_python(args: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` in the repository with it on the path; text output captured."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"}
    env.pop("CROSSCT_WEIGHTS", None)
    env.update(kwargs.pop("env", {}))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def run_predict(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return run_python([str(REPO / "predict.py"), *args], **kwargs)
