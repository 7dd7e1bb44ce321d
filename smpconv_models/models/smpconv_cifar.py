"""SMPConv CIFAR-10 ResNet (Kim & Park, CVPR 2023, Sec. 4.2 and Table 1; the official ``Img_ResNet``).

A stem of one full 33x33 SMP conv (per-filter points, ``1/|N(x)|`` average) beside a 3x3 conv, then seven residual
blocks of two such parallel pairs at full resolution (no downsampling), global average pooling and a linear head.
Every ``BN(SMP conv) + BN(small conv)`` pair reparameterizes into one dense conv.
"""
# No ``from __future__ import annotations``: torch.fx copies the traced forward's annotations into the code it
# generates, and string annotations there break scripting an fx-traced model (timm's fx + torchscript test).

import torch
import torch.nn as nn
from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor

from ..layers import SMPParallelConv
from ._checkpoint import adapt_input_layers, validate_for_model
from ._common import CheckpointSequential, SMPModelMixin
from ._family import NO_STRIDES, ModelFamily, TrainingDefaults
from ._official import convert_ckconv_keys, linear_from_pointwise, pop_train_lengths

__all__ = ['SMPConvCifar', 'SMPResBlock']


class SMPResBlock(nn.Module):
    """``relu(BN(smp2) + BN(small2))(dropout(relu(BN(smp1) + BN(small1))(x))) + shortcut(x))``."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, n_points: int, radius: float, coord_std: float,
                 small_kernel_size: int, drop_rate: float, conv_bias: bool = False, deploy: bool = False,
                 learn_positions: bool = True, learn_radius: bool = True, device=None, dtype=None):
        super().__init__()
        args = dict(kernel_size=kernel_size, n_points=n_points, radius=radius, coord_std=coord_std,
                    small_kernel_size=small_kernel_size, bias=conv_bias, deploy=deploy,
                    learn_positions=learn_positions, learn_radius=learn_radius, device=device, dtype=dtype)
        self.conv1 = SMPParallelConv(in_chs, out_chs, **args)
        self.conv2 = SMPParallelConv(out_chs, out_chs, **args)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(drop_rate)
        self.shortcut = (nn.Conv2d(in_chs, out_chs, 1, device=device, dtype=dtype) if in_chs != out_chs
                         else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop(self.act(self.conv1(x)))
        return self.act(self.conv2(out) + self.shortcut(x))


class SMPConvCifar(SMPModelMixin, nn.Module):
    """SMPConv ResNet for 32x32 images. Input ``[B, in_chans, H, W]``; the kernel covers the whole 32x32 image.

    Ablation switches (paper Tables 6-9): ``n_points`` per filter, initial ``radius`` and position spread
    ``coord_std``, and ``learn_positions`` / ``learn_radius`` (False freezes them at their initialisation).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 10,
            global_pool: str = 'avg',
            stem_width: int = 24,
            widths: tuple[int, ...] = (24, 24, 36, 36, 36, 48, 48),
            kernel_size: int = 33,
            n_points: int = 16,
            radius: float = 0.12,
            coord_std: float = 0.05,
            small_kernel_size: int = 3,
            conv_bias: bool = False,
            drop_rate: float = 0.1,
            drop_path_rate: float = 0.0,
            kernel_scale: float = 1.0,
            deploy: bool = False,
            learn_positions: bool = True,
            learn_radius: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if drop_path_rate:
            raise ValueError('smpconv_cifar has no residual drop path (the official model uses dropout: drop_rate)')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        args = dict(kernel_size=kernel_size, n_points=n_points, radius=radius, coord_std=coord_std,
                    small_kernel_size=small_kernel_size, learn_positions=learn_positions, learn_radius=learn_radius,
                    **dd)
        self.stem = SMPParallelConv(in_chans, stem_width, bias=conv_bias, small_bias=True, deploy=deploy, **args)
        self.stem_act = nn.ReLU()
        blocks, self.feature_info, prev = [], [], stem_width
        for i, w in enumerate(widths):
            blocks.append(SMPResBlock(prev, w, drop_rate=drop_rate, conv_bias=conv_bias, deploy=deploy, **args))
            self.feature_info.append(dict(num_chs=w, reduction=1, module=f'blocks.{i}'))
            prev = w
        self.blocks = CheckpointSequential(*blocks)
        self.num_features = self.head_hidden_size = prev
        self.head = ClassifierHead(prev, num_classes, pool_type=global_pool).to(**dd)
        if isinstance(self.head.fc, nn.Linear):
            nn.init.kaiming_normal_(self.head.fc.weight)
            nn.init.zeros_(self.head.fc.bias)
        if kernel_scale != 1.0:
            self.rescale_kernels(kernel_scale)



    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^stem', blocks=r'^blocks\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = self.blocks.grad_checkpointing = enable

    def forward_intermediates(
            self,
            x: Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Forward returning block outputs (``indices``: last n blocks if int, all if None, else those listed)."""
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x = self.stem_act(self.stem(x))
        for i, block in enumerate(self.blocks):
            if not stop_early or i <= max_index:
                x = block(x)
                if i in take_indices:
                    intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if max_index < len(self.feature_info) - 1:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            prune_head = True
        if prune_head:
            self.head = ClassifierHead(self.num_features, 0, pool_type='')
            self.num_classes = 0
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem_act(self.stem(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))



def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module, validate: bool = True
                         ) -> dict[str, Tensor]:
    """Convert an official ``Img_ResNet`` state dict: ``cconv1``/``norm1``... -> ``stem``, block pairs ->
    ``conv{n}.smp`` / ``conv{n}.small_conv``, ``out_layer`` (a 1x1 conv) -> ``head.fc``; ``train_length`` dropped.
    The input layers (:data:`INPUT_LAYERS`) are adapted to the model's ``in_chans`` as timm adapts a first conv.
    ``validate=False`` converts keys only (for loaders that adapt the head or input channels afterwards)."""
    state_dict = convert_ckconv_keys(dict(state_dict), [('out_layer.', 'head.fc.')])
    pop_train_lengths(state_dict)
    out = {}
    for k, v in state_dict.items():
        if k.startswith('conv1.'):
            k = 'stem.' + k[len('conv1.'):]
        if k == 'head.fc.weight':
            v = linear_from_pointwise(v)
        out[k] = v
    adapt_input_layers(out, model, INPUT_LAYERS)
    return validate_for_model(out, model) if validate else out


# Tensors whose dim 1 is the input channels (adapted to ``in_chans`` by checkpoint_filter_fn): the stem's SMP
# weights, its small-kernel branch, and its deploy conv in reparameterized checkpoints.
INPUT_LAYERS = ('stem.smp.conv.weights', 'stem.small_conv.conv.weight', 'stem.reparam_conv.weight')


def _cfg(**kwargs) -> dict:
    return {
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (32, 32), 'crop_pct': 1.0,
        'interpolation': 'bilinear',
        'mean': (0.4914, 0.4822, 0.4465), 'std': (0.2470, 0.2435, 0.2616), 'first_conv': 'stem.small_conv.conv',
        'classifier': 'head.fc',
        'paper_name': 'SMPConv: Self-moving Point Representations for Continuous Convolution',
        'origin_url': 'https://github.com/sangnekim/SMPConv', 'license': 'mit', **kwargs,
    }


default_cfgs = generate_default_cfgs({'smpconv_cifar.untrained': _cfg()})


@register_model
def smpconv_cifar(pretrained: bool = False, **kwargs) -> SMPConvCifar:
    """SMPConv CIFAR-10 ResNet (489,646 params): 33x33 SMP kernels with 16 points per filter."""
    return build_model_with_cfg(
        SMPConvCifar, 'smpconv_cifar', pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3, 4, 5, 6), flatten_sequential=True),
        **FAMILY.check_kwargs('smpconv_cifar', kwargs))


# The official CIFAR-10 training: Adam with coupled weight decay 1e-5, lr 5e-3, cosine with warmup, no mixing.
FAMILY = ModelFamily(
    name='smpconv_cifar', model_cls=SMPConvCifar, variants=('smpconv_cifar',), input_kind='image',
    input_layers=INPUT_LAYERS, checkpoint_filter=checkpoint_filter_fn, feature_maps='full_resolution',
    refused_kwargs={'drop_path_rate': 'it has no residual drop path (the official model uses dropout: drop_rate)',
                    'output_stride': NO_STRIDES},
    training=TrainingDefaults(recipe=dict(
        optimizer='adam', lr=5e-3, batch_size=64, epochs=210, weight_decay=1e-5, warmup_epochs=10,
        label_smoothing=0.0, mixup=0.0, cutmix=0.0, randaugment=None, random_erasing=0.0, ema=False)),
)
SMPConvCifar.family = FAMILY  # the class knows its description (load_pretrained)
