"""MLP kernels against SMP kernels on irregularly sampled series: the ``irregular`` setting of
:mod:`smpconv_models.experiments.kernels` (its docstring says what runs).

``python -m smpconv_models.experiments.irregular_kernels [--missing-rates 0.3 0.5 0.7] [--seeds 0 1 2]
[--epochs N] [--json FILE] [--out DIR] [--quick]``
"""
from __future__ import annotations

import sys

from .kernels import main as _main

__all__ = ['main']


def main(argv: list[str] | None = None) -> int:
    return _main(argv, setting='irregular')


if __name__ == '__main__':
    sys.exit(main())
