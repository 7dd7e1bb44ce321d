"""The small-data sequence recipe against random-convolution-kernel baselines, on generated data sets.

``python -m smpconv_models.experiments.small_data`` generates nine classification sets that are not separable by a
simple statistic: five with class-dependent shapes, frequencies, orders, channel couplings and warped trajectories,
at random positions and phases, with noise (30-200 training series, 1-6 channels, 64-300 steps, 2-10 classes, one
with variable lengths), and four univariate six-class shape sets of 300-500 steps and 180-200 training series
(event shapes after cylinder-bell-funnel, outlines and leaf margins read as radius against angle, control-chart
patterns). It writes them as ``.npz`` files, trains ``smpconv_tcn_chartraj`` on each through ``train.py`` (the
default small-data recipe, the plain Adam loop a new user would run, or any ``--variants`` of train.py options, an
``ensemble`` included), and fits the baselines: ROCKET (Dempster et al. 2020: random dilated kernels, PPV and max
features, a ridge classifier with cross-validated regularisation) and a MiniRocket-like one (Dempster et al. 2021),
both written here in torch. ``--write-benchmarks`` puts the table into a marked section of BENCHMARKS.md;
``--quick`` shrinks everything for a test.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shlex
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

from .._io import write_json_atomic, write_text_atomic
from ..train.config import TrainConfig
from ..train.data import build_data
from ..train.runner import run
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
    # univariate shape sets of a few hundred steps and a few hundred series (where the archives showed the gap)
    SetSpec('cbf6_u300', 'cbf6', 1, 300, 6, 180, 300, noise=0.7),
    SetSpec('outline6_u400', 'outline', 1, 400, 6, 200, 300, noise=0.05),
    SetSpec('control6_u500', 'control', 1, 500, 6, 200, 300, noise=0.5),
    SetSpec('margin6_u400', 'margin', 1, 400, 6, 200, 300, noise=0.01),
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
    if spec.kind == 'cbf6':
        return _cbf6(rng, label, n, noise)[None]
    if spec.kind == 'outline':
        return _outline(rng, label, n, noise)[None]
    if spec.kind == 'margin':
        return _margin(rng, label, n, noise)[None]
    if spec.kind == 'control':
        return _control(rng, label, n, noise)[None]
    # 'traj': a class trajectory under a random monotone time warp, speed (length), gain and noise
    length = int(rng.integers(int(0.4 * n), n + 1))
    u = np.linspace(0, 1, length)
    warp = u + rng.uniform(-0.12, 0.12) * np.sin(np.pi * u) * rng.choice([-1, 1])
    k = np.arange(1, protos.shape[-1] + 1)
    basis = np.sin(np.pi * np.outer(warp, k))  # [length, K]
    x = rng.uniform(0.8, 1.2) * (protos[label] @ basis.T)
    return x + rng.normal(0, noise, x.shape)


def _warp(rng: np.random.Generator, n: int, strength: float) -> np.ndarray:
    """A random smooth monotone map of ``[0, 1]`` onto itself at ``n`` points (time warping)."""
    u = np.linspace(0, 1, n)
    w = u + strength * sum(rng.uniform(-1, 1) * np.sin(np.pi * k * u) / (np.pi * k) for k in (1, 2, 3))
    w = np.maximum.accumulate(w)
    return (w - w[0]) / max(w[-1] - w[0], 1e-9)


def _cbf6(rng: np.random.Generator, label: int, n: int, noise: float) -> np.ndarray:
    """Six event shapes in the manner of Saito's cylinder / bell / funnel (1994): a plateau, a rising ramp, a falling
    ramp, a triangle, a smooth bump and a plateau with a notch, at a random onset and duration (1/6 to 1/2 of the
    series), amplitude and time warp, over a random walk with white noise."""
    width = int(rng.integers(n // 6, n // 2))
    onset = int(rng.integers(0, n - width))
    u = _warp(rng, width, 0.3)
    shape = [np.ones_like(u), u, 1 - u, 1 - np.abs(2 * u - 1), np.sin(np.pi * u) ** 2,
             np.where(np.abs(u - 0.5) < rng.uniform(0.08, 0.16), 0.3, 1.0)][label]
    x = np.cumsum(rng.normal(0, 0.04, n))
    x -= x.mean()
    x[onset:onset + width] += rng.uniform(1.5, 3.0) * shape
    return x + rng.normal(0, noise, n)


def _outline(rng: np.random.Generator, label: int, n: int, noise: float) -> np.ndarray:
    """A closed outline read as its radius against the angle (how leaf and other shape contours become series):
    six classes by their harmonic make-up (lobes, elongation, serration, tip sharpness), each drawn with random
    amplitudes, a random start point on the contour (a circular shift), a random warp of the angle and noise;
    z-normalised per series like the UCR shape sets."""
    theta = 2 * np.pi * _warp(rng, n, 0.4)
    lobes, elong, serr, sharp = [(3, 0.15, 0.0, 1), (3, 0.15, 0.06, 1), (5, 0.15, 0.0, 1), (3, 0.45, 0.0, 1),
                                 (4, 0.15, 0.0, 3), (5, 0.15, 0.06, 1)][label]
    amp = rng.uniform(0.2, 0.35)
    lobe = np.cos(lobes * theta + rng.uniform(-0.3, 0.3))
    lobe = np.sign(lobe) * np.abs(lobe) ** sharp
    r = 1 + amp * lobe + elong * rng.uniform(0.7, 1.3) * np.cos(2 * theta + rng.uniform(0, 2 * np.pi))
    r += serr * rng.uniform(0.7, 1.3) * np.cos(rng.integers(14, 19) * theta + rng.uniform(0, 2 * np.pi))
    for k in (1, 6, 7):  # the individual's own irregularities, shared by every class
        r += rng.normal(0, 0.04) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = np.roll(r, int(rng.integers(n))) + rng.normal(0, noise, n)
    return (r - r.mean()) / r.std()


def _margin(rng: np.random.Generator, label: int, n: int, noise: float) -> np.ndarray:
    """A leaf-like outline as radius against angle where the class is the margin, not the overall form: smooth,
    finely serrated, coarsely toothed, doubly serrated (teeth with small teeth), lobed, or spiny (a few sharp
    spikes); every individual draws its own elongation, asymmetry and base (class-independent and larger than the
    margin), the margin's frequency and depth, a start point (circular shift) and an angle warp; z-normalised."""
    theta = 2 * np.pi * _warp(rng, n, 0.3)
    r = 1 + rng.uniform(0.2, 0.6) * np.cos(2 * theta + rng.uniform(-0.3, 0.3))
    for k in (1, 3):
        r += rng.uniform(0.0, 0.15) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    depth = rng.uniform(0.03, 0.06)
    tooth = lambda f: 2 * ((f * theta / (2 * np.pi) + rng.uniform()) % 1.0) - 1  # sawtooth teeth  # noqa: E731
    if label == 1:
        r += 0.6 * depth * tooth(rng.integers(40, 56))
    elif label == 2:
        r += 1.5 * depth * tooth(rng.integers(14, 20))
    elif label == 3:
        r += 1.5 * depth * tooth(rng.integers(14, 20)) + 0.6 * depth * tooth(rng.integers(40, 56))
    elif label == 4:
        r += 4 * depth * np.abs(np.cos(rng.integers(3, 6) * theta / 2 + rng.uniform(0, np.pi)))
    elif label == 5:
        for _ in range(int(rng.integers(4, 8))):
            centre = rng.uniform(0, 2 * np.pi)
            r += 4 * depth * np.exp(-((np.angle(np.exp(1j * (theta - centre)))) / 0.03) ** 2)
    r = np.roll(r, int(rng.integers(n))) + rng.normal(0, noise, n)
    return (r - r.mean()) / r.std()


