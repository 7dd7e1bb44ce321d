"""Irregularly sampled series from any sequence dataset: observations dropped at random per series.

The protocol of Kidger et al. (NeurIPS 2020, Neural CDEs) that CKConv and FlexConv follow on Character
Trajectories: each series loses ``int(n * missing_rate)`` of its ``n`` observed steps, chosen uniformly without
replacement by a generator with a fixed seed (so every run and every model sees the same series; the rates used in
the papers are 0.3, 0.5 and 0.7), and the remaining steps keep their original times ``0, 1, ...`` (integer
timestamps in grid steps). Steps that are already missing (a NaN / infinite value in any channel, or ``mask=False``
in a dict item, e.g. the left padding of the ``ts:`` / ``npz:`` sources' unequal-length series) stay missing and are
not counted.

Items become ``({'values': [C, L'], 'timestamps': [L'], 'mask': [L']}, label)``: the kept observations in time
order, padded to the longest kept series of the dataset with ``mask=False`` (and zero values / timestamps), the
keyword arguments of :class:`~smpconv_models.models.smpconv_irregular.SMPConvIrregularTCN`.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .common import DataBundle

__all__ = ['IrregularSeries', 'drop_observations', 'to_irregular', 'MISSING_SEED']

MISSING_SEED = 56789  # the fixed generator seed of the dropping (independent of the run's --seed)


class IrregularSeries(Dataset):
    """``(dict(values, timestamps, mask), label)`` items from stacked ``values [N, C, L]``, ``timestamps [N, L]``,
    ``mask [N, L]`` and ``labels [N]``."""

    def __init__(self, values: Tensor, timestamps: Tensor, mask: Tensor, labels: Tensor):
        if not (len(values) == len(timestamps) == len(mask) == len(labels)):
            raise ValueError('values, timestamps, mask and labels must hold the same number of series')
        self.values, self.timestamps, self.mask, self.labels = values, timestamps, mask, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor]:
        return {'values': self.values[i], 'timestamps': self.timestamps[i], 'mask': self.mask[i]}, self.labels[i]


def _series(item) -> tuple[Tensor, Tensor, Tensor]:
    """``(values [C, L], timestamps [L], observed [L])`` of one dataset item's inputs (a tensor or a dict)."""
    if isinstance(item, dict):  # ours ('values') or the sequence sources' padded series ('x' with a 'mask')
        key = 'values' if 'values' in item else 'x'
        if key not in item:
            raise ValueError(f"dict inputs need a 'values' or 'x' entry to drop observations from, got {sorted(item)}")
        values = torch.as_tensor(item[key])
        length = values.shape[-1]
        timestamps = torch.as_tensor(item['timestamps']) if 'timestamps' in item else None
        observed = torch.as_tensor(item['mask']).bool() if 'mask' in item else torch.ones(length, dtype=torch.bool)
    else:
        values = torch.as_tensor(item)
        length = values.shape[-1]
        timestamps, observed = None, torch.ones(length, dtype=torch.bool)
    if values.dim() != 2:
        raise ValueError(f'sequence items must be [C, L] to drop observations from, got {tuple(values.shape)}')
    if timestamps is None:
        timestamps = torch.arange(length, dtype=torch.float32)
    if timestamps.shape != (length,) or observed.shape != (length,):
        raise ValueError(f'timestamps / mask of an item must be [L] = [{length}], got {tuple(timestamps.shape)} and '
                         f'{tuple(observed.shape)}')
    observed = observed & values.isfinite().all(0)
    return values.float(), timestamps.float(), observed


def drop_observations(dataset: Dataset, missing_rate: float, seed: int = MISSING_SEED) -> IrregularSeries:
    """Every series of ``dataset`` (items ``(inputs, label)``, inputs ``[C, L]`` or a dict with ``values`` and
    optionally ``timestamps`` / ``mask``) with ``int(n * missing_rate)`` of its ``n`` observed steps dropped at random
    (series in dataset order, one seeded generator)."""
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(f'missing_rate must be in [0, 1), got {missing_rate}')
    generator = torch.Generator().manual_seed(seed)
    kept, labels = [], []
    for i in range(len(dataset)):
        inputs, label = dataset[i]
        values, timestamps, observed = _series(inputs)
        steps = observed.nonzero().squeeze(1)
        n_drop = int(len(steps) * missing_rate)
        if n_drop:
            keep = torch.randperm(len(steps), generator=generator)[n_drop:].sort().values
            steps = steps[keep]
        if len(steps) == 0:
            raise ValueError(f'series {i} has no observed step left')
        kept.append((values[:, steps], timestamps[steps]))
        labels.append(torch.as_tensor(label))
    if not kept:
        raise ValueError('the dataset holds no series')
    chans = {v.shape[0] for v, _ in kept}
    if len(chans) != 1:
        raise ValueError(f'series have different channel counts {sorted(chans)}')
    longest = max(v.shape[1] for v, _ in kept)
    values = torch.zeros(len(kept), chans.pop(), longest)
    times = torch.zeros(len(kept), longest)
    mask = torch.zeros(len(kept), longest, dtype=torch.bool)
    for i, (v, t) in enumerate(kept):
        values[i, :, :v.shape[1]], times[i, :len(t)], mask[i, :len(t)] = v, t, True
    return IrregularSeries(values, times, mask, torch.stack(labels))


def to_irregular(bundle: DataBundle, missing_rate: float, seed: int = MISSING_SEED) -> DataBundle:
    """A sequence :class:`DataBundle` as irregular series (kind ``'irregular'``): :func:`drop_observations` on both
    splits (one seed each, derived from ``seed``); the length stays the original one (the kernel's time span)."""
    if bundle.kind != 'sequence':
        raise ValueError(f'{bundle.name} holds {bundle.kind} data; observations can only be dropped from sequences')
    suffix = f'-missing{round(100 * missing_rate)}' if missing_rate else ''
    return DataBundle(drop_observations(bundle.train, missing_rate, seed),
                      drop_observations(bundle.test, missing_rate, seed + 1), bundle.num_classes, bundle.in_chans,
                      'irregular', bundle.length, bundle.name + suffix, bundle.mean, bundle.std,
                      dict(bundle.model_args))
