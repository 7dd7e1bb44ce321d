"""One description per model family: what the tools (training, export, FLOPs, plots, the benchmark, torch.hub,
conversion) need to know about a family without looking at its name or its classes.

Each model file builds one :class:`ModelFamily` next to its cfgs and factories; :mod:`.families` collects them and
:func:`~smpconv_models.models.family_of` finds the one of a model name or instance.
"""
from __future__ import annotations

import difflib
import inspect
import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import torch.nn as nn
from timm.models import get_pretrained_cfg
from torch import Tensor

__all__ = ['ModelFamily', 'TrainingDefaults', 'COMMON_KWARGS', 'INPUT_KINDS', 'FEATURE_MAPS', 'DENSE_BACKBONES',
           'NO_STRIDES', 'find_family', 'architecture_of']

# The kwargs every family documents (README "Models"): each is honoured or refused with an error naming it.
COMMON_KWARGS = ('num_classes', 'in_chans', 'drop_rate', 'drop_path_rate', 'global_pool', 'deploy', 'kernel_scale',
                 'learn_positions', 'learn_radius', 'output_stride')
# The values of the refusable common kwargs that change nothing (a family that refuses a kwarg accepts these; None:
# no value does, only leaving it unset)
_NO_OP = MappingProxyType({'drop_path_rate': 0.0, 'deploy': False, 'kernel_scale': 1.0, 'learn_positions': True,
                           'learn_radius': True, 'output_stride': None})
# What timm's ``features_only=True`` makes of a family (ModelFamily.feature_maps)
FEATURE_MAPS = ('pyramid', 'full_resolution', 'refused')
# The families whose features_only model is a pyramid (README "Dense prediction"), named where another family refuses
# a dense-prediction kwarg
DENSE_BACKBONES = 'smpconv_t / smpconv_b (output_stride 8, 16 or 32)'
# why the families without a pyramid refuse output_stride
NO_STRIDES = ('it has no strided stages to dilate (every feature_info reduction is 1); the dense-prediction backbones '
              f'are {DENSE_BACKBONES}')
# timm's placement kwargs, never architecture
_PLACEMENT = ('device', 'dtype')


def _frozen(mapping: Mapping | None) -> Mapping:
    """A read-only copy (nested mappings too): descriptions are shared, nobody may edit them."""
    return MappingProxyType({k: _frozen(v) if isinstance(v, Mapping) else v for k, v in (mapping or {}).items()})


def _dd(model: nn.Module) -> dict[str, Any]:
    p = next(model.parameters())
    return dict(dtype=p.dtype, device=p.device)


def _image_inputs(model: nn.Module, batch_size: int, size: int | None) -> tuple[Tensor, ...]:
    """``([B, in_chans, H, W],)`` at the cfg's resolution."""
    _, h, w = model.pretrained_cfg['input_size']
    return (torch.randn(batch_size, model.in_chans, h, w, **_dd(model)),)


def _sequence_inputs(model: nn.Module, batch_size: int, size: int | None) -> tuple[Tensor, ...]:
    """``([B, in_chans, L],)``, ``L`` the cfg's length (the training length) unless given."""
    length = size or model.pretrained_cfg['input_size'][-1]
    return (torch.randn(batch_size, model.in_chans, length, **_dd(model)),)


