"""Time target computation over a whole manifest and the training data's per-batch cost.

Prints three small tables:

1. ``make_targets`` over every label file of the manifest, cold (no cache, one process; file
   reading excluded), per source;
2. ``prepare_all`` into a fresh cache with ``--workers`` processes (cold), then again (warm);
3. building a :class:`~crossct.train.data.LabelledDataset` from the warm cache (time, memory)
   and drawing batches of ``--batch-size`` items as the training loop does, in one process.

Measures only; never asserts on time.  Example::

    python benchmarks/bench_targets.py                       # ../shared/data, everything
    python benchmarks/bench_targets.py --limit 60 --batches 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_manifest() -> Path:
    env = os.environ.get("CROSSCT_DATA")
    return (Path(env) if env else REPO.parent / "shared" / "data") / "manifest.csv"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--manifest", type=Path, default=default_manifest(), help="manifest CSV")
    p.add_argument("--split", default=None, help="only rows of this split (None: all rows)")
    p.add_argument("--limit", type=int, default=0, help="use every k-th record so that about N remain (0: all)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for prepare_all")
    p.add_argument("--batches", type=int, default=20, help="batches to time")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--threads", type=int, default=0,
                   help="torch and OpenCV threads while timing batches (0: leave the libraries' defaults)")
    p.add_argument("--skip-cold", action="store_true", help="skip table 1 (the single-process cold pass)")
    p.add_argument("--cache", type=Path, default=None,
                   help="cache folder to use and keep (default: a temporary folder, deleted at the end)")
    return p.parse_args(argv)


def rss_mb() -> float:
    """Resident memory of this process, MB (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [header] + [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for j, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch

    from crossct.train.data import LabelledDataset, collate, source_weights
    from crossct.train.records import read_label_file, read_manifest
    from crossct.train.targets import TargetCache, make_targets, prepare_all

    if args.threads:
        import cv2

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    records = read_manifest(args.manifest, args.split)
    if args.limit and len(records) > args.limit:
        records = records[:: max(1, len(records) // args.limit)]
    labelled = [r for r in records if r.label is not None]
    print(f"{len(labelled)} labelled records from {args.manifest}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    if not args.skip_cold:
        per_source: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
        for r in labelled:
            labels = read_label_file(r.label)
            start = time.perf_counter()
            make_targets(labels)
            seconds = time.perf_counter() - start
            row = per_source[r.source]
            row[0] += 1
            row[1] += labels.size / 1e6
            row[2] += seconds
            row[3] = max(row[3], seconds)
        rows = [[s, int(v[0]), v[1], v[2], 1000 * v[2] / v[0], 1000 * v[3]] for s, v in sorted(per_source.items())]
        total = [sum(v[i] for v in per_source.values()) for i in range(3)]
        rows.append(["TOTAL", int(total[0]), total[1], total[2], 1000 * total[2] / max(total[0], 1), ""])
        table("1. make_targets, cold, one process", ["source", "files", "Mpx", "s", "ms/file", "max ms"], rows)

    temporary = args.cache is None
    cache_root = Path(tempfile.mkdtemp(prefix="crossct-targets-")) if temporary else args.cache
    try:
        timings = []
        for run in ("cold", "warm"):
            start = time.perf_counter()
            summary = prepare_all(labelled, cache_root, workers=args.workers)
            timings.append([run, args.workers, summary["computed"], summary["cached"], time.perf_counter() - start])
        size_mb = sum(p.stat().st_size for p in cache_root.rglob("*.npz")) / 2**20
        table(f"2. prepare_all into {cache_root} ({size_mb:.0f} MB on disk)",
              ["run", "workers", "computed", "cached", "s"], timings)

        rss_before = rss_mb()
        start = time.perf_counter()
        dataset = LabelledDataset(labelled, TargetCache(cache_root), crop=args.crop, augment=True, seed=0)
        build = time.perf_counter() - start
        rss_after = rss_mb()
        images = sum(a.nbytes for a in dataset.images) / 2**20
        targets = (dataset.nbytes / 2**20) - images

        # Indices drawn with the source-balancing weights, items keyed by (seed, step, slot), as
        # the training loop does; items and their stacking into a batch are timed apart.
        p = source_weights(labelled, 0.5, shapes=dataset.shapes)
        stackers = {"torch.stack": lambda items: {k: torch.stack([it[k] for it in items])
                                                  for k in ("image", "classes", "distances")},
                    "data.collate": collate}
        rows = []
        for augment in (True, False):
            dataset.augment = augment
            item_ms, stack_ms = [], defaultdict(list)
            for step in range(args.batches + 1):  # batch 0 pays one-off warm-up and is dropped
                chosen = np.random.default_rng([0, step]).choice(len(dataset), size=args.batch_size, p=p)
                start = time.perf_counter()
                items = [dataset.sample(int(i), np.random.default_rng([0, step, s])) for s, i in enumerate(chosen)]
                elapsed = time.perf_counter() - start
                for name, stack in stackers.items():
                    t0 = time.perf_counter()
                    stack(items)
                    if step:
                        stack_ms[name].append(1000 * (time.perf_counter() - t0))
                if step:
                    item_ms.append(1000 * elapsed)
            rows.append([f"augment={augment}", args.batch_size, float(np.mean(item_ms)), float(np.median(item_ms)),
                         float(np.max(item_ms))] + [float(np.median(stack_ms[n])) for n in stackers])
        table(f"3. LabelledDataset: built in {build:.1f} s; arrays {images:.0f} MB images + {targets:.0f} MB targets; "
              f"process RSS +{rss_after - rss_before:.0f} MB",
              ["batches", "size", "items mean ms", "median ms", "max ms"] + [f"+{n} median ms" for n in stackers], rows)
    finally:
        if temporary:
            shutil.rmtree(cache_root, ignore_errors=True)


if __name__ == "__main__":
    main()
