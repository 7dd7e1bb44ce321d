"""Structural reparameterization: an SMP branch + BN summed with a small-kernel conv + BN, folded into one conv.

Every SMPConv family uses this pattern (Sec. 3.3 of the paper, after RepLKNet): ImageNet blocks pair a depthwise SMP
kernel with a 5x5 depthwise conv, the CIFAR ResNet a full 33x33 SMP conv with a 3x3 conv, the sequence TCNs a
causal SMP conv with a causal 5-tap conv (or, with ``causal=False``, both centred). In eval mode
``BN(smp(x)) + BN(small(x))`` is one convolution with the folded kernel ``s1 * K_smp + s2 * pad(K_small)`` and bias
``b1 + b2``; ``reparameterize()`` switches to it.
"""
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import Tensor

from .causal_conv import sequence_conv1d
from .conv import check_conv_input, direct_same_conv, prefers_channels_last, same_conv
from .fused import bns_have_statistics, cached_eval_value, folds_in_eval
from .irregular_conv import PAIRWISE_CHUNK, STATIC_MIN_GAP, observed_parallel_conv
from .mode import is_eager, python_only
from .smp_conv import SMPCausalConv1d, SMPConv, SMPConvBase, SMPDepthwiseConv2d

__all__ = [
    'fuse_bn', 'fuse_pre_bn', 'fold_bn_into_next_conv', 'CausalConv1d', 'SMPReparamConv', 'SMPLargeKernelConv2d',
    'SMPParallelConv', 'SMPParallelCausalConv1d',
]


