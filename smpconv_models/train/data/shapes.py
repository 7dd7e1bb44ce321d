"""Generated segmentation data: discs and squares on noise, with their per-pixel masks.

Each image is Gaussian noise (std ``noise``) with one disc (class 1) and one square (class 2) drawn on it, the square
over the disc where they overlap; the background is class 0. Centres are uniform in the image, radii (the square's
half side) uniform in ``[size / 10, size / 4]``. A class adds its colour to the pixels it covers (disc
``(1, 0, 0.5)``, square ``(0, 1, 0.5)``), so single pixels are informative but noisy and the shapes' extents give the
context. Seeded: the same ``seed`` gives the same set. For smoke tests and examples of dense prediction; no file is
read and nothing is downloaded.
"""
from __future__ import annotations

import torch

__all__ = ['shapes_on_noise', 'SHAPE_CLASSES', 'SHAPE_COLOURS']

SHAPE_CLASSES = ('background', 'disc', 'square')
SHAPE_COLOURS = ((0.0, 0.0, 0.0), (1.0, 0.0, 0.5), (0.0, 1.0, 0.5))


def shapes_on_noise(n: int, size: int | tuple[int, int] = 64, noise: float = 0.5, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``[n, 3, H, W]`` (float32) and masks ``[n, H, W]`` (int64, values in ``0..2``)."""
    h, w = (size, size) if isinstance(size, int) else size
    if n < 1 or h < 8 or w < 8:
        raise ValueError(f'need n >= 1 images of at least 8x8 pixels, got n={n}, size={(h, w)}')
    g = torch.Generator().manual_seed(seed)
    yy = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xx = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    masks = torch.zeros(n, h, w, dtype=torch.int64)
    side = min(h, w)
    for cls in (1, 2):
        cy = torch.rand(n, 1, 1, generator=g) * h
        cx = torch.rand(n, 1, 1, generator=g) * w
        r = side / 10 + torch.rand(n, 1, 1, generator=g) * (side / 4 - side / 10)
        if cls == 1:
            inside = (yy - cy).square() + (xx - cx).square() <= r.square()
        else:
            inside = torch.maximum((yy - cy).abs(), (xx - cx).abs()) <= r
        masks[inside] = cls
    colours = torch.tensor(SHAPE_COLOURS)  # [classes, 3]
    images = colours[masks].permute(0, 3, 1, 2) + noise * torch.randn(n, 3, h, w, generator=g)
    return images.contiguous(), masks
