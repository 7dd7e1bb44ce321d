"""Training configuration: defaults per recipe, a YAML file, then command-line overrides (in that order)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..models import architecture_of, family_of

__all__ = ['TrainConfig', 'build_parser', 'parse_config', 'recipe_for', 'recipe_model_args', 'uses_small_data_recipe',
           'small_data_schedule', 'SMALL_DATA_RECIPE']


@dataclass
class TrainConfig:
    """Every training option; ``None`` means "take it from the model's recipe" (:func:`recipe_for`)."""

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
    seq_augment: str | None = None
    series_norm: bool | None = None
    ema: bool | None = None
    ema_decay: float = 0.9998
    drop_path: float | None = None
    drop_rate: float | None = None
    grad_clip: float | None = None
    grad_accum: int = 1
    mixed_precision: str = 'no'
    seed: int = 0
    data_seed: int | None = None
    ensemble: int | None = None
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
    missing_rate: float | None = None
    eval_every: int | None = None
    compile: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Sequence data a user brings (ts: / npz: / hf:, tens to hundreds of series), for the families whose description
# asks for it (TrainingDefaults.small_data_model_args): chosen on generated data sets, see BENCHMARKS.md "Small-data
# sequence recipe" (python -m smpconv_models.experiments.small_data). Batch size, epochs and warmup follow the
# training-set size (small_data_schedule); the model kwargs follow the length (recipe_model_args); a family's
# description adds its own values on top (TrainingDefaults.small_data_recipe: the grid TCNs train an ensemble).
SMALL_DATA_RECIPE: Mapping[str, Any] = MappingProxyType(dict(
    optimizer='adamw', lr=2e-3, batch_size=None, epochs=None, weight_decay=0.05, warmup_epochs=None,
    label_smoothing=0.1, mixup=0.0, cutmix=0.0, randaugment=None, random_erasing=0.0, ema=False, drop_rate=0.1,
    seq_augment='shift=0.1,scale=0.1,jitter=0.05', grad_clip=1.0, lr_ref_batch=None))
SMALL_DATA_SPECS = ('ts', 'npz', 'hf')
# the schedule: at least SMALL_DATA_STEPS optimizer steps and SMALL_DATA_MIN_EPOCHS epochs (so the steps grow with
# the data size) but no more epochs than SMALL_DATA_MAX_STEPS need (a time bound for thousands of series), batch
# about n / SMALL_DATA_BATCH_FRACTION within SMALL_DATA_BATCH, epochs within SMALL_DATA_EPOCHS
SMALL_DATA_STEPS = 500
SMALL_DATA_MAX_STEPS = 2000
SMALL_DATA_MIN_EPOCHS = 80
SMALL_DATA_BATCH_FRACTION = 8
SMALL_DATA_BATCH = (8, 32)
SMALL_DATA_EPOCHS = (20, 400)

# The embedded default (digits, no download), whatever the family: small enough for a CPU run of a few minutes.
DIGITS_SPECS = ('digits', 'digits-irregular')
_DIGITS_OVERRIDES: Mapping[str, Any] = MappingProxyType(dict(
    lr=3e-3, epochs=12, batch_size=64, warmup_epochs=1, mixup=0.0, cutmix=0.0, randaugment=None, random_erasing=0.0,
    label_smoothing=0.0, lr_ref_batch=None))


def uses_small_data_recipe(model: str, data: str) -> bool:
    """A family with a small-data recipe (the sequence models) on user data (``ts:`` / ``npz:`` / ``hf:``) takes
    :data:`SMALL_DATA_RECIPE`, except a variant on its official task (``smpconv_tcn_chartraj`` on
    ``ts:.../CharacterTrajectories`` keeps the official recipe)."""
    prefix, _, path = data.partition(':')
    training = family_of(model).training
    if training.small_data_model_args is None or prefix.lower() not in SMALL_DATA_SPECS:
        return False
    official = training.official_data.get(architecture_of(model))
    return not (official and prefix.lower() == 'ts' and Path(path.rstrip('/')).name.lower() == official.lower())


def small_data_schedule(n_train: int, epochs: int | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Batch size, epochs and warmup of the small-data recipe for ``n_train`` training series: batch about an eighth
    of the set (a power of two in 8..32), epochs for at least :data:`SMALL_DATA_STEPS` optimizer steps and at least
    :data:`SMALL_DATA_MIN_EPOCHS` epochs (the steps grow with the data: long training is cheap on small sets) but not
    more epochs than :data:`SMALL_DATA_MAX_STEPS` steps need, within 20..400 epochs; 5% warmup, evaluation about 20
    times per run. A given ``epochs`` or ``batch_size`` is kept and the rest follows from it."""
    lo, hi = SMALL_DATA_BATCH
    if batch_size is None:
        batch_size = int(min(hi, max(lo, 2 ** round(math.log2(max(n_train, 1) / SMALL_DATA_BATCH_FRACTION)))))
        batch_size = min(batch_size, max(1, n_train))
    steps_per_epoch = max(1, n_train // batch_size)
    if epochs is None:
        epochs = max(SMALL_DATA_MIN_EPOCHS, math.ceil(SMALL_DATA_STEPS / steps_per_epoch))
        epochs = min(epochs, math.ceil(SMALL_DATA_MAX_STEPS / steps_per_epoch))
        epochs = int(min(SMALL_DATA_EPOCHS[1], max(SMALL_DATA_EPOCHS[0], epochs)))
    return dict(batch_size=batch_size, epochs=epochs, warmup_epochs=round(0.05 * epochs, 2),
                eval_every=max(1, epochs // 20))


def recipe_for(model: str, data: str) -> dict[str, Any]:
    """Recipe defaults: the small-data recipe (with the family's own small-data values on top) on a user's sequence
    data, else the family's recipe with the variant's official per-task values, and the digits default on top on the
    embedded digits."""
    if uses_small_data_recipe(model, data):
        return {**SMALL_DATA_RECIPE, **family_of(model).training.small_data_recipe}
    recipe = family_of(model).training.recipe_for(architecture_of(model))
    if data.split(':', 1)[0] in DIGITS_SPECS:
        recipe.update(_DIGITS_OVERRIDES)
    return recipe


def recipe_model_args(model: str, data: str, length: int | None = None) -> dict[str, Any]:
    """Model kwargs a dataset needs beyond its shape (from the family's description): those for the embedded 64-step
    digits, or those of the small-data recipe for a user's series of ``length`` steps."""
    training = family_of(model).training
    if data.split(':', 1)[0] in DIGITS_SPECS:
        return dict(training.digits_model_args)
    if length and length > 1 and uses_small_data_recipe(model, data):
        return training.small_data_model_args(length)
    return {}


_HELP = {
    'model': 'registered model name (timm.list_models("smpconv_*"))',
    'data': "dataset: 'digits' (embedded, default), 'digits-irregular' (the digits as irregular series for "
            "smpconv_irregular_tcn*: --missing-rate of each series dropped, 0.5 by default), 'cifar10:ROOT', "
            "'cifar100:ROOT', 'mnist:ROOT', 'smnist:ROOT', "
            "'pmnist:ROOT', 'scifar10:ROOT' (torchvision layout, never downloaded), 'folder:ROOT' (train/ and "
            "val/ image folders) or 'hf:PATH' (a Hugging Face dataset saved with save_to_disk, images or a sequence "
            "column); sequences: 'ts:DIR/NAME' (UEA / UCR DIR/NAME_TRAIN.ts and _TEST.ts), 'npz:PATH' (x_train, "
            "y_train, x_test, y_test), 'speechcommands:ROOT' (SpeechCommands/speech_commands_v0.02/); point sets: "
            "'digits-points[:DRAWS]' (the embedded digits as 2-d point sets for smpconv_points; DRAWS random draws "
            "per training digit, default 4), 'shapes3d[:POINTS]' (generated 3-d point clouds of 8 solids for "
            "smpconv_points_3d; POINTS per set 'N' or 'LO-HI', default 1000-10000)",
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
    'seq_augment': "training augmentation of sequences, e.g. 'shift=0.1,scale=0.1,jitter=0.05,cutout=0.1' (shift: "
                   "delay by up to this fraction of the length; scale: per-channel gain 1+scale*N(0,1); jitter: "
                   "noise std; cutout: zero a window up to this fraction) or 'none' (small-data recipe default)",
    'series_norm': 'z-normalise every sequence on its own (per channel, over its real steps; the UCR archives\' '
                   'convention) after the per-channel normalisation; ts: / npz: / hf: data',
    'ema': 'keep an EMA of the weights (best/ then holds the EMA weights)',
    'ema_decay': 'EMA decay per optimizer step',
    'drop_path': 'stochastic depth rate (ImageNet models)', 'drop_rate': 'dropout rate',
    'grad_clip': 'clip the gradient norm to this value (off by default)',
    'grad_accum': 'gradient accumulation steps',
    'mixed_precision': "'no', 'fp16' or 'bf16' (Accelerate)",
    'seed': 'random seed (data split, init, shuffling)', 'workers': 'data loader workers',
    'data_seed': 'seed of the data split and of dropped observations (default: --seed; --ensemble members share it '
                 'while their --seed differs)',
    'ensemble': 'train N members with seeds SEED..SEED+N-1 one after the other in OUTPUT_DIR/members/ and save their '
                'probability-averaging ensemble (smpconv_ensemble) as one checkpoint in OUTPUT_DIR/last/; resumable '
                'member by member; members are grid TCNs (default 1: one model)',
    'img_size': 'image size for image models (default: the dataset native size, 224 for image folders)',
    'seq_len': 'sequence length / kernel length for sequence models (default: the dataset length)',
    'num_classes': 'classes (default: the dataset class count); replaces the head of a pretrained model',
    'in_chans': 'input channels (default: the dataset channels); adapts the stem of a pretrained model',
    'kernel_scale': 'rescale SMP kernel sizes by this factor, re-sampling the same continuous kernels (fine-tuning '
                    'at another resolution or sequence length)',
    'model_args': 'JSON object of extra model kwargs, e.g. \'{"width": 64}\'',
    'pretrained': "initial weights: a registered tag ('smpconv_tcn_mnist.digits'), 'local-dir:PATH', 'hf-hub:REPO', "
                  'a Hub-layout folder, a train.py run folder (its best/, else last/), or an official checkpoint file '
                  '(.pth / .safetensors)',
    'resume': 'continue a run: bare --resume uses OUTPUT_DIR/state, --resume PATH another state folder',
    'eval_only': 'evaluate --pretrained (or the model) on the test split, print top-1 / top-5 and exit',
    'push_to_hub': 'Hub repo id to push best/ to at the end (errors are reported, local files are kept)',
    'hub_private': 'create the Hub repo as private',
    'plot': 'write kernels.png (learned point positions and kernels) at the end',
    'cpu': 'train on CPU even when a GPU is available',
    'sync_bn': 'SyncBatchNorm when several processes train (default: on)',
    'test_fraction': 'held-out fraction for datasets without a test split (digits)',
    'limit_train_batches': 'stop each epoch after this many batches (smoke tests)',
    'missing_rate': 'irregular-series models: drop this fraction of the observations of every series (seeded, the '
                    'Neural CDE / CKConv protocol: 0.3, 0.5, 0.7), turning any sequence --data into irregular series '
                    "with timestamps and an observed mask (not --drop-rate, which is dropout); 'digits-irregular' "
                    'defaults to 0.5, other specs to 0',
    'eval_every': 'evaluate and save best/ and the resume state every N epochs and after the last (default 1; the '
                  'small-data recipe evaluates about 20 times per run)',
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
