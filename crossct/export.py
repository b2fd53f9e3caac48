"""Checkpoint -> shippable weights folder: model.onnx + model.pt + model.json (with sha256).

``python -m crossct.export CHECKPOINT OUT_DIR`` exports the network (wrapped to output class
probabilities + distance maps) to ONNX with dynamic batch, height and width, writes a slim PyTorch
checkpoint beside it, and checks ONNX Runtime against PyTorch on random inputs (max abs diff
under 1e-4) before writing the JSON that makes the folder loadable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["export_weights", "export_onnx", "check_onnx_matches_torch", "tiny_spec", "TINY_MODELS", "main"]

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4


# Deliberately tiny versions of each architecture (seconds to train, export and run), never shipped.
TINY_MODELS: dict[str, dict[str, Any]] = {
    "unet": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
    "resunet": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 3},
    "unetr": {"img_size": 64, "feature_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_heads": 2,
              "proj_type": "perceptron", "norm_name": "instance", "conv_block": False, "res_block": True},
    "swin_unetr": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]},
}


def tiny_spec(arch: str = "unet"):
    """A tiny spec of architecture ``arch`` (64 x 64 tiles) for tests and CI."""
    from .config import ModelConfig, ModelSpec, TilingConfig

    if arch not in TINY_MODELS:
        raise ValueError(f"no tiny {arch!r}; valid: {sorted(TINY_MODELS)}")
    model = ModelConfig(arch, {"spatial_dims": 2, "in_channels": 3, "out_channels": 5, **TINY_MODELS[arch]})
    return ModelSpec(model=model, tiling=TilingConfig(tile_size=64, overlap=0.25, batch_size=4),
                     metadata={"note": f"untrained tiny {arch} for tests"})


def export_onnx(module, path: Path, tile: int, dynamic_spatial: bool = True, opset: int = 18) -> None:
    """Export ``module`` ((B, 3, H, W) -> (B, 5, H, W)) to ONNX with dynamic B (and H, W when
    ``dynamic_spatial``; Swin's shifted-window masks are traced for one size, so it keeps tile x tile)."""
    import torch

    module = module.eval()
    example = torch.rand(2, 3, tile, tile)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # The TorchScript exporter gives a single self-contained file with dynamic axes and no
    # onnxscript rewrite surprises; dynamo=False keeps it on that path.
    torch.onnx.export(
        module, (example,), str(tmp), input_names=["image"], output_names=["outputs"],
        dynamic_axes={name: ({0: "batch", 2: "height", 3: "width"} if dynamic_spatial else {0: "batch"})
                      for name in ("image", "outputs")},
        opset_version=opset, dynamo=False, do_constant_folding=True,
    )
    os.replace(tmp, path)


def check_onnx_matches_torch(module, onnx_path: Path, tile: int, dynamic_spatial: bool = True,
                             seed: int = 0, batch: int = 3) -> float:
    """Max abs difference between ONNX Runtime and PyTorch on random inputs (and a non-square size
    when the model has dynamic height and width)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    shapes = [(batch, 3, tile, tile)] + ([(1, 3, tile, 2 * tile)] if dynamic_spatial else [])
    for shape in shapes:
        x = rng.random(shape, dtype=np.float32)
        with torch.inference_mode():
            expected = module.eval()(torch.from_numpy(x)).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_weights(state_dict: dict[str, Any], spec, out_dir: str | os.PathLike, metadata: dict | None = None):
    """Write model.onnx, model.pt and model.json (with checksums) for ``state_dict`` into ``out_dir``.

    Returns the final :class:`~crossct.config.ModelSpec`.  Raises ``RuntimeError`` when ONNX Runtime
    and PyTorch disagree by more than 1e-4.
    """
    import torch

    from .config import save_spec
    from .nets import FULLY_CONVOLUTIONAL, build_network, inference_copy, with_probabilities
    from .predictors import ONNX_NAME, SPEC_NAME, TORCH_NAME, sha256_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    network = build_network(spec.model)
    network.load_state_dict({k.removeprefix("module."): v for k, v in state_dict.items()})
    module = with_probabilities(network).eval()
    tile = spec.tiling.tile_size

    onnx_path, torch_path, spec_path = out / ONNX_NAME, out / TORCH_NAME, out / SPEC_NAME
    dynamic = spec.model.arch in FULLY_CONVOLUTIONAL
    # The exported graph is the inference copy (PReLU -> LeakyReLU); it is checked against the original.
    export_onnx(with_probabilities(inference_copy(network)), onnx_path, tile, dynamic_spatial=dynamic)
    diff = check_onnx_matches_torch(module, onnx_path, tile, dynamic_spatial=dynamic)
    logger.info("ONNX Runtime vs PyTorch: max abs diff %.2e", diff)
    if not diff < TOLERANCE:
        raise RuntimeError(f"ONNX export of {spec.model.arch} differs from PyTorch by {diff:.2e} (> {TOLERANCE})")

    meta = {**spec.metadata, **(metadata or {}), "onnx_max_abs_diff": diff}
    spec = spec.replace(metadata=meta, checksums={})
    tmp = torch_path.with_name(f".{torch_path.name}.tmp-{os.getpid()}")
    torch.save({"state_dict": network.state_dict(), "spec": spec.to_dict()}, tmp)
    os.replace(tmp, torch_path)
    spec = spec.replace(checksums={ONNX_NAME: sha256_file(onnx_path), TORCH_NAME: sha256_file(torch_path)})
    save_spec(spec, spec_path)
    return spec


def apply_settings(spec, settings: Sequence[str]):
    """``spec`` with ``SECTION.FIELD=VALUE`` changes (VALUE parsed as JSON when it can be, else a string)."""
    import json

    from .config import ModelSpec

    d = spec.to_dict()
    for item in settings:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not (sep and dot) or section not in ("normalize", "tiling", "postprocess"):
            raise ValueError(f"--set {item!r}: expected SECTION.FIELD=VALUE with SECTION normalize, tiling or postprocess")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        d[section][name] = value
    return ModelSpec.from_dict(d)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m crossct.export",
        description="Export a crossct checkpoint to a weights folder (model.onnx, model.pt, model.json).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="CHECKPOINT OUT_DIR",
                   help="training checkpoint (.pt holding 'model' and 'spec') and the folder to write the weights into; "
                        "only OUT_DIR with --tiny-untrained")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="change an inference setting stored with the weights, e.g. tiling.batch_size=16 or "
                        "postprocess.seed_threshold=0.4 (sections: normalize, tiling, postprocess); repeatable")
    p.add_argument("--tiny-untrained", action="store_true",
                   help="ignore CHECKPOINT and export a tiny randomly initialised network (tests and CI only)")
    p.add_argument("--tiny-arch", default="unet", choices=sorted(TINY_MODELS), help="architecture for --tiny-untrained")
    p.add_argument("--seed", type=int, default=0, help="seed for --tiny-untrained")
    args = p.parse_args(argv)
    expected = 1 if args.tiny_untrained else 2
    if len(args.paths) != expected:
        p.error("give OUT_DIR with --tiny-untrained, else CHECKPOINT OUT_DIR")
    args.checkpoint, args.out_dir = ([None] + args.paths)[-2:]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from .config import ModelSpec
    from .nets import build_network

    if args.tiny_untrained:
        torch.manual_seed(args.seed)
        spec = tiny_spec(args.tiny_arch)
        state = build_network(spec.model).state_dict()
    else:
        from .train.checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        spec = ModelSpec.from_dict(ckpt["spec"])
        state = ckpt.get("model", ckpt.get("state_dict"))
    if args.settings:
        spec = apply_settings(spec, args.settings)
    spec = export_weights(state, spec, args.out_dir)
    print(f"wrote {args.out_dir}: {', '.join(sorted(spec.checksums))} + model.json "
          f"(ONNX vs PyTorch max abs diff {spec.metadata['onnx_max_abs_diff']:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
