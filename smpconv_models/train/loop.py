"""The training run: Accelerate set-up, epochs of training and evaluation, checkpoints, summary, plot, Hub push."""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .._io import write_json_atomic, write_text_atomic
from ..hub import push_to_hub, save_pretrained
from ..layers import clamp_radii_, share_kernels, smp_param_groups
from ..models import build_model, family_of
from ..viz import has_grid_smp_kernels, plot_kernels
from .checkpoint import STATE_DIR, load_training_state, save_training_state
from .config import TrainConfig, recipe_for, recipe_model_args, small_data_schedule, uses_small_data_recipe
from .data import EpochShuffleSampler, SequenceAugment, build_data, parse_augment, standardise_series
from .sync_bn import convert_sync_batchnorm

__all__ = ['run', 'resolve_config', 'evaluate', 'call_model', 'TrainingError']

_logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """A run could not start or finish; the message says why (the CLI exits non-zero with it)."""


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Fill every ``None`` option from the model's recipe (ImageNet lr scaled linearly from batch 2048)."""
    recipe = recipe_for(cfg.model, cfg.data)
    values = cfg.to_dict()
    for key, value in recipe.items():
        if key in values and values[key] is None:
            values[key] = value
    if cfg.lr is None and recipe.get('lr_ref_batch'):
        values['lr'] = recipe['lr'] * values['batch_size'] / recipe['lr_ref_batch']
    for key in ('grad_clip', 'drop_path', 'drop_rate', 'sync_bn'):
        values.setdefault(key, None)
    if values['sync_bn'] is None:
        values['sync_bn'] = True
    return TrainConfig(**values)


def _transforms(cfg: TrainConfig, data_name: str, kind: str):
    """timm's augmentation pipeline for image folders / HF images; the official CIFAR crop+flip for CIFAR."""
    name = data_name.split(':', 1)[0]
    if kind != 'image' or name in ('digits', 'smnist', 'pmnist', 'scifar10', 'mnist'):
        return None, None
    if name in ('cifar10', 'cifar100'):
        from torchvision import transforms as T

        norm = T.Normalize(*{'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                             'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}[name])
        train = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        return train, T.Compose([T.ToTensor(), norm])
    from timm.data import create_transform

    size = cfg.img_size or 224
    train = create_transform(size, is_training=True, auto_augment=cfg.randaugment, re_prob=cfg.random_erasing or 0.0,
                             interpolation='bicubic')
    return train, create_transform(size, is_training=False, interpolation='bicubic', crop_pct=0.875)


def _lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float):
    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return fn


def _make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = smp_param_groups(model, weight_decay=cfg.weight_decay, radius_lr_scale=cfg.radius_lr_scale, lr=cfg.lr)
    name = (cfg.optimizer or 'adam').lower()
    if name == 'adam':
        # Adam's coupled L2 (the official CIFAR / sequence training) on the decay group only
        return torch.optim.Adam(groups, lr=cfg.lr)
    if name == 'adamw':
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if name == 'sgd':
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}: use 'adam', 'adamw' or 'sgd'")


def call_model(model: nn.Module, inputs: Any) -> torch.Tensor:
    """``model(inputs)`` for a tensor batch, ``model(**inputs)`` for a dict batch (masks, positions, timestamps)."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


@torch.no_grad()
def evaluate(model: nn.Module, loader, accelerator, num_classes: int) -> dict[str, float]:
    """Top-1 / top-5 (percent, as timm reports them) and mean loss over the whole test split."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct1 = torch.zeros((), dtype=torch.float64)
    correct5 = torch.zeros((), dtype=torch.float64)
    n = 0
    k5 = min(5, num_classes)
    for x, y in loader:
        logits = call_model(model, x)
        logits, y = accelerator.gather_for_metrics((logits, y))
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction='sum').double().cpu()
        top = logits.topk(k5, dim=1).indices
        hits = top.eq(y[:, None])
        correct1 += hits[:, 0].sum().double().cpu()
        correct5 += hits.any(1).sum().double().cpu()
        n += y.shape[0]
    n = max(n, 1)
    return {'eval_loss': float(loss_sum / n), 'eval_top1': float(100 * correct1 / n),
            'eval_top5': float(100 * correct5 / n)}


