"""Benchmark: our models against real peers, side by side, as ratios measured in one run.

``python -m smpconv_models.bench [--json FILE] [--plot FILE] [--quick] [--rows NAME ...]``; ``--profile`` instead
reports where the time goes (op-group shares of an smpconv_t training step and of deploy inference from
torch.profiler, the fwd+bwd time of its large depthwise kernels through each path of ``conv_path``, of the
frequency-domain channel mixing, and the share of kernel generation in the CIFAR training step for SMP and MAGNet
kernels).

Every row times "ours" and a peer in the same process, alternating repetitions (ours, peer, peer, ours, ...) after
a warm-up, and reports the medians and ``ratio = peer_time / our_time`` (> 1: we are faster). Each row runs in its own
process, whose peak resident memory is reported. Rows:

* ``smpconv_t_infer_vs_convnext_tiny``: reparameterized ``smpconv_t`` vs timm ``convnext_tiny``, eval, batch 8, 224,
  fp32, each in its faster memory format (NCHW or channels_last, picked in the warm-up); random weights, with
  smpconv_t's BatchNorm statistics calibrated on the input (:func:`calibrate_bn_`) for trained-like activations;
* ``smpconv_t_train_vs_convnext_tiny``: one training step (forward, backward, AdamW step), batch 8, 224, train mode
  (SMP kernels generated from their points), stochastic depth 0.1 for both (their papers' recipes), each in its
  faster memory format;
* ``smpconv_t_eval_cached_vs_reparam``: eval without reparameterization (SMP kernels and folded BatchNorms cached)
  vs reparameterized, same calibrated weights, each in its faster memory format;
* ``cifar_train_vs_mlp_kernel``: ``smpconv_cifar`` training step vs the same network whose kernels come from an
  MLP kernel generator (FlexConv's MAGNet: 3 multiplicative Gabor layers, 32 hidden units, 33x33), batch 64, 32x32;
* ``tcn_mnist_train_fft_vs_direct``: ``smpconv_tcn_mnist`` training step at 784 steps (batch 64), FFT vs direct
  causal convolution;
* ``irregular_tcn_train_smp_vs_mlp``: ``smpconv_irregular_tcn`` training step on 64 digits-irregular series (half
  of each series' steps dropped), SMP kernels vs MLP kernels (Wang et al.'s kernel MLP) in the same network;
* ``irregular_tcn_vs_grid_tcn_{1k,10k}``: ``smpconv_irregular_tcn`` (64-step kernels) training step on 8 series of
  1,000 / 10,000 observations at real timestamps (the pairwise path) vs the grid TCN of the same configuration on
  series of the same length; each side's peak RSS from a fresh process (target: within 3x);
* ``points_train_smp_vs_mlp``: ``smpconv_points`` training step on digits point sets (batch 32), SMP kernels vs MLP
  kernels with the same basis size, same network;
* ``point_conv_scaling`` (no peer): one ``PointConv`` layer at N = 1k, 10k, 100k points (k = 16, default search):
  neighbour search and forward + backward time, points / s, peak RSS;
* ``knn_vs_ckdtree_{10k,100k,1m}``: ``find_neighbors`` (k = 16, 3-d, default backend) vs scipy's ``cKDTree`` build +
  query on the same points;
* ``point_conv_vs_set_abstraction_{10k,100k,1m}``: one ``PointConv`` forward + backward (search included) vs a
  PointNet++-style set-abstraction layer (cKDTree kNN, MLP on ``[f_j, p_j - p_i]``, max) with the same k, channels
  and query chunks; each side's peak RSS from a fresh process (no ratio target);
* ``fps_subset_vs_fps_{100k,1m}``: farthest-point sampling of 4,096 points on a grid pool of ~16,384 vs exact,
  with both samples' covering radii and one kNN search's time on the same points (no ratio target);
* ``tcn_mnist_onnxruntime_vs_pytorch``: the reparameterized 784-tap ``smpconv_tcn_mnist`` exported to ONNX and run in
  onnxruntime vs the same model in PyTorch eval, batch 8 (``--onnx-methods`` times every family per FFT export
  method instead of the rows);
* ``smpconv_t_compiled_train_vs_convnext_tiny``: the training step of both models under ``torch.compile`` (default
  settings), batch 8, 224, NCHW;
* ``upernet_smpconv_t_train_vs_convnext_tiny_512`` / ``upernet_smpconv_t_infer_vs_convnext_tiny_512`` (dense
  prediction; need segmentation_models_pytorch, the ``seg`` extra): ``smpconv_t`` and ``convnext_tiny`` as the
  encoder of the same segmentation_models_pytorch ``UPerNet`` (``tu-`` encoders, its default 256-channel decoder,
  150 classes as ADE20K), 512x512, batch 2, each in its faster memory format: one training step (per-pixel
  cross-entropy, AdamW, stochastic depth 0.1 in both encoders), and inference (eval, both models' BatchNorms
  calibrated on the input, ours reparameterized). In ``--quick`` mode the format choice takes one timed run per
  format instead of three.

The machine's fp32 matmul rate (GFLOP/s, 2 flops per multiply-add) is measured too, next to the GMAC/s each model
achieves (fvcore MACs / time, when fvcore is installed).

The package: :mod:`.timing` (alternation, medians, rates), :mod:`.memory` (peak RSS), :mod:`.steps` (what a row
times), :mod:`.peers` (our networks with MAGNet kernels, a PointNet++ set abstraction), :mod:`.rows` (one module
per row or small group, registered in ``ROWS`` with its target), :mod:`.report` (each row in its own process; table,
JSON, plot), :mod:`.profiling` (``--profile``) and :mod:`.cli`.
"""
from ..layers import calibrate_bn_  # (the eval rows' BatchNorm calibration, kept importable from here)
from .cli import main
from .peers import MLPKernelConv, use_mlp_kernels
from .profiling import run_profile
from .report import format_table, plot_ratios, run_bench
from .rows import ROWS, TARGETS, Row
from .rows.deployment import onnx_fft_methods
from .steps import train_step
from .timing import alternating_medians, matmul_gflops, time_pair

__all__ = [
    'ROWS', 'TARGETS', 'Row', 'run_bench', 'run_profile', 'onnx_fft_methods', 'format_table', 'plot_ratios',
    'calibrate_bn_', 'train_step', 'time_pair', 'alternating_medians', 'matmul_gflops', 'MLPKernelConv',
    'use_mlp_kernels', 'main',
]
