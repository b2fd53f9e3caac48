"""The paper's networks compared at equal training time on this machine: val F1 per source,
parameters and ms per tile, beside the paper's Table 4.

From the repository root, on an otherwise idle machine::

    python -m benchmarks.compare_networks --minutes 60                       # U-Net, ResUnet, UNETR, Swin-UNETR
    python -m benchmarks.compare_networks --minutes 2 --networks unet resunet --val-max-images 10   # a quick check
    python -m benchmarks.compare_networks --speed-only                       # ms per tile only (random weights)

For each network, from scratch and with the same settings (``--train-args`` adds more):

1. length: ``--minutes`` of training become steps through a throughput probe (two short runs of
   1 and 1 + ``--probe-steps`` steps; their difference is the time per step, start-up excluded).
   When ``python -m crossct.train`` offers ``--time-budget MINUTES``, it is passed as well, so the
   run also stops itself when the minutes are spent (``--length``);
2. ``python -m crossct.train supervised --model NAME --steps N --val-every 0`` (validation only
   at the end, so no network spends its minutes on validation; the final weights are kept);
3. ``python -m crossct.export`` to ONNX + PyTorch (the ONNX Runtime vs PyTorch check included);
4. post-processing thresholds tuned on the val images (:mod:`crossct.train.tune`, written into the
   weights' ``model.json``) and the val F1 per source with them: optimistic for unseen data, as
   the model card says, but the same for every network;
5. ms per tile: ONNX Runtime on the CPU as the product runs it (one thread per call,
   ``cpu_batch_size`` tiles of ``tile_size`` per call, full graph optimisation), median of
   ``--speed-repeats`` calls, in wall time and in CPU time of the process (the CPU time stays
   close to the idle wall time when other work shares the cores).

Each network's results are kept in ``WORK_DIR/NAME/result.json``: a rerun skips finished networks
(``--fresh`` redoes them).  Prints one markdown table.  Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
NETWORKS = ("unet", "resunet", "unetr", "swin")

# The paper's Table 4 (F1 on the authors' validation split / on the challenge submission).
# 5 classes: supervised pre-training with the 5 outputs we use (+ Cellpose/Omnipose data);
# 3 classes: the organisers' baselines (the only row with the ViT + U-Net).
PAPER = {
    "unet": {"name": "U-Net", "5-class": (0.5733, 0.5335), "3-class": (0.6463, 0.4937)},
    "resunet": {"name": "ResUnet", "5-class": (0.6287, 0.6011), "3-class": (0.6241, 0.5466)},
    "unetr": {"name": "ViT + U-Net (UNETR)", "5-class": None, "3-class": (0.2790, 0.2828)},
    "swin": {"name": "Swin + U-Net (Swin-UNETR)", "5-class": (0.6301, 0.6015), "3-class": (0.6735, 0.5482)},
}
ARCH = {"unet": "unet", "resunet": "resunet", "unetr": "unetr", "swin": "swin_unetr"}


# --------------------------------------------------------------------------- training length


def train_command(network: str, run_dir: Path, steps: int, common: Sequence[str]) -> list[str]:
    # Validation only at the end, on one image (the kept weights are the last ones either way; the
    # comparison scores them itself): no network spends its minutes validating.  ``common`` comes
    # last, so flags given there win.
    return [sys.executable, "-m", "crossct.train", "supervised", "--model", network, "--run-dir", str(run_dir),
            "--steps", str(steps), "--val-every", "0", "--val-max-images", "1", *common]


def offers_time_budget() -> bool:
    """Whether this crossct's training takes ``--time-budget MINUTES``."""
    done = subprocess.run([sys.executable, "-m", "crossct.train", "supervised", "--help"], cwd=REPO,
                          capture_output=True, text=True)
    return "--time-budget" in done.stdout


