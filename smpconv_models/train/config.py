"""Training configuration: defaults per recipe, a YAML file, then command-line overrides (in that order)."""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ['TrainConfig', 'build_parser', 'parse_config', 'RECIPES', 'recipe_for', 'recipe_model_args']


@dataclass
class TrainConfig:
    """Every training option; ``None`` means "take it from the model's recipe" (see :data:`RECIPES`)."""

    model: str = 'smpconv_tcn_mnist'
    data: str = 'digits'
    output_dir: str = 'output/train'
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    min_lr_ratio: float = 0.01
    radius_lr_scale: float = 0.1
    optimizer: str | None = None
    label_smoothing: float | None = None
    mixup: float | None = None
    cutmix: float | None = None
    randaugment: str | None = None
    random_erasing: float | None = None
    ema: bool | None = None
    ema_decay: float = 0.9998
    drop_path: float | None = None
    drop_rate: float | None = None
    grad_clip: float | None = None
    grad_accum: int = 1
    mixed_precision: str = 'no'
    seed: int = 0
    workers: int = 0
    img_size: int | None = None
    seq_len: int | None = None
    num_classes: int | None = None
    in_chans: int | None = None
    kernel_scale: float | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    resume: str | None = None
    eval_only: bool = False
    push_to_hub: str | None = None
    hub_private: bool = False
    plot: bool = True
    cpu: bool = False
    sync_bn: bool | None = None
    test_fraction: float = 0.2
    limit_train_batches: int | None = None
    compile: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Recipes (official training settings). ImageNet: AdamW, lr 4e-3 at batch 2048 scaled linearly, cosine with warmup,
# weight decay 0.05, label smoothing 0.1, mixup 0.8 / cutmix 1.0, RandAugment, random erasing 0.25, EMA.
# CIFAR / sequence: Adam, cosine with warmup, weight decay 1e-5, the official per-task learning rates.
RECIPES: dict[str, dict[str, Any]] = {
    'imagenet': dict(optimizer='adamw', lr=4e-3, lr_ref_batch=2048, batch_size=64, epochs=300, weight_decay=0.05,
                     warmup_epochs=10, label_smoothing=0.1, mixup=0.8, cutmix=1.0,
                     randaugment='rand-m9-mstd0.5-inc1', random_erasing=0.25, ema=True, grad_clip=None),
    'cifar': dict(optimizer='adam', lr=5e-3, batch_size=64, epochs=210, weight_decay=1e-5, warmup_epochs=10,
                  label_smoothing=0.0, mixup=0.0, cutmix=0.0, randaugment=None, random_erasing=0.0, ema=False),
    'sequence': dict(optimizer='adam', lr=1e-4, batch_size=64, epochs=200, weight_decay=1e-5, warmup_epochs=5,
                     label_smoothing=0.0, mixup=0.0, cutmix=0.0, randaugment=None, random_erasing=0.0, ema=False),
}

# Official per-task learning rates / batch sizes / epochs (smp/README.md of the official repository).
_TASK_OVERRIDES: dict[str, dict[str, Any]] = {
    'smpconv_tcn_mnist': dict(lr=1e-4, epochs=200),
    'smpconv_tcn_scifar10': dict(lr=2e-4, epochs=200),
    'smpconv_tcn_chartraj': dict(lr=1e-4, epochs=300),
    'smpconv_tcn_speech': dict(lr=2e-3, batch_size=32, epochs=300),
    'smpconv_tcn_speech_raw': dict(lr=1e-3, batch_size=32, epochs=160, warmup_epochs=10),
}

# The embedded default (digits, no download): small enough for a CPU run of a few minutes.
_DIGITS_OVERRIDES: dict[str, Any] = dict(lr=3e-3, epochs=12, batch_size=64, warmup_epochs=1)


def recipe_for(model: str, data: str) -> dict[str, Any]:
    """Recipe defaults for a model family, with the official per-task values and the digits default on top."""
    if model.startswith('smpconv_tcn'):
        recipe = dict(RECIPES['sequence'], **_TASK_OVERRIDES.get(model, {}))
    elif model == 'smpconv_cifar':
        recipe = dict(RECIPES['cifar'])
    else:
        recipe = dict(RECIPES['imagenet'])
    if data.split(':', 1)[0] == 'digits':
        recipe.update(_DIGITS_OVERRIDES, mixup=0.0, cutmix=0.0, randaugment=None, random_erasing=0.0,
                      label_smoothing=0.0, lr_ref_batch=None)
    return recipe


def recipe_model_args(model: str, data: str) -> dict[str, Any]:
    """Model kwargs a dataset needs beyond its shape: on the 64-step digits the official 784-step point radius
    (0.002, under one grid spacing of 2/783) would leave most points between taps, so it scales with the spacing."""
    if model.startswith('smpconv_tcn') and data.split(':', 1)[0] == 'digits':
        return {'radius': 0.03}
    return {}


