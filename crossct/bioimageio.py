"""Weights folder -> a BioImage Model Zoo package (bioimage.io model format 0.5).

``python -m crossct.bioimageio WEIGHTS_DIR OUT.zip`` packages the network of a weights folder
(``model.json`` + ``model.onnx``, and ``model.pt`` for the TorchScript copy) for the zoo's tools:

- the ONNX model, and a TorchScript trace of the same network (from ``model.pt``);
- the input normalisation as the format's own preprocessing (percentiles 1-99 per channel, then
  clipped to [0, 1]); what it cannot express is said in the package's documentation;
- test tensors: a 256 x 256 crop of the demo's IHC image and the ONNX model's outputs on it;
- a cover (the crop, and the crop with the outlines of the cells CrossCT finds on it), the
  documentation (``README.md``), and ``model.json`` (+ ``MODEL_CARD.md``) as attachments, so that the
  unzipped package is a weights folder for ``predict.py -w``.

Built and validated with ``bioimageio.spec`` (``pip install -e '.[bioimageio]'``); ``bioimageio test
OUT.zip`` runs the test tensors through every weight format.  Nothing is fetched from the network.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .helpformat import DefaultsHelpFormatter

__all__ = ["build_package", "load_package", "example_crop", "documentation", "main", "CODE_URL", "LICENSE"]

logger = logging.getLogger(__name__)

# The weights saw non-commercial sources and MoNuSeg (CC BY-NC-SA 4.0): see weights/MODEL_CARD.md.
LICENSE = "CC-BY-NC-SA-4.0"
# The CrossCT paper has no DOI; this is the code repository the paper gives.
CODE_URL = "https://github.com/dasch-lab/crossct"
SCHERR_DOI = "10.1371/journal.pone.0243219"
PAPER_AUTHORS = ("Sara Joubbi", "Dario Cardamone", "Giorgio Ciano", "Giuseppe Maccari", "Duccio Medini")
PAPER_AFFILIATION = "DaScH Lab, Toscana Life Sciences Foundation, Siena"
# The test image: a 256 x 256 crop of the demo's IHC image (scikit-image's ihc.png) whose channels
# have no zero pixel, so the format's percentiles (of all pixels) are CrossCT's (of non-zero pixels).
EXAMPLE, EXAMPLE_CORNER, EXAMPLE_SIZE = "ihc", (256, 32), 256
INPUT_ID, OUTPUT_ID = "image", "outputs"  # the ONNX model's input and output names
TORCHSCRIPT_NAME = "model_torchscript.pt"
ARCH_NAMES = {"unet": "U-Net", "resunet": "ResUnet", "unetr": "UNETR", "swin_unetr": "Swin-UNETR"}
OUTPUT_MEANING = {
    "background": "P(background); channels 0-2 are a softmax",
    "interior": "P(cell interior)",
    "boundary": "P(cell boundary)",
    "cell_distance": "distance to the cell's border, 1 at its centre (Scherr et al. 2020)",
    "neighbor_distance": "closeness to another cell, 1 where cells touch (Scherr et al. 2020)",
}
# ONNX and TorchScript agree to ~1e-5 (float32); the export's own bound.
TRACE_TOLERANCE = 1e-4


def example_crop(spec) -> np.ndarray:
    """The test image: a (256, 256, 3) uint8 crop of the demo's IHC image.

    Raises ``ValueError`` when the format's normalisation would differ from
    :func:`crossct.normalize.normalize_image` on it (a zero pixel, or a channel without contrast).
    """
    from .demo import demo_image
    from .normalize import channel_bounds

    (y, x), size = EXAMPLE_CORNER, EXAMPLE_SIZE
    crop = demo_image(EXAMPLE)[y:y + size, x:x + size]
    if not crop.all():
        raise ValueError("the example crop has zero pixels: the package's normalisation would differ from CrossCT's")
    if any(b is None or b[1] - b[0] <= spec.normalize.min_range for b in channel_bounds(crop, spec.normalize)):
        raise ValueError("the example crop has a channel without contrast: the package's normalisation would differ")
    return crop


def _trace(weights: Path, path: Path, x: np.ndarray, expected: np.ndarray) -> str:
    """Trace the network of ``weights/model.pt`` into ``path`` as TorchScript; returns the torch version.

    The traced module is the one ``model.onnx`` was exported from (crossct.export: the inference
    copy, with class probabilities); its outputs on ``x`` must match ``expected`` (ONNX's).
    """
    import torch

    from .nets import inference_copy, with_probabilities
    from .predictors import load_predictor

    network = load_predictor(weights, backend="torch", device="cpu").module.net  # checks model.pt's sha256
    module = with_probabilities(inference_copy(network)).eval()
    with torch.inference_mode(), warnings.catch_warnings():
        # torch deprecates TorchScript for torch.export, whose files the format does not take.
        warnings.filterwarnings("ignore", r"`torch\.jit\.trace(_method)?` is deprecated", DeprecationWarning)
        traced = torch.jit.trace(module, torch.from_numpy(x), check_trace=False)
        diff = float(np.abs(traced(torch.from_numpy(x)).numpy() - expected).max())
    if not diff < TRACE_TOLERANCE:
        raise RuntimeError(f"the TorchScript trace of {weights / 'model.pt'} differs from model.onnx by {diff:.2e}")
    logger.info("TorchScript vs ONNX on the test image: max abs diff %.2e", diff)
    traced.save(str(path))
    return torch.__version__.split("+")[0]


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot encode {path}")
    path.write_bytes(data.tobytes())


def _cover(crop: np.ndarray, predictor, path: Path) -> int:
    """Write the cover, 512 x 256: the crop as the network sees it, and with the outlines of the
    cells CrossCT's pipeline finds on it.  Returns the number of cells."""
    from .overlay import overlay_image
    from .pipeline import segment

    labels = segment(crop, predictor)
    plain = overlay_image(crop, np.zeros(crop.shape[:2], np.int32))
    _write_png(path, np.concatenate([plain, overlay_image(crop, labels)], axis=1))
    return int(labels.max())


def documentation(spec, n_cells: int, torchscript: bool) -> str:
    """The package's README.md (markdown), from the weights' spec."""
    norm, size, post, tile = spec.normalize, spec.size, spec.postprocess, spec.tiling.tile_size
    arch = ARCH_NAMES.get(spec.model.arch, spec.model.arch)
    channels = "\n".join(f"| {i} | `{name}` | {OUTPUT_MEANING.get(name, '')} |"
                         for i, name in enumerate(spec.output_channels))
    formats = "ONNX (`model.onnx`)" + (f" and TorchScript (`{TORCHSCRIPT_NAME}`, traced from the same network)"
                                       if torchscript else "")
    return f"""# CrossCT cell segmentation ({arch})

A {arch} (MONAI) that segments cells in microscopy images of every kind: fluorescence, brightfield,
phase contrast, DIC and histology. It follows *CrossCT: CNN and Transformer cross-teaching for
multimodal image cell segmentation* (Joubbi et al., NeurIPS 2022 Cell Segmentation Challenge), with
the cell and neighbour distance maps of Scherr et al. (2020). Weights: {formats}.

The network predicts maps, not cells: CrossCT's watershed turns its outputs into one label per
cell (see *From outputs to cells*).

## Input

`{INPUT_ID}`: (batch, 3, y, x) float32, y and x multiples of 16; red, green, blue. A grey image is
repeated to all three channels, and of an image with more channels only the first three are used:
the format cannot express this, so convert the image before it goes in. The network was trained on
cells {size.min_diameter:g}-{size.max_diameter:g} pixels across.

Preprocessing (in the package): each channel of each image is scaled so that its percentile
{norm.lower_percentile:g} becomes 0 and its percentile {norm.upper_percentile:g} becomes 1, then
clipped to [0, 1]. CrossCT normalises the same way, with two differences the format cannot express:

- CrossCT takes the percentiles of the channel's *non-zero* pixels, the package of all its pixels.
  They agree on images without pixels of exactly 0, such as the test image.
- CrossCT does not stretch a channel whose percentile range is {norm.min_range:g} or less (it becomes
  1 where the channel is non-zero, else 0), so noise in an empty channel is not blown up; the package
  stretches it.

CrossCT also rescales images whose cells are far outside the trained sizes, and blends overlapping
{tile} x {tile} tiles with a Gaussian window; a tool that runs the package runs the network alone. For
tiled prediction, use tiles of {tile} pixels overlapping by at least 32.

## Outputs

`{OUTPUT_ID}`: (batch, {len(spec.output_channels)}, y, x) float32, the input's size.

| channel | name | meaning |
|---|---|---|
{channels}

## From outputs to cells

CrossCT's post-processing (`crossct.postprocess`; NumPy, SciPy and scikit-image): seeds where
`cell_distance - neighbor_distance**2 > {post.seed_threshold:g}`, flooded over `-cell_distance` within
`interior + boundary > {post.mask_threshold:g}`, then fragments removed. The thresholds tuned for
these weights are in the attached `model.json`:

```python
import numpy as np
from crossct.config import load_spec
from crossct.postprocess import postprocess

spec = load_spec("model.json")                    # in the unzipped package
outputs = np.load("test_output.npy")[0]           # (5, y, x): the network's outputs for one image
labels = postprocess(outputs, spec.postprocess)   # (y, x) int32: 0 background, 1..N cells
```

## With CrossCT

The unzipped package is a CrossCT weights folder (`model.json` holds the sha256 of `model.onnx`):

```bash
unzip crossct.zip -d crossct-model
python predict.py -w crossct-model -i INPUT_DIR -o OUTPUT_DIR     # one label TIFF per image
```

`predict.py` runs the whole pipeline on it with ONNX Runtime: normalisation as above, cell size,
tiles, watershed (see CrossCT's README).

## Validation

`bioimageio test` runs the test image through the package's preprocessing and every weight format
and compares the outputs with `test_output.npy` (ONNX Runtime's outputs on CrossCT's normalisation
of the same image). The cover shows the {n_cells} cells CrossCT finds on the test image. Scores on
held-out images of each training source (F1 at IoU 0.5, CrossCT's `python -m evaluate f1`) and the
training data are in the attached `MODEL_CARD.md`.

## Licence

{LICENSE}: the training data include sources for non-commercial use only and MoNuSeg (CC BY-NC-SA
4.0), so the weights are for non-commercial research, and weights derived from them carry the same
terms.
"""


def _describe(files: dict[str, Path], spec, opset: int, torch_version: str | None,
              maintainers: Sequence[str] = ()) -> Any:
    """The ``bioimageio.spec`` model description (format 0.5) of the staged ``files``."""
    from bioimageio.spec.model.v0_5 import (
        Author, AxisId, BatchAxis, ChannelAxis, CiteEntry, ClipDescr, ClipKwargs, FileDescr, Identifier,
        InputTensorDescr, IntervalOrRatioDataDescr, Maintainer, ModelDescr, OnnxWeightsDescr, OutputTensorDescr,
        ParameterizedSize, ScaleRangeDescr, ScaleRangeKwargs, SizeReference, SpaceInputAxis, SpaceOutputAxis,
        TensorId, TorchscriptWeightsDescr, Version, WeightsDescr)

    from . import __version__
    from .nets import FULLY_CONVOLUTIONAL

    arch = ARCH_NAMES.get(spec.model.arch, spec.model.arch)
    if spec.model.arch in FULLY_CONVOLUTIONAL:  # any size divisible by the U-Net's total stride
        step = int(np.prod(spec.model.kwargs.get("strides", (2, 2, 2, 2))))
        spatial: Any = ParameterizedSize(min=2 * step, step=step)
    else:
        spatial = spec.tiling.tile_size
    image, outputs = TensorId(INPUT_ID), TensorId(OUTPUT_ID)
    y, x = AxisId("y"), AxisId("x")
    inputs = InputTensorDescr(
        id=image,
        description="RGB, scaled to [0, 1] by the preprocessing; grey: repeat it to 3 channels",
        axes=[BatchAxis(), ChannelAxis(channel_names=[Identifier(c) for c in ("red", "green", "blue")]),
              SpaceInputAxis(id=y, size=spatial), SpaceInputAxis(id=x, size=spatial)],
        test_tensor=FileDescr(source=files["test_input"]),
        sample_tensor=FileDescr(source=files["sample_input"]),
        data=IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[
            ScaleRangeDescr(kwargs=ScaleRangeKwargs(axes=[y, x], min_percentile=spec.normalize.lower_percentile,
                                                    max_percentile=spec.normalize.upper_percentile)),
            ClipDescr(kwargs=ClipKwargs(min=0.0, max=1.0)),
        ],
    )
    probability, value = IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)), IntervalOrRatioDataDescr()
    output = OutputTensorDescr(
        id=outputs,
        description="background, interior, boundary probabilities; cell and neighbour distance maps",
        axes=[BatchAxis(), ChannelAxis(channel_names=[Identifier(c) for c in spec.output_channels]),
              SpaceOutputAxis(id=y, size=SizeReference(tensor_id=image, axis_id=y)),
              SpaceOutputAxis(id=x, size=SizeReference(tensor_id=image, axis_id=x))],
        test_tensor=FileDescr(source=files["test_output"]),
        sample_tensor=FileDescr(source=files["sample_output"]),
        data=[probability if name in ("background", "interior", "boundary") else value
              for name in spec.output_channels],
    )
    # torch.onnx's TorchScript-based exporter (crossct.export) traces the network, so the ONNX
    # model is a conversion of the traced network: TorchScript is the format's "parent".
    onnx = OnnxWeightsDescr(
        source=files["onnx"], opset_version=opset, parent="torchscript" if torch_version else None,
        comment="CrossCT's model.onnx, exported by torch.onnx (TorchScript-based exporter) from the network")
    torchscript = None if torch_version is None else TorchscriptWeightsDescr(
        source=files["torchscript"], pytorch_version=Version(torch_version),
        comment="traced from CrossCT's model.pt (a MONAI state dict) with softmax over channels 0-2, as model.onnx")
    return ModelDescr(
        name=f"CrossCT {arch} cell segmentation",
        description=(f"Cell segmentation for every microscopy modality (fluorescence, brightfield, phase "
                     f"contrast, DIC, histology): a {arch} predicting background, interior and boundary "
                     "probabilities and the cell and neighbour distance maps of Scherr et al. 2020, which "
                     "CrossCT's watershed turns into one label per cell."),
        authors=[Author(name=name, affiliation=PAPER_AFFILIATION) for name in PAPER_AUTHORS],
        maintainers=[Maintainer(github_user=user) for user in maintainers],
        cite=[
            CiteEntry(text="Joubbi S, Cardamone D, Ciano G, Maccari G, Medini D. CrossCT: CNN and Transformer "
                           "cross-teaching for multimodal image cell segmentation. NeurIPS 2022 Cell "
                           "Segmentation Challenge (code repository).", url=CODE_URL),
            CiteEntry(text="Scherr T, Löffler K, Böhland M, Mikut R. Cell segmentation and tracking using "
                           "CNN-based distance predictions and a graph-based matching strategy. PLoS ONE "
                           "15(12): e0243219 (2020).", doi=SCHERR_DOI),
        ],
        license=LICENSE,
        tags=["2d", "cells", "nuclei", "instance-segmentation", "semantic-segmentation", "pytorch", "onnx",
              "fluorescence-light-microscopy", "transmission-light-microscopy", "whole-slide-imaging",
              "histology", "crossct"] + (["unet"] if spec.model.arch in ("unet", "resunet") else []),
        version=__version__,
        documentation=FileDescr(source=files["readme"]),
        covers=[FileDescr(source=files["cover"])],
        attachments=[FileDescr(source=files[name]) for name in ("model.json", "MODEL_CARD.md") if name in files],
        inputs=[inputs],
        outputs=[output],
        weights=WeightsDescr(onnx=onnx, torchscript=torchscript),
    )