def timed_run(argv: Sequence[str], log: Path, marks: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``argv`` with its output in ``log``.  Returns ``{"total": wall seconds}`` plus, for each
    ``marks`` name -> regular expression, the seconds from the start to the first output line that
    matches it.  Raises with the log's tail on failure."""
    import re

    patterns = {name: re.compile(expr) for name, expr in (marks or {}).items()}
    seen: dict[str, float] = {}
    t = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(list(argv), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")
        for line in proc.stdout:
            now = time.perf_counter() - t
            fh.write(line)
            for name, pattern in patterns.items():
                if name not in seen and pattern.search(line):
                    seen[name] = now
        code = proc.wait()
    seen["total"] = time.perf_counter() - t
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{shlex.join(argv)} failed with exit code {code} (log {log}):\n{tail}")
    return seen


def probe_seconds_per_step(network: str, work: Path, common: Sequence[str], extra_steps: int) -> dict[str, Any]:
    """Seconds per training step, start-up excluded: runs of 1 and 1 + ``extra_steps`` steps, each
    timed from the log line that reports the training data in memory to the one that reports the
    last step; the difference over ``extra_steps``.  (Start-up, seconds to a minute of reading
    images, varies more between runs than a few steps take.)  Without those log lines, whole runs
    are timed instead."""
    probe_common = ["--checkpoint-minutes", "600", *common]
    times = []
    for steps in (1, 1 + extra_steps):
        marks = {"data": r"labelled dataset", "steps": rf"\bstep {steps}/{steps}\b"}
        times.append(timed_run(train_command(network, work / f"probe-{steps}", steps, probe_common),
                               work / f"probe-{steps}.log", marks))
    (short, long), how = times, "log lines"
    if all({"data", "steps"} <= t.keys() for t in times):
        per_step = ((long["steps"] - long["data"]) - (short["steps"] - short["data"])) / extra_steps
    else:
        per_step, how = (long["total"] - short["total"]) / extra_steps, "whole runs"
    if per_step <= 0:  # timing noise larger than the steps: bound it by the whole longer run
        per_step, how = long["total"] / (1 + extra_steps), "whole run"
    return {"seconds_per_step": per_step, "probe_seconds": short["total"] + long["total"], "probe_timed_by": how}


# --------------------------------------------------------------------------- measurements


def ms_per_tile(onnx_path: Path, tile: int, batch: int, repeats: int) -> dict[str, float]:
    """Median ms per tile of ONNX Runtime on the CPU, one thread per call, ``batch`` tiles per call:
    wall time and CPU time of this process (as :class:`crossct.predictors.OnnxPredictor` runs on a
    2-core machine: 2 calls side by side, 1 thread each)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((batch, 3, tile, tile), dtype=np.float32)
    feed = {session.get_inputs()[0].name: x}
    session.run(None, feed)  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        session.run(None, feed)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return {"ms_per_tile_wall": 1000 * statistics.median(walls) / batch,
            "ms_per_tile_cpu": 1000 * statistics.median(cpus) / batch}


def count_parameters_of(weights: Path) -> int:
    import torch

    from crossct.config import load_spec
    from crossct.nets import build_network, count_parameters

    network = build_network(load_spec(weights / "model.json").model)
    network.load_state_dict(torch.load(weights / "model.pt", map_location="cpu", weights_only=True)["state_dict"])
    return count_parameters(network)


def tuned_val_f1(weights: Path, data: Path, max_images: int) -> dict[str, Any]:
    """Tune the post-processing on the val split (written into ``weights/model.json``) and return
    the F1 summaries before and after (mean, mean over sources, per source, n)."""
    import dataclasses

    from crossct.config import load_spec, save_spec
    from crossct.pipeline import predict_outputs
    from crossct.predictors import load_predictor
    from crossct.train.loops import balanced_f1, load_val_items
    from crossct.train.records import read_manifest
    from crossct.train.tune import score_outputs, tune_postprocess

    predictor = load_predictor(weights, backend="onnx", device="cpu")
    items = load_val_items(read_manifest(data / "manifest.csv", split="val"), max_images)
    cached = [{"outputs": predict_outputs(item["image"], predictor), "label": item["label"],
               "source": item["source"], "name": item["name"]} for item in items]
    start = predictor.spec.postprocess
    before = score_outputs(cached, start)
    best, after, _ = tune_postprocess(cached, start)
    spec = load_spec(weights / "model.json")
    tuned = {"split": "val", "images": len(cached), "score_before": round(balanced_f1(before), 4),
             "score_after": round(balanced_f1(after), 4)}
    save_spec(spec.replace(postprocess=best, metadata={**spec.metadata, "postprocess_tuning": tuned}),
              weights / "model.json")
    return {"before": before, "after": after, "postprocess": dataclasses.asdict(best)}


# --------------------------------------------------------------------------- one network


def compare_one(network: str, args: argparse.Namespace, common: list[str], time_budget: bool) -> dict[str, Any]:
    work = args.work_dir / network
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"network": network, "minutes_budget": args.minutes}
    probe = probe_seconds_per_step(network, work, common, args.probe_steps)
    steps = max(1, int(args.minutes * 60 / probe["seconds_per_step"]))
    result.update(probe, steps_planned=steps)
    run_dir = work / "run"
    argv = train_command(network, run_dir, steps, common)
    if time_budget:  # the run also stops itself when the minutes are spent
        argv += ["--time-budget", f"{args.minutes:g}"]
    print(f"  {network}: {probe['seconds_per_step']:.2f} s per step -> {steps} steps", file=sys.stderr, flush=True)
    result["train_seconds"] = timed_run(argv, work / "train.log")["total"]
    weights = work / "weights"
    checkpoint, result["steps_done"] = final_weights(run_dir, network)
    timed_run([sys.executable, "-m", "crossct.export", str(checkpoint), str(weights)], work / "export.log")
    spec = json.loads((weights / "model.json").read_text())
    result["onnx_max_abs_diff"] = spec["metadata"]["onnx_max_abs_diff"]
    result["parameters"] = count_parameters_of(weights)
    tiling = spec["tiling"]
    result.update(ms_per_tile(weights / "model.onnx", tiling["tile_size"], tiling["cpu_batch_size"], args.speed_repeats),
                  tile=tiling["tile_size"])
    result["val"] = tuned_val_f1(weights, args.data, args.val_max_images)
    return result


def final_weights(run_dir: Path, network: str) -> tuple[Path, int]:
    """The checkpoint to export (the run's last weights) and its step.  A run stopped by a time
    limit before its end may have written only ``last.pt``: its weights are taken from there."""
    from crossct.train.checkpoint import load_checkpoint, save_checkpoint

    last = load_checkpoint(run_dir / "last.pt")
    best = run_dir / f"best_{network}.pt"
    if best.exists() and int(load_checkpoint(best)["step"]) == int(last["step"]):
        return best, int(last["step"])
    role = last["roles"][network]
    final = run_dir / f"final_{network}.pt"
    save_checkpoint(final, {"model": role["model"], "spec": role["spec"], "step": int(last["step"])})
    return final, int(last["step"])


def speed_only(network: str, args: argparse.Namespace) -> dict[str, Any]:
    """Parameters and ms per tile of the paper-size network with random weights."""
    import torch

    from crossct.config import ModelSpec
    from crossct.export import export_weights
    from crossct.nets import build_network, count_parameters
    from crossct.train.loops import MODEL_SPECS

    spec = ModelSpec(model=MODEL_SPECS[network])
    torch.manual_seed(0)
    net = build_network(spec.model)
    weights = args.work_dir / network / "random-weights"
    spec = export_weights(net.state_dict(), spec, weights)
    return {"network": network, "parameters": count_parameters(net), "tile": spec.tiling.tile_size,
            "onnx_max_abs_diff": spec.metadata["onnx_max_abs_diff"],
            **ms_per_tile(weights / "model.onnx", spec.tiling.tile_size, spec.tiling.cpu_batch_size, args.speed_repeats)}


# --------------------------------------------------------------------------- table


def table(results: list[dict[str, Any]], speed: bool) -> str:
    from crossct.train.loops import balanced_f1

    sources = sorted({s for r in results if "val" in r for s in r["val"]["after"]["per_source"]})
    head = ["network", "parameters (M)", "ms per tile, wall", "ms per tile, CPU", "ONNX vs PyTorch"]
    if not speed:
        head = head[:2] + ["steps (s/step)", "run min (with start-up)"] + head[2:] + [
            *sources, "val F1 all images", "val F1 mean over sources", "selection score (before tuning)"]
    head += ["paper 5-class val / submission", "paper 3-class val / submission"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        paper = PAPER[r["network"]]
        cells = [paper["name"] + f" (`{ARCH[r['network']]}`)", f"{r['parameters'] / 1e6:.2f}"]
        speeds = [f"{r['ms_per_tile_wall']:.0f}", f"{r['ms_per_tile_cpu']:.0f}", f"{r['onnx_max_abs_diff']:.1e}"]
        if speed:
            cells += speeds
        else:
            after, before = r["val"]["after"], r["val"]["before"]
            cells += [f"{r['steps_done']} ({r['seconds_per_step']:.2f})", f"{r['train_seconds'] / 60:.1f}", *speeds]
            cells += [f"{after['per_source'][s]:.4f}" if s in after["per_source"] else "-" for s in sources]
            cells += [f"{after['mean']:.4f}", f"{after['source_mean']:.4f}",
                      f"{balanced_f1(after):.4f} ({balanced_f1(before):.4f})"]
        cells += [" / ".join(f"{v:.4f}" for v in paper[k]) if paper[k] else "-" for k in ("5-class", "3-class")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.classical_val import default_data_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0, help="training minutes per network")
    p.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    p.add_argument("--work-dir", type=Path, default=Path("runs/compare-networks"))
    p.add_argument("--data", type=Path, default=default_data_dir(), help="data folder holding manifest.csv")
    p.add_argument("--val-max-images", type=int, default=0,
                   help="tune and score on at most N val images, spread over sources (0: all)")
    p.add_argument("--probe-steps", type=int, default=5, help="timed steps of the throughput probe")
    p.add_argument("--length", choices=["auto", "steps"], default="auto",
                   help="auto: also pass --time-budget when training offers it; steps: the probed steps only")
    p.add_argument("--train-args", default="", help="more flags for every training run, e.g. '--lr 6e-4 --threads 2'")
    p.add_argument("--speed-repeats", type=int, default=10, help="timed ONNX Runtime calls per network")
    p.add_argument("--speed-only", action="store_true", help="parameters and ms per tile of random-weight networks")
    p.add_argument("--fresh", action="store_true", help="redo networks that have a result.json")
    args = p.parse_args(argv)

    from benchmarks.bench_speed import load_line, machine_line

    args.work_dir.mkdir(parents=True, exist_ok=True)
    print(f"# compare_networks: {'ms per tile (random weights)' if args.speed_only else f'{args.minutes:g} training minutes per network'}\n")
    print(f"{machine_line()}; {load_line()}\n")
    common = ["--data", str(args.data), *shlex.split(args.train_args)]
    time_budget = not args.speed_only and args.length == "auto" and offers_time_budget()
    results = []
    for network in args.networks:
        if args.speed_only:
            results.append(speed_only(network, args))
            continue
        path = args.work_dir / network / "result.json"
        if path.exists() and not args.fresh:
            results.append(json.loads(path.read_text()))
            print(f"  {network}: kept {path}", file=sys.stderr)
            continue
        result = compare_one(network, args, common, time_budget)
        path.write_text(json.dumps(result, indent=2) + "\n")
        results.append(result)
        print(f"  {network}: done ({load_line()})", file=sys.stderr, flush=True)
    print(table(results, args.speed_only))
    if not args.speed_only:
        length = "--steps from the probe" + (" and --time-budget" if time_budget else "")
        print(f"\nTraining: `python -m crossct.train supervised --model NAME --val-every 0 {shlex.join(common)}` with "
              f"{length}; val F1 with post-processing tuned on the same val images "
              f"({args.val_max_images or 'all'} images). Work folder: {args.work_dir}")
    print(f"\n{load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
