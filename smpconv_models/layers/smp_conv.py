"""SMP convolution layers: thin modules over :func:`smp_kernel` (Kim & Park, CVPR 2023, Sec. 3).

* :class:`SMPDepthwiseConv2d`: ImageNet form, points shared by all channels, no ``1/|N(x)|`` (official
  ``SMPConv`` in ``smp_imagenet/models/SMPConv.py``).
* :class:`SMPConv`: CIFAR form, every output channel has its own points, ``1/|N(x)|`` applied, 'same' padding,
  1-3 spatial dimensions (official ``CKConv`` with ``SMPKernel``).
* :class:`SMPCausalConv1d`: sequence form, per-filter points initialised near "now", causal (FFT for long kernels);
  ``causal=False`` centres the kernel on the output step (points initialised around 0, 'same' length).

Parameter names and shapes are the official ones (``weight_coord``, ``radius``, ``weights``), so official state
dicts load after stripping wrapper prefixes.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import register_notrace_module
from torch import Tensor

from .causal_conv import sequence_conv1d
from .conv import check_conv_input, same_conv
from .irregular_conv import PAIRWISE_CHUNK, STATIC_MIN_GAP, pairwise_smp_causal_conv
from .smp_kernel import kernel_coords, smp_kernel
from .smp_points import SMPPoints

__all__ = ['SMPConvBase', 'SMPDepthwiseConv2d', 'SMPConv', 'SMPCausalConv1d']


def _as_size(kernel_size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    size = (int(kernel_size),) * ndim if isinstance(kernel_size, int) else tuple(int(k) for k in kernel_size)
    if len(size) != ndim:
        raise ValueError(f'kernel_size {kernel_size} must have {ndim} entries')
    if any(k < 1 for k in size):
        raise ValueError(f'kernel_size must be positive, got {kernel_size}')
    return size


def _require_odd(size: tuple[int, ...], name: str) -> None:
    if any(k % 2 == 0 for k in size):
        raise ValueError(f"{name} needs odd kernel sizes for 'same' padding, got {size}")


@register_notrace_module  # torch.fx leaf (as are the subclasses): kernel cache, custom autograd Function, checks
class SMPConvBase(SMPPoints):
    """An :class:`~smpconv_models.layers.smp_points.SMPPoints` point set (``weight_coord`` [G, P, d], ``radius``
    [G, P, 1...], ``weights`` [G, C, P]) and the dense kernel it defines on a ``kernel_size`` grid (Eq. 1).

    The kernel is generated from the points on every training forward (autograd flows to the points); in eval
    without autograd it is cached until a point parameter changes, and under :func:`share_kernels` one kernel serves
    every micro-batch of an optimizer step (:meth:`SMPPoints.cached`; eager only: compiled and exported graphs
    generate it in the graph). ``learn_positions`` / ``learn_radius``, ``coord_std``, ``radius`` and ``n_points``
    are the ablation switches of Tables 6-9 (see :class:`SMPPoints`).
    """

    def __init__(
            self,
            groups: int,
            channels: int,
            n_points: int,
            kernel_size: tuple[int, ...],
            radius: float,
            coord_std: float,
            normalize: bool,
            radius_bounds: tuple[float, float],
            causal: bool = False,
            learn_positions: bool = True,
            learn_radius: bool = True,
            device=None,
            dtype=None,
    ):
        ndim = len(kernel_size)
        super().__init__(groups, n_points, ndim, (groups, channels), radius, coord_std, radius_bounds,
                         radius_dims=ndim, causal=causal, learn_positions=learn_positions, learn_radius=learn_radius,
                         device=device, dtype=dtype)
        self.kernel_size = kernel_size
        self.normalize = normalize
        self.register_buffer('kernel_coord', kernel_coords(kernel_size, device=device, dtype=dtype), persistent=False)

    @torch.jit.export  # compiled, so smp_weight() can call it on a scripted module too
    def _kernel_layout(self, kernel: Tensor) -> Tensor:
        """``[G, C, prod(kernel_size)]`` from :func:`smp_kernel` to the convolution weight layout."""
        return kernel.unflatten(-1, self.kernel_size)

    requires_odd_kernel = True

    def set_kernel_size_(self, kernel_size: int | Sequence[int]) -> None:
        """Sample the same continuous kernel on another grid (the points are untouched): fine-tuning at another
        resolution or sequence length with ``kernel_size' = (K - 1) * s + 1`` re-uses the old taps exactly."""
        size = _as_size(kernel_size, len(self.kernel_size))
        if self.requires_odd_kernel:
            _require_odd(size, type(self).__name__)
        coord = self.kernel_coord
        self.kernel_size = size
        self.kernel_coord = kernel_coords(size, device=coord.device, dtype=coord.dtype)
        self._eval_cache = None

    def generate_kernel(self) -> Tensor:
        """The dense convolution kernel from the current points, always freshly computed (Eq. 1 on the grid)."""
        kernel = smp_kernel(self.kernel_coord, self.weight_coord, self.radius, self.weights, self.normalize)
        return self._kernel_layout(kernel)

    @torch.jit.ignore
    def smp_weight(self):  # -> Tensor (unannotated: TorchScript cannot read string annotations, assumes Tensor)
        """The dense kernel (:meth:`SMPPoints.cached` of :meth:`generate_kernel`).

        Called from Python under TorchScript (``torch.jit.ignore``: the kernel comes from a custom autograd
        Function), so a scripted SMP model runs but cannot be saved; reparameterize it first
        (``timm.utils.reparameterize_model``) to script a plain-conv model."""
        if isinstance(self, torch.jit.ScriptModule):  # called from a scripted model: its compiled methods, no cache
            kernel = smp_kernel(self.kernel_coord, self.weight_coord, self.radius, self.weights, self.normalize)
            return self._kernel_layout(kernel)
        return self.cached(self.generate_kernel)

    def extra_repr(self) -> str:
        return f'kernel_size={self.kernel_size}, normalize={self.normalize}, ' + super().extra_repr()


