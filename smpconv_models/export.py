"""Export a model to ONNX, checked in onnxruntime against PyTorch before the file appears.

``python -m smpconv_models.export MODEL OUT.onnx [--pretrained | --checkpoint PATH] [--model-args JSON]
[--no-reparam] [--dynamic-batch] [--opset N] [--exporter dynamo|torchscript] [--batch-size N] [--seq-len L]
[--fft-method auto|dft|matmul|direct] [--tolerance T]``

Builds the model (registered weights with ``--pretrained``, e.g. ``smpconv_tcn_mnist.digits``; an official or our
checkpoint file or Hub-layout folder with ``--checkpoint``), reparameterizes it into plain layers (the paper's
Sec. 3.3), exports it, loads the file in onnxruntime and compares the outputs with PyTorch's on a random input (and
on another batch size with ``--dynamic-batch``); the ``.onnx`` is written to a temporary sibling and renamed only
after that check passes, so a failed export leaves no file behind. Needs the ``export`` extra
(``pip install "smpconv-models[export]"``: onnx, onnxruntime, onnxscript).

Multi-input models export with one graph input per ``forward`` argument (:func:`example_inputs`): the point-set
models (``smpconv_points``) take ``features [B, N, C]``, ``positions [B, N, d]`` and ``mask [B, N]`` (bool), the
irregular-series TCNs (``smpconv_irregular_tcn*``) ``values [B, C, L]``, ``timestamps [B, L]`` (real-valued) and
``mask [B, L]`` (bool); the point count / length is fixed in the graph, the batch dynamic with ``--dynamic-batch``.
The irregular TCNs export their pairwise path (kernels at the timestamp differences, in static source windows: exact
for observed timestamps at least the model's ``min_gap`` apart) and so keep their continuous kernels: they are never
reparameterized.
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from ._io import parse_json_object
from .layers.export_conv import EXPORT_FFT_METHODS, export_fft_method
from .models import build_model, family_of

__all__ = ['export_onnx', 'build_export_model', 'example_inputs', 'onnx_relative_error', 'ExportCheckError', 'main']

Inputs = torch.Tensor | tuple[torch.Tensor, ...]

_logger = logging.getLogger(__name__)


class ExportCheckError(RuntimeError):
    """The exported graph does not reproduce PyTorch's outputs in onnxruntime (no file was written)."""


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ImportError(f'ONNX export needs onnx and onnxruntime ({e}); install them with '
                          'pip install "smpconv-models[export]"') from e
    return onnx, onnxruntime


def build_export_model(name: str, pretrained: bool = False, checkpoint: str | None = None,
                       model_args: dict[str, Any] | None = None, reparameterize: bool = True) -> nn.Module:
    """The eval-mode model to export: ``name`` (a registered smpconv model, or with ``pretrained`` a pretrained tag
    such as ``smpconv_tcn_mnist.digits``) with ``model_args``, weights from ``checkpoint`` (a file or Hub-layout
    folder, official or ours) if given, reparameterized into plain layers unless ``reparameterize=False`` or the
    family's description says otherwise (the irregular-series TCNs: their exported graph evaluates the continuous
    kernels at timestamp differences)."""
    model_args = dict(model_args or {})
    base = name.split('.')[0]
    family = family_of(name)  # an unknown name is an error listing the registered models
    if pretrained and checkpoint:
        raise ValueError('give either --pretrained or --checkpoint, not both')
    if checkpoint:
        model = build_model(base, model_args, pretrained=checkpoint)
    else:
        model = timm.create_model(name, pretrained=pretrained, **model_args)
    model.eval()
    if reparameterize and not family.reparameterize_on_export:
        _logger.info('%s keeps its continuous kernels (it exports the pairwise path, which serves real timestamps)',
                     base)
        reparameterize = False
    return timm.utils.reparameterize_model(model, inplace=True) if reparameterize else model


def example_inputs(model: nn.Module, batch_size: int = 2, seq_len: int | None = None,
                   n_points: int | None = None) -> tuple[torch.Tensor, ...]:
    """Random positional inputs of the model's configured size, as its family makes them
    (:meth:`~smpconv_models.models.ModelFamily.example_inputs`): ``(x,)`` for the image (``[B, C, H, W]``) and
    sequence models (``[B, C, L]``, ``seq_len`` overriding ``L``); for the point-set models ``(features [B, N, C],
    positions [B, N, d], mask [B, N])`` (``N``: ``n_points`` or the configured count; positions uniform in
    ``[-1, 1]^d``, the last set's final quarter padded); for the irregular-series models ``(values [B, C, L],
    timestamps [B, L], mask [B, L])`` (``L``: ``seq_len`` or the kernel length; real timestamps with gaps uniform in
    ``[0.5, 1.5)``, the last series' final quarter unobserved)."""
    return family_of(model).example_inputs(model, batch_size, length=seq_len, n_points=n_points)


