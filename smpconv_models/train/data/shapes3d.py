"""``shapes3d``: generated 3-d point clouds of eight solids a user would recognise, sampled on their surfaces.

Classes (:data:`SHAPES`): sphere, cube, cylinder (with caps), cone (with base), torus, square pyramid (with base),
disc and square plate. Each set draws its shape's proportions (e.g. a cylinder's height, a torus' tube radius), then
``n`` points uniformly by area on the surface, ``n`` uniform in the points range (default 1,000-10,000); the points
are centred on the bounding box, scaled so the farthest lies at distance 1, rotated by a uniform random rotation,
scaled by a random factor in [0.6, 1] and moved by Gaussian noise (0.01 per coordinate). Features are the
coordinates (3 channels); sets are padded to the largest count with a mask. All draws are seeded independently of
the run seed, so the split is the same in every run. Nothing is downloaded.
"""
from __future__ import annotations

import math

import torch

from .common import DataBundle
from .points import PointSetDataset

__all__ = ['SHAPES', 'shapes3d', 'shape_point_sets', 'sample_shape', 'parse_point_range']

SHAPES = ('sphere', 'cube', 'cylinder', 'cone', 'torus', 'pyramid', 'disc', 'plate')
SHAPES_SEED = 4321
SETS_PER_CLASS = 128
POINT_RANGE = (1000, 10000)
SCALE_RANGE = (0.6, 1.0)
NOISE = 0.01


def _uniform(g: torch.Generator, *shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)


def _pick(areas: list[float], n: int, g: torch.Generator) -> torch.Tensor:
    """Which of the parts (by area) each of ``n`` points lies on."""
    return torch.multinomial(torch.tensor(areas, dtype=torch.float64), n, replacement=True, generator=g)


