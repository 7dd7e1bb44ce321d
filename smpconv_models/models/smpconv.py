"""SMPConv-T / SMPConv-B: the ImageNet SMPConvNet (Kim & Park, CVPR 2023, Sec. 4.3 and Table 4).

RepLKNet stages in which each large depthwise kernel is an SMP kernel with points shared by its channels
(``K*K // n_points_divide`` points), beside a parallel small depthwise conv, both followed by BatchNorm; a ConvFFN
(BN, 1x1 conv + BN, GELU, 1x1 conv + BN) follows each large-kernel block. ``timm.utils.reparameterize_model``
folds the SMP and small branches into one depthwise conv and every BatchNorm that precedes or follows a conv.

Module names follow the official checkpoints where they can (``stem.{i}.conv/bn``, ``stages.{i}.blocks.{j}``,
``large_kernel.smp.conv.weight_coord``, ...); ``checkpoint_filter_fn`` maps the rest (transitions, head).

``output_stride=16`` / ``8`` (dense prediction, as timm's ConvNeXt) replaces the stride 2 of the last one / two
transitions by dilation: each later stage runs dilated by ``d`` (2, then 4) and the first dilated stage's transition
keeps the previous dilation for its now stride-1 3x3 conv. The continuous SMP kernel keeps its ``K`` taps, sampled
where they are sampled now (``linspace(-1, 1, K)``), and is applied with dilation ``d``, spanning ``d * (K - 1) + 1``
pixels (as are the 5x5 small kernels). On the input grid subsampled by ``d`` this is exactly the
``output_stride=32`` network (eval mode; map sizes divisible by 32), so an ImageNet-trained encoder gives the
features it was trained to give, densely. Re-sampling the continuous kernel on the finer grid instead
(``kernel_scale``-style, ``d * (K - 1) + 1`` taps) would interpolate between the trained taps: a different function
of the input than the pretrained one, at ``d**2`` times the MACs. State dicts are the same at every output stride.
"""
# No ``from __future__ import annotations``: torch.fx copies the traced forward's annotations into the code it
# generates, and string annotations there break scripting an fx-traced model (timm's fx + torchscript test).

import re
from functools import partial

import torch
import torch.nn as nn
from timm.layers import ClassifierHead, DropPath
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor

from ..layers import ConvBN, SMPLargeKernelConv2d, fold_bn_into_next_conv, fuse_pre_bn
from ..layers.fused import (
    activation_name,
    bns_have_statistics,
    cached_eval_value,
    conv2d_act,
    folds_in_eval,
    has_forward_hooks,
    micro_batch_size,
)
from ..layers.mode import execution_mode, is_eager, python_only
from ._checkpoint import adapt_input_layers, unwrap_state_dict, validate_for_model
from ._common import CheckpointSequential, SMPModelMixin
from ._family import ModelFamily, TrainingDefaults

__all__ = ['SMPConvNet', 'SMPBlock', 'ConvFFN', 'SMPStage']


# In place: every ReLU here follows a BatchNorm, a sum or a conv, none of which needs its output for the backward
# (saves one activation-sized allocation and pass per ReLU; at 112x112 in the stem each is 38.5 MB at batch 8).
_ReLU = partial(nn.ReLU, inplace=True)


def _fold_pre_bn(module: nn.Module, bn_name: str, conv_bn: ConvBN) -> None:
    """Fold the BatchNorm named ``bn_name`` (directly before the 1x1 ``conv_bn``) into it."""
    bn = getattr(module, bn_name)
    if isinstance(bn, nn.Identity):
        return
    conv_bn.reparameterize()
    fold_bn_into_next_conv(bn, conv_bn.conv)
    setattr(module, bn_name, nn.Identity())
    module._eval_cache = None


