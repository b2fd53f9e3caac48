"""crossct.predictors: ONNX and PyTorch agree; weights are verified before they are trusted."""

from __future__ import annotations

import json
import pickle
import shutil
import textwrap

import numpy as np
import pytest
from conftest import cells_image, run_python

from crossct.pipeline import predict_outputs, segment
from crossct.predictors import (
    OnnxPredictor,
    TorchPredictor,
    WeightsError,
    load_predictor,
    sha256_file,
)


class NotAllowed:
    """Any class outside torch's weights-only allow-list."""

    def __reduce__(self):
        return (print, ("arbitrary code ran while loading",))


@pytest.fixture
def weights_copy(tiny_weights, tmp_path):
    return shutil.copytree(tiny_weights, tmp_path / "weights")


def test_tiny_weights_folder(tiny_weights):
    spec = json.loads((tiny_weights / "model.json").read_text())
    assert sorted(p.name for p in tiny_weights.iterdir()) == ["model.json", "model.onnx", "model.pt"]
    assert spec["checksums"]["model.onnx"] == sha256_file(tiny_weights / "model.onnx")
    assert spec["checksums"]["model.pt"] == sha256_file(tiny_weights / "model.pt")


def test_onnx_and_torch_agree(tiny_weights):
    onnx = load_predictor(tiny_weights, backend="onnx", device="cpu")
    torch_ = load_predictor(tiny_weights, backend="torch", device="cpu")
    assert isinstance(onnx, OnnxPredictor) and isinstance(torch_, TorchPredictor)
    assert torch_.concurrent_calls == 1  # PyTorch's CPU kernels thread within a call
    batch = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    a, b = onnx.predict(batch), torch_.predict(batch)
    assert a.shape == b.shape == (3, 5, 64, 64) and a.dtype == b.dtype == np.float32
    assert np.abs(a - b).max() < 1e-4
    np.testing.assert_allclose(a[:, :3].sum(axis=1), 1, atol=1e-5)  # class probabilities
    image = cells_image(90, 150)
    oa, ob = predict_outputs(image[:, :, None], onnx), predict_outputs(image[:, :, None], torch_)
    assert oa.shape == (5, 90, 150)
    assert np.abs(oa - ob).max() < 1e-4


def test_segment_is_deterministic(onnx_predictor):
    image = cells_image(70, 100, seed=3)
    first = segment(image, onnx_predictor)
    second = segment(image.copy(), onnx_predictor)
    assert first.shape == (70, 100) and first.dtype == np.int32
    np.testing.assert_array_equal(first, second)


def test_backend_auto(weights_copy):
    assert isinstance(load_predictor(weights_copy, backend="auto", device="cpu"), OnnxPredictor)
    (weights_copy / "model.onnx").unlink()
    assert isinstance(load_predictor(weights_copy, backend="auto", device="cpu"), TorchPredictor)
    with pytest.raises(WeightsError, match="model.onnx does not exist"):
        load_predictor(weights_copy, backend="onnx")


def test_backend_torch_without_pt_says_so(weights_copy):
    (weights_copy / "model.pt").unlink()
    with pytest.raises(WeightsError, match="backend 'torch' requested but .*model.pt does not exist"):
        load_predictor(weights_copy, backend="torch")


def test_single_files(tiny_weights, tmp_path):
    assert isinstance(load_predictor(tiny_weights / "model.pt", device="cpu"), TorchPredictor)
    shutil.copy(tiny_weights / "model.onnx", tmp_path / "m.onnx")
    with pytest.raises(WeightsError, match="no model weights found"):
        load_predictor(tmp_path / "m.onnx")  # no m.json beside it
    shutil.copy(tiny_weights / "model.json", tmp_path / "m.json")
    with pytest.raises(WeightsError, match="no sha256 for m.onnx"):
        load_predictor(tmp_path / "m.onnx")


def test_checksum_mismatch_refused(weights_copy):
    path = weights_copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum") as info:
        load_predictor(weights_copy, backend="onnx")
    assert "model.onnx" in str(info.value)


