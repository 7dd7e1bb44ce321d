"""Parametric continuous convolution on point sets (Wang et al., CVPR 2018, Eq. 3) with MLP or SMP kernels.

    h_i = sum_{j in N(x_i)} g((y_j - x_i) / s) f_j        (optionally divided by |N(x_i)|)

Support points ``y_j`` carry features ``f_j``; output points ``x_i`` (the support by default) gather their
neighbours ``N(x_i)`` (k nearest, or those within a radius, at most ``k``); the kernel ``g`` maps relative
coordinates in ``[-1, 1]^d`` to ``[F_out, F_in]`` weights and is zero outside that box. ``s`` (``kernel_extent``) is
the physical offset that maps to the kernel's edge.

Both kernel generators are a *basis times weights*: ``g(u)[o, i] = sum_h b_h(u) W[o, i, h]``, with ``b`` the last
hidden layer of an MLP (:class:`MLPKernel`, Wang et al.'s g) or the SMP hat responses (:class:`SMPPointKernel`,
Kim & Park Eq. 1-2 through :func:`smp_basis`). The convolution contracts the basis with the neighbours' features
first, then with ``W``, so no ``[B, M, k, F_in, F_out]`` kernel tensor ever exists.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ['MLPKernel']


def _activation(activation: str | type[nn.Module] | Callable[[], nn.Module]) -> nn.Module:
    if isinstance(activation, str):
        from timm.layers import get_act_layer

        layer = get_act_layer(activation)
        if layer is None:
            raise ValueError(f'unknown activation {activation!r}')
        return layer()
    return activation()


class MLPKernel(nn.Module):
    """Wang et al.'s kernel generator g: an MLP on relative coordinates whose last hidden layer is a basis.

    ``MLPKernel(dim, in_channels, out_channels, hidden=32, depth=2, activation='relu')``:

    * ``basis(offsets)``: ``[..., d]`` relative coordinates (kernel units, the kernel's box is ``[-1, 1]^d``) ->
      ``[..., H]`` (``H = hidden``), the output of the last of ``depth`` hidden layers
      ``Linear -> activation``;
    * ``weights``: the output layer, a parameter ``[F_out, F_in, H]`` (no bias), so the kernel at an offset is
      ``g(u)[o, i] = sum_h basis(u)[h] * weights[o, i, h]`` (``forward`` evaluates exactly that, ``[..., F_out,
      F_in]``, for inspection and tests; convolutions contract the basis with features instead);
    * ``basis_size``: ``H``.

    ``activation`` is a timm activation name (``'relu'``, ``'gelu'``, ``'silu'``, ``'tanh'``, ...) or a module class.
    ``weights`` start as N(0, 1 / (F_in * H)) (fan-in scaling of the contraction over inputs and basis).
    """

    def __init__(
            self,
            dim: int,
            in_channels: int,
            out_channels: int,
            hidden: int = 32,
            depth: int = 2,
            activation: str | type[nn.Module] = 'relu',
            device=None,
            dtype=None,
    ):
        super().__init__()
        for name, value in (('dim', dim), ('in_channels', in_channels), ('out_channels', out_channels),
                            ('hidden', hidden), ('depth', depth)):
            if int(value) < 1:
                raise ValueError(f'MLPKernel: {name} must be at least 1, got {value}')
        dd = dict(device=device, dtype=dtype)
        self.dim, self.in_channels, self.out_channels = int(dim), int(in_channels), int(out_channels)
        self.basis_size = int(hidden)
        layers: list[nn.Module] = []
        width = self.dim
        for _ in range(int(depth)):
            layers += [nn.Linear(width, self.basis_size, **dd), _activation(activation)]
            width = self.basis_size
        self.mlp = nn.Sequential(*layers)
        self.weights = nn.Parameter(torch.empty(self.out_channels, self.in_channels, self.basis_size, **dd))
        nn.init.normal_(self.weights, std=(self.in_channels * self.basis_size) ** -0.5)

    def basis(self, offsets: Tensor) -> Tensor:
        """``[..., d]`` relative coordinates -> ``[..., H]`` last-hidden-layer responses."""
        if offsets.shape[-1] != self.dim:
            raise ValueError(f'MLPKernel: offsets must be [..., {self.dim}], got shape {tuple(offsets.shape)}')
        return self.mlp(offsets)

    def forward(self, offsets: Tensor) -> Tensor:
        """The kernel ``[..., F_out, F_in]`` at ``[..., d]`` offsets (materialised: for small queries only)."""
        return torch.einsum('...h,oih->...oi', self.basis(offsets), self.weights)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, in_channels={self.in_channels}, out_channels={self.out_channels}, ' \
               f'hidden={self.basis_size}'
