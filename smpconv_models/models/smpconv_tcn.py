"""SMPConv sequence TCNs (Kim & Park, CVPR 2023, Sec. 4.1 and Tables 2-3; the official ``SeqData_TCN``).

Six residual TCN blocks of two causal SMP convs (per-filter points, kernel as long as the sequence) each beside a
5-tap causal conv, BatchNorm on both, ReLU and dropout; the logits come from the last time step. Input
``[B, in_chans, L]``. Registered variants carry the official per-task configurations (sMNIST / pMNIST, sCIFAR10,
Character Trajectories, Speech Commands MFCC and raw).

``causal=False`` (not in the paper; for classifying whole series) centres every kernel on its output step: the SMP
kernels get ``2 * seq_len - 1`` taps by default (every step sees the whole series, both ways), their points start
around the current step instead of near it on the past side, and the 5-tap branch is centred too.

The models also take timm's image-shaped ``[B, in_chans, 1, L]`` (their cfgs' ``input_size`` is ``(C, 1, L)``) and
keep the input's layout: unpooled features (``forward_features``, ``global_pool=''``) are ``[B, C, L]`` or
``[B, C, 1, L]``, and ``features_only`` / ``forward_intermediates(output_fmt='NCHW')`` give ``[B, C, 1, L]`` maps.
"""
# No ``from __future__ import annotations``: torch.fx copies the traced forward's annotations into the code it
# generates, and string annotations there break scripting an fx-traced model (timm's fx + torchscript test).


from collections.abc import Callable, Sequence
from types import MappingProxyType

import torch
import torch.nn as nn
from timm.layers import register_notrace_function
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor

from ..layers import SMPParallelCausalConv1d
from ..layers.irregular_conv import PAIRWISE_CHUNK
from ..layers.masked import masked_pool
from ..layers.mode import execution_mode, python_only
from ._checkpoint import adapt_input_layers, shipped_weights, validate_for_model
from ._common import SMPModelMixin
from ._family import NO_STRIDES, ModelFamily, TrainingDefaults
from ._official import convert_ckconv_keys, pop_train_lengths

__all__ = ['SMPConvTCN', 'TCNBlock']

# pooling over time (layers/masked.py's masked_pool): 'avgmax' is the average and the maximum side by side (timm's
# 'catavgmax'; the head then takes twice the features), as for the point sets
_POOLS = ('last', 'avg', 'max', 'avgmax', '')


# Leaves for torch.fx (the layout tests are data-dependent control flow); fx only auto-wraps public names.
@register_notrace_function
def as_sequence(x: Tensor) -> Tensor:
    """``[B, C, L]`` from ``[B, C, L]`` or timm's image-shaped ``[B, C, 1, L]``."""
    return x.squeeze(2) if x.dim() == 4 and x.shape[2] == 1 else x


@register_notrace_function
def to_layout_of(x: Tensor, like: Tensor) -> Tensor:
    """The sequence ``x`` ``[B, C, L]`` in the layout of ``like``: ``[B, C, 1, L]`` when ``like`` is 4-d."""
    return x.unsqueeze(2) if like.dim() == 4 else x


@register_notrace_function
def apply_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    """Zero the padded steps of ``x`` ``[B, C, L]`` (``mask`` ``[B, L]``, true on real steps); ``None`` keeps ``x``."""
    if mask is None:
        return x
    return x * mask.unsqueeze(1).to(x.dtype)


