"""Two predictors with one interface: ``predict(batch) -> outputs``.

- :class:`OnnxPredictor`: ONNX Runtime, CUDA execution provider when present, CPU otherwise.
  Imports no torch, so the inference container ships without it.
- :class:`TorchPredictor`: a PyTorch checkpoint, always loaded with ``weights_only=True``.

Both take (B, 3, t, t) float32 and return (B, 5, t, t) float32: softmax probabilities of the three
classes, then the two distance maps.  Weights come with a :class:`~crossct.config.ModelSpec`;
files loaded through a ``model.json`` are verified against the sha256 it records.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from .config import ModelSpec, load_spec
from .env import local_rank

__all__ = [
    "Predictor",
    "OnnxPredictor",
    "TorchPredictor",
    "WeightsError",
    "load_predictor",
    "available_cpus",
    "cpu_calls_and_threads",
    "resolve_weights",
    "sha256_file",
    "SPEC_NAME",
    "ONNX_NAME",
    "TORCH_NAME",
]

logger = logging.getLogger(__name__)

SPEC_NAME, ONNX_NAME, TORCH_NAME = "model.json", "model.onnx", "model.pt"
Backend = Literal["auto", "onnx", "torch"]


class WeightsError(RuntimeError):
    """Weights that are missing, inconsistent or fail their checksum."""


class Predictor(Protocol):
    spec: ModelSpec
    description: str
    on_gpu: bool  # picks the tile batch size (TilingConfig.batch_size or cpu_batch_size)
    concurrent_calls: int  # how many predict() calls may usefully run at once, from threads

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, t, t) float32 -> (B, 5, t, t) float32."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _verify_checksum(path: Path, spec: ModelSpec, spec_path: Path) -> None:
    expected = spec.checksums.get(path.name)
    if expected is None:
        raise WeightsError(f"{spec_path} records no sha256 for {path.name}; refusing to load unverified weights")
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsError(
            f"{path}: checksum mismatch (sha256 {actual[:16]}..., {spec_path.name} expects {expected[:16]}...); "
            "the file is corrupt or was modified - re-download or re-export the weights"
        )


def _cuda_devices_visible() -> bool:
    """Whether the NVIDIA driver shows at least one GPU (Linux; elsewhere let ONNX Runtime try).

    Asked before creating a CUDA session so that a GPU image on a machine without a GPU falls
    back to the CPU with one log line instead of ONNX Runtime's errors.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return True
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return libcuda.cuInit(0) == 0 and libcuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# On a CPU, tiles go through the network side by side, one call per core, rather than one call
# spread over all cores: the paper U-Net's thin full-resolution layers and its instance norms
# scale badly across threads (2 cores, ms per 256 tile: 10.0-11.2 side by side against 10.6-12.1
# for one call on both; benchmarks/README.md).
# Capped so that a many-core machine does not hold dozens of tiles' activations at once; the
# cores left over are shared out as threads within each call.
MAX_CPU_CALLS = 8


