"""SMP convolution layers: thin modules over :func:`smp_kernel` (Kim & Park, CVPR 2023, Sec. 3).

* :class:`SMPDepthwiseConv2d`: ImageNet form, points shared by all channels, no ``1/|N(x)|`` (official
  ``SMPConv`` in ``smp_imagenet/models/SMPConv.py``).
* :class:`SMPConv`: CIFAR form, every output channel has its own points, ``1/|N(x)|`` applied, 'same' padding,
  1-3 spatial dimensions (official ``CKConv`` with ``SMPKernel``).
* :class:`SMPCausalConv1d`: sequence form, per-filter points initialised near "now", causal (FFT for long kernels).

Parameter names and shapes are the official ones (``weight_coord``, ``radius``, ``weights``), so official state
dicts load after stripping wrapper prefixes.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn
from timm.layers import register_notrace_module
from torch import Tensor

from .causal_conv import causal_conv1d
from .conv import check_conv_input, same_conv
from .export_conv import is_exporting
from .smp_kernel import kernel_coords, smp_kernel

__all__ = ['SMPConvBase', 'SMPDepthwiseConv2d', 'SMPConv', 'SMPCausalConv1d', 'share_kernels']


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


class _AddPendingGrad(torch.autograd.Function):
    """Identity on the kernel whose backward adds the kernel gradient accumulated by earlier micro-batches."""

    @staticmethod
    def forward(ctx, kernel: Tensor, pending: Tensor) -> Tensor:
        ctx.pending = pending
        return kernel.view_as(kernel)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad + ctx.pending, None


@register_notrace_module  # torch.fx leaf (as are the subclasses): kernel cache, custom autograd Function, checks
class SMPConvBase(nn.Module):
    """Learnable points (``weight_coord`` [G, P, d], ``radius`` [G, P, 1...], ``weights`` [G, C, P]) and the
    dense kernel they define on a ``kernel_size`` grid.

    The dense kernel is generated from the points on every training forward (autograd flows to the points). In
    eval mode, when no gradient is needed, it is cached and regenerated only when a point parameter changed: the
    cache key is each parameter's storage pointer and version counter, which every in-place update
    (optimizer step, ``load_state_dict``, :meth:`clamp_radii_`), ``.data`` replacement and ``.to()`` changes.
    Under :func:`share_kernels` (gradient accumulation) one kernel serves every micro-batch of an optimizer step.
    Under ``torch.compile`` and the exporters the kernel is generated inside the graph on every call (neither the
    cache nor kernel sharing applies there).

    Ablation switches (Tables 6-9 of the paper): ``learn_positions=False`` / ``learn_radius=False`` freeze the
    positions / radii at their initialisation (``requires_grad=False``: they stay in the state dict, so checkpoints
    keep their layout, but receive no gradient, no optimizer update and no :meth:`clamp_radii_`); ``coord_std`` and
    ``radius`` set the initial position spread and radius, ``n_points`` the number of points.
    """

    # No class-level annotations in the layers: under ``from __future__ import annotations`` they are strings that
    # TorchScript cannot read (attribute types are inferred from the values instead).

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
        super().__init__()
        if int(n_points) < 1:
            raise ValueError(f'n_points must be at least 1, got {n_points}')
        if not radius > 0:
            raise ValueError(f'radius must be positive, got {radius}')
        if not coord_std > 0:
            raise ValueError(f'coord_std must be positive, got {coord_std}')
        ndim = len(kernel_size)
        dd = dict(device=device, dtype=dtype)
        self.kernel_size = kernel_size
        self.n_points = int(n_points)
        self.normalize = normalize
        self.radius_min, self.radius_max = radius_bounds
        self.weight_coord = nn.Parameter(torch.empty(groups, self.n_points, ndim, **dd))
        self.radius = nn.Parameter(torch.empty(groups, self.n_points, *(1,) * ndim, **dd))
        self.weights = nn.Parameter(torch.empty(groups, channels, self.n_points, **dd))
        self.register_buffer('kernel_coord', kernel_coords(kernel_size, device=device, dtype=dtype), persistent=False)
        self._kernel_cache: tuple[tuple, Tensor] | None = None
        # share_kernels(): None outside it, else whether this micro-batch is the last one before the optimizer step;
        # _shared = (cache key, kernel with its autograd graph, detached leaf the earlier micro-batches use)
        self._share_final: bool | None = None
        self._shared: tuple[tuple, Tensor, Tensor] | None = None
        self._init_points(radius, coord_std, causal)
        self.weight_coord.requires_grad_(bool(learn_positions))
        self.radius.requires_grad_(bool(learn_radius))

    @torch.no_grad()
    def _init_points(self, radius: float, coord_std: float, causal: bool) -> None:
        if causal:
            # Official sequence init: |N(0, std)| folded into [-1, 0], scaled by 2 and moved to end at +1 ("now").
            nn.init.trunc_normal_(self.weight_coord, std=coord_std, a=-1.0, b=0.0)
            self.weight_coord.mul_(2.0).add_(1.0)
        else:
            nn.init.trunc_normal_(self.weight_coord, std=coord_std, a=-1.0, b=1.0)
        self.radius.fill_(radius)
        nn.init.trunc_normal_(self.weights, std=0.02)

    @torch.no_grad()
    def clamp_radii_(self) -> None:
        """Clamp radii in place to ``[radius_min, radius_max]`` (the official per-step ``radius_clip``); frozen radii
        (``learn_radius=False``) are left as initialised."""
        if self.radius.requires_grad:
            self.radius.clamp_(self.radius_min, self.radius_max)

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
        self._kernel_cache = None

    def generate_kernel(self) -> Tensor:
        """The dense convolution kernel from the current points, always freshly computed (Eq. 1 on the grid)."""
        kernel = smp_kernel(self.kernel_coord, self.weight_coord, self.radius, self.weights, self.normalize)
        return self._kernel_layout(kernel)

    def _cache_key(self) -> tuple:
        key = [torch.is_inference_mode_enabled()]
        for t in (self.weight_coord, self.radius, self.weights, self.kernel_coord):
            key += [t.data_ptr(), t._version, t.dtype, t.device]
        return tuple(key)

    @torch.jit.ignore
    def smp_weight(self):  # -> Tensor (unannotated: TorchScript cannot read string annotations, assumes Tensor)
        """The dense kernel: generated with autograd in training, cached while parameters are unchanged in eval.

        Called from Python under TorchScript (``torch.jit.ignore``: the kernel comes from a custom autograd
        Function and an eval-mode cache), so a scripted SMP model runs but cannot be saved; reparameterize it
        first (``timm.utils.reparameterize_model``) to script a plain-conv model."""
        if isinstance(self, torch.jit.ScriptModule):  # called from a scripted model: no cache, compiled methods only
            kernel = smp_kernel(self.kernel_coord, self.weight_coord, self.radius, self.weights, self.normalize)
            return self._kernel_layout(kernel)
        if torch.compiler.is_compiling() or is_exporting():
            # compiled and exported graphs generate the kernel in the graph: the cache and share_kernels() key on
            # storage pointers, which a graph cannot read (reparameterize a model for inference instead)
            return self.generate_kernel()
        needs_grad = torch.is_grad_enabled() and any(
            p.requires_grad for p in (self.weight_coord, self.radius, self.weights))
        if self.training or needs_grad:
            self._kernel_cache = None
            if self._share_final is not None and needs_grad:
                return self._shared_kernel(self._share_final)
            return self.generate_kernel()
        key = self._cache_key()
        if self._kernel_cache is not None and self._kernel_cache[0] == key:
            return self._kernel_cache[1]
        with torch.no_grad():
            kernel = self.generate_kernel()
        self._kernel_cache = (key, kernel)
        return kernel

    def _shared_kernel(self, final: bool) -> Tensor:
        """One kernel per optimizer step: generated (with its graph) at the first micro-batch; earlier micro-batches
        run on a detached leaf that accumulates their kernel gradient, the final one on the generated kernel, whose
        backward adds that gradient, so the points receive the whole step's gradient in the final backward (inside
        DDP's gradient synchronisation)."""
        key = self._cache_key()
        shared = self._shared
        if shared is not None and shared[0] != key:
            if shared[2].grad is not None:
                warnings.warn(f'{type(self).__name__}: point parameters changed before the final micro-batch of '
                              'share_kernels(); the kernel gradient of the earlier micro-batches was discarded '
                              '(pass final=True on the micro-batch before optimizer.step())', stacklevel=3)
            shared = self._shared = None
        if final:
            self._shared = None
            if shared is None:
                return self.generate_kernel()
            pending = shared[2].grad
            return shared[1] if pending is None else _AddPendingGrad.apply(shared[1], pending)
        if shared is None:
            kernel = self.generate_kernel()
            shared = self._shared = (key, kernel, kernel.detach().requires_grad_())
        return shared[2]

    def __getstate__(self) -> dict:
        # copies and pickles start without cached or shared kernels (a shared one holds an autograd graph, which
        # deepcopy refuses)
        state = self.__dict__.copy()
        state['_kernel_cache'] = state['_shared'] = None
        return state

    def train(self, mode: bool = True):
        self._kernel_cache = None
        return super().train(mode)

    def extra_repr(self) -> str:
        return (f'kernel_size={self.kernel_size}, n_points={self.n_points}, normalize={self.normalize}, '
                f'radius_bounds=({self.radius_min}, {self.radius_max}), '
                f'learn_positions={self.weight_coord.requires_grad}, learn_radius={self.radius.requires_grad}')


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
        if not torch.jit.is_scripting():
            check_conv_input(x, 2, self.channels, type(self).__name__)
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
        if not torch.jit.is_scripting():
            check_conv_input(x, self.ndim, self.in_channels, type(self).__name__)
        return same_conv(x, self.smp_weight(), self.bias)


