"""calibrate_bn_: running statistics recomputed as the cumulative average over the given batches."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from smpconv_models.layers import calibrate_bn_


def test_running_statistics_are_the_average_over_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(),
                          nn.BatchNorm2d(4)).double()
    batches = [torch.randn(2, 3, 5, 6, dtype=torch.float64) * s + s for s in (1.0, 3.0)]
    assert calibrate_bn_(model, batches, passes=1) is model and not model.training
    bn = model[1]
    conv_out = [model[0](x) for x in batches]
    mean = torch.stack([y.mean((0, 2, 3)) for y in conv_out]).mean(0)
    var = torch.stack([y.var((0, 2, 3), unbiased=True) for y in conv_out]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean.detach())
    torch.testing.assert_close(bn.running_var, var.detach())
    assert bn.momentum == 0.3 and model[3].momentum == 0.1  # restored
    # a single tensor is one batch; more passes over the same data give the same averages
    calibrate_bn_(model, batches[0], passes=3)
    torch.testing.assert_close(bn.running_mean, conv_out[0].mean((0, 2, 3)).detach())
    with pytest.raises(ValueError, match='at least one input batch'):
        calibrate_bn_(model, [])
