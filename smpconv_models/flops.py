"""Parameter and multiply-accumulate (MAC) counts of the SMPConv models, with fvcore handles for their special ops.

``python -m smpconv_models.flops MODEL [--img-size N | --seq-len N] [--json]`` prints a table (or, with ``--json``,
one JSON object) for a registered ``smpconv_*`` timm model; :func:`count_flops` is the library entry point.

Counting convention (fvcore's: one multiply-add = one "flop" = one MAC, batch size 1). Only the contractions are
counted, i.e. the ops whose cost is a sum of products:

* convolutions: ``prod(weight.shape) * prod(output spatial)`` (fvcore's handle; bias adds are not counted);
* linear layers and matrix products: ``prod(output.shape) * K`` (inner size ``K``); a product of complex tensors
  costs 4 real MACs per complex multiply-add (``x += a*c - b*d``, ``y += a*d + b*c``);
* FFTs (``aten::fft_rfft`` / ``aten::fft_irfft`` of the long causal convolutions): ``n * log2(n)`` real MACs per
  transformed row of length ``n``. Derivation: a radix-2 complex FFT of length ``n`` has ``(n / 2) * log2(n)``
  butterflies of one complex multiply-add (4 real MACs) each, ``2 n log2 n`` in all, and a transform with real
  input (``rfft``) or real output (``irfft``) costs half of a complex one. Complex ``aten::fft_fft`` /
  ``aten::fft_ifft`` therefore cost ``2 n log2 n`` per row. ``log2`` is not rounded (the transform lengths are
  7-smooth, not powers of two);
* SMP kernel generation (Eq. 1-2 of the paper, :func:`smpconv_models.layers.smp_kernel`):

  - the basis ``relu(1 - ||x_q - p_i||_1 / r_i)``, which traces as ``prim::PythonOp._SMPBasis`` with output
    ``[G, P, Q]``: ``G * P * Q * (d + 1)`` MACs, one subtract-and-accumulate per coordinate axis for the L1
    distance and one multiply-add for ``1 - dist * (1 / r)`` (the clamp is a comparison, like a ReLU);
  - the weighting ``weights[G, C, P] @ basis[G, P, Q]``: ``G * C * P * Q`` MACs (reported as ``smp_weights``);

  so one SMP layer costs ``G * P * Q * (C + d + 1)`` MACs per forward in the train form, ``Q = prod(kernel_size)``.

Elementwise and data-movement ops count zero: BatchNorm, activations, residual adds, dropout, pooling, padding,
flips and the ``1 / |N(x)|`` normalisation of the CIFAR / sequence kernels (a count and a divide per kernel tap).
This is the convention of the paper's Table 4 (convolution + linear MACs); each of these ops has an explicit
zero handle, so a contraction without a handle still shows up as fvcore's "unsupported operator" and is logged
as a warning here.

Reported numbers (:func:`count_flops`):

* ``gmacs_deploy``: the reparameterized model (``timm.utils.reparameterize_model``), what inference runs;
* ``gmacs_train``: the train-form model with its kernels generated from the points, as in every training step
  (forward only; the SMP branch and the parallel small-kernel branch are separate convolutions there);
* ``gmacs_paper``: ``gmacs_train`` without kernel generation, the convention that reproduces Table 4 of the paper
  (SMPConv-T 5.7 G, SMPConv-B 16.6 G at 224x224). The folded deploy model is slightly cheaper (5.67 G and 16.53 G)
  because it has no separate 5x5 branch.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import timm
import torch
import torch.nn as nn
from timm.models import get_pretrained_cfg
from timm.utils import reparameterize_model

from .layers import SMPConvBase, SMPReparamConv
from .models import ModelFamily, family_of

if TYPE_CHECKING:
    from fvcore.nn import FlopCountAnalysis

__all__ = ['count_flops', 'flop_count_analysis', 'fft_macs', 'KERNEL_GEN_OPS', 'main']

_logger = logging.getLogger(__name__)

KERNEL_GEN_OPS = ('smp_basis', 'smp_weights')  # by-operator names of the SMP kernel-generation MACs
_FVCORE_HINT = "fvcore is required to count FLOPs; install it with `pip install 'smpconv-models[flops]'`"

# Elementwise / data-movement ops met in the SMPConv traces (and their close relatives): zero MACs by convention.
_ZERO_MAC_OPS = (
    'aten::add', 'aten::add_', 'aten::sub', 'aten::sub_', 'aten::rsub', 'aten::mul', 'aten::mul_', 'aten::div',
    'aten::div_', 'aten::floor_divide', 'aten::floor_divide_', 'aten::neg', 'aten::neg_', 'aten::abs', 'aten::abs_',
    'aten::sign', 'aten::clamp_min', 'aten::clamp_min_', 'aten::clamp_max', 'aten::relu', 'aten::relu_',
    'aten::gelu', 'aten::silu', 'aten::sigmoid', 'aten::tanh', 'aten::batch_norm', 'aten::sum', 'aten::mean',
    'aten::amax', 'aten::adaptive_avg_pool1d', 'aten::adaptive_avg_pool2d', 'aten::adaptive_max_pool2d',
    'aten::avg_pool2d', 'aten::max_pool2d', 'aten::flip', 'aten::pad', 'aten::constant_pad_nd', 'aten::bernoulli_',
    'aten::feature_dropout', 'aten::empty_like', 'aten::ones_like', 'aten::lt', 'aten::le', 'aten::ne',
    'aten::real', 'aten::imag', 'aten::view_as_real', 'aten::view_as_complex', 'aten::conj', 'aten::_conj',
    'aten::roll', 'aten::addcmul', 'aten::unflatten', 'prim::PythonOp._ContiguousGrad',
    'aten::log_softmax', 'aten::logsumexp',  # an ensemble's mean probability (a few ops per class)
)


# --------------------------------------------------------------------------------------------------- MAC formulas

def fft_macs(n: int, rows: int = 1, real: bool = True) -> float:
    """MACs of ``rows`` FFTs of length ``n``: ``n * log2(n)`` each for a real-input / real-output transform
    (``rfft`` / ``irfft``), ``2 * n * log2(n)`` for a complex one (see the module docstring)."""
    if n < 1 or rows < 0:
        raise ValueError(f'FFT length must be positive and rows non-negative, got n={n}, rows={rows}')
    per_row = n * math.log2(n) if n > 1 else 0.0
    return rows * per_row * (1.0 if real else 2.0)


# ------------------------------------------------------------------------------------------------- fvcore handles

def _shape(value: Any) -> list[int]:
    from fvcore.nn.jit_handles import get_shape

    shape = get_shape(value)
    if shape is None:
        raise ValueError(f'cannot count MACs: no static shape for traced value {value.debugName()}')
    return list(shape)


def _is_complex(value: Any) -> bool:
    scalar = value.type().scalarType() if value.isCompleteTensor() else None
    return scalar is not None and 'Complex' in scalar


def _const(value: Any) -> Any:
    """A traced constant, or a list built from constants (``prim::ListConstruct``); ``None`` otherwise."""
    node = value.node()
    if node.kind() == 'prim::Constant':
        return value.toIValue()
    if node.kind() == 'prim::ListConstruct':
        items = [_const(v) for v in node.inputs()]
        return None if any(i is None for i in items) else items
    return None


def _is_smp_basis(value: Any) -> bool:
    node = value.node()
    return node.kind() == 'prim::PythonOp' and node.pyname() == '_SMPBasis'


def _matmul_handle(inputs: list[Any], outputs: list[Any]) -> Counter:
    """``aten::matmul`` / ``mm`` / ``bmm`` / ``mv`` / ``dot``: ``prod(out) * K`` (broadcast-safe), x4 for complex;
    the product with an SMP basis is reported as ``smp_weights``."""
    a_shape, out_shape = _shape(inputs[0]), _shape(outputs[0])
    macs = math.prod(out_shape) * a_shape[-1]
    if _is_complex(inputs[0]) or _is_complex(inputs[1]):
        macs *= 4
    return Counter({'smp_weights' if _is_smp_basis(inputs[1]) else 'matmul': macs})


def _smp_basis_handle(inputs: list[Any], outputs: list[Any]) -> Counter:
    """``prim::PythonOp._SMPBasis`` (coords ``[..., Q, d]``, output ``[..., G, P, Q]``): ``numel(out) * (d + 1)``."""
    ndim = _shape(inputs[0])[-1]
    return Counter({'smp_basis': math.prod(_shape(outputs[0])) * (ndim + 1)})


def _fft_handle(kind: str) -> Callable[[list[Any], list[Any]], Counter]:
    """``aten::fft_{rfft,irfft,fft,ifft}(input, n, dim, norm)``: :func:`fft_macs` per transformed row."""

    def handle(inputs: list[Any], outputs: list[Any]) -> Counter:
        in_shape, out_shape = _shape(inputs[0]), _shape(outputs[0])
        dim = _const(inputs[2])
        dim = -1 if dim is None else dim
        length = max(out_shape[dim], 1)
        if kind == 'irfft':  # real output of length n: exact from the output shape
            n = length
        elif inputs[1].node().kind() == 'prim::Constant':  # n given as a constant, or None: the input length
            n = _const(inputs[1]) or in_shape[dim]
        else:  # n only known at run time: fft keeps it; rfft gives n // 2 + 1 bins (taken as even n)
            n = length if kind in ('fft', 'ifft') else 2 * (length - 1)
        rows = math.prod(out_shape) // length
        return Counter({f'fft_{kind}': fft_macs(max(int(n), 1), rows, real=kind in ('rfft', 'irfft'))})

    return handle


def _fftn_handle(kind: str) -> Callable[[list[Any], list[Any]], Counter]:
    """``aten::fft_{rfftn,irfftn}(input, s, dim, norm)``: :func:`fft_macs` of the ``prod(s)``-point transform per
    batch row (the 'same' FFT convolution of large dense kernels)."""

    def handle(inputs: list[Any], outputs: list[Any]) -> Counter:
        ref = _shape(outputs[0])
        dims = [d % len(ref) for d in (_const(inputs[2]) or range(len(ref)))]
        sizes = _const(inputs[1])
        if sizes is None:  # s only known at run time: irfftn's output has it; rfftn's last axis holds s // 2 + 1
            sizes = [ref[d] for d in dims]
            if kind == 'rfftn':
                sizes[-1] = 2 * (sizes[-1] - 1)  # taken as even (the FFT convolution uses even fast sizes)
        rows = math.prod(n for d, n in enumerate(ref) if d not in dims)
        return Counter({f'fft_{kind}': fft_macs(max(math.prod(sizes), 1), rows, real=True)})

    return handle


def _no_macs(inputs: list[Any], outputs: list[Any]) -> Counter:
    return Counter()


def _import_fvcore() -> type:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            from fvcore.nn import FlopCountAnalysis
    except ImportError as err:
        raise ImportError(_FVCORE_HINT) from err
    return FlopCountAnalysis


def flop_count_analysis(
        model: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> FlopCountAnalysis:
    """An fvcore ``FlopCountAnalysis`` of ``model`` on ``inputs`` with the SMPConv handles (module docstring) and
    fvcore's own warnings silenced; ops left without a handle are logged as one warning when first computed.

    Use it for breakdowns (``.by_operator()``, ``.by_module()``). The SMP layers regenerate their kernel (and so
    appear in the trace) only in training mode or while autograd records; :func:`count_flops` takes care of that.
    """
    analysis = _analysis_cls()(model, inputs)
    handles: dict[str, Callable] = dict.fromkeys(_ZERO_MAC_OPS, _no_macs)
    handles.update({
        'aten::matmul': _matmul_handle,
        'aten::mm': _matmul_handle,
        'aten::bmm': _matmul_handle,
        'aten::mv': _matmul_handle,
        'aten::dot': _matmul_handle,
        'prim::PythonOp._SMPBasis': _smp_basis_handle,
        'aten::fft_rfft': _fft_handle('rfft'),
        'aten::fft_irfft': _fft_handle('irfft'),
        'aten::fft_fft': _fft_handle('fft'),
        'aten::fft_ifft': _fft_handle('ifft'),
        'aten::fft_rfftn': _fftn_handle('rfftn'),
        'aten::fft_irfftn': _fftn_handle('irfftn'),
    })
    analysis.set_op_handle(**handles)
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings('none')


@functools.lru_cache(maxsize=1)
def _analysis_cls() -> type:
    """fvcore's ``FlopCountAnalysis``, logging ops left without a handle once."""
    flop_count_cls = _import_fvcore()

    class SMPFlopCountAnalysis(flop_count_cls):
        def _analyze(self):
            fresh = self._stats is None
            stats = super()._analyze()
            if fresh and stats.unsupported_ops.get(''):
                ops = ', '.join(f'{k} (x{v})' for k, v in sorted(stats.unsupported_ops[''].items()))
                _logger.warning('ops without a MAC handle (counted as zero): %s', ops)
            return stats

    return SMPFlopCountAnalysis


