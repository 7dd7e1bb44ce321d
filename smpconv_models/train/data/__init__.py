"""Datasets for training, one module per source, behind one entry point (:func:`build_data`).

``digits`` (embedded scikit-learn digits), ``images`` (torchvision sets from a local root, the sequential
sMNIST / pMNIST / sCIFAR10 tasks, image folders, Hugging Face image datasets). Nothing is ever downloaded.
``digits-points``: the same digits as 2-d point sets (``points.py``).
"""
from __future__ import annotations

from typing import Any

from .common import DataBundle, DatasetNotFoundError, EpochShuffleSampler, fixed_split, need_root
from .digits import digits
from .images import hf_images, image_folder, sequence_permutation, sequential_set, torchvision_set
from .points import digits_points

__all__ = ['DataBundle', 'build_data', 'EpochShuffleSampler', 'DatasetNotFoundError', 'sequence_permutation',
           'fixed_split', 'need_root', 'DATA_SPECS']

# The --data specs, in the order the error message and --help list them.
DATA_SPECS = ('digits', 'cifar10:ROOT', 'cifar100:ROOT', 'mnist:ROOT', 'smnist:ROOT', 'pmnist:ROOT', 'scifar10:ROOT',
              'folder:ROOT', 'hf:PATH')
DATA_SPECS += ('digits-points[:DRAWS]',)  # scikit-learn digits as 2-d point sets (points.py)


def build_data(spec: str, model_kind: str, img_size: int | None = None, seed: int = 0,
               test_fraction: float = 0.2, train_transform: Any = None, eval_transform: Any = None) -> DataBundle:
    """Build train / test datasets from a ``--data`` spec (``NAME`` or ``NAME:PATH``, see :data:`DATA_SPECS`) for a
    ``'sequence'``, ``'image'`` or ``'points'`` model."""
    name, _, root = spec.partition(':')
    name = name.lower()
    if name == 'digits':
        return digits(model_kind, img_size, test_fraction)
    if name == 'digits-points':
        if root and not root.isdigit():
            raise ValueError(f'digits-points[:DRAWS] takes a number of training draws, got {root!r}')
        return digits_points(model_kind, test_fraction, int(root) if root else 4)
    if name in ('smnist', 'pmnist', 'scifar10'):
        if model_kind != 'sequence':
            raise ValueError(f'{name} is a sequence task; use a smpconv_tcn_* model')
        return sequential_set(name, need_root(name, root))
    if name in ('cifar10', 'cifar100', 'mnist'):
        return torchvision_set(name, need_root(name, root), model_kind, train_transform, eval_transform)
    if name == 'folder':
        return image_folder(need_root(name, root), img_size or 224, train_transform, eval_transform)
    if name == 'hf':
        return hf_images(need_root(name, root), img_size, train_transform, eval_transform)
    raise ValueError(f'unknown dataset {spec!r}: use {", ".join(DATA_SPECS)}')
