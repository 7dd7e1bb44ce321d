"""scikit-learn's 1,797 real 8x8 handwritten digits, shipped with the package: the default run needs no download."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .common import DataBundle, fixed_split

__all__ = ['digits']


def digits(kind: str, img_size: int | None, test_fraction: float) -> DataBundle:
    """64-step sequences (``kind='sequence'``) or 1-channel images, normalised; a fixed split (seed 1234)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    mean, std = x.mean().item(), x.std().item()
    x = (x - mean) / std
    train_idx, test_idx = fixed_split(len(x), test_fraction, seed=1234)  # independent of the run seed
    if kind == 'sequence':
        x = x.reshape(-1, 1, 64)
        length = 64
    else:
        x = x.reshape(-1, 1, 8, 8)
        length = img_size or 8
        if length != 8:
            x = F.interpolate(x, size=(length, length), mode='bilinear', align_corners=False)
    return DataBundle(TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[test_idx], y[test_idx]), 10, 1,
                      kind, length, 'digits', (mean,), (std,))
