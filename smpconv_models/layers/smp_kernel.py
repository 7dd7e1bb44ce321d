"""The SMP kernel: a continuous function made of self-moving points (Kim & Park, CVPR 2023, Eq. 1-3).

Every SMP layer of the package (shared-point depthwise ImageNet kernels, per-filter CIFAR / sequence kernels,
point convolution on irregular data) evaluates its kernel through :func:`smp_kernel`. Point ``i`` has a position
``p_i`` in ``[-1, 1]^d``, a radius ``r_i`` and one weight per channel ``w_i``; the kernel at a query coordinate
``x`` is (Eq. 1-2)

    SMP(x) = (1 / |N(x)|) * sum_i relu(1 - ||x - p_i||_1 / r_i) * w_i,

where the ``1 / |N(x)|`` factor (``N(x)`` = points with a non-zero contribution, plus ``1e-6`` as in the official
code) is optional: the official ImageNet layers omit it, the CIFAR and sequence layers apply it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ['smp_kernel', 'smp_basis', 'kernel_coords', 'hat_count', 'divide_by_count',
           'COUNT_EPS']

COUNT_EPS = 1e-6  # added to |N(x)| before dividing, as in the official CIFAR / sequence kernels


class _SMPBasis(torch.autograd.Function):
    """``h[..., g, p, q] = relu(1 - ||q_q - p_{g,p}||_1 / r_{g,p})`` with a hand-written backward.

    Autograd through the plain expression holds the ``[..., G, P, Q, d]`` coordinate differences, their absolute
    values and the distances for backward. This function holds only its output ``h`` (which the following matmul
    holds anyway, so the storage is shared) and the small inputs; the signs it needs in backward are recomputed one
    axis at a time, so no ``[..., G, P, Q, d]`` tensor ever exists.
    """

    @staticmethod
    def forward(ctx, coords: Tensor, weight_coord: Tensor, radius: Tensor) -> Tensor:
        # coords [..., 1, 1, Q, d]; weight_coord [G, P, 1, d]; radius [G, P, 1]
        dist = None
        for axis in range(coords.shape[-1]):
            term = (weight_coord[..., axis] - coords[..., axis]).abs_()
            dist = term if dist is None else dist.add_(term)
        h = dist.div_(radius).neg_().add_(1.0).clamp_min_(0.0)
        ctx.save_for_backward(coords, weight_coord, radius, h)
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        coords, weight_coord, radius, h = ctx.saved_tensors
        need_coords, need_pos, need_radius = ctx.needs_input_grad[:3]
        # dh/dr = (1 - h) / r and dh/dp = -sign(p - x) / r inside the support (h > 0), zero outside.
        g = grad_h * (h > 0) / radius
        grad_coords = grad_pos = grad_radius = None
        if need_radius:
            grad_radius = (g * (1.0 - h)).sum(-1, keepdim=True).sum_to_size(radius.shape)
        if need_coords or need_pos:
            pos_axes, coord_axes = [], []
            for axis in range(coords.shape[-1]):
                gs = g * torch.sign(weight_coord[..., axis] - coords[..., axis])
                if need_pos:
                    pos_axes.append(gs.sum(-1).neg())
                if need_coords:
                    coord_axes.append(gs)
            if need_pos:
                grad_pos = torch.stack(pos_axes, -1).unsqueeze(-2).sum_to_size(weight_coord.shape)
            if need_coords:
                grad_coords = torch.stack([c.sum_to_size(coords.shape[:-1]) for c in coord_axes], -1)
        return grad_coords, grad_pos, grad_radius


def _check_points(weight_coord: Tensor, radius: Tensor) -> tuple[int, int, int]:
    if weight_coord.dim() != 3:
        raise ValueError(f'weight_coord must be [G, P, d], got shape {tuple(weight_coord.shape)}')
    groups, n_points, ndim = weight_coord.shape
    if radius.shape[:2] != (groups, n_points) or radius.numel() != groups * n_points:
        raise ValueError(
            f'radius must hold one value per point, shape [{groups}, {n_points}, 1...], got {tuple(radius.shape)}')
    return groups, n_points, ndim


def smp_basis(coords: Tensor, weight_coord: Tensor, radius: Tensor) -> Tensor:
    """Hat-function responses ``relu(1 - ||x - p||_1 / r)`` of every point at every query (Eq. 2).

    Args:
        coords: query coordinates ``[*batch, Q, d]``.
        weight_coord: point positions ``[G, P, d]`` (``G = 1`` for shared points, ``G = C_out`` per filter).
        radius: point radii ``[G, P]`` or ``[G, P, 1, ...]`` (the official layouts).

    Returns:
        ``[*batch, G, P, Q]``. Backward holds only this tensor (see :class:`_SMPBasis`).
    """
    groups, n_points, ndim = _check_points(weight_coord, radius)
    if coords.dim() < 2 or coords.shape[-1] != ndim:
        raise ValueError(f'coords must be [..., Q, {ndim}] to match weight_coord, got shape {tuple(coords.shape)}')
    if not (coords.is_floating_point() and weight_coord.is_floating_point()):
        raise TypeError(f'SMP coordinates must be floating point, got {coords.dtype} and {weight_coord.dtype}')
    batch = coords.shape[:-2]
    q = coords.reshape(*batch, 1, 1, coords.shape[-2], ndim)
    return _SMPBasis.apply(q, weight_coord.unsqueeze(-2), radius.reshape(groups, n_points, 1))


def smp_kernel(
        coords: Tensor,
        weight_coord: Tensor,
        radius: Tensor,
        weights: Tensor,
        normalize: bool = False,
) -> Tensor:
    """Evaluate the SMP function (Eq. 1) at query coordinates.

    Args:
        coords: query coordinates ``[*batch, Q, d]``: a regular grid from :func:`kernel_coords` (``[Q, d]``) or
            batches of irregular offsets, e.g. neighbour offsets in point convolution (``[B, Q, d]``).
        weight_coord: point positions ``[G, P, d]``; ``G = 1`` shares the points across all channels (ImageNet
            depthwise form), ``G = C_out`` gives every output channel its own points (CIFAR / sequence form).
        radius: ``[G, P]`` or ``[G, P, 1, ...]``.
        weights: ``[G, C, P]``, one weight per point and channel.
        normalize: divide by ``|N(x)| + 1e-6``, the number of points whose hat covers ``x`` (Eq. 1's average).

    Returns:
        ``[*batch, G, C, Q]``. Differentiable in every input. Memory held for backward: the basis
        ``[*batch, G, P, Q]`` (one float per point-query pair), the normaliser ``[*batch, G, 1, Q]`` and the inputs;
        never a ``[G, P, Q, d]`` tensor.
    """
    groups, n_points, _ = _check_points(weight_coord, radius)
    if weights.dim() != 3 or weights.shape[0] != groups or weights.shape[2] != n_points:
        raise ValueError(
            f'weights must be [G={groups}, C, P={n_points}], got shape {tuple(weights.shape)}')
    h = smp_basis(coords, weight_coord, radius)
    kernel = torch.matmul(weights, h)
    if normalize:
        # |N(x)| is piecewise constant (no gradient) and only depends on the query, so it scales kernel columns:
        # W @ (h / n) == (W @ h) / n, which avoids holding a second [G, P, Q] tensor.
        kernel = divide_by_count(kernel, hat_count(h))
    return kernel


def hat_count(h: Tensor, dim: int = -2) -> Tensor:
    """``|N(x)|``: how many points' hats cover each query, from hat responses ``h`` (points along ``dim``, kept as a
    size-1 axis), in ``h``'s dtype. Piecewise constant: no gradient."""
    return (h > 0).sum(dim, keepdim=True, dtype=h.dtype)


