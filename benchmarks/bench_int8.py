"""INT8 against float32: ONNX Runtime static quantisation of the shipped U-Net, speed and val F1.

    python -m benchmarks.bench_int8 [--weights weights] [--calibration-tiles 64] [--out DIR]

Quantises ``model.onnx`` with ``onnxruntime.quantization.quantize_static`` (QDQ format, per-channel
int8 weights, uint8 activations calibrated on normalised 256 x 256 crops of train images,
MinMax), then prints per-tile network + blending time of both models (over a 1-MP image, as
inference runs on a CPU) and the F1 at IoU 0.5 of the full pipeline with each on the val split.
The issue's rule:
INT8 ships only if it is faster and its val F1 stays within 0.01 of the float model.  Needs the
``onnx`` package (requirements-train.txt).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.classical_val import default_data_dir


def calibration_tiles(records, spec, n: int, seed: int = 0) -> np.ndarray:
    """``n`` normalised (3, t, t) crops, spread over the train images of every source."""
    from crossct.io import read_image
    from crossct.normalize import normalize_image

    rng = np.random.default_rng(seed)
    tile = spec.tiling.tile_size
    picks = rng.choice(len(records), size=min(n, len(records)), replace=False)
    tiles = []
    for i in picks:
        x = normalize_image(read_image(records[i].image), spec.normalize, channels_first=True)
        pad = [(0, 0), (0, max(0, tile - x.shape[1])), (0, max(0, tile - x.shape[2]))]
        x = np.pad(x, pad)
        y0 = rng.integers(0, x.shape[1] - tile + 1)
        x0 = rng.integers(0, x.shape[2] - tile + 1)
        tiles.append(x[:, y0:y0 + tile, x0:x0 + tile])
    return np.stack(tiles).astype(np.float32)


def quantize(float_dir: Path, out_dir: Path, tiles: np.ndarray) -> Path:
    """A weights folder like ``float_dir`` whose model.onnx is the INT8 model (checksum updated)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from crossct.config import load_spec, save_spec
    from crossct.predictors import sha256_file

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"image": tiles[i:i + 2]} for i in range(0, len(tiles), 2)])

        def get_next(self):
            return next(self.batches, None)

    out_dir.mkdir(parents=True, exist_ok=True)
    prepared = out_dir / "prepared.onnx"
    quant_pre_process(str(float_dir / "model.onnx"), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out_dir / "model.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    prepared.unlink()
    spec = load_spec(float_dir / "model.json")
    spec = dataclasses.replace(spec, checksums={"model.onnx": sha256_file(out_dir / "model.onnx")},
                               metadata={**spec.metadata, "quantized": "int8 static QDQ (benchmarks.bench_int8)"})
    save_spec(spec, out_dir / "model.json")
    return out_dir


def ms_per_tile(weights: Path, runs: int = 7) -> float:
    """Network + blending time per 256 tile over a 1-MP image, run as inference runs on this CPU
    (``cpu_batch_size`` tiles per call, ``concurrent_calls`` calls side by side)."""
    from crossct.pipeline import tiling_for
    from crossct.predictors import load_predictor
    from crossct.tiling import sliding_window, tile_grid

    predictor = load_predictor(weights, backend="onnx", device="cpu")
    tiling = tiling_for(predictor, predictor.spec.tiling)
    image = np.random.default_rng(0).random((3, 1000, 1000), dtype=np.float32)
    n_tiles = len(tile_grid(1000, 1000, tiling.tile_size, tiling.stride))

    def run() -> None:
        sliding_window(image, predictor.predict, tiling, concurrency=predictor.concurrent_calls)

    run()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) / n_tiles * 1000)
    return statistics.median(times)


def val_f1(weights: Path, records) -> dict[str, float]:
    from crossct.io import read_image
    from crossct.pipeline import segment
    from crossct.predictors import load_predictor
    from evaluate import f1_score, read_labels

    predictor = load_predictor(weights, backend="onnx", device="cpu")
    by_source: dict[str, list[float]] = {}
    for r in records:
        f1 = float(f1_score(read_labels(r.label), segment(read_image(r.image), predictor))["f1"])
        by_source.setdefault(r.source, []).append(f1)
    result = {s: statistics.fmean(v) for s, v in sorted(by_source.items())}
    result["all images"] = statistics.fmean(f for v in by_source.values() for f in v)
    result["mean over sources"] = statistics.fmean(statistics.fmean(v) for v in by_source.values())
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", type=Path, default=Path("weights"))
    p.add_argument("--data", type=Path, default=default_data_dir())
    p.add_argument("--calibration-tiles", type=int, default=64)
    p.add_argument("--out", type=Path, default=None, help="keep the INT8 weights folder here")
    p.add_argument("--no-val", action="store_true", help="speed only")
    args = p.parse_args(argv)

    from crossct.config import load_spec
    from crossct.train.records import read_manifest

    from benchmarks.bench_speed import load_line, machine_line

    manifest = args.data / "manifest.csv"
    spec = load_spec(args.weights / "model.json")
    out = args.out or Path(tempfile.mkdtemp(prefix="crossct-int8-"))
    print(f"# bench_int8: INT8 (static QDQ) against float32\n\n{machine_line()}; {load_line()}\n")
    t = time.perf_counter()
    int8 = quantize(args.weights, out, calibration_tiles(read_manifest(manifest, split="train"), spec,
                                                          args.calibration_tiles))
    print(f"quantised in {time.perf_counter() - t:.0f} s with {args.calibration_tiles} calibration tiles: {int8}\n")
    rows = {"float32": args.weights, "int8": int8}
    speed = {name: ms_per_tile(w) for name, w in rows.items()}
    scores = {} if args.no_val else {name: val_f1(w, read_manifest(manifest, split="val")) for name, w in rows.items()}
    columns = list(next(iter(scores.values())).keys()) if scores else []
    print("| " + " | ".join(["model", "ms per 256 tile (1-MP image)"] + [f"val F1 {c}" for c in columns]) + " |")
    print("|---|---|" + "---|" * len(columns))
    for name in rows:
        cells = [name, f"{speed[name]:.1f}"] + [f"{scores[name][c]:.4f}" for c in columns]
        print("| " + " | ".join(cells) + " |")
    print(f"\n{load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
