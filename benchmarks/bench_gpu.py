"""The ONNX Runtime CUDA path on an NVIDIA GPU: labels against the CPU path, time per 1-MP image, FLOP bound.

From the repository root, on a machine with an NVIDIA GPU, its driver and onnxruntime-gpu
(``pip install --require-hashes -r requirements-gpu.lock``; ``pip install onnx`` for the FLOP columns)::

    python -m benchmarks.bench_gpu [--weights weights] [--data ../shared/data] [--images 20] [--out gpu.md]
    python -m benchmarks.bench_gpu --images-dir DIR        # any folder of images (no ground truth)

1. Labels: every image (the ``--split`` rows of the manifest, or ``--images-dir``) is segmented by
   the CPU path and the CUDA path with the same weights; per image the table says whether the label
   images are identical and, where not, the F1 at IoU 0.5 of the CUDA labels against the CPU labels
   (1.0: the same cells) and of both against the ground truth.
2. Speed: a synthetic 1000 x 1000 image (:func:`crossct.synthetic.synthetic_cells`), segmented
   ``--repeat`` times after a warm-up; the medians of wall, model (tiling + network + blending), net
   (wall time with a network call running) and post-processing time; and the seconds per megapixel
   over the images of 1.
3. The FLOP bound: FLOPs per tile counted from the ONNX graph (2 x the multiply-accumulates of every
   Conv, ConvTranspose, MatMul and Gemm, as ``bench_speed`` counts them on the torch module) x tiles,
   over the GPU's dense float32 throughput measured in the same run with ONNX Runtime (the best of a
   4096^3 MatMul and a 3x3 Conv, in the math mode ONNX Runtime uses for the network: TF32 where the
   GPU has it). Needs the ``onnx`` package; without it those columns say n/a.

Where ONNX Runtime offers no CUDA execution provider, or no GPU is visible, it says so and exits
with status 2, measuring nothing. ``--provider cpu`` runs the same code with the CPU path in place
of the CUDA one (a check of this script; it measures nothing about a GPU).
Measures only; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks.bench_speed import best_seconds

EXIT_NO_GPU = 2


@dataclass
class Sample:
    """One image to compare: its path, and its ground-truth labels' path when known."""

    image: Path
    label: Path | None = None


def cuda_unavailable_reason() -> str | None:
    """Why the CUDA path cannot run here, or None when ONNX Runtime offers it and a GPU is visible."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return (f"ONNX Runtime {ort.__version__} offers no CUDA execution provider (only {', '.join(available)}): "
                "install onnxruntime-gpu (pip install --require-hashes -r requirements-gpu.lock)")
    from crossct.predictors import _cuda_devices_visible

    if not _cuda_devices_visible():
        return "no NVIDIA GPU visible (libcuda.so.1 missing, or the driver reports no device)"
    return None


def gpu_name() -> str:
    """The GPU's name and the driver version, from NVML through nvidia-smi when it is on PATH."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip().splitlines()[0]
    return "unknown GPU (no nvidia-smi)"


# --------------------------------------------------------------------------- FLOPs from the ONNX graph


def count_onnx_flops(model_path: Path, shape: tuple[int, int, int, int]) -> int:
    """FLOPs (2 x multiply-accumulates) of the Conv / ConvTranspose / MatMul / Gemm nodes for one input of ``shape``.

    The graph's input is fixed to ``shape`` and ONNX shape inference gives every tensor's shape.
    Normalisation, activations, additions and the softmax are left out, as in
    ``benchmarks.bench_speed.count_flops`` (which counts the same on the torch module).
    """
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(model_path))
    graph_input = model.graph.input[0]
    for dim, size in zip(graph_input.type.tensor_type.shape.dim, shape):
        dim.ClearField("dim_param")
        dim.dim_value = size
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, tuple[int, ...]] = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(numpy_helper.to_array(init).shape)

    def need(name: str, node) -> tuple[int, ...]:
        if name not in shapes:
            raise ValueError(f"{model_path}: shape inference gave no shape for {name!r} ({node.op_type} {node.name})")
        return shapes[name]

    total = 0
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            weight, out = need(node.input[1], node), need(node.output[0], node)
            total += 2 * math.prod(out) * math.prod(weight[1:])  # weight: (Cout, Cin/groups, kh, kw)
        elif node.op_type == "ConvTranspose":
            x, weight = need(node.input[0], node), need(node.input[1], node)  # weight: (Cin, Cout/groups, kh, kw)
            total += 2 * math.prod(x) * math.prod(weight[1:])
        elif node.op_type in ("MatMul", "Gemm"):
            a, b = need(node.input[0], node), need(node.input[1], node)
            k = a[-2] if node.op_type == "Gemm" and attrs.get("transA", 0) else a[-1]
            total += 2 * math.prod(need(node.output[0], node)) * k
    return total


