"""SMP layers: the N-d SMP kernel core, SMP convolutions, causal/FFT convolution and reparameterization."""
from .causal_conv import causal_conv1d, next_fast_len, use_fft_for
from .conv import check_conv_input, prefers_channels_last, same_conv
from .conv_bn import ConvBN
from .fused import conv2d_act
from .neighbors import (
    Neighborhood,
    check_point_set,
    farthest_point_sample,
    find_neighbors,
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
from .smp_conv import SMPCausalConv1d, SMPConv, SMPConvBase, SMPDepthwiseConv2d, share_kernels
from .smp_kernel import kernel_coords, smp_basis, smp_kernel

__all__ = [
    'ConvBN', 'conv2d_act', 'causal_conv1d', 'next_fast_len', 'use_fft_for', 'check_conv_input',
    'prefers_channels_last', 'same_conv', 'clamp_radii_', 'smp_param_groups', 'rescale_smp_kernels_',
    'scaled_kernel_size', 'CausalConv1d', 'SMPLargeKernelConv2d', 'SMPParallelCausalConv1d', 'SMPParallelConv',
    'SMPReparamConv', 'fold_bn_into_next_conv', 'fuse_bn', 'fuse_pre_bn', 'SMPCausalConv1d', 'SMPConv', 'SMPConvBase',
    'SMPDepthwiseConv2d', 'share_kernels', 'kernel_coords', 'smp_basis', 'smp_kernel',
    'MLPKernel', 'SMPPointKernel', 'PointConv', 'point_conv', 'find_neighbors', 'farthest_point_sample',
    'random_point_sample', 'check_point_set', 'Neighborhood', 'pair_distances',
]
