"""The organisers' baseline inference pipeline (NeurIPS 2022 CellSeg), re-implemented for comparison.

What the organisers' ``predict.py`` did, step by step, on any network that gives 3 class logits
(background, interior, boundary) first:

1. Normalise: gray is repeated to 3 channels (extra channels dropped); each non-empty channel is
   rescaled from the 1st-99th percentile of its non-zero pixels to uint8 with
   ``skimage.exposure.rescale_intensity`` (left as it is when the range is <= 0.001), then the whole
   image is divided by its maximum (in float64, as they did) and cast to float32.
2. ``monai.inferers.sliding_window_inference`` in PyTorch: ``roi_size=256``, ``sw_batch_size=4``,
   ``overlap=0.25``, ``mode='constant'`` (MONAI's defaults but the batch size), on the class logits.
3. Softmax over the 3 blended class logits (after blending, as they did).
4. ``measure.label(remove_small_objects(remove_small_holes(P(interior) > 0.5), 16))``, written as a
   zlib TIFF.

It is built from the same :class:`~crossct.config.ModelSpec` and weights as our pipeline (the
``model.pt`` of a weights folder), so a benchmark compares pipelines, not networks.  Deviations
from the original, all on inputs it could not handle: a 2-channel image is padded with a zero
channel (theirs raised), and an all-zero image gives all-zero input (theirs divided by zero).

As a script, the same one-image-per-process interface as ``predict.py``::

    python -m benchmarks.baseline -i INPUT_DIR -o OUTPUT_DIR -w WEIGHTS_DIR
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "BaselineTimings",
    "organisers_normalize",
    "class_logits_module",
    "load_baseline_model",
    "baseline_probabilities",
    "baseline_postprocess",
    "baseline_segment",
    "main",
]

# The organisers' settings.
ROI_SIZE, SW_BATCH_SIZE, OVERLAP, MODE = 256, 4, 0.25, "constant"
INTERIOR_THRESHOLD, MIN_OBJECT_SIZE, MAX_HOLE_SIZE = 0.5, 16, 64


@dataclass
class BaselineTimings:
    """Seconds spent in each step of :func:`baseline_segment` (accumulated over calls)."""

    normalize: float = 0.0
    model: float = 0.0  # sliding window + softmax
    postprocess: float = 0.0


def organisers_normalize(image):
    """The organisers' normalisation: uint8 percentile rescale per channel, then divide by the maximum.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array of any numeric dtype.  Not modified.

    Returns
    -------
    (H, W, 3) float32 array in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> float(organisers_normalize(np.array([[0, 10], [20, 30]], np.uint16)).max())
    1.0
    """
    import numpy as np
    from skimage import exposure

    from crossct.normalize import to_three_channels

    image = to_three_channels(np.asarray(image))
    pre = np.zeros(image.shape, dtype=np.uint8)
    for c in range(3):
        channel = image[:, :, c]
        nonzero = channel[np.nonzero(channel)]
        if nonzero.size == 0:
            continue
        lo, hi = np.percentile(nonzero, [1, 99])
        if hi - lo > 0.001:
            pre[:, :, c] = exposure.rescale_intensity(channel, in_range=(lo, hi), out_range="uint8")
        else:
            pre[:, :, c] = channel.astype(np.uint8)
    top = pre.max()
    if top == 0:  # the organisers divided by zero here
        return np.zeros(pre.shape, np.float32)
    return (pre / top).astype(np.float32)


def class_logits_module(network):
    """Wrap ``network`` ((B, 3, h, w) -> (B, >= 3, h, w)) so that it returns only the 3 class logits."""
    import torch

    class ClassLogits(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)[:, :3]

    return ClassLogits(network).eval()


def load_baseline_model(weights: str | os.PathLike | None = None, threads: int | None = None):
    """The baseline's torch module (3 class logits) and spec from a crossct weights folder or ``.pt``.

    Loads ``model.pt`` through :func:`crossct.predictors.load_predictor` (same checksum checks as
    our pipeline), on the CPU, with ``threads`` torch threads (default: every CPU this process may use).

    Returns
    -------
    (torch.nn.Module, ModelSpec)
    """
    import torch

    from crossct.predictors import load_predictor

    from crossct.predictors import available_cpus

    torch.set_num_threads(threads or available_cpus())
    predictor = load_predictor(weights, backend="torch", device="cpu")
    return class_logits_module(predictor.module.net), predictor.spec


def baseline_probabilities(image01, module, roi_size: int = ROI_SIZE, sw_batch_size: int = SW_BATCH_SIZE,
                           overlap: float = OVERLAP):
    """(H, W, 3) float32 normalised image -> (3, H, W) float32 class probabilities (MONAI sliding window)."""
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(np.ascontiguousarray(np.asarray(image01, np.float32).transpose(2, 0, 1)))[None]
    with torch.inference_mode():
        logits = sliding_window_inference(x, roi_size, sw_batch_size, module, overlap=overlap, mode=MODE)
        probabilities = torch.softmax(logits, dim=1)
    return probabilities[0].numpy()


def baseline_postprocess(interior):
    """``measure.label(remove_small_objects(remove_small_holes(interior > 0.5), 16))``.

    Parameters
    ----------
    interior : (H, W) float interior probability.

    Returns
    -------
    (H, W) integer labels from :func:`skimage.measure.label` (8-connected, as the organisers' default).
    """
    from skimage import measure, morphology

    mask = interior > INTERIOR_THRESHOLD
    # scikit-image 0.26 renamed the size arguments to inclusive ``max_size``: the organisers'
    # ``area_threshold=64`` (default) and ``min_size=16`` are ``max_size=63`` and ``max_size=15``.
    mask = morphology.remove_small_holes(mask, max_size=MAX_HOLE_SIZE - 1)
    mask = morphology.remove_small_objects(mask, max_size=MIN_OBJECT_SIZE - 1)
    return measure.label(mask)


def baseline_segment(image, module, roi_size: int = ROI_SIZE, sw_batch_size: int = SW_BATCH_SIZE,
                     overlap: float = OVERLAP, timings: BaselineTimings | None = None):
    """Segment one (H, W) or (H, W, C) image the organisers' way; returns (H, W) integer labels."""
    timings = timings if timings is not None else BaselineTimings()
    t0 = time.perf_counter()
    x = organisers_normalize(image)
    t1 = time.perf_counter()
    probabilities = baseline_probabilities(x, module, roi_size, sw_batch_size, overlap)
    del x
    t2 = time.perf_counter()
    labels = baseline_postprocess(probabilities[1])
    timings.normalize += t1 - t0
    timings.model += t2 - t1
    timings.postprocess += time.perf_counter() - t2
    return labels


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.baseline",
        description="The organisers' baseline pipeline (MONAI sliding window in PyTorch, interior > 0.5) "
                    "on a folder of images, with crossct weights; writes <stem>_label.tiff per image.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-i", "--input", required=True, help="folder of images")
    p.add_argument("-o", "--output", required=True, help="folder for the label TIFFs (created if missing)")
    p.add_argument("-w", "--weights", default=None, help="crossct weights folder with model.pt (default as predict.py)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every CPU available)")
    p.add_argument("--roi-size", type=int, default=ROI_SIZE)
    p.add_argument("--sw-batch-size", type=int, default=SW_BATCH_SIZE)
    p.add_argument("--overlap", type=float, default=OVERLAP)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import tifffile

    from crossct.io import list_images, output_name, read_image

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    module, _ = load_baseline_model(args.weights, args.threads)
    timings = BaselineTimings()
    start = time.perf_counter()
    images = list_images(args.input)
    for path in images:
        labels = baseline_segment(read_image(path), module, args.roi_size, args.sw_batch_size, args.overlap, timings)
        tifffile.imwrite(out / output_name(path), labels, compression="zlib")
    stats: dict[str, Any] = vars(timings)
    print(f"baseline: {len(images)} image(s), {time.perf_counter() - start:.1f} s "
          + ", ".join(f"{k} {v:.2f} s" for k, v in stats.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
