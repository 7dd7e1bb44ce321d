"""Sequences from arrays: ``--data npz:PATH`` (NumPy ``.npz``) and ``--data hf:PATH`` for Hugging Face datasets saved
with ``save_to_disk`` that hold a sequence column (image datasets keep going to :func:`images.hf_images`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import DataBundle, DatasetNotFoundError
from .sequences import sequences_bundle

__all__ = ['npz_arrays', 'hf_sequences', 'hf_has_sequences', 'SEQUENCE_COLUMNS', 'LABEL_COLUMNS']

SEQUENCE_COLUMNS = ('x', 'sequence', 'series', 'values', 'signal', 'input_values', 'inputs')
LABEL_COLUMNS = ('label', 'labels', 'y', 'target', 'class')


def _npz_series(arrays, split: str, path: Path) -> list[np.ndarray]:
    x = np.asarray(arrays[f'x_{split}'], dtype=np.float64)
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3:
        raise ValueError(f'{path}: x_{split} must be [N, L] or [N, C, L], got shape {x.shape}')
    n, _, length = x.shape
    if f'mask_{split}' in arrays:
        mask = np.asarray(arrays[f'mask_{split}']).astype(bool)
        if mask.shape == (n, length):
            mask = mask[:, None, :]
        if mask.shape[0] != n or mask.shape[2] != length or mask.shape[1] not in (1, x.shape[1]):
            raise ValueError(f'{path}: mask_{split} must be [N, L] or [N, C, L] like x_{split} {x.shape}, got '
                             f'{np.asarray(arrays[f"mask_{split}"]).shape}')
        x = np.where(mask, x, np.nan)
        # each series ends at its last observed step
        observed = mask.any(1)
        ends = np.where(observed.any(1), length - np.argmax(observed[:, ::-1], axis=1), 0)
    else:
        ends = np.full(n, length)
    if f'lengths_{split}' in arrays:
        lengths = np.asarray(arrays[f'lengths_{split}']).reshape(-1)
        if lengths.shape != (n,) or (lengths < 1).any() or (lengths > length).any():
            raise ValueError(f'{path}: lengths_{split} must hold {n} lengths in 1..{length}')
        ends = np.minimum(ends, lengths.astype(np.int64))
    return [x[i, :, :ends[i]] for i in range(n)]


def npz_arrays(path: str) -> DataBundle:
    """``--data npz:PATH``: arrays ``x_train`` / ``x_test`` (``[N, C, L]``, or ``[N, L]`` for one channel; NaN
    for missing values), ``y_train`` / ``y_test`` (integers ``0..K-1`` or any labels, mapped in sorted order), and
    optionally ``lengths_*`` (``[N]``: series ``i`` is ``x[i, :, :lengths[i]]``) or ``mask_*`` (``[N, L]`` or
    ``[N, C, L]``, true where observed; a series ends at its last observed step)."""
    p = Path(path)
    if not p.is_file():
        raise DatasetNotFoundError(f'npz file not found: {p}')
    try:
        arrays = np.load(p, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f'{p}: cannot read the arrays without pickle ({e}); store ragged series padded with '
                         'lengths_train / lengths_test instead of object arrays') from None
    with arrays:
        missing = [k for k in ('x_train', 'y_train', 'x_test', 'y_test') if k not in arrays.files]
        if missing:
            raise ValueError(f'{p}: missing arrays {", ".join(missing)} (has {", ".join(arrays.files)})')
        train, test = _npz_series(arrays, 'train', p), _npz_series(arrays, 'test', p)
        y_train, y_test = np.asarray(arrays['y_train']), np.asarray(arrays['y_test'])
    for split, xs, ys in (('train', train, y_train), ('test', test, y_test)):
        if len(xs) != ys.reshape(-1).shape[0]:
            raise ValueError(f'{p}: x_{split} has {len(xs)} series but y_{split} has {ys.reshape(-1).shape[0]} labels')
    return sequences_bundle(train, y_train, test, y_test, f'npz:{p.name}')


def _split_names(ds, path: str) -> tuple[str, str]:
    if not hasattr(ds, 'keys') or 'train' not in ds:
        raise ValueError(f'{path} must be a DatasetDict with a train split (and test or validation)')
    test_split = next((s for s in ('test', 'validation', 'val') if s in ds), None)
    if test_split is None:
        raise ValueError(f'{path} has no test / validation split')
    return 'train', test_split


def hf_has_sequences(path: str) -> bool:
    """Whether the saved dataset at ``path`` has a known sequence column and no image column."""
    from datasets import load_from_disk

    ds = load_from_disk(path)
    if not hasattr(ds, 'keys') or 'train' not in ds:
        return False
    cols = ds['train'].column_names
    return not any(c in cols for c in ('image', 'img', 'pixel_values')) and any(c in cols for c in SEQUENCE_COLUMNS)


def _hf_series(split, key: str, path: str) -> list[np.ndarray]:
    out = []
    for i, value in enumerate(split[key]):
        arr = np.asarray(value if value is not None else [], dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2:
            raise ValueError(f'{path}: row {i} of column {key!r} has shape {arr.shape}; expected [L] or [C, L]')
        out.append(arr)
    return out


def hf_sequences(path: str) -> DataBundle:
    """A Hugging Face ``DatasetDict`` saved with ``save_to_disk``: a sequence column (one of
    :data:`SEQUENCE_COLUMNS`; rows ``[L]`` or ``[C, L]``, lengths may differ, None/NaN = missing) and a label column
    (:data:`LABEL_COLUMNS`; a ``ClassLabel`` keeps its names' order)."""
    from datasets import load_from_disk

    ds = load_from_disk(path)
    train_name, test_name = _split_names(ds, path)
    cols = ds[train_name].column_names
    key = next((c for c in SEQUENCE_COLUMNS if c in cols), None)
    label_key = next((c for c in LABEL_COLUMNS if c in cols), None)
    if key is None or label_key is None:
        raise ValueError(f'{path}: expected a sequence column ({", ".join(SEQUENCE_COLUMNS)}) and a label column '
                         f'({", ".join(LABEL_COLUMNS)}), found {cols}')
    train = _hf_series(ds[train_name], key, path)
    test = _hf_series(ds[test_name], key, path)
    y_train, y_test = np.asarray(ds[train_name][label_key]), np.asarray(ds[test_name][label_key])
    bundle = sequences_bundle(train, y_train, test, y_test, f'hf:{Path(path).name}')
    n_cls = getattr(ds[train_name].features[label_key], 'num_classes', None)
    if n_cls and y_train.dtype.kind in 'iu':
        bundle.num_classes = max(bundle.num_classes, int(n_cls))
    return bundle
