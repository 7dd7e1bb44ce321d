"""Demo: build a small SMP network, check it against the dense convolution it defines, reparameterize it.

``python -m smpconv_models.demo`` runs in seconds on a CPU and needs no data or downloads. It builds a stack of
SMPConv-T-style large-kernel blocks (SMP depthwise 13x13 + 5x5 branches, each with BatchNorm), gives the
BatchNorms random statistics, and reports:

* the parameter count of the SMP kernels against dense kernels of the same size;
* that ``timm.utils.reparameterize_model`` turns every block into one plain ``nn.Conv2d`` with the same eval
  output (max relative error);
* that the reparameterized model saves and loads as safetensors.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .layers import SMPDepthwiseConv2d, SMPLargeKernelConv2d


def build_demo_net(channels: int = 16, kernel_sizes: tuple[int, ...] = (13, 11), deploy: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1)]
    for k in kernel_sizes:
        layers += [SMPLargeKernelConv2d(channels, k, small_kernel_size=5, deploy=deploy), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)]
    return nn.Sequential(*layers)


@torch.no_grad()
def run_demo(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = build_demo_net()
    for m in model.modules():  # random BN statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    ref = model(x)
    smp_params = sum(p.numel() for m in model.modules() if isinstance(m, SMPDepthwiseConv2d) for p in m.parameters())
    dense_params = sum(
        m.channels * m.kernel_size[0] * m.kernel_size[1] for m in model.modules() if isinstance(m, SMPDepthwiseConv2d))
    deployed = timm.utils.reparameterize_model(model)
    out = deployed(x)
    rel = ((out - ref).abs().max() / ref.abs().max()).item()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'deploy.safetensors'
        save_file(deployed.state_dict(), str(path))
        loaded = build_demo_net(deploy=True).eval()
        loaded.load_state_dict(load_file(str(path)))
        rel_loaded = ((loaded(x) - ref).abs().max() / ref.abs().max()).item()
    return {
        'smp_kernel_params': smp_params,
        'dense_kernel_params_same_size': dense_params,
        'reparameterized_max_rel_error': rel,
        'reloaded_max_rel_error': rel_loaded,
        'deploy_modules': sorted({type(m).__name__ for m in deployed.modules() if not list(m.children())}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', action='store_true', help='print one JSON object instead of a summary')
    args = parser.parse_args(argv)
    result = run_demo(args.seed)
    if args.json:
        sys.stdout.write(json.dumps(result) + '\n')
    else:
        sys.stdout.write(
            f"SMP kernel parameters: {result['smp_kernel_params']} "
            f"(dense kernels of the same sizes: {result['dense_kernel_params_same_size']})\n"
            f"reparameterized eval output, max relative error: {result['reparameterized_max_rel_error']:.2e}\n"
            f"deploy model reloaded from safetensors, max relative error: {result['reloaded_max_rel_error']:.2e}\n"
            f"deploy model leaf layers: {', '.join(result['deploy_modules'])}\n")
    ok = result['reparameterized_max_rel_error'] <= 1e-5 and result['reloaded_max_rel_error'] <= 1e-5
    return 0 if ok else 1


if __name__ == '__main__':
    raise SystemExit(main())