def test_torch_checksum_mismatch_refused(weights_copy):
    with open(weights_copy / "model.pt", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(WeightsError, match="checksum"):
        load_predictor(weights_copy, backend="torch")


def test_torch_loads_weights_only(weights_copy, capfd):
    import torch

    state = torch.load(weights_copy / "model.pt", weights_only=True)
    state["extra"] = NotAllowed()
    path = weights_copy / "model.pt"
    torch.save(state, path)
    spec = json.loads((weights_copy / "model.json").read_text())
    spec["checksums"]["model.pt"] = sha256_file(path)  # the checksum is right: only the pickle is bad
    (weights_copy / "model.json").write_text(json.dumps(spec))
    with pytest.raises(WeightsError, match="weights-only"):
        load_predictor(weights_copy, backend="torch")
    with pytest.raises(WeightsError, match="weights-only"):
        TorchPredictor(path)
    assert "arbitrary code ran" not in capfd.readouterr().out


def test_torch_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(WeightsError):
        load_predictor(path)


def test_unknown_key_in_model_json_refused(weights_copy):
    spec = json.loads((weights_copy / "model.json").read_text())
    spec["postprocess"]["seed_treshold"] = 0.3
    (weights_copy / "model.json").write_text(json.dumps(spec))
    with pytest.raises(WeightsError, match="seed_treshold"):
        load_predictor(weights_copy)


def test_onnx_io_mismatch_refused(weights_copy):
    """A model.onnx taking 4 channels where its spec says 3 is refused when loaded."""
    import torch

    path = weights_copy / "model.onnx"
    torch.onnx.export(torch.nn.Conv2d(4, 5, 1), (torch.rand(1, 4, 16, 16),), str(path), input_names=["image"],
                      output_names=["outputs"], dynamic_axes={"image": {0: "b"}, "outputs": {0: "b"}}, dynamo=False)
    spec = json.loads((weights_copy / "model.json").read_text())
    spec["checksums"]["model.onnx"] = sha256_file(path)
    (weights_copy / "model.json").write_text(json.dumps(spec))
    with pytest.raises(WeightsError, match="does not match its spec"):
        load_predictor(weights_copy, backend="onnx")


def test_not_an_onnx_file_refused(weights_copy):
    path = weights_copy / "model.onnx"
    path.write_bytes(b"not a model")
    spec = json.loads((weights_copy / "model.json").read_text())
    spec["checksums"]["model.onnx"] = sha256_file(path)
    (weights_copy / "model.json").write_text(json.dumps(spec))
    with pytest.raises(WeightsError, match="cannot load"):
        load_predictor(weights_copy, backend="onnx")


def test_missing_weights_message(tmp_path):
    with pytest.raises(WeightsError) as info:
        load_predictor(tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message
    assert "model.json" in message and "crossct.export" in message and "--weights" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no model weights found"):
        load_predictor(tmp_path / "empty")


def test_bad_backend_lists_choices(tiny_weights):
    with pytest.raises(ValueError, match=r"\['auto', 'onnx', 'torch'\]"):
        load_predictor(tiny_weights, backend="tensorrt")  # type: ignore[arg-type]


def test_environment_variable_is_used(tiny_weights, monkeypatch):
    monkeypatch.setenv("CROSSCT_WEIGHTS", str(tiny_weights))
    assert isinstance(load_predictor(None, device="cpu"), OnnxPredictor)


def test_onnx_path_does_not_import_torch(tiny_weights):
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from crossct.io import read_image, write_labels
        from crossct.predictors import load_predictor
        from crossct.pipeline import segment
        predictor = load_predictor({str(tiny_weights)!r}, backend="auto", device="cpu")
        labels = segment(np.random.default_rng(0).random((80, 70), dtype=np.float32), predictor)
        assert labels.shape == (80, 70), labels.shape
        import crossct.batch, crossct.cli, crossct.overlay
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if "torch" in m)
        print("ok", type(predictor).__name__)
        """
    )
    result = run_python(["-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "OnnxPredictor"]


def test_cuda_requested_without_cuda_is_a_weights_error(tiny_weights):
    import onnxruntime
    import torch

    if torch.cuda.is_available() or "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA: the refusal cannot be exercised")
    for backend in ("onnx", "torch"):
        with pytest.raises(WeightsError, match="'cuda' requested"):
            load_predictor(tiny_weights, backend=backend, device="cuda")


def test_export_set_changes_stored_settings_and_refuses_unknown_sections():
    from crossct.export import apply_settings, tiny_spec

    spec = apply_settings(tiny_spec(), ["tiling.batch_size=16", "postprocess.seed_threshold=0.35",
                                        "postprocess.method=threshold"])
    assert spec.tiling.batch_size == 16 and spec.postprocess.seed_threshold == 0.35
    assert spec.postprocess.method == "threshold"
    with pytest.raises(ValueError, match="SECTION.FIELD"):
        apply_settings(tiny_spec(), ["model.arch=swin_unetr"])
    with pytest.raises(ValueError, match=r"tiling: unknown key\(s\) \['tile'\]; valid: .*'tile_size'"):
        apply_settings(tiny_spec(), ["tiling.tile=3"])


def test_cpu_predictor_runs_calls_side_by_side_with_the_same_result(onnx_predictor):
    """One network call per core (ONNX Runtime sessions are thread-safe); labels as from serial calls."""
    from crossct.predictors import cpu_calls_and_threads

    calls, threads = cpu_calls_and_threads()
    assert onnx_predictor.concurrent_calls == calls >= 1 and threads >= 1
    assert onnx_predictor.session.get_session_options().intra_op_num_threads == threads
    image = cells_image(300, 280, seed=5)
    concurrent = predict_outputs(image[:, :, None], onnx_predictor)
    onnx_predictor.concurrent_calls = 1
    try:
        serial = predict_outputs(image[:, :, None], onnx_predictor)
    finally:
        onnx_predictor.concurrent_calls = calls
    np.testing.assert_array_equal(concurrent, serial)


@pytest.mark.parametrize("cores, expected", [(1, (1, 1)), (2, (2, 1)), (8, (8, 1)), (32, (8, 4))])
def test_cpu_calls_and_threads_share_out_the_cores(monkeypatch, cores, expected):
    import crossct.predictors as predictors

    monkeypatch.setattr(predictors, "available_cpus", lambda: cores)
    assert predictors.cpu_calls_and_threads() == expected
