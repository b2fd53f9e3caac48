"""Training records: which images and labels there are, and reading them from a folder or a pack.

The one place that reads training data from disk, below targets, datasets and the pack writer:

- which records there are: a manifest CSV (:func:`read_manifest`), paired ``images/`` and label
  folders (:func:`paired_folder_records`), folders of unlabelled images
  (:func:`unlabelled_records`), or a training pack (:func:`open_pack`; the file and its format are
  written by :mod:`crossct.train.pack`); :func:`data_records` takes a data folder or a pack;
- reading a record, wherever it lives: its label (:func:`read_record_label`), its image as the
  inference pipeline takes it (:func:`read_record_image`), or normalised and quantised as training
  holds it in memory (:func:`record_image`, :func:`load_normalized`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import struct
import threading
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from ..config import NormalizeConfig
from ..io import image_shape, list_images, output_name, read_image
from ..normalize import normalize_image

__all__ = [
    "Record",
    "default_data_dir",
    "read_manifest",
    "paired_folder_records",
    "unlabelled_records",
    "folder_unlabelled_records",
    "read_label_file",
    "PACK_FORMAT",
    "is_pack",
    "decode_image",
    "Pack",
    "open_pack",
    "data_records",
    "read_record_label",
    "read_record_image",
    "load_normalized",
    "quantise",
    "record_image",
    "record_hw",
]

logger = logging.getLogger(__name__)

PACK_FORMAT = "crossct-pack-1"


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Record:
    """One training image.

    Attributes
    ----------
    image : image file.
    label : instance label file (``None`` for unlabelled data).
    source : data set it comes from (the unit of balanced sampling).
    name : short identifier for logs.
    split : ``"train"``, ``"val"``, ``"unlabelled"``, ...
    archive : the training pack (:mod:`crossct.train.pack`) holding ``image`` and ``label`` as
        members, or ``None`` for files.
    """

    image: Path
    label: Path | None
    source: str
    name: str
    split: str = "train"
    archive: Path | None = None


def default_data_dir() -> Path:
    """``$CROSSCT_DATA``, else ``../shared/data`` beside the repository."""
    env = os.environ.get("CROSSCT_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


_MANIFEST_COLUMNS = ("image", "label", "source")


def read_manifest(csv_path: str | os.PathLike, split: str | None = None) -> list[Record]:
    """Records of a manifest CSV.

    Parameters
    ----------
    csv_path : CSV with at least the columns ``image``, ``label``, ``source`` (and ``split`` when
        filtering; ``name`` optional).  Paths are relative to the CSV's folder; an empty ``label``
        cell means unlabelled.
    split : keep only rows of this split (``None``: all rows).

    Returns
    -------
    list of :class:`Record`, in file order.
    """
    csv_path = Path(csv_path)
    base = csv_path.parent
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        missing = [c for c in (*_MANIFEST_COLUMNS, *(("split",) if split is not None else ())) if c not in columns]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {missing}; found {columns}")
        rows = list(reader)
    records = []
    for row in rows:
        row_split = (row.get("split") or "").strip()
        if split is not None and row_split != split:
            continue
        image = base / row["image"].strip()
        label = base / row["label"].strip() if (row.get("label") or "").strip() else None
        name = (row.get("name") or "").strip() or image.name.split(".")[0]
        records.append(Record(image, label, row["source"].strip(), name, row_split))
    if split is not None and not records:
        found = sorted({(r.get("split") or "").strip() for r in rows})
        logger.warning("%s: no rows with split %r (splits present: %s)", csv_path, split, found)
    return records


def paired_folder_records(images_dir: str | os.PathLike, labels_dir: str | os.PathLike,
                          source: str | None = None, split: str = "train") -> list[Record]:
    """Records of an ``images/`` folder with labels ``<stem>_label.tiff`` in ``labels_dir``.

    Parameters
    ----------
    images_dir, labels_dir : the two folders.
    source : source name (default: the folder holding ``images_dir`` when that is called
        ``images``, else ``images_dir``'s own name).
    split : split recorded in every record.

    Raises
    ------
    FileNotFoundError
        When an image has no label file (all missing ones are named, not skipped silently).
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    if source is None:
        source = images_dir.parent.name if images_dir.name.lower() == "images" else images_dir.name
    records, missing = [], []
    for image in list_images(images_dir):
        label = labels_dir / output_name(image)
        if not label.is_file():
            missing.append(label.name)
            continue
        records.append(Record(image, label, source, image.name.split(".")[0], split))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) in {images_dir} have no label in {labels_dir}: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return records


