"""The small-data sequence recipe against a random-convolution-kernel baseline, on generated data sets.

``python -m smpconv_models.experiments.small_data`` generates five classification sets that are not separable by a
simple statistic (class-dependent shapes, frequencies, orders, channel couplings and warped trajectories, at random
positions and phases, with noise; 30-200 training series, 1-6 channels, 64-300 steps, 2-10 classes, one with
variable lengths), writes them as ``.npz`` files, trains ``smpconv_tcn_chartraj`` on each through ``train.py``'s
loop (the default small-data recipe, and the plain Adam loop a new user would run), and fits the baseline: ROCKET
(Dempster et al. 2020: random dilated kernels, PPV and max features, a ridge classifier with cross-validated
regularisation), written here in torch. ``--quick`` shrinks everything for a test.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..train.config import TrainConfig
from ..train.data import build_data
from ..train.loop import run
from ._common import torch_threads

__all__ = ['DATASETS', 'make_dataset', 'save_npz', 'rocket_features', 'rocket_accuracy', 'train_accuracy', 'main']


@dataclass(frozen=True)
class SetSpec:
    """One generated data set: kind of signal, channels, length, classes, train / test sizes."""

    name: str
    kind: str
    channels: int
    length: int
    classes: int
    n_train: int
    n_test: int = 150
    noise: float = 0.5


DATASETS = (
    SetSpec('shapes_u300', 'shapes', 1, 300, 4, 40),
    SetSpec('order_u200', 'order', 1, 200, 2, 30),
    SetSpec('freq_m3', 'freq', 3, 128, 5, 100),
    SetSpec('pairs_m6', 'pairs', 6, 64, 10, 200),
    SetSpec('traj_var_m3', 'traj', 3, 150, 8, 50, noise=0.15),
)


def _burst(rng: np.random.Generator, kind: int, width: int) -> np.ndarray:
    """A motif of ``width`` steps: sine, faster sine, square wave, chirp (kinds 0-3), under a Hann envelope."""
    t = np.linspace(0, 1, width)
    cycles = rng.uniform(2.5, 3.5)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == 0:
        wave = np.sin(2 * np.pi * cycles * t + phase)
    elif kind == 1:
        wave = np.sin(2 * np.pi * 1.7 * cycles * t + phase)
    elif kind == 2:
        wave = np.sign(np.sin(2 * np.pi * cycles * t + phase))
    else:
        wave = np.sin(2 * np.pi * (1.5 * t + 1.5 * cycles * t ** 2) + phase)
    return wave * np.hanning(width)


def _background(rng: np.random.Generator, channels: int, length: int, noise: float) -> np.ndarray:
    walk = np.cumsum(rng.normal(0, 0.1, (channels, length)), axis=1)
    return walk - walk.mean(1, keepdims=True) + rng.normal(0, noise, (channels, length))


def _series(spec: SetSpec, label: int, rng: np.random.Generator, protos: np.ndarray) -> np.ndarray:
    c, n, noise = spec.channels, spec.length, spec.noise
    if spec.kind == 'shapes':  # which motif appears somewhere in a wandering, noisy background
        x = _background(rng, c, n, noise)
        width = int(rng.integers(n // 8, n // 5))
        start = int(rng.integers(0, n - width))
        x[0, start:start + width] += rng.uniform(1.0, 2.0) * _burst(rng, label, width)
        decoy = int(rng.integers(0, n - width))  # a bump every class has
        x[0, decoy:decoy + width] += rng.uniform(0.5, 1.5) * np.hanning(width)
        return x
    if spec.kind == 'order':  # an up bump and a down bump: which comes first
        x = _background(rng, c, n, noise)
        width = int(rng.integers(n // 10, n // 6))
        a, b = sorted(rng.choice(np.arange(0, n - width, width), size=2, replace=False))
        first, second = (a, b) if label == 0 else (b, a)
        x[0, first:first + width] += rng.uniform(1, 2) * np.hanning(width)
        x[0, second:second + width] -= rng.uniform(1, 2) * np.hanning(width)
        return x
    if spec.kind == 'freq':  # a class frequency hidden in a random mix of the channels, with a shared distractor
        t = np.arange(n) / n
        f = 4 + 2.2 * label + rng.uniform(-0.5, 0.5)
        source = np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
        distractor = np.sin(2 * np.pi * rng.uniform(3, 16) * t + rng.uniform(0, 2 * np.pi))
        mix = rng.normal(0, 1, (c, 2))
        return mix[:, :1] * source + mix[:, 1:] * distractor + rng.normal(0, noise * 1.5, (c, n))
    if spec.kind == 'pairs':  # the pair of channels that share a burst at the same time
        x = rng.normal(0, noise, (c, n))
        pair = protos[label]
        width = int(rng.integers(n // 6, n // 3))
        start = int(rng.integers(0, n - width))
        shape = _burst(rng, 0, width) * rng.uniform(1, 2)
        for ch in range(c):
            if ch in pair:
                x[ch, start:start + width] += shape * rng.choice([-1, 1])
            else:  # bursts at independent times on the other channels
                s2 = int(rng.integers(0, n - width))
                x[ch, s2:s2 + width] += _burst(rng, 0, width) * rng.uniform(1, 2)
        return x
    # 'traj': a class trajectory under a random monotone time warp, speed (length), gain and noise
    length = int(rng.integers(int(0.4 * n), n + 1))
    u = np.linspace(0, 1, length)
    warp = u + rng.uniform(-0.12, 0.12) * np.sin(np.pi * u) * rng.choice([-1, 1])
    k = np.arange(1, protos.shape[-1] + 1)
    basis = np.sin(np.pi * np.outer(warp, k))  # [length, K]
    x = rng.uniform(0.8, 1.2) * (protos[label] @ basis.T)
    return x + rng.normal(0, noise, x.shape)


def make_dataset(spec: SetSpec, seed: int = 0) -> dict[str, Any]:
    """Arrays for ``spec``: ``x_train`` / ``x_test`` ``[N, C, L]`` (left-aligned, with ``lengths_*`` for
    variable-length sets), ``y_train`` / ``y_test``; classes are balanced."""
    rng = np.random.default_rng([seed, sum(map(ord, spec.name))])
    if spec.kind == 'pairs':
        pairs = [(i, j) for i in range(spec.channels) for j in range(i + 1, spec.channels)]
        protos = np.array([pairs[i] for i in rng.permutation(len(pairs))[:spec.classes]])
    elif spec.kind == 'traj':
        protos = rng.normal(0, 1, (spec.classes, spec.channels, 5)) / np.arange(1, 6)
    else:
        protos = np.zeros(0)
    out: dict[str, Any] = {}
    for split, size in (('train', spec.n_train), ('test', spec.n_test)):
        labels = np.arange(size) % spec.classes
        rng.shuffle(labels)
        series = [_series(spec, int(y), rng, protos) for y in labels]
        x = np.zeros((size, spec.channels, spec.length))
        lengths = np.array([s.shape[1] for s in series])
        for i, s in enumerate(series):
            x[i, :, :s.shape[1]] = s
        out[f'x_{split}'], out[f'y_{split}'] = x.astype(np.float32), labels.astype(np.int64)
        if spec.kind == 'traj':
            out[f'lengths_{split}'] = lengths
    return out


def save_npz(arrays: dict[str, Any], path: Path) -> Path:
    """Write ``arrays`` to ``path`` atomically (temporary sibling, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f'.tmp-{os.getpid()}.npz')
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def _rocket_kernels(channels: int, length: int, n_kernels: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """ROCKET's random kernels grouped by (length, dilation, padding): ``(weight [K, C, k], bias [K], dilation,
    padding)``. Lengths 7 / 9 / 11, centred N(0, 1) weights on a random channel subset, bias U(-1, 1), dilation
    ``floor(2^U(0, log2((L - 1) / (k - 1))))``, half of the kernels padded."""
    g = np.random.default_rng(seed)
    groups: dict[tuple[int, int, int], list[tuple[np.ndarray, float]]] = {}
    for _ in range(n_kernels):
        k = int(g.choice([7, 9, 11]))
        n_ch = int(min(channels, 2 ** g.uniform(0, math.log2(min(channels, k) + 1))))
        chans = g.choice(channels, max(1, n_ch), replace=False)
        w = np.zeros((channels, k))
        w[chans] = g.normal(0, 1, (len(chans), k))
        w[chans] -= w[chans].mean(1, keepdims=True)
        dilation = int(2 ** g.uniform(0, math.log2(max(1.0, (length - 1) / (k - 1)))))
        padding = ((k - 1) * dilation) // 2 if g.integers(2) else 0
        groups.setdefault((k, dilation, padding), []).append((w, float(g.uniform(-1, 1))))
    out = []
    for (_, dilation, padding), items in groups.items():
        weight = torch.tensor(np.stack([w for w, _ in items]), dtype=torch.float32)
        bias = torch.tensor([b for _, b in items], dtype=torch.float32)
        out.append((weight, bias, dilation, padding))
    return out


@torch.no_grad()
def rocket_features(x: torch.Tensor, kernels: list[tuple[torch.Tensor, ...]], chunk: int = 64) -> torch.Tensor:
    """``[N, 2 * n_kernels]``: each kernel's proportion of positive values (PPV) and maximum over time."""
    feats = []
    for i in range(0, len(x), chunk):
        xb, parts = x[i:i + chunk], []
        for weight, bias, dilation, padding in kernels:
            if (weight.shape[-1] - 1) * dilation + 1 > xb.shape[-1] + 2 * padding:
                continue
            out = F.conv1d(xb, weight, bias, padding=padding, dilation=dilation)
            parts += [(out > 0).float().mean(-1), out.amax(-1)]
        feats.append(torch.cat(parts, 1))
    return torch.cat(feats)


def rocket_accuracy(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                    n_kernels: int = 10_000, seed: int = 0) -> float:
    """Test accuracy (%) of ROCKET features + standardisation + ``RidgeClassifierCV`` (alphas 1e-3..1e3)."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    kernels = _rocket_kernels(x_train.shape[1], x_train.shape[2], n_kernels, seed)
    f_train, f_test = rocket_features(x_train, kernels).numpy(), rocket_features(x_test, kernels).numpy()
    clf = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=np.logspace(-3, 3, 10)))
    clf.fit(f_train, y_train.numpy())
    return float(100 * (clf.predict(f_test) == y_test.numpy()).mean())


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    xs = [x['x'] if isinstance(x, dict) else x for x in xs]
    return torch.stack(xs), torch.stack([torch.as_tensor(y) for y in ys])


# The loops compared: the default (small-data recipe) and the plain Adam loop of a new user (the official
# Character Trajectories recipe, 100 epochs, batch at most the training-set size).
VARIANTS: dict[str, dict[str, Any]] = {
    'recipe': {},
    'plain_adam': dict(optimizer='adam', lr=1e-4, weight_decay=1e-5, epochs=100, batch_size=64, warmup_epochs=5,
                       label_smoothing=0.0, seq_augment='none', drop_rate=0.0, grad_clip=0.0,
                       model_args={'radius': 0.012, 'global_pool': 'last'}),
}


def train_accuracy(spec: str, out_dir: Path, overrides: dict[str, Any], seed: int = 0,
                   model: str = 'smpconv_tcn_chartraj') -> dict[str, Any]:
    """Train ``model`` on ``spec`` through ``train.py``'s loop; the final test accuracy (not the best epoch's)."""
    cfg = TrainConfig(**{**dict(model=model, data=spec, output_dir=str(out_dir), plot=False, cpu=True, seed=seed),
                         **overrides})
    summary = run(cfg, ['small_data'])
    return {'top1': summary['eval_top1'], 'epochs': summary['epochs'], 'seconds': summary['seconds']}


def _run_set(spec: SetSpec, variants: dict[str, dict[str, Any]], seed: int, kernels: int, threads: int,
             train_seed: int | None = None) -> dict[str, Any]:
    """One table row: generate ``spec``, fit ROCKET, train every variant (one process per set with ``--jobs``)."""
    with torch_threads(threads), _quiet(), tempfile.TemporaryDirectory() as tmp:
        path = save_npz(make_dataset(spec, seed), Path(tmp) / f'{spec.name}.npz')
        data = build_data(f'npz:{path}', 'sequence')
        row: dict[str, Any] = dict(set=spec.name, channels=spec.channels, length=spec.length, classes=spec.classes,
                                   n_train=spec.n_train, n_test=spec.n_test)
        t0 = time.time()
        x_train, y_train = _stack(data.train)
        x_test, y_test = _stack(data.test)
        row['rocket'] = rocket_accuracy(x_train, y_train, x_test, y_test, kernels, seed)
        row['rocket_s'] = time.time() - t0
        for name, overrides in variants.items():
            overrides = dict(overrides)
            if overrides.get('batch_size'):
                overrides['batch_size'] = min(overrides['batch_size'], spec.n_train)
            res = train_accuracy(f'npz:{path}', Path(tmp) / 'runs' / name, overrides,
                                 seed if train_seed is None else train_seed)
            row[name], row[f'{name}_s'] = res['top1'], res['seconds']
    _say(json.dumps(row))
    return row


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars (``TQDM_DISABLE``) and only errors from the training loggers in the block, then as before."""
    names = ('smpconv_models', 'accelerate', 'timm')
    levels = {name: logging.getLogger(name).level for name in names}
    previous = os.environ.get('TQDM_DISABLE')
    os.environ['TQDM_DISABLE'] = '1'
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if previous is None:
            os.environ.pop('TQDM_DISABLE', None)
        else:
            os.environ['TQDM_DISABLE'] = previous