# ----------------------------------------------------------------------------------------------------- counting

@dataclass
class _Counts:
    model: str
    input_size: tuple[int, ...]
    params: int
    deploy: Counter = field(default_factory=Counter)
    train: Counter | None = None

    def as_dict(self) -> dict[str, Any]:
        train = kernel_gen = None
        if self.train is not None:
            train = sum(self.train.values())
            kernel_gen = sum(self.train[k] for k in KERNEL_GEN_OPS)
        return {
            'model': self.model,
            'input_size': list(self.input_size),
            'params': self.params,
            'gmacs_deploy': sum(self.deploy.values()) / 1e9,
            'gmacs_train': None if train is None else train / 1e9,
            'gmacs_paper': None if train is None else (train - kernel_gen) / 1e9,
        }


def _family(name: str, model: str | nn.Module) -> ModelFamily:
    """The model's family, which must take ``[B, C, H, W]`` images or ``[B, C, L]`` sequences (fvcore traces one
    tensor input; point sets and irregular series are an error)."""
    family = family_of(model)  # an unknown name is an error listing the registered models
    if family.input_kind not in ('image', 'sequence'):
        raise ValueError(f'{name}: FLOPs are counted for image and sequence models, not for {family.input_kind} '
                         f'inputs ({family.input_doc})')
    return family