def unlabelled_records(folder_or_folders: str | os.PathLike | Iterable[str | os.PathLike],
                       split: str = "unlabelled") -> list[Record]:
    """Records (``label=None``) of every image directly inside one or several folders.

    The source of each record is its folder's name.
    """
    if isinstance(folder_or_folders, (str, os.PathLike)):
        folders = [Path(folder_or_folders)]
    else:
        folders = [Path(f) for f in folder_or_folders]
    records = []
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"unlabelled folder {folder} does not exist")
        records += [Record(p, None, folder.name, p.name.split(".")[0], split) for p in list_images(folder)]
    return records


def folder_unlabelled_records(data_dir: str | os.PathLike) -> list[Record]:
    """Records of the unlabelled images of a data folder: every ``unlabeled/<folder>/`` in name
    order, the folder's name as source (none when there is no ``unlabeled/``)."""
    unlabeled = Path(data_dir) / "unlabeled"
    folders = sorted(p for p in unlabeled.glob("*") if p.is_dir()) if unlabeled.is_dir() else []
    return unlabelled_records(folders) if folders else []


# ----------------------------------------------------------------------------- label files
def read_label_file(path: str | os.PathLike, data: bytes | None = None) -> np.ndarray:
    """Read an instance label file as a 2-D integer array.

    Parameters
    ----------
    path : label image (TIFF as written by the challenge, or any format :func:`crossct.io.read_image` reads).
    data : the file's bytes, when already in memory (avoids a second read).

    Returns
    -------
    (H, W) integer array.
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        array = tifffile.imread(io.BytesIO(data) if data is not None else path)
    else:
        array = read_image(path)
    squeezed = np.squeeze(np.asarray(array))
    if squeezed.ndim != 2:
        raise ValueError(f"{path}: label image must be 2-D, got shape {np.shape(array)}")
    if not np.issubdtype(squeezed.dtype, np.integer):
        raise ValueError(f"{path}: label image must hold integers, got dtype {squeezed.dtype}")
    return squeezed


# ----------------------------------------------------------------------------- training packs
def is_pack(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file written by :func:`crossct.train.pack.write_pack` (a ZIP holding
    ``pack.json``)."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return "pack.json" in zf.namelist()


def decode_image(data: bytes, channels: int, image_layout: str = "") -> np.ndarray:
    """Bytes of a pack image -> (H, W, channels) uint8 (channel order as stored)."""
    planes = image_layout == "planes"
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 or planes else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None:
        raise ValueError("not a decodable PNG/WebP image")
    if planes:
        return np.stack(np.split(image, channels, axis=0), axis=-1)
    return image.reshape(image.shape[0], image.shape[1], channels)


class Pack:
    """Read access to a pack: its manifest as :class:`Record` s, images, labels.

    Thread-safe (one ZIP handle behind a lock); members are read on demand.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).resolve()
        try:
            self._zip = zipfile.ZipFile(self.path)
            self.info = json.loads(self._zip.read("pack.json"))
        except (OSError, KeyError, zipfile.BadZipFile, ValueError) as exc:
            raise ValueError(f"{path}: not a CrossCT training pack ({exc})") from exc
        if self.info.get("format") != PACK_FORMAT:
            raise ValueError(f"{path}: pack format {self.info.get('format')!r}, this crossct reads {PACK_FORMAT!r}")
        self.normalize = NormalizeConfig(**self.info["normalize"])
        self._lock = threading.Lock()
        self.rows = list(csv.DictReader(io.StringIO(self.read("manifest.csv").decode())))
        self._channels = {row["image"]: (int(row["channels"]), row.get("layout", "")) for row in self.rows}

    def read(self, member: str) -> bytes:
        with self._lock:
            try:
                return self._zip.read(member)
            except KeyError:
                raise FileNotFoundError(f"{self.path}: no member {member!r}") from None

    def records(self, split: str | None = None) -> list[Record]:
        """Labelled records (``split`` as in the manifest, or all), or the unlabelled ones with
        ``split="unlabelled"``; each names this pack as its ``archive``."""
        out = []
        for row in self.rows:
            if split is not None and row["split"] != split:
                continue
            if split is None and not row["label"]:
                continue
            out.append(Record(Path(row["image"]), Path(row["label"]) if row["label"] else None, row["source"],
                              row["name"], row["split"], archive=self.path))
        return out

    def image(self, member: str | os.PathLike) -> np.ndarray:
        """(H, W, C) uint8 normalised image, C = 1 or 3 (read-only)."""
        member = str(member)
        image = decode_image(self.read(member), *self._channels[member])
        image.flags.writeable = False
        return image

    def shape(self, member: str | os.PathLike) -> tuple[int, int]:
        row = next(r for r in self.rows if r["image"] == str(member))
        return int(row["height"]), int(row["width"])


