"""Post-processing tuning: coordinate descent finds thresholds that fit the model's outputs."""

import numpy as np

from conftest import outputs_from_labels, squares, two_touching_disks
from crossct.config import PostprocessConfig
from crossct.train.tune import score_outputs, tune_postprocess


def test_tuning_recovers_from_a_seed_threshold_the_outputs_never_reach():
    labels = two_touching_disks()
    outputs = outputs_from_labels(labels)
    outputs[3] *= 0.45  # a model whose cell distance peaks at 0.45: seeds above 0.9 never form
    cached = [{"outputs": outputs, "label": labels, "source": "synthetic", "name": "pair"}]
    start = PostprocessConfig(seed_threshold=0.9)
    # No seed: the orphan rescue keeps the pair as one merged cell (1 of 2 found).
    assert score_outputs(cached, start)["mean"] == 2 / 3
    best, summary, trace = tune_postprocess(cached, start)
    assert best.seed_threshold < 0.45
    assert summary["mean"] == 1.0 and summary["source_mean"] == 1.0
    assert trace[0][0] == "start" and len(trace) > 5
    assert np.isfinite([t[2] for t in trace]).all()


def test_tuning_finds_the_relative_size_that_drops_a_large_fragment():
    predicted = squares(4)  # eight 40 x 40 cells and a 16 x 16 fragment the truth does not have
    truth = np.where(predicted == predicted.max(), 0, predicted)
    cached = [{"outputs": outputs_from_labels(predicted), "label": truth, "source": "synthetic", "name": "frag"}]
    start = PostprocessConfig(min_size=8, min_relative_size=0.0)
    assert score_outputs(cached, start)["mean"] == 16 / 17  # 8 of 8 found, 1 false positive
    best, summary, _ = tune_postprocess(cached, start)
    # 256 px is above every absolute minimum in the search space: only the relative one drops it.
    assert best.min_relative_size >= 0.2 and summary["mean"] == 1.0


def test_keep_thresholds_tunes_nothing_and_keeps_the_thresholds_record(tmp_path, tiny_weights):
    import json
    import shutil

    from conftest import manifest_folder, training_folders
    from crossct.config import load_spec, save_spec
    from crossct.train.tune import main

    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    spec = load_spec(weights / "model.json")
    record = {"split": "val", "flips": False, "score_before": 0.1, "score_after": 0.2}
    odd = PostprocessConfig(seed_threshold=0.9, mask_threshold=0.3, smooth_sigma=3.0)
    save_spec(spec.replace(postprocess=odd, metadata={**spec.metadata, "postprocess_tuning": record}),
              weights / "model.json")
    data = manifest_folder(training_folders(tmp_path / "synthetic", n_train=1), tmp_path / "data")
    assert main([str(weights), "--data", str(data), "--keep-thresholds", "--write"]) == 0
    kept = load_spec(weights / "model.json")
    assert kept.postprocess == odd and kept.metadata["postprocess_tuning"] == record
    assert json.loads((weights / "model.json").read_text())["postprocess"]["seed_threshold"] == 0.9