class _PreBNResidual(nn.Module):
    """What :class:`SMPBlock` and :class:`ConvFFN` share: ``x + drop_path(pw2(f(pw1(BN(x)))))`` with 1x1 ConvBNs
    ``pw1`` / ``pw2`` and the pre-BN named ``pre_bn_name`` (the official names differ per block).

    In training with stochastic depth the residual is one fused multiply-add (one pass fewer); in eager eval without
    autograd the pre-BN and the ConvBNs' BNs fold into the 1x1 convs (cached) and the activation and the residual
    add fuse into them (:func:`~smpconv_models.layers.fused.conv2d_act`). Subclasses give :meth:`branch` (the plain
    path) and :meth:`fused_hidden` (the folded one, up to pw2)."""

    pre_bn_name = ''
    micro_batch = False  # run the folded form in CPU micro-batches when its hidden activation is large

    def forward(self, x: Tensor) -> Tensor:
        if is_eager() and self._folds(x):
            return self._fused_forward(x)
        return self._residual(x, self.branch(x))

    def branch(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _residual(self, x: Tensor, out: Tensor) -> Tensor:
        if execution_mode() in ('eager', 'compile') and self._drops():
            return self._residual_addcmul(x, out)
        return x + self.drop_path(out)

    @python_only
    def _drops(self):
        dp = self.drop_path
        return isinstance(dp, DropPath) and dp.training and dp.drop_prob > 0.0

    @python_only
    def _residual_addcmul(self, x, out):
        keep = 1.0 - self.drop_path.drop_prob
        mask = out.new_empty((out.shape[0],) + (1,) * (out.dim() - 1)).bernoulli_(keep)
        if self.drop_path.scale_by_keep:
            mask.div_(keep)
        return torch.addcmul(x, out, mask)

    @python_only
    def _folds(self, x):
        return folds_in_eval(self, x) and bns_have_statistics(self)

    @python_only
    def _fused_forward(self, x):
        w1, b1, w2, b2 = cached_eval_value(self, self._folded_weights)

        def fused(part: Tensor) -> Tensor:
            return self.pw2.conv_act(self.fused_hidden(part, w1, b1), w2, b2, residual=part)

        chunk = x.shape[0]
        if self.micro_batch:
            chunk = micro_batch_size(x, w1.shape[0] * x[0].numel() // x.shape[1] * x.element_size())
        return torch.cat([fused(part) for part in x.split(chunk)]) if chunk < x.shape[0] else fused(x)

    def fused_hidden(self, x: Tensor, w1: Tensor, b1: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _folded_weights(self) -> tuple:
        """pw1 with the pre-BN and its own BN folded in, and pw2 with its BN folded in."""
        pre_bn = getattr(self, self.pre_bn_name)
        w1, b1 = self.pw1.folded_weight_bias()
        if not isinstance(pre_bn, nn.Identity):
            w1, b1 = fuse_pre_bn(w1, b1, pre_bn)
        return (w1, b1, *self.pw2.folded_weight_bias())

    @torch.no_grad()
    def reparameterize(self) -> None:
        _fold_pre_bn(self, self.pre_bn_name, self.pw1)


class SMPBlock(_PreBNResidual):
    """Large-kernel block: BN, 1x1 conv-BN-ReLU, SMP large kernel (+ small kernel), ReLU, 1x1 conv-BN, residual."""

    pre_bn_name = 'prelkb_bn'

    def __init__(self, dim: int, kernel_size: int, drop_path: float = 0.0, n_points_divide: int = 4,
                 small_kernel_size: int = 5, deploy: bool = False, smp_args: dict | None = None, dilation: int = 1,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.prelkb_bn = nn.Identity() if deploy else nn.BatchNorm2d(dim, **dd)
        self.pw1 = ConvBN(dim, dim, 1, act_layer=_ReLU, deploy=deploy, **dd)
        self.large_kernel = SMPLargeKernelConv2d(
            dim, kernel_size, small_kernel_size, n_points_divide=n_points_divide, deploy=deploy, **(smp_args or {}),
            dilation=dilation, **dd)
        self.lk_nonlinear = nn.ReLU(inplace=True)
        self.pw2 = ConvBN(dim, dim, 1, deploy=deploy, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self._eval_cache = None

    def branch(self, x: Tensor) -> Tensor:
        return self.pw2(self.lk_nonlinear(self.large_kernel(self.pw1(self.prelkb_bn(x)))))

    def fused_hidden(self, x: Tensor, w1: Tensor, b1: Tensor | None) -> Tensor:
        return torch.relu_(self.large_kernel(self.pw1.conv_act(x, w1, b1)))


class ConvFFN(_PreBNResidual):
    """ConvFFN: BN, 1x1 conv-BN, GELU, 1x1 conv-BN, residual."""

    pre_bn_name = 'preffn_bn'
    micro_batch = True  # 4x wider hidden activation

    def __init__(self, dim: int, hidden_dim: int, drop_path: float = 0.0, deploy: bool = False, device=None,
                 dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.preffn_bn = nn.Identity() if deploy else nn.BatchNorm2d(dim, **dd)
        self.pw1 = ConvBN(dim, hidden_dim, 1, deploy=deploy, **dd)
        self.nonlinear = nn.GELU()
        self.pw2 = ConvBN(hidden_dim, dim, 1, deploy=deploy, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self._eval_cache = None

    def branch(self, x: Tensor) -> Tensor:
        return self.pw2(self.nonlinear(self.pw1(self.preffn_bn(x))))

    @python_only
    def _folds(self, x):  # the fused form computes exact (erf) GELU only
        return activation_name(self.nonlinear) == 'gelu' and super()._folds(x)

    def fused_hidden(self, x: Tensor, w1: Tensor, b1: Tensor | None) -> Tensor:
        return conv2d_act(x, w1, b1, [1, 1], [0, 0], 1, 'gelu')


class SMPStage(nn.Module):
    """Optional transition (1x1 conv-BN-ReLU, 3x3 depthwise stride-2 conv-BN-ReLU), then SMPBlock/ConvFFN pairs.

    ``dilation = (first, blocks)``: the transition's 3x3 conv runs dilated by ``first`` (with ``stride=1`` in a
    dilated stage), the blocks' large and small kernels by ``blocks`` (``output_stride``: see the module docstring).
    """

    def __init__(self, in_chs: int, out_chs: int, depth: int, kernel_size: int, drop_path_rates: list[float],
                 n_points_divide: int = 4, small_kernel_size: int = 5, ffn_ratio: float = 4.0,
                 downsample: bool = True, deploy: bool = False, smp_args: dict | None = None, stride: int = 2,
                 dilation: tuple[int, int] = (1, 1), device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if downsample:
            self.downsample = nn.Sequential(
                ConvBN(in_chs, out_chs, 1, act_layer=_ReLU, deploy=deploy, **dd),
                ConvBN(out_chs, out_chs, 3, stride=stride, groups=out_chs, act_layer=_ReLU, deploy=deploy,
                       dilation=dilation[0], **dd))
        else:
            self.downsample = nn.Identity()
        blocks = []
        for i in range(depth):
            blocks.append(
                SMPBlock(out_chs, kernel_size, drop_path_rates[i], n_points_divide, small_kernel_size, deploy,
                         smp_args, dilation[1], **dd))
            blocks.append(ConvFFN(out_chs, int(out_chs * ffn_ratio), drop_path_rates[i], deploy, **dd))
        self.blocks = CheckpointSequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class SMPConvNet(SMPModelMixin, nn.Module):
    """SMPConvNet (ImageNet). Input ``[B, in_chans, H, W]`` (H, W divisible by 32 for the full feature pyramid).

    ``output_stride`` (32, 16 or 8): the last stages dilated instead of strided (module docstring); ``feature_info``
    reductions follow (e.g. 4, 8, 16, 16 at 16).

    Ablation switches (paper Tables 6-9), the same in every stage: ``n_points`` (default ``K*K // n_points_divide``
    per stage), initial ``radius`` (default ``4 / K``) and position spread ``coord_std``, and ``learn_positions`` /
    ``learn_radius`` (False freezes them at their initialisation).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: tuple[int, ...] = (2, 2, 8, 2),
            dims: tuple[int, ...] = (96, 192, 384, 768),
            kernel_sizes: tuple[int, ...] = (31, 29, 27, 13),
            n_points_divide: int = 4,
            small_kernel_size: int = 5,
            ffn_ratio: float = 4.0,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            kernel_scale: float = 1.0,
            deploy: bool = False,
            n_points: int | None = None,
            radius: float | None = None,
            coord_std: float = 0.2,
            learn_positions: bool = True,
            learn_radius: bool = True,
            output_stride: int = 32,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f'output_stride must be 8, 16 or 32, got {output_stride!r}')
        dd = dict(device=device, dtype=dtype)
        smp_args = dict(n_points=n_points, radius=radius, coord_std=coord_std, learn_positions=learn_positions,
                        learn_radius=learn_radius)
        if not (len(depths) == len(dims) == len(kernel_sizes)):
            raise ValueError(f'depths {depths}, dims {dims} and kernel_sizes {kernel_sizes} must have equal lengths')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        stem_w = dims[0]
        self.stem = nn.Sequential(
            ConvBN(in_chans, stem_w, 3, stride=2, act_layer=_ReLU, deploy=deploy, **dd),
            ConvBN(stem_w, stem_w, 3, groups=stem_w, act_layer=_ReLU, deploy=deploy, **dd),
            ConvBN(stem_w, stem_w, 1, act_layer=_ReLU, deploy=deploy, **dd),
            ConvBN(stem_w, stem_w, 3, stride=2, groups=stem_w, act_layer=_ReLU, deploy=deploy, **dd))
        # on the CPU even inside a ``torch.device('meta')`` context (the rates are Python floats)
        dpr = [r.tolist() for r in torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(list(depths))]
        stages, self.feature_info = [], []
        prev, reduction, dilation = stem_w, 4, 1
        for i, (depth, dim, k) in enumerate(zip(depths, dims, kernel_sizes)):
            stride, first_dilation = (2 if i > 0 else 1), dilation
            if stride > 1 and reduction >= output_stride:  # dilate instead of striding (timm's ConvNeXt rule)
                stride, dilation = 1, dilation * 2
            reduction *= stride
            stages.append(SMPStage(prev, dim, depth, k, dpr[i], n_points_divide, small_kernel_size, ffn_ratio,
                                   downsample=i > 0, deploy=deploy, smp_args=smp_args, stride=stride,
                                   dilation=(first_dilation, dilation), **dd))
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f'stages.{i}'))
            prev = dim
        self.stages = CheckpointSequential(*stages)
        self.num_features = self.head_hidden_size = prev
        self.norm = nn.BatchNorm2d(prev, **dd)
        self.head = ClassifierHead(prev, num_classes, pool_type=global_pool, drop_rate=drop_rate).to(**dd)
        self.apply(self._init_weights)
        if kernel_scale != 1.0:
            self.rescale_kernels(kernel_scale)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)



    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = self.stages.grad_checkpointing = enable
        for s in self.stages:
            s.blocks.grad_checkpointing = enable

    def forward_intermediates(
            self,
            x: Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Forward returning stage outputs (``indices``: last n stages if int, all if None, else those listed)."""
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x = self.forward_stem(x)
        last_idx = len(self.stages) - 1
        ran = 0  # the last stage run (stop_early: the last one asked for)
        for feat_idx, stage in enumerate(self.stages):
            if not stop_early or feat_idx <= max_index:
                x = stage(x)
                ran = feat_idx
                if feat_idx in take_indices:
                    intermediates.append(self.norm(x) if norm and feat_idx == last_idx else x)
        if intermediates_only:
            return intermediates
        if ran == last_idx:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.head = ClassifierHead(self.num_features, 0, pool_type='')
            self.num_classes = 0
        return take_indices

    def forward_stem(self, x: Tensor) -> Tensor:
        """The stem; in eager CPU inference in micro-batches when its activations exceed ``MICRO_BATCH_BYTES``."""
        if is_eager():
            return self._forward_stem_eager(x)
        return self.stem(x)

    @python_only
    def _forward_stem_eager(self, x: Tensor) -> Tensor:
        if folds_in_eval(self.stem, x) and x.dim() == 4 and not has_forward_hooks(self.stem):
            c = self.stem[0].conv.out_channels
            chunk = micro_batch_size(x, c * -(-x.shape[-2] // 2) * -(-x.shape[-1] // 2) * x.element_size())
            if chunk < x.shape[0]:
                return torch.cat([self.stem(part) for part in x.split(chunk)])
        return self.stem(x)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.norm(self.stages(self.forward_stem(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))



_OFFICIAL_RENAMES = [
    (re.compile(r'^transitions\.(\d+)\.'), lambda m: f'stages.{int(m.group(1)) + 1}.downsample.'),
    (re.compile(r'^head\.(weight|bias)$'), lambda m: f'head.fc.{m.group(1)}'),
]


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module, validate: bool = True
                         ) -> dict[str, Tensor]:
    """Convert an official SMPConvNet state dict (or a training checkpoint wrapping one) to this model's keys.

    Official ``transitions.{i}`` become ``stages.{i+1}.downsample``, ``head.*`` becomes ``head.fc.*`` and the
    persistent ``kernel_coord`` grids are dropped (ours are derived buffers). Our own state dicts pass unchanged.
    The input layers (:data:`INPUT_LAYERS`) are adapted to the model's ``in_chans`` as timm adapts a first conv.
    ``validate=False`` converts keys only (for loaders that adapt the head or input channels afterwards).
    """
    if 'model' in state_dict or 'model_ema' in state_dict or any(k.startswith('module.') for k in state_dict):
        state_dict = unwrap_state_dict(state_dict)
    out = {}
    for k, v in state_dict.items():
        if k.endswith('.kernel_coord'):
            continue
        for pattern, repl in _OFFICIAL_RENAMES:
            k = pattern.sub(repl, k)
        out[k] = v
    adapt_input_layers(out, model, INPUT_LAYERS)
    return validate_for_model(out, model) if validate else out


# Tensors whose dim 1 is the input channels (adapted to ``in_chans`` by checkpoint_filter_fn).
INPUT_LAYERS = ('stem.0.conv.weight',)


def _create_smpconv(variant: str, pretrained: bool = False, **kwargs) -> SMPConvNet:
    return build_model_with_cfg(
        SMPConvNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **FAMILY.check_kwargs(variant, kwargs))  # (FAMILY, below)


def _cfg(**kwargs) -> dict:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'crop_pct': 0.875,
        'interpolation': 'bicubic', 'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
        'first_conv': 'stem.0.conv', 'classifier': 'head.fc',
        'paper_name': 'SMPConv: Self-moving Point Representations for Continuous Convolution',
        'origin_url': 'https://github.com/sangnekim/SMPConv', 'license': 'mit', **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'smpconv_t.untrained': _cfg(),
    'smpconv_b.untrained': _cfg(),
})


@register_model
def smpconv_t(pretrained: bool = False, **kwargs) -> SMPConvNet:
    """SMPConv-T (26.7M params, 5.7 GMACs at 224): depths (2, 2, 8, 2), dims (96, 192, 384, 768)."""
    model_args = dict(depths=(2, 2, 8, 2), dims=(96, 192, 384, 768), kernel_sizes=(31, 29, 27, 13),
                      n_points_divide=4, small_kernel_size=5, ffn_ratio=4.0, drop_path_rate=0.1)
    return _create_smpconv('smpconv_t', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def smpconv_b(pretrained: bool = False, **kwargs) -> SMPConvNet:
    """SMPConv-B (79.5M params, 16.6 GMACs at 224): depths (2, 2, 20, 2), dims (128, 256, 512, 1024)."""
    model_args = dict(depths=(2, 2, 20, 2), dims=(128, 256, 512, 1024), kernel_sizes=(31, 29, 27, 13),
                      n_points_divide=4, small_kernel_size=5, ffn_ratio=4.0, drop_path_rate=0.5)
    return _create_smpconv('smpconv_b', pretrained=pretrained, **dict(model_args, **kwargs))


# The official ImageNet training: AdamW, lr 4e-3 at batch 2048 scaled linearly, cosine with warmup, weight decay
# 0.05, label smoothing 0.1, mixup 0.8 / cutmix 1.0, RandAugment, random erasing 0.25, EMA.
FAMILY = ModelFamily(
    name='smpconv', model_cls=SMPConvNet, variants=('smpconv_t', 'smpconv_b'), input_kind='image',
    input_layers=INPUT_LAYERS, checkpoint_filter=checkpoint_filter_fn, feature_maps='pyramid',
    training=TrainingDefaults(recipe=dict(
        optimizer='adamw', lr=4e-3, lr_ref_batch=2048, batch_size=64, epochs=300, weight_decay=0.05, warmup_epochs=10,
        label_smoothing=0.1, mixup=0.8, cutmix=1.0, randaugment='rand-m9-mstd0.5-inc1', random_erasing=0.25, ema=True,
        grad_clip=None)),
)
SMPConvNet.family = FAMILY  # the class knows its description (load_pretrained)
