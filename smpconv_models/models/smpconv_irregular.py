"""SMPConv TCN on irregularly sampled time series: the sequence TCN with its kernels evaluated at the actual
timestamp differences (Kim & Park, CVPR 2023, Sec. 4.1; the parametric continuous convolution of Wang et al.,
CVPR 2018, Eq. 2).

Inputs: ``values`` ``[B, C, L]``, ``timestamps`` ``[B, L]`` (in grid steps: one unit of time is one step of the
grid TCN, so the causal kernel spans ``seq_len - 1`` time units) and an observed-``mask`` ``[B, L]`` (bool; ``False``
marks padding or a missing observation, whose values are ignored and may be NaN). Every causal convolution of the
grid TCN (:class:`~smpconv_models.models.smpconv_tcn.SMPConvTCN`) becomes a sum over the past observations at their
time lags (:mod:`~smpconv_models.layers.irregular_conv`): the SMP branch is each filter's SMP function at the lag's
kernel coordinate, the 5-tap branch the piecewise-linear interpolant of its taps, BatchNorm training statistics
count observed steps only, and features at unobserved steps are zero after every layer. A missing observation
contributes zero, as in a zero-filled series, so on a full grid the model *is* the grid TCN (its state dict loads
unchanged).

Two exact paths compute it. When the observed timestamps are integers (the dropped-observations protocol), the
*grid path* runs the blocks on the zero-filled series (length = the longest span in the batch) with every hidden
feature masked to observed steps: a zero feature contributes nothing to a sum, so this equals the pairwise
definition (tested in float64). Otherwise the *pairwise path* evaluates the kernels at the timestamp differences
within each query's source window (:mod:`~smpconv_models.layers.irregular_conv`: ``O(L w)`` for ``w`` sources per
window, never ``L x L``; query chunks of at most ``pairwise_chunk`` elements, recomputed in backward).

The logits come from the last observed step of each series (``global_pool='last'``, the grid TCN's last step),
or from a mean / max over observed steps (``'avg'`` / ``'max'``; ``'avgmax'``: both, side by side). With
``kernel='mlp'`` each SMP branch is built as the MLP kernel of
:class:`~smpconv_models.layers.irregular_conv.MLPCausalConv1d` on the same lags (for the side-by-side comparison).
One host read per forward checks the inputs and picks the path (the pairwise path reads one source-window width per
kernel); none in a compiled or exported graph, where the pairwise path serves every input, in source windows of
static width (exact for observed timestamps at least ``min_gap`` time units apart; a compiled graph asserts it and
the data checks at run time, :meth:`SMPConvIrregularTCN.forward_features`). The masked BatchNorm statistics are per
process (no SyncBatchNorm across processes). The kernels are causal (``causal=False`` is refused).
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..layers import SMPParallelCausalConv1d
from ..layers.irregular_conv import PAIRWISE_CHUNK, STATIC_MIN_GAP, MLPCausalConv1d, check_irregular_inputs
from ..layers.masked import masked_pool
from ..layers.mode import check_values, execution_mode
from ._checkpoint import adapt_input_layers, validate_for_model
from ._common import SMPModelMixin
from ._family import NO_STRIDES, ModelFamily, TrainingDefaults
from .smpconv_tcn import (
    _NO_DROP_PATH,
    DIGITS_MODEL_ARGS,
    SEQUENCE_RECIPE,
    TCNBlock,
    TCNClassifierMixin,
    small_data_model_args,
)
from .smpconv_tcn import INPUT_LAYERS as _GRID_INPUT_LAYERS
from .smpconv_tcn import checkpoint_filter_fn as grid_checkpoint_filter

__all__ = ['SMPConvIrregularTCN']

_KERNELS = ('smp', 'mlp')
# 'auto' takes the grid path for integer timestamps whose span is at most this many times the number of steps
# (dropping 70% of a series' observations leaves a span of about 3.3 x the kept steps)
GRID_SPAN_FACTOR = 8


def causal_small_data_model_args(length: int) -> dict:
    """The small-data recipe's kwargs (:func:`~smpconv_models.models.smpconv_tcn.small_data_model_args`) for causal
    kernels, which these models need, pooling each feature's maximum over the observed steps (no ensemble either:
    :class:`~smpconv_models.models.ensemble.SMPEnsemble` holds single-input models)."""
    return small_data_model_args(length, causal=True, global_pool='max')


class SMPConvIrregularTCN(TCNClassifierMixin, SMPModelMixin, nn.Module):
    """The SMPConv TCN on irregular series ``values [B, C, L]``, ``timestamps [B, L]``, ``mask [B, L]`` (see the
    module docstring). Its modules are the grid TCN's (:class:`TCNBlock` with :class:`SMPParallelCausalConv1d`), so a
    :class:`~smpconv_models.models.smpconv_tcn.SMPConvTCN` state dict of the same configuration loads unchanged.
    ``seq_len`` is the kernel length in time units (grid steps). Its kernels are causal: ``causal=False`` (the grid
    TCN's centred kernels) is refused with a ``ValueError``. ``min_gap``: the smallest time between two observations
    that compiled and exported graphs serve exactly (their source windows hold ``floor((K - 1) / min_gap) + 1``
    observations; eager mode serves any timestamps)."""

    def __init__(
            self,
            in_chans: int = 1,
            num_classes: int = 10,
            global_pool: str = 'last',
            seq_len: int = 64,
            depth: int = 6,
            width: int = 30,
            n_points: int = 30,
            radius: float = 0.03,
            coord_std: float = 0.1,
            small_kernel_size: int = 5,
            conv_bias: bool = False,
            drop_rate: float = 0.0,
            kernel: str = 'smp',
            mlp_hidden: int = 32,
            mlp_depth: int = 2,
            pairwise_chunk: int = PAIRWISE_CHUNK,
            min_gap: float = STATIC_MIN_GAP,
            use_fft: bool | None = None,
            kernel_scale: float = 1.0,
            deploy: bool = False,
            learn_positions: bool = True,
            learn_radius: bool = True,
            causal: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if kernel == 'mlp' and not (learn_positions and learn_radius):
            raise ValueError("learn_positions / learn_radius freeze SMP points; kernel='mlp' has none (its MLP "
                             'kernels learn every weight)')
        if not causal:
            raise ValueError('causal=False is not supported by the irregular-series TCNs (their kernels are evaluated '
                             'at past timestamp differences only); use causal=True, or the grid TCN (smpconv_tcn_*) '
                             'for centred kernels')
        if kernel not in _KERNELS:
            raise ValueError(f"kernel must be 'smp' or 'mlp', got {kernel!r}")
        self._init_classifier(in_chans, num_classes, global_pool, seq_len, drop_rate)
        self.kernel = kernel
        kernel_layer = functools.partial(MLPCausalConv1d, hidden=mlp_hidden, depth=mlp_depth) \
            if kernel == 'mlp' else None
        self._build_trunk(
            lambda prev: TCNBlock(prev, width, seq_len, n_points, radius, coord_std, small_kernel_size, conv_bias,
                                  use_fft, drop_rate, deploy, learn_positions, learn_radius, observed_norm=True,
                                  kernel_layer=kernel_layer, pairwise_chunk=pairwise_chunk, **dd),
            in_chans, depth, width, num_classes, **dd)
        self.min_gap = min_gap
        if kernel_scale != 1.0:
            self.rescale_kernels(kernel_scale)

    @property
    def pairwise_chunk(self) -> int:
        """Elements a pairwise-path query chunk holds at once (every layer's)."""
        return next(m.pairwise_chunk for m in self.modules() if isinstance(m, SMPParallelCausalConv1d))

    @pairwise_chunk.setter
    def pairwise_chunk(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f'pairwise_chunk must be positive, got {value}')
        for m in self.modules():
            if isinstance(m, SMPParallelCausalConv1d):
                m.pairwise_chunk = int(value)

    @property
    def min_gap(self) -> float:
        """The smallest time between observations that compiled and exported graphs serve exactly (every layer's)."""
        return next(m.min_gap for m in self.modules() if isinstance(m, SMPParallelCausalConv1d))

    @min_gap.setter
    def min_gap(self, value: float) -> None:
        if not float(value) > 0:
            raise ValueError(f'min_gap must be positive, got {value}')
        for m in self.modules():
            if isinstance(m, SMPParallelCausalConv1d):
                m.min_gap = float(value)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold every block's two branches and BatchNorms into one dense causal kernel on the integer-lag grid
        (:meth:`SMPParallelCausalConv1d.reparameterize`). The folded model serves integer timestamps (the grid
        path) only; non-integer timestamps then raise, since the continuous kernels are gone."""
        for m in self.modules():
            if isinstance(m, SMPParallelCausalConv1d):
                m.reparameterize()

    # --- the forward paths ---------------------------------------------------------------------------------------

    @staticmethod
    def _value_checks(values: Tensor, timestamps: Tensor, mask: Tensor) -> list[tuple[Tensor, str]]:
        """The data checks, as ``(flag, message)`` pairs for :func:`check_values`."""
        big = torch.finfo(timestamps.dtype).max
        # observed timestamps strictly increase in index order: compare each with the previous observed one
        prev = torch.cummax(torch.where(mask, timestamps, -big), 1).values
        prev = F.pad(prev, (1, 0), value=-big)[:, :-1]
        return [
            (torch.where(mask, timestamps, 0).isfinite().all(), 'timestamps hold NaN or infinite values at observed '
                                                                'steps'),
            (torch.where(mask[:, None], values, 0).isfinite().all(), 'values hold NaN or infinite entries at observed '
                                                                     'steps (mark missing ones in mask)'),
            (mask.any(1).all(), 'every series needs at least one observed step (a mask row is all False)'),
            (((timestamps > prev) | ~mask).all(), 'observed timestamps must strictly increase along each series'),
        ]

    def _plan(self, values: Tensor, timestamps: Tensor, mask: Tensor) -> tuple[bool, int]:
        """Data checks and the path: ``(grid, span)``; one host read."""
        big = torch.finfo(timestamps.dtype).max
        integer = (torch.where(mask, timestamps - timestamps.round(), 0) == 0).all()
        first = torch.where(mask, timestamps, big).amin(1)
        last = torch.where(mask, timestamps, -big).amax(1)
        span = torch.where(mask.any(1), last - first, 0).amax()
        checks = self._value_checks(values, timestamps, mask)
        flags = torch.stack([flag for flag, _ in checks] + [integer]).to(torch.float64)
        *ok, integer, span = torch.cat([flags, span.double()[None]]).tolist()
        for good, (_, message) in zip(ok, checks):
            if not good:
                raise ValueError(message)
        if not integer:
            return False, 0
        return True, int(span) + 1

    def _grid_forward(self, x: Tensor, timestamps: Tensor, mask: Tensor, span: int) -> Tensor:
        """The grid path: the blocks on the zero-filled series, hidden features masked to observed steps."""
        batch, chans = x.shape[:2]
        first = torch.where(mask, timestamps, torch.finfo(timestamps.dtype).max).amin(1, keepdim=True)
        index = torch.where(mask, (timestamps - first).round().long(), span)  # unobserved -> a spare slot
        grid = x.new_zeros(batch, chans, span + 1).scatter(2, index[:, None].expand(-1, chans, -1), x)[..., :span]
        gmask = x.new_zeros(batch, span + 1, dtype=torch.bool).scatter(1, index, mask)[:, :span]
        grid = self._run_blocks(grid, gmask)
        out = grid.gather(2, index.clamp_max(span - 1)[:, None].expand(-1, grid.shape[1], -1))
        return out * mask[:, None].to(out.dtype)

    def _run_blocks(self, x: Tensor, mask: Tensor, timestamps: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, mask, timestamps, use_reentrant=False)
            else:
                x = block(x, mask, timestamps)
        return x

    def forward_features(self, values: Tensor, timestamps: Tensor | None = None, mask: Tensor | None = None,
                         path: str = 'auto') -> Tensor:
        """Features ``[B, C, L]`` on the input's steps (zero at unobserved ones). ``path``: ``'auto'`` (the grid
        path when the observed timestamps are integers spanning at most ``GRID_SPAN_FACTOR`` x ``L`` steps),
        ``'grid'`` or ``'pairwise'`` (both exact).

        While a graph is captured for export (``torch.export.export``, ``torch.onnx.export``) or compiled
        (``torch.compile``; see :func:`~smpconv_models.layers.mode.execution_mode`) the path is chosen from static
        information only: ``'auto'`` is the pairwise path (the grid path's length is the data's span, a host read),
        whose kernels see static source windows (``min_gap``); the data checks become run-time asserts in a compiled
        graph and are skipped in an exported one (shapes and dtypes are still checked). ``'grid'`` is an error while
        exporting, and so is a reparameterized model (the graph evaluates the continuous kernels at timestamp
        differences); compiling either runs the eager planning, with its host reads (graph breaks)."""
        if path not in ('auto', 'grid', 'pairwise'):
            raise ValueError(f"path must be 'auto', 'grid' or 'pairwise', got {path!r}")
        timestamps, mask = check_irregular_inputs(values, timestamps, mask, self.in_chans)
        x = torch.where(mask[:, None], values, torch.zeros((), dtype=values.dtype, device=values.device))
        mode = execution_mode()
        folded = any(m.reparam_conv is not None for m in self.modules() if isinstance(m, SMPParallelCausalConv1d))
        if mode == 'export':
            if path == 'grid':
                raise ValueError("path='grid' cannot be exported (its length is the data's span, a host read); "
                                 "export path='auto' or 'pairwise', which serve any timestamps")
            if folded:
                raise ValueError('a reparameterized SMPConvIrregularTCN cannot be exported: the exported graph '
                                 'evaluates the continuous kernels at timestamp differences (export the model without '
                                 'reparameterize / --no-reparam)')
            return self._run_blocks(x, mask, timestamps)
        if mode == 'compile' and path != 'grid' and not folded:
            check_values(self._value_checks(values, timestamps, mask))
            return self._run_blocks(x, mask, timestamps)
        integer, span = self._plan(values, timestamps, mask)
        if path == 'grid' and not integer:
            raise ValueError("path='grid' needs integer observed timestamps")
        # the zero-filled grid is as long as the longest span: taken when that is at most GRID_SPAN_FACTOR x L
        if integer and (path == 'grid' or (path == 'auto' and span <= GRID_SPAN_FACTOR * max(values.shape[-1], 8))):
            return self._grid_forward(x, timestamps, mask, span)
        return self._run_blocks(x, mask, timestamps)

    def forward_head(self, x: Tensor, pre_logits: bool = False, mask: Tensor | None = None) -> Tensor:
        """Pool over observed steps (``global_pool``: the last observed step, mean or max) and classify; ``mask``
        ``[B, L]`` (``None``: every step observed). Without pooling (``''``) per-step logits ``[B, classes, L]``."""
        if self.global_pool:
            x = masked_pool(x, mask, self.global_pool, -1)
        elif not pre_logits:
            return self.head(x.movedim(1, -1)).movedim(-1, 1)
        return x if pre_logits else self.head(x)

    def forward(self, values: Tensor, timestamps: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Logits ``[B, num_classes]`` for ``values [B, C, L]``, ``timestamps [B, L]`` and ``mask [B, L]`` (bool);
        ``None`` timestamps / mask mean the regular grid ``0..L-1`` / every step observed."""
        return self.forward_head(self.forward_features(values, timestamps, mask), mask=mask)


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module, validate: bool = True
                         ) -> dict[str, Tensor]:
    """Our checkpoints and the grid TCN's (same module names) load as they are; official ``SeqData_TCN`` keys are
    converted as for the grid TCN. The input layers (:data:`INPUT_LAYERS`) are adapted to the model's ``in_chans``
    as timm adapts a first conv."""
    if any(k.startswith(('backbone.', 'finallyr.')) for k in state_dict):
        state_dict = grid_checkpoint_filter(state_dict, model, validate=False)
    state_dict = adapt_input_layers(dict(state_dict), model, INPUT_LAYERS)
    return validate_for_model(state_dict, model) if validate else state_dict


