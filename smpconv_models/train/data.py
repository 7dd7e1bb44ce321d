"""Datasets for training: the embedded digits default, torchvision sets from a local root, the sequential tasks,
image folders and Hugging Face datasets saved to disk. Nothing is ever downloaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler, TensorDataset

__all__ = ['DataBundle', 'build_data', 'EpochShuffleSampler', 'DatasetNotFoundError', 'sequence_permutation']


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing from the local disk; the message says what to put where."""


@dataclass
class DataBundle:
    train: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    kind: str  # 'sequence' or 'image'
    length: int  # sequence length or image size
    name: str
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)


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


def sequence_permutation(length: int, seed: int = 0) -> torch.Tensor:
    """The fixed pixel permutation of pMNIST (seeded, the same on every machine)."""
    return torch.randperm(length, generator=torch.Generator().manual_seed(seed))


def _split(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(n * test_fraction))
    return perm[n_test:], perm[:n_test]


def _digits(kind: str, img_size: int | None, test_fraction: float, seed: int) -> DataBundle:
    """scikit-learn's 1,797 real 8x8 handwritten digits: 64-step sequences or 1-channel images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    mean, std = x.mean().item(), x.std().item()
    x = (x - mean) / std
    train_idx, test_idx = _split(len(x), test_fraction, seed=1234)  # fixed split, independent of the run seed
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


def _torchvision(name: str, root: str, train: bool):
    import torchvision

    cls = {'cifar10': torchvision.datasets.CIFAR10, 'cifar100': torchvision.datasets.CIFAR100,
           'mnist': torchvision.datasets.MNIST}[name]
    expected = {'cifar10': 'cifar-10-batches-py/', 'cifar100': 'cifar-100-python/', 'mnist': 'MNIST/raw/'}[name]
    try:
        return cls(root=root, train=train, download=False)
    except RuntimeError as e:
        raise DatasetNotFoundError(
            f'{name} not found under {root!r}: put the torchvision files there ({os.path.join(root, expected)}...); '
            f'this tool never downloads data') from e


class _TensorizedVision(Dataset):
    """A torchvision image set as tensors: images ``[C, H, W]`` or sequences ``[C, H*W]`` (optionally permuted)."""

    def __init__(self, base, mean, std, sequence: bool, permutation: torch.Tensor | None = None, transform=None):
        self.base, self.sequence, self.permutation, self.transform = base, sequence, permutation, transform
        self.mean = torch.tensor(mean).reshape(-1, 1, 1)
        self.std = torch.tensor(std).reshape(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, label = self.base[i]
        if self.transform is not None:
            x = self.transform(img)
        else:
            import numpy as np

            arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
            x = arr[None] if arr.dim() == 2 else arr.permute(2, 0, 1)
            x = (x - self.mean) / self.std
        if self.sequence:
            x = x.reshape(x.shape[0], -1)
            if self.permutation is not None:
                x = x[:, self.permutation]
        return x, int(label)


_STATS = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'mnist': ((0.1307,), (0.3081,)),
}


def build_data(spec: str, model_kind: str, img_size: int | None = None, seed: int = 0,
               test_fraction: float = 0.2, train_transform: Any = None, eval_transform: Any = None) -> DataBundle:
    """Build train / test datasets from a ``--data`` spec for a ``'sequence'`` or ``'image'`` model."""
    name, _, root = spec.partition(':')
    name = name.lower()
    if name == 'digits':
        return _digits(model_kind, img_size, test_fraction, seed)
    if name in ('smnist', 'pmnist', 'scifar10'):
        if model_kind != 'sequence':
            raise ValueError(f'{name} is a sequence task; use a smpconv_tcn_* model')
        base = 'mnist' if name != 'scifar10' else 'cifar10'
        root = _need_root(name, root)
        mean, std = _STATS[base]
        perm = sequence_permutation(784, seed=0) if name == 'pmnist' else None
        train = _TensorizedVision(_torchvision(base, root, True), mean, std, True, perm)
        test = _TensorizedVision(_torchvision(base, root, False), mean, std, True, perm)
        chans = 1 if base == 'mnist' else 3
        return DataBundle(train, test, 10, chans, 'sequence', 784 if base == 'mnist' else 1024, name, mean, std)
    if name in ('cifar10', 'cifar100', 'mnist'):
        root = _need_root(name, root)
        mean, std = _STATS[name]
        seq = model_kind == 'sequence'
        train = _TensorizedVision(_torchvision(name, root, True), mean, std, seq, transform=train_transform)
        test = _TensorizedVision(_torchvision(name, root, False), mean, std, seq, transform=eval_transform)
        n_cls = 100 if name == 'cifar100' else 10
        chans = 1 if name == 'mnist' else 3
        size = 28 if name == 'mnist' else 32
        return DataBundle(train, test, n_cls, chans, model_kind, size * size if seq else size, name, mean, std)
    if name == 'folder':
        return _image_folder(_need_root(name, root), img_size or 224, train_transform, eval_transform)
    if name == 'hf':
        return _hf_dataset(_need_root(name, root), model_kind, img_size, train_transform, eval_transform)
    raise ValueError(f'unknown dataset {spec!r}: use digits, cifar10:ROOT, cifar100:ROOT, mnist:ROOT, smnist:ROOT, '
                     'pmnist:ROOT, scifar10:ROOT, folder:ROOT or hf:PATH')


def _need_root(name: str, root: str) -> str:
    if not root:
        raise ValueError(f"dataset '{name}' needs a local path: --data {name}:/path/to/data")
    if not Path(root).exists():
        raise DatasetNotFoundError(f'dataset path {root!r} for {name} does not exist; this tool never downloads data')
    return root


def _image_folder(root: str, img_size: int, train_transform, eval_transform) -> DataBundle:
    from timm.data import create_dataset

    splits = {}
    for split, candidates in (('train', ('train',)), ('test', ('val', 'validation', 'test'))):
        folder = next((c for c in candidates if (Path(root) / c).is_dir()), None)
        if folder is None:
            raise DatasetNotFoundError(f'image folder {root!r} needs a {"/ or ".join(candidates)}/ subfolder '
                                       'with one folder per class')
        splits[split] = create_dataset('', root=str(Path(root) / folder), split=split)
    splits['train'].transform = train_transform
    splits['test'].transform = eval_transform
    n_cls = len(getattr(splits['train'].reader, 'class_to_idx', {}) or {}) or 0
    return DataBundle(splits['train'], splits['test'], n_cls, 3, 'image', img_size, f'folder:{root}')


class _HFImages(Dataset):
    def __init__(self, ds, transform, image_key: str, label_key: str):
        self.ds, self.transform, self.image_key, self.label_key = ds, transform, image_key, label_key

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        row = self.ds[i]
        img = row[self.image_key]
        if self.transform is not None:
            img = self.transform(img.convert('RGB') if hasattr(img, 'convert') else img)
        return img, int(row[self.label_key])


def _hf_dataset(path: str, model_kind: str, img_size: int | None, train_transform, eval_transform) -> DataBundle:
    from datasets import load_from_disk

    ds = load_from_disk(path)
    if not hasattr(ds, 'keys') or 'train' not in ds:
        raise ValueError(f'{path} must be a DatasetDict with a train split (and test or validation)')
    test_split = next((s for s in ('test', 'validation', 'val') if s in ds), None)
    if test_split is None:
        raise ValueError(f'{path} has no test / validation split')
    cols = ds['train'].column_names
    image_key = next((c for c in ('image', 'img', 'pixel_values') if c in cols), None)
    label_key = next((c for c in ('label', 'labels', 'fine_label') if c in cols), None)
    if image_key is None or label_key is None:
        raise ValueError(f'{path}: expected image and label columns, found {cols}')
    feature = ds['train'].features[label_key]
    n_cls = getattr(feature, 'num_classes', None) or int(max(ds['train'][label_key])) + 1
    return DataBundle(_HFImages(ds['train'], train_transform, image_key, label_key),
                      _HFImages(ds[test_split], eval_transform, image_key, label_key),
                      n_cls, 3, 'image', img_size or 224, f'hf:{path}')
