"""Normalisation and pooling over the real entries of padded data: point sets (``[B, M, C]`` with a ``[B, M]``
mask) and irregular or left-padded series (``[B, C, L]`` with a ``[B, L]`` mask); ``True`` marks a real point /
observed step."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import register_notrace_function
from torch import Tensor

__all__ = ['masked_batch_norm', 'MaskedBatchNorm1d', 'masked_pool', 'MASKED_POOLS']

MASKED_POOLS = ('avg', 'max', 'avgmax', 'last')


def masked_batch_norm(x: Tensor, mask: Tensor | None, bn: nn.modules.batchnorm._BatchNorm,
                      channel_dim: int = 1) -> Tensor:
    """``bn`` over the channels (``channel_dim``) of ``x`` whose training statistics count only the entries where
    ``mask`` (``x``'s shape without the channel axis, bool) is True.

    In training (or without running statistics) the batch mean and biased variance are taken over the real entries
    and the running statistics are updated as :class:`torch.nn.BatchNorm1d` does (unbiased variance; ``momentum``,
    or a cumulative average when it is ``None``); with every entry real this is ``bn(x)``. Half-precision ``x`` is
    normalised in fp32 and returned in its dtype. In eval the running
    statistics apply pointwise, so the mask does not matter. ``mask=None`` is plain ``bn``.
    """
    ch = channel_dim % x.dim()
    if mask is None or (not bn.training and bn.running_mean is not None):
        if ch == x.dim() - 1 and x.dim() > 2:  # BatchNorm1d takes [N, C] or [N, C, L]: channels last as rows
            return bn(x.reshape(-1, x.shape[-1])).view_as(x)
        return bn(x)
    dtype = x.dtype
    if dtype == torch.float16 or dtype == torch.bfloat16:  # statistics in fp32, as PyTorch's batch_norm keeps them
        x = x.float()
    dims = [d for d in range(x.dim()) if d != ch]
    shape = [1] * x.dim()
    shape[ch] = -1
    w = mask.unsqueeze(ch).to(x.dtype)
    n = w.sum().clamp_min(1.0)
    mean = (x * w).sum(dims) / n
    centred = x - mean.view(shape)
    var = (centred.square() * w).sum(dims) / n
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = (1.0 / bn.num_batches_tracked.to(x.dtype)) if bn.momentum is None else bn.momentum
            unbiased = var * n / (n - 1).clamp_min(1)
            bn.running_mean.mul_(1 - factor).add_(factor * mean.to(bn.running_mean.dtype))
            bn.running_var.mul_(1 - factor).add_(factor * unbiased.to(bn.running_var.dtype))
    y = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y.to(dtype)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over the channels of ``[B, M, C]`` point features whose training statistics count real points only
    (:func:`masked_batch_norm`); eval uses the running statistics as usual."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None or not (self.training or self.running_mean is None):
            return super().forward(x.reshape(-1, x.shape[-1])).view_as(x)
        return masked_batch_norm(x, mask, self, channel_dim=-1)


@register_notrace_function  # a torch.fx leaf: the optional mask is control flow
def masked_pool(x: Tensor, mask: Tensor | None, pool_type: str, dim: int) -> Tensor:
    """Pool a 3-d ``x`` (``[B, C, L]`` over ``dim=-1`` or ``[B, M, C]`` over ``dim=1``) over the real entries of
    ``mask`` (``[B, L]`` / ``[B, M]``; ``None``: all real): ``'avg'``, ``'max'``, ``'avgmax'`` (both, concatenated
    along the channels) or ``'last'`` (the last real entry). A row without real entries gives 0 (avg), -inf (max)
    or the entry at index 0 (last)."""
    d = dim % 3
    if pool_type == 'last':
        seq = x if d == 2 else x.transpose(1, 2)  # [B, C, L]
        if mask is None:
            return seq[:, :, -1]
        steps = torch.arange(mask.shape[1], device=mask.device)
        last = torch.where(mask, steps, -1).amax(1).clamp_min(0)
        return seq.gather(2, last.view(-1, 1, 1).expand(-1, seq.shape[1], 1)).squeeze(2)
    if pool_type not in ('avg', 'max', 'avgmax'):
        raise ValueError("pool_type must be 'avg', 'max', 'avgmax' or 'last', got '" + pool_type + "'")
    if mask is None:
        avg, mx = x.mean(d), x.amax(d)
    else:
        w = mask.unsqueeze(3 - d)
        wf = w.to(x.dtype)
        avg = (x * wf).sum(d) / wf.sum(d).clamp_min(1)
        mx = x.masked_fill(~w, float('-inf')).amax(d)
    if pool_type == 'avg':
        return avg
    if pool_type == 'max':
        return mx
    return torch.cat([avg, mx], -1)
