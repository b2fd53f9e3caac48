"""benchmarks/bench_gpu.py: the clear stop where there is no GPU, the FLOP count, and its report on the CPU path."""

import numpy as np
import pytest

from benchmarks import bench_gpu


def test_no_cuda_provider_stops_with_a_message_and_status_2(tiny_weights, monkeypatch, capsys):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert bench_gpu.main(["--weights", str(tiny_weights)]) == bench_gpu.EXIT_NO_GPU == 2
    err = capsys.readouterr().err
    assert "offers no CUDA execution provider" in err and "onnxruntime-gpu" in err
    assert "Nothing was measured" in err


def test_cuda_provider_without_a_visible_gpu_stops_too(tiny_weights, monkeypatch, capsys):
    import onnxruntime

    from crossct import predictors

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(predictors, "_cuda_devices_visible", lambda: False)
    assert bench_gpu.main(["--weights", str(tiny_weights)]) == 2
    assert "no NVIDIA GPU visible" in capsys.readouterr().err


def test_onnx_flops_of_a_known_graph(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w1 = helper.make_tensor("w1", TensorProto.FLOAT, [8, 3, 3, 3], rng.standard_normal(8 * 3 * 9).astype(np.float32))
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [8, 4, 2, 2], rng.standard_normal(8 * 4 * 4).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("ConvTranspose", ["r", "w2"], ["y"], strides=[2, 2])],
        "known", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "known.onnx"))
    conv = 2 * (2 * 8 * 16 * 16) * (3 * 3 * 3)            # output elements x (Cin x kh x kw), batch 2
    transposed = 2 * (2 * 8 * 16 * 16) * (4 * 2 * 2)      # input elements x (Cout x kh x kw)
    assert bench_gpu.count_onnx_flops(tmp_path / "known.onnx", (2, 3, 16, 16)) == conv + transposed


def test_onnx_flops_of_the_unet_equal_the_torch_count(tiny_weights):
    pytest.importorskip("onnx")
    torch = pytest.importorskip("torch")
    from benchmarks.bench_speed import count_flops
    from crossct.config import load_spec
    from crossct.nets import build_network

    spec = load_spec(tiny_weights / "model.json")
    t = spec.tiling.tile_size
    expected = count_flops(build_network(spec.model), (1, 3, t, t))
    assert expected > 0
    assert bench_gpu.count_onnx_flops(tiny_weights / "model.onnx", (1, 3, t, t)) == expected
    del torch


def test_network_time_is_the_union_of_overlapping_calls():
    class Stub:
        spec, description, on_gpu, concurrent_calls = None, "stub", False, 2

    timed = bench_gpu.TimedPredictor(Stub())
    timed.intervals = [(1.0, 3.0), (0.0, 2.0), (5.0, 6.0), (5.5, 5.7)]
    assert timed.seconds == pytest.approx(4.0)


@pytest.mark.slow
def test_cpu_check_mode_compares_and_writes_the_tables(tiny_weights, tmp_path, capsys):
    import cv2

    from crossct.synthetic import synthetic_cells

    images = tmp_path / "images"
    images.mkdir()
    for seed in (1, 2):
        cv2.imwrite(str(images / f"cell_{seed}.png"), synthetic_cells(200, 260, seed=seed)[0])
    out = tmp_path / "gpu.md"
    assert bench_gpu.main(["--provider", "cpu", "--weights", str(tiny_weights), "--images-dir", str(images),
                           "--repeat", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "2 of 2 label images identical" in text
    assert "| cell_1.png | 0.05 | yes | 1.0000 |" in text
    assert "| wall s | model s | net s | post s | tiles |" in text
    assert "tiles" in text and "s per MP" in text
    assert text in capsys.readouterr().out