def _irregular_inputs(model: nn.Module, batch_size: int, size: int | None) -> tuple[Tensor, ...]:
    """``(values [B, C, L], timestamps [B, L], mask [B, L])``: ``L`` the kernel length unless given, real
    timestamps with gaps uniform in ``[g, 2 g)`` for the model's ``min_gap`` ``g`` (compiled and exported graphs serve
    gaps of at least ``g``), the last series' final quarter unobserved."""
    dd, length = _dd(model), size or model.seq_len
    timestamps = ((torch.rand(batch_size, length, **dd) + 1.0) * model.min_gap).cumsum(1)
    mask = torch.ones(batch_size, length, dtype=torch.bool, device=dd['device'])
    mask[-1, length - length // 4:] = False
    return torch.randn(batch_size, model.in_chans, length, **dd), timestamps, mask


def _point_inputs(model: nn.Module, batch_size: int, size: int | None) -> tuple[Tensor, ...]:
    """``(features [B, N, C], positions [B, N, d], mask [B, N])``: ``N`` the cfg's count unless given, positions
    uniform in ``[-1, 1]^d``, the last set's final quarter padded."""
    dd, count = _dd(model), size or model.pretrained_cfg['input_size'][1]
    mask = torch.ones(batch_size, count, dtype=torch.bool, device=dd['device'])
    mask[-1, count - count // 4:] = False
    features = torch.randn(batch_size, count, model.in_chans, **dd)
    return features, torch.rand(batch_size, count, model.dim, **dd) * 2 - 1, mask


# input kind -> (example inputs, what forward takes, the size option example inputs accept)
_KINDS: Mapping[str, tuple[Callable[[nn.Module, int, int | None], tuple[Tensor, ...]], str, str | None]] = \
    MappingProxyType({
        'image': (_image_inputs, '[B, in_chans, H, W]', None),
        'sequence': (_sequence_inputs, '[B, in_chans, L] (or [B, in_chans, 1, L])', 'length'),
        'irregular': (_irregular_inputs, 'values [B, in_chans, L], timestamps [B, L], mask [B, L] (bool)', 'length'),
        'points': (_point_inputs, 'features [B, N, in_chans], positions [B, N, d], mask [B, N] (bool)', 'n_points'),
    })
INPUT_KINDS = tuple(_KINDS)


@dataclass(frozen=True)
class TrainingDefaults:
    """``train.py``'s defaults for a family; :mod:`smpconv_models.train.config` combines them with the data.

    * ``recipe``: the family's training settings (``TrainConfig`` option names, plus ``lr_ref_batch`` when the
      learning rate scales linearly with the batch);
    * ``per_variant``: values a registered variant changes (the official per-task settings);
    * ``digits_model_args``: model kwargs on the embedded 64-step digits (``digits``, ``digits-irregular``);
    * ``small_data_model_args``: for families that take the small-data recipe on a user's sequence data (``ts:``,
      ``npz:``, ``hf:``), the model kwargs for a data length; None for the others;
    * ``small_data_recipe``: the family's values on top of the small-data recipe's training settings (the grid TCNs:
      an ensemble);
    * ``official_data``: variant -> the archive problem of its official task, on which it keeps its own recipe;
    * ``data_options``: variant -> options for the data sources (``speech='waveform'``: Speech Commands as raw audio).
    """

    recipe: Mapping[str, Any]
    per_variant: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    digits_model_args: Mapping[str, Any] = field(default_factory=dict)
    small_data_model_args: Callable[[int], dict[str, Any]] | None = None
    small_data_recipe: Mapping[str, Any] = field(default_factory=dict)
    official_data: Mapping[str, str] = field(default_factory=dict)
    data_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        for name in ('recipe', 'per_variant', 'digits_model_args', 'small_data_recipe', 'official_data',
                     'data_options'):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    def recipe_for(self, variant: str) -> dict[str, Any]:
        """The family's recipe with ``variant``'s own values on top."""
        return {**self.recipe, **self.per_variant.get(variant, {})}


@dataclass(frozen=True)
class ModelFamily:
    """What the tools need to know about one model family (one model file).

    * ``name``: the family's label in messages and tables (``'smpconv_tcn'``);
    * ``model_cls`` and ``variants``: the model class and its registered names (``timm.list_models``);
    * ``input_kind``: ``'image'``, ``'sequence'``, ``'irregular'`` or ``'points'``: what ``forward`` takes
      (:attr:`input_doc`) and how :meth:`example_inputs` makes it;
    * ``input_layers``: the tensors whose dim 1 is the input channels, adapted to ``in_chans`` on loading;
    * ``checkpoint_filter``: ``(state_dict, model, validate=True) -> state_dict``, official keys converted to ours;
    * ``training``: :class:`TrainingDefaults`;
    * ``refused_kwargs``: the :data:`COMMON_KWARGS` the family does not take, each with the reason; its factories
      refuse them (:meth:`check_kwargs`) and it honours the others (:attr:`common_kwargs`); the rest of its
      constructor's kwargs are :attr:`arch_kwargs`;
    * ``feature_maps``: what timm's ``features_only=True`` makes of it (:meth:`check_kwargs`): ``'pyramid'``
      (strided stages, 1/4 to 1/32 of the input, ``output_stride`` 8 / 16 dilating the last ones: a segmentation /
      detection encoder), ``'full_resolution'`` (one input tensor, every stage at its resolution: built, with a
      warning that it is no encoder pyramid) or ``'refused'`` (several inputs, which timm's feature wrappers do not
      pass: a ``ValueError``). A family without a pyramid refuses ``output_stride`` (:data:`NO_STRIDES`);
    * ``data_kwargs``: kwarg -> the dataset attribute it is taken from when training (``seq_len`` <- ``length``);
    * ``reparameterize_on_export``: whether export folds the model first (the irregular TCNs keep their continuous
      kernels: the exported graph evaluates them at timestamp differences);
    * ``tag_args``: ``'variant.tag'`` -> the architecture kwargs that go with those pretrained weights (timm cfgs
      carry no model kwargs).
    """

    name: str
    model_cls: type[nn.Module]
    variants: tuple[str, ...]
    input_kind: str
    input_layers: tuple[str, ...]
    checkpoint_filter: Callable[..., dict[str, Tensor]]
    training: TrainingDefaults
    feature_maps: str
    refused_kwargs: Mapping[str, str] = field(default_factory=dict)
    data_kwargs: Mapping[str, str] = field(default_factory=dict)
    reparameterize_on_export: bool = True
    tag_args: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        if self.input_kind not in _KINDS:
            raise ValueError(f'{self.name}: input_kind must be one of {INPUT_KINDS}, got {self.input_kind!r}')
        unknown = set(self.refused_kwargs) - set(_NO_OP)
        if unknown:
            raise ValueError(f'{self.name}: only {tuple(_NO_OP)} can be refused, not {sorted(unknown)}')
        if self.feature_maps not in FEATURE_MAPS:
            raise ValueError(f'{self.name}: feature_maps must be one of {FEATURE_MAPS}, got {self.feature_maps!r}')
        if self.feature_maps != 'pyramid' and 'output_stride' not in self.refused_kwargs:
            raise ValueError(f'{self.name}: a family without a feature pyramid must refuse output_stride')
        object.__setattr__(self, 'refused_kwargs', _frozen(self.refused_kwargs))
        object.__setattr__(self, 'data_kwargs', _frozen(self.data_kwargs))
        object.__setattr__(self, 'tag_args', _frozen(self.tag_args))

    @property
    def input_doc(self) -> str:
        """What ``forward`` takes, e.g. ``'[B, in_chans, H, W]'``."""
        return _KINDS[self.input_kind][1]

    @property
    def first_conv(self) -> str | tuple[str, ...]:
        """The cfgs' first conv (timm adapts its input channels on loading; :attr:`input_layers` holds every
        tensor this family adapts)."""
        return get_pretrained_cfg(self.variants[0]).first_conv

    @property
    def classifier(self) -> str | tuple[str, ...]:
        """The cfgs' classifier module (replaced on loading when the class count differs)."""
        return get_pretrained_cfg(self.variants[0]).classifier

    @property
    def common_kwargs(self) -> tuple[str, ...]:
        """The :data:`COMMON_KWARGS` this family honours."""
        return tuple(k for k in COMMON_KWARGS if k not in self.refused_kwargs)

    @property
    def arch_kwargs(self) -> tuple[str, ...]:
        """The architecture kwargs the family takes besides the common ones (its constructor's other arguments)."""
        params = inspect.signature(self.model_cls.__init__).parameters
        return tuple(p for p in params if p not in ('self', *COMMON_KWARGS, *_PLACEMENT)
                     and params[p].kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL))

    def check_kwargs(self, variant: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The kwargs of a factory call, checked: a refused kwarg with any value but its no-op one (``0.0``,
        ``False``, ``1.0``, ``True``; ``output_stride`` has none) or None (unset, as timm passes it) is a
        ``ValueError`` naming it, saying why and what the family takes; at those values it is dropped.
        ``features_only`` is refused or warned about as :attr:`feature_maps` says."""
        for name, reason in self.refused_kwargs.items():
            if kwargs.get(name) is not None and kwargs[name] != _NO_OP[name]:
                raise ValueError(f'{variant} does not take {name}={kwargs[name]!r}: {reason}. It takes '
                                 f'{", ".join(self.common_kwargs)} and its architecture kwargs '
                                 f'{", ".join(self.arch_kwargs)}')
        if kwargs.get('features_only'):
            self._check_features_only(variant)
        return {k: v for k, v in kwargs.items() if k not in self.refused_kwargs}

    def _check_features_only(self, variant: str) -> None:
        if self.feature_maps == 'refused':
            raise ValueError(
                f'{variant} does not take features_only=True: it takes {self.input_doc}, and timm\'s feature wrappers '
                f'call a model on one tensor, so it cannot serve as a segmentation / detection encoder. '
                f'Dense-prediction backbones: {DENSE_BACKBONES}.')
        if self.feature_maps == 'full_resolution':
            warnings.warn(
                f'{variant} keeps its input\'s resolution in every stage: its features_only model gives '
                f'full-resolution maps (feature_info reductions all 1), not the 1/4 to 1/32 pyramid a segmentation / '
                f'detection encoder needs (segmentation_models_pytorch "tu-" encoders refuse it as an "Unsupported '
                f'model downsampling pattern"). Dense-prediction backbones: {DENSE_BACKBONES}.', UserWarning,
                stacklevel=4)

    def example_inputs(self, model: nn.Module, batch_size: int = 2, length: int | None = None,
                       n_points: int | None = None) -> tuple[Tensor, ...]:
        """Random positional inputs for ``model`` (of this family) at its configured size, on its device and in its
        dtype: ``model(*inputs)`` runs. ``length`` (sequence and irregular-series families) and ``n_points``
        (point sets) change that size."""
        make, _, option = _KINDS[self.input_kind]
        for name, value in (('length', length), ('n_points', n_points)):
            if value is not None and name != option:
                raise ValueError(f'{name} applies to {"point-set" if name == "n_points" else "sequence"} models, '
                                 f'not to {self.name} ({self.input_kind} inputs: {self.input_doc})')
        return make(model, batch_size, length if option == 'length' else n_points)

    def input_size_of(self, inputs: tuple[Tensor, ...]) -> dict[str, int]:
        """The ``length`` / ``n_points`` of :meth:`example_inputs` that made ``inputs`` (``{}`` for images)."""
        option = _KINDS[self.input_kind][2]
        if option is None:
            return {}
        return {option: inputs[0].shape[1 if option == 'n_points' else -1]}


def architecture_of(name: str) -> str:
    """The registered architecture a model name refers to: ``'smpconv_tcn_mnist.digits'`` -> ``smpconv_tcn_mnist``;
    ``'local-dir:PATH'`` -> the ``architecture`` of ``PATH/config.json``; ``'hf-hub:ORG/ARCH.TAG'`` -> ``ARCH``
    (timm's naming of Hub repositories; the Hub is never contacted)."""
    if name.startswith('local-dir:'):
        config = Path(name[len('local-dir:'):]) / 'config.json'
        if config.is_file():
            return str(json.loads(config.read_text()).get('architecture', ''))
        return ''
    if name.startswith('hf-hub:'):
        name = name[len('hf-hub:'):].split('@')[0].rsplit('/', 1)[-1]
    return name.split('.')[0]


def find_family(name_or_model: str | nn.Module, families: tuple[ModelFamily, ...]) -> ModelFamily:
    """The family of a model name (:func:`architecture_of`) or of a model (its ``pretrained_cfg`` architecture,
    else its class); ``ValueError`` listing the registered models when there is none."""
    by_variant = {v: f for f in families for v in f.variants}
    if isinstance(name_or_model, nn.Module):
        arch = (getattr(name_or_model, 'pretrained_cfg', None) or {}).get('architecture')
        if arch in by_variant:
            return by_variant[arch]
        for family in families:
            if isinstance(name_or_model, family.model_cls):
                return family
        label = type(name_or_model).__name__
    elif isinstance(name_or_model, str):
        arch = architecture_of(name_or_model)
        if arch in by_variant:
            return by_variant[arch]
        label = repr(name_or_model)
    else:
        raise TypeError(f'expected a model name or an nn.Module, got {type(name_or_model).__name__}')
    close = difflib.get_close_matches(str(name_or_model), list(by_variant), n=3, cutoff=0.5) \
        if isinstance(name_or_model, str) else []
    hint = f'did you mean {", ".join(close)}? ' if close else ''
    raise ValueError(f'unknown model {label}; {hint}smpconv models: {", ".join(sorted(by_variant))}')