@register_notrace_module
class SMPDepthwiseConv2d(SMPConvBase):
    """Depthwise 2-d SMP convolution with points shared across channels (ImageNet form, stride 1, 'same').

    ``n_points`` defaults to ``kernel_size**2 // n_points_divide``; radii start at ``radius`` (default
    ``4 / kernel_size``) and are clamped to ``[1e-3, 1]``; positions ~ truncated N(0, ``coord_std`` = 0.2) in
    ``[-1, 1]``; no ``1/|N(x)|`` factor. ``learn_positions`` / ``learn_radius``: see :class:`SMPConvBase`.
    ``dilation``: the same ``kernel_size`` taps applied ``dilation`` pixels apart (spanning
    ``dilation * (kernel_size - 1) + 1`` pixels; the dilated stages of ``output_stride < 32`` backbones).
    """

    def __init__(
            self,
            channels: int,
            kernel_size: int,
            n_points: int | None = None,
            n_points_divide: int = 4,
            radius: float | None = None,
            coord_std: float = 0.2,
            learn_positions: bool = True,
            learn_radius: bool = True,
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        size = _as_size(kernel_size, 2)
        _require_odd(size, type(self).__name__)
        if int(dilation) < 1:
            raise ValueError(f'dilation must be at least 1, got {dilation}')
        if n_points is None:
            if n_points_divide < 1:
                raise ValueError(f'n_points_divide must be at least 1, got {n_points_divide}')
            n_points = size[0] * size[1] // n_points_divide
        self.channels, self.dilation = int(channels), int(dilation)
        super().__init__(
            groups=1, channels=self.channels, n_points=n_points, kernel_size=size,
            radius=4.0 / size[0] if radius is None else radius, coord_std=coord_std, normalize=False,
            radius_bounds=(1e-3, 1.0), learn_positions=learn_positions, learn_radius=learn_radius, device=device,
            dtype=dtype)

    @torch.jit.export
    def _kernel_layout(self, kernel: Tensor) -> Tensor:
        return kernel.reshape(self.channels, 1, -1).unflatten(-1, self.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        check_conv_input(x, 2, self.channels, 'SMPDepthwiseConv2d')
        return same_conv(x, self.smp_weight(), None, groups=self.channels, dilation=self.dilation)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f', dilation={self.dilation}' if self.dilation != 1 else '')


@register_notrace_module
class SMPConv(SMPConvBase):
    """Full N-d SMP convolution with per-filter points and the ``1/|N(x)|`` average (CIFAR form, Eq. 1).

    ``C_out`` filters each own ``n_points`` points (``weight_coord`` [C_out, P, d], ``radius`` [C_out, P, 1...],
    ``weights`` [C_out, C_in, P]). 'Same' padding, stride 1, odd kernel sizes; radii clamped to ``[1e-4, 1]``.
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: int | Sequence[int],
            n_points: int,
            radius: float,
            coord_std: float,
            ndim: int = 2,
            bias: bool = True,
            learn_positions: bool = True,
            learn_radius: bool = True,
            device=None,
            dtype=None,
    ):
        if ndim not in (1, 2, 3):
            raise ValueError(f'ndim must be 1, 2 or 3, got {ndim}')
        size = _as_size(kernel_size, ndim)
        _require_odd(size, type(self).__name__)
        self.in_channels, self.out_channels, self.ndim = int(in_channels), int(out_channels), ndim
        super().__init__(
            groups=self.out_channels, channels=self.in_channels, n_points=n_points, kernel_size=size, radius=radius,
            coord_std=coord_std, normalize=True, radius_bounds=(1e-4, 1.0), learn_positions=learn_positions,
            learn_radius=learn_radius, device=device, dtype=dtype)
        self.bias = nn.Parameter(torch.zeros(self.out_channels, device=device, dtype=dtype)) if bias else None

    @torch.jit.export
    def _kernel_layout(self, kernel: Tensor) -> Tensor:
        return kernel.reshape(self.out_channels, self.in_channels, -1).unflatten(-1, self.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        check_conv_input(x, self.ndim, self.in_channels, 'SMPConv')
        return same_conv(x, self.smp_weight(), self.bias)


@register_notrace_module
class SMPCausalConv1d(SMPConvBase):
    """Causal 1-d SMP convolution with per-filter points (sequence form; Sec. 4.1 of the paper).

    The kernel spans ``kernel_size`` steps (the official models use the training sequence length), positions start
    near ``+1`` (tap ``K - 1`` = the current step), ``1/|N(x)|`` is applied and radii are clamped to ``[1e-4, 1]``.
    The convolution is :func:`~smpconv_models.layers.causal_conv.causal_conv1d` (``fft=None`` chooses FFT or direct
    by size).

    ``causal=False`` (not in the paper; for classifying whole series): the kernel is centred on the output step (odd
    ``kernel_size``, tap ``(K - 1) / 2`` = the current step, coordinate 0), positions start around 0 (truncated
    ``N(0, coord_std)`` in ``[-1, 1]``: the past and the future alike) and the convolution is
    :func:`~smpconv_models.layers.causal_conv.centred_conv1d` ('same' length, FFT or direct as above).
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: int,
            n_points: int,
            radius: float,
            coord_std: float,
            bias: bool = True,
            fft: bool | None = None,
            learn_positions: bool = True,
            learn_radius: bool = True,
            causal: bool = True,
            device=None,
            dtype=None,
    ):
        size = _as_size(kernel_size, 1)
        if not causal:
            _require_odd(size, f'{type(self).__name__}(causal=False)')
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.fft = fft
        super().__init__(
            groups=self.out_channels, channels=self.in_channels, n_points=n_points, kernel_size=size, radius=radius,
            coord_std=coord_std, normalize=True, radius_bounds=(1e-4, 1.0), causal=bool(causal),
            learn_positions=learn_positions, learn_radius=learn_radius, device=device, dtype=dtype)
        self.causal = bool(causal)
        self.requires_odd_kernel = not self.causal  # a centred kernel needs a middle tap (set_kernel_size_)
        self.bias = nn.Parameter(torch.zeros(self.out_channels, device=device, dtype=dtype)) if bias else None

    requires_odd_kernel = False

    @torch.jit.export
    def _kernel_layout(self, kernel: Tensor) -> Tensor:
        return kernel.reshape(self.out_channels, self.in_channels, self.kernel_size[0])

    def forward(self, x: Tensor) -> Tensor:
        check_conv_input(x, 1, self.in_channels, 'SMPCausalConv1d')
        return sequence_conv1d(x, self.smp_weight(), self.bias, fft=self.fft, causal=self.causal)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, causal={self.causal}'

    @torch.jit.ignore
    def pairwise(self, x: Tensor, timestamps: Tensor, mask: Tensor, chunk_budget: int = PAIRWISE_CHUNK,
                 min_gap: float = STATIC_MIN_GAP) -> Tensor:
        """The same kernels at the timestamp differences of irregular series
        (:func:`~smpconv_models.layers.irregular_conv.pairwise_smp_causal_conv`): ``[B, C_out, L]``."""
        if not self.causal:
            raise ValueError('the irregular-series (pairwise) path evaluates causal kernels only: this '
                             'SMPCausalConv1d has causal=False')
        return pairwise_smp_causal_conv(self, x, timestamps, mask, chunk_budget, min_gap)
