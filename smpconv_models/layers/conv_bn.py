"""Conv + BatchNorm (+ activation) with BatchNorm folding for the deploy form."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .fused import (
    activation_name,
    bns_have_statistics,
    cached_eval_value,
    conv2d_act,
    folds_in_eval,
    pointwise_conv2d,
)
from .mode import execution_mode, is_eager, python_only
from .reparam import fuse_bn

__all__ = ['ConvBN']


class ConvBN(nn.Module):
    """``act(bn(conv(x)))`` with 'same'-style padding ``dilation * (k // 2)``; ``reparameterize()`` folds the BN into
    the conv.

    Submodule names (``conv``, ``bn``) follow the official checkpoints' ``conv_bn`` / ``conv_bn_relu`` blocks.
    ``deploy=True`` builds the folded form (conv with bias, no BN) directly. In eval mode without autograd the BN is
    folded on the fly (cached) and the activation fused into the convolution (:func:`conv2d_act`).
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: int,
            stride: int = 1,
            groups: int = 1,
            act_layer: type[nn.Module] | None = None,
            norm_layer: type[nn.Module] = nn.BatchNorm2d,
            deploy: bool = False,
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, dilation * (kernel_size // 2),
                              dilation=dilation, groups=groups, bias=deploy, device=device, dtype=dtype)
        self.bn = nn.Identity() if deploy else norm_layer(out_channels, device=device, dtype=dtype)
        self.act = act_layer() if act_layer is not None else nn.Identity()
        self._eval_cache = None

    def forward(self, x: Tensor) -> Tensor:
        if execution_mode() == 'script':
            return self.act(self.bn(self.conv(x)))
        return self._forward_python(x)

    @python_only
    def _forward_python(self, x):
        """Eager eval without autograd: the folded conv (cached) with the activation fused; otherwise the plain
        layers, a 1x1 conv of a channels_last input as a matmul (:func:`pointwise_conv2d`)."""
        if is_eager() and self._folds_in_eval(x):
            weight, bias = cached_eval_value(self, self.folded_weight_bias)
            return self.conv_act(x, weight, bias)
        return self.act(self.bn(pointwise_conv2d(self.conv, x)))

    def _folds_in_eval(self, x: Tensor) -> bool:
        if activation_name(self.act) is None or not isinstance(self.bn, (nn.Identity, nn.modules.batchnorm._BatchNorm)):
            return False
        return folds_in_eval(self, x) and bns_have_statistics(self)

    def conv_act(self, x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None = None) -> Tensor:
        """``act(conv(x) + residual)`` with this layer's geometry and a given (folded) ``weight`` and ``bias``."""
        c = self.conv
        return conv2d_act(x, weight, bias, list(c.stride), list(c.padding), c.groups, activation_name(self.act),
                          residual, list(c.dilation))

    @torch.no_grad()
    def folded_weight_bias(self) -> tuple[Tensor, Tensor | None]:
        """Weight and bias of the conv with the eval-mode BatchNorm folded in."""
        if isinstance(self.bn, nn.Identity):
            return self.conv.weight, self.conv.bias
        return fuse_bn(self.conv.weight, self.conv.bias, self.bn)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BatchNorm into the conv (idempotent)."""
        if isinstance(self.bn, nn.Identity):
            return
        weight, bias = self.folded_weight_bias()
        self.conv.weight.copy_(weight)
        self.conv.bias = nn.Parameter(bias)
        self.bn = nn.Identity()
        self._eval_cache = None
