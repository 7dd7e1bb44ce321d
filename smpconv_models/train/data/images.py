"""Image sources: torchvision sets from a local root (as images or as the sequential tasks sMNIST / pMNIST /
sCIFAR10), image folders and Hugging Face image datasets saved to disk. Nothing is ever downloaded."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .common import DataBundle, DatasetNotFoundError

__all__ = ['torchvision_set', 'sequential_set', 'image_folder', 'hf_images', 'sequence_permutation', 'STATS']

STATS = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'mnist': ((0.1307,), (0.3081,)),
}


def sequence_permutation(length: int, seed: int = 0) -> torch.Tensor:
    """The fixed pixel permutation of pMNIST (seeded, the same on every machine)."""
    return torch.randperm(length, generator=torch.Generator().manual_seed(seed))


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


def sequential_set(name: str, root: str) -> DataBundle:
    """sMNIST / pMNIST (784 steps, 1 channel) or sCIFAR10 (1024 steps, 3 channels), pixel by pixel."""
    base = 'mnist' if name != 'scifar10' else 'cifar10'
    mean, std = STATS[base]
    perm = sequence_permutation(784, seed=0) if name == 'pmnist' else None
    train = _TensorizedVision(_torchvision(base, root, True), mean, std, True, perm)
    test = _TensorizedVision(_torchvision(base, root, False), mean, std, True, perm)
    chans = 1 if base == 'mnist' else 3
    return DataBundle(train, test, 10, chans, 'sequence', 784 if base == 'mnist' else 1024, name, mean, std)


def torchvision_set(name: str, root: str, model_kind: str, train_transform: Any = None,
                    eval_transform: Any = None) -> DataBundle:
    """CIFAR-10 / CIFAR-100 / MNIST as images (or flattened to sequences for a sequence model)."""
    mean, std = STATS[name]
    seq = model_kind == 'sequence'
    train = _TensorizedVision(_torchvision(name, root, True), mean, std, seq, transform=train_transform)
    test = _TensorizedVision(_torchvision(name, root, False), mean, std, seq, transform=eval_transform)
    n_cls = 100 if name == 'cifar100' else 10
    chans = 1 if name == 'mnist' else 3
    size = 28 if name == 'mnist' else 32
    return DataBundle(train, test, n_cls, chans, model_kind, size * size if seq else size, name, mean, std)


def image_folder(root: str, img_size: int, train_transform, eval_transform) -> DataBundle:
    """``ROOT/train/<class>/*`` and ``ROOT/val|validation|test/<class>/*`` through timm's dataset reader."""
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


def hf_images(path: str, img_size: int | None, train_transform, eval_transform) -> DataBundle:
    """A Hugging Face ``DatasetDict`` saved with ``save_to_disk`` with image and label columns."""
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