def _dense_models(folder: Path, small: bool) -> dict[str, tuple[Path, dict[str, np.ndarray], int]]:
    """A 4096^3 MatMul and a 3x3 Conv (64 -> 64 channels, 8 x 512 x 512) as ONNX files, with inputs and
    FLOPs; ``small``: 1024^3 and 1 x 256 x 256, sizes a CPU does in well under a second."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    n, b, c, hw = (1024, 1, 64, 256) if small else (4096, 8, 64, 512)
    matmul = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])]))
    weight = helper.make_tensor("w", TensorProto.FLOAT, [c, c, 3, 3], rng.standard_normal((c, c, 3, 3), np.float32).ravel())
    conv = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv3x3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, c, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, c, hw, hw])], [weight]))
    out = {}
    for name, model, inputs, flops in [
        (f"MatMul {n}^3", matmul, {"a": rng.standard_normal((n, n), np.float32), "b": rng.standard_normal((n, n), np.float32)},
         2 * n**3),
        (f"Conv 3x3 {c}->{c}, {b}x{hw}x{hw}", conv, {"x": rng.standard_normal((b, c, hw, hw), np.float32)}, 2 * b * c * hw * hw * c * 9),
    ]:
        model.opset_import[0].version = 17
        model.ir_version = min(model.ir_version, 9)
        path = folder / f"{model.graph.name}.onnx"
        onnx.save(model, str(path))
        out[name] = (path, inputs, flops)
    return out


def dense_throughput(providers: list, repeat: int = 10) -> tuple[float, str]:
    """(best FLOP/s, which kernel) of dense float32 work on the given providers, measured with ONNX Runtime."""
    import onnxruntime as ort

    best, which = 0.0, ""
    small = providers[0] == "CPUExecutionProvider"
    with tempfile.TemporaryDirectory(prefix="crossct-dense-") as tmp:
        for name, (path, inputs, flops) in _dense_models(Path(tmp), small).items():
            session = ort.InferenceSession(str(path), providers=providers)
            seconds = best_seconds(lambda: session.run(None, inputs), repeat)
            if flops / seconds > best:
                best, which = flops / seconds, name
    return best, which


# --------------------------------------------------------------------------- the two paths


class TimedPredictor:
    """Wraps a predictor: the wall time during which at least one predict() call runs (calls overlap:
    2 on a GPU, one per core on a CPU), and the tiles seen."""

    def __init__(self, predictor) -> None:
        import threading

        self._inner = predictor
        self.spec, self.description = predictor.spec, predictor.description
        self.on_gpu, self.concurrent_calls = predictor.on_gpu, predictor.concurrent_calls
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.intervals: list[tuple[float, float]] = []
        self.tiles = 0

    @property
    def seconds(self) -> float:
        """Length of the union of the predict() intervals."""
        total, end = 0.0, float("-inf")
        for start, stop in sorted(self.intervals):
            if stop > end:
                total += stop - max(start, end)
                end = stop
        return total

    def predict(self, batch: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = self._inner.predict(batch)
        with self._lock:
            self.intervals.append((t, time.perf_counter()))
            self.tiles += len(batch)
        return out


def samples_from(args) -> list[Sample]:
    if args.images_dir is not None:
        from crossct.io import list_images

        samples = [Sample(p) for p in list_images(args.images_dir)]
    else:
        from crossct.train.records import read_manifest

        manifest = args.data / "manifest.csv"
        if not manifest.is_file():
            raise SystemExit(f"bench_gpu: no {manifest} (pass --data DIR or --images-dir DIR)")
        samples = [Sample(Path(r.image), Path(r.label)) for r in read_manifest(manifest, split=args.split)]
    if args.images:
        samples = samples[: args.images]
    if not samples:
        raise SystemExit("bench_gpu: no images to compare")
    return samples


def read_samples(samples: list[Sample]) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(name, image, ground-truth labels or None) of each sample, read once."""
    from crossct.io import read_image
    from evaluate import read_labels

    return [(s.image.name, read_image(s.image), read_labels(s.label) if s.label is not None else None) for s in samples]


