"""The one place where network architectures are defined.

Networks are built from a :class:`~crossct.config.ModelConfig` (a registered name plus the
constructor's keyword arguments), never re-declared at load time.  Needs torch and MONAI.

The paper's networks (Table 4) and the MONAI classes that stand for them (settings in
:mod:`crossct.config`; parameter counts of the 5-output networks, counted with ``numel``):

``unet`` -- U-Net: MONAI ``UNet(channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
    num_res_units=2)``, 1.63 M parameters, the organisers' baseline exactly.
``resunet`` -- "ResNet + U-Net" (ResUnet, after Zhang et al. 2018's deep residual U-Net, "modified
    with 5 layers as the U-Net", 3.23 M parameters, twice the U-Net).  The paper's code for it is
    not published.  Stand-in: the same MONAI ``UNet`` with ``num_res_units=4``, 3.20 M parameters
    (1 % under the paper's count): the U-Net's 5 levels and widths (16-256), each encoder level and
    the bottom one residual unit of 4 convolutions instead of 2.  Where it differs from Zhang et
    al.: MONAI's residual units are conv -> instance norm -> PReLU with a strided 3x3 shortcut (not
    pre-activated batch-norm blocks of 2 convolutions with a 1x1 shortcut), and the decoder
    upsamples with transposed convolutions followed by a 1-convolution residual unit.  MONAI's ResNet-encoder U-Net (``FlexibleUNet`` with a ``resnet10``
    backbone) has 7.45 M parameters and downsamples 5 times (input a multiple of 32); MONAI's
    ``BasicUNetPlusPlus`` at the U-Net's widths 2.28 M and is not residual: neither matches.
``unetr`` -- ViT + U-Net: MONAI ``UNETR(spatial_dims=2, img_size=256, feature_size=16,
    hidden_size=768, mlp_dim=3072, num_heads=12, proj_type="perceptron", norm_name="instance",
    conv_block=False, res_block=True)``, 87.6 M parameters: the organisers' ``UNETR2D`` (a 2-D
    copy of MONAI's UNETR, 12 ViT-B layers on 16 x 16 patches) with the same settings.  Its
    position embeddings fix the input to img_size x img_size: trained on crops of that size and
    served on tiles of that size (:func:`crossct.config.fixed_input_size`).
``swin_unetr`` -- Swin + U-Net: MONAI ``SwinUNETR(spatial_dims=2, feature_size=24)``, 6.3 M
    parameters, the organisers' baseline.  The cross-teaching partner is the lighter
    ``SWIN_UNETR_LITE`` (feature_size 12, heads 1-2-4-8, 1.6 M parameters) on a 2x pooled input
    (``input_pool``, :func:`PooledInput`), which a CPU can afford.
"""

from __future__ import annotations

from typing import Any, Callable

from .config import ModelConfig

__all__ = ["build_network", "with_probabilities", "inference_copy", "count_parameters", "ARCHITECTURES",
           "FULLY_CONVOLUTIONAL"]


def _unet(**kwargs: Any):
    from monai.networks.nets import UNet

    return UNet(**kwargs)


def _unetr(**kwargs: Any):
    from monai.networks.nets import UNETR

    return UNETR(**kwargs)


def _swin_unetr(input_pool: int = 1, **kwargs: Any):
    from monai.networks.nets import SwinUNETR

    network = SwinUNETR(**kwargs)
    return PooledInput(network, input_pool) if input_pool > 1 else network


def PooledInput(network, pool: int):  # noqa: N802 (builds a module, like a class)
    """``network`` run on its input average-pooled ``pool`` x ``pool``, its outputs upsampled back
    (bilinear) to the input's size: ``pool**2`` times fewer tokens for a Transformer, the same
    output shape for the losses, pseudo-labels and sliding windows as any other network."""
    import torch
    import torch.nn.functional as F

    class _PooledInput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.pool = network, pool

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.net(F.avg_pool2d(x, self.pool))
            return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

    return _PooledInput()


# "resunet" is built by the same MONAI class as "unet"; its own name keeps the paper's network
# recognisable in model.json, checkpoints and logs.
ARCHITECTURES: dict[str, Callable[..., Any]] = {
    "unet": _unet, "resunet": _unet, "unetr": _unetr, "swin_unetr": _swin_unetr}
# Networks that accept any input size (multiple of 16); the others run on tile x tile inputs only
# (Swin-UNETR's shifted-window masks are traced for one size; UNETR's position embeddings fix it).
FULLY_CONVOLUTIONAL = frozenset({"unet", "resunet"})


def count_parameters(network) -> int:
    """Number of parameters of a ``torch.nn.Module``."""
    return sum(p.numel() for p in network.parameters())


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