def _check_output_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f'.write-test-{os.getpid()}'
        probe.write_text('')
        probe.unlink()
    except OSError as e:
        raise TrainingError(f'output directory {out} is not writable: {e.strerror or e}') from e


def run(cfg: TrainConfig, argv: list[str] | None = None) -> dict[str, Any]:
    """Train (or with ``eval_only`` evaluate) as configured; returns the summary written to ``summary.json``."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from timm.utils import ModelEmaV3
    from tqdm.auto import tqdm

    cfg = resolve_config(cfg)
    if (cfg.ensemble or 1) > 1:
        raise TrainingError(f'this loop trains one model; --ensemble {cfg.ensemble} runs through '
                            'smpconv_models.train.run (train.py)')
    family = family_of(cfg.model)
    kind = family.input_kind
    accelerator = Accelerator(split_batches=True, mixed_precision=cfg.mixed_precision, cpu=cfg.cpu,
                              gradient_accumulation_steps=cfg.grad_accum)
    main_proc = accelerator.is_main_process
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    train_tf, eval_tf = _transforms(cfg, cfg.data, kind)
    data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    data = build_data(cfg.data, kind, img_size=cfg.img_size, seed=data_seed, test_fraction=cfg.test_fraction,
                      train_transform=train_tf, eval_transform=eval_tf, model_name=cfg.model,
                      missing_rate=cfg.missing_rate)
    if uses_small_data_recipe(cfg.model, cfg.data):  # schedule from the training-set size where not given
        schedule = small_data_schedule(len(data.train), cfg.epochs, cfg.batch_size)
        cfg = TrainConfig(**{**cfg.to_dict(), **{k: v for k, v in schedule.items() if getattr(cfg, k) is None}})
    if cfg.series_norm and kind == 'sequence':
        data.train, data.test = standardise_series(data.train), standardise_series(data.test)
    augment = parse_augment(cfg.seq_augment) if kind == 'sequence' else {}
    if any(augment.values()):  # training split only, drawn from (seed, epoch, index): resumable
        data.train = SequenceAugment(data.train, cfg.seed, **augment)
    if cfg.num_classes is not None and cfg.num_classes < data.num_classes:
        raise TrainingError(f'--num-classes {cfg.num_classes} gives fewer classes than the {data.num_classes} labels '
                            f'of {data.name}')
    model_args: dict[str, Any] = {'num_classes': cfg.num_classes or data.num_classes,
                                  'in_chans': cfg.in_chans or data.in_chans}
    for kwarg, attribute in family.data_kwargs.items():  # e.g. seq_len from the data's length (--seq-len overrides)
        model_args[kwarg] = getattr(cfg, kwarg, None) or getattr(data, attribute)
    if cfg.drop_path is not None:
        model_args['drop_path_rate'] = cfg.drop_path
    if cfg.drop_rate is not None:
        model_args['drop_rate'] = cfg.drop_rate
    if cfg.kernel_scale:
        model_args['kernel_scale'] = cfg.kernel_scale
    model_args.update(data.model_args)
    model_args.update(recipe_model_args(cfg.model, cfg.data, model_args.get('seq_len')))
    model_args.update(cfg.model_args)
    model = build_model(cfg.model, model_args, cfg.pretrained)
    arch = model.pretrained_cfg['architecture']
    if main_proc:
        _check_output_dir(out)
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1 and cfg.sync_bn:
        model = convert_sync_batchnorm(model)
    params = sum(p.numel() for p in model.parameters())

    sampler = EpochShuffleSampler(len(data.train), cfg.seed)
    train_loader = DataLoader(data.train, batch_size=cfg.batch_size, drop_last=True, num_workers=cfg.workers,
                              sampler=sampler)
    test_loader = DataLoader(data.test, batch_size=cfg.batch_size, num_workers=cfg.workers)
    if len(train_loader) == 0:
        raise TrainingError(f'batch size {cfg.batch_size} exceeds the {len(data.train)} training samples')
    batches = len(train_loader) if cfg.limit_train_batches is None else min(len(train_loader),
                                                                             cfg.limit_train_batches)
    steps_per_epoch = max(1, batches // cfg.grad_accum)
    optimizer = _make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(
        steps_per_epoch * cfg.epochs, round(steps_per_epoch * cfg.warmup_epochs), cfg.min_lr_ratio))
    model, optimizer, train_loader, test_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, test_loader, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    if cfg.compile:  # the compiled module shares the parameters; checkpoints and EMA use `unwrapped`
        model = torch.compile(model)
    ema = ModelEmaV3(unwrapped, decay=cfg.ema_decay) if cfg.ema else None

    mixup_fn = None
    if kind == 'image' and ((cfg.mixup or 0) > 0 or (cfg.cutmix or 0) > 0):
        from timm.data import Mixup

        mixup_fn = Mixup(mixup_alpha=cfg.mixup or 0.0, cutmix_alpha=cfg.cutmix or 0.0,
                         label_smoothing=cfg.label_smoothing or 0.0, num_classes=model_args['num_classes'])
    if mixup_fn is not None:
        from timm.loss import SoftTargetCrossEntropy

        criterion: nn.Module = SoftTargetCrossEntropy()
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing or 0.0)

    progress = {'epoch': 0, 'step': 0, 'best_top1': None, 'best_epoch': None}
    if cfg.resume:
        state_dir = out / STATE_DIR if cfg.resume == 'auto' else Path(cfg.resume)
        progress = load_training_state(accelerator, state_dir, ema)
        _logger.info('resumed from %s at epoch %d', state_dir, progress['epoch'])

    metrics_path = out / 'metrics.jsonl'
    started = time.time()
    eval_model = ema.module if ema is not None else unwrapped
    if cfg.eval_only:
        metrics = evaluate(model, test_loader, accelerator, model_args['num_classes'])
        summary = {'model': arch, 'data': cfg.data, 'params': params, **metrics, 'seconds': time.time() - started,
                   'command': ' '.join(argv or sys.argv), 'eval_only': True}
        if main_proc:
            write_json_atomic(out / 'summary.json', summary)
        return summary
    if main_proc and progress['epoch'] == 0 and metrics_path.exists():
        metrics_path.unlink()
    if main_proc and progress['epoch'] > 0 and metrics_path.exists():  # drop lines of epochs that will rerun
        kept = [ln for ln in metrics_path.read_text().splitlines() if json.loads(ln)['epoch'] <= progress['epoch']]
        write_text_atomic(metrics_path, ''.join(ln + '\n' for ln in kept))

    last_metrics: dict[str, float] = {}
    for epoch in range(progress['epoch'], cfg.epochs):
        # Accelerate's loader re-seeds the sampler with its own iteration counter, which restarts at 0 in a resumed
        # process: set it (and through it our sampler) to the epoch so the order only depends on (seed, epoch)
        train_loader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        if isinstance(data.train, SequenceAugment):
            data.train.set_epoch(epoch)
        model.train()
        t0 = time.time()
        # running sums stay on the device: no host sync per step (read every 25 steps for the progress bar)
        loss_sum = torch.zeros((), device=accelerator.device)
        correct = torch.zeros((), device=accelerator.device)
        seen = 0
        # other processes never show a bar; the main one leaves `disable` to tqdm (TQDM_DISABLE=1 turns it off)
        bar = tqdm(total=batches, desc=f'epoch {epoch + 1}/{cfg.epochs}', leave=False, dynamic_ncols=True,
                   **({} if main_proc else {'disable': True}))
        for i, (x, y) in enumerate(train_loader):
            if i >= batches:
                break
            # share_kernels: one kernel per SMP layer and optimizer step, not per micro-batch (sync_gradients is
            # set on entering accumulate(); it marks the micro-batch whose backward feeds the optimizer step)
            with accelerator.accumulate(model), share_kernels(model, final=accelerator.sync_gradients):
                target = y
                if mixup_fn is not None:
                    x, target = mixup_fn(x, y)
                logits = call_model(model, x)
                loss = criterion(logits, target)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if accelerator.sync_gradients:
                    clamp_radii_(unwrapped)
                    if ema is not None:
                        ema.update(unwrapped, step=progress['step'])
                    progress['step'] += 1
            loss_sum += loss.detach().float() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.shape[0]
            bar.update(1)
            if main_proc and (i % 25 == 0 or i == batches - 1):
                bar.set_postfix(loss=f'{float(loss_sum) / seen:.4f}', acc=f'{100 * float(correct) / seen:.1f}',
                                img_s=f'{seen * accelerator.num_processes / (time.time() - t0):.0f}',
                                lr=f'{scheduler.get_last_lr()[0]:.2e}')
        bar.close()
        train_seconds = time.time() - t0
        totals = accelerator.reduce(torch.stack([loss_sum, correct, torch.tensor(float(seen), device=loss_sum.device)]),
                                    reduction='sum').cpu()
        # --eval-every N: evaluate (and checkpoint) every N epochs and at the end (small data: many short epochs)
        if (epoch + 1) % (cfg.eval_every or 1) and epoch + 1 < cfg.epochs:
            progress['epoch'] = epoch + 1
            if main_proc:
                with metrics_path.open('a') as f:
                    f.write(json.dumps({'epoch': epoch + 1, 'train_loss': float(totals[0] / totals[2]),
                                        'train_top1': float(100 * totals[1] / totals[2]),
                                        'lr': float(scheduler.get_last_lr()[0]),
                                        'images_per_s': float(totals[2]) / train_seconds}) + '\n')
            continue
        metrics = evaluate(eval_model if ema is not None else model, test_loader, accelerator,
                           model_args['num_classes'])
        progress['epoch'] = epoch + 1
        record = {'epoch': epoch + 1, 'train_loss': float(totals[0] / totals[2]),
                  'train_top1': float(100 * totals[1] / totals[2]), **metrics,
                  'lr': float(scheduler.get_last_lr()[0]), 'images_per_s': float(totals[2]) / train_seconds,
                  'seconds': time.time() - t0}
        last_metrics = record
        improved = progress['best_top1'] is None or metrics['eval_top1'] > progress['best_top1']
        if improved:
            progress['best_top1'], progress['best_epoch'] = metrics['eval_top1'], epoch + 1
        if main_proc:
            with metrics_path.open('a') as f:
                f.write(json.dumps(record) + '\n')
            if improved:
                save_pretrained(eval_model, out / 'best', source=f'trained with smpconv-models train.py on {cfg.data}',
                                metrics={k: record[k] for k in ('epoch', 'eval_top1', 'eval_top5', 'eval_loss')},
                                recipe=_recipe_card(cfg), model_args=model_args)
            _logger.info('epoch %d: train loss %.4f top-1 %.2f | eval loss %.4f top-1 %.2f top-5 %.2f',
                         epoch + 1, record['train_loss'], record['train_top1'], metrics['eval_loss'],
                         metrics['eval_top1'], metrics['eval_top5'])
        save_training_state(accelerator, out / STATE_DIR, progress, ema)

    summary: dict[str, Any] = {
        'model': arch, 'data': cfg.data, 'params': params, 'epochs': cfg.epochs,
        'eval_top1': last_metrics.get('eval_top1'), 'eval_top5': last_metrics.get('eval_top5'),
        'best_top1': progress['best_top1'], 'best_epoch': progress['best_epoch'],
        'seconds': time.time() - started, 'command': ' '.join(argv if argv is not None else sys.argv),
        'output_dir': str(out), 'best': str(out / 'best'), 'last': str(out / 'last'),
        'metrics': str(metrics_path),
    }
    if main_proc:
        save_pretrained(unwrapped, out / 'last', source=f'trained with smpconv-models train.py on {cfg.data}',
                        metrics={k: last_metrics[k] for k in ('epoch', 'eval_top1', 'eval_top5')} if last_metrics
                        else None, recipe=_recipe_card(cfg), model_args=model_args)
        if cfg.plot and has_grid_smp_kernels(unwrapped):
            summary['plot'] = str(plot_kernels(unwrapped, out / 'kernels.png'))
        if cfg.push_to_hub:
            try:
                summary['hub_commit'] = push_to_hub(out / 'best', cfg.push_to_hub, private=cfg.hub_private)
            except (RuntimeError, FileNotFoundError) as e:
                summary['hub_error'] = str(e)
                _logger.error('push to the Hub failed (local checkpoints are in %s): %s', out, e)
        write_json_atomic(out / 'summary.json', summary)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def _recipe_card(cfg: TrainConfig) -> dict[str, Any]:
    keys = ('optimizer', 'lr', 'batch_size', 'epochs', 'weight_decay', 'warmup_epochs', 'radius_lr_scale',
            'label_smoothing', 'mixup', 'cutmix', 'seq_augment', 'series_norm', 'drop_rate', 'grad_clip', 'ema',
            'seed')
    return {k: getattr(cfg, k) for k in keys}
