"""Conv + BatchNorm (+ activation) with BatchNorm folding for the deploy form."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .reparam import fuse_bn

__all__ = ['ConvBN']


class ConvBN(nn.Module):
    """``act(bn(conv(x)))`` with 'same'-style padding ``k // 2``; ``reparameterize()`` folds the BN into the conv.

    Submodule names (``conv``, ``bn``) follow the official checkpoints' ``conv_bn`` / ``conv_bn_relu`` blocks.
    ``deploy=True`` builds the folded form (conv with bias, no BN) directly.
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
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups,
                              bias=deploy, device=device, dtype=dtype)
        self.bn = nn.Identity() if deploy else norm_layer(out_channels, device=device, dtype=dtype)
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BatchNorm into the conv (idempotent)."""
        if isinstance(self.bn, nn.Identity):
            return
        weight, bias = fuse_bn(self.conv.weight, self.conv.bias, self.bn)
        self.conv.weight.copy_(weight)
        self.conv.bias = nn.Parameter(bias)
        self.bn = nn.Identity()
