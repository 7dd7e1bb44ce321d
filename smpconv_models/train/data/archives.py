"""UEA / UCR time-series archives in the ``.ts`` format (``--data ts:DIR/NAME``).

The format (sktime / timeseriesclassification.com): ``#`` comments, then header tags (``@problemName``,
``@timeStamps``, ``@missing``, ``@univariate``, ``@dimensions``, ``@equalLength``, ``@seriesLength``,
``@classLabel true L1 L2 ...``), then ``@data`` and one series per line: dimensions separated by ``:``, values by
``,``, missing values as ``?`` (or NaN), the class label last. Series may have different lengths
(``@equalLength false``). Timestamped series (``@timeStamps true``) and regression targets are not supported.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import DataBundle, DatasetNotFoundError
from .sequences import sequences_bundle

__all__ = ['TsFile', 'read_ts', 'find_ts_pair', 'ts_archive']


@dataclass
class TsFile:
    """A parsed ``.ts`` file: ``series[i]`` is ``[C, L_i]`` float64 (NaN where missing), ``labels[i]`` the index
    of its class in ``class_names`` (the header's order)."""

    series: list[np.ndarray]
    labels: np.ndarray
    class_names: tuple[str, ...]
    problem_name: str
    path: str

    @property
    def lengths(self) -> np.ndarray:
        return np.array([s.shape[1] for s in self.series])

    @property
    def num_channels(self) -> int:
        return self.series[0].shape[0]


def _bool_tag(value: str, tag: str, where: str) -> bool:
    v = value.strip().lower()
    if v not in ('true', 'false'):
        raise ValueError(f'{where}: {tag} must be true or false, got {value!r}')
    return v == 'true'


def _parse_values(text: str, where: str, dim: int) -> np.ndarray:
    text = text.strip()
    if not text:
        return np.zeros(0)
    fields = [f.strip() for f in text.split(',')]
    try:
        return np.array(['nan' if f in ('?', '') else f for f in fields], dtype=np.float64)
    except ValueError:
        bad = next(f for f in fields if not _is_number(f))
        raise ValueError(f'{where}: dimension {dim + 1} has a value that is not a number: {bad!r}') from None


def _is_number(field: str) -> bool:
    if field in ('?', ''):
        return True
    try:
        float(field)
        return True
    except ValueError:
        return False


def read_ts(path: str | Path, class_names: tuple[str, ...] | None = None) -> TsFile:
    """Parse a ``.ts`` classification file. ``class_names`` (e.g. the training file's) fixes the label order;
    by default it is the header's ``@classLabel`` list. Malformed files raise ``ValueError`` naming the line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f'.ts file not found: {path}')
    header: dict[str, str] = {}
    series: list[np.ndarray] = []
    labels: list[int] = []
    in_data = False
    dims: int | None = None
    names: tuple[str, ...] | None = tuple(class_names) if class_names is not None else None
    with path.open('r', encoding='utf-8', errors='replace') as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            where = f'{path}, line {lineno}'
            if not line or line.startswith('#'):
                continue
            if not in_data:
                if not line.startswith('@'):
                    raise ValueError(f'{where}: expected a header tag (@...) or @data before the series, got '
                                     f'{line[:40]!r}')
                tag, _, value = line.partition(' ')
                tag = tag.lower()
                if tag == '@data':
                    in_data = True
                    if _bool_tag(header.get('@timestamps', 'false'), '@timeStamps', where):
                        raise ValueError(f'{where}: @timeStamps true is not supported (use series without timestamps)')
                    if '@targetlabel' in header and _bool_tag(header['@targetlabel'], '@targetLabel', where):
                        raise ValueError(f'{where}: regression files (@targetLabel true) are not supported')
                    if '@classlabel' not in header:
                        raise ValueError(f'{where}: @data before a @classLabel line (class labels are required)')
                    declared = header['@classlabel'].split()
                    if not declared or not _bool_tag(declared[0], '@classLabel', where):
                        raise ValueError(f'{where}: @classLabel false: this reader needs class labels')
                    if names is None:
                        names = tuple(declared[1:])
                        if not names:
                            raise ValueError(f'{where}: @classLabel true lists no labels')
                    if '@dimensions' in header:
                        try:
                            dims = int(header['@dimensions'])
                        except ValueError:
                            raise ValueError(f'{path}: @dimensions is not an integer: '
                                             f'{header["@dimensions"]!r}') from None
                    elif header.get('@univariate', '').strip().lower() == 'true':
                        dims = 1
                    continue
                header['@dimensions' if tag == '@dimension' else tag] = value.strip()
                continue
            fields = line.split(':')
            if len(fields) < 2:
                raise ValueError(f'{where}: expected dimensions separated by ":" and a class label at the end')
            label = fields[-1].strip()
            if dims is None:
                dims = len(fields) - 1
            if len(fields) - 1 != dims:
                raise ValueError(f'{where}: {len(fields) - 1} dimensions, but the file has {dims} (@dimensions or the '
                                 'first series)')
            if label not in names:
                raise ValueError(f'{where}: unknown class label {label!r} (declared: {", ".join(names)})')
            channels = [_parse_values(text, where, d) for d, text in enumerate(fields[:-1])]
            length = max(len(c) for c in channels)
            # dimensions of one series with different lengths: align their ends, NaN before the shorter ones
            values = np.full((dims, length), np.nan)
            for d, c in enumerate(channels):
                values[d, length - len(c):] = c
            series.append(values)
            labels.append(names.index(label))
    if not in_data:
        raise ValueError(f'{path}: no @data line (not a .ts file, or the header is incomplete)')
    if not series:
        raise ValueError(f'{path}: no series after @data')
    declared_len = header.get('@serieslength')
    if declared_len and header.get('@equallength', 'true').lower() == 'true':
        lengths = {s.shape[1] for s in series}
        if lengths != {int(declared_len)}:
            raise ValueError(f'{path}: @seriesLength {declared_len} but series have lengths {sorted(lengths)[:5]}')
    return TsFile(series, np.array(labels, dtype=np.int64), names, header.get('@problemname', path.stem), str(path))


def find_ts_pair(spec_path: str) -> tuple[Path, Path]:
    """``(train, test)`` files for ``DIR/NAME``: ``DIR/NAME_TRAIN.ts`` and ``DIR/NAME_TEST.ts``, or inside the
    archive's per-problem folder ``DIR/NAME/NAME_TRAIN.ts``."""
    base = Path(spec_path)
    name = base.name
    for folder in (base.parent, base):
        train, test = folder / f'{name}_TRAIN.ts', folder / f'{name}_TEST.ts'
        if train.is_file() and test.is_file():
            return train, test
    raise DatasetNotFoundError(f'no {name}_TRAIN.ts and {name}_TEST.ts in {base.parent} or {base} '
                               '(--data ts:DIR/NAME, the UEA / UCR archive layout; nothing is downloaded)')


def ts_archive(spec_path: str) -> DataBundle:
    """``--data ts:DIR/NAME``: the archive's train / test split, per-channel normalisation from the training split
    only, series left-padded to the longest (train or test) with a mask of real steps when lengths differ."""
    train_path, test_path = find_ts_pair(spec_path)
    train = read_ts(train_path)
    test = read_ts(test_path, class_names=train.class_names)
    if train.num_channels != test.num_channels:
        raise ValueError(f'{train_path} has {train.num_channels} dimensions but {test_path} has {test.num_channels}')
    return sequences_bundle(train.series, train.labels, test.series, test.labels, f'ts:{train.problem_name}',
                            num_classes=len(train.class_names))
