"""The README's first quick-start command: the demo segments its built-in examples."""

import tifffile

from crossct import demo


def test_demo_writes_labels_and_previews(tmp_path, tiny_weights):
    assert demo.main(["--out", str(tmp_path), "--weights", str(tiny_weights)]) == 0
    outputs = sorted(p.name for p in (tmp_path / "outputs").iterdir())
    assert outputs == ["ihc_label.tiff", "synthetic_nuclei_label.tiff"]
    assert tifffile.imread(tmp_path / "outputs" / "synthetic_nuclei_label.tiff").shape == (384, 512)
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["ihc_label.png", "synthetic_nuclei_label.png"]


def test_images_only_writes_the_inputs_and_no_labels(tmp_path):
    assert demo.main(["--out", str(tmp_path), "--images-only"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]
    assert sorted(p.name for p in (tmp_path / "inputs").iterdir()) == ["ihc.png", "synthetic_nuclei.png"]
    from skimage import io

    assert io.imread(tmp_path / "inputs" / "ihc.png").shape == (512, 512, 3)
    assert io.imread(tmp_path / "inputs" / "synthetic_nuclei.png").shape == (384, 512)