def compare_labels(items: list[tuple[str, np.ndarray, np.ndarray | None]], reference, candidate) -> list[dict]:
    """Per (name, image, truth or None): identical or not, F1 of candidate against reference, and of
    both against the ground truth."""
    from crossct.pipeline import segment
    from evaluate import f1_score

    rows = []
    for name, image, truth in items:
        ref, got = segment(image, reference), segment(image, candidate)
        row = {"image": name, "MP": image.shape[0] * image.shape[1] / 1e6,
               "identical": ref.shape == got.shape and bool(np.array_equal(ref, got)),
               "cells": (int(ref.max()), int(got.max()))}
        row["f1_vs_ref"] = 1.0 if row["identical"] else float(f1_score(ref, got)["f1"])
        if truth is not None:
            row["f1_gt"] = (float(f1_score(truth, ref)["f1"]), float(f1_score(truth, got)["f1"]))
        rows.append(row)
    return rows


def time_one_megapixel(predictor: TimedPredictor, repeat: int) -> dict[str, float]:
    """Medians over ``repeat`` runs on a synthetic 1000 x 1000 image, after one warm-up run."""
    from crossct.pipeline import Timings, segment
    from crossct.synthetic import synthetic_cells

    image = synthetic_cells(1000, 1000, seed=3)[0]
    segment(image, predictor)
    runs = []
    for _ in range(repeat):
        predictor.reset()
        timings = Timings()
        t = time.perf_counter()
        segment(image, predictor, timings=timings)
        runs.append({"wall": time.perf_counter() - t, "model": timings.model, "net": predictor.seconds,
                     "post": timings.postprocess, "tiles": predictor.tiles})
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


# --------------------------------------------------------------------------- report


