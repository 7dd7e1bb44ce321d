"""Point-set classifier from continuous convolutions (Wang et al., CVPR 2018) with SMP or MLP kernels.

A :class:`~smpconv_models.layers.PointConv` stem on the full set, then stages that subsample the points
(farthest-point, farthest-point on a grid pool of 4x the kept count for large sets, or random), convolve from the
previous set onto the kept points and apply residual blocks (``PointConv -> BN -> act -> Linear -> BN``, plus the
input), then masked global pooling and a linear head. Batch norms only count real points. Neighbourhoods are searched
once per point set and search parameters (``k``, ``radius``) and handed to every layer there (the stem, a stage that
keeps every point, the blocks of a stage), as PyG shares ``edge_index``. ``kernel='smp'`` uses SMP kernels (shared
points per layer), ``'mlp'`` Wang et al.'s MLP kernels; the rest of the network is identical, so the two are compared
like for like.

Input (``forward``, ``forward_features``): ``features [B, N, in_chans]``, ``positions [B, N, dim]`` and an optional
``mask [B, N]`` (bool, True = real point) as arguments, as a dict with those keys, or as a tuple
``(features, positions[, mask])`` in the first argument. Positions are expected at unit scale (about ``[-1, 1]^d``):
the neighbourhood radii are in those units. The input's value checks are one host read per forward (skipped while
exporting: :func:`~smpconv_models.layers.neighbors.check_point_set`).
"""
# No ``from __future__ import annotations`` (as the other families: fx copies annotations into generated code).
from typing import NamedTuple

import torch
import torch.nn as nn
from timm.layers import DropPath, get_act_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor

from ..layers import Neighborhood, PointConv, check_point_set, farthest_point_sample, random_point_sample
from ..layers.masked import MaskedBatchNorm1d, masked_pool
from ._checkpoint import adapt_input_layers, validate_for_model
from ._common import SMPModelMixin
from ._family import NO_STRIDES, ModelFamily, TrainingDefaults

__all__ = ['SMPPointNet', 'PointSet']

# sampling='fps_subset' runs farthest-point sampling on a grid pool of this many real points per kept point.
FPS_SUBSET = 4
SAMPLINGS = ('fps', 'fps_subset', 'random')


class PointSet(NamedTuple):
    """Per-point features ``[B, M, C]``, their positions ``[B, M, d]`` and mask ``[B, M]`` (or None)."""

    features: Tensor
    positions: Tensor
    mask: Tensor | None


class PointHead(nn.Module):
    """Masked global pooling (``'avg'``, ``'max'`` or ``'avgmax'``: their concatenation), dropout, linear."""

    def __init__(self, in_features: int, num_classes: int, pool_type: str = 'avg', drop_rate: float = 0.0):
        super().__init__()
        self.in_features, self.drop_rate = in_features, drop_rate
        self.pool_type = self._check_pool(pool_type)
        self.drop = nn.Dropout(drop_rate)
        self.fc = self._fc(num_classes)

    @staticmethod
    def _check_pool(pool_type: str) -> str:
        if pool_type not in ('avg', 'max', 'avgmax'):
            raise ValueError(f"global_pool must be 'avg', 'max' or 'avgmax' for point sets, got {pool_type!r}")
        return pool_type

    def _fc(self, num_classes: int) -> nn.Module:
        width = self.in_features * (2 if self.pool_type == 'avgmax' else 1)
        return nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        if pool_type:
            self.pool_type = self._check_pool(pool_type)
        self.fc = self._fc(num_classes)

    def forward(self, x: Tensor, mask: Tensor | None = None, pre_logits: bool = False) -> Tensor:
        x = self.drop(masked_pool(x, mask, self.pool_type, 1))
        return x if pre_logits else self.fc(x)


class PointResBlock(nn.Module):
    """``act(x + drop_path(BN(Linear(act(BN(PointConv(x)))))))`` on one point set."""

    def __init__(self, chans: int, conv_args: dict, act_layer, drop_path: float = 0.0):
        super().__init__()
        self.conv = PointConv(chans, chans, bias=False, **conv_args)
        self.bn1 = MaskedBatchNorm1d(chans)
        self.act = act_layer()
        self.mix = nn.Linear(chans, chans, bias=False)
        self.bn2 = MaskedBatchNorm1d(chans)
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor | None,
                neighbors: Neighborhood | None = None) -> Tensor:
        y = self.act(self.bn1(self.conv(x, positions, mask=mask, check_values=False, neighbors=neighbors), mask))
        y = self.bn2(self.mix(y), mask)
        return self.act(x + self.drop_path(y))


