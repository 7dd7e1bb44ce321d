"""What the sequence sources (``ts:``, ``npz:``, ``hf:``, ``speechcommands:``) share: left padding with a mask,
per-channel normalisation from the training split, the in-memory dataset and the seeded training augmentation."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .common import DataBundle

__all__ = ['pad_left', 'channel_stats', 'normalise', 'class_indices', 'sequences_bundle', 'SequenceSet',
           'SequenceAugment', 'parse_augment', 'AUGMENT_KEYS', 'standardise_series']


def pad_left(series: Sequence[np.ndarray], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``[C, L_i]`` series into ``[N, C, L]`` (NaN before each series) and a ``[N, L]`` mask of real steps.

    Left padding puts every series' last observation at the last step, where a causal model with
    ``global_pool='last'`` reads its output. ``length`` defaults to the longest series; longer series are an error.
    """
    if not len(series):
        raise ValueError('no series to pad')
    chans = {s.shape[0] for s in series}
    if len(chans) != 1:
        raise ValueError(f'series have different channel counts: {sorted(chans)}')
    lengths = np.array([s.shape[1] for s in series])
    length = int(lengths.max()) if length is None else int(length)
    if lengths.max() > length:
        raise ValueError(f'a series of {lengths.max()} steps does not fit the length {length}')
    out = np.full((len(series), chans.pop(), length), np.nan)
    mask = np.zeros((len(series), length), dtype=bool)
    for i, s in enumerate(series):
        if s.shape[1]:
            out[i, :, length - s.shape[1]:] = s
            mask[i, length - s.shape[1]:] = True
    return out, mask


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of ``[N, C, L]`` over every observed (non-NaN) value; a constant or
    empty channel gets std 1."""
    flat = np.moveaxis(np.asarray(x, dtype=np.float64), 1, 0).reshape(x.shape[1], -1)
    observed = ~np.isnan(flat)
    count = observed.sum(1)
    filled = np.where(observed, flat, 0.0)
    mean = filled.sum(1) / np.maximum(count, 1)
    var = np.where(observed, (flat - mean[:, None]) ** 2, 0.0).sum(1) / np.maximum(count, 1)
    std = np.sqrt(var)
    return mean, np.where(std > 1e-8, std, 1.0)


def normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """``(x - mean) / std`` per channel as float32; missing values and padding (NaN) become 0 (the mean)."""
    z = (np.asarray(x, dtype=np.float64) - mean[None, :, None]) / std[None, :, None]
    return torch.from_numpy(np.nan_to_num(z, nan=0.0).astype(np.float32))


def class_indices(y_train: np.ndarray, y_test: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer labels ``0..K-1`` stay as they are (K = max + 1); other labels (strings, arbitrary integers) map to
    their sorted order in the training split. A test label absent from training is an error."""
    y_train, y_test = np.asarray(y_train).reshape(-1), np.asarray(y_test).reshape(-1)
    if y_train.dtype.kind in 'iu' and y_test.dtype.kind in 'iu' and y_train.min() >= 0 and y_test.min() >= 0:
        return y_train.astype(np.int64), y_test.astype(np.int64), int(max(y_train.max(), y_test.max())) + 1
    if y_train.dtype.kind == 'f':
        raise ValueError(f'{source}: labels are floats; classification needs integer or string labels')
    classes = np.unique(y_train)
    unknown = np.setdiff1d(np.unique(y_test), classes)
    if len(unknown):
        raise ValueError(f'{source}: test labels not in the training split: {unknown[:5].tolist()}')
    return np.searchsorted(classes, y_train), np.searchsorted(classes, y_test), len(classes)


def sequences_bundle(train: list[np.ndarray], y_train: np.ndarray, test: list[np.ndarray], y_test: np.ndarray,
                     name: str, num_classes: int | None = None) -> DataBundle:
    """Left-pad ``[C, L_i]`` series (NaN = missing) to the longest of both splits, normalise per channel with the
    training split's statistics, and keep a ``[N, L]`` mask of real steps when the lengths differ. Labels go
    through :func:`class_indices`; ``num_classes`` (e.g. a header's class count) raises the class count."""
    y_train, y_test, n_cls = class_indices(y_train, y_test, name)
    n_cls = max(n_cls, num_classes or 0)
    length = max(max(s.shape[1] for s in train), max(s.shape[1] for s in test))
    x_train, mask_train = pad_left(train, length)
    x_test, mask_test = pad_left(test, length)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f'{name}: train has {x_train.shape[1]} channels but test has {x_test.shape[1]}')
    mean, std = channel_stats(x_train)
    variable = not (mask_train.all() and mask_test.all())
    sets = [SequenceSet(normalise(x, mean, std), torch.from_numpy(y), torch.from_numpy(m) if variable else None)
            for x, y, m in ((x_train, y_train, mask_train), (x_test, y_test, mask_test))]
    return DataBundle(sets[0], sets[1], n_cls, x_train.shape[1], 'sequence', length, name,
                      tuple(mean.tolist()), tuple(std.tolist()))


