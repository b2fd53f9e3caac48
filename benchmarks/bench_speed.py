"""Our pipeline against the organisers' baseline, side by side, per image size, beside the FLOP-bound limit.

From the repository root::

    python -m benchmarks.bench_speed                                   # 0.25 1 4 16 100 MP, weights/
    python -m benchmarks.bench_speed --sizes 0.25 1 --repeat 2         # a quick look
    python -m benchmarks.bench_speed --sizes 1 --val                   # + F1 of both on the val split

For every size a synthetic image (:func:`crossct.synthetic.synthetic_cells`, square, gray uint8,
written as TIFF) is segmented by each pipeline in a fresh process, so the peak resident memory
(``ru_maxrss`` of that child) belongs to one pipeline and one size.  The model is loaded and warmed
up once (on a crop of the image), then the image is read, segmented and written ``--repeat``
times; the table shows the median of those per-image runs, i.e. batch-mode time per image:

- ``wall``: read + segment + write; ``norm``: normalisation; ``model``: tiling + network + blending
  (ours) or MONAI's sliding window + softmax (baseline); ``net``: time inside the network calls
  alone; ``post``: post-processing; ``tiles``: network input tiles; ``RSS``: the child's peak.

The physical limit: FLOPs per tile (multiply-accumulates of every convolution and linear layer,
counted with forward hooks, x 2) x tiles / the machine's dense float32 throughput measured in the
same run (the best of a 2048^3 matrix multiply in NumPy and in PyTorch, and a 3x3 convolution in
PyTorch, with the same thread count as the pipelines).

``--weights``: a crossct weights folder holding ``model.onnx`` (ours), ``model.pt`` (baseline) and
``model.json``; default ``weights/`` when it has a model.json, else the paper-size U-Net with random
weights, exported to a temporary folder.  Random weights leave the model time right but make the
post-processing time (and F1) meaningless: the output says so.

Measures only; asserts nothing about time.  The machine should be idle: the load average at the
start and end is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from crossct.predictors import available_cpus

REPO = Path(__file__).resolve().parents[1]
PIPELINES = ("ours", "baseline")
MB = 1024 * 1024


# --------------------------------------------------------------------------- child processes
# Shared with bench_cold_start and bench_memory_flat.


@dataclass
class ChildRun:
    """One finished child process: exit code, wall seconds, peak RSS (ru_maxrss) and its output."""

    returncode: int
    seconds: float
    max_rss_mb: float
    stdout: str
    stderr: str
    samples: list[tuple[float, Any]] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        """The last stdout line as JSON (the workers' report); raises with the child's stderr on failure."""
        if self.returncode != 0:
            raise RuntimeError(f"child failed with exit code {self.returncode}:\n{self.stderr[-3000:]}")
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        if not lines:
            raise RuntimeError(f"child printed no report:\n{self.stderr[-3000:]}")
        return json.loads(lines[-1])


def rss_mb(pid: int) -> float | None:
    """Current resident memory of process ``pid`` in MiB (``VmRSS``), None once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_child(argv: Sequence[str], *, timeout: float | None = None, sample_every: float | None = None,
              sampler: Callable[[int], Any] | None = None, cwd: Path = REPO) -> ChildRun:
    """Run ``argv`` to completion and return its wall time and its own peak RSS (from ``wait4``).

    With ``sample_every``, ``sampler(pid)`` (default: :func:`rss_mb`) is recorded every that many
    seconds while the child runs.  A child running past ``timeout`` is killed with its process group.
    """
    sampler = sampler or rss_mb
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        samples: list[tuple[float, Any]] = []
        poll = sample_every or (0.05 if timeout else None)
        killed = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG if poll else 0)
            if pid:
                break
            now = time.perf_counter() - start
            if sample_every:
                samples.append((now, sampler(proc.pid)))
            if timeout and now > timeout and not killed:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
            time.sleep(poll)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, tell Popen
        out.seek(0)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        if killed:
            stderr += f"\n[killed after {timeout} s]"
        return ChildRun(proc.returncode, seconds, usage.ru_maxrss / 1024, out.read().decode(errors="replace"),
                        stderr, samples)


@contextlib.contextmanager
def work_folder(path: Path | None, prefix: str) -> Iterator[Path]:
    """``path`` (created if missing, kept), or a temporary folder removed afterwards."""
    work = path or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if path is None:
            shutil.rmtree(work, ignore_errors=True)


