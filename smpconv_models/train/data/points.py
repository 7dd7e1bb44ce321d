"""scikit-learn's digits as 2-d point sets: pixel centres carrying their intensity, randomly thinned and jittered.

Every 8x8 image becomes the 64 pixel centres ``(x, y) = ((col - 3.5) / 3.5, (3.5 - row) / 3.5)`` (unit scale, y up,
the ``PointConv`` grid convention), of which a random 30-60% are kept, each moved by Gaussian jitter (0.15 of
the pixel spacing, clipped at 0.45); the feature is the normalised intensity. Sets are padded to the largest count
(38) with a mask. The draws are seeded (fixed, independent of the run seed), so the test sets are the same in every
run. The training split holds ``train_draws`` independent draws of each of its digits (default 4: a fixed
augmentation; with one draw a network memorises which pixels happen to be present instead of learning the digits),
the test split one.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .common import DataBundle, fixed_split

__all__ = ['digits_points', 'PointSetDataset', 'digits_point_sets']

KEEP_RANGE = (0.3, 0.6)
JITTER = 0.15  # standard deviation of the position jitter, in pixel spacings
POINTS_SEED = 1234


class PointSetDataset(Dataset):
    """Padded point sets: items ``({'features': [N, C], 'positions': [N, d], 'mask': [N]}, label)``."""

    def __init__(self, features: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
        if not (len(features) == len(positions) == len(mask) == len(labels)):
            raise ValueError('features, positions, mask and labels need one entry per set')
        self.features, self.positions, self.mask, self.labels = features, positions, mask, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return {'features': self.features[i], 'positions': self.positions[i], 'mask': self.mask[i]}, \
            int(self.labels[i])


def digits_point_sets(keep_range: tuple[float, float] = KEEP_RANGE, jitter: float = JITTER,
                      seed: int = POINTS_SEED) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features [S, N, 1], positions [S, N, 2], mask [S, N], labels [S])`` for all 1,797 digits (intensities
    in [0, 1], not yet normalised); ``N = round(64 * keep_range[1])``."""
    from sklearn.datasets import load_digits

    lo, hi = keep_range
    if not 0 < lo <= hi <= 1:
        raise ValueError(f'keep_range must satisfy 0 < lo <= hi <= 1, got {keep_range}')
    d = load_digits()
    pixels = torch.tensor(d.data, dtype=torch.float32) / 16.0  # [S, 64], row-major
    labels = torch.tensor(d.target, dtype=torch.long)
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing='ij')
    centres = torch.stack([(cols - 3.5) / 3.5, (3.5 - rows) / 3.5], -1).reshape(64, 2)
    g = torch.Generator().manual_seed(seed)
    n_sets, n_max = len(labels), round(64 * hi)
    counts = torch.round(64 * (lo + (hi - lo) * torch.rand(n_sets, generator=g))).long().clamp(1, n_max)
    order = torch.rand(n_sets, 64, generator=g).argsort(-1)[:, :n_max]  # a random subset, in random order
    mask = torch.arange(n_max)[None] < counts[:, None]
    # jitter clipped to 0.45 spacings per axis, so every point stays closest to its own pixel centre
    positions = centres[order] + (torch.randn(n_sets, n_max, 2, generator=g) * jitter).clamp(-0.45, 0.45) * (2 / 7)
    features = pixels.gather(1, order).unsqueeze(-1)
    positions = positions * mask.unsqueeze(-1)
    features = features * mask.unsqueeze(-1)
    return features, positions, mask, labels


def digits_points(model_kind: str, test_fraction: float, train_draws: int = 4) -> DataBundle:
    """The ``digits-points[:DRAWS]`` spec: point sets for a ``'points'`` model (``smpconv_points``), a fixed split
    (the digits' one), ``train_draws`` draws per training digit."""
    if model_kind != 'points':
        raise ValueError("digits-points holds 2-d point sets; train a point-set model (smpconv_points)")
    if train_draws < 1:
        raise ValueError(f'digits-points needs at least one draw per training digit, got {train_draws}')
    draws = [digits_point_sets(seed=POINTS_SEED + r) for r in range(train_draws)]
    features, _, mask, labels = draws[0]
    real = features[mask]
    mean, std = real.mean().item(), real.std().item()
    train_idx, test_idx = fixed_split(len(labels), test_fraction, seed=1234)

    def subset(draw, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f, p, m, y = draw
        return ((f[idx] - mean) / std) * m[idx].unsqueeze(-1), p[idx], m[idx], y[idx]

    train = [subset(d, train_idx) for d in draws]
    train_set = PointSetDataset(*(torch.cat([t[i] for t in train]) for i in range(4)))
    test_set = PointSetDataset(*subset(draws[0], test_idx))
    return DataBundle(train_set, test_set, 10, 1, 'points', features.shape[1], 'digits-points', (mean,), (std,),
                      model_args={'dim': 2})