def _resolve_input_size(
        name: str, sequence: bool, default: Sequence[int] | None, input_size: Sequence[int] | None,
        img_size: int | None, seq_len: int | None,
) -> tuple[int, ...]:
    if img_size is not None and seq_len is not None:
        raise ValueError('give img_size or seq_len, not both')
    if img_size is not None and sequence:
        raise ValueError(f'{name} is a sequence model: give its length with seq_len (--seq-len), not img_size')
    if seq_len is not None and not sequence:
        raise ValueError(f'{name} is an image model: give its resolution with img_size (--img-size), not seq_len')
    size = input_size if input_size is not None else default
    if size is None:
        raise ValueError(f'{name} has no default input size: pass input_size')
    size = tuple(int(s) for s in size)
    if sequence and len(size) == 3 and size[1] == 1:
        size = (size[0], size[2])
    if img_size is not None:
        size = (size[0], int(img_size), int(img_size))
    if seq_len is not None:
        size = (size[0], int(seq_len))
    if any(s < 1 for s in size):
        raise ValueError(f'{name}: input sizes must be positive, got {size}')
    return size


def _trace_counts(model: nn.Module, inputs: torch.Tensor, generate_kernels: bool) -> Counter:
    """By-operator MACs of one eval-mode forward; ``generate_kernels`` marks the SMP layers as training so that
    their kernels are generated in the trace (an SMP layer's ``training`` flag only controls its kernel cache)."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        if generate_kernels:
            for m in model.modules():
                if isinstance(m, SMPConvBase):
                    m.training = True
        with torch.no_grad():
            return Counter(flop_count_analysis(model, inputs).by_operator())
    finally:
        for m, mode in modes.items():
            m.training = mode


def _count(
        model: str | nn.Module,
        input_size: Sequence[int] | None = None,
        img_size: int | None = None,
        seq_len: int | None = None,
) -> _Counts:
    if isinstance(model, str):
        name = model
        family = _family(name, name)
        sequence = family.input_kind == 'sequence'
        default = tuple(get_pretrained_cfg(name.split('.')[0]).input_size)  # (C, H, W); sequences (C, 1, L)
        size = _resolve_input_size(name, sequence, default, input_size, img_size, seq_len)
        _import_fvcore()
        # a sequence model's kernels span the length (its data-implied kwargs: seq_len)
        net = timm.create_model(name, **{k: size[-1] for k, source in family.data_kwargs.items() if source == 'length'})
        owned = True
    elif isinstance(model, nn.Module):
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        name = cfg.get('architecture') or type(model).__name__
        sequence = _family(name, model).input_kind == 'sequence'
        default = cfg.get('input_size')
        if sequence:  # the cfg keeps the registered length; the default input is the length the (first) kernels
            # cover: K taps causal, (K + 1) / 2 centred (causal=False: K = 2 L - 1)
            first = next(m for m in model.modules() if isinstance(m, SMPReparamConv))
            taps = first.kernel_size[0]
            default = (first.in_channels, taps if first.causal else (taps + 1) // 2)
        size = _resolve_input_size(name, sequence, default, input_size, img_size, seq_len)
        _import_fvcore()
        net, owned = model, False
    else:
        raise TypeError(f'model must be a model name or an nn.Module, got {type(model).__name__}')

    param = next(net.parameters(), None)
    inputs = torch.randn(1, *size, **({} if param is None else dict(device=param.device, dtype=param.dtype)))
    counts = _Counts(model=name, input_size=size, params=sum(p.numel() for p in net.parameters()))
    if any(isinstance(m, SMPConvBase) for m in net.modules()):
        _logger.info('%s: tracing the train form at %s', name, size)
        counts.train = _trace_counts(net, inputs, generate_kernels=True)
        _logger.info('%s: reparameterizing and tracing the deploy form', name)
        net = reparameterize_model(net, inplace=owned)  # a caller's model is copied, left as it was
    counts.deploy = _trace_counts(net, inputs, generate_kernels=False)
    return counts


def count_flops(
        model: str | nn.Module,
        input_size: Sequence[int] | None = None,
        *,
        img_size: int | None = None,
        seq_len: int | None = None,
) -> dict[str, Any]:
    """Parameters and GMACs (1 MAC = one multiply-add, batch size 1) of an SMPConv model, as in Table 4 of the paper
    (Kim & Park, "SMPConv: Self-moving Point Representations for Continuous Convolution", CVPR 2023).

    Args:
        model: a registered name (``timm.list_models('smpconv_*')``) or a model instance (left unchanged).
        input_size: ``(C, H, W)`` for image models, ``(C, L)`` (or ``(C, 1, L)``) for sequence models; default the
            model's ``pretrained_cfg['input_size']`` (a sequence model instance: as long as its kernels).
        img_size: square resolution for an image model (``(C, img_size, img_size)``).
        seq_len: sequence length for a sequence model; with a name it also sets the kernel length (``seq_len=``).

    Returns:
        ``{'model', 'input_size', 'params', 'gmacs_deploy', 'gmacs_train', 'gmacs_paper'}``: the train-form parameter
        count, MACs of the reparameterized model, of the train form including SMP kernel generation, and of the
        train form without it (the paper's convention; see the module docstring). ``gmacs_train`` and
        ``gmacs_paper`` are ``None`` for a model without SMP layers (e.g. one already reparameterized).

    Raises:
        ValueError: unknown model name (close matches listed), ``img_size`` for a sequence model, ``seq_len`` for an
            image model, or a bad size.
        ImportError: fvcore is not installed (``pip install 'smpconv-models[flops]'``).
        TypeError: ``model`` is neither a name nor an ``nn.Module``.
    """
    return _count(model, input_size, img_size, seq_len).as_dict()


# ---------------------------------------------------------------------------------------------------------- CLI

def _table(counts: _Counts) -> str:
    result = counts.as_dict()
    size = 'x'.join(str(s) for s in counts.input_size)
    lines = [
        f'{counts.model}  (input {size}, batch 1; 1 MAC = 1 multiply-add)',
        f'  {"params (train form)":<38}{counts.params:>16,}',
        f'  {"GMACs deploy (reparameterized)":<38}{result["gmacs_deploy"]:>16.4f}',
    ]
    if counts.train is not None:
        lines += [
            f'  {"GMACs train (with kernel gen.)":<38}{result["gmacs_train"]:>16.4f}',
            f'  {"GMACs paper (train, no kernel gen.)":<38}{result["gmacs_paper"]:>16.4f}',
        ]
    ops = sorted(set(counts.deploy) | set(counts.train or {}))
    if ops:
        lines.append(f'  {"by operator (GMACs)":<38}{"deploy":>16}{"train" if counts.train is not None else "":>12}')
        for op in ops:
            train = f'{counts.train[op] / 1e9:>12.4f}' if counts.train is not None else ''
            lines.append(f'    {op:<36}{counts.deploy[op] / 1e9:>16.4f}{train}')
    return '\n'.join(lines) + '\n'


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m smpconv_models.flops MODEL [--img-size N | --seq-len N] [--json]``."""
    parser = argparse.ArgumentParser(
        prog='python -m smpconv_models.flops',
        description='Parameters and GMACs (fvcore convention, 1 multiply-add = 1 MAC) of an SMPConv timm model: '
                    'deploy (reparameterized), train (with SMP kernel generation) and the paper\'s Table 4 '
                    'convention (train form without kernel generation).')
    parser.add_argument('model', help='model name, e.g. smpconv_t, smpconv_cifar, smpconv_tcn_mnist')
    size = parser.add_mutually_exclusive_group()
    size.add_argument('--img-size', type=int, metavar='N', help='input resolution NxN (image models)')
    size.add_argument('--seq-len', type=int, metavar='N', help='sequence and kernel length (sequence models)')
    parser.add_argument('--json', action='store_true', help='print one JSON object instead of a table')
    parser.add_argument('-v', '--verbose', action='store_true', help='log progress to stderr')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format='%(message)s')
    try:
        counts = _count(args.model, img_size=args.img_size, seq_len=args.seq_len)
    except (ValueError, ImportError) as err:
        parser.error(str(err))
    sys.stdout.write(json.dumps(counts.as_dict()) + '\n' if args.json else _table(counts))
    return 0


if __name__ == '__main__':
    sys.exit(main())