def _say(line: str) -> None:
    sys.stdout.write(line + '\n')
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='tiny sets and budgets (a test of the command)')
    parser.add_argument('--sets', default='', help='comma-separated subset of the data sets')
    parser.add_argument('--variants', default='recipe,plain_adam',
                        help=f'training loops to run: {", ".join(VARIANTS)}, or JSON objects of overrides '
                             'separated by ";" (named by their JSON)')
    parser.add_argument('--kernels', type=int, default=10_000, help='ROCKET kernels')
    parser.add_argument('--seed', type=int, default=0, help='data (and, by default, training) seed')
    parser.add_argument('--train-seed', type=int, default=None,
                        help='training seed (initialisation, batches, augmentation) on the --seed data')
    parser.add_argument('--json', default='', help='also write the rows to this JSON file')
    parser.add_argument('--jobs', type=int, default=1, help='data sets trained at once, one process each')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads (1: these small models run fastest single-threaded on a busy CPU)')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault('TQDM_DISABLE', '1')
    for name in ('smpconv_models', 'accelerate', 'timm'):
        logging.getLogger(name).setLevel(logging.ERROR)
    specs = [s for s in DATASETS if not args.sets or s.name in args.sets.split(',')]
    if args.quick:
        specs = [SetSpec(s.name, s.kind, s.channels, min(s.length, 48), s.classes, max(s.classes * 3, 20), 40,
                         s.noise) for s in specs[:2]]
    variants: dict[str, dict[str, Any]] = {}
    for v in filter(None, args.variants.split(';' if '{' in args.variants else ',')):
        variants[v] = json.loads(v) if v.strip().startswith('{') else VARIANTS[v]
    if args.quick:
        variants = {k: {**v, 'epochs': 2} for k, v in variants.items()}
    jobs = [(spec, variants, args.seed, 200 if args.quick else args.kernels, args.threads, args.train_seed)
            for spec in specs]
    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context('spawn')) as pool:
            rows = list(pool.map(_run_set, *zip(*jobs)))
    else:
        rows = [_run_set(*job) for job in jobs]
    names = list(variants)
    header = '| set | C | L | classes | train | ROCKET | ' + ' | '.join(names) + ' |'
    _say(header)
    _say('|' + '---|' * (6 + len(names)))
    for r in rows:
        _say(f"| {r['set']} | {r['channels']} | {r['length']} | {r['classes']} | {r['n_train']} | "
              f"{r['rocket']:.1f} | " + ' | '.join(f'{r[n]:.1f}' for n in names) + ' |')
    means = {n: float(np.mean([r[n] for r in rows])) for n in ['rocket', *names]}
    _say('| mean | | | | | ' + ' | '.join(f'{means[n]:.1f}' for n in ['rocket', *names]) + ' |')
    if args.json:
        Path(args.json).write_text(json.dumps({'rows': rows, 'means': means}, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