def cpu_calls_and_threads() -> tuple[int, int]:
    """(concurrent network calls, threads per call) for this process's CPUs."""
    cores = available_cpus()
    calls = min(cores, MAX_CPU_CALLS)
    return calls, max(1, cores // calls)


class OnnxPredictor:
    """ONNX Runtime predictor.

    Parameters
    ----------
    model_path : the .onnx file.
    spec : the model spec that belongs to it.
    device : ``auto`` (CUDA when ONNX Runtime offers it), ``cuda`` or ``cpu``.
    """

    def __init__(self, model_path: str | os.PathLike, spec: ModelSpec, device: str = "auto") -> None:
        import onnxruntime as ort

        self.spec = spec
        self.model_path = Path(model_path)
        available = ort.get_available_providers()
        want_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        if device == "cuda" and not want_cuda:
            raise WeightsError(f"device 'cuda' requested but ONNX Runtime offers only {available}")
        if want_cuda and device == "auto" and not _cuda_devices_visible():
            logger.warning("no GPU visible (no NVIDIA driver or device): ONNX Runtime falls back to the CPU")
            want_cuda = False
        if want_cuda and hasattr(ort, "preload_dlls"):
            try:  # CUDA/cuDNN from pip wheels (nvidia-*) are found this way
                ort.preload_dlls()
            except Exception as exc:  # noqa: BLE001 - a failed preload just means the CPU fallback
                logger.debug("onnxruntime.preload_dlls failed: %s", exc)
        # Under torchrun each process drives its own GPU.
        cuda_options = {"device_id": local_rank()}
        providers = ([("CUDAExecutionProvider", cuda_options)] if want_cuda else []) + ["CPUExecutionProvider"]
        calls, threads = cpu_calls_and_threads()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads  # ONNX Runtime sessions can be run from several threads at once
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.model_path), sess_options=options, providers=providers)
        except Exception as exc:
            raise WeightsError(f"{self.model_path}: ONNX Runtime cannot load this model ({exc})") from exc
        used = self.session.get_providers()[0]
        if want_cuda and used != "CUDAExecutionProvider":
            logger.warning("CUDA execution provider failed to initialise; falling back to %s", used)
        self.description = f"onnxruntime {ort.__version__} {used}"
        self.on_gpu = used == "CUDAExecutionProvider"
        # GPU: 2 calls in flight, so the host blends one batch while the device runs the next.
        self.concurrent_calls = 2 if self.on_gpu else calls
        logger.info("ONNX Runtime using %s (%d concurrent calls x %d threads)", used, self.concurrent_calls,
                    options.intra_op_num_threads)
        self._check_io()

    def _check_io(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        in_ch = self.spec.model.kwargs.get("in_channels", 3)
        problems = []
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] != in_ch:
            problems.append(f"inputs {[(i.name, i.shape) for i in inputs]} (expected one (B, {in_ch}, H, W))")
        else:
            # Fixed-size models (Swin-UNETR, UNETR) have integer spatial dims: they must be the tile size.
            tile = self.spec.tiling.tile_size
            fixed = [d for d in inputs[0].shape[2:] if isinstance(d, int)]
            if any(d != tile for d in fixed):
                problems.append(f"input {inputs[0].shape} takes fixed {fixed} spatial sizes, but tiling.tile_size is {tile}")
        if len(outputs) != 1 or len(outputs[0].shape) != 4 or outputs[0].shape[1] != len(self.spec.output_channels):
            problems.append(
                f"outputs {[(o.name, o.shape) for o in outputs]} (expected one (B, {len(self.spec.output_channels)}, H, W))"
            )
        if problems:
            raise WeightsError(f"{self.model_path} does not match its spec: " + "; ".join(problems))
        self._input_name = inputs[0].name

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(None, {self._input_name: batch})[0]


class TorchPredictor:
    """PyTorch predictor from a checkpoint holding ``spec`` and ``model`` (or ``state_dict``).

    Parameters
    ----------
    checkpoint : path to a .pt file written by crossct (training checkpoint or exported model).
    spec : overrides the spec stored in the checkpoint (e.g. the one from ``model.json``).
    device : ``auto`` (CUDA when available), ``cuda`` or ``cpu``.
    """

    def __init__(self, checkpoint: str | os.PathLike, spec: ModelSpec | None = None, device: str = "auto") -> None:
        import torch

        from .nets import build_network, with_probabilities

        self.model_path = Path(checkpoint)
        try:
            state = torch.load(self.model_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"{self.model_path}: cannot load as a weights-only PyTorch checkpoint ({exc})") from exc
        if not isinstance(state, dict) or not ({"model", "state_dict"} & state.keys()):
            raise WeightsError(f"{self.model_path}: not a crossct checkpoint (no 'model' or 'state_dict' entry)")
        if spec is None:
            if "spec" not in state:
                raise WeightsError(f"{self.model_path}: checkpoint holds no model spec")
            try:
                spec = ModelSpec.from_dict(state["spec"])
            except ValueError as exc:
                raise WeightsError(f"{self.model_path}: not a valid CrossCT model spec: {exc}") from None
        self.spec = spec
        network = build_network(spec.model)
        weights = state.get("model", state.get("state_dict"))
        # Checkpoints saved from DistributedDataParallel carry a "module." prefix.
        weights = {k.removeprefix("module."): v for k, v in weights.items()}
        try:
            network.load_state_dict(weights)
        except RuntimeError as exc:
            raise WeightsError(f"{self.model_path}: weights do not fit the spec's {spec.model.arch}: {exc}") from exc
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            raise WeightsError(f"device 'cuda' requested but PyTorch {torch.__version__} sees no CUDA device")
        if device == "cuda":
            device = f"cuda:{local_rank()}"  # one GPU per torchrun process
        self.device = torch.device(device)
        self.module = with_probabilities(network).to(self.device).eval()
        self.description = f"torch {torch.__version__} {self.device}"
        self.on_gpu = self.device.type == "cuda"
        # PyTorch's CPU kernels already use every core within a call; on a GPU 2 calls overlap.
        self.concurrent_calls = 2 if self.on_gpu else 1
        logger.info("PyTorch using %s", self.device)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            return self.module(x).float().cpu().numpy()


