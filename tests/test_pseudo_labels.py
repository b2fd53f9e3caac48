"""benchmarks.pseudo_labels: kept share and accuracy of a network's pseudo-labels by confidence."""

import numpy as np

from conftest import manifest_folder, training_folders
from benchmarks import pseudo_labels


def test_pixel_table_counts_kept_and_correct_pixels_per_threshold():
    probabilities = np.zeros((3, 2, 2), np.float32)
    probabilities[:, 0, 0] = [0.95, 0.03, 0.02]   # confident, right (class 0)
    probabilities[:, 0, 1] = [0.05, 0.92, 0.03]   # confident, wrong (truth 2)
    probabilities[:, 1, 0] = [0.20, 0.60, 0.20]   # unsure, right (class 1)
    probabilities[:, 1, 1] = [0.40, 0.35, 0.25]   # unsure, wrong (truth 1)
    truth = np.array([[0, 2], [1, 1]])
    table = pseudo_labels.pixel_table(probabilities, truth, [0.0, 0.5, 0.9, 0.99])
    assert table.tolist() == [[4, 2], [3, 2], [2, 1], [0, 0]]


def test_the_table_for_a_checkpoint_on_a_split(tiny_weights, tmp_path, capsys):
    data = manifest_folder(training_folders(tmp_path / "synthetic", n_train=1), tmp_path / "data")
    assert pseudo_labels.main([str(tiny_weights / "model.pt"), "--data", str(data), "--thresholds", "0", "0.9"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 0")]
    assert len(rows) == 2
    kept_all, accuracy_all = (float(x) for x in rows[0].split("|")[2].split(","))
    kept_confident = float(rows[1].split("|")[2].split(",")[0])
    assert kept_all == 1.0 and 0.0 <= accuracy_all <= 1.0 and 0.0 <= kept_confident <= 1.0
