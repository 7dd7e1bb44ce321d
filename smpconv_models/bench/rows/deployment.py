"""The ONNX rows: the exported models in onnxruntime against PyTorch (``--onnx-methods``: every family per FFT
export method of :mod:`~smpconv_models.layers.export_conv`)."""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from ...export import export_onnx
from ...layers import calibrate_bn_
from ..timing import alternating_medians, reps, time_pair

__all__ = ['ort_session', 'tcn_onnxruntime_vs_pytorch', 'onnx_fft_methods']

_logger = logging.getLogger(__name__)


def ort_session(model: nn.Module, x: torch.Tensor, path: Path, method: str = 'auto'):
    """``model`` exported with the dynamo exporter (FFT convolutions as ``method``) and loaded in onnxruntime with
    as many threads as PyTorch uses; returns a callable running it on ``x``."""
    import onnxruntime as ort

    export_onnx(model, path, x, fft_method=method)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def tcn_onnxruntime_vs_pytorch(quick: bool) -> dict[str, Any]:
    """onnxruntime vs PyTorch inference of the reparameterized 784-tap smpconv_tcn_mnist, batch 8."""
    torch.manual_seed(0)
    x = torch.randn(8, 1, 784)
    model = timm.utils.reparameterize_model(calibrate_bn_(timm.create_model('smpconv_tcn_mnist'), x))
    with tempfile.TemporaryDirectory() as tmp:
        ours = ort_session(model, x, Path(tmp) / 'tcn.onnx')

        def peer():
            with torch.inference_mode():
                model(x)
        t_ours, t_peer = time_pair(ours, peer, *reps(quick, 9))
    return dict(ours_time=t_ours, peer_time=t_peer, batch=8,
                note='ours: onnxruntime (CPU) of the exported model (FFT convs as matmul bases); peer: PyTorch eval')


def onnx_fft_methods(quick: bool = False) -> list[dict[str, Any]]:
    """ms of onnxruntime inference (batch 8) of each family's reparameterized model with its FFT convolutions
    exported as each method of :mod:`~smpconv_models.layers.export_conv`, next to PyTorch eval, alternating medians
    (what ``'auto'`` is chosen from). smpconv_tcn_speech_raw is timed at 2,000 steps (its 16,000-tap deploy model
    holds 690 MB of kernels); ``'direct'`` is skipped where it costs over 50 GMAC per sample."""
    settings = [('smpconv_cifar', {}, (3, 32, 32)), ('smpconv_tcn_mnist', {}, (1, 784)),
                ('smpconv_tcn_scifar10', {}, (3, 1024)), ('smpconv_tcn_chartraj', {}, (3, 182)),
                ('smpconv_tcn_speech', {}, (20, 161)), ('smpconv_tcn_speech_raw', {'seq_len': 2000}, (1, 2000))]
    rows = []
    for name, kwargs, shape in settings:
        torch.manual_seed(0)
        x = torch.randn(8, *shape)
        model = timm.utils.reparameterize_model(calibrate_bn_(timm.create_model(name, **kwargs), x))
        calls: dict[str, Callable[[], Any]] = {}

        def pytorch(model=model, x=x):
            with torch.inference_mode():
                model(x)
        calls['pytorch'] = pytorch
        with tempfile.TemporaryDirectory() as tmp:
            for method in ('dft', 'matmul', 'direct'):
                if method == 'direct' and shape[-1] > 1024:
                    continue
                calls[method] = ort_session(model, x, Path(tmp) / f'{method}.onnx', method)
            ms = {k: 1e3 * t for k, t in alternating_medians(calls, 3 if quick else 5).items()}
        rows.append({'model': name, 'input': list(shape), **{f'{k}_ms': v for k, v in ms.items()}})
        _logger.info('%s', rows[-1])
    return rows