def _search_key(conv: PointConv) -> tuple:
    """What a layer's neighbourhood depends on besides the points: layers on one set with equal keys share it."""
    return conv.k, conv.radius, conv.chunk_size, conv.backend


def _shared_neighbors(conv: PointConv, positions: Tensor, mask: Tensor | None, cache: dict) -> Neighborhood:
    """``conv``'s neighbourhood on the set ``positions`` (query = support), searched once per search key."""
    key = _search_key(conv)
    if key not in cache:
        cache[key] = conv.find_neighbors(positions, mask=mask)
    return cache[key]


class PointStage(nn.Module):
    """Subsample to ``n_points`` (None: keep all), convolve onto the kept points, then residual blocks.

    ``neighbors``: a dict of neighbourhoods on the input set (query = support) by search parameters
    (``k``, ``radius``, ...), owned by the caller; the stage searches each neighbourhood it needs once, and on
    return the dict holds those of the output set, so the next layers on that set reuse them."""

    def __init__(self, in_chans: int, out_chans: int, n_points: int | None, conv_args: dict, act_layer,
                 drop_path: tuple, sampling: str):
        super().__init__()
        self.n_points, self.sampling = n_points, sampling
        self.down = PointConv(in_chans, out_chans, bias=False, **conv_args)
        self.bn = MaskedBatchNorm1d(out_chans)
        self.act = act_layer()
        self.blocks = nn.ModuleList([PointResBlock(out_chans, conv_args, act_layer, dp) for dp in drop_path])

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor | None, neighbors: dict | None = None) -> PointSet:
        cache = {} if neighbors is None else neighbors
        n = positions.shape[1]
        m = n if self.n_points is None else min(n, self.n_points)
        if m < n:
            if self.sampling == 'random':
                real = mask if mask is not None else torch.ones(positions.shape[:2], dtype=torch.bool,
                                                                device=positions.device)
                idx = random_point_sample(real, m)
            else:
                subset = min(n, FPS_SUBSET * m) if self.sampling == 'fps_subset' else None
                idx = farthest_point_sample(positions.detach(), m, mask, subset=subset)
            query = positions.gather(1, idx.unsqueeze(-1).expand(-1, -1, positions.shape[-1]))
            query_mask = mask.gather(1, idx) if mask is not None else None
            x = self.down(x, positions, query, mask, check_values=False,
                          neighbors=self.down.find_neighbors(positions, query, mask))
            cache.clear()  # the output set is a new one
        else:
            query, query_mask = positions, mask
            x = self.down(x, positions, None, mask, check_values=False,
                          neighbors=_shared_neighbors(self.down, positions, mask, cache))
        x = self.act(self.bn(x, query_mask))
        for block in self.blocks:
            x = block(x, query, query_mask, _shared_neighbors(block.conv, query, query_mask, cache))
        return PointSet(x, query, query_mask)


def _unpack(features, positions, mask):
    if isinstance(features, dict):
        unknown = set(features) - {'features', 'positions', 'mask'}
        if unknown or 'features' not in features or 'positions' not in features:
            raise ValueError("a dict input needs keys 'features' and 'positions' (and optionally 'mask'), got "
                             f'{sorted(features)}')
        return features['features'], features['positions'], features.get('mask', mask)
    if isinstance(features, (tuple, list)):
        if len(features) not in (2, 3):
            raise ValueError(f'a tuple input is (features, positions[, mask]), got {len(features)} items')
        return features[0], features[1], features[2] if len(features) == 3 else mask
    if positions is None:
        raise ValueError('point-set models need positions: model(features, positions, mask=None), '
                         "model({'features': ..., 'positions': ..., 'mask': ...}) or model((features, positions))")
    return features, positions, mask