_HELP = {
    'model': 'registered model name (timm.list_models("smpconv_*"))',
    'data': "dataset: 'digits' (embedded, default), 'cifar10:ROOT', 'cifar100:ROOT', 'mnist:ROOT', 'smnist:ROOT', "
            "'pmnist:ROOT', 'scifar10:ROOT' (torchvision layout, never downloaded), 'folder:ROOT' (train/ and "
            "val/ image folders) or 'hf:PATH' (a Hugging Face dataset saved with save_to_disk)",
    'output_dir': 'run folder: last/, best/, state/, metrics.jsonl, summary.json, kernels.png',
    'epochs': 'training epochs (recipe default)',
    'batch_size': 'global batch size over all processes (split across them)',
    'lr': 'peak learning rate (recipe default; the ImageNet recipe scales 4e-3 linearly from batch 2048)',
    'weight_decay': 'weight decay (none on point positions, radii, biases and norms)',
    'warmup_epochs': 'linear warmup epochs before the cosine decay',
    'min_lr_ratio': 'final learning rate of the cosine schedule as a fraction of the peak',
    'radius_lr_scale': 'learning-rate factor for SMP point radii (official: 0.1)',
    'optimizer': "'adam', 'adamw' or 'sgd' (recipe default)",
    'label_smoothing': 'label smoothing', 'mixup': 'mixup alpha (0 disables)', 'cutmix': 'cutmix alpha (0 disables)',
    'randaugment': "timm RandAugment spec, e.g. 'rand-m9-mstd0.5-inc1' (image folders / CIFAR)",
    'random_erasing': 'random erasing probability (image inputs)',
    'ema': 'keep an EMA of the weights (best/ then holds the EMA weights)',
    'ema_decay': 'EMA decay per optimizer step',
    'drop_path': 'stochastic depth rate (ImageNet models)', 'drop_rate': 'dropout rate',
    'grad_clip': 'clip the gradient norm to this value (off by default)',
    'grad_accum': 'gradient accumulation steps',
    'mixed_precision': "'no', 'fp16' or 'bf16' (Accelerate)",
    'seed': 'random seed (data split, init, shuffling)', 'workers': 'data loader workers',
    'img_size': 'image size for image models (default: the dataset native size, 224 for image folders)',
    'seq_len': 'sequence length / kernel length for sequence models (default: the dataset length)',
    'num_classes': 'classes (default: the dataset class count); replaces the head of a pretrained model',
    'in_chans': 'input channels (default: the dataset channels); adapts the stem of a pretrained model',
    'kernel_scale': 'rescale SMP kernel sizes by this factor, re-sampling the same continuous kernels (fine-tuning '
                    'at another resolution or sequence length)',
    'model_args': 'JSON object of extra model kwargs, e.g. \'{"width": 64}\'',
    'pretrained': "initial weights: a registered tag ('smpconv_tcn_mnist.digits'), 'local-dir:PATH', 'hf-hub:REPO', "
                  'a Hub-layout folder, or an official checkpoint file (.pth / .safetensors)',
    'resume': 'continue a run: bare --resume uses OUTPUT_DIR/state, --resume PATH another state folder',
    'eval_only': 'evaluate --pretrained (or the model) on the test split, print top-1 / top-5 and exit',
    'push_to_hub': 'Hub repo id to push best/ to at the end (errors are reported, local files are kept)',
    'hub_private': 'create the Hub repo as private',
    'plot': 'write kernels.png (learned point positions and kernels) at the end',
    'cpu': 'train on CPU even when a GPU is available',
    'sync_bn': 'SyncBatchNorm when several processes train (default: on)',
    'test_fraction': 'held-out fraction for datasets without a test split (digits)',
    'limit_train_batches': 'stop each epoch after this many batches (smoke tests)',
    'compile': 'train with torch.compile (default settings; the first steps compile, a new batch size recompiles once)',
}


def _bool(s: str) -> bool:
    if s.lower() in ('1', 'true', 'yes', 'on'):
        return True
    if s.lower() in ('0', 'false', 'no', 'off'):
        return False
    raise argparse.ArgumentTypeError(f'expected a boolean, got {s!r}')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='train.py', formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description='Train or fine-tune an smpconv model (one CPU, one GPU, or many under `accelerate launch`). '
                    'With no arguments: smpconv_tcn_mnist on the embedded handwritten digits as 64-step sequences.')
    parser.add_argument('--config', default=None, help='YAML file of options (keys as below, with underscores); '
                                                       'command-line flags override it')
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = '--' + f.name.replace('_', '-')
        default = getattr(defaults, f.name)
        kwargs: dict[str, Any] = dict(default=argparse.SUPPRESS, help=_HELP[f.name] + f' (default: {default!r})')
        if f.name == 'resume':
            parser.add_argument(flag, nargs='?', const='auto', **kwargs)
        elif f.name == 'model_args':
            parser.add_argument(flag, type=json.loads, **kwargs)
        elif f.type in ('bool', 'bool | None', bool):
            parser.add_argument(flag, nargs='?', const=True, type=_bool, **kwargs)
        elif 'int' in str(f.type):
            parser.add_argument(flag, type=int, **kwargs)
        elif 'float' in str(f.type):
            parser.add_argument(flag, type=float, **kwargs)
        else:
            parser.add_argument(flag, type=str, **kwargs)
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults, then ``--config FILE.yaml``, then flags. Unknown YAML keys are an error naming them."""
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    config_path = args.pop('config', None)
    if config_path:
        import yaml

        path = Path(config_path)
        if not path.is_file():
            raise FileNotFoundError(f'config file not found: {path}')
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f'{path} must hold a mapping of options')
        loaded = {k.replace('-', '_'): v for k, v in loaded.items()}
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(loaded) - names)
        if unknown:
            raise ValueError(f'unknown option(s) in {path}: {", ".join(unknown)}')
        values.update(loaded)
    values.update(args)
    return TrainConfig(**values)
