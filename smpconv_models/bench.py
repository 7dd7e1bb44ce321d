"""Benchmark: our models against real peers, side by side, as ratios measured in one run.

``python -m smpconv_models.bench [--json FILE] [--plot FILE] [--quick] [--rows NAME ...]``; ``--profile`` instead
reports where the time goes (op-group shares of an smpconv_t training step and of deploy inference from
torch.profiler, the fwd+bwd time of its large depthwise kernels through each path of ``conv_path``, of the
frequency-domain channel mixing, and the share of kernel generation in the CIFAR training step for SMP and MAGNet
kernels).

Every row times "ours" and a peer in the same process, alternating repetitions (ours, peer, peer, ours, ...) after
a warm-up, and reports the medians and ``ratio = peer_time / our_time`` (> 1: we are faster). Each row runs in its own
process, whose peak resident memory is reported. Rows:

* ``smpconv_t_infer_vs_convnext_tiny``: reparameterized ``smpconv_t`` vs timm ``convnext_tiny``, eval, batch 8, 224,
  fp32, each in its faster memory format (NCHW or channels_last, picked in the warm-up); random weights, with
  smpconv_t's BatchNorm statistics calibrated on the input (:func:`calibrate_bn_`) for trained-like activations;
* ``smpconv_t_train_vs_convnext_tiny``: one training step (forward, backward, AdamW step), batch 8, 224, train mode
  (SMP kernels generated from their points), stochastic depth 0.1 for both (their papers' recipes), each in its
  faster memory format;
* ``smpconv_t_eval_cached_vs_reparam``: eval without reparameterization (SMP kernels and folded BatchNorms cached)
  vs reparameterized, same calibrated weights, each in its faster memory format;
* ``cifar_train_vs_mlp_kernel``: ``smpconv_cifar`` training step vs the same network whose kernels come from an
  MLP kernel generator (FlexConv's MAGNet: 3 multiplicative Gabor layers, 32 hidden units, 33x33), batch 64, 32x32;
* ``tcn_mnist_train_fft_vs_direct``: ``smpconv_tcn_mnist`` training step at 784 steps (batch 64), FFT vs direct
  causal convolution;
* ``irregular_tcn_train_smp_vs_mlp``: ``smpconv_irregular_tcn`` training step on 64 digits-irregular series (half
  of each series' steps dropped), SMP kernels vs MLP kernels (Wang et al.'s kernel MLP) in the same network;
* ``points_train_smp_vs_mlp``: ``smpconv_points`` training step on digits point sets (batch 32), SMP kernels vs MLP
  kernels with the same basis size, same network;
* ``point_conv_scaling`` (no peer): one ``PointConv`` layer at N = 1k, 10k, 100k points (k = 16, default search):
  neighbour search and forward + backward time, points / s, peak RSS;
* ``knn_vs_ckdtree_{10k,100k,1m}``: ``find_neighbors`` (k = 16, 3-d, default backend) vs scipy's ``cKDTree`` build +
  query on the same points;
* ``point_conv_vs_set_abstraction_{10k,100k,1m}``: one ``PointConv`` forward + backward (search included) vs a
  PointNet++-style set-abstraction layer (cKDTree kNN, MLP on ``[f_j, p_j - p_i]``, max) with the same k, channels
  and query chunks; each side's peak RSS from a fresh process;
* ``fps_subset_vs_fps_{100k,1m}``: farthest-point sampling of 4,096 points on a grid pool of ~16,384 vs exact,
  with both samples' covering radii and one kNN search's time on the same points;
* ``tcn_mnist_onnxruntime_vs_pytorch``: the reparameterized 784-tap ``smpconv_tcn_mnist`` exported to ONNX and run in
  onnxruntime vs the same model in PyTorch eval, batch 8 (``--onnx-methods`` times every family per FFT export
  method instead of the rows);
* ``smpconv_t_compiled_train_vs_convnext_tiny``: the training step of both models under ``torch.compile`` (default
  settings), batch 8, 224, NCHW.

The machine's fp32 matmul rate (GFLOP/s, 2 flops per multiply-add) is measured too, next to the GMAC/s each model
achieves (fvcore MACs / time, when fvcore is installed).
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._io import write_json_atomic

__all__ = [
    'ROWS', 'run_bench', 'run_profile', 'calibrate_bn_', 'time_pair', 'matmul_gflops', 'MAGNetKernel',
    'use_mlp_kernels', 'main',
]

_logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ timing

def time_pair(ours: Callable[[], Any], peer: Callable[[], Any], reps: int, warmup: int) -> tuple[float, float]:
    """Median seconds of ``ours`` and ``peer``, alternating which runs first in each repetition."""
    for _ in range(warmup):
        ours()
        peer()
    t_ours, t_peer = [], []
    for i in range(reps):
        order = ((ours, t_ours), (peer, t_peer)) if i % 2 == 0 else ((peer, t_peer), (ours, t_ours))
        for fn, sink in order:
            start = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - start)
    return statistics.median(t_ours), statistics.median(t_peer)


def _best_format(make_step: Callable[[bool], Callable[[], Any]], reps: int = 3) -> tuple[Callable[[], Any], str]:
    """The faster of NCHW and channels_last for a step factory ``make_step(channels_last)`` (alternating runs, the
    smaller median wins)."""
    steps = {False: make_step(False), True: make_step(True)}
    medians = _alternating_medians(steps, reps)
    cl = medians[True] < medians[False]
    return steps[cl], 'channels_last' if cl else 'NCHW'


def _alternating_medians(calls: dict[Any, Callable[[], Any]], reps: int) -> dict[Any, float]:
    """Median seconds of each call after one warm-up each, the order reversed on every other repetition."""
    times: dict[Any, list[float]] = {k: [] for k in calls}
    for fn in calls.values():
        fn()
    for i in range(reps):
        for key in (list(calls) if i % 2 == 0 else list(reversed(calls))):
            times[key].append(_timed(calls[key]))
    return {k: statistics.median(t) for k, t in times.items()}


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """Measured fp32 matmul rate of this machine (2 flops per multiply-add)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t = min(_timed(lambda: torch.mm(a, b)) for _ in range(reps))
    return 2 * n ** 3 / t / 1e9