def fuse_bn(weight: Tensor, bias: Tensor | None, bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm that follows a convolution into the convolution's weight and bias.

    ``bn(conv(x)) = conv'(x)`` with ``w' = w * gamma / std`` (per output channel) and
    ``b' = beta + (b - mean) * gamma / std``, ``std = sqrt(running_var + eps)``.
    """
    scale, shift = _bn_affine(bn)
    fused_w = weight * scale.reshape(-1, *(1,) * (weight.dim() - 1))
    b = bias if bias is not None else torch.zeros_like(scale)
    return fused_w, b * scale + shift


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``y = x * scale + shift`` per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError('folding a BatchNorm needs running statistics (track_running_stats=True)')
    std = (bn.running_var + bn.eps).sqrt()
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    return scale, beta - bn.running_mean * scale


def fuse_pre_bn(weight: Tensor, bias: Tensor | None, bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm that directly precedes a pointwise conv (or linear layer) into its weight and bias.

    Exact only for kernels without spatial extent (1x1, no padding) and ``groups=1``:
    ``conv(x * s + t) = conv'(x)`` with ``w' = w * s`` over input channels and ``b' = b + w @ t``.
    """
    scale, shift = _bn_affine(bn)
    w2d = weight.reshape(weight.shape[0], weight.shape[1])
    new_bias = w2d @ shift
    if bias is not None:
        new_bias = new_bias + bias
    return weight * scale.reshape(1, -1, *(1,) * (weight.dim() - 2)), new_bias


@torch.no_grad()
def fold_bn_into_next_conv(bn: nn.modules.batchnorm._BatchNorm, conv: nn.Conv2d | nn.Conv1d | nn.Linear) -> None:
    """In place: :func:`fuse_pre_bn` into ``conv`` (a pointwise conv with ``groups=1``, or a linear layer)."""
    if isinstance(conv, nn.modules.conv._ConvNd) and (conv.groups != 1 or any(k != 1 for k in conv.kernel_size)):
        raise ValueError('a preceding BatchNorm folds exactly only into a pointwise conv with groups=1')
    weight, bias = fuse_pre_bn(conv.weight, conv.bias, bn)
    conv.weight.copy_(weight)
    if conv.bias is None:
        conv.bias = nn.Parameter(bias)
    else:
        conv.bias.copy_(bias)


@register_notrace_module  # torch.fx leaf: input checks and size-dependent (FFT / direct) paths
class CausalConv1d(nn.Module):
    """A dense causal 1-d convolution (tap ``K - 1`` = current step) with a plain ``weight`` [C_out, C_in, K];
    ``causal=False``: centred ('same' length, odd ``K``, tap ``(K - 1) / 2`` = current step)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 fft: bool | None = None, causal: bool = True, device=None, dtype=None):
        super().__init__()
        if not causal and int(kernel_size) % 2 == 0:
            raise ValueError(f'CausalConv1d(causal=False) needs an odd kernel_size (a middle tap), got {kernel_size}')
        self.in_channels, self.out_channels, self.kernel_size = int(in_channels), int(out_channels), int(kernel_size)
        self.fft, self.causal = fft, bool(causal)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_channels, device=device, dtype=dtype)) if bias else None
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        check_conv_input(x, 1, self.in_channels, 'CausalConv1d')
        return sequence_conv1d(x, self.weight, self.bias, fft=self.fft, causal=self.causal)

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, fft={self.fft}, '
                f'causal={self.causal}')


def _conv_bn(conv: nn.Module, channels: int, norm_layer: type[nn.Module], dd: dict) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=conv, bn=norm_layer(channels, **dd)))


@register_notrace_module  # torch.fx leaf (as are the subclasses): SMP branch, input checks, memory-format choice
class SMPReparamConv(nn.Module):
    """``BN(smp(x)) + BN(small(x))``, or after :meth:`reparameterize` one dense ``reparam_conv``.

    Subclasses build ``smp`` (``Sequential(conv=<SMP layer>, bn=...)``), ``small_conv`` (``Sequential(conv, bn)``) and
    the deploy conv; the folding is shared. ``reparameterize()`` is idempotent and is what
    ``timm.utils.reparameterize_model`` calls; ``deploy=True`` builds the folded form directly so reparameterized
    checkpoints load.

    Subclasses set ``in_channels``, ``out_channels``, ``kernel_size`` (a tuple) and ``ndim``. (No class-level
    annotations for them: under ``from __future__ import annotations`` they are strings TorchScript cannot read.)
    """

    # Subclasses with a large dense deploy kernel set True (the folded conv then runs through same_conv's FFT). A
    # TorchScript constant: a class attribute (a string-annotated one in particular) is invisible to the compiler.
    __constants__ = ['dense_deploy']
    dense_deploy = False

    def _init_branches(self, smp: SMPConvBase | None, small: nn.Module | None, norm_layer, deploy: bool,
                       dd: dict) -> None:
        self._eval_cache = None
        self.layer_name = type(self).__name__  # for input errors (TorchScript cannot read type names)
        if deploy:
            self.reparam_conv = self._make_deploy_conv(**dd)
            self.smp = None
            self.small_conv = None
        else:
            self.reparam_conv = None
            self.smp = _conv_bn(smp, self.out_channels, norm_layer, dd)
            self.small_conv = _conv_bn(small, self.out_channels, norm_layer, dd)

    def _make_deploy_conv(self, device=None, dtype=None) -> nn.Module:
        raise NotImplementedError

    def _pad_small(self, weight: Tensor) -> Tensor:
        """Zero-pad the small kernel to the large kernel's size, centred ('same' convs)."""
        pads = []
        for big, small in zip(reversed(self.kernel_size), reversed(weight.shape[2:])):
            pads += [(big - small) // 2, (big - small) // 2]
        return F.pad(weight, pads)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_grid(x)

    def forward_grid(self, x: Tensor) -> Tensor:
        """The convolution of ``x`` on its grid: the two branches, or the folded kernel (deploy form; in eager eval
        without autograd the cached fold of the branches)."""
        check_conv_input(x, self.ndim, self.in_channels, self.layer_name)
        if self.ndim == 2 and prefers_channels_last(x, self.kernel_size[-1]):
            x = x.contiguous(memory_format=torch.channels_last)
        if self.reparam_conv is not None:
            if self.dense_deploy:  # a large dense kernel: same_conv picks the FFT
                return same_conv(x, self.reparam_conv.weight, self.reparam_conv.bias)
            return self._folded_conv(x, self.reparam_conv.weight, self.reparam_conv.bias)
        if is_eager() and self._folds_in_eval(x):  # eval without autograd: the folded kernel, cached
            return self._cached_folded_conv(x)
        return self.smp(x) + self.small_conv(x)

    @python_only
    def _folds_in_eval(self, x):
        return folds_in_eval(self, x) and bns_have_statistics(self)

    @python_only
    def _cached_folded_conv(self, x):
        """The deploy convolution with the folded kernel, cached until a parameter or statistic changes."""
        weight, bias = cached_eval_value(self, self.fused_kernel_bias)
        return self._folded_conv(x, weight, bias)

    def _folded_conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The deploy convolution with a given folded ``weight`` and ``bias``."""
        raise NotImplementedError

    @torch.no_grad()
    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The equivalent dense kernel and bias of the two branches with eval-mode BatchNorm."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        smp_conv = self.smp.conv
        w, b = fuse_bn(smp_conv.generate_kernel(), getattr(smp_conv, 'bias', None), self.smp.bn)
        ws, bs = fuse_bn(self.small_conv.conv.weight, self.small_conv.conv.bias, self.small_conv.bn)
        return w + self._pad_small(ws), b + bs

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Switch to the deploy form in place (no-op when already there)."""
        if self.reparam_conv is not None:
            return
        weight, bias = self.fused_kernel_bias()
        conv = self._make_deploy_conv(device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        self.reparam_conv = conv
        self._eval_cache = None
        self.smp = None
        self.small_conv = None

    def set_kernel_size_(self, kernel_size: int) -> None:
        """Re-sample the SMP branch on a ``kernel_size`` grid (train form only; the small branch is unchanged)."""
        if self.reparam_conv is not None:
            raise ValueError(f'{type(self).__name__} is reparameterized: a dense kernel cannot be re-sampled')
        if kernel_size < self.small_kernel_size:
            raise ValueError(f'kernel_size {kernel_size} is smaller than small_kernel_size {self.small_kernel_size}')
        self.smp.conv.set_kernel_size_((int(kernel_size),) * self.ndim)
        self.kernel_size = self.smp.conv.kernel_size

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
                f'deploy={self.reparam_conv is not None}')


@register_notrace_module
class SMPLargeKernelConv2d(SMPReparamConv):
    """Depthwise SMP branch + BN beside a small depthwise conv + BN (the official ImageNet ``SMPCNN``).

    Submodule names follow the official checkpoints (``smp.conv``, ``smp.bn``, ``small_conv.conv``, ``small_conv.bn``);
    the deploy form is ``nn.Conv2d(C, C, K, groups=C, bias=True)``. ``n_points``, ``radius``, ``coord_std``,
    ``learn_positions`` and ``learn_radius`` go to :class:`SMPDepthwiseConv2d` (the ablation switches).
    ``dilation`` dilates both branches and the deploy conv alike (the small kernel is zero-padded to the large one in
    taps, so the folded kernel is exact at any dilation).
    """

    def __init__(
            self,
            channels: int,
            kernel_size: int,
            small_kernel_size: int = 5,
            n_points: int | None = None,
            n_points_divide: int = 4,
            deploy: bool = False,
            norm_layer: type[nn.Module] = nn.BatchNorm2d,
            radius: float | None = None,
            coord_std: float = 0.2,
            learn_positions: bool = True,
            learn_radius: bool = True,
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        _check_small(kernel_size, small_kernel_size, type(self).__name__)
        self.dilation = int(dilation)
        self.in_channels = self.out_channels = self.channels = int(channels)
        self.kernel_size, self.small_kernel_size, self.ndim = (int(kernel_size),) * 2, int(small_kernel_size), 2
        dd = dict(device=device, dtype=dtype)
        smp = small = None
        if not deploy:
            smp = SMPDepthwiseConv2d(channels, kernel_size, n_points, n_points_divide, radius, coord_std,
                                     learn_positions, learn_radius, self.dilation, **dd)
            small = nn.Conv2d(channels, channels, small_kernel_size, padding=self.dilation * (small_kernel_size // 2),
                              dilation=self.dilation, groups=channels, bias=False, **dd)
        self._init_branches(smp, small, norm_layer, deploy, dd)

    def _make_deploy_conv(self, device=None, dtype=None) -> nn.Module:
        k = self.kernel_size[0]
        dd = dict(device=device, dtype=dtype)
        d = self.dilation
        return nn.Conv2d(self.channels, self.channels, k, padding=d * (k // 2), dilation=d, groups=self.channels,
                         bias=True, **dd)

    def _folded_conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return direct_same_conv(x, weight, bias, self.channels, self.dilation)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f', dilation={self.dilation}' if self.dilation != 1 else '')


@register_notrace_module
class SMPParallelConv(SMPReparamConv):
    """Full N-d SMP conv (per-filter points) + BN beside a small 'same' conv + BN (the official CIFAR ResNet's
    ``norm1(cconv1(x)) + norm1s(cconv1s(x))``); deploy form ``nn.ConvNd(C_in, C_out, K, bias=True)``."""

    dense_deploy = True

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: int,
            n_points: int,
            radius: float,
            coord_std: float,
            small_kernel_size: int = 3,
            ndim: int = 2,
            bias: bool = False,
            small_bias: bool = False,
            deploy: bool = False,
            norm_layer: type[nn.Module] | None = None,
            learn_positions: bool = True,
            learn_radius: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if ndim not in (1, 2, 3):
            raise ValueError(f'ndim must be 1, 2 or 3, got {ndim}')
        _check_small(kernel_size, small_kernel_size, type(self).__name__)
        self.in_channels, self.out_channels, self.ndim = int(in_channels), int(out_channels), ndim
        self.kernel_size, self.small_kernel_size = (int(kernel_size),) * ndim, int(small_kernel_size)
        norm_layer = norm_layer or (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[ndim - 1]
        dd = dict(device=device, dtype=dtype)
        smp = small = None
        if not deploy:
            smp = SMPConv(in_channels, out_channels, kernel_size, n_points, radius, coord_std, ndim, bias,
                          learn_positions, learn_radius, **dd)
            small = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1](
                in_channels, out_channels, small_kernel_size, padding=small_kernel_size // 2, bias=small_bias, **dd)
            nn.init.trunc_normal_(small.weight, std=0.02)
            if small.bias is not None:
                nn.init.zeros_(small.bias)
        self._init_branches(smp, small, norm_layer, deploy, dd)

    def _make_deploy_conv(self, device=None, dtype=None) -> nn.Module:
        k = self.kernel_size[0]
        dd = dict(device=device, dtype=dtype)
        conv_cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[self.ndim - 1]
        return conv_cls(self.in_channels, self.out_channels, k, padding=k // 2, bias=True, **dd)

    def _folded_conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return same_conv(x, weight, bias)


@register_notrace_module
class SMPParallelCausalConv1d(SMPReparamConv):
    """Causal SMP conv + BN beside a small causal conv + BN (the official sequence TCN's
    ``norm1(cconv1(x)) + norm1s(cconv1s(x))``); deploy form :class:`CausalConv1d` with the folded length-K kernel.

    ``kernel_layer`` builds the long branch instead of :class:`SMPCausalConv1d` (``kernel_layer(in_channels,
    out_channels, kernel_size, bias=, fft=, device=, dtype=)``, e.g. a partial of
    :class:`~smpconv_models.layers.irregular_conv.MLPCausalConv1d`; ``n_points``, ``radius``, ``coord_std`` and the
    ``learn_*`` switches are then the SMP kernel's and unused). ``forward(x, mask, timestamps)`` takes irregular
    series too (:func:`~smpconv_models.layers.irregular_conv.observed_parallel_conv`, query chunks of
    ``pairwise_chunk`` elements; compiled and exported graphs serve timestamps at least ``min_gap`` apart, the
    attribute set by the irregular-series TCN).

    ``causal=False``: both kernels centred on the output step (odd sizes; :class:`SMPCausalConv1d` and
    :class:`CausalConv1d` with ``causal=False``), the small one folded into the middle of the SMP one; grid series
    only (the timestamp path and ``kernel_layer`` are causal).
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: int,
            n_points: int,
            radius: float,
            coord_std: float,
            small_kernel_size: int = 5,
            bias: bool = False,
            fft: bool | None = None,
            deploy: bool = False,
            norm_layer: type[nn.Module] = nn.BatchNorm1d,
            learn_positions: bool = True,
            learn_radius: bool = True,
            kernel_layer: Callable[..., nn.Module] | None = None,
            pairwise_chunk: int = PAIRWISE_CHUNK,
            causal: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if not 1 <= small_kernel_size <= kernel_size:
            raise ValueError(f'small_kernel_size must be in [1, kernel_size={kernel_size}], got {small_kernel_size}')
        if pairwise_chunk < 1:
            raise ValueError(f'pairwise_chunk must be positive, got {pairwise_chunk}')
        if not causal:
            _check_small(kernel_size, small_kernel_size, f'{type(self).__name__}(causal=False)')
            if kernel_layer is not None:
                raise ValueError(f'{type(self).__name__}(causal=False) takes the SMP kernel only: kernel_layer '
                                 'builds a causal kernel')
        self.in_channels, self.out_channels, self.ndim = int(in_channels), int(out_channels), 1
        self.kernel_size, self.small_kernel_size, self.fft = (int(kernel_size),), int(small_kernel_size), fft
        self.pairwise_chunk = int(pairwise_chunk)
        self.min_gap = STATIC_MIN_GAP
        self.causal = bool(causal)
        dd = dict(device=device, dtype=dtype)
        smp = small = None
        if not deploy:
            if kernel_layer is None:
                smp = SMPCausalConv1d(in_channels, out_channels, kernel_size, n_points, radius, coord_std, bias, fft,
                                      learn_positions, learn_radius, causal=causal, **dd)
            else:
                smp = kernel_layer(in_channels, out_channels, kernel_size, bias=bias, fft=fft, **dd)
            small = CausalConv1d(in_channels, out_channels, small_kernel_size, bias=False, causal=causal, **dd)
        self._init_branches(smp, small, norm_layer, deploy, dd)

    def forward(self, x: Tensor, mask: Tensor | None = None, timestamps: Tensor | None = None) -> Tensor:
        """``x [B, C, L]``; with ``mask [B, L]`` (observed steps) the training BatchNorm statistics count observed
        steps only, and with ``timestamps [B, L]`` the kernels are evaluated at their differences (irregular
        series; module docstring)."""
        if mask is None and timestamps is None:
            return self.forward_grid(x)
        return self._forward_observed(x, mask, timestamps)

    @python_only
    def _forward_observed(self, x: Tensor, mask: Tensor | None, timestamps: Tensor | None) -> Tensor:
        if timestamps is not None and not self.causal:
            raise ValueError(f'{type(self).__name__}(causal=False) convolves grid series only: the timestamp path '
                             'evaluates causal kernels')
        if mask is None:
            mask = torch.ones(x.shape[0], x.shape[-1], dtype=torch.bool, device=x.device)
        return observed_parallel_conv(self, x, mask, timestamps, self.pairwise_chunk, self.min_gap)

    def _pad_small(self, weight: Tensor) -> Tensor:
        if not self.causal:  # both centred: pad both sides
            return super()._pad_small(weight)
        # causal kernels align at the current step (the last tap): pad on the past side only
        return F.pad(weight, (self.kernel_size[0] - weight.shape[-1], 0))

    def _make_deploy_conv(self, device=None, dtype=None) -> nn.Module:
        dd = dict(device=device, dtype=dtype)
        return CausalConv1d(self.in_channels, self.out_channels, self.kernel_size[0], bias=True, fft=self.fft,
                            causal=self.causal, **dd)

    def _folded_conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return sequence_conv1d(x, weight, bias, fft=self.fft, causal=self.causal)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, causal={self.causal}'


def _check_small(kernel_size: int, small_kernel_size: int, name: str) -> None:
    if kernel_size % 2 == 0 or small_kernel_size % 2 == 0:
        raise ValueError(f"{name} needs odd kernel sizes for 'same' padding, got {kernel_size} and {small_kernel_size}")
    if small_kernel_size > kernel_size:
        raise ValueError(f'small_kernel_size {small_kernel_size} exceeds kernel_size {kernel_size}')
