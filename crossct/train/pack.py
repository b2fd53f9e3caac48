"""A training pack: every image and label that training needs, in one compact file.

``python -m crossct.train pack --data DIR --out FILE [--budget-mib 44]`` reads a data folder
(``manifest.csv`` + ``unlabeled/<folder>/*``) and writes one ZIP file (members stored, not
deflated: they are compressed already):

- ``pack.json``: format, normalisation, per-source encoding and its measured error;
- ``manifest.csv``: the manifest's columns, ``image`` / ``label`` naming members of the pack;
- ``images/<source>/<name>.png|.webp``: the image *as training holds it in memory*, i.e. after
  percentile normalisation and quantisation to uint8 (:func:`crossct.train.records.load_normalized`),
  grey kept as one channel; in WebP, images of separate markers as stacked grey planes
  (:func:`layout`);
- ``labels/<source>/<name>_label.tiff``: the instance labels, lossless (LZMA TIFF: 20-30 %
  smaller than zlib or PNG on this data);
- ``unlabeled/<folder>/<name>.png|.webp``: unlabelled images, normalised the same way.

Images are stored losslessly (PNG) when everything fits the size budget; otherwise every image is
re-encoded as WebP at the highest quality (one quality for the whole pack) that fits, and
``pack.json`` records the mean and worst absolute error and the PSNR per source.  Training from a
pack runs the same code as from a folder (:mod:`crossct.train.records` reads the pack, as
:class:`~crossct.train.records.Record` s whose ``archive`` is the pack): only the decoding of the
pixels differs.  Labels are exact.

Validation images are also stored normalised: the inference pipeline normalises them once more
(the percentile stretch of an already stretched image is close to the identity; the model card
gives the measured effect on val F1).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from ..config import NormalizeConfig
from .records import (PACK_FORMAT, decode_image, default_data_dir, folder_unlabelled_records, load_normalized, read_label_file,
                      read_manifest)

__all__ = ["write_pack", "layout", "pack_main"]

logger = logging.getLogger(__name__)

# WebP qualities tried, best first, when the lossless pack is over budget.
QUALITIES = (98, 95, 92, 90, 87, 85, 82, 80, 75, 70, 60, 50)


# ----------------------------------------------------------------------------- encoding
def _encode_png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def layout(image: np.ndarray) -> str:
    """How a lossy codec should see an (H, W, C) image: ``gray`` (C = 1), ``color`` (3 correlated
    channels, e.g. H&E: WebP's colour mode, chroma at half resolution) or ``planes`` (3 channels
    that are separate stains or markers: each coded as a grey image at full resolution, since
    subsampled chroma would blur one marker into another; measured on the Cellpose-style
    two-marker images at quality 85: PSNR 35.4 -> 44.1 dB)."""
    if image.shape[2] == 1:
        return "gray"
    flat = image.reshape(-1, image.shape[2]).astype(np.float32)
    spread = flat.std(axis=0)
    if (spread < 1.0).any():  # a constant channel (e.g. an empty blue one): markers, not colour
        return "planes"
    corr = np.corrcoef(flat, rowvar=False)
    return "color" if corr[np.triu_indices(image.shape[2], 1)].min() > 0.9 else "planes"


def _encode_webp(image: np.ndarray, quality: int) -> bytes:
    if layout(image) == "planes":  # channels stacked vertically, one grey image
        image = np.concatenate([image[..., c] for c in range(image.shape[2])], axis=0)
    ok, buf = cv2.imencode(".webp", np.ascontiguousarray(image), [cv2.IMWRITE_WEBP_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("WebP encoding failed")
    return buf.tobytes()


def _encode_labels(labels: np.ndarray) -> bytes:
    import tifffile

    dtype = np.uint16 if labels.max(initial=0) < 2**16 else np.uint32
    buf = io.BytesIO()
    tifffile.imwrite(buf, labels.astype(dtype, copy=False), compression="lzma")
    return buf.getvalue()


# ----------------------------------------------------------------------------- writing
def _entries(data_dir: Path) -> list[dict[str, Any]]:
    """Every labelled row of the manifest and every unlabelled image, in a stable order."""
    entries = []
    for r in read_manifest(data_dir / "manifest.csv"):
        entries.append({"record": r, "image": f"images/{r.source}/{r.name}", "label": f"labels/{r.source}/{r.name}_label.tiff"})
    for r in folder_unlabelled_records(data_dir):
        entries.append({"record": r, "image": f"unlabeled/{r.source}/{r.name}", "label": None})
    return entries


def write_pack(data_dir: str | os.PathLike, out: str | os.PathLike, budget_mib: float = 44.0,
               normalize: NormalizeConfig = NormalizeConfig(), lossless: bool | None = None) -> dict[str, Any]:
    """Write the training pack of ``data_dir`` to ``out`` (atomically) and return its ``pack.json``.

    Parameters
    ----------
    data_dir : folder with ``manifest.csv`` (and optionally ``unlabeled/<folder>/``).
    out : the pack file to write.
    budget_mib : largest pack size; images are re-encoded (WebP) only when the lossless pack is larger.
    normalize : the normalisation applied before storing (the training default).
    lossless : force lossless (True) or lossy (False) images; default: lossless when it fits.
    """
    data_dir, out = Path(data_dir), Path(out)
    entries = _entries(data_dir)
    if not entries:
        raise ValueError(f"{data_dir}: no images found (manifest.csv and unlabeled/ are empty)")
    budget = int(budget_mib * 2**20)
    labels: dict[str, bytes] = {}
    images: list[np.ndarray] = []
    for e in entries:
        r = e["record"]
        images.append(np.array(load_normalized(r.image, normalize)))
        if e["label"]:
            labels[e["label"]] = _encode_labels(read_label_file(r.label))
    label_bytes = sum(len(b) for b in labels.values())
    png = [_encode_png(im) for im in images]
    overhead = 64 * 1024 + 200 * len(entries)  # manifest, pack.json, ZIP headers
    quality = None
    encoded = png
    if lossless is False or (lossless is None and label_bytes + sum(map(len, png)) + overhead > budget):
        for quality in QUALITIES:
            encoded = [_encode_webp(im, quality) for im in images]
            total = label_bytes + sum(map(len, encoded)) + overhead
            logger.info("WebP quality %d: %.1f MiB", quality, total / 2**20)
            if total <= budget:
                break
        else:
            raise ValueError(f"even WebP quality {QUALITIES[-1]} does not fit {budget_mib} MiB; raise --budget-mib")
    elif lossless is None:
        logger.info("lossless pack fits: %.1f MiB", (label_bytes + sum(map(len, png)) + overhead) / 2**20)
    suffix = ".png" if quality is None else ".webp"
    errors: dict[str, dict[str, list[float]]] = {}
    rows = []
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for e, image, data in zip(entries, images, encoded):
                r = e["record"]
                member = e["image"] + suffix
                zf.writestr(member, data)
                image_layout = layout(image) if quality is not None else "color"
                decoded = decode_image(data, image.shape[2], image_layout).astype(np.float64)
                diff = np.abs(decoded - image)
                mse = float(np.mean(diff ** 2))
                err = errors.setdefault(r.source, {"mean_abs": [], "max_abs": [], "psnr": []})
                err["mean_abs"].append(float(diff.mean()))
                err["max_abs"].append(float(diff.max()))
                err["psnr"].append(99.0 if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse)))
                if e["label"]:
                    zf.writestr(e["label"], labels[e["label"]])
                rows.append({"source": r.source, "name": r.name, "image": member, "label": e["label"] or "",
                             "split": r.split if e["label"] else "unlabelled", "channels": image.shape[2], "layout": image_layout,
                             "height": image.shape[0], "width": image.shape[1]})
            manifest = io.StringIO()
            writer = csv.DictWriter(manifest, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            zf.writestr("manifest.csv", manifest.getvalue())
            info = {
                "format": PACK_FORMAT,
                "normalize": asdict(normalize),
                "images": "png (lossless)" if quality is None else f"webp quality {quality}",
                "webp_quality": quality,
                "counts": {s: sum(1 for row in rows if row["source"] == s) for s in sorted({row["source"] for row in rows})},
                "error_uint8": {s: {"mean_abs": round(float(np.mean(v["mean_abs"])), 3),
                                    "max_abs": round(float(np.max(v["max_abs"])), 1),
                                    "psnr_db": round(float(np.mean(v["psnr"])), 2)} for s, v in sorted(errors.items())},
                "source": str(data_dir),
            }
            zf.writestr("pack.json", json.dumps(info, indent=2) + "\n")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    info["bytes"] = out.stat().st_size
    return info


def pack_main(argv: Iterable[str] | None = None) -> int:
    """``python -m crossct.train pack --data DIR --out FILE``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m crossct.train pack", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, help="data folder with manifest.csv (default: $CROSSCT_DATA or ../shared/data)")
    p.add_argument("--out", required=True, help="pack file to write")
    p.add_argument("--budget-mib", type=float, default=44.0,
                   help="largest pack size; images are re-encoded as WebP only when the lossless pack is larger")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--lossless", dest="lossless", action="store_true", default=None, help="always PNG")
    group.add_argument("--lossy", dest="lossless", action="store_false", help="always WebP (quality by budget)")
    args = p.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    data = Path(args.data) if args.data else default_data_dir()
    if not (data / "manifest.csv").is_file():
        p.error(f"{data}/manifest.csv not found: pass --data DIR or set CROSSCT_DATA")
    info = write_pack(data, args.out, args.budget_mib, lossless=args.lossless)
    print(json.dumps(info, indent=2))
    print(f"wrote {args.out}: {info['bytes'] / 2**20:.1f} MiB, images {info['images']}")
    return 0
