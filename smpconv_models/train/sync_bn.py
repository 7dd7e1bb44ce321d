"""BatchNorm synchronised across processes on any device (PyTorch's SyncBatchNorm runs on GPUs only).

With N processes each holding a slice of the global batch, the statistics are those of the whole global batch, so
N processes train exactly as one process with the global batch would (the official ImageNet recipe uses SyncBN).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

__all__ = ['DistributedBatchNorm', 'convert_sync_batchnorm']


class DistributedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are reduced over the default process group (autograd-aware).

    Two all-reduces per call: ``[sum(x), count]`` for the mean, then ``sum((x - mean)^2)`` for the biased variance.
    Gradients flow through both (``torch.distributed.nn.functional.all_reduce``). Eval mode uses running statistics.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f'expected at least 2-d input, got {input.dim()}-d')

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.full((1,), x.numel() / x.shape[1], dtype=torch.float32, device=x.device)
        total = all_reduce(torch.cat([xf.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centered = xf - mean.reshape(shape)
        var = all_reduce(centered.square().sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * n / (n - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        y = centered * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm with a synchronised one: ``nn.SyncBatchNorm`` on CUDA, :class:`DistributedBatchNorm`
    elsewhere (CPU / gloo). Parameters and running statistics are carried over."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, (nn.SyncBatchNorm, DistributedBatchNorm)):
        on_cuda = module.running_mean is not None and module.running_mean.is_cuda
        cls = nn.SyncBatchNorm if on_cuda else DistributedBatchNorm
        new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                new.weight.copy_(module.weight)
                new.bias.copy_(module.bias)
        if module.track_running_stats:
            new.running_mean.copy_(module.running_mean)
            new.running_var.copy_(module.running_var)
            new.num_batches_tracked.copy_(module.num_batches_tracked)
        new.to(module.weight.device if module.affine else module.running_mean.device)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module

