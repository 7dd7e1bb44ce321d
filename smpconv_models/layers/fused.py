"""Eager-only inference shortcuts: a 2-d convolution with its bias, activation and residual add in one oneDNN call on
CPU, the one eval cache of derived tensors (folded weights, SMP kernels: recomputed only when a parameter changes),
and CPU micro-batching. They apply only when :func:`~smpconv_models.layers.mode.is_eager`."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules import module as _module

from .mode import is_eager, is_jit_tracing, python_only

__all__ = [
    'conv2d_act', 'pointwise_conv2d', 'activation_name', 'needs_grad', 'has_forward_hooks', 'bns_have_statistics',
    'folds_in_eval', 'cached_eval_value', 'tensor_key', 'micro_batch_size', 'MICRO_BATCH_BYTES',
]

# oneDNN post-op names and algorithms of the activations we fuse (exact, erf-based GELU only).
_ONEDNN_ACTS = {'none': ('none', ''), 'relu': ('relu', ''), 'gelu': ('gelu', 'none')}


def activation_name(act: nn.Module) -> str | None:
    """``'none'``, ``'relu'`` or ``'gelu'`` for activations :func:`conv2d_act` computes, else ``None``."""
    if isinstance(act, nn.Identity):
        return 'none'
    if isinstance(act, nn.ReLU):
        return 'relu'
    if isinstance(act, nn.GELU) and act.approximate == 'none':
        return 'gelu'
    return None


def needs_grad(x: Tensor, tensors: Sequence[Tensor]) -> bool:
    """Whether autograd would record an op on ``x`` and ``tensors``."""
    return torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in tensors))


def folds_in_eval(module: nn.Module, x: Any) -> bool:
    """Whether ``module`` may run its folded inference form on ``x``: eager mode (traces, exports and FLOP counts
    see the modules as they are; a compiled graph cannot read the cache's storage pointers, and Inductor fuses the
    plain ops itself), eval mode, no autograd, and no forward hook on a submodule (a hook on an inner conv or
    BatchNorm still fires: the plain path runs)."""
    if not isinstance(x, Tensor) or module.training or not is_eager():
        return False
    if needs_grad(x, list(module.parameters())):
        return False
    return not any(has_forward_hooks(m) for m in module.modules() if m is not module)


def has_forward_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` runs forward (pre-)hooks, its own or global ones."""
    return bool(module._forward_hooks or module._forward_pre_hooks or _module._global_forward_hooks
                or _module._global_forward_pre_hooks)


def bns_have_statistics(module: nn.Module) -> bool:
    """Whether every BatchNorm in ``module`` has running statistics (so its eval form folds into a conv)."""
    return all(m.running_mean is not None and m.running_var is not None
               for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def _onednn_fusable(x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None) -> bool:
    if x.device.type != 'cpu' or x.dim() != 4 or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    # traced, compiled and exported graphs (fvcore FLOP counts, torch.compile) and autocast see the plain ops
    if not is_eager() or torch.is_autocast_enabled('cpu'):
        return False
    tensors = [weight] + ([bias] if bias is not None else []) + ([residual] if residual is not None else [])
    return not needs_grad(x, tensors)


def conv2d_act(x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int], groups: int,
               act: str = 'none', residual: Tensor | None = None, dilation: list[int] | None = None) -> Tensor:
    """``act(conv2d(x, weight, bias) + residual)`` (``residual`` optional, ``act`` in ``'none'/'relu'/'gelu'``;
    ``dilation`` defaults to 1).

    On CPU in fp32 without autograd, one oneDNN convolution with the activation / residual add as post-ops (one
    pass over the output instead of two or three); elsewhere the plain ops. Same values either way (up to rounding).
    """
    if act not in ('none', 'relu', 'gelu'):
        raise ValueError(f"conv2d_act: act must be 'none', 'relu' or 'gelu', got {act!r}")
    dil = [1] * len(stride)
    if dilation is not None:
        dil = dilation
    if _onednn_fusable(x, weight, bias, residual) and (residual is None or act == 'none'):
        return _onednn_conv2d(x, weight, bias, stride, padding, dil, groups, act, residual)
    y = F.conv2d(x, weight, bias, stride, padding, dil, groups)
    if residual is not None:
        y = y + residual
    if act == 'relu':
        y = F.relu(y)
    elif act == 'gelu':
        y = F.gelu(y)
    return y


