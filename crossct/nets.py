"""The one place where network architectures are defined.

Networks are built from a :class:`~crossct.config.ModelConfig` (a registered name plus the
constructor's keyword arguments), never re-declared at load time.  Needs torch and MONAI.
"""

from __future__ import annotations

from typing import Any, Callable

from .config import ModelConfig

__all__ = ["build_network", "with_probabilities", "inference_copy", "ARCHITECTURES", "FULLY_CONVOLUTIONAL"]


def _unet(**kwargs: Any):
    from monai.networks.nets import UNet

    return UNet(**kwargs)


def _swin_unetr(**kwargs: Any):
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(**kwargs)


ARCHITECTURES: dict[str, Callable[..., Any]] = {"unet": _unet, "swin_unetr": _swin_unetr}
# Networks that accept any input size (multiple of 16); the others run on tile x tile inputs only.
FULLY_CONVOLUTIONAL = frozenset({"unet"})


def build_network(config: ModelConfig):
    """Instantiate the network described by ``config`` (a ``torch.nn.Module``, randomly initialised)."""
    try:
        factory = ARCHITECTURES[config.arch]
    except KeyError:
        raise ValueError(f"unknown architecture {config.arch!r}; valid: {sorted(ARCHITECTURES)}") from None
    kwargs = dict(config.kwargs)
    # JSON stores sequences as lists; MONAI wants tuples for channels/strides.
    for key, value in kwargs.items():
        if isinstance(value, list):
            kwargs[key] = tuple(value)
    return factory(**kwargs)


def with_probabilities(network):
    """Wrap ``network`` so that it returns what inference blends: softmax over the 3 class logits
    (channels 0-2) followed by the raw distance maps (channels 3-4).

    The same wrapper is exported to ONNX, so both predictors return identical quantities.
    """
    import torch

    class WithProbabilities(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.net(x)
            # Softmax over 3 channels written out element-wise: ONNX Runtime's Softmax on axis 1 of
            # NCHW transposes the tensor twice (10 % of the U-Net's CPU time); this does not.
            logits = y[:, :3]
            e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
            return torch.cat([e / e.sum(dim=1, keepdim=True), y[:, 3:]], dim=1)

    return WithProbabilities(network)


def inference_copy(network):
    """A copy of ``network`` with single-slope PReLUs replaced by the equivalent LeakyReLU.

    Same function (PReLU with one learned slope a is LeakyReLU(a)), but ONNX Runtime's CPU
    kernels fuse LeakyRelu into the preceding convolution, which PRelu they do not (measured
    1.3x on the U-Net); export checks the copy against the original.
    """
    import copy

    import torch

    clone = copy.deepcopy(network).eval()
    for name, module in list(clone.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.PReLU) and child.num_parameters == 1:
                setattr(module, child_name, torch.nn.LeakyReLU(float(child.weight.detach().reshape(-1)[0])))
    return clone
