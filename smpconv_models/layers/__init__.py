"""SMP layers: the N-d SMP kernel core and point set, SMP convolutions (grid, point sets), causal / centred / FFT
convolution, reparameterization, the execution-mode switch, and BatchNorm recalibration."""
from .bn_calibration import calibrate_bn_
from .causal_conv import causal_conv1d, centred_conv1d, next_fast_len, sequence_conv1d, use_fft_for
from .conv import check_conv_input, prefers_channels_last, same_conv
from .conv_bn import ConvBN
from .fused import conv2d_act
from .magnet import MAGNetKernel
from .mode import execution_mode, is_eager, python_only
from .neighbors import (
    Neighborhood,
    check_point_set,
    farthest_point_sample,
    find_neighbors,
    grid_pool,
    pair_distances,
    random_point_sample,
)
from .params import clamp_radii_, rescale_smp_kernels_, scaled_kernel_size, smp_param_groups
from .point_conv import MLPKernel, PointConv, SMPPointKernel, point_conv
from .reparam import (
    CausalConv1d,
    SMPLargeKernelConv2d,
    SMPParallelCausalConv1d,
    SMPParallelConv,
    SMPReparamConv,
    fold_bn_into_next_conv,
    fuse_bn,
    fuse_pre_bn,
)
from .smp_conv import SMPCausalConv1d, SMPConv, SMPConvBase, SMPDepthwiseConv2d
from .smp_kernel import divide_by_count, hat_count, kernel_coords, smp_basis, smp_kernel
from .smp_points import SMPPoints, share_kernels

__all__ = [
    'calibrate_bn_', 'ConvBN', 'conv2d_act', 'causal_conv1d', 'centred_conv1d', 'sequence_conv1d', 'next_fast_len',
    'use_fft_for', 'check_conv_input',
    'prefers_channels_last', 'same_conv', 'clamp_radii_', 'smp_param_groups', 'rescale_smp_kernels_',
    'scaled_kernel_size', 'CausalConv1d', 'SMPLargeKernelConv2d', 'SMPParallelCausalConv1d', 'SMPParallelConv',
    'SMPReparamConv', 'fold_bn_into_next_conv', 'fuse_bn', 'fuse_pre_bn', 'SMPCausalConv1d', 'SMPConv', 'SMPConvBase',
    'SMPDepthwiseConv2d', 'share_kernels', 'kernel_coords', 'smp_basis', 'smp_kernel', 'SMPPoints', 'hat_count',
    'divide_by_count', 'execution_mode', 'is_eager', 'python_only',
    'MLPKernel', 'SMPPointKernel', 'PointConv', 'point_conv', 'find_neighbors', 'farthest_point_sample',
    'random_point_sample', 'check_point_set', 'MAGNetKernel', 'Neighborhood', 'pair_distances', 'grid_pool',
]
