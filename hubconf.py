"""torch.hub entrypoints: ``torch.hub.load(REPO_DIR, 'smpconv_t', source='local', num_classes=10)``.

Each entrypoint is ``timm.create_model(name, pretrained=pretrained, **kwargs)`` for a model registered by
``smpconv_models``; keyword arguments are the model's architecture kwargs (see its factory's docstring), and
``tag=`` picks pretrained weights, e.g. the shipped digits weights:
``torch.hub.load(REPO_DIR, 'smpconv_tcn_mnist', source='local', pretrained=True, tag='digits')``.
"""
from __future__ import annotations

dependencies = ['torch', 'timm', 'safetensors']


def _create(name: str, pretrained: bool, tag: str | None = None, **kwargs):
    import timm

    import smpconv_models  # noqa: F401  (registers the models)

    return timm.create_model(f'{name}.{tag}' if tag else name, pretrained=pretrained, **kwargs)


def smpconv_t(pretrained: bool = False, **kwargs):
    """SMPConv-T, ImageNet (26.7M params): depths (2, 2, 8, 2), dims (96, 192, 384, 768), SMP kernels 31/29/27/13."""
    return _create('smpconv_t', pretrained, **kwargs)


def smpconv_b(pretrained: bool = False, **kwargs):
    """SMPConv-B, ImageNet (79.5M params): depths (2, 2, 20, 2), dims (128, 256, 512, 1024)."""
    return _create('smpconv_b', pretrained, **kwargs)


def smpconv_cifar(pretrained: bool = False, **kwargs):
    """SMPConv CIFAR-10 ResNet (489,646 params): 33x33 SMP kernels, 16 points per filter, 32x32 inputs."""
    return _create('smpconv_cifar', pretrained, **kwargs)


def smpconv_tcn_mnist(pretrained: bool = False, **kwargs):
    """SMPConv TCN for sMNIST / pMNIST (370,960 params): input [B, 1, 784]; ``seq_len`` sets the kernel length.

    ``pretrained=True, tag='digits'`` loads the weights of train.py's default run (64-step digits sequences).
    """
    return _create('smpconv_tcn_mnist', pretrained, **kwargs)


def smpconv_tcn_scifar10(pretrained: bool = False, **kwargs):
    """SMPConv TCN for sequential CIFAR-10 (373,480 params): input [B, 3, 1024]."""
    return _create('smpconv_tcn_scifar10', pretrained, **kwargs)


def smpconv_tcn_chartraj(pretrained: bool = False, **kwargs):
    """SMPConv TCN for Character Trajectories (373,790 params): input [B, 3, 182], 20 classes."""
    return _create('smpconv_tcn_chartraj', pretrained, **kwargs)


def smpconv_tcn_speech(pretrained: bool = False, **kwargs):
    """SMPConv TCN for Speech Commands MFCC features (391,840 params): input [B, 20, 161]."""
    return _create('smpconv_tcn_speech', pretrained, **kwargs)


def smpconv_tcn_speech_raw(pretrained: bool = False, **kwargs):
    """SMPConv TCN for raw Speech Commands waveforms (370,960 params): input [B, 1, 16000]."""
    return _create('smpconv_tcn_speech_raw', pretrained, **kwargs)


def smpconv_irregular_tcn(pretrained: bool = False, **kwargs):
    """SMPConv TCN on irregular series (370,960 params): ``model(values [B, 1, L], timestamps [B, L], mask [B, L])``,
    64-step kernels; ``kernel='mlp'`` for MLP kernels."""
    return _create('smpconv_irregular_tcn', pretrained, **kwargs)


def smpconv_irregular_tcn_chartraj(pretrained: bool = False, **kwargs):
    """SMPConv TCN on irregular Character Trajectories (373,790 params): values [B, 3, L], 182-step kernels,
    20 classes."""
    return _create('smpconv_irregular_tcn_chartraj', pretrained, **kwargs)


def smpconv_points(pretrained: bool = False, **kwargs):
    """Point-set classifier (68.7k params): PointConv stem + 2 stages on farthest points, SMP kernels with 8 shared
    points (``kernel='mlp'``: MLP kernels); input ``(features [B, N, C], positions [B, N, d], mask [B, N])``."""
    return _create('smpconv_points', pretrained, **kwargs)


def smpconv_points_3d(pretrained: bool = False, **kwargs):
    """3-d point-set classifier (1.13M params) sized for 1k-10k points per set (shapes3d): PointConv stem + 3
    stages on 512, 128 and 32 farthest points; input ``(features [B, N, 3], positions [B, N, 3], mask [B, N])``."""
    return _create('smpconv_points_3d', pretrained, **kwargs)