def this_module(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.bench_speed", *args]


# --------------------------------------------------------------------------- inputs


def default_weights(weights: Path | None, work: Path) -> tuple[Path, bool]:
    """(weights folder, whether it holds random weights made here); see the module docstring."""
    if weights is not None:
        return weights, False
    shipped = REPO / "weights"
    if (shipped / "model.json").is_file():
        return shipped, False
    out = work / "random_paper_unet"
    if not (out / "model.json").is_file():
        print(f"weights/ has no model.json: exporting the paper-size U-Net with random weights to {out}", flush=True)
        run_child(this_module("--worker", "export-random", "--out", str(out))).json()
    return out, True


def side_for(megapixels: float) -> int:
    return int(round(math.sqrt(megapixels * 1e6)))


def synthetic_image_file(megapixels: float, folder: Path, seed: int = 0) -> Path:
    """A square synthetic gray uint8 TIFF of about ``megapixels`` (made once, then reused)."""
    side = side_for(megapixels)
    path = folder / f"synthetic_{side}x{side}_seed{seed}.tif"
    if not path.is_file():
        import tifffile

        from crossct.synthetic import synthetic_cells

        image, _ = synthetic_cells(side, side, seed=seed)
        tmp = path.with_name(f".{path.name}.tmp")
        tifffile.imwrite(tmp, image)
        os.replace(tmp, path)
    return path


def machine_line() -> str:
    """CPU model, the vector instructions that decide convolution speed, and the CPUs available."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = [name for flag, name in [("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "VNNI"),
                                   ("avx512_bf16", "BF16"), ("amx_tile", "AMX")] if flag in flags]
    return f"{model} ({' '.join(isa) or 'no AVX2'}), {available_cpus()} CPU(s) available"


def load_line() -> str:
    one, five, _ = os.getloadavg()
    busy = one > 0.5 * available_cpus()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min)" + (
        "  ** machine busy: timings are NOT final **" if busy else "")


# --------------------------------------------------------------------------- workers (run in children)


def _vmhwm_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _warm_up_crop(image):
    """A crop of at most 768 x 768: enough tiles for full batches, cheap even for 100 MP images."""
    return image[: min(image.shape[0], 768), : min(image.shape[1], 768)]


def _timed_runs(args: argparse.Namespace, counting, make_timings: Callable[[], Any],
                run: Callable[[Any, Any], Any], write: Callable[[Any], Any]) -> list[dict[str, Any]]:
    """Warm up on a crop, then ``args.repeat`` times: read, ``run(image, timings)``, ``write(labels)``.

    ``counting`` is the wrapped network (its ``tiles`` and ``seconds`` reset per run); the timings
    object has ``normalize``, ``model`` and ``postprocess`` seconds.
    """
    from crossct.io import read_image

    run(_warm_up_crop(read_image(args.image)), make_timings())
    runs = []
    for _ in range(args.repeat):
        counting.tiles, counting.seconds = 0, 0.0
        timings = make_timings()
        t0 = time.perf_counter()
        image = read_image(args.image)
        t1 = time.perf_counter()
        labels = run(image, timings)
        t2 = time.perf_counter()
        write(labels)
        t3 = time.perf_counter()
        runs.append({"wall": t3 - t0, "read": t1 - t0, "norm": timings.normalize, "model": timings.model,
                     "net": counting.seconds, "post": timings.postprocess, "write": t3 - t2,
                     "tiles": counting.tiles, "cells": int(labels.max())})
        del image, labels
    return runs


def _worker_ours(args: argparse.Namespace) -> dict[str, Any]:
    from crossct.io import write_labels
    from crossct.pipeline import Timings, segment
    from crossct.predictors import load_predictor

    t0 = time.perf_counter()
    predictor = load_predictor(args.weights, backend=args.backend, device="cpu")
    load_s = time.perf_counter() - t0

    class Counting:
        """The predictor, counting tiles and the wall seconds during which a network call runs.

        Calls may run concurrently (``concurrent_calls``): the seconds are the union of the calls'
        intervals, so ``model - net`` stays the time when no network call is running.
        """

        def __init__(self, inner):
            self.inner, self.spec, self.description = inner, inner.spec, inner.description
            self.on_gpu = getattr(inner, "on_gpu", False)
            self.concurrent_calls = getattr(inner, "concurrent_calls", 1)
            self.tiles, self.seconds = 0, 0.0
            self._lock, self._running, self._since = threading.Lock(), 0, 0.0

        def predict(self, batch):
            with self._lock:
                if self._running == 0:
                    self._since = time.perf_counter()
                self._running += 1
            try:
                return self.inner.predict(batch)
            finally:
                with self._lock:
                    self._running -= 1
                    self.tiles += len(batch)
                    if self._running == 0:
                        self.seconds += time.perf_counter() - self._since

    counting = Counting(predictor)
    runs = _timed_runs(args, counting, Timings, lambda image, t: segment(image, counting, timings=t),
                       lambda labels: write_labels(Path(args.out) / "ours_label.tiff", labels))
    return {"pipeline": "ours", "runtime": predictor.description, "load_s": load_s, "runs": runs,
            "vmhwm_mb": _vmhwm_mb()}


def _counting_module(module):
    import torch

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.tiles, self.seconds = 0, 0.0

        def forward(self, x):
            t = time.perf_counter()
            y = self.inner(x)
            self.seconds += time.perf_counter() - t
            self.tiles += x.shape[0]
            return y

    return Counting(module).eval()


def _worker_baseline(args: argparse.Namespace) -> dict[str, Any]:
    import tifffile
    import torch

    from benchmarks.baseline import BaselineTimings, baseline_segment, load_baseline_model

    t0 = time.perf_counter()
    module, _ = load_baseline_model(args.weights)
    load_s = time.perf_counter() - t0
    counting = _counting_module(module)
    runs = _timed_runs(args, counting, BaselineTimings,
                       lambda image, t: baseline_segment(image, counting, timings=t),
                       lambda labels: tifffile.imwrite(Path(args.out) / "baseline_label.tiff", labels,
                                                       compression="zlib"))
    return {"pipeline": "baseline", "runtime": f"torch {torch.__version__} CPU, {torch.get_num_threads()} threads",
            "load_s": load_s, "runs": runs, "vmhwm_mb": _vmhwm_mb()}


def count_flops(module, shape: tuple[int, ...]) -> int:
    """FLOPs (2 x multiply-accumulates) of every Conv / ConvTranspose / Linear layer for one input of ``shape``.

    Normalisation, activations, additions and the softmax are left out (a few % of a U-Net).
    """
    import torch

    total = 0

    def conv_hook(layer, inputs, output):
        nonlocal total
        kernel = math.prod(layer.kernel_size) * layer.in_channels // layer.groups
        total += 2 * output.numel() * kernel

    def transposed_hook(layer, inputs, output):
        nonlocal total
        total += 2 * inputs[0].numel() * math.prod(layer.kernel_size) * layer.out_channels // layer.groups

    def linear_hook(layer, inputs, output):
        nonlocal total
        total += 2 * output.numel() * layer.in_features

    handles = []
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.conv._ConvTransposeNd):
            handles.append(layer.register_forward_hook(transposed_hook))
        elif isinstance(layer, torch.nn.modules.conv._ConvNd):
            handles.append(layer.register_forward_hook(conv_hook))
        elif isinstance(layer, torch.nn.Linear):
            handles.append(layer.register_forward_hook(linear_hook))
    try:
        with torch.inference_mode():
            module.eval()(torch.zeros(shape))
    finally:
        for handle in handles:
            handle.remove()
    return total


def best_seconds(fn: Callable[[], Any], repeat: int) -> float:
    """Fastest of ``repeat`` timed calls of ``fn``, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _worker_peak(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from benchmarks.baseline import ROI_SIZE
    from crossct.config import load_spec
    from crossct.nets import build_network

    threads = available_cpus()
    torch.set_num_threads(threads)
    n = args.matmul_size
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    gflops = {"numpy matmul": 2 * n**3 / best_seconds(lambda: a @ b, 5) / 1e9}
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    with torch.inference_mode():
        gflops["torch matmul"] = 2 * n**3 / best_seconds(lambda: ta @ tb, 5) / 1e9
        x, w = torch.rand(4, 64, 128, 128), torch.rand(64, 64, 3, 3)
        conv_flops = 2 * 4 * 64 * 128 * 128 * 64 * 9
        gflops["torch conv3x3"] = conv_flops / best_seconds(lambda: torch.nn.functional.conv2d(x, w, padding=1), 5) / 1e9

    spec = load_spec(Path(args.weights) / "model.json")
    network = build_network(spec.model)
    tile = spec.tiling.tile_size
    per_tile = {"ours": count_flops(network, (1, 3, tile, tile)),
                "baseline": count_flops(network, (1, 3, ROI_SIZE, ROI_SIZE))}
    return {"threads": threads, "gflops": gflops, "flops_per_tile": per_tile, "tile": tile, "roi": ROI_SIZE,
            "numpy": np.__version__, "torch": torch.__version__}


def _worker_val(args: argparse.Namespace) -> dict[str, Any]:
    from crossct.io import read_image
    from crossct.train.records import read_manifest
    from evaluate import f1_score, read_labels

    records = read_manifest(Path(args.data) / "manifest.csv", split=args.split)
    if not records:
        raise SystemExit(f"no {args.split!r} rows in {Path(args.data) / 'manifest.csv'}")
    if args.pipeline == "ours":
        from crossct.pipeline import segment
        from crossct.predictors import load_predictor

        predictor = load_predictor(args.weights, backend=args.backend, device="cpu")

        def run(image):
            return segment(image, predictor)
    else:
        from benchmarks.baseline import baseline_segment, load_baseline_model

        module, _ = load_baseline_model(args.weights)

        def run(image):
            return baseline_segment(image, module)

    start = time.perf_counter()
    scores = [[r.source, r.name, float(f1_score(read_labels(r.label), run(read_image(r.image)))["f1"])]
              for r in records]
    return {"pipeline": args.pipeline, "scores": scores, "seconds": time.perf_counter() - start}


def _worker_export_random(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from crossct.config import ModelSpec
    from crossct.export import export_weights
    from crossct.nets import build_network

    torch.manual_seed(0)
    spec = ModelSpec(metadata={"note": "paper-size U-Net, RANDOM weights (bench_speed)"})
    export_weights(build_network(spec.model).state_dict(), spec, args.out)
    return {"out": args.out}


WORKERS = {"ours": _worker_ours, "baseline": _worker_baseline, "peak": _worker_peak, "val": _worker_val,
           "export-random": _worker_export_random}


# --------------------------------------------------------------------------- the tables


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


COLUMNS = ("wall", "norm", "model", "net", "post")


def _row(size: float, name: str, report: dict[str, Any], rss: float) -> str:
    runs = report["runs"]
    cells = " | ".join(f"{_median(runs, k):.3f}" for k in COLUMNS)
    return f"| {size:g} | {name} | {runs[0]['tiles']} | {cells} | {rss:.0f} | {runs[0]['cells']} |"


def _ratio_row(size: float, ours: dict[str, Any], base: dict[str, Any], rss: tuple[float, float]) -> str:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b > 0 else "-"

    cells = " | ".join(ratio(_median(ours["runs"], k), _median(base["runs"], k)) for k in COLUMNS)
    return f"| {size:g} | **ours / baseline** | | {cells} | {ratio(*rss)} | |"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from benchmarks.classical_val import default_data_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1, 4, 16, 100], help="image sizes in megapixels")
    p.add_argument("--weights", type=Path, default=None,
                   help="weights folder (model.onnx + model.pt + model.json); default: weights/ or a random paper U-Net")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per size and pipeline below 10 MP (median shown)")
    p.add_argument("--repeat-large", type=int, default=1, help="timed runs per size and pipeline from 10 MP on")
    p.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    p.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto", help="our predictor's backend")
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the matrices timed for dense throughput")
    p.add_argument("--val", action="store_true", help="also score both pipelines on the val split (F1 at IoU 0.5)")
    p.add_argument("--data", type=Path, default=default_data_dir(), help="data folder with manifest.csv (for --val)")
    p.add_argument("--split", default="val", help="manifest split for --val")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where images, outputs and random weights go (default: a temporary folder, removed after)")
    p.add_argument("--timeout", type=float, default=None, help="seconds after which one child is killed")
    # Internal: run one measurement in this (child) process and print it as JSON.
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--image", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--pipeline", choices=PIPELINES, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)), flush=True)
        return 0

    with work_folder(args.work_dir, "crossct-bench-speed-") as work:
        return _run(args, work)


