"""Checkpoint -> shippable weights folder: model.onnx + model.pt + model.json (with sha256).

``python -m crossct.export CHECKPOINT OUT_DIR`` exports the network (wrapped to output class
probabilities + distance maps) to ONNX with dynamic batch, height and width, writes a slim PyTorch
checkpoint beside it, and checks ONNX Runtime against PyTorch on random inputs (max abs diff
under 1e-4) before writing the JSON that makes the folder loadable.  CHECKPOINT is a ``best_*.pt``
or a run's ``last.pt`` (``--role`` picks the network of a cross-teaching run); a folder that holds
weights already is only replaced with ``--force``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .helpformat import DefaultsHelpFormatter

__all__ = ["export_weights", "export_into", "weights_from_checkpoint", "export_onnx", "check_onnx_matches_torch",
           "tiny_spec", "TINY_MODELS", "main"]

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


# metadata keys true of one set of weights only, never carried into weights trained from them
WEIGHTS_OWN_METADATA = ("training", "postprocess_tuning", "onnx_max_abs_diff", "source_checkpoint")


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

    # What described the weights a run started from (how they were trained, their tuning) is not
    # true of these: only ``metadata`` (this export's own record) says how they were trained.
    inherited = {k: v for k, v in spec.metadata.items() if k not in WEIGHTS_OWN_METADATA}
    meta = {**inherited, **(metadata or {}), "onnx_max_abs_diff": diff}
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


def weights_from_checkpoint(ckpt: dict[str, Any], path: Path, role: str | None = None) -> tuple[dict, Any, dict]:
    """(state_dict, spec, facts) from a crossct checkpoint: a slim ``best_<role>.pt`` / ``model.pt``
    (``{"model" or "state_dict", "spec"}``) or a training state such as ``last.pt`` (``{"roles":
    {name: {"model", "spec", ...}}}``), whose network ``role`` (default: the only, else the first)
    is taken.  ``facts`` say where the weights came from (for the model card)."""
    from .config import ModelSpec

    facts: dict[str, Any] = {"checkpoint": str(path)}
    if isinstance(ckpt.get("roles"), dict) and ckpt["roles"]:
        roles = ckpt["roles"]
        if role is None:
            role = next(iter(roles))
            if len(roles) > 1:
                logger.info("%s holds %s; exporting %r (choose with --role)", path, sorted(roles), role)
        elif role not in roles:
            raise ValueError(f"{path}: no role {role!r} in this training state; it holds {sorted(roles)}")
        entry = roles[role]
        facts.update(role=role, step=ckpt.get("step"))
    else:
        if role is not None:
            logger.info("%s holds one network; --role %s ignored", path, role)
        entry = ckpt
        facts.update(step=ckpt.get("step"))
    weights = entry.get("model", entry.get("state_dict")) if isinstance(entry, dict) else None
    if not isinstance(weights, dict) or "spec" not in entry:
        raise ValueError(f"{path}: not a crossct checkpoint (expected 'model' and 'spec', or a training state "
                         f"with 'roles'); it holds {sorted(map(str, ckpt))[:8]}")
    return weights, ModelSpec.from_dict(entry["spec"]), facts


def _refuse_existing(out: Path, force: bool) -> list[str]:
    """The weight files already in ``out``; raises FileExistsError when there are any and not ``force``."""
    from .predictors import ONNX_NAME, SPEC_NAME, TORCH_NAME

    existing = [name for name in (SPEC_NAME, ONNX_NAME, TORCH_NAME) if (out / name).exists()]
    if existing and not force:
        raise FileExistsError(f"{out} already holds weights ({', '.join(existing)}); refusing to overwrite them. "
                              "Export into a new folder, or pass --force to replace them")
    return existing


def export_into(state_dict: dict[str, Any], spec, out_dir: str | os.PathLike, force: bool = False,
                facts: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None):
    """:func:`export_weights` into ``out_dir`` without ever leaving it half-replaced.

    A folder that already holds weights is refused unless ``force``.  The files are exported and
    checked in a hidden folder inside ``out_dir`` first, then moved in (``model.json`` last), so a
    failed export leaves the old weights as they were.  When weights are replaced, a
    ``MODEL_CARD.md`` describing the old ones is moved to ``MODEL_CARD.previous.md`` and a new card
    says where these came from, so no card describes another model.
    """
    import shutil
    import tempfile

    from .predictors import ONNX_NAME, SPEC_NAME, TORCH_NAME

    out = Path(out_dir)
    existing = _refuse_existing(out, force)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        spec = export_weights(state_dict, spec, staging, metadata=metadata)
        for name in (ONNX_NAME, TORCH_NAME, SPEC_NAME):  # model.json last: it makes the folder loadable
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    card = out / "MODEL_CARD.md"
    if existing and card.exists():
        previous = out / "MODEL_CARD.previous.md"
        os.replace(card, previous)
        others = sorted(p.name for p in out.iterdir() if p.name not in
                        {ONNX_NAME, TORCH_NAME, SPEC_NAME, card.name, previous.name} and not p.name.startswith("."))
        facts = facts or {}
        source = ", ".join(f"{k} {v}" for k, v in facts.items() if v is not None and k != "checkpoint")
        card.write_text(
            "# Model card\n\n"
            f"These weights ({spec.model.arch}) were exported from `{facts.get('checkpoint', 'a checkpoint')}`"
            f"{f' ({source})' if source else ''} with `python -m crossct.export --force`. They replace the weights "
            f"that `{previous.name}` describes; that card does not describe these"
            + (f", nor do the other files here ({', '.join(others)})" if others else "") + ".\n\n"
            "Before sharing them, say here what data the network was trained on, how it scores "
            "(`python -m evaluate f1`), and what it is for.\n"
        )
        logger.info("moved the old model card to %s and wrote a new %s", previous, card)
    return spec


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m crossct.export",
        description="Export a crossct checkpoint to a weights folder (model.onnx, model.pt, model.json).",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="CHECKPOINT OUT_DIR",
                   help="a training checkpoint (best_<role>.pt, or last.pt: the newest state of a run) and the "
                        "folder to write the weights into; only OUT_DIR with --tiny-untrained")
    p.add_argument("--role", default=None,
                   help="which network of a training state to export (cross-teaching: cnn or transformer); "
                        "default: the only, else the first")
    p.add_argument("--force", action="store_true",
                   help="replace the weights already in OUT_DIR (their MODEL_CARD.md is kept as MODEL_CARD.previous.md)")
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
    """Entry point; exit code 0 when the weights were written, 2 (one line, no traceback) when not."""
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        spec, out = _export(args)
    except (OSError, ValueError, RuntimeError) as exc:
        logger.debug("traceback", exc_info=exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {', '.join(sorted(spec.checksums))} + model.json "
          f"(ONNX vs PyTorch max abs diff {spec.metadata['onnx_max_abs_diff']:.2e})")
    return 0


def _export(args: argparse.Namespace):
    import torch

    from .nets import build_network

    out = Path(args.out_dir)
    _refuse_existing(out, args.force)  # before the slow part
    if args.tiny_untrained:
        torch.manual_seed(args.seed)
        spec = tiny_spec(args.tiny_arch)
        state, facts = build_network(spec.model).state_dict(), {"checkpoint": f"a tiny untrained {args.tiny_arch}"}
    else:
        from .train.checkpoint import load_checkpoint
        from .train.provenance import training_record

        state, spec, facts = weights_from_checkpoint(load_checkpoint(args.checkpoint), Path(args.checkpoint),
                                                     args.role)
        # How the network was trained (metadata.training), from its run's config.json when present.
        training = training_record(args.checkpoint, facts.get("step"), facts.get("role"))
        metadata = {"training": training} if training else None
    if args.tiny_untrained:
        metadata = None
    if args.settings:
        spec = apply_settings(spec, args.settings)
    return export_into(state, spec, out, force=args.force, facts=facts, metadata=metadata), out


if __name__ == "__main__":
    sys.exit(main())