class SMPPointNet(SMPModelMixin, nn.Module):
    """Point-set classifier: a ``PointConv`` stem, stages of subsampling + ``PointConv`` residual blocks, masked
    global pooling, a linear head. ``kernel='smp' | 'mlp'``; ``kernel_args`` go to every layer's kernel;
    ``sampling='fps' | 'fps_subset' | 'random'`` (``'fps_subset'``: farthest-point sampling on a pool of ``FPS_SUBSET``
    times the kept count of real points spread over the set (:func:`~smpconv_models.layers.neighbors.grid_pool`),
    for sets where the exact sampler's ``O(N m)`` steps dominate); ``learn_positions`` / ``learn_radius`` (False)
    freeze every SMP kernel's points (paper Tables 6-7)."""

    def __init__(
            self,
            in_chans: int = 1,
            num_classes: int = 10,
            dim: int = 2,
            kernel: str = 'smp',
            stem_width: int = 16,
            widths: tuple = (32, 64),
            depths: tuple = (1, 1),
            stage_points: tuple = (16, 8),
            radii: tuple = (0.6, 1.0),
            stem_radius: float | None = None,
            k: int = 16,
            normalize: bool = True,
            sampling: str = 'fps',
            kernel_args: dict | None = None,
            global_pool: str = 'avgmax',
            act_layer: str | type = 'relu',
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            learn_positions: bool = True,
            learn_radius: bool = True,
    ):
        super().__init__()
        n_stages = len(widths)
        if not (len(depths) == len(stage_points) == n_stages and len(radii) == n_stages):
            raise ValueError(f'widths, depths, stage_points and radii need one entry per stage, got {len(widths)}, '
                             f'{len(depths)}, {len(stage_points)}, {len(radii)}')
        if sampling not in SAMPLINGS:
            raise ValueError(f'sampling must be one of {", ".join(map(repr, SAMPLINGS))}, got {sampling!r}')
        if any(m is not None and int(m) < 1 for m in stage_points):
            raise ValueError(f'stage_points must be positive (or None: keep every point), got {stage_points}')
        act = get_act_layer(act_layer) if isinstance(act_layer, str) else act_layer
        self.num_classes, self.in_chans, self.dim, self.kernel = num_classes, in_chans, dim, kernel
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        if kernel_args is None:  # equal basis sizes: 8 SMP points or 8 last-hidden MLP units per kernel
            kernel_args = dict(n_points=8) if kernel == 'smp' else dict(hidden=8)
        frozen = {name: False for name, learn in (('learn_positions', learn_positions), ('learn_radius', learn_radius))
                  if not learn}
        if frozen:  # every layer's SMP points (kernel_args may freeze them as well)
            if kernel != 'smp':
                raise ValueError(f"learn_positions / learn_radius freeze SMP points; kernel={kernel!r} has none (its "
                                 'MLP kernels learn every weight)')
            kernel_args = {**kernel_args, **frozen}
        base = dict(kernel=kernel, dim=dim, k=k, normalize=normalize, **kernel_args)
        self.stem = PointConv(in_chans, stem_width, radius=stem_radius or radii[0], bias=False, **base)
        self.stem_bn = MaskedBatchNorm1d(stem_width)
        self.stem_act = act()
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, self.feature_info, prev, cursor = [], [], stem_width, 0
        for i, (w, d, m, r) in enumerate(zip(widths, depths, stage_points, radii)):
            stages.append(PointStage(prev, w, m, dict(base, radius=r), act, tuple(dpr[cursor:cursor + d]), sampling))
            cursor += d
            self.feature_info.append(dict(num_chs=w, reduction=1, module=f'stages.{i}'))
            prev = w
        self.stages = nn.ModuleList(stages)
        self.num_features = self.head_hidden_size = prev
        self.head = PointHead(prev, num_classes, global_pool, drop_rate)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^stem', blocks=r'^stages\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            raise NotImplementedError('smpconv_points has no gradient checkpointing')

    def forward_features(self, features, positions: Tensor | None = None,
                         mask: Tensor | None = None) -> PointSet:
        """The last stage's :class:`PointSet` (features ``[B, M, C]``, positions, mask)."""
        features, positions, mask = _unpack(features, positions, mask)
        check_point_set(features, positions, mask, in_channels=self.in_chans, dim=self.dim)  # one host sync
        if mask is not None:
            positions = positions.masked_fill(~mask.unsqueeze(-1), 0.0)
        neighbors: dict = {}  # neighbourhoods on the current set by search parameters: one search per resolution
        x = self.stem(features, positions, mask=mask, check_values=False,
                      neighbors=_shared_neighbors(self.stem, positions, mask, neighbors))
        x = self.stem_act(self.stem_bn(x, mask))
        for stage in self.stages:
            x, positions, mask = stage(x, positions, mask, neighbors)
        return PointSet(x, positions, mask)

    def forward_head(self, x, pre_logits: bool = False, mask: Tensor | None = None) -> Tensor:
        """Pool and classify a :class:`PointSet` (or features ``[B, M, C]`` with an optional ``mask``)."""
        if isinstance(x, PointSet):
            x, mask = x.features, x.mask
        return self.head(x, mask, pre_logits=pre_logits)

    def forward(self, features, positions: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        return self.forward_head(self.forward_features(features, positions, mask))


def checkpoint_filter_fn(state_dict: dict, model: nn.Module, validate: bool = True) -> dict:
    """Our own checkpoints only (there is no official point-set model); the stem's kernel weights (:data:`INPUT_LAYERS`)
    are adapted to the model's ``in_chans`` as timm adapts a first conv; keys are checked against the model."""
    state_dict = adapt_input_layers(dict(state_dict), model, INPUT_LAYERS)
    return validate_for_model(state_dict, model) if validate else state_dict


# Tensors whose dim 1 is the input channels (adapted to ``in_chans`` by checkpoint_filter_fn): the stem's kernel
# weights ``[F_out, F_in, P]`` (SMP) or ``[F_out, F_in, H]`` (MLP); the stem has no bias.
INPUT_LAYERS = ('stem.kernel.weights',)


def _cfg(**kwargs) -> dict:
    return {
        # input_size: (in_chans, points, dim) of a padded digits-points set (not an image size)
        'num_classes': 10, 'input_size': (1, 38, 2), 'crop_pct': 1.0, 'mean': (0.0,), 'std': (1.0,),
        'first_conv': 'stem.kernel', 'classifier': 'head.fc',
        'paper_name': 'Deep Parametric Continuous Convolutional Neural Networks (kernel: SMPConv)',
        'license': 'mit', **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'smpconv_points.untrained': _cfg(),
    # input_size: a padded shapes3d set of 1,024 points (the data holds 1k-10k per set)
    'smpconv_points_3d.untrained': _cfg(num_classes=8, input_size=(3, 1024, 3), mean=(0.0,) * 3, std=(1.0,) * 3),
})


