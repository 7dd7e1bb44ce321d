"""The benchmark's machinery (not its timings): alternation and medians, the MAGNet peer, reports and errors."""
from __future__ import annotations

import json
import logging
import time

import pytest
import timm
import torch
import torch.nn.functional as F

import smpconv_models  # noqa: F401
from smpconv_models import bench
from smpconv_models.bench import cli, peers, timing
from smpconv_models.layers import MAGNetKernel, SMPConv


def test_time_pair_alternates_and_takes_medians(monkeypatch):
    clock, order = [0.0], []
    monkeypatch.setattr(time, 'perf_counter', lambda: clock[0])

    def fn(name, cost):
        def run():
            order.append(name)
            clock[0] += cost.pop(0) if isinstance(cost, list) else cost
        return run

    ours = fn('ours', [9.0, 1.0, 2.0, 3.0, 100.0])  # first one is the warm-up
    t_ours, t_peer = bench.time_pair(ours, fn('peer', 5.0), reps=4, warmup=1)
    assert order == ['ours', 'peer', 'ours', 'peer', 'peer', 'ours', 'ours', 'peer', 'peer', 'ours']
    assert (t_ours, t_peer) == (2.5, 5.0)  # median of 1, 2, 3, 100


def test_alternating_medians(monkeypatch):
    clock, order = [0.0], []
    monkeypatch.setattr(time, 'perf_counter', lambda: clock[0])
    costs = {'a': [7.0, 1.0, 5.0, 3.0], 'b': [7.0, 2.0, 2.0, 9.0], 'c': [7.0, 4.0, 4.0, 4.0]}

    def call(key):
        def run():
            order.append(key)
            clock[0] += costs[key].pop(0)
        return run

    medians = timing.alternating_medians({k: call(k) for k in costs}, reps=3)
    assert order == ['a', 'b', 'c', 'a', 'b', 'c', 'c', 'b', 'a', 'a', 'b', 'c']
    assert medians == {'a': 3.0, 'b': 2.0, 'c': 4.0}


def test_magnet_peer_replaces_every_smp_conv_with_same_convolution():
    torch.manual_seed(0)
    net = timm.create_model('smpconv_cifar', widths=(8,), stem_width=8, kernel_size=9)
    n_smp = sum(isinstance(m, SMPConv) for m in net.modules())
    bench.use_mlp_kernels(net)
    layers = [m for m in net.modules() if isinstance(m, peers.MLPKernelConv)]
    assert n_smp >= 2 and len(layers) == n_smp and not any(isinstance(m, SMPConv) for m in net.modules())
    layer = layers[-1]
    x = torch.randn(2, layer.in_channels, 12, 12)
    k = layer.generate_kernel()
    assert k.shape == (layer.out_channels, layer.in_channels, 9, 9)
    torch.testing.assert_close(layer(x), F.conv2d(x, k, layer.bias, padding=4), rtol=1e-4, atol=1e-5)


def test_magnet_layers_follow_their_formula():
    torch.manual_seed(0)
    net = MAGNetKernel(2, out_features=6, hidden=4, layers=2)
    x = torch.rand(5, 2) * 2 - 1

    def gabor(g):
        return (torch.exp(-0.5 * (((x[:, None] - g.mu) * g.gamma) ** 2).sum(-1))
                * torch.sin(x @ g.linear.weight.t() + g.linear.bias))
    h = net.linears[0](gabor(net.filters[0])) * gabor(net.filters[1])
    torch.testing.assert_close(net(x), net.out(h))


REPORT = {'machine': {'processor': 'x86_64', 'cpus': 2, 'torch': '2.x', 'matmul_fp32_gflops': 100.0},
          'quick': True, 'rows': [
              {'name': 'tcn_mnist_train_fft_vs_direct', 'ours_time': 0.5, 'peer_time': 2.0, 'ratio': 4.0,
               'target': 3.0, 'peak_rss_mb': 100.0, 'note': 'n'},
              {'name': 'cifar_train_vs_mlp_kernel', 'error': 'RuntimeError: boom'}]}