_PACKS: dict[Path, Pack] = {}
_PACKS_LOCK = threading.Lock()


def _forget_packs_after_fork() -> None:
    # A forked child (the target-building pool, loader workers) inherits the parent's open ZIP
    # handles, and with them one file offset shared with the parent and every other child: reads
    # through them race (seen as "Bad CRC-32").  Each process opens its own.
    global _PACKS_LOCK
    _PACKS.clear()
    _PACKS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_packs_after_fork)


def open_pack(path: str | os.PathLike) -> Pack:
    """The :class:`Pack` of ``path``, opened once per process."""
    key = Path(path).resolve()
    with _PACKS_LOCK:
        if key not in _PACKS:
            _PACKS[key] = Pack(key)
        return _PACKS[key]


# ----------------------------------------------------------------------------- reading a record
def data_records(data: str | os.PathLike, split: str | None) -> list[Record]:
    """Labelled records of a data folder (its ``manifest.csv``) or of a training pack file."""
    data = Path(data)
    if data.is_file() and is_pack(data):
        return open_pack(data).records(split)
    manifest = data / "manifest.csv" if data.is_dir() else data
    if not manifest.is_file():
        raise FileNotFoundError(f"{data}: neither a data folder with manifest.csv nor a training pack "
                                "(pass --data DIR or FILE, or set CROSSCT_DATA)")
    return read_manifest(manifest, split=split)


def read_record_label(record: Record) -> tuple[np.ndarray, bytes]:
    """(instance labels, the label file's bytes) of a labelled record, from a file or a pack."""
    if record.label is None:
        raise ValueError(f"{record.name}: record has no label")
    if record.archive is not None:
        data = open_pack(record.archive).read(str(record.label))
    else:
        data = Path(record.label).read_bytes()
    return read_label_file(record.label, data), data


def read_record_image(record: Record) -> np.ndarray:
    """The image of a record as the inference pipeline takes it: the file as read by
    :func:`crossct.io.read_image`, or a pack's stored (normalised, uint8) image."""
    if record.archive is not None:
        return open_pack(record.archive).image(record.image)
    return read_image(record.image)


# ----------------------------------------------------------------------------- images in memory
# Normalised images by (file, size, mtime, normalisation): a labelled and an unlabelled dataset
# built from the same files share one array, and it is freed with the last dataset holding it.
_IMAGE_STORE: "weakref.WeakValueDictionary[tuple, np.ndarray]" = weakref.WeakValueDictionary()


def load_normalized(path: str | os.PathLike, normalize: NormalizeConfig = NormalizeConfig()) -> np.ndarray:
    """Read and normalise an image, quantised for keeping in memory.

    Parameters
    ----------
    path : image file.
    normalize : percentile normalisation (:func:`crossct.normalize.normalize_image`).

    Returns
    -------
    (H, W, C) uint8 with C = 1 (the three normalised channels are equal) or 3; value / 255 is the
    normalised intensity.  Treat it as read-only: the array may be shared.
    """
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, normalize)
    cached = _IMAGE_STORE.get(key)
    if cached is not None:
        return cached
    image = normalize_image(read_image(path), normalize)
    if np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 0], image[:, :, 2]):
        image = image[:, :, :1]
    quantised = quantise(image)
    quantised.flags.writeable = False
    _IMAGE_STORE[key] = quantised
    return quantised


def quantise(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> contiguous uint8 (value / 255), the in-memory form of images and distances."""
    return np.ascontiguousarray(np.clip(np.rint(np.asarray(unit, np.float32) * np.float32(255.0)), 0, 255), np.uint8)


def record_image(record: Record, normalize: NormalizeConfig = NormalizeConfig()) -> np.ndarray:
    """The normalised, quantised image of a record (:func:`load_normalized`), from a file or a pack."""
    if record.archive is None:
        return load_normalized(record.image, normalize)
    pack = open_pack(record.archive)
    if pack.normalize != normalize:
        raise ValueError(f"{record.archive}: packed with normalisation {pack.normalize}, training asks for {normalize}")
    return pack.image(record.image)


def record_hw(record: Record) -> tuple[int, int]:
    """(H, W) of a record's image, without decoding it where possible."""
    if record.archive is not None:
        return open_pack(record.archive).shape(record.image)
    return _image_hw(Path(record.image))


def _image_hw(path: Path) -> tuple[int, int]:
    """(H, W) from the file header where cheap (PNG, TIFF), else by decoding."""
    if path.suffix.lower() == ".png":
        with open(path, "rb") as fh:
            head = fh.read(24)
        if len(head) == 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
            return int(height), int(width)
    return image_shape(path)
