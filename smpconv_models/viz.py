"""Kernel plots in the manner of the paper's Fig. 4: learned point positions and the kernels they define."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from .layers import MLPKernel, SMPConvBase, SMPPointKernel, kernel_coords

__all__ = ['plot_kernels', 'save_figure']


@torch.no_grad()
def plot_kernels(model: nn.Module, path: str | os.PathLike, max_layers: int = 4) -> Path:
    """Write a PNG with, for up to ``max_layers`` SMP layers, the point positions (marker size ~ radius) over the
    first generated kernel; 1-d kernels are drawn as curves with the points on the time axis. Written atomically."""
    import matplotlib

    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, SMPConvBase)]
    if not layers and any(isinstance(m, (SMPPointKernel, MLPKernel)) for m in model.modules()):
        return _plot_point_kernels(model, path, max_layers)
    if not layers:
        raise ValueError(f'{type(model).__name__} has no SMP layers to plot (reparameterized models have none)')
    step = max(1, len(layers) // max_layers)
    layers = layers[::step][:max_layers]
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 4), squeeze=False)
    for ax, (name, layer) in zip(axes[0], layers):
        kernel = layer.generate_kernel().float().cpu()
        pos = layer.weight_coord[0].float().cpu()
        radius = layer.radius[0].reshape(-1).float().cpu()
        ndim = pos.shape[-1]
        if ndim == 2:
            k = kernel[0, 0]
            ax.imshow(k, cmap='RdBu_r', extent=(-1, 1, -1, 1), vmin=-k.abs().max(), vmax=k.abs().max())
            # tap [i, j] sits at (lin[j], lin[K-1-i]): the image's x/y axes are the points' coordinates
            ax.scatter(pos[:, 0], pos[:, 1], s=2000 * radius.clamp_max(0.1), facecolors='none', edgecolors='k',
                       linewidths=0.6)
        elif ndim == 1:
            k = kernel[0, 0]
            grid = torch.linspace(-1, 1, k.numel())
            ax.plot(grid, k, lw=1)
            ax.scatter(pos[:, 0], torch.zeros_like(pos[:, 0]), s=8, c='k')
            ax.set_xlabel('position (+1 = now)')
        else:
            ax.imshow(kernel[0, 0, kernel.shape[2] // 2], cmap='RdBu_r')
        ax.set_title(f'{name}\n{layer.n_points} points, kernel {tuple(layer.kernel_size)}', fontsize=8)
    return save_figure(fig, path)


def _plot_point_kernels(model: nn.Module, path: str | os.PathLike, max_layers: int) -> Path:
    """Point-convolution kernels (SMP or MLP) over their box ``[-1, 1]^d``: filter 0, input channel 0, on a 33-tap
    grid in the grid orientation of :func:`kernel_coords` (a slice through the centre for d = 3), SMP points on top."""
    import matplotlib.pyplot as plt

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (SMPPointKernel, MLPKernel))]
    step = max(1, len(layers) // max_layers)
    layers = layers[::step][:max_layers]
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 4), squeeze=False)
    for ax, (name, kernel) in zip(axes[0], layers):
        p = kernel.weights
        coords = kernel_coords(33, ndim=min(kernel.dim, 2), device=p.device, dtype=p.dtype)
        if kernel.dim == 3:
            coords = torch.cat([coords, torch.zeros_like(coords[:, :1])], -1)
        values = kernel(coords)[:, 0, 0].float().cpu()
        if kernel.dim == 1:
            ax.plot(coords[:, 0].cpu(), values, lw=1)
        else:
            k = values.reshape(33, 33)
            ax.imshow(k, cmap='RdBu_r', extent=(-1, 1, -1, 1), vmin=-k.abs().max(), vmax=k.abs().max())
        if isinstance(kernel, SMPPointKernel):
            pos = kernel.weight_coord[0].float().cpu()
            ax.scatter(pos[:, 0], pos[:, 1] if kernel.dim > 1 else torch.zeros_like(pos[:, 0]), s=8, c='k')
        ax.set_title(f'{name}\n{type(kernel).__name__}, basis {kernel.weights.shape[-1]}', fontsize=8)
    return save_figure(fig, path)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG atomically (write a sibling, then rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f'.{path.stem}.tmp{path.suffix}')
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
