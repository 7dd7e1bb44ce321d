"""The SMP point set: learnable points with a position, a radius and weights (Kim & Park, CVPR 2023, Eq. 1-2).

:class:`SMPPoints` is the one home of the point parameters of every SMP layer: the grid convolutions
(:mod:`~smpconv_models.layers.smp_conv`), the point-convolution kernel
(:class:`~smpconv_models.layers.point_conv.SMPPointKernel`) and, through the causal grid layer, the irregular-series
convolution. Parameter names and layouts are the official ones (``weight_coord``, ``radius``, ``weights``), so
official state dicts load after stripping wrapper prefixes.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch import Tensor

from .fused import cached_eval_value, tensor_key
from .mode import is_eager, python_only

__all__ = ['SMPPoints', 'share_kernels']


class _AddPendingGrad(torch.autograd.Function):
    """Identity on the kernel whose backward adds the kernel gradient accumulated by earlier micro-batches."""

    @staticmethod
    def forward(ctx, kernel: Tensor, pending: Tensor) -> Tensor:
        ctx.pending = pending
        return kernel.view_as(kernel)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad + ctx.pending, None


class SMPPoints(nn.Module):
    """``P`` learnable points per group: positions ``weight_coord`` [G, P, d], radii ``radius`` [G, P, 1...] and
    ``weights`` [*W, P] (one weight per point and channel; the grid layers use ``[G, C, P]``, the point kernel
    ``[F_out, F_in, P]``).

    * Init: positions ~ N(0, ``coord_std``) truncated to ``[-1, 1]`` (``causal=True``: the official sequence init,
      ``|N(0, coord_std)|`` folded into ``[-1, 0]``, scaled by 2 and moved to end at ``+1``, "now"); radii
      ``radius``; weights N(0, ``weight_std``), truncated at +-2 std when ``truncate_weights`` (the official
      layers: ``trunc_normal_(std=0.02)``).
    * :meth:`clamp_radii_` clamps radii to ``radius_bounds`` (the official per-step ``radius_clip``); frozen radii
      are left as initialised.
    * Ablation switches (paper Tables 6-9): ``learn_positions=False`` / ``learn_radius=False`` freeze positions /
      radii at their initialisation (``requires_grad=False``: kept in the state dict, no gradient, no update).
    * :meth:`cached`: a tensor derived from the points (the grid layers' dense kernel), regenerated with autograd in
      training, cached in eval until a parameter changes, and shared by the micro-batches of an optimizer step under
      :func:`share_kernels`. Both shortcuts are eager-only
      (:func:`~smpconv_models.layers.mode.is_eager`): compiled and exported graphs generate it in the graph.
    """

    # No class-level annotations in the layers: under ``from __future__ import annotations`` they are strings that
    # TorchScript cannot read (attribute types are inferred from the values instead).

    def __init__(
            self,
            groups: int,
            n_points: int,
            ndim: int,
            weight_shape: tuple[int, ...],
            radius: float,
            coord_std: float,
            radius_bounds: tuple[float, float],
            radius_dims: int = 1,
            causal: bool = False,
            weight_std: float = 0.02,
            truncate_weights: bool = True,
            learn_positions: bool = True,
            learn_radius: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if int(n_points) < 1:
            raise ValueError(f'n_points must be at least 1, got {n_points}')
        if not radius > 0:
            raise ValueError(f'radius must be positive, got {radius}')
        if not coord_std > 0:
            raise ValueError(f'coord_std must be positive, got {coord_std}')
        dd = dict(device=device, dtype=dtype)
        self.n_points = int(n_points)
        self.radius_min, self.radius_max = radius_bounds
        self.weight_coord = nn.Parameter(torch.empty(groups, self.n_points, ndim, **dd))
        self.radius = nn.Parameter(torch.empty(groups, self.n_points, *(1,) * radius_dims, **dd))
        self.weights = nn.Parameter(torch.empty(*weight_shape, self.n_points, **dd))
        self._eval_cache = None
        # share_kernels(): None outside it, else whether this micro-batch is the last one before the optimizer step;
        # _shared = (cache key, kernel with its autograd graph, detached leaf the earlier micro-batches use)
        self._share_final = None
        self._shared = None
        with torch.no_grad():
            if causal:
                nn.init.trunc_normal_(self.weight_coord, std=coord_std, a=-1.0, b=0.0)
                self.weight_coord.mul_(2.0).add_(1.0)
            else:
                nn.init.trunc_normal_(self.weight_coord, std=coord_std, a=-1.0, b=1.0)
            self.radius.fill_(radius)
            if truncate_weights:
                nn.init.trunc_normal_(self.weights, std=weight_std)
            else:
                nn.init.normal_(self.weights, std=weight_std)
        self.weight_coord.requires_grad_(bool(learn_positions))
        self.radius.requires_grad_(bool(learn_radius))

    @torch.no_grad()
    def clamp_radii_(self) -> None:
        """Clamp radii in place to ``[radius_min, radius_max]`` (after each optimizer step, before EMA); frozen radii
        (``learn_radius=False``) are left as initialised."""
        if self.radius.requires_grad:
            self.radius.clamp_(self.radius_min, self.radius_max)

    def cached(self, generate: Callable[[], Tensor]) -> Tensor:
        """``generate()`` (a tensor derived from the points), with the eager-only shortcuts: in eval without autograd
        cached until a point parameter or buffer changes (storage pointer / version key); under
        :func:`share_kernels` one result per optimizer step (its gradient reaches the points in the final
        micro-batch's backward). Otherwise (training, compile, export, trace) freshly computed."""
        if is_eager():
            return self._cached_eager(generate)
        return generate()

    @python_only
    def _cached_eager(self, generate):
        needs_grad = torch.is_grad_enabled() and any(
            p.requires_grad for p in (self.weight_coord, self.radius, self.weights))
        if self.training or needs_grad:
            self._eval_cache = None
            if self._share_final is not None and needs_grad:
                return self._shared_value(generate, self._share_final)
            return generate()
        return cached_eval_value(self, generate)

    def _shared_value(self, generate: Callable[[], Tensor], final: bool) -> Tensor:
        """One value per optimizer step: generated (with its graph) at the first micro-batch; earlier micro-batches
        run on a detached leaf that accumulates their gradient, the final one on the generated value, whose
        backward adds that gradient, so the points receive the whole step's gradient in the final backward (inside
        DDP's gradient synchronisation)."""
        key = tensor_key(list(self.parameters()) + list(self.buffers()))
        shared = self._shared
        if shared is not None and shared[0] != key:
            if shared[2].grad is not None:
                warnings.warn(f'{type(self).__name__}: point parameters changed before the final micro-batch of '
                              'share_kernels(); the kernel gradient of the earlier micro-batches was discarded '
                              '(pass final=True on the micro-batch before optimizer.step())', stacklevel=4)
            shared = self._shared = None
        if final:
            self._shared = None
            if shared is None:
                return generate()
            pending = shared[2].grad
            return shared[1] if pending is None else _AddPendingGrad.apply(shared[1], pending)
        if shared is None:
            value = generate()
            shared = self._shared = (key, value, value.detach().requires_grad_())
        return shared[2]

    def __getstate__(self) -> dict:
        # copies and pickles start without cached or shared kernels (a shared one holds an autograd graph, which
        # deepcopy refuses)
        state = self.__dict__.copy()
        state['_eval_cache'] = state['_shared'] = None
        return state

    def train(self, mode: bool = True):
        self._eval_cache = None
        return super().train(mode)

    def extra_repr(self) -> str:
        return (f'n_points={self.n_points}, radius_bounds=({self.radius_min}, {self.radius_max}), '
                f'learn_positions={self.weight_coord.requires_grad}, learn_radius={self.radius.requires_grad}')


@contextmanager
def share_kernels(model: nn.Module, final: bool) -> Iterator[nn.Module]:
    """Generate every SMP kernel of ``model`` once per optimizer step under gradient accumulation.

    Wrap each micro-batch's forward and backward; ``final`` marks the last micro-batch before ``optimizer.step()``
    (``accelerator.sync_gradients`` under Accelerate). The point gradients are the same as without sharing and
    arrive in the final backward, so DDP synchronises them with the rest; earlier micro-batches skip the kernel
    generation and its backward. With ``final=True`` on every micro-batch it changes nothing.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'share_kernels expects an nn.Module, got {type(model).__name__}')
    layers = [m for m in model.modules() if isinstance(m, SMPPoints)]
    for layer in layers:
        layer._share_final = bool(final)
    try:
        yield model
    finally:
        for layer in layers:
            layer._share_final = None