def _control(rng: np.random.Generator, label: int, n: int, noise: float) -> np.ndarray:
    """Six control-chart patterns (Alcock and Manolopoulos' synthetic control data, 1999): normal, cyclic,
    increasing and decreasing trend, upward and downward shift; weak against the noise and a wandering baseline, with
    a random period, slope and change point."""
    t = np.arange(n) / n
    x = np.cumsum(rng.normal(0, 0.02, n))
    x -= x.mean()
    change = rng.uniform(0.2, 0.8)
    if label == 1:
        x += rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * t * n / rng.uniform(15, 60) + rng.uniform(0, 2 * np.pi))
    elif label in (2, 3):
        x += (1 if label == 2 else -1) * rng.uniform(0.6, 1.5) * np.maximum(t - change * 0.5, 0)
    elif label in (4, 5):
        x += (1 if label == 4 else -1) * rng.uniform(0.4, 1.0) * (t > change)
    return x + rng.normal(0, noise, n)


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


def _minirocket_kernels() -> torch.Tensor:
    """MiniRocket's 84 fixed kernels (Dempster et al. 2021): length 9, weight -1 everywhere and +2 at three of the
    nine taps (every choice of three), so each kernel sums to zero. ``[84, 1, 9]``."""
    import itertools

    weights = -torch.ones(84, 1, 9)
    for k, taps in enumerate(itertools.combinations(range(9), 3)):
        weights[k, 0, list(taps)] = 2.0
    return weights


