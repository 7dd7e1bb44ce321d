"""Kernel pictures in the manner of the paper's Figs. 4-5: learned points, the kernels they define, their sum.

    python -m smpconv_models.viz MODEL_OR_FOLDER OUT.png [--layer NAME ...] [--model ARCH] [--model-args JSON]

``MODEL_OR_FOLDER`` is a registered model (``smpconv_cifar``, untrained) or pretrained tag
(``smpconv_tcn_mnist.digits``), a Hub-layout folder (``config.json`` + ``model.safetensors``), a ``train.py`` run
folder (its ``best/``), or a checkpoint file, official or ours (``--model`` names the architecture; the family's
converter maps official keys). Each row of the picture is one SMP layer: its points with their radii drawn as L1
balls (Eq. 2's support), the first kernels of one filter as ``|k|`` normalised to [0, 1] (Fig. 4), and the
normalised sum of ``|k|`` over all kernels of the layer (Fig. 5).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from torch import Tensor

if TYPE_CHECKING:
    import numpy as np

from .layers import MLPKernel, SMPConvBase, SMPPointKernel, kernel_coords
from .models import load_model

__all__ = ['pyplot', 'has_grid_smp_kernels', 'plot_kernels',
           'plot_smp_kernels', 'plot_point_kernels', 'select_smp_layers', 'layer_kernels',
           'add_l1_balls', 'save_figure', 'load_model', 'main']


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (unless one was chosen), or a clear error."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError('kernel pictures need matplotlib: pip install "smpconv-models[train]"') from e
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    return plt


def select_smp_layers(model: nn.Module, names: Sequence[str] | None = None, max_layers: int = 4
                      ) -> list[tuple[str, SMPConvBase]]:
    """``(name, layer)`` of the SMP layers to draw: those whose name contains one of ``names`` (in model order), or
    ``max_layers`` layers spread evenly from the first to the last."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, SMPConvBase)]
    if not layers:
        raise ValueError(f'{type(model).__name__} has no SMP layers to plot (reparameterized models have none)')
    if names:
        chosen = [(n, m) for n, m in layers if any(s in n for s in names)]
        if not chosen:
            raise ValueError(f'no SMP layer name contains any of {list(names)}; SMP layers: '
                             + ', '.join(n for n, _ in layers))
        return chosen
    if max_layers < 1:
        raise ValueError(f'max_layers must be at least 1, got {max_layers}')
    if len(layers) <= max_layers:
        return layers
    picks = sorted({round(i * (len(layers) - 1) / (max_layers - 1)) for i in range(max_layers)}) \
        if max_layers > 1 else [0]
    return [layers[i] for i in picks]


