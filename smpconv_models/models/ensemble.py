"""Ensembles of smpconv models: the mean of the members' class probabilities (InceptionTime, Fawaz et al. 2020:
five networks trained from different seeds remove most of one network's seed-to-seed variance).

``timm.create_model('smpconv_ensemble', member='smpconv_tcn_chartraj', n_members=5, **member_kwargs)`` builds
``n_members`` copies of the registered model ``member`` with ``member_kwargs`` (``num_classes``, ``in_chans``,
``seq_len``, ``causal``, ...). The forward returns the **log of the mean member probability**,
``log(mean_i softmax(z_i))`` (``[B, num_classes]``): a logits-like output, so ``softmax`` of it is the ensemble's
probability, ``argmax`` its prediction and ``cross_entropy`` on it the ensemble's negative log-likelihood (what
timm's validation and ``train.py``'s evaluation compute from logits). Averaging probabilities, not logits, is the
InceptionTime rule; a mean of logits would let one over-confident member decide.

A saved ensemble is one Hub-layout folder (``config.json`` with ``architecture: smpconv_ensemble`` and the
``model_args`` above, ``model.safetensors`` with keys ``members.<i>.<member key>``): it loads with
``timm.create_model('local-dir:FOLDER', pretrained=True)``, or with ``timm.create_model('smpconv_ensemble',
pretrained=True, pretrained_cfg_overlay=dict(file='.../model.safetensors'), member=..., n_members=..., ...)``.
``train.py --ensemble N`` trains one (``smpconv_models/train/ensemble.py``).

The timm anatomy holds with the members side by side: ``forward_features`` concatenates the members' unpooled
features along channels (``num_features = n_members * member.num_features``), ``forward_head(pre_logits=True)``
their pooled features, ``reset_classifier(0)`` makes ``forward`` return those, and ``reset_classifier(0, '')`` the
unpooled ones. Members are the single-input sequence models (the grid TCNs of :data:`MEMBER_FAMILIES`, whose
``mask`` passes through); the point-set and irregular-series models (several inputs), the image families and
ensembles are refused, so the ensemble's family (:data:`FAMILY`) describes sequence inputs. Reparameterization and
export work member by member (``timm.utils.reparameterize_model``, ``python -m smpconv_models.export
smpconv_ensemble ...``); the cost is ``n_members`` times a member's, in parameters and in time.
"""
# No ``from __future__ import annotations``: torch.fx copies the traced forward's annotations into generated code
# (see smpconv_tcn.py).

import math
import re
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor

from . import smpconv_tcn
from ._checkpoint import validate_for_model
from ._family import ModelFamily, TrainingDefaults, architecture_of, find_family

__all__ = ['SMPEnsemble', 'smpconv_ensemble', 'mean_probability_logits', 'MEMBER_FAMILIES', 'FAMILY']

DEFAULT_MEMBER = 'smpconv_tcn_chartraj'
DEFAULT_MEMBERS = 5
MAX_MEMBERS = 16
# The families an ensemble holds: single-input sequence models (timm's one-tensor contract, a mask passed through)
MEMBER_FAMILIES: tuple[ModelFamily, ...] = (smpconv_tcn.FAMILY,)


def mean_probability_logits(logits: list[Tensor]) -> Tensor:
    """``log(mean_i softmax(logits_i))`` over members, classes on dim 1 (``[B, K]`` or per-step ``[B, K, L]``):
    logits-like, its softmax is the mean probability; in the members' logits dtype (autocast computes it in fp32)."""
    stacked = torch.stack(logits)  # [N, B, K, ...]
    return (torch.logsumexp(F.log_softmax(stacked, dim=2), dim=0) - math.log(len(logits))).to(stacked.dtype)


def check_member(member: str) -> None:
    """Raise a clear ``ValueError`` unless ``member`` is a registered model of :data:`MEMBER_FAMILIES`."""
    if not isinstance(member, str):
        raise TypeError(f'member must be a registered model name, got {type(member).__name__}')
    variants = [v for f in MEMBER_FAMILIES for v in f.variants]
    if architecture_of(member) not in variants:
        raise ValueError(f'smpconv_ensemble members are single-input sequence models ({", ".join(variants)}), not '
                         f'{member!r}')