def _minirocket_dilations(length: int, n_features: int, n_kernels: int = 84, max_dilations: int = 32
                          ) -> list[tuple[int, int]]:
    """``(dilation, features per kernel)``: up to 32 dilations spread exponentially from 1 to ``(L - 1) / 8``,
    about ``n_features / 84`` features per kernel shared among them (more for the small dilations, as a floor of a
    logspace repeats them)."""
    per_kernel = max(1, n_features // n_kernels)
    n_dil = min(per_kernel, max_dilations)
    top = math.log2(max(1.0, (length - 1) / 8))
    dil, counts = np.unique(np.floor(np.logspace(0, top, n_dil, base=2)).astype(int), return_counts=True)
    per_dil = (counts * per_kernel / n_dil).astype(int)
    per_dil[:per_kernel - per_dil.sum()] += 1
    return [(int(d), int(c)) for d, c in zip(dil, per_dil) if c > 0]


@torch.no_grad()
def minirocket_features(x: torch.Tensor, fit_x: torch.Tensor | None = None, n_features: int = 10_000,
                        seed: int = 0, state: dict[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """MiniRocket features (Dempster et al. 2021, written here from the paper): the 84 fixed kernels at exponentially
    spread dilations on the channel sum (multivariate series: a random channel subset per kernel and dilation),
    biases at quantiles (a low-discrepancy sequence) of the convolution output of random training series, and the
    proportion of positive values (PPV) of ``conv - bias`` as the only feature; half the (kernel, dilation) pairs
    are zero-padded ('same'), the others use the valid part. ``state`` from a fit on ``fit_x`` serves the test
    split. Returns ``([N, ~n_features], state)``."""
    weights = _minirocket_kernels()
    if state is None:
        if fit_x is None:
            raise ValueError('minirocket_features needs fit_x (training series) or a fitted state')
        g = np.random.default_rng(seed)
        n, chans, length = fit_x.shape
        plan = []
        phi = (math.sqrt(5) - 1) / 2
        counter = 0
        for d_i, (dilation, count) in enumerate(_minirocket_dilations(length, n_features)):
            pad = (4 * dilation) if (d_i % 2 == 0) else 0
            for k in range(84):
                n_ch = int(min(chans, 2 ** g.uniform(0, math.log2(min(chans, 9) + 1))))
                chans_k = torch.tensor(sorted(g.choice(chans, max(1, n_ch), replace=False)))
                example = fit_x[int(g.integers(n)), chans_k].sum(0)[None, None]
                out = F.conv1d(example, weights[k:k + 1], padding=pad, dilation=dilation).flatten()
                quantiles = [((counter + j + 1) * phi) % 1 for j in range(count)]
                counter += count
                biases = torch.quantile(out, torch.tensor(quantiles, dtype=out.dtype))
                plan.append((dilation, (pad if (d_i + k) % 2 == 0 else 0), k, chans_k, biases))
        state = {'plan': plan}
    feats = []
    for dilation, pad, k, chans_k, biases in state['plan']:
        series = x[:, chans_k].sum(1, keepdim=True)
        if 8 * dilation >= series.shape[-1] + 2 * pad:
            feats.append(torch.zeros(len(x), len(biases)))
            continue
        out = F.conv1d(series, weights[k:k + 1], padding=pad, dilation=dilation)  # [N, 1, L']
        feats.append((out > biases[None, :, None]).float().mean(-1))
    return torch.cat(feats, 1), state


def minirocket_accuracy(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                        n_features: int = 10_000, seed: int = 0) -> float:
    """Test accuracy (%) of :func:`minirocket_features` + standardisation + ``RidgeClassifierCV`` (alphas
    1e-3..1e3), the classifier of ROCKET's comparison (:func:`rocket_accuracy`)."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f_train, state = minirocket_features(x_train, x_train, n_features, seed)
    f_test, _ = minirocket_features(x_test, state=state)
    clf = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=np.logspace(-3, 3, 10)))
    clf.fit(f_train.numpy(), y_train.numpy())
    return float(100 * (clf.predict(f_test.numpy()) == y_test.numpy()).mean())


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
    """Train ``model`` on ``spec`` through ``train.py``'s loop; the final test accuracy (not the best epoch's), and
    for an ensemble its members' accuracies."""
    cfg = TrainConfig(**{**dict(model=model, data=spec, output_dir=str(out_dir), plot=False, cpu=True, seed=seed),
                         **overrides})
    summary = run(cfg, ['small_data'])
    members = summary.get('member_top1') or [summary['eval_top1']]
    return {'top1': summary['eval_top1'], 'epochs': summary['epochs'], 'seconds': summary['seconds'],
            'members': len(members), 'member_top1': float(np.mean(members)), 'member_top1s': list(members)}


def _run_set(spec: SetSpec, variants: dict[str, dict[str, Any]], seed: int, kernels: int, threads: int,
             train_seed: int | None = None) -> dict[str, Any]:
    """One table row: generate ``spec``, fit ROCKET and the MiniRocket-like baseline, train every variant (one
    process per set with ``--jobs``)."""
    with torch_threads(threads), _quiet(), tempfile.TemporaryDirectory() as tmp:
        path = save_npz(make_dataset(spec, seed), Path(tmp) / f'{spec.name}.npz')
        data = build_data(f'npz:{path}', 'sequence')
        row: dict[str, Any] = dict(set=spec.name, channels=spec.channels, length=spec.length, classes=spec.classes,
                                   n_train=spec.n_train, n_test=spec.n_test)
        x_train, y_train = _stack(data.train)
        x_test, y_test = _stack(data.test)
        if kernels:
            t0 = time.time()
            row['rocket'] = rocket_accuracy(x_train, y_train, x_test, y_test, kernels, seed)
            row['rocket_s'] = time.time() - t0
            t0 = time.time()
            row['minirocket'] = minirocket_accuracy(x_train, y_train, x_test, y_test, kernels, seed)
            row['minirocket_s'] = time.time() - t0
        for name, overrides in variants.items():
            overrides = dict(overrides)
            if overrides.get('batch_size'):
                overrides['batch_size'] = min(overrides['batch_size'], spec.n_train)
            res = train_accuracy(f'npz:{path}', Path(tmp) / 'runs' / name, overrides,
                                 seed if train_seed is None else train_seed)
            row[name], row[f'{name}_s'] = res['top1'], res['seconds']
            if res['members'] > 1:
                row[f'{name}_members'], row[f'{name}_member_top1'] = res['members'], res['member_top1']
                row[f'{name}_member_top1s'] = res['member_top1s']
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


BENCHMARKS_BEGIN = ('<!-- small_data:begin (written by python -m smpconv_models.experiments.small_data '
                    '--write-benchmarks) -->')
BENCHMARKS_END = '<!-- small_data:end -->'


def table_lines(rows: list[dict[str, Any]], names: list[str]) -> list[str]:
    """The Markdown comparison table: per set ROCKET, the MiniRocket-like baseline and each variant (an ensemble
    also shows its members' mean accuracy), then the means over sets."""
    baselines = [k for k in ('rocket', 'minirocket') if all(k in r for r in rows)]
    cols = [*baselines]
    for n in names:
        cols.append(n)
        if all(f'{n}_member_top1' in r for r in rows):
            cols.append(f'{n}_member_top1')
    titles = {'rocket': 'ROCKET', 'minirocket': 'MiniRocket-like'}
    for n in names:
        title = 'defaults' if n == 'recipe' else n
        members = {r.get(f'{n}_members') for r in rows}
        titles[n] = title + (f' (ensemble of {members.pop()})' if len(members) == 1 and None not in members else '')
        titles[f'{n}_member_top1'] = f'{title}: one member (mean)'
    lines = ['| set | C | L | classes | train | ' + ' | '.join(titles[c] for c in cols) + ' |',
             '|' + '---|' * (5 + len(cols))]
    for r in rows:
        lines.append(f"| {r['set']} | {r['channels']} | {r['length']} | {r['classes']} | {r['n_train']} | "
                     + ' | '.join(f'{r[c]:.1f}' for c in cols) + ' |')
    means = {c: float(np.mean([r[c] for r in rows])) for c in cols}
    lines.append('| mean | | | | | ' + ' | '.join(f'{means[c]:.1f}' for c in cols) + ' |')
    return lines


def write_benchmarks(path: Path, rows: list[dict[str, Any]], names: list[str], command: str) -> Path:
    """Replace the marked section of ``path`` (BENCHMARKS.md) with the table of ``rows`` and how it was made,
    atomically; the section is appended when the file has no markers yet."""
    seconds = {n: {r['set']: r[f'{n}_s'] for r in rows} for n in names}
    body = [BENCHMARKS_BEGIN, '', f'Command: `{command}` (torch {torch.__version__}, {torch.get_num_threads()} torch '
            f'thread(s), {os.cpu_count()} CPUs visible; training seconds per set in the order of the table: '
            + '; '.join(f"{'defaults' if n == 'recipe' else n}: " + ', '.join(f'{v:.0f}' for v in seconds[n].values())
                        for n in names) + '). Test top-1 (%) at the end of training (not the best epoch).', '',
            *table_lines(rows, names), '', BENCHMARKS_END]
    text = path.read_text() if path.exists() else ''
    if BENCHMARKS_BEGIN in text and BENCHMARKS_END in text:
        head, rest = text.split(BENCHMARKS_BEGIN, 1)
        tail = rest.split(BENCHMARKS_END, 1)[1]
        text = head + '\n'.join(body) + tail
    else:
        text = text.rstrip('\n') + ('\n\n' if text else '') + '\n'.join(body) + '\n'
    return write_text_atomic(path, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='tiny sets and budgets (a test of the command)')
    parser.add_argument('--sets', default='', help='comma-separated subset of the data sets')
    parser.add_argument('--variants', default='recipe',
                        help=f'training loops to run: {", ".join(VARIANTS)} (recipe: the defaults), or JSON objects '
                             'of train.py overrides separated by ";" (named by their JSON)')
    parser.add_argument('--kernels', type=int, default=10_000,
                        help='ROCKET kernels and MiniRocket-like features (0: no baselines)')
    parser.add_argument('--seed', type=int, default=0, help='data (and, by default, training) seed')
    parser.add_argument('--train-seed', type=int, default=None,
                        help='training seed (initialisation, batches, augmentation) on the --seed data')
    parser.add_argument('--json', default='', help='also write the rows to this JSON file')
    parser.add_argument('--write-benchmarks', nargs='?', const='BENCHMARKS.md', default=None, metavar='PATH',
                        help='write the table into the marked section of BENCHMARKS.md (or PATH), atomically')
    parser.add_argument('--save-sets', default=None, metavar='DIR',
                        help='only write the generated sets (--sets, --seed) as DIR/<set>.npz for train.py --data npz:')
    parser.add_argument('--jobs', type=int, default=1, help='data sets trained at once, one process each')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads (1: these small models run fastest single-threaded on a busy CPU)')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault('TQDM_DISABLE', '1')
    for name in ('smpconv_models', 'accelerate', 'timm'):
        logging.getLogger(name).setLevel(logging.ERROR)
    known = {s.name for s in DATASETS}
    unknown = [n for n in filter(None, args.sets.split(',')) if n not in known]
    if unknown:
        parser.error(f'unknown data set(s) {", ".join(unknown)}; known: {", ".join(sorted(known))}')
    specs = [s for s in DATASETS if not args.sets or s.name in args.sets.split(',')]
    if args.quick:
        specs = [SetSpec(s.name, s.kind, s.channels, min(s.length, 48), s.classes, max(s.classes * 3, 20), 40,
                         s.noise) for s in specs[:2]]
    if args.save_sets:
        for spec in specs:
            _say(str(save_npz(make_dataset(spec, args.seed), Path(args.save_sets) / f'{spec.name}.npz')))
        return 0
    variants: dict[str, dict[str, Any]] = {}
    for v in filter(None, args.variants.split(';' if '{' in args.variants else ',')):
        variants[v] = json.loads(v) if v.strip().startswith('{') else VARIANTS[v]
    if args.quick:
        variants = {k: {**v, 'epochs': 2} for k, v in variants.items()}
    kernels = min(args.kernels, 200) if args.quick else args.kernels
    jobs = [(spec, variants, args.seed, kernels, args.threads, args.train_seed) for spec in specs]
    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context('spawn')) as pool:
            rows = list(pool.map(_run_set, *zip(*jobs)))
    else:
        rows = [_run_set(*job) for job in jobs]
    names = list(variants)
    for line in table_lines(rows, names):
        _say(line)
    command = 'python -m smpconv_models.experiments.small_data ' + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.json:
        write_json_atomic(Path(args.json), {'command': command, 'rows': rows})
    if args.write_benchmarks:
        _say(f'wrote {write_benchmarks(Path(args.write_benchmarks), rows, names, command)}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