@torch.no_grad()
def layer_kernels(layer: SMPConvBase, filter_index: int = 0, n_kernels: int = 4
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(positions [P, d], radii [P], first kernels [n, *K], normalised sum of |k| [*K])`` of one SMP layer.

    The first kernels are those of output filter ``filter_index`` (its first ``n_kernels`` input channels; for a
    depthwise layer, whose points all channels share, the first ``n_kernels`` channels), each ``|k|`` scaled to
    [0, 1]. The sum runs over every kernel of the layer (Fig. 5) and is scaled to [0, 1] too.
    """
    kernel = layer.generate_kernel().float().cpu()  # [C_out, C_in, *K] (depthwise: [C, 1, *K])
    ndim = len(layer.kernel_size)
    groups = layer.weight_coord.shape[0]
    if not 0 <= filter_index < kernel.shape[0]:
        raise ValueError(f'filter_index {filter_index} is outside the {kernel.shape[0]} filters')
    if groups == 1:  # shared points (depthwise): the kernels of the first channels
        first = kernel[:n_kernels, 0]
        group = 0
    else:
        first = kernel[filter_index, :n_kernels]
        group = filter_index
    first = first.abs()
    first = first / first.flatten(1).amax(1).clamp_min(1e-12).reshape(-1, *(1,) * ndim)
    total = kernel.abs().sum((0, 1))
    total = total / total.max().clamp_min(1e-12)
    positions = layer.weight_coord[group].float().cpu()
    radii = layer.radius[group].reshape(-1).float().cpu()
    return positions, radii, first, total


def add_l1_balls(ax, positions: Tensor | np.ndarray, radii: Tensor | np.ndarray, color: str = 'k',
                 alpha: float = 0.15) -> None:
    """Draw each 2-d point's support ``||x - p||_1 < r`` (a diamond) on a matplotlib axis."""
    from matplotlib.collections import PolyCollection

    p = torch.as_tensor(positions).detach().float().cpu()
    r = torch.as_tensor(radii).detach().float().cpu().reshape(-1, 1)
    offsets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    diamonds = p[:, None, :] + r[:, :, None] * offsets  # [P, 4, 2]
    ax.add_collection(PolyCollection(diamonds.numpy(), facecolors=color, edgecolors=color, alpha=alpha,
                                     linewidths=0.5))


def _draw_points(ax, positions: Tensor, radii: Tensor, ndim: int) -> None:
    positions, radii = positions.numpy(), radii.numpy()
    if ndim == 2:
        add_l1_balls(ax, positions, radii, alpha=min(0.25, max(0.03, 4.0 / len(positions))))
        ax.scatter(positions[:, 0], positions[:, 1], s=3, c='k')
        ax.add_patch(_square())
        ax.set_xlim(-1.2, 1.2)
        ax.set_ylim(-1.2, 1.2)
        ax.set_aspect('equal')
    else:  # 1-d: each point's support [p - r, p + r] as a bar, sorted by position
        order = positions[:, 0].argsort()
        p, r = positions[order, 0], radii[order]
        rows = list(range(len(p)))
        ax.hlines(rows, p - r, p + r, colors='k', lw=1)
        ax.scatter(p, rows, s=6, c='k')
        ax.axvspan(-1, 1, color='0.9', zorder=0)
        ax.set_xlim(min(-1.05, float((p - r).min())), max(1.05, float((p + r).max())))
        ax.set_xlabel('position (+1 = now)', fontsize=7)
        ax.set_yticks([])


def _square():
    from matplotlib.patches import Rectangle

    return Rectangle((-1, -1), 2, 2, fill=False, ls='--', lw=0.6, ec='0.5')


@torch.no_grad()
def plot_smp_kernels(model: nn.Module, path: str | os.PathLike, layers: Sequence[str] | None = None,
                     max_layers: int = 4, n_kernels: int = 4, filter_index: int = 0) -> Path:
    """Write a PNG with one row per SMP layer (see :func:`select_smp_layers`): the points with their L1-ball
    supports, the first ``n_kernels`` kernels of filter ``filter_index`` as ``|k|`` in [0, 1] (Fig. 4) and the
    normalised sum of ``|k|`` over the layer (Fig. 5). 1-d (sequence) kernels are drawn as curves over the
    normalised time axis. Written atomically; returns the path."""
    plt = pyplot()
    chosen = select_smp_layers(model, layers, max_layers)
    if n_kernels < 1:
        raise ValueError(f'n_kernels must be at least 1, got {n_kernels}')
    for name, layer in chosen:
        if len(layer.kernel_size) not in (1, 2):
            raise ValueError(f'{name}: only 1-d and 2-d SMP layers are drawn, got kernel_size {layer.kernel_size}')
    fig, axes = plt.subplots(len(chosen), n_kernels + 2, figsize=(2.3 * (n_kernels + 2), 2.5 * len(chosen)),
                             squeeze=False)
    for row, (name, layer) in zip(axes, chosen):
        positions, radii, first, total = layer_kernels(layer, filter_index, n_kernels)
        ndim = positions.shape[-1]
        _draw_points(row[0], positions, radii, ndim)
        shared = layer.weight_coord.shape[0] == 1
        row[0].set_title(f'{name}\n{layer.n_points} points'
                         + ('' if shared else f' of filter {filter_index}'), fontsize=7)
        panels = [(f'|k| {"channel" if shared else "in"} {i}', k) for i, k in enumerate(first)]
        panels += [(f'sum |k| (K={"x".join(map(str, layer.kernel_size))})', total)]
        for j, ax in enumerate(row[1:]):
            if j >= len(panels):
                ax.axis('off')
                continue
            title, img = panels[j]
            img = img.numpy()
            if ndim == 2:
                ax.imshow(img, cmap='magma', vmin=0, vmax=1, extent=(-1, 1, -1, 1), interpolation='nearest')
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.plot(torch.linspace(-1, 1, img.size).numpy(), img, lw=0.8)
                ax.set_ylim(-0.02, 1.05)
                ax.tick_params(labelsize=6)
            ax.set_title(title, fontsize=7)
    return save_figure(fig, path)


def has_grid_smp_kernels(model: nn.Module) -> bool:
    """Whether ``model`` holds grid SMP convolutions (what ``train.py``'s ``kernels.png`` draws; none with MLP
    kernels)."""
    return any(isinstance(m, SMPConvBase) for m in model.modules())


def plot_kernels(model: nn.Module, path: str | os.PathLike, max_layers: int = 4) -> Path:
    """The kernel picture of ``train.py``'s run folder (``kernels.png``): :func:`plot_smp_kernels` with defaults, or
    the point-convolution kernels of a point-set model (:func:`plot_point_kernels`)."""
    if not any(isinstance(m, SMPConvBase) for m in model.modules()) and \
            any(isinstance(m, (SMPPointKernel, MLPKernel)) for m in model.modules()):
        return plot_point_kernels(model, path, max_layers)
    return plot_smp_kernels(model, path, max_layers=max_layers)


@torch.no_grad()
def plot_point_kernels(model: nn.Module, path: str | os.PathLike, max_layers: int = 4) -> Path:
    """Point-convolution kernels (SMP or MLP) over their box ``[-1, 1]^d``: filter 0, input channel 0, on a 33-tap
    grid in the grid orientation of :func:`kernel_coords` (a slice through the centre for d = 3), SMP points on top."""
    plt = pyplot()
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
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m smpconv_models.viz', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('source', metavar='MODEL_OR_FOLDER',
                        help='registered model or pretrained tag, Hub-layout / train.py run folder, or checkpoint file')
    parser.add_argument('out', metavar='OUT.png', help='PNG to write')
    parser.add_argument('--layer', nargs='+', default=None,
                        help='draw the SMP layers whose names contain one of these (default: up to --max-layers)')
    parser.add_argument('--max-layers', type=int, default=4, help='layers spread over the depth when no --layer')
    parser.add_argument('--kernels', type=int, default=4, help='first kernels of the filter to draw')
    parser.add_argument('--filter', type=int, default=0, help='output filter whose kernels and points are drawn')
    parser.add_argument('--model', default=None, help='architecture of a checkpoint file, e.g. smpconv_cifar')
    parser.add_argument('--model-args', type=json.loads, default=None,
                        help='JSON object of model kwargs, e.g. \'{"seq_len": 100}\'')
    args = parser.parse_args(argv)
    try:
        model = load_model(args.source, args.model, args.model_args)
        path = plot_smp_kernels(model, args.out, args.layer, args.max_layers, args.kernels, args.filter)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f'error: {e}\n')
    sys.stdout.write(f'wrote {path}\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