class SequenceSet(Dataset):
    """In-memory sequences: items ``(x, label)`` with ``x`` ``[C, L]``, or ``({'x': x, 'mask': mask}, label)``
    when a ``[N, L]`` mask of real steps is given (the training loop calls ``model(x=..., mask=...)``)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None):
        if x.dim() != 3 or len(x) != len(y) or (mask is not None and mask.shape != (x.shape[0], x.shape[2])):
            raise ValueError(f'expected x [N, C, L], y [N] and mask [N, L]; got {tuple(x.shape)}, {tuple(y.shape)}'
                             f'{"" if mask is None else ", " + str(tuple(mask.shape))}')
        self.x, self.y, self.mask = x, y.long(), mask

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if self.mask is None:
            return self.x[i], self.y[i]
        return {'x': self.x[i], 'mask': self.mask[i]}, self.y[i]


def standardise_series(dataset: Dataset, eps: float = 1e-8) -> SequenceSet:
    """Per-series z-normalisation (``--series-norm``): each series and channel of a :class:`SequenceSet` minus its
    mean, over its std, both over its real steps (the mask's); padding stays zero and a constant channel becomes 0.
    The UCR archives' convention; it removes each series' offset and scale, which a class may not depend on."""
    if not isinstance(dataset, SequenceSet):
        raise ValueError(f'per-series normalisation needs in-memory sequences (ts: / npz: / hf: data), got '
                         f'{type(dataset).__name__}')
    x = dataset.x.double()
    weights = torch.ones_like(x[:, :1]) if dataset.mask is None else dataset.mask[:, None].double()
    count = weights.sum(-1, keepdim=True).clamp(min=1.0)
    mean = (x * weights).sum(-1, keepdim=True) / count
    std = (((x - mean) * weights).square().sum(-1, keepdim=True) / count).sqrt()
    z = torch.where(std > eps, (x - mean) / std.clamp(min=eps), torch.zeros_like(x)) * weights
    return SequenceSet(z.to(dataset.x.dtype), dataset.y, dataset.mask)


# The augmentations of the small-data recipe, each a strength (0 disables it).
AUGMENT_KEYS = ('shift', 'scale', 'jitter', 'cutout')


def parse_augment(spec: str | None) -> dict[str, float]:
    """``'shift=0.1,scale=0.1,jitter=0.03,cutout=0.1'`` -> ``{'shift': 0.1, ...}``; ``None``, ``''`` or ``'none'``
    -> no augmentation. Unknown keys or bad numbers are an error naming them."""
    out = dict.fromkeys(AUGMENT_KEYS, 0.0)
    if not spec or spec.strip().lower() == 'none':
        return out
    for part in spec.split(','):
        key, sep, value = part.partition('=')
        key = key.strip().lower()
        if key not in out or not sep:
            raise ValueError(f'bad sequence augmentation {part!r} in {spec!r}: use KEY=VALUE with KEY in '
                             f'{", ".join(AUGMENT_KEYS)}')
        try:
            out[key] = float(value)
        except ValueError:
            raise ValueError(f'bad number {value!r} for {key} in sequence augmentation {spec!r}') from None
        if out[key] < 0:
            raise ValueError(f'sequence augmentation {key} must be >= 0, got {out[key]}')
    return out


class SequenceAugment(Dataset):
    """Training-split wrapper: random augmentation drawn from ``(seed, epoch, index)`` so a resumed run sees the
    batches of an uninterrupted one (the loop calls :meth:`set_epoch`, like :class:`EpochShuffleSampler`).

    ``shift``: delay by up to this fraction of the length (zeros enter at the start, the last steps drop: a random
    crop of the end for a causal model); ``scale``: multiply each channel by ``1 + scale * N(0, 1)``; ``jitter``:
    add ``jitter * N(0, 1)`` noise; ``cutout``: zero a random window of up to this fraction of the length. Padding
    (mask False) stays zero and the mask moves with the shift.
    """

    def __init__(self, base: Dataset, seed: int, shift: float = 0.0, scale: float = 0.0, jitter: float = 0.0,
                 cutout: float = 0.0):
        self.base, self.seed, self.epoch = base, seed, 0
        self.shift, self.scale, self.jitter, self.cutout = shift, scale, jitter, cutout

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        inputs, label = self.base[i]
        x = inputs['x'] if isinstance(inputs, dict) else inputs
        mask = inputs.get('mask') if isinstance(inputs, dict) else None
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
        chans, length = x.shape
        x = x.clone()
        if self.shift > 0:
            s = int(torch.randint(0, int(self.shift * length) + 1, (1,), generator=g))
            if s:
                x = torch.cat([x.new_zeros(chans, s), x[:, :-s]], 1)
                if mask is not None:
                    mask = torch.cat([mask.new_zeros(s), mask[:-s]])
        if self.scale > 0:
            x = x * (1 + self.scale * torch.randn(chans, 1, generator=g))
        if self.jitter > 0:
            x = x + self.jitter * torch.randn(chans, length, generator=g)
        if self.cutout > 0:
            w = int(torch.randint(0, int(self.cutout * length) + 1, (1,), generator=g))
            if w:
                start = int(torch.randint(0, length - w + 1, (1,), generator=g))
                x[:, start:start + w] = 0
        if mask is not None:
            x = x * mask
            return {**inputs, 'x': x, 'mask': mask}, label
        return x, label