def resolve_weights(weights: str | os.PathLike | None) -> Path:
    """The weights location: the argument, else ``$CROSSCT_WEIGHTS``, else ``weights/`` beside the package."""
    if weights is None:
        weights = os.environ.get("CROSSCT_WEIGHTS") or Path(__file__).resolve().parent.parent / "weights"
    return Path(weights)


def _missing_weights_message(where: Path) -> str:
    return (
        f"no model weights found at {where}: expected {SPEC_NAME} with {ONNX_NAME} and/or {TORCH_NAME} "
        "(pass --weights DIR or set CROSSCT_WEIGHTS). To make weights: train with "
        "'python -m crossct.train supervised ...', then 'python -m crossct.export CHECKPOINT DIR'."
    )


def load_predictor(weights: str | os.PathLike | None = None, backend: Backend = "auto", device: str = "auto") -> Predictor:
    """Load a predictor from a weights folder or a single model file.

    Parameters
    ----------
    weights : a folder with ``model.json`` (+ ``model.onnx`` / ``model.pt``), a ``.onnx`` file with
        its ``.json`` beside it, or a crossct ``.pt`` checkpoint.  ``None``: see :func:`resolve_weights`.
    backend : ``auto`` takes ONNX when a .onnx file is present, else PyTorch.
    device : ``auto``, ``cuda`` or ``cpu``.
    """
    if backend not in ("auto", "onnx", "torch"):
        raise ValueError(f"backend={backend!r} is not one of ['auto', 'onnx', 'torch']")
    path = resolve_weights(weights)
    if path.is_file() and path.suffix == ".pt":
        if backend == "onnx":
            raise WeightsError(f"{path} is a PyTorch checkpoint; backend 'onnx' needs a .onnx model")
        return TorchPredictor(path, device=device)
    if path.is_file() and path.suffix == ".onnx":
        spec_path = path.with_suffix(".json")
        folder, onnx_path, torch_path = path.parent, path, None
    elif path.is_dir():
        spec_path = path / SPEC_NAME
        folder, onnx_path, torch_path = path, path / ONNX_NAME, path / TORCH_NAME
    else:
        raise WeightsError(_missing_weights_message(path))
    if not spec_path.is_file():
        raise WeightsError(_missing_weights_message(folder))
    try:
        spec = load_spec(spec_path)
    except ValueError as exc:
        raise WeightsError(str(exc)) from exc
    has_onnx = onnx_path.is_file()
    has_torch = torch_path is not None and torch_path.is_file()
    if backend == "onnx" or (backend == "auto" and has_onnx):
        if not has_onnx:
            raise WeightsError(f"backend 'onnx' requested but {onnx_path} does not exist")
        _verify_checksum(onnx_path, spec, spec_path)
        return OnnxPredictor(onnx_path, spec, device=device)
    if not has_torch:
        if backend == "torch":
            raise WeightsError(f"backend 'torch' requested but {torch_path or folder / TORCH_NAME} does not exist")
        raise WeightsError(_missing_weights_message(folder))
    _verify_checksum(torch_path, spec, spec_path)
    return TorchPredictor(torch_path, spec=spec, device=device)