def divide_by_count(x: Tensor, count: Tensor) -> Tensor:
    """Eq. 1's average: ``x / (|N(x)| + 1e-6)`` (the official CIFAR / sequence kernels' ``1e-6``), ``count`` from
    :func:`hat_count` or any other count of the covering points broadcastable to ``x``.

    Where no hat covers a query (``count = 0``) every caller's ``x`` is a sum over zero hat responses, so the value
    is 0 whatever it is divided by; such a count is taken as 1, which keeps the gradient through the division
    (``1e6`` times larger otherwise) finite in half precision, where it would overflow and meet a zero hat as
    ``inf * 0``."""
    return x / (count.clamp_min(1) + COUNT_EPS)


def kernel_coords(
        kernel_size: int | Sequence[int],
        ndim: int | None = None,
        rotate_2d: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
) -> Tensor:
    """Query grid ``[prod(kernel_size), d]`` of ``linspace(-1, 1, K)`` coordinates, row-major over the kernel.

    For ``d = 2`` and ``rotate_2d=True`` the grid carries the official orientation: the official code evaluates on
    an ``'ij'`` meshgrid, then transposes and flips the first spatial axis (a 90-degree rotation), so kernel tap
    ``[i, j]`` is the SMP function at ``(lin[j], lin[K0 - 1 - i])``. Building the rotated grid directly gives the same
    numbers without a transpose/flip of the kernel. Other ``d`` use the plain ``'ij'`` grid.
    """
    if isinstance(kernel_size, int):
        if ndim is None:
            raise ValueError('ndim is required when kernel_size is an int')
        kernel_size = (kernel_size,) * ndim
    kernel_size = tuple(int(k) for k in kernel_size)
    if ndim is not None and len(kernel_size) != ndim:
        raise ValueError(f'kernel_size {kernel_size} does not have {ndim} dimensions')
    if any(k < 1 for k in kernel_size):
        raise ValueError(f'kernel sizes must be positive, got {kernel_size}')
    axes = [torch.linspace(-1, 1, k, device=device, dtype=dtype) for k in kernel_size]
    if len(kernel_size) == 2 and rotate_2d:
        axes = [axes[1], axes[0].flip(0)]
        grid = torch.stack(torch.meshgrid(*axes, indexing='xy'), -1)  # [K0, K1, 2]: (lin1[j], lin0[K0-1-i])
    else:
        grid = torch.stack(torch.meshgrid(*axes, indexing='ij'), -1)
    return grid.reshape(-1, len(kernel_size))
