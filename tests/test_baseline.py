"""Known answers for benchmarks/baseline.py, the organisers' pipeline the speed benchmark compares against.

Needs torch + MONAI (requirements-train.txt, part of requirements-dev.txt), like the export tests.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.baseline import (
    baseline_postprocess,
    baseline_probabilities,
    baseline_segment,
    class_logits_module,
    load_baseline_model,
    main,
    organisers_normalize,
)


def test_postprocess_labels_components_fills_holes_drops_small():
    interior = np.zeros((40, 60), np.float32)
    interior[2:12, 2:12] = 0.9          # cell 1 (100 px) ...
    interior[6:8, 6:8] = 0.1            # ... with a 4-pixel hole: filled
    interior[20:30, 20:30] = 0.7        # cell 2
    interior[30:35, 30:35] = 0.8        # touches cell 2 diagonally only: same component (8-connected)
    interior[2:5, 40:45] = 0.95         # 15 px: removed (< 16)
    interior[10:14, 40:44] = 0.6        # 16 px: kept
    interior[36:39, 2:8] = 0.5          # not above the threshold
    before = interior.copy()

    labels = baseline_postprocess(interior)

    np.testing.assert_array_equal(interior, before)  # input untouched
    assert labels.shape == interior.shape
    assert labels.max() == 3
    assert np.all(labels[2:12, 2:12] == labels[2, 2]) and labels[2, 2] > 0  # hole filled
    assert labels[25, 25] == labels[32, 32] > 0
    assert labels[3, 42] == 0
    assert (labels == labels[11, 41]).sum() == 16
    assert labels[37, 4] == 0


def test_postprocess_keeps_large_holes():
    interior = np.zeros((30, 30), np.float32)
    interior[2:28, 2:28] = 0.9
    interior[8:18, 8:18] = 0.0  # 100-pixel hole: larger than the organisers' 64, stays
    labels = baseline_postprocess(interior)
    assert labels.max() == 1
    assert (labels[8:18, 8:18] == 0).all()


def test_normalize_matches_organisers_rule():
    rng = np.random.default_rng(0)
    gray = rng.integers(1, 4000, (32, 48)).astype(np.uint16)
    gray[:4] = 0
    before = gray.copy()
    x = organisers_normalize(gray)
    np.testing.assert_array_equal(gray, before)
    assert x.shape == (32, 48, 3) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(x[:, :, 0], x[:, :, 2])
    # uint8 steps: every value is k / 255
    np.testing.assert_allclose(x * 255, np.round(x * 255), atol=1e-4)
    # an empty channel stays empty; the maximum is taken over all channels
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, :, 0] = np.arange(64).reshape(8, 8) + 1
    x = organisers_normalize(rgb)
    assert (x[:, :, 1:] == 0).all() and x[:, :, 0].max() == 1.0
    assert (organisers_normalize(np.zeros((5, 5), np.uint8)) == 0).all()


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_threads():
    """load_baseline_model sets torch's (process-wide) thread count; give the other tests theirs back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def baseline_model(tiny_weights):
    return load_baseline_model(tiny_weights, threads=1)


def test_one_tile_equals_softmax_of_network(baseline_model):
    import torch

    module, _ = baseline_model
    x = np.random.default_rng(1).random((256, 256, 3), dtype=np.float32)
    got = baseline_probabilities(x, module)
    with torch.inference_mode():
        expected = torch.softmax(module(torch.from_numpy(x.transpose(2, 0, 1).copy())[None]), dim=1)[0].numpy()
    assert got.shape == (3, 256, 256)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-5)


def test_class_logits_module_keeps_first_three_channels():
    import torch

    net = torch.nn.Conv2d(3, 5, 1)
    x = torch.rand(2, 3, 8, 8)
    with torch.inference_mode():
        np.testing.assert_array_equal(class_logits_module(net)(x).numpy(), net(x)[:, :3].numpy())


@pytest.mark.parametrize("shape", [(100, 130), (300, 270, 3)])
def test_segment_shapes_smaller_and_larger_than_a_tile(baseline_model, shape):
    from crossct.synthetic import synthetic_cells

    module, _ = baseline_model
    image, _ = synthetic_cells(*shape[:2], seed=3)
    if len(shape) == 3:
        image = np.repeat(image[:, :, None], 3, axis=2)
    labels = baseline_segment(image, module)
    assert labels.shape == shape[:2]
    assert np.issubdtype(labels.dtype, np.integer) and labels.min() >= 0


def test_cli_writes_one_label_file_per_image(tiny_weights, tmp_path):
    import tifffile

    from crossct.synthetic import write_synthetic_dataset

    images, _ = write_synthetic_dataset(tmp_path / "data", n_images=2, size=(64, 80))
    out = tmp_path / "out"
    assert main(["-i", str(images), "-o", str(out), "-w", str(tiny_weights), "--threads", "1"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["cell_00000_label.tiff", "cell_00001_label.tiff"]
    assert tifffile.imread(out / written[0]).shape == (64, 80)