def _triangles(vertices: torch.Tensor, faces: list[tuple[int, int, int]], n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` points uniform by area on a triangle mesh."""
    tri = vertices[torch.tensor(faces)]  # [T, 3, 3]
    areas = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1) / 2
    which = _pick(areas.tolist(), n, g)
    u, v = _uniform(g, n, 1), _uniform(g, n, 1)
    flip = (u + v) > 1
    u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
    a, b, c = tri[which, 0], tri[which, 1], tri[which, 2]
    return a + u * (b - a) + v * (c - a)


def _disc(n: int, radius: float, height: float, g: torch.Generator) -> torch.Tensor:
    r = radius * _uniform(g, n).sqrt()
    theta = _uniform(g, n, hi=2 * math.pi)
    return torch.stack([r * theta.cos(), r * theta.sin(), torch.full_like(r, height)], -1)


def _box(sides: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    corners = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float64)
    faces = [(0, 1, 3), (0, 3, 2), (4, 6, 7), (4, 7, 5), (0, 4, 5), (0, 5, 1), (2, 3, 7), (2, 7, 6), (0, 2, 6),
             (0, 6, 4), (1, 5, 7), (1, 7, 3)]
    return corners * sides / 2, faces


def sample_shape(shape: str, n: int, g: torch.Generator) -> torch.Tensor:
    """``[n, 3]`` float64 points uniform by area on one random instance of ``shape`` (before normalisation)."""
    if shape == 'sphere':
        x = torch.randn(n, 3, generator=g, dtype=torch.float64)
        return x / x.norm(dim=-1, keepdim=True)
    if shape in ('cube', 'plate'):
        sides = _uniform(g, 3, lo=0.8, hi=1.2) if shape == 'cube' else torch.cat([_uniform(g, 2, lo=0.6, hi=1.0),
                                                                                  torch.zeros(1, dtype=torch.float64)])
        if shape == 'plate':
            corners = torch.tensor([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=torch.float64) * sides / 2
            return _triangles(corners, [(0, 1, 2), (0, 2, 3)], n, g)
        return _triangles(*_box(sides), n, g)
    if shape == 'pyramid':
        h = float(_uniform(g, 1, lo=1.0, hi=2.0))
        vertices = torch.tensor([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0], [0, 0, h]], dtype=torch.float64)
        return _triangles(vertices, [(0, 1, 2), (0, 2, 3), (0, 1, 4), (1, 2, 4), (2, 3, 4), (3, 0, 4)], n, g)
    if shape == 'disc':
        return _disc(n, 1.0, 0.0, g)
    if shape == 'cylinder':
        h = float(_uniform(g, 1, lo=1.0, hi=3.0))  # height over radius 1
        part = _pick([2 * math.pi * h, math.pi, math.pi], n, g)
        theta = _uniform(g, n, hi=2 * math.pi)
        side = torch.stack([theta.cos(), theta.sin(), _uniform(g, n, hi=h)], -1)
        caps = torch.where((part == 1)[:, None], _disc(n, 1.0, 0.0, g), _disc(n, 1.0, h, g))
        return torch.where((part == 0)[:, None], side, caps)
    if shape == 'cone':
        h = float(_uniform(g, 1, lo=1.0, hi=2.5))  # height over base radius 1
        part = _pick([math.pi * math.hypot(1.0, h), math.pi], n, g)
        t = _uniform(g, n).sqrt()  # distance from the apex as a fraction of the slant: uniform by area
        theta = _uniform(g, n, hi=2 * math.pi)
        side = torch.stack([t * theta.cos(), t * theta.sin(), h * (1 - t)], -1)
        return torch.where((part == 0)[:, None], side, _disc(n, 1.0, 0.0, g))
    if shape == 'torus':
        tube = float(_uniform(g, 1, lo=0.2, hi=0.45))  # tube radius over ring radius 1
        kept: list[torch.Tensor] = []
        while sum(len(k) for k in kept) < n:  # uniform by area: accept the tube angle with weight (1 + r cos phi)
            phi = _uniform(g, 2 * n, hi=2 * math.pi)
            accept = _uniform(g, 2 * n) * (1 + tube) < 1 + tube * phi.cos()
            kept.append(phi[accept])
        phi = torch.cat(kept)[:n]
        theta = _uniform(g, n, hi=2 * math.pi)
        ring = 1 + tube * phi.cos()
        return torch.stack([ring * theta.cos(), ring * theta.sin(), tube * phi.sin()], -1)
    raise ValueError(f'unknown shape {shape!r}; use one of {", ".join(SHAPES)}')


def _rotation(g: torch.Generator) -> torch.Tensor:
    """A uniform random rotation (QR of a Gaussian matrix, signs fixed, determinant +1)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def shape_point_sets(sets_per_class: int = SETS_PER_CLASS, point_range: tuple[int, int] = POINT_RANGE,
                     seed: int = SHAPES_SEED) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features [S, N, 3], positions [S, N, 3], mask [S, N], labels [S])`` float32, classes interleaved
    (set ``i`` is class ``i % 8``), ``N = point_range[1]``; features equal the positions (zero where padded)."""
    lo, hi = point_range
    if not 16 <= lo <= hi:
        raise ValueError(f'point_range must satisfy 16 <= lo <= hi, got {point_range}')
    if sets_per_class < 1:
        raise ValueError(f'sets_per_class must be at least 1, got {sets_per_class}')
    g = torch.Generator().manual_seed(seed)
    n_sets = sets_per_class * len(SHAPES)
    counts = torch.randint(lo, hi + 1, (n_sets,), generator=g)
    positions = torch.zeros(n_sets, hi, 3)
    for i in range(n_sets):
        n = int(counts[i])
        x = sample_shape(SHAPES[i % len(SHAPES)], n, g)
        x = x - (x.amax(0) + x.amin(0)) / 2
        x = x / x.norm(dim=-1).amax()
        x = x @ _rotation(g).T * _uniform(g, 1, lo=SCALE_RANGE[0], hi=SCALE_RANGE[1])
        x = x + NOISE * torch.randn(n, 3, generator=g, dtype=torch.float64)
        positions[i, :n] = x.float()
    mask = torch.arange(hi)[None] < counts[:, None]
    labels = torch.arange(n_sets) % len(SHAPES)
    return positions.clone(), positions, mask, labels


def parse_point_range(text: str) -> tuple[int, int]:
    """``'N'`` or ``'LO-HI'`` -> ``(lo, hi)`` points per set."""
    lo, _, hi = text.partition('-')
    if not lo.isdigit() or (hi and not hi.isdigit()):
        raise ValueError(f"shapes3d[:POINTS] takes a point count 'N' or a range 'LO-HI', got {text!r}")
    return int(lo), int(hi or lo)


def shapes3d(model_kind: str, test_fraction: float, point_range: tuple[int, int] = POINT_RANGE,
             sets_per_class: int = SETS_PER_CLASS) -> DataBundle:
    """The ``shapes3d[:POINTS]`` spec: 3-d point sets for a ``'points'`` model; per class, the first
    ``round(sets_per_class * test_fraction)`` sets are the test split (fixed), the rest train."""
    if model_kind != 'points':
        raise ValueError('shapes3d holds 3-d point sets; train a point-set model (smpconv_points_3d)')
    features, positions, mask, labels = shape_point_sets(sets_per_class, point_range)
    n_test = round(sets_per_class * test_fraction) * len(SHAPES)
    if not 0 < n_test < len(labels):
        raise ValueError(f'test_fraction {test_fraction} leaves no train or no test sets of {sets_per_class} per class')
    test, train = slice(0, n_test), slice(n_test, None)
    return DataBundle(PointSetDataset(features[train], positions[train], mask[train], labels[train]),
                      PointSetDataset(features[test], positions[test], mask[test], labels[test]),
                      len(SHAPES), 3, 'points', positions.shape[1], 'shapes3d', (0.0,) * 3, (1.0,) * 3,
                      model_args={'dim': 3})