def test_main_writes_json_and_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, 'run_bench', lambda rows, quick: json.loads(json.dumps(REPORT)))
    out = tmp_path / 'r.json'
    assert bench.main(['--json', str(out), '--quick']) == 0
    saved = json.loads(out.read_text())
    assert saved['rows'] == REPORT['rows']
    assert saved['command'] == f'python -m smpconv_models.bench --json {out} --quick'
    table = capsys.readouterr().out
    assert '| tcn_mnist_train_fft_vs_direct | 0.5000 | 2.0000 | 4.00 | >= 3.0 | 100 | n |' in table
    assert '| cifar_train_vs_mlp_kernel | error: RuntimeError: boom |' in table


def test_unknown_row_is_a_clear_error(caplog):
    with pytest.raises(ValueError, match="unknown rows \\['resnet'\\]"):
        bench.run_bench(['resnet'])
    with caplog.at_level(logging.ERROR):
        assert bench.main(['--rows', 'resnet']) == 2
    assert 'unknown rows' in caplog.text and 'smpconv_t_infer_vs_convnext_tiny' in caplog.text


def test_deployment_rows_have_targets_and_main_accepts_onnx_methods(monkeypatch, capsys):
    for name in ('tcn_mnist_onnxruntime_vs_pytorch', 'smpconv_t_compiled_train_vs_convnext_tiny'):
        assert name in bench.ROWS and bench.TARGETS[name] > 0
    rows = [{'model': 'smpconv_cifar', 'input': [3, 32, 32], 'pytorch_ms': 2.0, 'matmul_ms': 1.0}]
    monkeypatch.setattr(cli, 'onnx_fft_methods', lambda quick: rows)
    assert bench.main(['--onnx-methods', '--quick']) == 0
    assert json.loads(capsys.readouterr().out) == {'onnx_fft_methods': rows}


def test_set_abstraction_peer_is_chunked_like_point_conv():
    """The point-layer rows' peer: max over neighbours of an MLP on [f_j, p_j - p_i]; its query chunks (recomputed
    in backward) give the same outputs and gradients as one pass."""
    torch.manual_seed(0)
    peer = peers.SetAbstraction(4, 5).double()
    feats, pos = torch.randn(1, 30, 4, dtype=torch.float64), torch.rand(1, 30, 3, dtype=torch.float64)
    idx = torch.randint(0, 30, (30, 6))
    expected = torch.stack([peer.mlp(torch.cat([feats[0, idx[i]], pos[0, idx[i]] - pos[0, i]], -1)).amax(0)
                            for i in range(30)])[None]
    whole = peer(feats, pos, idx)
    torch.testing.assert_close(whole, expected)
    grads = torch.autograd.grad(whole.square().sum(), list(peer.parameters()))
    peer.gather_block = 6 * 7  # chunks of 7 queries
    chunked = peer(feats, pos, idx)
    torch.testing.assert_close(chunked, expected)
    for a, b in zip(torch.autograd.grad(chunked.square().sum(), list(peer.parameters())), grads):
        torch.testing.assert_close(a, b)


def test_table_shows_rows_without_a_ratio_target():
    report = {'machine': {'processor': 'cpu', 'cpus': 2, 'torch': '2', 'matmul_fp32_gflops': 1.0},
              'rows': [{'name': 'a', 'ours_time': 1.0, 'peer_time': 2.0, 'ratio': 2.0, 'target': None,
                        'peak_rss_mb': 10.0, 'note': 'n'},
                       {'name': 'b', 'ours_time': 1.0, 'peer_time': 0.5, 'ratio': 0.5, 'target': 0.25,
                        'peak_rss_mb': 10.0, 'note': 'm'}]}
    table = bench.format_table(report)
    assert '| a | 1.0000 | 2.0000 | 2.00 | - | 10 | n |' in table
    assert '| b | 1.0000 | 0.5000 | 0.50 | >= 0.25 |' in table