# Tensors whose dim 1 is the input channels: the grid TCN's (the first block's SMP weights, small branch, deploy conv
# and shortcut) and, with ``kernel='mlp'``, the first MLP kernel's output weights ``[C_out, C_in, H]``.
INPUT_LAYERS = (*_GRID_INPUT_LAYERS, 'blocks.0.conv1.smp.conv.mlp_kernel.weights')


def _cfg(in_chans: int, seq_len: int, num_classes: int = 10, **kwargs) -> dict:
    return {
        'num_classes': num_classes, 'input_size': (in_chans, 1, seq_len), 'crop_pct': 1.0, 'pool_size': None,
        'interpolation': '', 'mean': (0.0,) * in_chans, 'std': (1.0,) * in_chans,
        'first_conv': 'blocks.0.conv1.small_conv.conv', 'classifier': 'head',
        'paper_name': 'SMPConv: Self-moving Point Representations for Continuous Convolution',
        'origin_url': 'https://github.com/sangnekim/SMPConv', 'license': 'mit', **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'smpconv_irregular_tcn.untrained': _cfg(1, 64),
    'smpconv_irregular_tcn_chartraj.untrained': _cfg(3, 182, num_classes=20),
})


def _create(variant: str, pretrained: bool, defaults: dict, **kwargs) -> SMPConvIrregularTCN:
    kwargs = FAMILY.check_kwargs(variant, kwargs)  # (FAMILY, below)
    args = dict(defaults, **kwargs)
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    overlay.setdefault('input_size', (args.get('in_chans', 1), 1, args['seq_len']))
    args['pretrained_cfg_overlay'] = overlay
    return build_model_with_cfg(SMPConvIrregularTCN, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(flatten_sequential=True), **args)


