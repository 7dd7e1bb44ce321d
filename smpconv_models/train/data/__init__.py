"""Datasets for training, one module per source, behind one entry point (:func:`build_data`).

``digits`` (embedded scikit-learn digits), ``images`` (torchvision sets from a local root, the sequential
sMNIST / pMNIST / sCIFAR10 tasks, image folders, Hugging Face image datasets), ``archives`` (UEA / UCR ``.ts``
files), ``arrays`` (``.npz`` arrays, Hugging Face sequence datasets), ``audio`` (Speech Commands, MFCC),
``sequences`` (padding, normalisation and augmentation shared by the sequence sources), ``irregular`` (any sequence
set as irregularly sampled series: observations dropped per series, ``digits-irregular``), ``points``
(``digits-points``: the digits as 2-d point sets), ``shapes3d`` (generated 3-d point clouds of eight solids).
Nothing is ever downloaded.
"""
from __future__ import annotations

from typing import Any

from ...models import architecture_of, family_of
from .archives import TsFile, read_ts, ts_archive
from .arrays import hf_has_sequences, hf_sequences, npz_arrays
from .audio import mfcc, read_wav, speech_commands
from .common import DataBundle, DatasetNotFoundError, EpochShuffleSampler, fixed_split, need_root
from .digits import digits
from .images import hf_images, image_folder, sequence_permutation, sequential_set, torchvision_set
from .irregular import drop_observations, to_irregular
from .points import digits_points
from .sequences import SequenceAugment, SequenceSet, parse_augment, standardise_series
from .shapes3d import parse_point_range, shapes3d

__all__ = ['DataBundle', 'build_data', 'EpochShuffleSampler', 'DatasetNotFoundError', 'sequence_permutation',
           'fixed_split', 'need_root', 'DATA_SPECS', 'read_ts', 'TsFile', 'SequenceSet', 'SequenceAugment',
           'parse_augment', 'standardise_series', 'mfcc', 'read_wav', 'drop_observations', 'to_irregular',
           'digits_points', 'shapes3d']

# The --data specs, in the order the error message and --help list them.
DATA_SPECS = ('digits', 'digits-irregular', 'cifar10:ROOT', 'cifar100:ROOT', 'mnist:ROOT', 'smnist:ROOT',
              'pmnist:ROOT', 'scifar10:ROOT', 'folder:ROOT', 'hf:PATH', 'ts:DIR/NAME', 'npz:PATH',
              'speechcommands:ROOT', 'digits-points[:DRAWS]', 'shapes3d[:POINTS]')

# --missing-rate of 'digits-irregular' when none is given (the middle of the protocol's 0.3 / 0.5 / 0.7)
DIGITS_MISSING_RATE = 0.5


def build_data(spec: str, model_kind: str, img_size: int | None = None, seed: int = 0,
               test_fraction: float = 0.2, train_transform: Any = None, eval_transform: Any = None,
               model_name: str | None = None, missing_rate: float | None = None) -> DataBundle:
    """Build train / test datasets from a ``--data`` spec (``NAME`` or ``NAME:PATH``, see :data:`DATA_SPECS`) for a
    ``'sequence'``, ``'irregular'``, ``'points'`` or ``'image'`` model. ``model_name`` picks what some sources give
    (its family's ``data_options``): Speech Commands is the raw waveform for ``smpconv_tcn_speech_raw`` and MFCCs
    otherwise.

    An ``'irregular'`` model gets any sequence spec as irregular series with ``missing_rate`` of each series'
    observations dropped (:func:`to_irregular`; ``digits-irregular`` is ``digits`` with 0.5 by default)."""
    name, _, root = spec.partition(':')
    name = name.lower()
    if name == 'digits-irregular' and model_kind != 'irregular':
        raise ValueError(f"'{spec}' gives irregular series; use an smpconv_irregular_tcn* model")
    if model_kind == 'irregular':
        if name == 'digits-irregular':
            base, rate = 'digits', DIGITS_MISSING_RATE if missing_rate is None else missing_rate
        else:
            base, rate = spec, missing_rate or 0.0
        bundle = build_data(base, 'sequence', img_size, seed, test_fraction, train_transform, eval_transform,
                            model_name)
        return to_irregular(bundle, rate)
    if missing_rate:
        raise ValueError('--missing-rate drops observations for an irregular-series model (smpconv_irregular_tcn*); '
                         f'{model_kind} models take complete inputs')
    if name == 'digits':
        return digits(model_kind, img_size, test_fraction)
    if name == 'digits-points':
        if root and not root.isdigit():
            raise ValueError(f'digits-points[:DRAWS] takes a number of training draws, got {root!r}')
        return digits_points(model_kind, test_fraction, int(root) if root else 4)
    if name == 'shapes3d':
        return shapes3d(model_kind, test_fraction, *([parse_point_range(root)] if root else []))
    if name in ('smnist', 'pmnist', 'scifar10'):
        if model_kind != 'sequence':
            raise ValueError(f'{name} is a sequence task; use a smpconv_tcn_* model')
        return sequential_set(name, need_root(name, root))
    if name in ('cifar10', 'cifar100', 'mnist'):
        return torchvision_set(name, need_root(name, root), model_kind, train_transform, eval_transform)
    if name == 'folder':
        return image_folder(need_root(name, root), img_size or 224, train_transform, eval_transform)
    if name == 'hf':
        if model_kind == 'sequence' and hf_has_sequences(need_root(name, root)):
            return hf_sequences(root)
        return hf_images(need_root(name, root), img_size, train_transform, eval_transform)
    if name == 'ts':
        _sequence_only(name, model_kind)
        if not root:
            need_root(name, root)  # the error asking for a path; ts_archive names the missing files
        return ts_archive(root)
    if name == 'speechcommands':
        _sequence_only(name, model_kind)
        return speech_commands(need_root(name, root), use_mfcc=_data_options(model_name).get('speech') != 'waveform')
    if name == 'npz':
        _sequence_only(name, model_kind)
        return npz_arrays(need_root(name, root))
    raise ValueError(f'unknown dataset {spec!r}: use {", ".join(DATA_SPECS)}')


def _data_options(model_name: str | None) -> dict[str, Any]:
    """What the model's family description asks of the data sources for this variant (e.g. raw audio)."""
    if not model_name:
        return {}
    return dict(family_of(model_name).training.data_options.get(architecture_of(model_name), {}))


def _sequence_only(name: str, model_kind: str) -> None:
    if model_kind != 'sequence':
        raise ValueError(f'{name}: is sequence data; use a smpconv_tcn_* model')