def _onnx_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def build_package(weights: str | os.PathLike, out: str | os.PathLike, maintainers: Sequence[str] = ()) -> Path:
    """Write the bioimage.io package of the weights folder ``weights`` to ``out`` (a .zip), atomically.

    ``maintainers``: GitHub user names of the people who answer for the package in the zoo.
    Includes TorchScript when ``model.pt`` is there and torch can be imported.  Raises
    :class:`crossct.predictors.WeightsError` for a folder without ``model.json`` or ``model.onnx``, or
    weights failing their checksum; ``ValueError`` when the format refuses the package.
    """
    import tifffile
    from bioimageio.spec import ValidationContext, save_bioimageio_package

    from .normalize import normalize_image
    from .predictors import ONNX_NAME, SPEC_NAME, TORCH_NAME, WeightsError, load_predictor

    weights, out = Path(weights), Path(out)
    missing = [name for name in (SPEC_NAME, ONNX_NAME) if not (weights / name).is_file()]
    if missing:
        raise WeightsError(f"{weights} is not a CrossCT weights folder: no {' and no '.join(missing)} in it "
                           "(a weights folder holds model.json, model.onnx and model.pt: python -m crossct.export)")
    predictor = load_predictor(weights, backend="onnx", device="cpu")  # checks model.onnx's sha256
    spec = predictor.spec
    crop = example_crop(spec)
    x = normalize_image(crop, spec.normalize, channels_first=True)[None]
    expected = predictor.predict(x)

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bioimageio-", dir=out.parent) as tmp:
        stage = Path(tmp)
        files = {"onnx": weights / ONNX_NAME, "model.json": weights / SPEC_NAME}
        if (weights / "MODEL_CARD.md").is_file():
            files["MODEL_CARD.md"] = weights / "MODEL_CARD.md"
        for key, name in (("test_input", "test_input.npy"), ("test_output", "test_output.npy"),
                          ("sample_input", "sample_input.png"), ("sample_output", "sample_output.tif"),
                          ("cover", "cover.png"), ("readme", "README.md")):
            files[key] = stage / name
        np.save(files["test_input"], np.ascontiguousarray(crop.transpose(2, 0, 1)[None], np.float32))
        np.save(files["test_output"], expected)
        _write_png(files["sample_input"], crop)
        tifffile.imwrite(files["sample_output"], expected[0], compression="zlib")
        torch_version = None
        if (weights / TORCH_NAME).is_file():
            try:
                files["torchscript"] = stage / TORCHSCRIPT_NAME
                torch_version = _trace(weights, files["torchscript"], x, expected)
            except ImportError as exc:
                del files["torchscript"]
                logger.warning("no TorchScript copy (%s: it needs torch and MONAI); the package has ONNX only", exc)
        else:
            logger.warning("no %s in %s: the package has the ONNX model only", TORCH_NAME, weights)
        n_cells = _cover(crop, predictor, files["cover"])
        files["readme"].write_text(documentation(spec, n_cells, torch_version is not None), encoding="utf-8")

        # Offline: the format checks every URL it meets (an HTTP request) while it validates with IO
        # checks on.  `known_files` is its documented way to skip a referenced file or URL while the
        # local files are still read and hashed; the package is then written (and reloaded by the
        # writer) with `perform_io_checks=False`, as the writer's reload would check the URL again,
        # and load_package checks the written zip's files against their sha256.
        with ValidationContext(known_files={CODE_URL: None}):
            descr = _describe(files, spec, _onnx_opset(files["onnx"]), torch_version, maintainers)
        partial = stage / out.name
        with ValidationContext(perform_io_checks=False):
            save_bioimageio_package(descr, output_path=partial)
        load_package(partial)
        os.replace(partial, out)
    return out


