"""Parametric continuous convolution on point sets (Wang et al., CVPR 2018, Eq. 3) with MLP or SMP kernels.

    h_i = sum_{j in N(x_i)} g((y_j - x_i) / s) f_j        (optionally divided by |N(x_i)|)

Support points ``y_j`` carry features ``f_j``; output points ``x_i`` (the support by default) gather their
neighbours ``N(x_i)`` (k nearest, or those within a radius, at most ``k``); the kernel ``g`` maps relative
coordinates in ``[-1, 1]^d`` to ``[F_out, F_in]`` weights and is zero outside that box. ``s`` (``kernel_extent``) is
the physical offset that maps to the kernel's edge.

Both kernel generators are a *basis times weights*: ``g(u)[o, i] = sum_h b_h(u) W[o, i, h]``, with ``b`` the last
hidden layer of an MLP (:class:`MLPKernel`, Wang et al.'s g) or the SMP hat responses (:class:`SMPPointKernel`,
Kim & Park Eq. 1-2 through :func:`smp_basis`). The convolution contracts the basis with the neighbours' features
first, then with ``W``, so no ``[B, M, k, F_in, F_out]`` kernel tensor ever exists.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
from timm.layers import register_notrace_module
from torch import Tensor

from .conv import check_float_3d
from .mode import execution_mode
from .smp_kernel import divide_by_count, hat_count, smp_basis, smp_kernel
from .smp_points import SMPPoints

__all__ = ['MLPKernel', 'SMPPointKernel', 'PointConv', 'point_conv', 'find_neighbors', 'farthest_point_sample',
           'random_point_sample', 'check_point_set']

# Largest pairwise-distance block (elements) the plain-torch neighbour search holds at once (16 MiB in float32).
DIST_BLOCK = 1 << 22


def _activation(activation: str | type[nn.Module] | Callable[[], nn.Module]) -> nn.Module:
    if isinstance(activation, str):
        from timm.layers import get_act_layer

        layer = get_act_layer(activation)
        if layer is None:
            raise ValueError(f'unknown activation {activation!r}')
        return layer()
    return activation()


@register_notrace_module
class MLPKernel(nn.Module):
    """Wang et al.'s kernel generator g: an MLP on relative coordinates whose last hidden layer is a basis.

    ``MLPKernel(dim, in_channels, out_channels, hidden=32, depth=2, activation='relu')``:

    * ``basis(offsets)``: ``[..., d]`` relative coordinates (kernel units, the kernel's box is ``[-1, 1]^d``) ->
      ``[..., H]`` (``H = hidden``), the output of the last of ``depth`` hidden layers
      ``Linear -> activation``;
    * ``weights``: the output layer, a parameter ``[F_out, F_in, H]`` (no bias), so the kernel at an offset is
      ``g(u)[o, i] = sum_h basis(u)[h] * weights[o, i, h]`` (``forward`` evaluates exactly that, ``[..., F_out,
      F_in]``, for inspection and tests; convolutions contract the basis with features instead);
    * ``basis_size``: ``H``.

    ``activation`` is a timm activation name (``'relu'``, ``'gelu'``, ``'silu'``, ``'tanh'``, ...) or a module class.
    ``weights`` start as N(0, 1 / (F_in * H)) (fan-in scaling of the contraction over inputs and basis).
    """

    def __init__(
            self,
            dim: int,
            in_channels: int,
            out_channels: int,
            hidden: int = 32,
            depth: int = 2,
            activation: str | type[nn.Module] = 'relu',
            device=None,
            dtype=None,
    ):
        super().__init__()
        for name, value in (('dim', dim), ('in_channels', in_channels), ('out_channels', out_channels),
                            ('hidden', hidden), ('depth', depth)):
            if int(value) < 1:
                raise ValueError(f'MLPKernel: {name} must be at least 1, got {value}')
        dd = dict(device=device, dtype=dtype)
        self.dim, self.in_channels, self.out_channels = int(dim), int(in_channels), int(out_channels)
        self.basis_size = int(hidden)
        layers: list[nn.Module] = []
        width = self.dim
        for _ in range(int(depth)):
            layers += [nn.Linear(width, self.basis_size, **dd), _activation(activation)]
            width = self.basis_size
        self.mlp = nn.Sequential(*layers)
        self.weights = nn.Parameter(torch.empty(self.out_channels, self.in_channels, self.basis_size, **dd))
        nn.init.normal_(self.weights, std=(self.in_channels * self.basis_size) ** -0.5)

    def aggregate(self, offsets: Tensor, neighbor_features: Tensor) -> Tensor:
        """``sum_j g(offsets_j) f_j``: offsets ``[B, M, k, d]``, features ``[B, M, k, F_in]`` -> ``[B, M, F_out]``
        (basis ``[B, M, k, H]``, then ``[B, M, H, F_in]``, then the weights)."""
        return _contract_basis(self.basis(offsets), neighbor_features, self.weights)

    def basis(self, offsets: Tensor) -> Tensor:
        """``[..., d]`` relative coordinates -> ``[..., H]`` last-hidden-layer responses."""
        if offsets.shape[-1] != self.dim:
            raise ValueError(f'MLPKernel: offsets must be [..., {self.dim}], got shape {tuple(offsets.shape)}')
        return self.mlp(offsets)

    def forward(self, offsets: Tensor) -> Tensor:
        """The kernel ``[..., F_out, F_in]`` at ``[..., d]`` offsets (materialised: for small queries only)."""
        return torch.einsum('...h,oih->...oi', self.basis(offsets), self.weights)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, in_channels={self.in_channels}, out_channels={self.out_channels}, ' \
               f'hidden={self.basis_size}'


def _contract_basis(basis: Tensor, neighbor_features: Tensor, weights: Tensor) -> Tensor:
    """``out[b, m, o] = sum_{j, h} basis[b, m, j, h] f[b, m, j, i] W[o, i, h]`` via ``[B, M, H, F_in]``."""
    mixed = torch.matmul(basis.transpose(-1, -2), neighbor_features)  # [B, M, H, F_in]
    return torch.matmul(mixed.flatten(-2), weights.permute(2, 1, 0).reshape(-1, weights.shape[0]))


@register_notrace_module
class SMPPointKernel(SMPPoints):
    """The SMP kernel (Kim & Park, Eq. 1-2) as a point-convolution kernel generator, evaluated at neighbour offsets.

    An :class:`~smpconv_models.layers.smp_points.SMPPoints` point set: ``weight_coord`` [G, P, d], ``radius``
    [G, P, 1], ``weights`` [F_out, F_in, P]. ``shared_points=True`` gives one set of ``P`` points for all filters
    (``G = 1``); ``False`` gives every output channel its own points (``G = F_out``, the CIFAR ``SMPConv`` layout,
    whose parameters copy over unchanged). ``kernel_normalize`` applies Eq. 1's ``1 / |N(u)|`` (points whose hat
    covers the offset ``u``, ``+ 1e-6``), as ``SMPConv`` does. ``learn_positions`` / ``learn_radius`` set
    ``requires_grad`` of ``weight_coord`` / ``radius`` (kept in the state dict either way).

    Basis: the hat responses :func:`smp_basis` (``[B, M, G, P, k]``). Shared points contract them with the
    neighbours' features first (``[B, M, P, F_in]``), then with ``weights``; per-filter points first map features
    through ``weights`` (``[B, M, F_out, P, k]``, the size of their basis), so they cost ``F_out`` times more memory.
    """

    def __init__(
            self,
            dim: int,
            in_channels: int,
            out_channels: int,
            n_points: int = 16,
            radius: float = 0.8,
            coord_std: float = 0.6,
            shared_points: bool = True,
            kernel_normalize: bool = True,
            learn_positions: bool = True,
            learn_radius: bool = True,
            radius_bounds: tuple[float, float] = (1e-4, 1.0),
            device=None,
            dtype=None,
    ):
        for name, value in (('dim', dim), ('in_channels', in_channels), ('out_channels', out_channels)):
            if int(value) < 1:
                raise ValueError(f'SMPPointKernel: {name} must be at least 1, got {value}')
        groups = 1 if shared_points else int(out_channels)
        # weights ~ N(0, 1 / (F_in * P)): fan-in scaling of the contraction over inputs and points
        super().__init__(groups, n_points, int(dim), (int(out_channels), int(in_channels)), radius, coord_std,
                         radius_bounds, weight_std=(int(in_channels) * max(1, int(n_points))) ** -0.5,
                         truncate_weights=False, learn_positions=learn_positions, learn_radius=learn_radius,
                         device=device, dtype=dtype)
        self.dim, self.in_channels, self.out_channels = int(dim), int(in_channels), int(out_channels)
        self.basis_size = self.n_points
        self.shared_points = bool(shared_points)
        self.kernel_normalize = bool(kernel_normalize)

    def aggregate(self, offsets: Tensor, neighbor_features: Tensor) -> Tensor:
        """``sum_j g(offsets_j) f_j``: offsets ``[B, M, k, d]``, features ``[B, M, k, F_in]`` -> ``[B, M, F_out]``."""
        h = smp_basis(offsets, self.weight_coord, self.radius)  # [B, M, G, P, k]
        if self.shared_points:
            h = h.squeeze(-3)  # [B, M, P, k]
            if self.kernel_normalize:  # 1/|N(u)| depends on the neighbour only: scale its features instead of h
                neighbor_features = divide_by_count(neighbor_features, hat_count(h).transpose(-1, -2))
            mixed = torch.matmul(h, neighbor_features)  # [B, M, P, F_in]
            return torch.matmul(mixed.flatten(-2), self.weights.permute(2, 1, 0).reshape(-1, self.out_channels))
        if self.kernel_normalize:
            h = divide_by_count(h, hat_count(h))
        w = self.weights.permute(0, 2, 1).reshape(-1, self.in_channels)  # [F_out * P, F_in]
        mapped = torch.matmul(w, neighbor_features.transpose(-1, -2))  # [B, M, F_out * P, k]
        return (mapped.view_as(h) * h).sum((-1, -2))

    def forward(self, offsets: Tensor) -> Tensor:
        """The kernel ``[..., F_out, F_in]`` at ``[..., d]`` offsets through :func:`smp_kernel` (materialised: for
        small queries, plots and tests)."""
        if offsets.shape[-1] != self.dim:
            raise ValueError(f'SMPPointKernel: offsets must be [..., {self.dim}], got shape {tuple(offsets.shape)}')
        groups = self.weight_coord.shape[0]
        flat = offsets.reshape(-1, self.dim)
        kernel = smp_kernel(flat, self.weight_coord, self.radius, self.weights.reshape(groups, -1, self.n_points),
                            self.kernel_normalize)  # [G, C, Q]
        kernel = kernel.reshape(self.out_channels, self.in_channels, -1).permute(2, 0, 1)
        return kernel.reshape(*offsets.shape[:-1], self.out_channels, self.in_channels)

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, in_channels={self.in_channels}, out_channels={self.out_channels}, '
                f'shared_points={self.shared_points}, kernel_normalize={self.kernel_normalize}, '
                + super().extra_repr())


# ------------------------------------------------------------------------------------------------ neighbours

def _check_positions(name: str, positions: Tensor, batch: int | None = None, dim: int | None = None) -> None:
    check_float_3d(name, positions, '[B, N, d]')
    if batch is not None and positions.shape[0] != batch:
        raise ValueError(f'{name} has batch size {positions.shape[0]}, expected {batch}')
    if dim is not None and positions.shape[-1] != dim:
        raise ValueError(f'{name} must have coordinate dimension d={dim}, got {positions.shape[-1]} '
                         f'(shape {tuple(positions.shape)})')


def _check_mask(mask: Tensor | None, batch: int, n: int, name: str = 'mask') -> None:
    if mask is None:
        return
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f'{name} must be a bool tensor [B, N] (True = a real point), got '
                        f'{getattr(mask, "dtype", type(mask).__name__)}')
    if tuple(mask.shape) != (batch, n):
        raise ValueError(f'{name} must have shape [B, N] = [{batch}, {n}], got {tuple(mask.shape)}')


def check_point_set(features: Tensor, positions: Tensor, mask: Tensor | None = None, query: Tensor | None = None,
                    in_channels: int | None = None, dim: int | None = None, k: int | None = None) -> None:
    """Raise a clear error for a malformed point set: shapes, dtypes, batch and point counts, a bad mask, and (one
    host sync) non-finite positions of real points or fewer real points than ``k`` (k-nearest-neighbour search).
    While a graph is captured for export (:func:`~smpconv_models.layers.mode.execution_mode`) only the shape
    and dtype checks run: an exported graph cannot read values on the host."""
    check_point_set_shapes(features, positions, mask, query, in_channels, dim)
    n = features.shape[1]
    if k is not None and k > n:
        raise ValueError(f'k={k} neighbours requested but the sets hold only N={n} points')
    if execution_mode() == 'export':
        return
    finite = torch.isfinite(positions).all(-1)
    flags = [(finite if mask is None else finite | ~mask).all()]
    if query is not None:
        flags.append(torch.isfinite(query).all())
    if k is not None and mask is not None:
        flags.append(mask.sum(1).min() >= k)
    ok = torch.stack(flags).tolist()
    if not ok[0]:
        raise ValueError('positions contain NaN or infinite values (at points the mask marks as real)')
    if query is not None and not ok[1]:
        raise ValueError('query positions contain NaN or infinite values')
    if k is not None and mask is not None and not ok[-1]:
        raise ValueError(f'k={k} nearest neighbours requested but a set has only {int(mask.sum(1).min())} valid '
                         'points (mask); lower k or use radius search')


def _distances(query: Tensor, support: Tensor) -> Tensor:
    """Euclidean distances ``[B, M, N]`` from exact coordinate differences; while exporting as plain tensor ops
    (ONNX has no ``cdist``)."""
    if execution_mode() == 'export':
        return (query[:, :, None] - support[:, None]).square().sum(-1).sqrt()
    return torch.cdist(query, support, compute_mode='donot_use_mm_for_euclid_dist')


def _neighbors_torch(support: Tensor, query: Tensor, k: int, radius: float | None, support_mask: Tensor | None,
                     chunk_size: int | None) -> tuple[Tensor, Tensor]:
    batch, n, _ = support.shape
    m = query.shape[1]
    kk = min(k, n)
    # while exporting the batch dimension may be dynamic: chunks sized per set (memory then grows with the batch)
    chunk = chunk_size or max(1, DIST_BLOCK // max(1, (1 if execution_mode() == 'export' else batch) * n))
    dists, idxs = [], []
    for start in range(0, m, chunk):
        # exact differences (not the matmul expansion), so ties on grids are resolved the same everywhere
        d = _distances(query[:, start:start + chunk], support)
        if support_mask is not None:
            d = d.masked_fill(~support_mask[:, None], math.inf)
        d, i = d.topk(kk, dim=-1, largest=False)
        dists.append(d)
        idxs.append(i)
    dist, idx = torch.cat(dists, 1), torch.cat(idxs, 1)
    valid = torch.isfinite(dist)
    if radius is not None:
        valid = valid & (dist <= radius)
    if kk < k:  # radius search with a maximum count above the set size: pad with invalid slots
        pad = k - kk
        idx = torch.cat([idx, idx.new_zeros(batch, m, pad)], -1)
        valid = torch.cat([valid, valid.new_zeros(batch, m, pad)], -1)
    return idx, valid


def _neighbors_torch_cluster(support: Tensor, query: Tensor, k: int, radius: float | None,
                             support_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    import torch_cluster

    batch, n, d = support.shape
    m = query.shape[1]
    x = support
    if support_mask is not None:  # padded points far outside every neighbourhood; marked invalid below anyway
        far = support.abs().amax() * 4 + 1e6
        x = torch.where(support_mask[..., None], support, far)
    dev = support.device
    batch_x = torch.arange(batch, device=dev).repeat_interleave(n)
    batch_y = torch.arange(batch, device=dev).repeat_interleave(m)
    if radius is None:
        row, col = torch_cluster.knn(x.reshape(-1, d), query.reshape(-1, d), k, batch_x, batch_y)
    else:
        row, col = torch_cluster.radius(x.reshape(-1, d), query.reshape(-1, d), radius, batch_x, batch_y,
                                        max_num_neighbors=k)
    order = torch.argsort(row, stable=True)
    row, col = row[order], col[order]
    slot = torch.arange(row.numel(), device=dev) - torch.searchsorted(row, row)
    keep = slot < k
    row, col, slot = row[keep], col[keep], slot[keep]
    idx = torch.zeros(batch * m, k, dtype=torch.long, device=dev)
    valid = torch.zeros(batch * m, k, dtype=torch.bool, device=dev)
    idx[row, slot] = col - (row // m) * n
    valid[row, slot] = True
    idx, valid = idx.view(batch, m, k), valid.view(batch, m, k)
    if support_mask is not None:
        valid &= support_mask.gather(1, idx.flatten(1)).view_as(valid)
    if radius is not None:  # torch_cluster compares squared distances; keep the plain path's closed ball
        pos = support.gather(1, idx.flatten(1)[..., None].expand(-1, -1, d)).view(batch, m, k, d)
        valid &= (pos - query[:, :, None]).norm(dim=-1) <= radius
    return idx, valid


def _full_precision(positions: Tensor) -> Tensor:
    """Positions for distances: half-precision ones (bf16 / fp16 models, autocast) in float32, so that rounding never
    reorders neighbours (``cdist`` has no bf16 form either)."""
    return positions if positions.dtype in (torch.float32, torch.float64) else positions.float()


@torch.compiler.assume_constant_result  # torch.compile evaluates it once while tracing (no graph break)
def _has_torch_cluster() -> bool:
    try:
        import torch_cluster  # noqa: F401
    except ImportError:
        return False
    return True


@torch.no_grad()
def find_neighbors(
        support: Tensor,
        query: Tensor,
        k: int,
        radius: float | None = None,
        support_mask: Tensor | None = None,
        chunk_size: int | None = None,
        backend: str = 'auto',
) -> tuple[Tensor, Tensor]:
    """Neighbour indices ``[B, M, k]`` into the support and their validity ``[B, M, k]`` (bool).

    ``radius=None``: the ``k`` nearest real points (Euclidean). Otherwise the nearest at most ``k`` real points
    within ``radius`` (closed ball); unused slots are invalid. Padded points (``support_mask`` False) never count.
    ``backend='torch'`` (plain torch, CPU or CUDA) processes queries in chunks so one ``[B, chunk, N]`` distance
    block holds at most ``DIST_BLOCK`` elements (``chunk_size`` overrides the chunk); ``'torch_cluster'`` uses the
    optional ``torch_cluster`` package (``radius`` then keeps *some* ``k`` points of the ball, not the nearest);
    ``'auto'`` picks ``torch_cluster`` when it is installed (and ``'torch'`` while exporting: see
    :func:`~smpconv_models.layers.mode.execution_mode`). Half-precision positions are compared in float32.
    """
    if backend not in ('auto', 'torch', 'torch_cluster'):
        raise ValueError(f"backend must be 'auto', 'torch' or 'torch_cluster', got {backend!r}")
    if int(k) < 1:
        raise ValueError(f'k must be at least 1, got {k}')
    if radius is not None and not radius > 0:
        raise ValueError(f'radius must be positive, got {radius}')
    _check_positions('support positions', support)
    _check_positions('query', query, support.shape[0], support.shape[-1])
    _check_mask(support_mask, support.shape[0], support.shape[1], 'support_mask')
    support, query = _full_precision(support), _full_precision(query)
    if backend == 'torch_cluster' or (backend == 'auto' and execution_mode() != 'export' and _has_torch_cluster()):
        if backend == 'torch_cluster' and not _has_torch_cluster():
            raise ImportError("backend='torch_cluster' needs the optional torch_cluster package (pip install "
                              "torch-cluster, built for your torch version); backend='torch' needs nothing")
        return _neighbors_torch_cluster(support, query, int(k), radius, support_mask)
    return _neighbors_torch(support, query, int(k), radius, support_mask, chunk_size)


@torch.no_grad()
def farthest_point_sample(positions: Tensor, n_samples: int, mask: Tensor | None = None) -> Tensor:
    """Indices ``[B, n_samples]`` chosen by farthest-point sampling among real points, starting at the first real
    point. When a set has fewer real points than ``n_samples``, the remaining picks are padded points (so the
    gathered mask marks them); a real point is never picked twice. ``n_samples`` sequential steps of ``O(B N)``."""
    _check_positions('positions', positions)
    batch, n, _ = positions.shape
    _check_mask(mask, batch, n)
    if not 1 <= n_samples <= n:
        raise ValueError(f'n_samples must be in [1, N={n}], got {n_samples}')
    positions = _full_precision(positions)
    real = torch.ones(batch, n, dtype=torch.bool, device=positions.device) if mask is None else mask
    # score: distance to the picked set for unpicked real points (>= 0), -0.25 unpicked padded, -0.5 picked
    score = torch.where(real, math.inf, -0.25).to(positions.dtype)
    picks = [score.argmax(-1)]
    for _ in range(n_samples - 1):  # out-of-place steps: exporters trace the unrolled loop
        current = picks[-1]
        score = score.scatter(1, current[:, None], -0.5)
        centre = positions.gather(1, current[:, None, None].expand(-1, 1, positions.shape[-1]))
        dist = (positions - centre).square().sum(-1)
        score = torch.where(score >= 0, torch.minimum(score, dist), score)
        picks.append(score.argmax(-1))
    return torch.stack(picks, 1)


@torch.no_grad()
def random_point_sample(mask: Tensor, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
    """Indices ``[B, n_samples]`` of random distinct real points (padded ones only once a set runs out)."""
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f'mask must be a bool [B, N] tensor, got {mask.dtype} {tuple(mask.shape)}')
    if not 1 <= n_samples <= mask.shape[1]:
        raise ValueError(f'n_samples must be in [1, N={mask.shape[1]}], got {n_samples}')
    score = torch.rand(mask.shape, generator=generator, device=mask.device) - (~mask).float()
    return score.topk(n_samples, dim=-1).indices


# ------------------------------------------------------------------------------------------------ convolution

def point_conv(
        features: Tensor,
        positions: Tensor,
        kernel: MLPKernel | SMPPointKernel,
        query: Tensor | None = None,
        mask: Tensor | None = None,
        k: int = 16,
        radius: float | None = None,
        kernel_extent: float | None = None,
        normalize: bool = False,
        bias: Tensor | None = None,
        chunk_size: int | None = None,
        backend: str = 'auto',
        check_values: bool = True,
) -> Tensor:
    """Parametric continuous convolution ``h_i = sum_{j in N(x_i)} g((y_j - x_i) / s) f_j`` (Wang et al., Eq. 3).

    Args:
        features: ``[B, N, F_in]`` features of the support points.
        positions: ``[B, N, d]`` support positions (differentiable: gradients reach them through the offsets).
        kernel: a kernel generator (:class:`MLPKernel`, :class:`SMPPointKernel`) with ``aggregate``.
        query: ``[B, M, d]`` output positions (default: the support).
        mask: ``[B, N]`` bool, True for real points; padded points are never neighbours (their features and
            positions are ignored, NaN included).
        k: neighbours per query (k-nearest), or the maximum count with ``radius``.
        radius: neighbourhood radius (closed Euclidean ball, nearest ``k`` kept); ``None`` for k-nearest.
        kernel_extent: ``s``, the offset that maps to the kernel box's edge (``|u|_inf = 1``); neighbours outside
            the box contribute nothing. Default: ``radius`` for radius search, else per query the largest
            ``|offset|_inf`` among its neighbours (the box just covers them).
        normalize: divide by the number of neighbours that contribute (Monte Carlo average).
        bias: ``[F_out]`` added to every output.
        check_values: run the value checks of :func:`check_point_set` (one host sync); shapes are always checked.

    Returns:
        ``[B, M, F_out]``. Memory ``O(B M k (P + F_in) + B M P F_in + B M F_out)`` (``P``: basis size), never a
        ``[B, M, k, F_in, F_out]`` kernel. Held for backward: the offsets ``[B, M, k, d]``, the gathered neighbour
        features ``[B, M, k, F_in]``, the basis (SMP: the hat responses ``[B, M, G, P, k]``; MLP: each hidden
        layer's ``[B, M, k, H]``), the contracted ``[B, M, P, F_in]`` and the int64 neighbour indices ``[B, M, k]``.

    Regular grids: pixel ``(row i, col j)`` at position ``(j, -i)`` with ``kernel_extent = (K - 1) / 2`` makes this the
    dense ``K x K`` cross-correlation whose tap ``[a, b]`` is ``g(lin[b], lin[K - 1 - a])`` (``lin =
    linspace(-1, 1, K)``), which is :func:`kernel_coords` with ``rotate_2d=True``, i.e. ``SMPConv``'s orientation;
    in 1-d and 3-d position = index.
    """
    for attr in ('aggregate', 'dim', 'in_channels', 'out_channels'):
        if not hasattr(kernel, attr):
            raise TypeError(f'kernel must be a kernel generator (MLPKernel, SMPPointKernel), got {type(kernel)}')
    if int(k) < 1:
        raise ValueError(f'k must be at least 1, got {k}')
    if radius is not None and not radius > 0:
        raise ValueError(f'radius must be positive, got {radius}')
    if kernel_extent is not None and not kernel_extent > 0:
        raise ValueError(f'kernel_extent must be positive, got {kernel_extent}')
    if check_values:
        check_point_set(features, positions, mask, query, kernel.in_channels, kernel.dim,
                        int(k) if radius is None else None)
    else:
        check_point_set_shapes(features, positions, mask, query, kernel.in_channels, kernel.dim)
    if radius is None and int(k) > features.shape[1]:
        raise ValueError(f'k={k} neighbours requested but the sets hold only N={features.shape[1]} points')
    batch, n, chans = features.shape
    if mask is not None:  # padded positions may be anything: make them harmless before any arithmetic
        positions = positions.masked_fill(~mask[..., None], 0.0)
    query_pos = positions if query is None else query
    m = query_pos.shape[1]
    idx, valid = find_neighbors(positions.detach(), query_pos.detach(), int(k), radius, mask, chunk_size, backend)
    flat = (idx + torch.arange(batch, device=idx.device).view(batch, 1, 1) * n).reshape(-1)
    neighbor_pos = positions.reshape(batch * n, -1).index_select(0, flat).view(batch, m, int(k), -1)
    neighbor_feat = features.reshape(batch * n, chans).index_select(0, flat).view(batch, m, int(k), chans)
    offsets = neighbor_pos - query_pos.unsqueeze(2)
    extent = kernel_extent if kernel_extent is not None else radius
    if extent is None:
        reach = offsets.abs().amax(-1).masked_fill(~valid, 0.0).amax(-1, keepdim=True)  # [B, M, 1]
        offsets = offsets / torch.where(reach > 0, reach, torch.ones_like(reach)).unsqueeze(-1)
    else:
        offsets = offsets / extent
        valid = valid & (offsets.detach().abs().amax(-1) <= 1.0 + 1e-6)  # outside the kernel's box
    neighbor_feat = neighbor_feat * valid.unsqueeze(-1).to(neighbor_feat.dtype)
    out = kernel.aggregate(offsets, neighbor_feat)
    if normalize:
        out = out / valid.sum(-1, keepdim=True).clamp_min(1).to(out.dtype)
    if bias is not None:
        out = out + bias
    return out


def check_point_set_shapes(features: Tensor, positions: Tensor, mask: Tensor | None = None,
                           query: Tensor | None = None, in_channels: int | None = None,
                           dim: int | None = None) -> None:
    """The shape and dtype part of :func:`check_point_set` (no host sync)."""
    check_float_3d('features', features, '[B, N, F_in]')
    batch, n, chans = features.shape
    if in_channels is not None and chans != in_channels:
        raise ValueError(f'features have {chans} channels, expected F_in={in_channels}')
    _check_positions('positions', positions, dim=dim)
    if positions.shape[:2] != features.shape[:2]:
        raise ValueError(f'positions {tuple(positions.shape)} do not match features {tuple(features.shape)}: '
                         f'batch and point counts must agree')
    _check_mask(mask, batch, n)
    if query is not None:
        _check_positions('query', query, batch, positions.shape[-1])


@register_notrace_module
class PointConv(nn.Module):
    """Continuous convolution on point sets (Wang et al., CVPR 2018) with an SMP or MLP kernel.

    ``PointConv(in_channels, out_channels, kernel='smp' | 'mlp', dim=2, k=16, radius=None, normalize=False,
    kernel_extent=None, bias=True, **kernel_kwargs)``; ``forward(features [B, N, F_in], positions [B, N, d],
    query [B, M, d] = None, mask [B, N] = None) -> [B, M, F_out]``. See :func:`point_conv` for the neighbourhood,
    the kernel box, memory and what is held for backward. ``kernel_kwargs`` go to :class:`SMPPointKernel`
    (``n_points``, ``radius`` -> pass it as ``point_radius``, ``coord_std``, ``shared_points``, ``kernel_normalize``,
    ``learn_positions``, ``learn_radius``) or :class:`MLPKernel` (``hidden``, ``depth``, ``activation``).
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel: str = 'smp',
            dim: int = 2,
            k: int = 16,
            radius: float | None = None,
            normalize: bool = False,
            kernel_extent: float | None = None,
            bias: bool = True,
            chunk_size: int | None = None,
            backend: str = 'auto',
            device=None,
            dtype=None,
            **kernel_kwargs,
    ):
        super().__init__()
        if int(k) < 1:
            raise ValueError(f'k must be at least 1, got {k}')
        if radius is not None and not radius > 0:
            raise ValueError(f'radius must be positive, got {radius}')
        if kernel_extent is not None and not kernel_extent > 0:
            raise ValueError(f'kernel_extent must be positive, got {kernel_extent}')
        dd = dict(device=device, dtype=dtype)
        self.in_channels, self.out_channels, self.dim = int(in_channels), int(out_channels), int(dim)
        self.k, self.radius, self.normalize = int(k), radius, bool(normalize)
        self.kernel_extent, self.chunk_size, self.backend = kernel_extent, chunk_size, backend
        self.kernel_type = kernel
        if kernel == 'smp':
            if 'point_radius' in kernel_kwargs:
                kernel_kwargs['radius'] = kernel_kwargs.pop('point_radius')
            self.kernel = SMPPointKernel(self.dim, self.in_channels, self.out_channels, **kernel_kwargs, **dd)
        elif kernel == 'mlp':
            self.kernel = MLPKernel(self.dim, self.in_channels, self.out_channels, **kernel_kwargs, **dd)
        else:
            raise ValueError(f"kernel must be 'smp' or 'mlp', got {kernel!r}")
        self.bias = nn.Parameter(torch.zeros(self.out_channels, **dd)) if bias else None

    def forward(self, features: Tensor, positions: Tensor, query: Tensor | None = None,
                mask: Tensor | None = None, check_values: bool = True) -> Tensor:
        return point_conv(features, positions, self.kernel, query, mask, self.k, self.radius, self.kernel_extent,
                          self.normalize, self.bias, self.chunk_size, self.backend, check_values)

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, kernel={self.kernel_type!r}, dim={self.dim}, k={self.k}, '
                f'radius={self.radius}, normalize={self.normalize}, kernel_extent={self.kernel_extent}')