def report(device: str, runtime: str, rows: list[dict], speed: dict[str, float], flops_per_tile: int | None,
           throughput: tuple[float, str] | None, tile: int, provider: str) -> str:
    lines = [f"# bench_gpu: ONNX Runtime {provider.upper()} path against the CPU path", "",
             f"{device}; {runtime}", ""]
    identical = sum(r["identical"] for r in rows)
    lines += [f"## Labels: {provider} against cpu, {len(rows)} images", "",
              f"{identical} of {len(rows)} label images identical; lowest F1 (IoU 0.5) of {provider} labels "
              f"against cpu labels: {min(r['f1_vs_ref'] for r in rows):.4f}.", ""]
    has_gt = all("f1_gt" in r for r in rows)
    header = ["image", "MP", "identical", f"F1 {provider} vs cpu", "cells cpu / " + provider]
    header += ["F1 vs truth: cpu", f"F1 vs truth: {provider}"] if has_gt else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["image"], f"{r['MP']:.2f}", "yes" if r["identical"] else "no", f"{r['f1_vs_ref']:.4f}",
                 f"{r['cells'][0]} / {r['cells'][1]}"]
        cells += [f"{r['f1_gt'][0]:.4f}", f"{r['f1_gt'][1]:.4f}"] if has_gt else []
        lines.append("| " + " | ".join(cells) + " |")
    if has_gt:
        lines += ["", f"mean F1 vs truth: cpu {statistics.fmean(r['f1_gt'][0] for r in rows):.4f}, "
                      f"{provider} {statistics.fmean(r['f1_gt'][1] for r in rows):.4f}"]
    lines += ["", f"## Speed: one 1000 x 1000 image ({provider}, medians)", ""]
    header = ["wall s", "model s", "net s", "post s", "tiles"]
    values = [f"{speed['wall']:.3f}", f"{speed['model']:.3f}", f"{speed['net']:.3f}", f"{speed['post']:.3f}",
              f"{speed['tiles']:.0f}"]
    if flops_per_tile and throughput:
        bound = speed["tiles"] * flops_per_tile / throughput[0]
        header += ["GFLOP", "bound s", "model / bound", "net / bound"]
        values += [f"{speed['tiles'] * flops_per_tile / 1e9:.1f}", f"{bound:.4f}", f"{speed['model'] / bound:.1f}",
                   f"{speed['net'] / bound:.1f}"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(values) + " |", ""]
    if flops_per_tile and throughput:
        lines.append(f"FLOPs per {tile} px tile: {flops_per_tile / 1e9:.2f} GFLOP (ONNX graph); dense float32 "
                     f"throughput measured in this run: {throughput[0] / 1e12:.2f} TFLOP/s ({throughput[1]}).")
    else:
        lines.append("FLOP bound: n/a (needs the onnx package: pip install onnx)")
    mp = sum(r["MP"] for r in rows)
    lines.append(f"Over the {len(rows)} images above ({mp:.1f} MP), segmenting took "
                 f"{speed.get('images_s', float('nan')):.2f} s on {provider}: {speed.get('images_s', float('nan')) / mp:.3f} s per MP.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.classical_val import default_data_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", type=Path, default=Path("weights"), help="weights folder with model.onnx + model.json")
    p.add_argument("--data", type=Path, default=default_data_dir(), help="data folder holding manifest.csv")
    p.add_argument("--split", default="val", help="manifest split to compare on")
    p.add_argument("--images-dir", type=Path, default=None, help="compare on these images instead (no ground truth)")
    p.add_argument("--images", type=int, default=20, help="at most this many images (0: all)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs of the 1-MP image")
    p.add_argument("--provider", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: run this script's code with the CPU path in place of CUDA (measures no GPU)")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = p.parse_args(argv)

    if args.provider == "cuda":
        reason = cuda_unavailable_reason()
        if reason:
            print(f"bench_gpu: cannot measure the CUDA path here: {reason}. Nothing was measured.", file=sys.stderr)
            return EXIT_NO_GPU

    import onnxruntime as ort

    from crossct.predictors import load_predictor

    samples = samples_from(args)
    reference = load_predictor(args.weights, backend="onnx", device="cpu")
    candidate = TimedPredictor(load_predictor(args.weights, backend="onnx", device=args.provider))
    if args.provider == "cuda" and not candidate.on_gpu:
        print(f"bench_gpu: the CUDA execution provider did not start ({candidate.description}): "
              "check the driver (>= 580 for CUDA 13) and the NVIDIA runtime wheels. Nothing was measured.", file=sys.stderr)
        return EXIT_NO_GPU
    device = gpu_name() if args.provider == "cuda" else "CPU (--provider cpu: no GPU measured)"
    runtime = f"onnxruntime {ort.__version__}, {candidate.description}"
    print(f"bench_gpu: {device}; {runtime}; {len(samples)} images", file=sys.stderr)

    items = read_samples(samples)
    rows = compare_labels(items, reference, candidate)  # also the warm-up of both paths
    from crossct.pipeline import segment

    t = time.perf_counter()
    for _, image, _ in items:
        segment(image, candidate)
    images_s = time.perf_counter() - t
    speed = time_one_megapixel(candidate, args.repeat)
    speed["images_s"] = images_s

    tile = candidate.spec.tiling.tile_size
    flops_per_tile = throughput = None
    try:
        flops_per_tile = count_onnx_flops(args.weights / "model.onnx", (1, 3, tile, tile))
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.provider == "cuda" else ["CPUExecutionProvider"]
        throughput = dense_throughput(providers)
    except ImportError:
        pass
    text = report(device, runtime, rows, speed, flops_per_tile, throughput, tile, args.provider)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
