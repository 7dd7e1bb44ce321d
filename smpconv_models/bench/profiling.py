"""``--profile``: where the time goes. Op-group shares of an smpconv_t training step and of deploy inference
(torch.profiler), the fwd+bwd time of its large depthwise kernels through each path of ``conv_path``, of the
frequency-domain channel mixing, and the share of kernel generation in the CIFAR training step for SMP and MAGNet
kernels."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from ..layers import SMPConv, calibrate_bn_, smp_param_groups
from ..layers.conv import _DepthwiseSameConv, fft_same_conv, mix_channels_fft
from .peers import MLPKernelConv
from .rows.cifar import cifar_setting
from .steps import train_step
from .timing import alternating_medians

__all__ = ['run_profile']

_OP_GROUPS = (('matmul / conv', ('mm', 'addmm', 'bmm', 'linear', 'convolution', 'mkldnn')),
              ('batch norm', ('batch_norm',)), ('fft', ('fft',)), ('activations', ('gelu', 'relu', 'threshold',
                                                                                    'clamp')))


def _op_breakdown(fn: Callable[[], Any]) -> dict[str, float]:
    """Share of self CPU time per op group in one call of ``fn`` (torch.profiler)."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        name = event.key.lower()
        group = next((g for g, keys in _OP_GROUPS if any(k in name for k in keys)), 'other')
        totals[group] = totals.get(group, 0.0) + event.self_cpu_time_total
    total = sum(totals.values()) or 1.0
    return {g: 100 * t / total for g, t in sorted(totals.items(), key=lambda kv: -kv[1])}


def _depthwise_step(path: str, x0: torch.Tensor, w0: torch.Tensor) -> Callable[[], Any]:
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    channels, k = w.shape[0], w.shape[-1]

    def step():
        if path == 'fft':
            y = fft_same_conv(x, w, None, channels)
        elif path == 'hybrid':
            y = _DepthwiseSameConv.apply(x, w)
        else:
            y = F.conv2d(x, w, padding=k // 2, groups=channels)
        y.backward(torch.ones_like(y))
    return step


def _depthwise_paths(reps: int) -> list[dict[str, Any]]:
    """fwd+bwd ms of smpconv_t's large depthwise kernels (batch 8, channels_last) through each path of
    :func:`~smpconv_models.layers.conv.conv_path` (direct oneDNN, all-FFT, hybrid), alternating medians."""
    rows = []
    for c, h, k in ((96, 56, 31), (192, 28, 29), (384, 14, 27), (768, 7, 13)):
        x0 = torch.randn(8, c, h, h).contiguous(memory_format=torch.channels_last)
        w0 = torch.randn(c, 1, k, k) * 0.01
        steps = {p: _depthwise_step(p, x0, w0) for p in ('direct', 'fft', 'hybrid')}
        medians = alternating_medians(steps, reps)
        rows.append({'shape': f'{k}x{k} on [8, {c}, {h}, {h}]', **{f'{p}_ms': 1e3 * t for p, t in medians.items()}})
    return rows


def _mix_step(fn: Callable, xf: torch.Tensor, wf: torch.Tensor, grad: torch.Tensor) -> None:
    torch.autograd.backward(fn(xf, wf), grad)


def _channel_mixing(reps: int) -> list[dict[str, Any]]:
    """fwd+bwd ms of the frequency-domain channel mixing at smpconv_cifar's widest and smpconv_tcn_mnist's shapes
    (batch 64): ``torch.matmul`` on permuted spectrum views vs :func:`~smpconv_models.layers.conv.mix_channels_fft`
    (contiguous ``[F, B, C]`` operands and gradient), alternating medians."""
    def permuted(xf: torch.Tensor, wf: torch.Tensor) -> torch.Tensor:
        nd = xf.dim() - 2
        f_axes = list(range(2, 2 + nd))
        y = torch.matmul(xf.permute(*f_axes, 0, 1), wf.permute(*f_axes, 1, 0))  # [*F, B, Cout]
        return y.permute(nd, nd + 1, *range(nd))

    rows = []
    for label, fshape, c in (('smpconv_cifar, 48 channels, 48x48 transform', (48, 25), 48),
                             ('smpconv_tcn_mnist, 30 channels, 1568 transform', (785,), 30)):
        xf = torch.randn(64, c, *fshape, dtype=torch.complex64, requires_grad=True)
        wf = torch.randn(c, c, *fshape, dtype=torch.complex64, requires_grad=True)
        gy = torch.randn(64, c, *fshape, dtype=torch.complex64)
        calls = {name: functools.partial(_mix_step, fn, xf, wf, gy)
                 for name, fn in (('permuted_matmul', permuted), ('mix_channels_fft', mix_channels_fft))}
        ms = {f'{k}_ms': 1e3 * t for k, t in alternating_medians(calls, reps).items()}
        rows.append({'shape': label, **ms, 'speedup': ms['permuted_matmul_ms'] / ms['mix_channels_fft_ms']})
    return rows


def _cifar_kernel_generation(reps: int) -> dict[str, dict[str, float]]:
    """The ``cifar_train_vs_mlp_kernel`` setting split up: ms of a whole training step and of generating every
    kernel with its backward, for SMP points and for MAGNet, alternating medians. Everything else (the convolutions)
    is shared, which bounds the row's ratio: ``bound`` is the peer's step over the peer's step without its kernels."""
    setting = cifar_setting()
    calls: dict[str, Callable[[], Any]] = {}
    for name, (net, step) in setting.items():
        calls[f'{name}_step'] = step
        layers = [m for m in net.modules() if isinstance(m, (SMPConv, MLPKernelConv))]

        def kernels(layers=layers):
            outs = [layer.generate_kernel() for layer in layers]
            torch.autograd.backward(outs, [torch.ones_like(k) for k in outs])
        calls[f'{name}_kernels'] = kernels
    ms = {k: 1e3 * t for k, t in alternating_medians(calls, reps).items()}
    out = {name: {'step_ms': ms[f'{name}_step'], 'kernels_ms': ms[f'{name}_kernels'],
                  'kernels_percent': 100 * ms[f'{name}_kernels'] / ms[f'{name}_step']} for name in setting}
    # with free SMP kernels our step would be the peer's step minus its kernel generation
    out['bound'] = {'ratio_if_smp_kernels_were_free': ms['mlp_kernel_step'] / (ms['mlp_kernel_step']
                                                                              - ms['mlp_kernel_kernels'])}
    return out


def run_profile(quick: bool = False) -> dict[str, Any]:
    """Where the time goes: op-group shares of the smpconv_t training step and deploy inference (batch 8,
    channels_last), the depthwise convolution paths per stage shape, the frequency-domain channel mixing, and the
    kernel-generation share of the CIFAR training step for SMP and MAGNet kernels."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (8,))
    model = timm.create_model('smpconv_t', drop_path_rate=0.1).to(memory_format=torch.channels_last).train()
    step = train_step(model, x, y, torch.optim.AdamW(smp_param_groups(model, 0.05, lr=1e-4), lr=1e-4))
    deployed = timm.utils.reparameterize_model(calibrate_bn_(model, x)).to(memory_format=torch.channels_last)

    def infer():
        with torch.inference_mode():
            deployed(x)

    return {'train_step_percent': _op_breakdown(step), 'inference_percent': _op_breakdown(infer),
            'depthwise_fwd_bwd': _depthwise_paths(3 if quick else 7),
            'channel_mixing_fwd_bwd': _channel_mixing(3 if quick else 7),
            'cifar_train_kernel_generation': _cifar_kernel_generation(3 if quick else 7)}
