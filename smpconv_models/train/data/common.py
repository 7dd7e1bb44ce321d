"""What every data source shares: the bundle ``build_data`` returns, the resumable sampler, path checks."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

__all__ = ['DataBundle', 'EpochShuffleSampler', 'DatasetNotFoundError', 'need_root', 'fixed_split']


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing from the local disk; the message says what to put where."""


@dataclass
class DataBundle:
    """Train / test datasets and the model shape they imply.

    Items are ``(inputs, label)``: ``inputs`` is a tensor (``[C, L]`` sequences, ``[C, H, W]`` images) or a dict of
    tensors that the training loop passes to the model as keyword arguments (``model(**inputs)``).
    ``model_args`` are extra model kwargs the data needs (applied before the recipe's and the user's).
    """

    train: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    kind: str  # 'sequence', 'image' or 'points'
    length: int  # sequence length, image size or (padded) points per set
    name: str
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    model_args: dict[str, Any] = field(default_factory=dict)


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a generator seeded by ``(seed, epoch)``: the order of epoch ``e`` never depends on how many
    epochs ran before in this process, so a resumed run sees exactly the batches of an uninterrupted one."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def fixed_split(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_idx, test_idx)``: a seeded random split with at least one test item."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(n * test_fraction))
    return perm[n_test:], perm[:n_test]


def need_root(name: str, root: str) -> str:
    """``root`` if it is given and exists, else a clear error (``--data NAME:PATH``; nothing is downloaded)."""
    if not root:
        raise ValueError(f"dataset '{name}' needs a local path: --data {name}:/path/to/data")
    if not Path(root).exists():
        raise DatasetNotFoundError(f'dataset path {root!r} for {name} does not exist; this tool never downloads data')
    return root