@register_model
def smpconv_irregular_tcn(pretrained: bool = False, **kwargs) -> SMPConvIrregularTCN:
    """Irregular-series TCN for short series (the digits setting): 64-step kernels, radius 0.03, 1 channel."""
    defaults = dict(in_chans=1, num_classes=10, seq_len=64, radius=0.03, conv_bias=False)
    return _create('smpconv_irregular_tcn', pretrained, defaults, **kwargs)


@register_model
def smpconv_irregular_tcn_chartraj(pretrained: bool = False, **kwargs) -> SMPConvIrregularTCN:
    """Irregular Character Trajectories TCN (the grid ``smpconv_tcn_chartraj`` configuration: 182-step kernels,
    3 channels, 20 classes, radius 0.012, conv bias) for the dropped-observations protocol."""
    defaults = dict(in_chans=3, num_classes=20, seq_len=182, radius=0.012, conv_bias=True)
    return _create('smpconv_irregular_tcn_chartraj', pretrained, defaults, **kwargs)


FAMILY = ModelFamily(
    name='smpconv_irregular_tcn', model_cls=SMPConvIrregularTCN, input_kind='irregular',
    variants=('smpconv_irregular_tcn', 'smpconv_irregular_tcn_chartraj'),
    input_layers=INPUT_LAYERS, checkpoint_filter=checkpoint_filter_fn, feature_maps='refused',
    refused_kwargs={'drop_path_rate': _NO_DROP_PATH, 'output_stride': NO_STRIDES},
    data_kwargs={'seq_len': 'length'},  # the kernels span the training length in time units
    reparameterize_on_export=False,  # the exported graph evaluates the continuous kernels at timestamp differences
    training=TrainingDefaults(  # the sequence TCNs' (no per-task values of their own)
        recipe=SEQUENCE_RECIPE, digits_model_args=DIGITS_MODEL_ARGS, small_data_model_args=causal_small_data_model_args,
        official_data={'smpconv_irregular_tcn_chartraj': 'CharacterTrajectories'}),
)
SMPConvIrregularTCN.family = FAMILY  # the class knows its description (load_pretrained)