@register_model
def smpconv_points(pretrained: bool = False, **kwargs) -> SMPPointNet:
    """Point-set classifier: PointConv stem (16 channels) + 2 stages (32 and 64 channels on 16 and 8 farthest points;
    radius search, at most 16 neighbours), SMP kernels with 8 shared points (``kernel='mlp'``: MLP kernels with 8
    last-hidden units). Sized for sets of tens of points at unit scale (digits-points)."""
    return build_model_with_cfg(SMPPointNet, 'smpconv_points', pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(flatten_sequential=True),
                                **FAMILY.check_kwargs('smpconv_points', kwargs))


@register_model
def smpconv_points_3d(pretrained: bool = False, **kwargs) -> SMPPointNet:
    """3-d point-set classifier sized for sets of 1k-10k points at unit scale (``shapes3d``): features = xyz
    (``in_chans=3``), PointConv stem (32 channels, radius 0.2) + 3 stages (64, 128, 256 channels on 512, 128 and 32
    farthest points, radii 0.25, 0.5, 1.0), at most 16 neighbours, SMP kernels with 8 shared points."""
    model_args = dict(in_chans=3, num_classes=8, dim=3, stem_width=32, widths=(64, 128, 256), depths=(1, 1, 1),
                      stage_points=(512, 128, 32), radii=(0.25, 0.5, 1.0), stem_radius=0.2, k=16)
    return build_model_with_cfg(SMPPointNet, 'smpconv_points_3d', pretrained,
                                pretrained_filter_fn=checkpoint_filter_fn, feature_cfg=dict(flatten_sequential=True),
                                **dict(model_args, **FAMILY.check_kwargs('smpconv_points_3d', kwargs)))


# No official recipe: AdamW, cosine with one warmup epoch, no augmentation.
FAMILY = ModelFamily(
    name='smpconv_points', model_cls=SMPPointNet, variants=('smpconv_points', 'smpconv_points_3d'),
    input_kind='points', input_layers=INPUT_LAYERS, checkpoint_filter=checkpoint_filter_fn, feature_maps='refused',
    refused_kwargs={
        'deploy': 'it has nothing to reparameterize (its kernels are evaluated at neighbour offsets, not folded into '
                  'dense weights) and runs as built',
        'kernel_scale': 'its kernels are continuous in position space, with no grid to re-sample; scale the '
                        'neighbourhoods with radii / stem_radius instead',
        'output_stride': NO_STRIDES,
    },
    training=TrainingDefaults(recipe=dict(
        optimizer='adamw', lr=2e-3, batch_size=32, epochs=20, weight_decay=0.01, warmup_epochs=1, label_smoothing=0.0,
        mixup=0.0, cutmix=0.0, randaugment=None, random_erasing=0.0, ema=False)),
)
SMPPointNet.family = FAMILY  # the class knows its description (load_pretrained)