def _run(args: argparse.Namespace, work: Path) -> int:
    weights, random_weights = default_weights(args.weights, work)
    needed = {"model.json"} | ({"model.pt"} if "baseline" in args.pipelines else set())
    if "ours" in args.pipelines:
        needed.add("model.pt" if args.backend == "torch" else "model.onnx")
    missing = sorted(n for n in needed if not (weights / n).is_file())
    if missing:
        print(f"error: {weights} lacks {missing} (ours runs model.onnx, the baseline model.pt)", file=sys.stderr)
        return 2
    common = ["--weights", str(weights), "--backend", args.backend]
    print(f"# bench_speed: ours vs the organisers' baseline\n\n{machine_line()}; {load_line()}")
    print(f"weights: {weights}" + ("  ** RANDOM weights: model time is right; post-processing time, cell counts "
                                   "and F1 are NOT representative **" if random_weights else ""))

    peak = run_child(this_module("--worker", "peak", "--matmul-size", str(args.matmul_size), *common),
                     timeout=args.timeout).json()
    best = max(peak["gflops"].values()) * 1e9
    print("dense float32 throughput with %d thread(s): %s" % (
        peak["threads"], ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak["gflops"].items())))
    print(f"FLOPs per tile: ours ({peak['tile']}px) {peak['flops_per_tile']['ours'] / 1e9:.2f} GFLOP, "
          f"baseline ({peak['roi']}px) {peak['flops_per_tile']['baseline'] / 1e9:.2f} GFLOP\n")

    header = ("| MP | pipeline | tiles | wall s | norm s | model s | net s | post s | peak RSS MB | cells |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
    print("Per image in batch mode (model loaded and warmed up; median of the timed runs; "
          "wall = read + segment + write; net = wall time while a network call runs)\n")
    print(header, flush=True)
    results: dict[float, dict[str, tuple[dict[str, Any], float]]] = {}
    runtimes: dict[str, str] = {}
    for size in args.sizes:
        image = synthetic_image_file(size, work)
        repeat = args.repeat if size < 10 else args.repeat_large
        results[size] = {}
        for name in args.pipelines:
            out = work / f"out_{name}"
            out.mkdir(exist_ok=True)
            child = run_child(this_module("--worker", name, "--image", str(image), "--out", str(out),
                                          "--repeat", str(repeat), *common), timeout=args.timeout)
            try:
                report = child.json()
            except RuntimeError as exc:
                print(f"| {size:g} | {name} | failed: {str(exc).splitlines()[-1][:120]} |", flush=True)
                continue
            runtimes[name] = report["runtime"]
            results[size][name] = (report, child.max_rss_mb)
            print(_row(size, name, report, child.max_rss_mb), flush=True)
        if all(n in results[size] for n in PIPELINES):
            (ours, ours_rss), (base, base_rss) = results[size]["ours"], results[size]["baseline"]
            print(_ratio_row(size, ours, base, (ours_rss, base_rss)), flush=True)
    print("\n" + "; ".join(f"{k}: {v}" for k, v in runtimes.items()))

    print("\nFLOP-bound limit: tiles x FLOPs per tile / best dense throughput\n")
    print("| MP | pipeline | tiles | GFLOP | bound s | model s | model / bound | net s | net / bound |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for size, by_name in results.items():
        for name, (report, _) in by_name.items():
            runs = report["runs"]
            flops = runs[0]["tiles"] * peak["flops_per_tile"][name]
            bound = flops / best
            model, net = _median(runs, "model"), _median(runs, "net")
            print(f"| {size:g} | {name} | {runs[0]['tiles']} | {flops / 1e9:.0f} | {bound:.3f} | {model:.3f} | "
                  f"{model / bound:.2f} | {net:.3f} | {net / bound:.2f} |")

    if args.val:
        _print_val(args, common)
    print(f"\n{load_line()}")
    return 0


def _print_val(args: argparse.Namespace, common: list[str]) -> None:
    scores = {}
    for name in args.pipelines:
        child = run_child(this_module("--worker", "val", "--pipeline", name, "--data", str(args.data),
                                      "--split", args.split, *common), timeout=args.timeout)
        scores[name] = child.json()["scores"]
    sources = sorted({s for rows in scores.values() for s, _, _ in rows})
    n = len(next(iter(scores.values())))
    print(f"\nMean F1 at IoU 0.5 (challenge rules) on split `{args.split}` of {args.data} ({n} images)\n")
    print("| pipeline | " + " | ".join(sources) + " | all images |\n|---|" + "---|" * (len(sources) + 1))
    for name, rows in scores.items():
        per = [statistics.fmean(f for s, _, f in rows if s == source) for source in sources]
        cells = " | ".join(f"{v:.4f}" for v in per)
        print(f"| {name} | {cells} | {statistics.fmean(f for _, _, f in rows):.4f} |")


if __name__ == "__main__":
    sys.exit(main())
