"""Post-processing tuning: coordinate descent finds thresholds that fit the model's outputs."""

import numpy as np

from conftest import outputs_from_labels, two_touching_disks
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