def _prefix_pattern(pattern: Any) -> Any:
    """A member's ``group_matcher`` pattern under ``members.<i>.`` (strings and timm's ``[(regex, tuple)]``)."""
    if isinstance(pattern, str):
        return r'^members\.(\d+)\.' + pattern.lstrip('^')
    return [(_prefix_pattern(p), t) for p, t in pattern]


class SMPEnsemble(nn.Module):
    """``n_members`` copies of the registered model ``member`` (each built with ``member_kwargs``); the output is
    the log of their mean class probability (module docstring)."""

    def __init__(self, member: str = DEFAULT_MEMBER, n_members: int = DEFAULT_MEMBERS, **member_kwargs: Any):
        super().__init__()
        check_member(member)
        if not 1 <= int(n_members) <= MAX_MEMBERS:
            raise ValueError(f'n_members must be in 1..{MAX_MEMBERS}, got {n_members}')
        for key in ('pretrained', 'features_only', 'pretrained_cfg', 'pretrained_cfg_overlay'):
            if key in member_kwargs:
                raise ValueError(f'{key} is not a member argument: pass it to timm.create_model for the ensemble')
        self.member, self.n_members = member, int(n_members)
        self.members = nn.ModuleList([timm.create_model(member, **member_kwargs) for _ in range(self.n_members)])
        first = self.members[0]
        self.num_classes = first.num_classes
        # the members' (sequence TCNs of MEMBER_FAMILIES) attributes the tools read: sizes, pooling, kernels
        self.in_chans, self.seq_len, self.causal = first.in_chans, first.seq_len, first.causal
        self.member_features = first.num_features
        self.num_features = self.n_members * first.num_features
        self.head_hidden_size = self.n_members * first.head_hidden_size
        self.global_pool, self.drop_rate = first.global_pool, first.drop_rate
        self.grad_checkpointing = False

    def forward_features(self, x: Tensor) -> Tensor:
        """The members' unpooled features side by side (channels ``[member 0 | member 1 | ...]``)."""
        return torch.cat([m.forward_features(x) for m in self.members], 1)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Each member's head on its share of the channels: pooled features side by side (``pre_logits``, or no
        classifier), else the log mean probability."""
        chunks = x.split(self.member_features, 1)
        outs = [m.forward_head(c, pre_logits=pre_logits) for m, c in zip(self.members, chunks)]
        if pre_logits or self.num_classes == 0:
            return torch.cat(outs, 1)
        return mean_probability_logits(outs)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Log mean probability ``[B, num_classes]`` (module docstring); ``mask`` ``[B, L]`` (true on real steps of
        left-padded series) goes to every sequence member."""
        if mask is None:
            outs: list[Tensor] = []
            for m in self.members:
                outs.append(m(x))
        else:
            outs = self._masked_outputs(x, mask)
        if self.num_classes == 0:
            return torch.cat(outs, 1)
        return mean_probability_logits(outs)

    @torch.jit.unused
    def _masked_outputs(self, x: Tensor, mask: Tensor) -> list[Tensor]:
        return [m(x, mask) for m in self.members]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return {k: _prefix_pattern(v) for k, v in self.members[0].group_matcher(coarse).items()}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for m in self.members:
            m.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The members' classifiers (an ``nn.ModuleList``)."""
        return nn.ModuleList([m.get_classifier() for m in self.members])

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        for m in self.members:
            m.reset_classifier(num_classes, global_pool)
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f'members.{i}.{n}' for i, m in enumerate(self.members) for n in m.no_weight_decay()}

    @torch.jit.ignore
    def rescale_kernels(self, scale: float) -> dict[str, tuple[int, ...]]:
        """Every member's :meth:`~smpconv_models.models._common.SMPModelMixin.rescale_kernels`."""
        return {f'members.{i}.{k}': v for i, m in enumerate(self.members) for k, v in m.rescale_kernels(scale).items()}


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: SMPEnsemble, validate: bool = True
                         ) -> dict[str, Tensor]:
    """Each member's share of an ensemble state dict (``members.<i>.``) through the member family's own
    ``checkpoint_filter_fn`` (input-channel adaptation, official key conversion); ``validate`` checks the result
    against the model (a clear error naming missing, unexpected or mis-shaped keys)."""
    out: dict[str, Tensor] = {}
    pattern = re.compile(r'^members\.(\d+)\.(.*)$')
    shares: dict[int, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        match = pattern.match(key)
        if match is None:
            out[key] = value  # reported by validate_for_model
            continue
        shares.setdefault(int(match.group(1)), {})[match.group(2)] = value
    for i, share in sorted(shares.items()):
        if i < len(model.members):
            member = model.members[i]
            share = find_family(member, MEMBER_FAMILIES).checkpoint_filter(share, member, validate=False)
        out.update({f'members.{i}.{k}': v for k, v in share.items()})
    return validate_for_model(out, model) if validate else out


def _member_names(name: str) -> tuple[str, ...]:
    """A member module's name (a cfg's ``first_conv`` / ``classifier``) in every member an ensemble may hold."""
    return tuple(f'members.{i}.{name}' for i in range(MAX_MEMBERS))


def _cfg(**kwargs) -> dict:
    return {'num_classes': 20, 'input_size': (3, 1, 182), 'pool_size': (1, 182), 'crop_pct': 1.0,
            'interpolation': '', 'mean': (0.0,) * 3, 'std': (1.0,) * 3,
            'first_conv': _member_names('blocks.0.conv1.small_conv.conv'), 'classifier': _member_names('head'),
            'license': 'mit', 'paper_name': 'InceptionTime: Finding AlexNet for Time Series Classification (ensemble '
            'rule); SMPConv: Self-moving Point Representations for Continuous Convolution', **kwargs}


default_cfgs = generate_default_cfgs({'smpconv_ensemble.untrained': _cfg()})


@register_model
def smpconv_ensemble(pretrained: bool = False, member: str = DEFAULT_MEMBER, n_members: int = DEFAULT_MEMBERS,
                     **kwargs) -> SMPEnsemble:
    """An ensemble of ``n_members`` (1..16) registered sequence TCNs ``member`` (default five
    ``smpconv_tcn_chartraj``); other kwargs go to every member. Output: log mean probability (module docstring)."""
    kwargs = FAMILY.check_kwargs('smpconv_ensemble', kwargs)  # (FAMILY, below)
    check_member(member)
    if kwargs.get('features_only'):
        raise ValueError('smpconv_ensemble has no features_only form (no single feature pyramid): take features from '
                         'a member (model.members[i].forward_intermediates) or the pooled ones (reset_classifier(0))')
    member_cfg = timm.models.get_pretrained_cfg(architecture_of(member)).to_dict()
    in_chans = kwargs.get('in_chans', member_cfg['input_size'][0])
    length = int(kwargs.get('seq_len', member_cfg['input_size'][-1]))
    overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {})
    overlay.setdefault('input_size', (in_chans, 1, length))
    overlay.setdefault('pool_size', (1, length))
    kwargs.setdefault('num_classes', member_cfg['num_classes'])
    if not isinstance(kwargs.get('pretrained_cfg'), dict):  # not a saved folder's cfg: the weights match the model
        overlay.setdefault('num_classes', kwargs['num_classes'])
    overlay.setdefault('mean', (tuple(member_cfg['mean']) * in_chans)[:in_chans])
    overlay.setdefault('std', (tuple(member_cfg['std']) * in_chans)[:in_chans])
    for key in ('first_conv', 'classifier'):  # the members' own modules
        if key not in overlay:
            overlay[key] = tuple(f'members.{i}.{member_cfg[key]}' for i in range(int(n_members)))
    return build_model_with_cfg(SMPEnsemble, 'smpconv_ensemble', pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                pretrained_cfg_overlay=overlay, member=member, n_members=n_members, **kwargs)


FAMILY = ModelFamily(
    name='smpconv_ensemble', model_cls=SMPEnsemble, variants=('smpconv_ensemble',), input_kind='sequence',
    # the members' input layers (smpconv_tcn.INPUT_LAYERS) under members.<i>.
    input_layers=tuple(f'members.{i}.{k}' for i in range(MAX_MEMBERS) for k in smpconv_tcn.INPUT_LAYERS),
    checkpoint_filter=checkpoint_filter_fn,
    refused_kwargs={'drop_path_rate': 'its members, the SMPConv TCNs, have no residual drop path (drop_rate is '
                                      'their dropout)'},
    data_kwargs={'seq_len': 'length'},  # every member's kernels span the training length
    training=TrainingDefaults(  # the members' (smpconv_tcn's)
        recipe=smpconv_tcn.SEQUENCE_RECIPE, digits_model_args=smpconv_tcn.DIGITS_MODEL_ARGS,
        small_data_model_args=smpconv_tcn.small_data_model_args),
)
SMPEnsemble.family = FAMILY
