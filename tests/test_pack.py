"""Training pack: written from a data folder, read back exactly (labels) or within the stated
error (images), and used by training through the same code path as the folder."""

from __future__ import annotations

import csv
import json
import zipfile

import cv2
import numpy as np
import pytest
import tifffile

from crossct.synthetic import write_synthetic_dataset
from crossct.train.data import LabelledDataset
from crossct.train.pack import write_pack
from crossct.train.records import Pack, data_records, is_pack, load_normalized, open_pack, read_record_label, record_image
from crossct.train.targets import TargetCache


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data folder shaped like ../shared/data: manifest.csv, labelled images, unlabeled/<folder>/."""
    root = tmp_path_factory.mktemp("data")
    rows = []
    for split, seed in (("train", 0), ("val", 50)):
        images, labels = write_synthetic_dataset(root / f"src_{split}", n_images=3, size=(80, 96), seed=seed)
        for image in sorted(images.iterdir()):
            stem = image.name.split(".")[0]
            rows.append({"source": "synthetic", "name": f"{split}_{stem}", "image": str(image.relative_to(root)),
                         "label": str((labels / f"{stem}_label.tiff").relative_to(root)), "split": split})
    write_synthetic_dataset(root / "unl", n_images=2, size=(80, 96), seed=99)
    (root / "unlabeled").mkdir()
    (root / "unl" / "images").rename(root / "unlabeled" / "frames")
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_lossless_pack_round_trips_images_and_labels_exactly(data_dir, tmp_path):
    info = write_pack(data_dir, tmp_path / "data.pack", budget_mib=10)
    assert is_pack(tmp_path / "data.pack") and not is_pack(data_dir / "manifest.csv")
    assert info["images"] == "png (lossless)" and info["counts"] == {"frames": 2, "synthetic": 6}
    assert info["error_uint8"]["synthetic"]["max_abs"] == 0
    pack = Pack(tmp_path / "data.pack")
    for split in ("train", "val"):
        folder, packed = data_records(data_dir, split), data_records(tmp_path / "data.pack", split)
        assert [r.name for r in packed] == [r.name for r in folder]
        for a, b in zip(folder, packed):
            np.testing.assert_array_equal(record_image(b), load_normalized(a.image))
            np.testing.assert_array_equal(read_record_label(b)[0], tifffile.imread(a.label))
    assert len(pack.records("unlabelled")) == 2 and all(r.label is None for r in pack.records("unlabelled"))


def test_a_pack_over_budget_is_reencoded_within_the_stated_error(data_dir, tmp_path):
    info = write_pack(data_dir, tmp_path / "small.pack", budget_mib=10, lossless=False)
    assert info["webp_quality"] == 98 and info["images"] == "webp quality 98"
    stated = info["error_uint8"]["synthetic"]["max_abs"]
    for a, b in zip(data_records(data_dir, "train"), data_records(tmp_path / "small.pack", "train")):
        error = np.abs(record_image(b).astype(int) - load_normalized(a.image).astype(int))
        assert error.max() <= stated
        np.testing.assert_array_equal(read_record_label(b)[0], tifffile.imread(a.label))  # labels stay exact
    with pytest.raises(ValueError, match="does not fit"):
        write_pack(data_dir, tmp_path / "tiny.pack", budget_mib=0.001)


def test_training_datasets_from_a_pack_equal_those_from_the_folder(data_dir, tmp_path):
    write_pack(data_dir, tmp_path / "data.pack")
    cache = TargetCache(tmp_path / "cache")
    folder = LabelledDataset(data_records(data_dir, "train"), cache, crop=48, seed=3)
    packed = LabelledDataset(data_records(tmp_path / "data.pack", "train"), cache, crop=48, seed=3)
    for index in range(len(folder)):
        a, b = folder[index], packed[index]
        for key in ("image", "classes", "distances"):
            assert np.array_equal(a[key].numpy(), b[key].numpy()), key


def test_pack_manifest_and_errors(data_dir, tmp_path):
    write_pack(data_dir, tmp_path / "data.pack")
    with zipfile.ZipFile(tmp_path / "data.pack") as zf:
        assert {"pack.json", "manifest.csv"} <= set(zf.namelist())
        assert json.loads(zf.read("pack.json"))["format"] == "crossct-pack-1"
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
    assert open_pack(tmp_path / "data.pack") is open_pack(tmp_path / "data.pack")
    (tmp_path / "bad.pack").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a CrossCT training pack"):
        Pack(tmp_path / "bad.pack")
    with pytest.raises(FileNotFoundError, match="neither a data folder"):
        data_records(tmp_path / "missing", "train")


def test_separate_markers_are_coded_as_planes_and_keep_their_detail():
    from crossct.train.pack import _encode_webp, layout
    from crossct.train.records import decode_image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    cyto = ((np.sin(xx / 3.0) > 0) * 200).astype(np.uint8)  # fine stripes in one marker only
    nuclei = ((np.hypot(yy - 48, xx - 48) < 20) * 250).astype(np.uint8)
    markers = np.stack([cyto, nuclei, np.zeros_like(cyto)], axis=-1)
    grey = rng.integers(0, 255, (96, 96, 1), dtype=np.uint8)
    colour = np.repeat(grey, 3, axis=-1) // np.array([1, 2, 3], np.uint8) + np.array([0, 10, 20], np.uint8)
    assert layout(markers) == "planes" and layout(colour) == "color" and layout(grey) == "gray"
    planar = decode_image(_encode_webp(markers, 85), 3, "planes").astype(int)
    as_colour = cv2.imdecode(np.frombuffer(cv2.imencode(".webp", markers, [cv2.IMWRITE_WEBP_QUALITY, 85])[1], np.uint8),
                             cv2.IMREAD_COLOR).astype(int)
    assert planar.shape == markers.shape
    # Chroma at half resolution smears the stripes of one marker; planes keep them.
    assert np.abs(planar - markers).mean() < 0.5 * np.abs(as_colour - markers).mean()



def _read_members(pack_path: str, members: list[str]) -> tuple[int, list[bytes]]:
    pack = open_pack(pack_path)
    return id(pack), [pack.read(m) for m in members for _ in range(20)]


def test_forked_workers_read_a_pack_opened_by_their_parent(data_dir, tmp_path):
    """Target building forks a pool after the parent opened the pack: each child must read through
    its own handle (the inherited one shares its file offset with the parent and every other child,
    and concurrent reads through it return corrupt members)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    path = tmp_path / "data.pack"
    write_pack(data_dir, path, lossless=True)
    parent = open_pack(path)
    members = [str(r.label) for r in parent.records()] + [str(r.image) for r in parent.records()]
    expected = [parent.read(m) for m in members for _ in range(20)]
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(_read_members, [str(path)] * 8, [members] * 8))
    assert all(pack_id != id(parent) for pack_id, _ in results)  # opened anew in each child
    assert all(found == expected for _, found in results)
