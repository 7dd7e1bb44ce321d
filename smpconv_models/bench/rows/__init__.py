"""The benchmark's rows, one module per row or small group, registered in :data:`ROWS` (in the order they run).

A row is a function ``(quick: bool) -> dict``: ``ours_time`` and ``peer_time`` (median seconds from
:func:`~smpconv_models.bench.timing.time_pair`), ``batch`` and a ``note`` (optionally ``ours_gmacs`` /
``peer_gmacs``), or its own report (``scaling``: a table, no peer). Adding a row: one module here and one entry in
:data:`ROWS` with the ratio ``peer_time / ours_time`` it aims for.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from . import cifar, deployment, irregular, points, segmentation, smpconv_t, tcn

__all__ = ['Row', 'ROWS', 'TARGETS']


@dataclass(frozen=True)
class Row:
    """A benchmark row: ``run(quick)`` and the ratio it aims for (None: no peer, or no ratio target)."""

    run: Callable[[bool], dict[str, Any]]
    target: float | None = None


ROWS: Mapping[str, Row] = MappingProxyType({
    'smpconv_t_infer_vs_convnext_tiny': Row(smpconv_t.infer_vs_convnext, 1.0),
    'smpconv_t_train_vs_convnext_tiny': Row(smpconv_t.train_vs_convnext, 0.75),
    'smpconv_t_eval_cached_vs_reparam': Row(smpconv_t.eval_cached_vs_reparam, 0.9),
    'cifar_train_vs_mlp_kernel': Row(cifar.train_vs_mlp_kernel, 2.5),
    'tcn_mnist_train_fft_vs_direct': Row(tcn.train_fft_vs_direct, 3.0),
    'tcn_mnist_onnxruntime_vs_pytorch': Row(deployment.tcn_onnxruntime_vs_pytorch, 0.5),
    'smpconv_t_compiled_train_vs_convnext_tiny': Row(smpconv_t.compiled_train_vs_convnext, 0.75),
    'irregular_tcn_train_smp_vs_mlp': Row(irregular.train_smp_vs_mlp, 0.9),
    'points_train_smp_vs_mlp': Row(points.train_smp_vs_mlp, 1.0),
    'point_conv_scaling': Row(points.point_conv_scaling),
    'upernet_smpconv_t_train_vs_convnext_tiny_512': Row(segmentation.upernet_train_vs_convnext, 0.75),
    'upernet_smpconv_t_infer_vs_convnext_tiny_512': Row(segmentation.upernet_infer_vs_convnext, 1.0),
    **{name: Row(run, target) for name, (run, target) in points.SCALE_ROWS.items()},
    **{name: Row(run, target) for name, (run, target) in irregular.LONG_ROWS.items()},
})

# the ratio each row with a peer aims for (reported beside it)
TARGETS: Mapping[str, float] = MappingProxyType({name: row.target for name, row in ROWS.items()
                                                 if row.target is not None})