def _gmacs(model: nn.Module, x: torch.Tensor) -> float | None:
    try:
        from .flops import flop_count_analysis
    except ImportError:
        return None
    try:
        with torch.no_grad():
            return flop_count_analysis(model, (x,)).total() / 1e9
    except Exception as e:  # a model fvcore cannot trace still gets timed
        _logger.warning('MAC count failed: %s', e)
        return None


# --------------------------------------------------------------------------------- the MLP-kernel peer (MAGNet)

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


class _MLPKernelConv(nn.Module):
    """An ``SMPConv`` replaced by a MAGNet-generated dense kernel (same grid, same 'same' convolution)."""

    def __init__(self, smp_conv: nn.Module):
        super().__init__()
        self.in_channels, self.out_channels = smp_conv.in_channels, smp_conv.out_channels
        self.kernel_size = smp_conv.kernel_size
        self.register_buffer('coords', smp_conv.kernel_coord.clone(), persistent=False)
        self.kernel_net = MAGNetKernel(len(self.kernel_size), self.out_channels * self.in_channels)
        self.bias = smp_conv.bias

    def generate_kernel(self) -> torch.Tensor:
        return self.kernel_net(self.coords).t().reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .layers import same_conv

        return same_conv(x, self.generate_kernel(), self.bias)


def use_mlp_kernels(model: nn.Module) -> nn.Module:
    """Replace every per-filter ``SMPConv`` of ``model`` by an MLP (MAGNet) kernel conv, in place."""
    from .layers import SMPConv

    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, SMPConv):
                setattr(module, child_name, _MLPKernelConv(child))
    return model


# ------------------------------------------------------------------------------------------------------ rows

def _train_step(model: nn.Module, x: torch.Tensor | dict[str, torch.Tensor], y: torch.Tensor,
                opt: torch.optim.Optimizer) -> Callable:
    """One cross-entropy training step; a dict ``x`` is passed as keyword inputs (``model(**x)``)."""
    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(**x) if isinstance(x, dict) else model(x), y).backward()
        opt.step()
    return step