def load_package(path: str | os.PathLike):
    """The model description of the package at ``path`` (a zip or an unzipped folder), each file
    checked against its sha256, and nothing fetched (the citation's URL is taken as known).

    Raises ``ValueError`` saying what is wrong when the format refuses the package.
    """
    from bioimageio.spec import InvalidDescr, load_description

    descr = load_description(path, perform_io_checks=True, known_files={CODE_URL: None})
    if isinstance(descr, InvalidDescr):
        raise ValueError(f"{path} is not a valid bioimage.io package:\n{descr.validation_summary.format()}")
    return descr


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m crossct.bioimageio", description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("weights", metavar="WEIGHTS_DIR", help="a CrossCT weights folder (model.json, model.onnx, model.pt)")
    p.add_argument("out", metavar="OUT.zip", help="the package to write")
    p.add_argument("--maintainer", dest="maintainers", action="append", default=[], metavar="GITHUB_USER",
                   help="who answers for the package in the zoo (its validation warns when nobody does); repeatable")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit code 0 when the package was written, 2 (one line, no traceback) when not."""
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = build_package(args.weights, args.out, args.maintainers)
    except ImportError as exc:
        print(f"error: {exc}: pip install -e '.[bioimageio]'", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as exc:
        logger.debug("traceback", exc_info=exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB); check it with: bioimageio test {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