class TCNBlock(nn.Module):
    """``relu(drop(relu(pair2(drop(relu(pair1(x)))))) + shortcut(x))``, pairs = BN(causal SMP) + BN(causal small)
    (``causal=False``: both centred; ``seq_len`` is the SMP kernel's length in taps).

    ``forward(x, mask, timestamps)``: ``mask [B, L]`` zeroes the padded / unobserved steps of every pair's output and
    of the block's; with ``observed_norm`` the pairs' training BatchNorm statistics count the observed steps only,
    and ``timestamps [B, L]`` evaluates the kernels at their differences (the irregular-series TCN,
    :class:`~smpconv_models.layers.reparam.SMPParallelCausalConv1d`). ``kernel_layer`` builds the long branch
    instead of the SMP kernel (e.g. an MLP kernel)."""

    def __init__(self, in_chs: int, out_chs: int, seq_len: int, n_points: int, radius: float, coord_std: float,
                 small_kernel_size: int, conv_bias: bool, use_fft: bool | None, drop_rate: float,
                 deploy: bool = False, learn_positions: bool = True, learn_radius: bool = True,
                 observed_norm: bool = False, kernel_layer: Callable[..., nn.Module] | None = None,
                 pairwise_chunk: int = PAIRWISE_CHUNK, causal: bool = True, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        args = dict(kernel_size=seq_len, n_points=n_points, radius=radius, coord_std=coord_std,
                    small_kernel_size=small_kernel_size, bias=conv_bias, fft=use_fft, deploy=deploy,
                    learn_positions=learn_positions, learn_radius=learn_radius, kernel_layer=kernel_layer,
                    pairwise_chunk=pairwise_chunk, causal=causal, **dd)
        self.conv1 = SMPParallelCausalConv1d(in_chs, out_chs, **args)
        self.conv2 = SMPParallelCausalConv1d(out_chs, out_chs, **args)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(drop_rate)
        self.shortcut = nn.Conv1d(in_chs, out_chs, 1, **dd) if in_chs != out_chs else nn.Identity()
        self.observed_norm = observed_norm

    def forward(self, x: Tensor, mask: Tensor | None = None, timestamps: Tensor | None = None) -> Tensor:
        norm_mask = mask if self.observed_norm else None
        out = apply_mask(self.drop(self.act(self.conv1(x, norm_mask, timestamps))), mask)
        out = apply_mask(self.drop(self.act(self.conv2(out, norm_mask, timestamps))), mask)
        return apply_mask(self.act(out + self.shortcut(x)), mask)


class TCNClassifierMixin:
    """What :class:`SMPConvTCN` and :class:`~smpconv_models.models.smpconv_irregular.SMPConvIrregularTCN` share: the
    trunk of blocks with its ``feature_info``, the linear head, the pooling switch and timm's classifier / grouping
    hooks. The model calls :meth:`_init_classifier`, then :meth:`_build_trunk`."""

    def _init_classifier(self, in_chans: int, num_classes: int, global_pool: str, seq_len: int,
                         drop_rate: float) -> None:
        """Check and keep the classifier settings both TCNs take (``seq_len``: the training length)."""
        if global_pool not in _POOLS:
            raise ValueError(f'global_pool must be one of {_POOLS}, got {global_pool!r}')
        if seq_len < 1:
            raise ValueError(f'seq_len must be positive, got {seq_len}')
        self.num_classes, self.in_chans, self.seq_len = num_classes, in_chans, int(seq_len)
        self.global_pool, self.drop_rate = global_pool, drop_rate
        self.grad_checkpointing = False

    def _build_trunk(self, make_block: Callable[[int], nn.Module], in_chans: int, depth: int, width: int,
                     num_classes: int, device=None, dtype=None) -> None:
        """``blocks`` (``make_block(in_chs)``, ``depth`` of them, ``width`` channels out), ``feature_info`` and the
        head, in that order."""
        blocks, self.feature_info, prev = [], [], in_chans
        for i in range(depth):
            blocks.append(make_block(prev))
            self.feature_info.append(dict(num_chs=width, reduction=1, module=f'blocks.{i}'))
            prev = width
        self.blocks = nn.Sequential(*blocks)
        self.num_features = width
        self.head_hidden_size = self._pooled_features()
        self.head = self._make_head(num_classes, device=device, dtype=dtype)

    def _pooled_features(self) -> int:
        """Features after pooling: ``global_pool='avgmax'`` (average and maximum side by side) doubles them."""
        return 2 * self.num_features if self.global_pool == 'avgmax' else self.num_features

    def _make_head(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        head = nn.Linear(self.head_hidden_size, num_classes, device=device, dtype=dtype)
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
        return head

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^blocks\.0\.', blocks=r'^blocks\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in _POOLS:
                raise ValueError(f'global_pool must be one of {_POOLS}, got {global_pool!r}')
            self.global_pool = global_pool
            self.head_hidden_size = self._pooled_features()
        self.num_classes = num_classes
        p = next(self.parameters(), None)  # a new head follows the model's device, dtype and train / eval mode
        self.head = self._make_head(num_classes, **({} if p is None else dict(device=p.device, dtype=p.dtype)))
        self.head.train(self.training)


class SMPConvTCN(TCNClassifierMixin, SMPModelMixin, nn.Module):
    """SMPConv TCN for sequences ``[B, in_chans, L]`` (or ``[B, in_chans, 1, L]``, see the module docstring);
    ``seq_len`` is the training length, which sets the kernel length.

    ``causal=False`` centres every kernel on its output step (module docstring); ``kernel_size`` overrides the SMP
    kernels' length in taps (default ``seq_len`` when causal, ``2 * seq_len - 1`` when centred, which must be odd).

    Ablation switches (paper Tables 6-9): ``n_points`` per filter, initial ``radius`` and position spread
    ``coord_std`` (one value, or one per block: points spread over several scales, e.g. growing with depth as the
    dilations of a TCN), and ``learn_positions`` / ``learn_radius`` (False freezes them at their initialisation).
    """

    def __init__(
            self,
            in_chans: int = 1,
            num_classes: int = 10,
            global_pool: str = 'last',
            seq_len: int = 784,
            depth: int = 6,
            width: int = 30,
            n_points: int = 30,
            radius: float = 0.002,
            coord_std: float | Sequence[float] = 0.1,
            small_kernel_size: int = 5,
            conv_bias: bool = False,
            use_fft: bool | None = None,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            kernel_scale: float = 1.0,
            deploy: bool = False,
            learn_positions: bool = True,
            learn_radius: bool = True,
            causal: bool = True,
            kernel_size: int | None = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if drop_path_rate:
            raise ValueError('the SMPConv TCNs have no residual drop path (the official models use dropout: drop_rate)')
        self._init_classifier(in_chans, num_classes, global_pool, seq_len, drop_rate)
        if kernel_size is None:
            kernel_size = seq_len if causal else 2 * seq_len - 1
        if kernel_size < 1:
            raise ValueError(f'kernel_size must be positive, got {kernel_size}')
        self.causal = bool(causal)
        stds = [float(coord_std)] * depth if isinstance(coord_std, (int, float)) else [float(c) for c in coord_std]
        if len(stds) != depth:
            raise ValueError(f'coord_std must be one value or one per block ({depth}), got {coord_std}')
        block_std = iter(stds)
        self._build_trunk(lambda prev: TCNBlock(prev, width, int(kernel_size), n_points, radius, next(block_std),
                                                small_kernel_size, conv_bias, use_fft, drop_rate, deploy,
                                                learn_positions, learn_radius, causal=causal, **dd),
                          in_chans, depth, width, num_classes, **dd)
        if kernel_scale != 1.0:
            self.rescale_kernels(kernel_scale)

    def forward_intermediates(
            self,
            x: Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str | None = None,
            intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Forward returning block outputs (``indices``: last n if int, all if None, else listed).

        ``output_fmt``: ``'NCL'`` gives ``[B, C, L]`` intermediates, ``'NCHW'`` ``[B, C, 1, L]``, ``None`` the
        input's layout. The final features are in the input's layout, as from :meth:`forward_features`.
        """
        if output_fmt is not None and output_fmt not in ('NCL', 'NCHW'):
            raise ValueError(f"output_fmt must be 'NCL' or 'NCHW', got {output_fmt!r}")
        as_2d = x.dim() == 4 if output_fmt is None else output_fmt == 'NCHW'
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        inp, x = x, as_sequence(x)
        for i, block in enumerate(self.blocks):
            if not stop_early or i <= max_index:
                x = block(x)
                if i in take_indices:
                    intermediates.append(x.unsqueeze(2) if as_2d else x)
        if intermediates_only:
            return intermediates
        return to_layout_of(x, inp), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_head or max_index < len(self.feature_info) - 1:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Unpooled features ``[B, C, L]``, or ``[B, C, 1, L]`` for a ``[B, C, 1, L]`` input.

        ``mask`` ``[B, L]`` (true on real steps) zeroes the padded steps of the input and of every convolution's
        input: with left padding a model's outputs on the real steps then equal its outputs on the unpadded series
        (in eval mode), whatever the padding length; for a centred model (``causal=False``) too, since its 'same'
        convolutions see zeros beyond the series either way."""
        seq = apply_mask(as_sequence(x), mask)
        if self.grad_checkpointing and execution_mode() != 'script':
            seq = self._checkpointed_blocks(seq, mask)
        else:
            for block in self.blocks:
                seq = block(seq, mask)
        return to_layout_of(seq, x)

    @python_only
    def _checkpointed_blocks(self, x: Tensor, mask: Tensor | None) -> Tensor:
        for block in self.blocks:
            x = torch.utils.checkpoint.checkpoint(block, x, mask, use_reentrant=False)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool the features over time (``global_pool``) and classify. Without pooling (``''``) the features
        stay unpooled and the head gives per-step logits, channels first (``[B, num_classes, L]`` or
        ``[B, num_classes, 1, L]``)."""
        if self.global_pool:
            x = masked_pool(x.flatten(2), None, self.global_pool, -1)
        elif not pre_logits:
            return self.head(x.movedim(1, -1)).movedim(-1, 1)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Logits for ``x``; ``mask`` ``[B, L]`` marks the real steps of left-padded series (see
        :meth:`forward_features`; ``global_pool='avg'`` and ``'avgmax'`` then average over the real steps only; the
        maximum is unaffected: padded features are zero and real ones non-negative)."""
        features = self.forward_features(x, mask)
        if self.global_pool == 'avg':
            return self.head(masked_pool(features.flatten(2), mask, 'avg', -1))
        if self.global_pool == 'avgmax':
            return self.head(masked_pool(features.flatten(2), mask, 'avgmax', -1))
        return self.forward_head(features)



def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module, validate: bool = True
                         ) -> dict[str, Tensor]:
    """Convert an official ``SeqData_TCN`` state dict (``backbone`` -> ``blocks``, ``finallyr`` -> ``head``).

    The official persistent ``train_length`` buffers record the kernel length fixed at the first forward; a value
    different from the model's ``seq_len`` raises ``ValueError`` (the kernels would be sampled on another grid).
    The input layers (:data:`INPUT_LAYERS`) are adapted to the model's ``in_chans`` as timm adapts a first conv.
    ``validate=False`` converts keys only (for loaders that adapt the head or input channels afterwards).
    """
    state_dict = convert_ckconv_keys(dict(state_dict), [('backbone.', 'blocks.'), ('finallyr.', 'head.')])
    lengths = pop_train_lengths(state_dict)
    seq_len = getattr(model, 'seq_len', None)
    wrong = {k: v for k, v in lengths.items() if v not in (0, seq_len)}
    if wrong:
        k, v = next(iter(wrong.items()))
        raise ValueError(
            f'checkpoint was trained with kernel length (train_length) {v} at {k}, but the model has seq_len='
            f'{seq_len}; create the model with seq_len={v}')
    adapt_input_layers(state_dict, model, INPUT_LAYERS)
    return validate_for_model(state_dict, model) if validate else state_dict


# Tensors whose dim 1 is the input channels (adapted to ``in_chans`` by checkpoint_filter_fn): the first block's
# SMP weights, small-kernel branch, deploy conv (reparameterized checkpoints) and shortcut.
INPUT_LAYERS = ('blocks.0.conv1.smp.conv.weights', 'blocks.0.conv1.small_conv.conv.weight',
                'blocks.0.conv1.reparam_conv.weight', 'blocks.0.shortcut.weight')


def _cfg(input_size: tuple[int, int], num_classes: int = 10, **kwargs) -> dict:
    # timm's cfgs describe inputs as (C, H, W): a sequence [C, L] is (C, 1, L), and the model accepts both forms.
    return {
        'num_classes': num_classes, 'input_size': (input_size[0], 1, input_size[1]), 'crop_pct': 1.0,
        'pool_size': (1, input_size[1]), 'interpolation': '', 'mean': (0.0,) * input_size[0],
        'std': (1.0,) * input_size[0], 'first_conv': 'blocks.0.conv1.small_conv.conv',
        'classifier': 'head',
        'paper_name': 'SMPConv: Self-moving Point Representations for Continuous Convolution',
        'origin_url': 'https://github.com/sangnekim/SMPConv', 'license': 'mit', **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'smpconv_tcn_mnist.untrained': _cfg((1, 784)),
    # train.py's default run: scikit-learn's handwritten digits as 64-step sequences (weights/ in a clone)
    'smpconv_tcn_mnist.digits': _cfg((1, 64), file=str(shipped_weights('smpconv_tcn_mnist.digits')),
                                     mean=(0.0,), std=(1.0,)),
    'smpconv_tcn_scifar10.untrained': _cfg((3, 1024)),
    'smpconv_tcn_chartraj.untrained': _cfg((3, 182), num_classes=20),
    'smpconv_tcn_speech.untrained': _cfg((20, 161)),
    'smpconv_tcn_speech_raw.untrained': _cfg((1, 16000)),
})


def _create_tcn(variant: str, pretrained: bool, defaults: dict, **kwargs) -> SMPConvTCN:
    kwargs = FAMILY.check_kwargs(variant, kwargs)  # (FAMILY, below)
    tag = kwargs.get('pretrained_cfg')
    if isinstance(tag, str):  # the architecture kwargs of those weights
        defaults = dict(defaults, **FAMILY.tag_args.get(f'{variant}.{tag}', {}))
    args = dict(defaults, **kwargs)
    # the cfg's input size follows the sequence length this model is built for
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    overlay.setdefault('input_size', (args.get('in_chans', 1), 1, args['seq_len']))
    overlay.setdefault('pool_size', (1, args['seq_len']))  # unpooled features keep the [B, C, 1, L] input's size
    args['pretrained_cfg_overlay'] = overlay
    return build_model_with_cfg(
        SMPConvTCN, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        # features_only goes through forward_intermediates (FeatureGetterNet): it takes the image-shaped
        # [B, C, 1, L] input and gives timm's NCHW feature maps [B, C, 1, L]
        feature_cfg=dict(out_indices=tuple(range(kwargs.get('depth', 6))), feature_cls='getter'),
        **args)


@register_model
def smpconv_tcn_mnist(pretrained: bool = False, **kwargs) -> SMPConvTCN:
    """sMNIST / pMNIST TCN (370,960 params): 784-step kernels, radius 0.002, no conv bias."""
    defaults = dict(in_chans=1, num_classes=10, seq_len=784, radius=0.002, conv_bias=False)
    return _create_tcn('smpconv_tcn_mnist', pretrained, defaults, **kwargs)


@register_model
def smpconv_tcn_scifar10(pretrained: bool = False, **kwargs) -> SMPConvTCN:
    """Sequential CIFAR-10 TCN (373,480 params): 1024-step kernels over 3 channels, radius 0.002, conv bias."""
    defaults = dict(in_chans=3, num_classes=10, seq_len=1024, radius=0.002, conv_bias=True)
    return _create_tcn('smpconv_tcn_scifar10', pretrained, defaults, **kwargs)


@register_model
def smpconv_tcn_chartraj(pretrained: bool = False, **kwargs) -> SMPConvTCN:
    """Character Trajectories TCN (373,790 params): 182-step kernels, 3 channels, 20 classes, radius 0.012."""
    defaults = dict(in_chans=3, num_classes=20, seq_len=182, radius=0.012, conv_bias=True)
    return _create_tcn('smpconv_tcn_chartraj', pretrained, defaults, **kwargs)


@register_model
def smpconv_tcn_speech(pretrained: bool = False, **kwargs) -> SMPConvTCN:
    """Speech Commands (20 MFCC channels) TCN (391,840 params): 161-step kernels, radius 0.012, conv bias."""
    defaults = dict(in_chans=20, num_classes=10, seq_len=161, radius=0.012, conv_bias=True)
    return _create_tcn('smpconv_tcn_speech', pretrained, defaults, **kwargs)


@register_model
def smpconv_tcn_speech_raw(pretrained: bool = False, **kwargs) -> SMPConvTCN:
    """Speech Commands raw-waveform TCN (370,960 params): 16000-step kernels, radius 0.0002, no conv bias."""
    defaults = dict(in_chans=1, num_classes=10, seq_len=16000, radius=0.0002, conv_bias=False)
    return _create_tcn('smpconv_tcn_speech_raw', pretrained, defaults, **kwargs)


# The official sequence training (smp/README.md of the official repository): Adam with coupled weight decay 1e-5,
# cosine with warmup, no mixing, and the per-task learning rates, batch sizes, epochs and dropout.
SEQUENCE_RECIPE = MappingProxyType(dict(
    optimizer='adam', lr=1e-4, batch_size=64, epochs=200, weight_decay=1e-5, warmup_epochs=5, label_smoothing=0.0,
    mixup=0.0, cutmix=0.0, randaugment=None, random_erasing=0.0, ema=False))
# The embedded 64-step digits: the official 784-step point radius (0.002, under one grid spacing of 2/783) would
# leave most points between taps, so it scales with the spacing.
DIGITS_MODEL_ARGS = MappingProxyType(dict(radius=0.03))


def small_data_model_args(length: int, causal: bool = False, global_pool: str = 'avgmax') -> dict:
    """The small-data recipe's kwargs for a user's series of ``length`` steps (BENCHMARKS.md "Small-data sequence
    recipe"): centred kernels (``causal=False``: a whole series is classified, so a step may see its future) of
    ``min(2 * length - 1, SMALL_DATA_KERNEL)`` taps (local kernels: six blocks of them still see 750 steps each way;
    the whole series' ``2 * length - 1`` taps let 200 series be fitted by their overall form and generalised worse),
    the point radius two taps (``4 / (K - 1)``), and the average and the maximum of each feature over time side by
    side (``global_pool='avgmax'``, instead of the last step's view: a pattern counts wherever it occurs; the maximum
    keeps a short motif that the average over hundreds of steps dilutes; padded steps are zero and the features
    non-negative, so left padding changes neither); the small kernel (5 taps) no longer than the SMP kernel.
    ``causal=True`` / ``global_pool`` for the models that need others (the irregular-series TCNs: causal, ``'max'``,
    kernels as long as the series, radius ``2 / (length - 1)``)."""
    args: dict = {'global_pool': global_pool}
    if causal:
        kernel = length
        args['radius'] = 2.0 / (length - 1)
    else:
        kernel = min(2 * length - 1, SMALL_DATA_KERNEL)
        args.update(radius=4.0 / (kernel - 1), causal=False)
        if kernel < 2 * length - 1:
            args['kernel_size'] = kernel
    if kernel < 5:
        args['small_kernel_size'] = kernel
    return args


# The small-data recipe's centred SMP kernels have at most this many taps (BENCHMARKS.md "Small-data sequence recipe":
# 127 taps against the whole series' 599-999 on the univariate shape sets)
SMALL_DATA_KERNEL = 127

# The small-data recipe trains an ensemble of this many members (train.py --ensemble; BENCHMARKS.md "Small-data
# sequence recipe": a 200-series / 500-step set within 15 minutes on 2 cores)
SMALL_DATA_ENSEMBLE = 3

_NO_DROP_PATH = 'the SMPConv TCNs have no residual drop path (the official models use dropout: drop_rate)'

FAMILY = ModelFamily(
    name='smpconv_tcn', model_cls=SMPConvTCN, input_kind='sequence',
    variants=('smpconv_tcn_mnist', 'smpconv_tcn_scifar10', 'smpconv_tcn_chartraj', 'smpconv_tcn_speech',
              'smpconv_tcn_speech_raw'),
    input_layers=INPUT_LAYERS, checkpoint_filter=checkpoint_filter_fn, feature_maps='full_resolution',
    refused_kwargs={'drop_path_rate': _NO_DROP_PATH, 'output_stride': NO_STRIDES},
    data_kwargs={'seq_len': 'length'},  # the kernels span the training length
    tag_args={'smpconv_tcn_mnist.digits': dict(seq_len=64, radius=0.03)},
    training=TrainingDefaults(
        recipe=SEQUENCE_RECIPE,
        per_variant={
            'smpconv_tcn_mnist': dict(lr=1e-4, epochs=200),
            'smpconv_tcn_scifar10': dict(lr=2e-4, epochs=200),
            'smpconv_tcn_chartraj': dict(lr=1e-4, epochs=300),
            'smpconv_tcn_speech': dict(lr=2e-3, batch_size=32, epochs=300, drop_rate=0.2),
            'smpconv_tcn_speech_raw': dict(lr=1e-3, batch_size=32, epochs=160, warmup_epochs=10, drop_rate=0.1),
        },
        digits_model_args=DIGITS_MODEL_ARGS,
        small_data_model_args=small_data_model_args,
        small_data_recipe=dict(ensemble=SMALL_DATA_ENSEMBLE),
        official_data={'smpconv_tcn_chartraj': 'CharacterTrajectories'},
        data_options={'smpconv_tcn_speech_raw': dict(speech='waveform')},
    ),
)
SMPConvTCN.family = FAMILY  # the class knows its description (load_pretrained)