@python_only
def _onednn_conv2d(x, weight, bias, stride, padding, dilation, groups, act, residual):
    """:func:`conv2d_act` as one oneDNN convolution with the activation or the residual add as a post-op."""
    name, algorithm = _ONEDNN_ACTS[act]
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, padding, stride, dilation, groups, name, [], algorithm)
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, residual.contiguous(memory_format=fmt), weight, bias, padding, stride, dilation, groups, 'add', None, None,
        [], None)


def pointwise_conv2d(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)``; a 1x1 conv (stride 1, ``groups=1``) of a channels_last ``x`` runs as a matmul over channels on its
    NHWC view (no copies, output channels_last), whose backward was cheaper than oneDNN's 1x1 convolution backward
    on smpconv_t's shapes. A conv with hooks, and every conv ``torch.jit.trace`` records (FLOP counts, the TorchScript
    ONNX exporter: they see the conv), is called as usual."""
    if (isinstance(x, Tensor) and not is_jit_tracing() and x.dim() == 4 and conv.kernel_size == (1, 1)
            and not has_forward_hooks(conv)
            and conv.stride == (1, 1) and conv.groups == 1 and conv.padding in ((0, 0), 'valid')
            and x.is_contiguous(memory_format=torch.channels_last)):
        weight = conv.weight.reshape(conv.weight.shape[0], conv.weight.shape[1])
        return F.linear(x.permute(0, 2, 3, 1), weight, conv.bias).permute(0, 3, 1, 2)
    return conv(x)


def tensor_key(tensors: Sequence[Tensor]) -> tuple:
    """What identifies the values of ``tensors``: storage pointer, version counter, dtype, device and shape of each,
    and whether inference mode is on."""
    key: list[Any] = [torch.is_inference_mode_enabled()]
    for t in tensors:
        key += [t.data_ptr(), t._version, t.dtype, t.device, t.shape]
    return tuple(key)


def cached_eval_value(module: nn.Module, compute: Callable[[], Any]) -> Any:
    """``compute()`` (run without autograd) cached on ``module`` until one of its parameters or buffers changes.

    The key is each tensor's storage pointer, version counter, dtype, device and shape, which every in-place update
    (optimizer step, ``load_state_dict``), ``.data`` replacement and ``.to()`` changes. Stored in the module's
    ``_eval_cache`` attribute (set it to ``None`` in ``__init__``; not part of the state dict).
    """
    key = tensor_key(list(module.parameters()) + list(module.buffers()))
    cache = module._eval_cache
    if cache is not None and cache[0] == key:
        return cache[1]
    with torch.no_grad():
        value = compute()
    module._eval_cache = (key, value)
    return value


# Above 32 MB glibc's allocator maps fresh, page-faulting memory for every tensor on every forward (its mmap threshold
# stops growing there). CPU inference paths with larger activations run in micro-batches whose largest activation
# stays under this size (same values; at batch 8 this covers smpconv_t's stem and stage-1 ConvFFNs).
MICRO_BATCH_BYTES = 16 * 2 ** 20


def micro_batch_size(x: Tensor, bytes_per_image: int) -> int:
    """Images per micro-batch on CPU so that an activation of ``bytes_per_image`` per image stays under
    :data:`MICRO_BATCH_BYTES`; ``x.shape[0]`` (no split) off the CPU or when the whole batch fits."""
    if x.device.type != 'cpu' or x.shape[0] * bytes_per_image <= MICRO_BATCH_BYTES:
        return x.shape[0]
    return max(1, MICRO_BATCH_BYTES // bytes_per_image)