@register_notrace_module
class SMPCausalConv1d(SMPConvBase):
    """Causal 1-d SMP convolution with per-filter points (sequence form; Sec. 4.1 of the paper).

    The kernel spans ``kernel_size`` steps (the official models use the training sequence length), positions start
    near ``+1`` (tap ``K - 1`` = the current step), ``1/|N(x)|`` is applied and radii are clamped to ``[1e-4, 1]``.
    The convolution is :func:`causal_conv1d` (``fft=None`` chooses FFT or direct by size).
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
            device=None,
            dtype=None,
    ):
        size = _as_size(kernel_size, 1)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.fft = fft
        super().__init__(
            groups=self.out_channels, channels=self.in_channels, n_points=n_points, kernel_size=size, radius=radius,
            coord_std=coord_std, normalize=True, radius_bounds=(1e-4, 1.0), causal=True,
            learn_positions=learn_positions, learn_radius=learn_radius, device=device, dtype=dtype)
        self.bias = nn.Parameter(torch.zeros(self.out_channels, device=device, dtype=dtype)) if bias else None

    requires_odd_kernel = False

    @torch.jit.export
    def _kernel_layout(self, kernel: Tensor) -> Tensor:
        return kernel.reshape(self.out_channels, self.in_channels, self.kernel_size[0])

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_conv_input(x, 1, self.in_channels, type(self).__name__)
        return causal_conv1d(x, self.smp_weight(), self.bias, fft=self.fft)


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
    layers = [m for m in model.modules() if isinstance(m, SMPConvBase)]
    for layer in layers:
        layer._share_final = bool(final)
    try:
        yield model
    finally:
        for layer in layers:
            layer._share_final = None
