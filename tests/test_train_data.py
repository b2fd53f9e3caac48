"""Training data: records, in-memory datasets, augmentation alignment, determinism, balanced sampling."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch

from crossct.train import data as D
from crossct.train.data import AugmentConfig, LabelledDataset, UnlabelledDataset, balanced_sampler, source_weights
from crossct.train.records import Record, paired_folder_records, read_manifest, unlabelled_records
from crossct.train.targets import TargetCache, make_targets

GEOMETRY_ONLY = AugmentConfig(p_scale=0.0, p_contrast=0.0, p_gamma=0.0, p_noise=0.0, p_blur=0.0)


def asymmetric_labels(shape: tuple[int, int]) -> np.ndarray:
    """Cells placed so that each of the 8 orientations of the map is different."""
    labels = np.zeros(shape, np.uint16)
    h, w = shape
    labels[2 : h // 3, 2 : w // 2] = 1  # wide block top-left
    labels[h // 3 : h // 3 + 6, 2 : w // 4] = 2  # touching it from below
    labels[h // 2 : h - 3, w - w // 5 : w - 2] = 3  # tall block right
    yy, xx = np.mgrid[:h, :w]
    labels[(yy - 2 * h // 3) ** 2 + (xx - w // 3) ** 2 <= (min(h, w) // 8) ** 2] = 4
    return labels


def write_pair(folder: Path, stem: str, labels: np.ndarray, image: np.ndarray | None = None) -> tuple[Path, Path]:
    """An image whose grey value encodes the class map (0, 1, 2 -> 1, 2, 3) and its label TIFF.

    After percentile normalisation (1st-99th of the non-zero values 1..3) the image is
    class / 2 exactly, so alignment of image and targets can be checked pixel by pixel.
    """
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    if image is None:
        classes, _ = make_targets(labels)
        image = (classes + 1).astype(np.uint8)
    image_path = folder / "images" / f"{stem}.png"
    assert cv2.imwrite(str(image_path), image)
    label_path = folder / "labels" / f"{stem}_label.tiff"
    tifffile.imwrite(label_path, labels)
    return image_path, label_path


@pytest.fixture
def pair(tmp_path):
    labels = asymmetric_labels((64, 80))
    image, label = write_pair(tmp_path, "cells", labels)
    return Record(image, label, "synthetic", "cells", "train"), labels


@pytest.fixture
def cache(tmp_path):
    return TargetCache(tmp_path / "cache")


def item_classes_from_image(item) -> np.ndarray:
    return np.rint(item["image"][0].numpy() * 2).astype(np.int64)


# ----------------------------------------------------------------------------- records
def test_read_manifest_resolves_paths_and_filters_split(tmp_path):
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "sub" / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["source", "name", "image", "label", "modality", "split"])
        w.writerow(["a", "one", "a/images/one.png", "a/labels/one_label.tiff", "x", "train"])
        w.writerow(["a", "", "a/images/two.tif", "a/labels/two_label.tiff", "x", "val"])
        w.writerow(["b", "three", "b/three.png", "", "x", "train"])
    records = read_manifest(manifest)
    assert [r.name for r in records] == ["one", "two", "three"]  # empty name -> file stem
    assert records[0].image == tmp_path / "sub" / "a" / "images" / "one.png"
    assert records[0].label == tmp_path / "sub" / "a" / "labels" / "one_label.tiff"
    assert records[2].label is None
    assert [r.name for r in read_manifest(manifest, split="train")] == ["one", "three"]
    assert [r.split for r in read_manifest(manifest, split="val")] == ["val"]


def test_read_manifest_names_missing_columns_and_warns_on_empty_split(tmp_path, caplog):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,label,split\nx.png,x_label.tiff,train\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['source'\]"):
        read_manifest(manifest)
    manifest.write_text("image,label,source,split\nx.png,x_label.tiff,s,train\n")
    assert read_manifest(manifest, split="test") == []
    assert "splits present: ['train']" in caplog.text


def test_paired_folder_records(tmp_path):
    labels = asymmetric_labels((32, 32))
    write_pair(tmp_path / "setA", "b_img", labels)
    write_pair(tmp_path / "setA", "a_img", labels)
    records = paired_folder_records(tmp_path / "setA" / "images", tmp_path / "setA" / "labels")
    assert [(r.name, r.source, r.label.name) for r in records] == [
        ("a_img", "setA", "a_img_label.tiff"), ("b_img", "setA", "b_img_label.tiff")]
    (tmp_path / "setA" / "labels" / "b_img_label.tiff").unlink()
    with pytest.raises(FileNotFoundError, match="b_img_label.tiff"):
        paired_folder_records(tmp_path / "setA" / "images", tmp_path / "setA" / "labels")


def test_unlabelled_records_from_one_or_many_folders(tmp_path):
    for folder, n in (("u1", 2), ("u2", 1)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            cv2.imwrite(str(tmp_path / folder / f"f{i}.png"), np.full((8, 8), 9, np.uint8))
    (tmp_path / "u1" / "notes.txt").write_text("not an image")
    one = unlabelled_records(tmp_path / "u1")
    assert [(r.name, r.source, r.label) for r in one] == [("f0", "u1", None), ("f1", "u1", None)]
    assert len(unlabelled_records([tmp_path / "u1", str(tmp_path / "u2")])) == 3
    with pytest.raises(FileNotFoundError):
        unlabelled_records(tmp_path / "nope")


# ----------------------------------------------------------------------------- labelled items
def test_item_shapes_dtypes_and_ranges(pair, cache):
    record, _ = pair
    ds = LabelledDataset([record], cache, crop=48, augment=True, seed=1)
    assert len(ds) == 1
    for epoch in range(5):
        ds.set_epoch(epoch)
        item = ds[0]
        assert set(item) == {"image", "classes", "distances", "source"}
        assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
        assert item["classes"].shape == (48, 48) and item["classes"].dtype == torch.int64
        assert item["distances"].shape == (2, 48, 48) and item["distances"].dtype == torch.float32
        assert item["source"] == "synthetic"
        assert 0 <= item["image"].min() and item["image"].max() <= 1
        assert set(item["classes"].unique().tolist()) <= {0, 1, 2}
        assert 0 <= item["distances"].min() and item["distances"].max() <= 1


def test_image_smaller_than_crop_is_zero_padded(pair, cache):
    record, labels = pair  # 64 x 80 image
    ds = LabelledDataset([record], cache, crop=128, augment=False)
    classes, distances = make_targets(labels)
    placements = set()
    for epoch in range(5):
        ds.set_epoch(epoch)
        item = ds[0]
        got = item["classes"].numpy()
        # The whole image lies somewhere inside the crop, zeros all around.
        ys, xs = np.nonzero(got)
        assert (got > 0).sum() == (classes > 0).sum()
        y0, x0 = ys.min() - np.nonzero(classes)[0].min(), xs.min() - np.nonzero(classes)[1].min()
        np.testing.assert_array_equal(got[y0 : y0 + 64, x0 : x0 + 80], classes)
        outside = np.ones(got.shape, bool)
        outside[y0 : y0 + 64, x0 : x0 + 80] = False
        assert not got[outside].any() and not item["image"][:, outside].any()
        assert not item["distances"][:, outside].any()
        # Distances are held as uint8 in memory: rounding of at most 1/510.
        np.testing.assert_allclose(item["distances"][:, y0 : y0 + 64, x0 : x0 + 80].numpy(), distances, atol=3e-3)
        placements.add((y0, x0))
    assert len(placements) > 1  # placed at random, not always in a corner


def test_augmentation_keeps_image_and_targets_aligned(pair, cache):
    record, labels = pair
    ref_classes, ref_distances = make_targets(labels)
    ds = LabelledDataset([record], cache, crop=64, augment=True, augmentation=GEOMETRY_ONLY)
    orientations = set()
    for epoch in range(40):
        ds.set_epoch(epoch)
        item = ds[0]
        classes = item["classes"].numpy()
        np.testing.assert_array_equal(item_classes_from_image(item), classes)
        # The window is 64 x 64 of a 64 x 80 image at some x offset, in one of 8 orientations,
        # and classes and both distance maps must all be in the *same* one.
        matches = []
        for x0 in range(0, 17):
            for k in range(4):
                for flip in (False, True):
                    c = ref_classes[:, x0 : x0 + 64]
                    d = ref_distances[:, :, x0 : x0 + 64]
                    c, d = (c[:, ::-1], d[:, :, ::-1]) if flip else (c, d)
                    c, d = np.rot90(c, k), np.rot90(d, k, axes=(1, 2))
                    if np.array_equal(c, classes) and np.allclose(d, item["distances"].numpy(), atol=3e-3):
                        matches.append((k, flip))
        assert matches, f"epoch {epoch}: no single orientation explains classes and distances together"
        orientations.add(matches[0])
    assert len(orientations) >= 6  # flips and rotations are actually applied


def test_scale_jitter_keeps_image_and_classes_mostly_aligned(pair, cache):
    record, _ = pair
    # Zooms near 1, where the image's (zoomed) rings and the classes' (3 px) rings nearly agree.
    ds = LabelledDataset([record], cache, crop=48, augment=True,
                         augmentation=AugmentConfig(scale=(0.7, 1.4), diameter=(1, 1000), p_scale=1.0,
                                                    p_contrast=0, p_gamma=0, p_noise=0, p_blur=0))
    agreement = []
    for epoch in range(30):
        ds.set_epoch(epoch)
        item = ds[0]
        # Cells (foreground) of the zoomed image and of the classes may differ at their edges only
        # (the ring inside a cell is 3 px in the classes at every zoom, so interior / boundary are
        # not compared); a half-pixel shift between the two (cv2.INTER_NEAREST) costs ~0.03.
        agreement.append(((item_classes_from_image(item) > 0) == (item["classes"].numpy() > 0)).mean())
        cell = item["classes"].numpy() > 0
        assert not item["distances"][:, ~cell].numpy().any() or item["distances"][:, ~cell].max() < 0.5
    assert min(agreement) > 0.95 and np.mean(agreement) > 0.97, agreement


@pytest.mark.parametrize("diameter, expected", [
    (10.0, (0.8, 4.0)),      # small cells: zoomed in up to 4x, out only to 8 px
    (100.0, (0.25, 0.8)),    # large cells: only zoomed out, into the 8-80 px range
    (1.0, (4.0, 4.0)),       # tinier than any zoom can fix: the largest zoom
    (1000.0, (0.25, 0.25)),  # larger than any zoom can fix: the smallest zoom
    (float("nan"), (0.5, 2.0)),  # no cells
])
def test_zoom_range_brings_median_diameters_into_the_trained_range(diameter, expected):
    cfg = AugmentConfig(scale=(0.25, 4.0), diameter=(8.0, 80.0))
    assert cfg.zoom_range(diameter) == pytest.approx(expected)


def test_zoomed_crops_keep_a_three_pixel_boundary_ring(tmp_path, cache):
    labels = np.zeros((40, 40), np.uint16)
    labels[12:28, 12:28] = 1  # one 16 x 16 cell
    image, label = write_pair(tmp_path, "square", labels)
    ds = LabelledDataset([Record(image, label, "synthetic", "square")], cache, crop=64, augment=True,
                         augmentation=AugmentConfig(scale=(4.0, 4.0), diameter=(1, 1000), p_scale=1.0,
                                                    p_contrast=0, p_gamma=0, p_noise=0, p_blur=0))
    runs = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        classes = ds[0]["classes"].numpy()
        for row in classes[(classes == 1).any(axis=1)]:
            edges = np.flatnonzero(np.diff(np.r_[0, row == 2, 0]))
            runs += list(edges[1::2] - edges[::2])
    # Zooming the 3-class map by 4 would give 12 px rings; recomputed from the zoomed labels they
    # are 3 px (2 inside, 1 outside), shorter only where the window cuts them.
    assert runs and max(runs) == 3, runs


def test_photometric_jitter_changes_the_image_not_the_targets(pair, cache):
    record, _ = pair
    plain = LabelledDataset([record], cache, crop=64, augment=True, augmentation=GEOMETRY_ONLY, seed=5)
    strong = LabelledDataset([record], cache, crop=64, augment=True, seed=5,
                             augmentation=AugmentConfig(p_scale=0, p_contrast=1, p_gamma=1, p_noise=1, p_blur=1))
    a, b = plain[0], strong[0]
    assert not torch.equal(a["image"], b["image"])
    assert 0 <= b["image"].min() and b["image"].max() <= 1


def test_colour_jitter_scales_and_shifts_each_channel_of_colour_images_only():
    from crossct.train.data import _photometric

    colour_only = AugmentConfig(p_contrast=0, p_gamma=0, p_noise=0, p_blur=0, p_colour=1,
                                colour_gain=(0.8, 1.25), colour_shift=0.05)
    image = np.full((4, 4, 3), 0.5, np.float32)
    out = _photometric(image, np.random.default_rng(0), colour_only)
    rng = np.random.default_rng(0)
    rng.random()  # the draw that decides whether to jitter
    gain = np.exp(rng.uniform(np.log(0.8), np.log(1.25), 3))
    expected = 0.5 * gain + rng.uniform(-0.05, 0.05, 3)
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)
    assert len(set(np.round(out[0, 0], 6))) == 3  # each channel its own gain: the colour changes
    grey = np.full((4, 4, 1), 0.5, np.float32)
    np.testing.assert_array_equal(_photometric(grey, np.random.default_rng(0), colour_only), grey)
    # Off (the default), it draws nothing: runs trained before it keep their random stream.  With
    # every other step off too, the jitter takes exactly its 4 decisions from the generator.
    assert AugmentConfig().p_colour == 0
    all_off, rng = AugmentConfig(p_contrast=0, p_gamma=0, p_noise=0, p_blur=0), np.random.default_rng(1)
    np.testing.assert_array_equal(_photometric(image, rng, all_off), image)
    assert rng.random() == np.random.default_rng(1).random(5)[4]


def test_items_are_reproducible_from_seed_epoch_and_index(pair, cache, tmp_path):
    record, labels = pair
    other_image, other_label = write_pair(tmp_path / "more", "other", asymmetric_labels((70, 50)))
    records = [record, Record(other_image, other_label, "synthetic", "other")]
    ds = LabelledDataset(records, cache, crop=32, seed=7)
    again = LabelledDataset(records, cache, crop=32, seed=7)
    ds.set_epoch(3)
    again.set_epoch(3)
    for index in range(2):
        a, b = ds[index], again[index]
        for key in ("image", "classes", "distances"):
            assert torch.equal(a[key], b[key]), key
    first = ds[1]
    ds.set_epoch(4)
    assert not torch.equal(first["image"], ds[1]["image"])
    ds.set_epoch(3)
    assert torch.equal(first["image"], ds[1]["image"])
    different_seed = LabelledDataset(records, cache, crop=32, seed=8)
    different_seed.set_epoch(3)
    assert not torch.equal(first["image"], different_seed[1]["image"])
    # The explicit form used by step-keyed batching.
    x = ds.sample(1, np.random.default_rng([7, 3, 1]))
    assert torch.equal(x["image"], first["image"])


def test_dataset_does_not_touch_global_random_state(pair, cache):
    record, _ = pair
    ds = LabelledDataset([record], cache, crop=32)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    ds[0]
    assert np.array_equal(np.random.get_state()[1], np_state) and torch.equal(torch.get_rng_state(), torch_state)


def test_labelled_dataset_refuses_bad_records(pair, cache, tmp_path):
    record, _ = pair
    with pytest.raises(ValueError, match="no label"):
        LabelledDataset([Record(record.image, None, "s", "n")], cache)
    with pytest.raises(ValueError, match="empty"):
        LabelledDataset([], cache)
    wrong = tmp_path / "wrong_label.tiff"
    tifffile.imwrite(wrong, np.zeros((10, 10), np.uint16))
    with pytest.raises(ValueError, match="does not match"):
        LabelledDataset([Record(record.image, wrong, "s", "n")], cache)


def test_images_are_quantised_and_shared_between_datasets(pair, cache):
    record, _ = pair
    labelled = LabelledDataset([record], cache, crop=32)
    unlabelled = UnlabelledDataset([record], crop=32)
    assert labelled.images[0] is unlabelled.images[0]
    assert labelled.images[0].dtype == np.uint8 and labelled.images[0].shape == (64, 80, 1)  # grey kept once
    assert labelled.nbytes == 64 * 80 * (1 + 1 + 2 + 2)  # uint8 image, classes, 2 distances; uint16 labels


def test_colour_images_keep_three_channels(tmp_path, cache):
    labels = asymmetric_labels((40, 40))
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 50, 100, 200
    rgb[labels > 0] = (200, 20, 90)
    image, label = write_pair(tmp_path, "rgb", labels, image=rgb)
    ds = LabelledDataset([Record(image, label, "he", "rgb")], cache, crop=40, augment=False)
    assert ds.images[0].shape == (40, 40, 3)
    item = ds[0]
    assert not (torch.equal(item["image"][0], item["image"][1]) and torch.equal(item["image"][1], item["image"][2]))


# ----------------------------------------------------------------------------- unlabelled items
def test_unlabelled_items(pair):
    record, labels = pair
    ds = UnlabelledDataset([Record(record.image, None, "u", "x", "unlabelled")], crop=96, seed=2)
    item = ds[0]
    assert set(item) == {"image"}
    assert item["image"].shape == (3, 96, 96) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    # Zero padding around the whole image: every cell pixel (class > 0, image > 0) is in the crop.
    assert (item["image"][0] > 0).sum() == (make_targets(labels)[0] > 0).sum()
    assert torch.equal(item["image"], UnlabelledDataset([record], crop=96, seed=2)[0]["image"])
    ds.set_epoch(1)
    assert not torch.equal(item["image"], ds[0]["image"])


# ----------------------------------------------------------------------------- sampling
def synthetic_records(counts: dict[str, int]) -> list[Record]:
    return [Record(Path(f"{s}_{i}.png"), Path(f"{s}_{i}_label.tiff"), s, f"{s}_{i}")
            for s, n in counts.items() for i in range(n)]


def test_source_weights_known_values():
    records = synthetic_records({"big": 9, "small": 1})
    shapes = [(256, 256)] * 10
    w = source_weights(records, 0.5, shapes=shapes)
    assert w.sum() == pytest.approx(1.0)
    # 9 images at 9**-0.5 = 1/3 each (total 3) vs 1 image at 1: shares 0.75 / 0.25.
    assert w[-1] == pytest.approx(0.25) and w[:9].sum() == pytest.approx(0.75)
    np.testing.assert_allclose(source_weights(records, 0.0, shapes=shapes), 0.1)
    assert source_weights(records, 1.0, shapes=shapes)[-1] == pytest.approx(0.5)


def test_source_weights_area_factor_is_clipped():
    records = synthetic_records({"s": 4})
    w = source_weights(records, 0.5, shapes=[(100, 100), (256, 256), (512, 512), (2048, 2048)])
    np.testing.assert_allclose(w / w[1], [1.0, 1.0, 4.0, 4.0])
    with pytest.raises(ValueError, match="alpha"):
        source_weights(records, 1.5, shapes=[(1, 1)] * 4)


def test_source_weights_reads_image_sizes(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((512, 512), np.uint8))
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((256, 256), np.uint16))
    records = [Record(tmp_path / "a.png", None, "s", "a"), Record(tmp_path / "b.tif", None, "s", "b")]
    np.testing.assert_allclose(source_weights(records, 0.5), [0.8, 0.2])


@pytest.mark.parametrize("alpha, expected", [(0.5, np.sqrt(10) / (np.sqrt(10) + np.sqrt(90))), (0.0, 0.1), (1.0, 0.5)])
def test_balanced_sampler_gives_small_source_its_share(alpha, expected):
    records = synthetic_records({"big": 90, "small": 10})
    sampler = balanced_sampler(records, num_samples=20_000, alpha=alpha, seed=0, shapes=[(256, 256)] * 100)
    drawn = np.array(list(sampler))
    assert len(drawn) == 20_000
    share = np.mean([records[i].source == "small" for i in drawn])
    assert share == pytest.approx(expected, abs=0.015)
    assert np.array_equal(drawn, np.array(list(balanced_sampler(records, 20_000, alpha, 0, shapes=[(256, 256)] * 100))))


@pytest.mark.parametrize("collate_fn", [None, D.collate])
def test_works_with_a_torch_dataloader(pair, cache, collate_fn):
    record, _ = pair
    ds = LabelledDataset([record, record], cache, crop=32)
    sampler = balanced_sampler(ds.records, num_samples=4, shapes=ds.shapes)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=collate_fn)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["classes"].shape == (4, 32, 32)
    assert batch["classes"].dtype == torch.int64 and batch["distances"].dtype == torch.float32
    assert batch["distances"].shape == (4, 2, 32, 32) and batch["source"] == ["synthetic"] * 4


def test_collate_matches_torch_stack(pair, cache):
    record, _ = pair
    ds = LabelledDataset([record], cache, crop=32)
    items = [ds.sample(0, np.random.default_rng(i)) for i in range(3)]
    batch = D.collate(items)
    for key in ("image", "classes", "distances"):
        assert torch.equal(batch[key], torch.stack([it[key] for it in items]))
    assert batch["source"] == ["synthetic"] * 3


# ----------------------------------------------------------------------------- real data
def _data_dir() -> Path:
    env = os.environ.get("CROSSCT_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.data
def test_real_manifest_one_image_per_source(tmp_path):
    manifest = _data_dir() / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"real data not found: {manifest} (set CROSSCT_DATA)")
    records = read_manifest(manifest)
    with open(manifest, newline="") as fh:
        assert len(records) == sum(1 for _ in csv.DictReader(fh))
    train = read_manifest(manifest, split="train")
    assert 0 < len(train) < len(records) and all(r.split == "train" for r in train)
    first = {}
    for r in train:  # the smallest image of every source keeps the test quick
        first.setdefault(r.source, r)
    ds = LabelledDataset(list(first.values()), TargetCache(tmp_path / "cache"), crop=128, seed=0)
    for index in range(len(ds)):
        item = ds[index]
        assert item["image"].shape == (3, 128, 128) and 0 <= item["image"].min() and item["image"].max() <= 1
        assert set(item["classes"].unique().tolist()) <= {0, 1, 2}
        assert 0 <= item["distances"].min() and item["distances"].max() <= 1
    assert sum(int((ds.classes[i] > 0).any()) for i in range(len(ds))) == len(ds)
    w = source_weights(train, 0.5)
    assert len(w) == len(train) and w.sum() == pytest.approx(1.0)
