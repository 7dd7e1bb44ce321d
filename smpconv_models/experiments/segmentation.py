"""Fine-tuning an SMPConv encoder for segmentation: a runnable example on generated masks.

``python -m smpconv_models.experiments.segmentation [--decoder fpn|unet|upernet|segformer|deeplabv3plus]
[--output-stride 8|16|32] [--pretrained FILE] [--encoder-args JSON] [--kernel-scale S] [--size PX]
[--batch-size N] [--steps N] [--lr LR] [--channels-last] [--bf16] [--threads N] [--seed N] [--json FILE]
[--quick]``

Builds a segmentation_models_pytorch model on the ``tu-smpconv_t`` encoder (timm ``features_only``; with
``--pretrained``, weights converted by ``python -m smpconv_models.convert`` are loaded into the encoder through
timm's ``pretrained_cfg_overlay=dict(file=...)``; ``--output-stride`` 8 / 16 dilates the last stages for DeepLabV3+),
trains it for ``--steps`` AdamW steps on discs and squares on noise (:func:`~smpconv_models.train.data.shapes.
shapes_on_noise`) with the official optimizer groups (no weight decay on points, radius learning rate x0.1) and
radius clamping, and reports the training losses and the pixel accuracy / mean IoU on a held-out generated batch
before and after training: after it both with the BatchNorm statistics the training left (momentum averages, which
after a few fast-moving steps still mix the statistics of earlier weights) and with statistics recomputed for the
final weights on the training images (:func:`~smpconv_models.layers.calibrate_bn_`, "precise BN"). ``--channels-last``
and ``--bf16`` (CPU or CUDA autocast) are the recipe's speed switches.
``--quick``: a small encoder at 64 px for a smoke run (what the tests run). Needs the ``seg`` extra.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import models  # noqa: F401  (registers the smpconv models with timm)
from .._io import parse_json_object, write_json_atomic
from ..layers import calibrate_bn_, clamp_radii_, smp_param_groups
from ..train.data.shapes import SHAPE_CLASSES, shapes_on_noise
from ._common import torch_threads

__all__ = ['DECODERS', 'QUICK_ENCODER', 'build_segmenter', 'train_segmenter', 'evaluate_segmenter', 'run', 'main']

_logger = logging.getLogger(__name__)

# smp class name and decoder kwargs sized for small inputs (FPN's GroupNorm needs 32-divisible channels)
DECODERS: dict[str, tuple[str, dict[str, Any]]] = {
    'fpn': ('FPN', dict(decoder_segmentation_channels=64)),
    'unet': ('Unet', dict(decoder_channels=(128, 64, 32, 16, 16))),
    'upernet': ('UPerNet', dict(decoder_channels=64)),
    'segformer': ('Segformer', dict(decoder_segmentation_channels=64)),
    'deeplabv3plus': ('DeepLabV3Plus', dict(decoder_channels=64)),
}
QUICK_ENCODER = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), kernel_sizes=(13, 11, 9, 7))


def _smp():
    try:
        import segmentation_models_pytorch as smp
    except ImportError as e:
        raise ImportError(f'the segmentation example needs segmentation_models_pytorch ({e}); install it with '
                          'pip install "smpconv-models[seg]"') from e
    return smp


def build_segmenter(decoder: str = 'fpn', encoder: str = 'smpconv_t', classes: int = 3, output_stride: int = 32,
                    pretrained_file: str | None = None, encoder_args: dict[str, Any] | None = None,
                    kernel_scale: float = 1.0) -> nn.Module:
    """A segmentation_models_pytorch ``decoder`` on the ``tu-{encoder}`` encoder (timm ``features_only``).

    ``pretrained_file``: a converted checkpoint (``model.safetensors`` of ``python -m smpconv_models.convert``)
    loaded into the encoder by timm; ``encoder_args`` go to the encoder's constructor (e.g. its depths for a small
    one); ``kernel_scale`` re-samples the SMP kernels that much finer (fine-tuning at a higher resolution).
    ``output_stride`` 8 or 16 needs ``decoder='deeplabv3plus'`` (the other decoders take the full pyramid).
    """
    smp = _smp()
    if decoder not in DECODERS:
        raise ValueError(f'unknown decoder {decoder!r}; use one of {", ".join(DECODERS)}')
    cls_name, kwargs = DECODERS[decoder]
    kwargs = dict(kwargs)
    if decoder == 'deeplabv3plus':
        kwargs['encoder_output_stride'] = output_stride
    elif output_stride != 32:
        raise ValueError(f'output_stride {output_stride} needs the deeplabv3plus decoder ({decoder} takes the '
                         f'stride-32 pyramid)')
    enc_kwargs = dict(encoder_args or {})
    if kernel_scale != 1.0:
        enc_kwargs['kernel_scale'] = kernel_scale
    if pretrained_file is not None:  # timm loads the file through the model's checkpoint filter
        enc_kwargs['pretrained_cfg_overlay'] = dict(file=str(pretrained_file))
    return getattr(smp, cls_name)(f'tu-{encoder}', encoder_weights=True if pretrained_file else None,
                                  classes=classes, **kwargs, **enc_kwargs)


def _autocast(enabled: bool, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_segmenter(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, steps: int, batch_size: int = 4,
                    lr: float = 1e-3, channels_last: bool = False, bf16: bool = False, seed: int = 0) -> list[float]:
    """``steps`` AdamW steps of per-pixel cross-entropy on random batches of ``images`` / ``masks``; the loss of
    every step (read once, after the loop)."""
    device = next(model.parameters()).device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt).train()
    optimizer = torch.optim.AdamW(smp_param_groups(model, weight_decay=0.05, lr=lr), lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        x = images[idx].to(device).contiguous(memory_format=fmt)
        y = masks[idx].to(device)
        with _autocast(bf16, device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clamp_radii_(model)
        losses.append(loss.detach())
    return torch.stack(losses).tolist() if losses else []


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, classes: int,
                       batch_size: int = 8, bf16: bool = False) -> dict[str, float]:
    """Pixel accuracy and mean IoU (classes present in the masks or the predictions) in eval mode."""
    device = next(model.parameters()).device
    model.eval()
    preds = []
    for x in images.split(batch_size):
        with _autocast(bf16, device):
            preds.append(model(x.to(device)).argmax(1).cpu())
    pred = torch.cat(preds)
    confusion = torch.bincount(masks.flatten() * classes + pred.flatten(), minlength=classes ** 2)
    confusion = confusion.reshape(classes, classes).double()
    inter, union = confusion.diag(), confusion.sum(0) + confusion.sum(1) - confusion.diag()
    return {'pixel_acc': float(inter.sum() / confusion.sum()), 'miou': float((inter / union)[union > 0].mean())}


def run(decoder: str = 'fpn', output_stride: int = 32, pretrained_file: str | None = None,
        encoder_args: dict[str, Any] | None = None, kernel_scale: float = 1.0, size: int = 128, batch_size: int = 4,
        steps: int = 30, lr: float = 1e-3, channels_last: bool = False, bf16: bool = False, seed: int = 0,
        train_images: int = 64, eval_images: int = 16) -> dict[str, Any]:
    """Build, evaluate, train, evaluate; the report :func:`main` writes."""
    classes = len(SHAPE_CLASSES)
    images, masks = shapes_on_noise(train_images, size, seed=seed)
    eval_x, eval_y = shapes_on_noise(eval_images, size, seed=seed + 10_000)
    torch.manual_seed(seed)
    model = build_segmenter(decoder, classes=classes, output_stride=output_stride, pretrained_file=pretrained_file,
                            encoder_args=encoder_args, kernel_scale=kernel_scale)
    before = evaluate_segmenter(model, eval_x, eval_y, classes, bf16=bf16)
    losses = train_segmenter(model, images, masks, steps, batch_size, lr, channels_last, bf16, seed)
    after_running = evaluate_segmenter(model, eval_x, eval_y, classes, bf16=bf16)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    device = next(model.parameters()).device
    calibrate_bn_(model, [x.to(device).contiguous(memory_format=fmt) for x in images.split(batch_size)], passes=1)
    after = evaluate_segmenter(model, eval_x, eval_y, classes, bf16=bf16)
    return {'decoder': decoder, 'output_stride': output_stride, 'size': size, 'batch_size': batch_size,
            'steps': steps, 'encoder_args': encoder_args or {}, 'kernel_scale': kernel_scale,
            'pretrained_file': pretrained_file, 'channels_last': channels_last, 'bf16': bf16,
            'params': sum(p.numel() for p in model.parameters()), 'losses': losses, 'eval_before': before,
            'eval_after_running_stats': after_running, 'eval_after': after}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m smpconv_models.experiments.segmentation',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--decoder', default='fpn', choices=list(DECODERS))
    parser.add_argument('--output-stride', type=int, default=32, choices=(8, 16, 32))
    parser.add_argument('--pretrained', default=None, help='converted encoder weights (model.safetensors)')
    parser.add_argument('--encoder-args', default='{}', help='JSON kwargs of the encoder (smpconv_t)')
    parser.add_argument('--kernel-scale', type=float, default=1.0)
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--bf16', action='store_true', help='bfloat16 autocast (CPU or CUDA)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default 1: shared machines)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', default=None, help='write the report here (atomically)')
    parser.add_argument('--quick', action='store_true', help=f'encoder {QUICK_ENCODER}, 64 px, 12 steps')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        encoder_args = parse_json_object(args.encoder_args, '--encoder-args')
        size, steps = args.size, args.steps
        if args.quick:
            encoder_args, size, steps = {**QUICK_ENCODER, **encoder_args}, 64, 12
        with torch_threads(args.threads):
            report = run(args.decoder, args.output_stride, args.pretrained, encoder_args, args.kernel_scale, size,
                         args.batch_size, steps, args.lr, args.channels_last, args.bf16, args.seed)
    except (ValueError, FileNotFoundError, ImportError) as e:
        _logger.error('error: %s', e)
        return 2
    report['command'] = ' '.join(['python -m smpconv_models.experiments.segmentation', *(argv or sys.argv[1:])])
    if args.json:
        write_json_atomic(args.json, report)
    first, last = report['losses'][:3], report['losses'][-3:]
    sys.stdout.write(
        f"{report['decoder']} on tu-smpconv_t, {report['params']:,} params, {steps} steps at {size} px: loss "
        f"{sum(first) / len(first):.3f} -> {sum(last) / len(last):.3f} (mean of the first / last 3 steps); held-out "
        f"pixel accuracy {report['eval_before']['pixel_acc']:.3f} -> {report['eval_after']['pixel_acc']:.3f}, "
        f"mIoU {report['eval_before']['miou']:.3f} -> {report['eval_after']['miou']:.3f} (BatchNorm statistics "
        f"recomputed; with the training's running statistics: pixel accuracy "
        f"{report['eval_after_running_stats']['pixel_acc']:.3f}, mIoU {report['eval_after_running_stats']['miou']:.3f})"
        f"\n")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
