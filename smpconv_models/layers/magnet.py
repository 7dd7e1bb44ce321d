"""MAGNet: FlexConv's kernel generator (Romero et al., "FlexConv: Continuous Kernel Convolutions with
Differentiable Kernel Sizes", ICLR 2022), a multiplicative anisotropic Gabor network mapping kernel coordinates to
kernel values. The MLP-kernel peer of the SMP kernels in the function-fitting experiment and the benchmark."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ['MAGNetKernel']


class _GaborFilter(nn.Module):
    """``exp(-0.5 * sum_d (gamma_d (x_d - mu_d))^2) * sin(W x + b)`` per hidden unit (anisotropic Gabor)."""

    def __init__(self, ndim: int, hidden: int, omega: float = 16.0):
        super().__init__()
        self.linear = nn.Linear(ndim, hidden)
        self.mu = nn.Parameter(torch.rand(hidden, ndim) * 2 - 1)
        self.gamma = nn.Parameter(torch.distributions.Gamma(4.0, 1.0).sample((hidden, ndim)))
        with torch.no_grad():
            self.linear.weight.mul_(omega * self.gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        envelope = torch.exp(-0.5 * ((x[:, None, :] - self.mu) * self.gamma).square().sum(-1))
        return envelope * torch.sin(self.linear(x))


class MAGNetKernel(nn.Module):
    """FlexConv's kernel generator (multiplicative anisotropic Gabor network): ``h1 = g1(x)``,
    ``h_{l+1} = (W_l h_l + b_l) * g_{l+1}(x)``, output ``W_L h_L + b`` with one value per (C_out, C_in) pair."""

    def __init__(self, ndim: int, out_features: int, hidden: int = 32, layers: int = 3):
        super().__init__()
        self.filters = nn.ModuleList(_GaborFilter(ndim, hidden) for _ in range(layers))
        self.linears = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.out = nn.Linear(hidden, out_features)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        h = self.filters[0](coords)
        for linear, gabor in zip(self.linears, self.filters[1:]):
            h = linear(h) * gabor(coords)
        return self.out(h)  # [Q, out_features]