@torch.no_grad()
def calibrate_bn_(model: nn.Module, x: torch.Tensor, passes: int = 2) -> nn.Module:
    """Set every BatchNorm's running statistics to the statistics of ``model``'s activations on ``x`` (train-mode
    passes with a cumulative average), then switch to eval.

    A freshly initialised BN network in eval mode (running mean 0, variance 1) shrinks its activations layer by layer
    (to ~1e-9 in smpconv_t's last stages), where exact GELU takes a several times slower path; trained
    weights keep activations O(1). Calibrated statistics give the benchmark trained-like activation scales.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for _ in range(passes):
        model(x)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    return model.eval()


def _infer_factory(model: nn.Module, x: torch.Tensor) -> Callable[[bool], Callable[[], Any]]:
    def make(cl: bool):
        m = copy.deepcopy(model).to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        xi = x.contiguous(memory_format=torch.channels_last) if cl else x

        def step():
            with torch.inference_mode():
                m(xi)
        return step
    return make


def _row_infer(quick: bool) -> dict[str, Any]:
    import timm

    from . import models  # noqa: F401

    x = torch.randn(8, 3, 224, 224)
    torch.manual_seed(0)
    ours_model = timm.utils.reparameterize_model(calibrate_bn_(timm.create_model('smpconv_t'), x))
    peer_model = timm.create_model('convnext_tiny').eval()
    ours, ours_fmt = _best_format(_infer_factory(ours_model, x))
    peer, peer_fmt = _best_format(_infer_factory(peer_model, x))
    t_ours, t_peer = time_pair(ours, peer, *_reps(quick, 9))
    return dict(ours_time=t_ours, peer_time=t_peer, note=f'ours {ours_fmt}, convnext_tiny {peer_fmt}',
                ours_gmacs=_gmacs(ours_model, x[:1]), peer_gmacs=_gmacs(peer_model, x[:1]), batch=8)


def _row_train(quick: bool) -> dict[str, Any]:
    import timm

    from . import models  # noqa: F401
    from .layers import smp_param_groups

    x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))

    def factory(name):
        def make(cl: bool):
            torch.manual_seed(0)
            m = timm.create_model(name, drop_path_rate=0.1).train()  # both papers' ImageNet recipes
            if cl:
                m = m.to(memory_format=torch.channels_last)
            groups = smp_param_groups(m, 0.05, lr=1e-4) if name.startswith('smpconv') else m.parameters()
            opt = torch.optim.AdamW(groups, lr=1e-4)
            return _train_step(m, x.contiguous(memory_format=torch.channels_last) if cl else x, y, opt)
        return make

    ours, ours_fmt = _best_format(factory('smpconv_t'))
    peer, peer_fmt = _best_format(factory('convnext_tiny'))
    t_ours, t_peer = time_pair(ours, peer, *_reps(quick, 3))
    return dict(ours_time=t_ours, peer_time=t_peer, note=f'ours {ours_fmt}, convnext_tiny {peer_fmt}', batch=8)


def _row_cached(quick: bool) -> dict[str, Any]:
    import timm

    from . import models  # noqa: F401

    x = torch.randn(8, 3, 224, 224)
    torch.manual_seed(0)
    cached = calibrate_bn_(timm.create_model('smpconv_t'), x)
    deployed = timm.utils.reparameterize_model(cached)  # a copy
    ours, ours_fmt = _best_format(_infer_factory(cached, x))
    peer, peer_fmt = _best_format(_infer_factory(deployed, x))
    t_ours, t_peer = time_pair(ours, peer, *_reps(quick, 9))
    return dict(ours_time=t_ours, peer_time=t_peer, batch=8,
                note=f'ours: eval, not reparameterized (kernels and folded BNs cached), {ours_fmt}; '
                     f'peer: reparameterized, {peer_fmt}')


def _cifar_setting() -> dict[str, tuple[nn.Module, Callable[[], Any]]]:
    """``smpconv_cifar`` and its MAGNet-kernel twin in train mode with their training steps (batch 64, 32x32)."""
    import timm

    from . import models  # noqa: F401
    from .layers import smp_param_groups

    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    torch.manual_seed(0)
    ours = timm.create_model('smpconv_cifar').train()
    peer = use_mlp_kernels(timm.create_model('smpconv_cifar')).train()
    return {'smp': (ours, _train_step(ours, x, y, torch.optim.Adam(smp_param_groups(ours, 1e-5, lr=1e-3), lr=1e-3))),
            'mlp_kernel': (peer, _train_step(peer, x, y, torch.optim.Adam(peer.parameters(), lr=1e-3)))}


def _row_cifar(quick: bool) -> dict[str, Any]:
    setting = _cifar_setting()
    t_ours, t_peer = time_pair(setting['smp'][1], setting['mlp_kernel'][1], *_reps(quick, 3))
    return dict(ours_time=t_ours, peer_time=t_peer, batch=64,
                note='peer: the same network, kernels from MAGNet (3 layers, 32 hidden) instead of SMP points')


def _row_tcn(quick: bool) -> dict[str, Any]:
    import timm

    from . import models  # noqa: F401
    from .layers import smp_param_groups

    x, y = torch.randn(64, 1, 784), torch.randint(0, 10, (64,))

    def make(fft: bool):
        torch.manual_seed(0)
        m = timm.create_model('smpconv_tcn_mnist', use_fft=fft).train()
        return _train_step(m, x, y, torch.optim.Adam(smp_param_groups(m, 1e-5, lr=1e-4), lr=1e-4))

    t_ours, t_peer = time_pair(make(True), make(False), *_reps(quick, 3))
    return dict(ours_time=t_ours, peer_time=t_peer, batch=64, note='ours: FFT causal conv; peer: direct conv1d')


def _ort_session(model: nn.Module, x: torch.Tensor, path: Path, method: str = 'auto'):
    """``model`` exported with the dynamo exporter (FFT convolutions as ``method``) and loaded in onnxruntime with
    as many threads as PyTorch uses; returns a callable running it on ``x``."""
    import onnxruntime as ort

    from .export import export_onnx

    export_onnx(model, path, x, fft_method=method)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def _row_onnx_tcn(quick: bool) -> dict[str, Any]:
    """onnxruntime vs PyTorch inference of the reparameterized 784-tap smpconv_tcn_mnist, batch 8."""
    import tempfile

    import timm

    from . import models  # noqa: F401

    torch.manual_seed(0)
    x = torch.randn(8, 1, 784)
    model = timm.utils.reparameterize_model(calibrate_bn_(timm.create_model('smpconv_tcn_mnist'), x))
    with tempfile.TemporaryDirectory() as tmp:
        ours = _ort_session(model, x, Path(tmp) / 'tcn.onnx')

        def peer():
            with torch.inference_mode():
                model(x)
        t_ours, t_peer = time_pair(ours, peer, *_reps(quick, 9))
    return dict(ours_time=t_ours, peer_time=t_peer, batch=8,
                note='ours: onnxruntime (CPU) of the exported model (FFT convs as matmul bases); peer: PyTorch eval')


def _row_compiled_train(quick: bool) -> dict[str, Any]:
    """``torch.compile`` (default settings) training steps of smpconv_t and ConvNeXt-T, batch 8, 224, NCHW."""
    import timm

    from . import models  # noqa: F401
    from .layers import smp_param_groups

    x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))

    def make(name):
        torch.manual_seed(0)
        m = timm.create_model(name, drop_path_rate=0.1).train()
        groups = smp_param_groups(m, 0.05, lr=1e-4) if name.startswith('smpconv') else m.parameters()
        return _train_step(torch.compile(m), x, y, torch.optim.AdamW(groups, lr=1e-4))

    t_ours, t_peer = time_pair(make('smpconv_t'), make('convnext_tiny'), *_reps(quick, 3))
    return dict(ours_time=t_ours, peer_time=t_peer, batch=8, note='both torch.compile(model), default settings')


def onnx_fft_methods(quick: bool = False) -> list[dict[str, Any]]:
    """ms of onnxruntime inference (batch 8) of each family's reparameterized model with its FFT convolutions
    exported as each method of :mod:`~smpconv_models.layers.export_conv`, next to PyTorch eval, alternating medians
    (what ``'auto'`` is chosen from). smpconv_tcn_speech_raw is timed at 2,000 steps (its 16,000-tap deploy model
    holds 690 MB of kernels); ``'direct'`` is skipped where it costs over 50 GMAC per sample."""
    import tempfile

    import timm

    from . import models  # noqa: F401

    settings = [('smpconv_cifar', {}, (3, 32, 32)), ('smpconv_tcn_mnist', {}, (1, 784)),
                ('smpconv_tcn_scifar10', {}, (3, 1024)), ('smpconv_tcn_chartraj', {}, (3, 182)),
                ('smpconv_tcn_speech', {}, (20, 161)), ('smpconv_tcn_speech_raw', {'seq_len': 2000}, (1, 2000))]
    rows = []
    for name, kwargs, shape in settings:
        torch.manual_seed(0)
        x = torch.randn(8, *shape)
        model = timm.utils.reparameterize_model(calibrate_bn_(timm.create_model(name, **kwargs), x))
        calls: dict[str, Callable[[], Any]] = {}

        def pytorch(model=model, x=x):
            with torch.inference_mode():
                model(x)
        calls['pytorch'] = pytorch
        with tempfile.TemporaryDirectory() as tmp:
            for method in ('dft', 'matmul', 'direct'):
                if method == 'direct' and shape[-1] > 1024:
                    continue
                calls[method] = _ort_session(model, x, Path(tmp) / f'{method}.onnx', method)
            ms = {k: 1e3 * t for k, t in _alternating_medians(calls, 3 if quick else 5).items()}
        rows.append({'model': name, 'input': list(shape), **{f'{k}_ms': v for k, v in ms.items()}})
        _logger.info('%s', rows[-1])
    return rows


def _row_irregular(quick: bool) -> dict[str, Any]:
    """``smpconv_irregular_tcn`` training step on a batch of digits-irregular (50% of each series dropped), SMP
    kernels vs MLP kernels (Wang et al.'s kernel MLP, 2 hidden layers of 32) in the same network."""
    import timm

    from . import models  # noqa: F401
    from .layers import smp_param_groups
    from .train.data import build_data

    data = build_data('digits-irregular', 'irregular', missing_rate=0.5)
    batch = [data.train[i] for i in range(64)]
    inputs = {k: torch.stack([b[0][k] for b in batch]) for k in batch[0][0]}
    y = torch.stack([b[1] for b in batch])

    def make(kernel: str):
        torch.manual_seed(0)
        m = timm.create_model('smpconv_irregular_tcn', kernel=kernel).train()
        opt = torch.optim.Adam(smp_param_groups(m, 1e-5, lr=3e-3), lr=3e-3)
        return _train_step(m, inputs, y, opt), sum(p.numel() for p in m.parameters())

    (ours, n_ours), (peer, n_peer) = make('smp'), make('mlp')
    t_ours, t_peer = time_pair(ours, peer, *_reps(quick, 5))
    return dict(ours_time=t_ours, peer_time=t_peer, batch=64,
                note=f'peer: the same network with MLP kernels (2 x 32 hidden); params {n_ours:,} vs {n_peer:,}; '
                     '32 of 64 steps observed, integer timestamps (grid path)')


def _row_points(quick: bool) -> dict[str, Any]:
    """smpconv_points training step (AdamW) on a digits-points batch: SMP kernels (ours) vs MLP kernels (peer) with
    the same basis size (16 points / 16 last-hidden units), the same network and data."""
    import timm

    from . import models  # noqa: F401
    from .train.data.points import digits_point_sets

    features, positions, mask, labels = digits_point_sets()
    batch = dict(features=features[:32], positions=positions[:32], mask=mask[:32])
    y = labels[:32]

    def make(kernel: str):
        torch.manual_seed(0)
        m = timm.create_model('smpconv_points', kernel=kernel).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        return _train_step(m, batch, y, opt), sum(p.numel() for p in m.parameters())

    (ours, n_ours), (peer, n_peer) = make('smp'), make('mlp')
    t_ours, t_peer = time_pair(ours, peer, *_reps(quick, 7))
    return dict(ours_time=t_ours, peer_time=t_peer, batch=32,
                note=f'sets of <= 38 points, k=16; ours: SMP kernels ({n_ours:,} params); peer: MLP kernels '
                     f'({n_peer:,} params)')


def _row_point_scaling(quick: bool) -> dict[str, Any]:
    """One PointConv (SMP kernel, 16 shared points, 32 -> 32 channels, k = 16 nearest, 3-d points, batch 1) at
    N = 1k, 10k, 100k points (query = support): neighbour search time, forward + backward time (search included),
    points / s, and the process peak RSS after each size (sizes run in increasing order, so it is that size's peak)."""
    from .layers import PointConv, find_neighbors

    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = []
    for n in sizes:
        torch.manual_seed(0)
        layer = PointConv(32, 32, 'smp', dim=3, k=16, n_points=16)
        feats = torch.randn(1, n, 32)
        pos = torch.rand(1, n, 3) * n ** (1 / 3)  # unit density: the neighbourhood size does not depend on n

        def search(pos=pos):
            find_neighbors(pos, pos, 16)

        def step(layer=layer, feats=feats, pos=pos):
            layer(feats, pos).square().mean().backward()

        reps = 1 if n >= 100_000 or quick else 3
        search_s = statistics.median(_timed(search) for _ in range(reps))
        step_s = statistics.median(_timed(step) for _ in range(reps))
        out.append(dict(n=n, search_s=search_s, fwd_bwd_s=step_s, points_per_s=n / step_s,
                        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    return dict(scaling=out, base_rss_mb=base_rss, note='PointConv smp, F 32->32, k=16, d=3, batch 1, default '
                                                          'search (kd-tree on CPU)')


# --------------------------------------------------------------------------- point sets at scale (issue 18)
# Self-contained rows: kNN against scipy's kd-tree, and one point-conv layer (forward + backward and peak memory)
# against a PointNet++-style set-abstraction layer, at 10k, 100k and 1M points.

POINT_SCALE_K = 16
POINT_SCALE_CHANNELS = 32


def _unit_density_points(n: int, seed: int = 0) -> torch.Tensor:
    """``[1, n, 3]`` float32 points uniform in a cube of volume ``n`` (one point per unit volume at every ``n``)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, n, 3, generator=g) * n ** (1 / 3)


def _knn_vs_kdtree(n: int, quick: bool) -> dict[str, Any]:
    """``find_neighbors(pos, pos, k=16)`` (default backend: the kd-tree path re-ranked to the neighbour rule; float32
    torch in, ``Neighborhood`` out) vs scipy ``cKDTree(x).query(x, 16)`` on the same points as a float64 numpy array
    (made outside the timing), both with the process' thread count; tree builds included on both sides."""
    from scipy.spatial import cKDTree

    from .layers import find_neighbors

    pos = _unit_density_points(n)
    pos64 = pos[0].double().numpy()
    workers = torch.get_num_threads()

    def ours():
        return find_neighbors(pos, pos, POINT_SCALE_K)

    def peer():
        return cKDTree(pos64).query(pos64, POINT_SCALE_K, workers=workers)

    reps, warmup = (1, 0) if quick or n >= 1_000_000 else (5 if n <= 10_000 else 3, 1)
    t_ours, t_peer = time_pair(ours, peer, reps, warmup)
    found = ours()
    same = (found.idx[0] == torch.from_numpy(peer()[1])).all(-1).float().mean().item()
    extra, note = {}, ''
    if n <= 10_000:  # the plain-torch brute force (GPU / export path) on the same points, for scale
        extra['torch_backend_s'] = _timed(lambda: find_neighbors(pos, pos, POINT_SCALE_K, backend='torch'))
        assert torch.equal(find_neighbors(pos, pos, POINT_SCALE_K, backend='torch').idx, found.idx)
        note = f"; backend='torch' (brute force, same result) {extra['torch_backend_s']:.2f} s"
    return dict(ours_time=t_ours, peer_time=t_peer, batch=1, rows_equal_to_peer=same, **extra,
                note=f'{n:,} points uniform in 3-d, k={POINT_SCALE_K}, {workers} threads; {same:.4%} of the queries '
                     f'get the same ordered neighbours as cKDTree (float64){note}')


class _SetAbstraction(nn.Module):
    """The peer point layer (PointNet++ set abstraction, PyG's ``PointNetConv`` with max aggregation) in plain torch:
    ``h_i = max_j MLP([f_j, p_j - p_i])`` over the k nearest neighbours, MLP ``F_in + 3 -> F_out -> F_out``."""

    def __init__(self, in_chans: int, out_chans: int, dim: int = 3):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_chans + dim, out_chans), nn.ReLU(), nn.Linear(out_chans, out_chans))

    def block(self, features: torch.Tensor, positions: torch.Tensor, query: torch.Tensor, idx: torch.Tensor
              ) -> torch.Tensor:
        f = features[0, idx]  # [M, k, F]
        offsets = positions[0, idx] - query[0, :, None]
        return self.mlp(torch.cat([f, offsets], -1)).amax(1)[None]

    def forward(self, features: torch.Tensor, positions: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        from .layers.point_conv import GATHER_BLOCK

        m, k = idx.shape
        chunk = max(1, GATHER_BLOCK // k)  # the same query chunks (recomputed in backward) as point_conv
        if chunk >= m:
            return self.block(features, positions, positions, idx)
        return torch.cat([checkpoint(self.block, features, positions, positions[:, s:s + chunk], idx[s:s + chunk],
                                     use_reentrant=False) for s in range(0, m, chunk)], 1)


def _point_layer_step(side: str, n: int) -> Callable[[], Any]:
    """One forward + backward of our ``PointConv`` (SMP kernel, 16 shared points, 32 -> 32 channels, k = 16 nearest,
    its own search: ``find_neighbors``' default) or of the peer (cKDTree search, then :class:`_SetAbstraction`)."""
    from .layers import PointConv

    torch.manual_seed(0)
    feats = torch.randn(1, n, POINT_SCALE_CHANNELS)
    pos = _unit_density_points(n)
    if side == 'ours':
        layer = PointConv(POINT_SCALE_CHANNELS, POINT_SCALE_CHANNELS, 'smp', dim=3, k=POINT_SCALE_K, n_points=16)

        def step():
            layer(feats, pos).square().mean().backward()
        return step
    from scipy.spatial import cKDTree

    peer = _SetAbstraction(POINT_SCALE_CHANNELS, POINT_SCALE_CHANNELS)
    workers = torch.get_num_threads()

    def step():
        pos64 = pos[0].double().numpy()
        idx = torch.from_numpy(cKDTree(pos64).query(pos64, POINT_SCALE_K, workers=workers)[1])
        peer(feats, pos, idx).square().mean().backward()
    return step


def _own_peak_rss_mb() -> float:
    """This process' peak resident memory (MB) since it started: ``VmHWM`` where /proc has it (``ru_maxrss`` also
    counts what the process held before an ``exec``, e.g. the parent a spawned child started from)."""
    try:
        with open('/proc/self/status') as f:
            return next(int(line.split()[1]) for line in f if line.startswith('VmHWM:')) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _point_layer_peak_child(side: str, n: int, queue) -> None:
    try:
        step = _point_layer_step(side, n)
        before = _own_peak_rss_mb()
        step()
        queue.put((before, _own_peak_rss_mb()))
    except Exception as e:  # reported in the row
        queue.put((f'{type(e).__name__}: {e}', None))


def _peak_rss_of_step(side: str, n: int) -> tuple[float, float]:
    """``(RSS after setup, peak RSS)`` in MB of one step of :func:`_point_layer_step` in a fresh process."""
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(target=_point_layer_peak_child, args=(side, n, queue))
    proc.start()
    before, peak = queue.get()
    proc.join()
    if peak is None:
        raise RuntimeError(f'{side} step at {n} points failed: {before}')
    return before, peak


def _point_conv_vs_set_abstraction(n: int, quick: bool) -> dict[str, Any]:
    """Forward + backward time of one point layer on ``n`` points, search included on both sides (ours: ``PointConv``
    with its default search; peer: cKDTree + a PointNet++-style set abstraction with the same k, channels and query
    chunks), and each side's peak RSS from a fresh process."""
    ours, peer = _point_layer_step('ours', n), _point_layer_step('peer', n)
    reps, warmup = (1, 0) if quick or n >= 1_000_000 else (3, 1)
    t_ours, t_peer = time_pair(ours, peer, reps, warmup)
    (ours_base, ours_peak), (peer_base, peer_peak) = _peak_rss_of_step('ours', n), _peak_rss_of_step('peer', n)
    return dict(ours_time=t_ours, peer_time=t_peer, batch=1, ours_peak_rss_mb=ours_peak, peer_peak_rss_mb=peer_peak,
                ours_setup_rss_mb=ours_base, peer_setup_rss_mb=peer_base,
                note=f'{n:,} points, F 32->32, k={POINT_SCALE_K}; ours: PointConv (SMP, 16 points); peer: cKDTree + '
                     f'PointNet++ set abstraction (MLP 35-32-32, max); peak RSS ours {ours_peak:,.0f} MB, peer '
                     f'{peer_peak:,.0f} MB (after setup {ours_base:,.0f} / {peer_base:,.0f})')


def _fps_subset_vs_fps(n: int, quick: bool, n_samples: int = 4096) -> dict[str, Any]:
    """Farthest-point sampling of ``n_samples`` of ``n`` points: on a grid pool of about 4 x ``n_samples`` points
    (``subset=``, ``sampling='fps_subset'`` in the models) vs the exact sampler (the default), with each sample's
    covering radius (the largest distance from a point to its nearest sample: lower is better) and the time of one
    kNN search (k = 16) on the same points for scale."""
    from scipy.spatial import cKDTree

    from .layers import farthest_point_sample, find_neighbors

    pos = _unit_density_points(n)
    subset = 4 * n_samples

    def ours():
        return farthest_point_sample(pos, n_samples, subset=subset)

    def peer():
        return farthest_point_sample(pos, n_samples)

    t_ours, t_peer = time_pair(ours, peer, 1, 0)
    knn_s = _timed(lambda: find_neighbors(pos, pos, POINT_SCALE_K))
    x = pos[0].double().numpy()

    def cover(idx):
        return float(cKDTree(x[idx[0].numpy()]).query(x)[0].max())

    cover_ours, cover_peer = cover(ours()), cover(peer())
    return dict(ours_time=t_ours, peer_time=t_peer, batch=1, covering_radius_ours=cover_ours,
                covering_radius_peer=cover_peer, knn_s=knn_s,
                note=f'{n_samples} of {n:,} points (uniform, unit density); ours: FPS on a grid pool of {subset:,}, '
                     f'peer: exact FPS; covering radius {cover_ours:.2f} vs {cover_peer:.2f}; one kNN search on '
                     f'these points {knn_s:.2f} s')


POINT_SCALE_ROWS: dict[str, Callable[[bool], dict[str, Any]]] = {
    'knn_vs_ckdtree_10k': functools.partial(_knn_vs_kdtree, 10_000),
    'knn_vs_ckdtree_100k': functools.partial(_knn_vs_kdtree, 100_000),
    'knn_vs_ckdtree_1m': functools.partial(_knn_vs_kdtree, 1_000_000),
    'point_conv_vs_set_abstraction_10k': functools.partial(_point_conv_vs_set_abstraction, 10_000),
    'point_conv_vs_set_abstraction_100k': functools.partial(_point_conv_vs_set_abstraction, 100_000),
    'point_conv_vs_set_abstraction_1m': functools.partial(_point_conv_vs_set_abstraction, 1_000_000),
    'fps_subset_vs_fps_100k': functools.partial(_fps_subset_vs_fps, 100_000),
    'fps_subset_vs_fps_1m': functools.partial(_fps_subset_vs_fps, 1_000_000),
}


def _reps(quick: bool, full: int) -> tuple[int, int]:
    return (3, 1) if quick else (full, 2)


ROWS: dict[str, Callable[[bool], dict[str, Any]]] = {
    'smpconv_t_infer_vs_convnext_tiny': _row_infer,
    'smpconv_t_train_vs_convnext_tiny': _row_train,
    'smpconv_t_eval_cached_vs_reparam': _row_cached,
    'cifar_train_vs_mlp_kernel': _row_cifar,
    'tcn_mnist_train_fft_vs_direct': _row_tcn,
    'tcn_mnist_onnxruntime_vs_pytorch': _row_onnx_tcn,
    'smpconv_t_compiled_train_vs_convnext_tiny': _row_compiled_train,
    'irregular_tcn_train_smp_vs_mlp': _row_irregular,
    'points_train_smp_vs_mlp': _row_points,
    'point_conv_scaling': _row_point_scaling,
    **POINT_SCALE_ROWS,
}

TARGETS = {
    'smpconv_t_infer_vs_convnext_tiny': 1.0, 'smpconv_t_train_vs_convnext_tiny': 0.75,
    'smpconv_t_eval_cached_vs_reparam': 0.9, 'cifar_train_vs_mlp_kernel': 2.5, 'tcn_mnist_train_fft_vs_direct': 3.0,
    'tcn_mnist_onnxruntime_vs_pytorch': 0.5, 'smpconv_t_compiled_train_vs_convnext_tiny': 0.75,
    'irregular_tcn_train_smp_vs_mlp': 0.9, 'points_train_smp_vs_mlp': 1.0,
    # issue 18: kNN within 4x of cKDTree; the point layer rows have absolute targets (BENCHMARKS.md), no ratio target
    'knn_vs_ckdtree_10k': 0.25, 'knn_vs_ckdtree_100k': 0.25, 'knn_vs_ckdtree_1m': 0.25,
}


def _child(name: str, quick: bool, queue) -> None:
    try:
        result = ROWS[name](quick)
        result['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        queue.put(result)
    except Exception as e:  # reported as the row's error
        queue.put({'error': f'{type(e).__name__}: {e}'})


def run_bench(rows: list[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """Run the rows (each in a fresh process) and return ``{'machine': ..., 'rows': [...]}``."""
    names = rows or list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise ValueError(f'unknown rows {unknown}; available: {", ".join(ROWS)}')
    ctx = mp.get_context('spawn')
    results = []
    for name in names:
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(name, quick, queue))
        proc.start()
        result = queue.get()
        proc.join()
        result = {'name': name, **result}
        if 'ours_time' in result:
            result['ratio'] = result['peer_time'] / result['ours_time']
            result['target'] = TARGETS.get(name)
            if result.get('ours_gmacs'):
                result['ours_gmacs_per_s'] = result['ours_gmacs'] * result['batch'] / result['ours_time']
            if result.get('peer_gmacs'):
                result['peer_gmacs_per_s'] = result['peer_gmacs'] * result['batch'] / result['peer_time']
        results.append(result)
        _logger.info('%s: %s', name, {k: v for k, v in result.items() if k != 'name'})
    machine = {
        'platform': platform.platform(), 'processor': platform.processor() or platform.machine(),
        'cpus': os.cpu_count(), 'torch': torch.__version__, 'threads': torch.get_num_threads(),
        'matmul_fp32_gflops': matmul_gflops(),
    }
    return {'machine': machine, 'quick': quick, 'rows': results}


def format_table(report: dict[str, Any]) -> str:
    lines = [f"machine: {report['machine']['processor']}, {report['machine']['cpus']} CPUs, torch "
             f"{report['machine']['torch']}, fp32 matmul {report['machine']['matmul_fp32_gflops']:.1f} GFLOP/s", '',
             '| row | ours (s) | peer (s) | ratio peer/ours | target | peak RSS (MB) | note |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    for r in report['rows']:
        if 'error' in r:
            lines.append(f"| {r['name']} | error: {r['error']} | | | | | |")
            continue
        if 'scaling' in r:
            continue
        note = r.get('note', '')
        if r.get('ours_gmacs_per_s'):
            note += f"; ours {r['ours_gmacs_per_s']:.1f} GMAC/s, peer {r.get('peer_gmacs_per_s', 0):.1f} GMAC/s"
        target = '-' if r['target'] is None else f">= {r['target']}"
        lines.append(f"| {r['name']} | {r['ours_time']:.4f} | {r['peer_time']:.4f} | {r['ratio']:.2f} | "
                     f"{target} | {r['peak_rss_mb']:.0f} | {note} |")
    for r in report['rows']:
        if 'scaling' in r:
            lines += ['', f"{r['name']} ({r['note']}; RSS before: {r['base_rss_mb']:.0f} MB):", '',
                      '| points | search (s) | forward + backward (s) | points / s | peak RSS (MB) |',
                      '| --- | --- | --- | --- | --- |']
            lines += [f"| {s['n']:,} | {s['search_s']:.3f} | {s['fwd_bwd_s']:.3f} | {s['points_per_s']:,.0f} | "
                      f"{s['peak_rss_mb']:.0f} |" for s in r['scaling']]
    return '\n'.join(lines) + '\n'


def plot_ratios(report: dict[str, Any], path: str | os.PathLike) -> Path:
    import matplotlib

    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    rows = [r for r in report['rows'] if 'ratio' in r]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.2))
    names = [r['name'] for r in rows]
    ax.barh(names, [r['ratio'] for r in rows], color=['tab:grey' if r['target'] is None else 'tab:green'
                                                       if r['ratio'] >= r['target'] else 'tab:red' for r in rows])
    targeted = [r for r in rows if r['target'] is not None]
    ax.scatter([r['target'] for r in targeted], [r['name'] for r in targeted], marker='|', s=300, c='k',
               label='target')
    ax.axvline(1.0, color='grey', lw=0.8, ls='--')
    ax.set_xlabel('peer time / our time (> 1: we are faster)')
    ax.legend(loc='lower right')
    from .viz import save_figure

    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------------------ profile

_OP_GROUPS = (('matmul / conv', ('mm', 'addmm', 'bmm', 'linear', 'convolution', 'mkldnn')),
              ('batch norm', ('batch_norm',)), ('fft', ('fft',)), ('activations', ('gelu', 'relu', 'threshold',
                                                                                    'clamp')))


def _op_breakdown(fn: Callable[[], Any]) -> dict[str, float]:
    """Share of self CPU time per op group in one call of ``fn`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

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
    from .layers.conv import _DepthwiseSameConv, fft_same_conv

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
        medians = _alternating_medians(steps, reps)
        rows.append({'shape': f'{k}x{k} on [8, {c}, {h}, {h}]', **{f'{p}_ms': 1e3 * t for p, t in medians.items()}})
    return rows


def _mix_step(fn: Callable, xf: torch.Tensor, wf: torch.Tensor, grad: torch.Tensor) -> None:
    torch.autograd.backward(fn(xf, wf), grad)


def _channel_mixing(reps: int) -> list[dict[str, Any]]:
    """fwd+bwd ms of the frequency-domain channel mixing at smpconv_cifar's widest and smpconv_tcn_mnist's shapes
    (batch 64): ``torch.matmul`` on permuted spectrum views vs :func:`~smpconv_models.layers.conv.mix_channels_fft`
    (contiguous ``[F, B, C]`` operands and gradient), alternating medians."""
    from .layers.conv import mix_channels_fft

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
        ms = {f'{k}_ms': 1e3 * t for k, t in _alternating_medians(calls, reps).items()}
        rows.append({'shape': label, **ms, 'speedup': ms['permuted_matmul_ms'] / ms['mix_channels_fft_ms']})
    return rows


def _cifar_kernel_generation(reps: int) -> dict[str, dict[str, float]]:
    """The ``cifar_train_vs_mlp_kernel`` setting split up: ms of a whole training step and of generating every
    kernel with its backward, for SMP points and for MAGNet, alternating medians. Everything else (the convolutions)
    is shared, which bounds the row's ratio: ``bound`` is the peer's step over the peer's step without its kernels."""
    from .layers import SMPConv

    setting = _cifar_setting()
    calls: dict[str, Callable[[], Any]] = {}
    for name, (net, step) in setting.items():
        calls[f'{name}_step'] = step
        layers = [m for m in net.modules() if isinstance(m, (SMPConv, _MLPKernelConv))]

        def kernels(layers=layers):
            outs = [layer.generate_kernel() for layer in layers]
            torch.autograd.backward(outs, [torch.ones_like(k) for k in outs])
        calls[f'{name}_kernels'] = kernels
    ms = {k: 1e3 * t for k, t in _alternating_medians(calls, reps).items()}
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
    import timm

    from . import models  # noqa: F401
    from .layers import smp_param_groups

    torch.manual_seed(0)
    x = torch.randn(8, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (8,))
    model = timm.create_model('smpconv_t', drop_path_rate=0.1).to(memory_format=torch.channels_last).train()
    step = _train_step(model, x, y, torch.optim.AdamW(smp_param_groups(model, 0.05, lr=1e-4), lr=1e-4))
    deployed = timm.utils.reparameterize_model(calibrate_bn_(model, x)).to(memory_format=torch.channels_last)

    def infer():
        with torch.inference_mode():
            deployed(x)

    return {'train_step_percent': _op_breakdown(step), 'inference_percent': _op_breakdown(infer),
            'depthwise_fwd_bwd': _depthwise_paths(3 if quick else 7),
            'channel_mixing_fwd_bwd': _channel_mixing(3 if quick else 7),
            'cifar_train_kernel_generation': _cifar_kernel_generation(3 if quick else 7)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m smpconv_models.bench', description=__doc__.split('\n\n')[0])
    parser.add_argument('--json', default=None, help='write the report as JSON here')
    parser.add_argument('--plot', default=None, help='write a PNG of the ratios here')
    parser.add_argument('--quick', action='store_true', help='fewer repetitions (a smoke run, noisier)')
    parser.add_argument('--rows', nargs='*', default=None, help=f'subset of rows: {", ".join(ROWS)}')
    parser.add_argument('--onnx-methods', action='store_true',
                        help='instead of the rows: onnxruntime time of every family per FFT export method')
    parser.add_argument('--profile', action='store_true',
                        help='instead of the rows: where smpconv_t spends its time (op groups, depthwise paths)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    if args.onnx_methods or args.profile:
        report = {'onnx_fft_methods': onnx_fft_methods(args.quick)} if args.onnx_methods else run_profile(args.quick)
        sys.stdout.write(json.dumps(report, indent=1) + '\n')
        if args.json:
            write_json_atomic(args.json, report)
        return 0
    try:
        report = run_bench(args.rows, args.quick)
    except ValueError as e:
        _logger.error('error: %s', e)
        return 2
    report['command'] = ' '.join(['python -m smpconv_models.bench', *(argv if argv is not None else sys.argv[1:])])
    sys.stdout.write(format_table(report))
    if args.json:
        write_json_atomic(args.json, report)
    if args.plot:
        plot_ratios(report, args.plot)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