def _input_names(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[str]:
    """``['input']`` for one input, else the names of ``model.forward``'s first arguments."""
    if len(inputs) == 1:
        return ['input']
    return list(inspect.signature(model.forward).parameters)[:len(inputs)]


def onnx_relative_error(session, model: nn.Module, x: Inputs) -> float:
    """``||onnx(x) - model(x)|| / ||model(x)||`` for an onnxruntime ``session`` of ``model`` (``x``: one input or
    a tuple of the model's positional inputs)."""
    x = x if isinstance(x, tuple) else (x,)
    with torch.inference_mode():
        ref = model(*x).float()
    feed = {i.name: (t.float() if t.is_floating_point() else t).detach().cpu().numpy()
            for i, t in zip(session.get_inputs(), x)}
    out = torch.from_numpy(session.run(None, feed)[0])
    if out.shape != ref.shape:
        raise ExportCheckError(f'onnxruntime output shape {tuple(out.shape)} differs from PyTorch {tuple(ref.shape)}')
    return float((out - ref.cpu()).norm() / ref.norm().clamp_min(1e-30))


def export_onnx(
        model: nn.Module,
        path: str | os.PathLike,
        x: Inputs,
        dynamic_batch: bool = False,
        opset: int | None = None,
        dynamo: bool = True,
        fft_method: str = 'auto',
        tolerance: float = 1e-4,
) -> dict[str, Any]:
    """Export ``model`` (eval mode) on the example input ``x`` (one tensor, or a tuple of the model's positional
    inputs as :func:`example_inputs` makes them: one graph input each, named after ``forward``'s arguments) to
    ``path``, check the file with ONNX's checker and in onnxruntime (relative error at most ``tolerance`` on ``x``
    and, with ``dynamic_batch``, on a batch of another size), then move it into place. Returns the checks; raises
    :class:`ExportCheckError` (and writes nothing) when they fail."""
    onnx, ort = _require_onnx()
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp')
    model.eval()
    inputs = x if isinstance(x, tuple) else (x,)
    names = _input_names(model, inputs)
    try:
        with export_fft_method(fft_method), torch.no_grad():
            if dynamo:
                kwargs: dict[str, Any] = dict(dynamo=True, external_data=False)
                if dynamic_batch:
                    kwargs['dynamic_shapes'] = tuple({0: 'batch'} for _ in inputs)
                program = torch.onnx.export(model, inputs, input_names=names, output_names=['output'],
                                            opset_version=opset, **kwargs)
                program.save(str(tmp))
            else:
                axes = {n: {0: 'batch'} for n in [*names, 'output']} if dynamic_batch else None
                torch.onnx.export(model, inputs, str(tmp), dynamo=False, input_names=names,
                                  output_names=['output'], opset_version=opset, dynamic_axes=axes)
        onnx.checker.check_model(str(tmp), full_check=True)
        session = ort.InferenceSession(str(tmp), providers=['CPUExecutionProvider'])
        batch = inputs[0].shape[0]
        checks = {f'batch_{batch}': onnx_relative_error(session, model, inputs)}
        if dynamic_batch:
            other = batch + 1
            if len(inputs) == 1:
                x2: Inputs = torch.randn((other, *inputs[0].shape[1:]), dtype=inputs[0].dtype,
                                         device=inputs[0].device)
            else:  # the same point count / length (fixed in the graph)
                family = family_of(model)
                x2 = family.example_inputs(model, other, **family.input_size_of(inputs))
            checks[f'batch_{other}'] = onnx_relative_error(session, model, x2)
        bad = {k: v for k, v in checks.items() if not v <= tolerance}
        if bad:
            raise ExportCheckError(f'onnxruntime outputs differ from PyTorch: relative error {bad} > {tolerance}')
        del session
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {'path': str(path), 'bytes': path.stat().st_size, 'relative_error': checks,
            'exporter': 'dynamo' if dynamo else 'torchscript', 'opset': opset, 'dynamic_batch': dynamic_batch}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m smpconv_models.export', description=__doc__.split('\n\n')[0])
    parser.add_argument('model', help='registered model name (with --pretrained a tag: smpconv_tcn_mnist.digits)')
    parser.add_argument('out', help='output .onnx file (written only after the onnxruntime check passes)')
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument('--pretrained', action='store_true', help="the model's registered pretrained weights")
    weights.add_argument('--checkpoint', default=None,
                         help='weights from a checkpoint file (official or ours) or a Hub-layout folder')
    parser.add_argument('--model-args', default='{}', help='JSON object of model kwargs, e.g. \'{"seq_len": 784}\'')
    parser.add_argument('--no-reparam', action='store_true', help='export without structural reparameterization')
    parser.add_argument('--dynamic-batch', action='store_true', help='a dynamic batch dimension')
    parser.add_argument('--opset', type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument('--exporter', choices=('dynamo', 'torchscript'), default='dynamo',
                        help='torch.onnx exporter (dynamo: torch.export based; torchscript: the older tracer)')
    parser.add_argument('--batch-size', type=int, default=2, help='batch size of the example input')
    parser.add_argument('--seq-len', type=int, default=None, help='sequence length of the example input '
                                                                  '(sequence models; default: the training length)')
    parser.add_argument('--fft-method', choices=EXPORT_FFT_METHODS, default='auto',
                        help='how FFT convolutions export (see smpconv_models/layers/export_conv.py)')
    parser.add_argument('--tolerance', type=float, default=1e-4, help='largest relative error accepted')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        model_args = parse_json_object(args.model_args, '--model-args')
        if args.batch_size < 1 or (args.dynamic_batch and args.exporter == 'dynamo' and args.batch_size < 2):
            raise ValueError('--batch-size must be at least 1 (at least 2 with --dynamic-batch: torch.export '
                             'specializes size-1 dimensions)')
        model = build_export_model(args.model, args.pretrained, args.checkpoint, model_args,
                                   reparameterize=not args.no_reparam)
        x = example_inputs(model, args.batch_size, args.seq_len)
        report = export_onnx(model, args.out, x, dynamic_batch=args.dynamic_batch, opset=args.opset,
                             dynamo=args.exporter == 'dynamo', fft_method=args.fft_method, tolerance=args.tolerance)
    except (ValueError, FileNotFoundError, ImportError, ExportCheckError) as e:
        _logger.error('error: %s', e)
        return 2
    sys.stdout.write(json.dumps(report) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
