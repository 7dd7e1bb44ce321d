"""The irregular-series TCN: equal to the grid TCN on a full grid, grid path == pairwise path == a plain reference on
irregular data (float64), masked BatchNorm, the timm contract, bad input, and the dropped-observations data."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import smpconv_models  # noqa: F401
from smpconv_models.layers import smp_kernel
from smpconv_models.layers.masked import masked_batch_norm
from smpconv_models.train.data import drop_observations

F64 = torch.float64
TINY = dict(depth=2, width=5, n_points=4, seq_len=12, radius=0.15)


def randomize_bn_(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(7)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model


def irregular_batch(batch: int = 3, length: int = 9, span: int = 16, chans: int = 1, integer: bool = True, seed=0):
    g = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(batch):
        t = torch.randperm(span, generator=g)[:length].sort().values.to(F64)
        if not integer:
            t = t + 0.9 * torch.rand(length, generator=g, dtype=F64)  # still strictly increasing
        times.append(t + 3.0)  # a common shift: only differences matter
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, -3:] = False  # a shorter series, padded
    values = torch.randn(batch, chans, length, generator=g, dtype=F64)
    values[1, :, -3:] = float('nan')  # padding may hold anything
    return values, torch.stack(times), mask


def pair(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = randomize_bn_(timm.create_model('smpconv_irregular_tcn', dtype=F64, **{**TINY, **kwargs}))
    return model, copy.deepcopy(model)


@pytest.mark.parametrize('train', [False, True])
def test_regular_grid_equals_grid_tcn(train):
    torch.manual_seed(0)
    kwargs = dict(TINY, conv_bias=True, in_chans=2)
    grid = randomize_bn_(timm.create_model('smpconv_tcn_mnist', dtype=F64, **kwargs)).train(train)
    model = timm.create_model('smpconv_irregular_tcn', dtype=F64, **kwargs).train(train)
    model.load_state_dict(grid.state_dict())  # same module structure: the grid TCN's state dict loads unchanged
    x = torch.randn(4, 2, 10, dtype=F64)
    expected = grid(x)
    t = (torch.arange(10, dtype=F64) + 5.0).expand(4, 10)  # timestamps given, shifted
    for path in ('grid', 'pairwise'):
        m = copy.deepcopy(model)
        out = m.forward_head(m.forward_features(x, t, torch.ones(4, 10, dtype=torch.bool), path=path))
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        for a, b in zip(m.buffers(), grid.buffers()):  # BatchNorm running statistics too
            torch.testing.assert_close(a.to(F64), b.to(F64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(copy.deepcopy(model).train(train)(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('kernel, radius', [('smp', 0.15), ('smp', 0.6), ('mlp', 0.15)])
def test_grid_path_equals_pairwise_path_with_gradients(kernel, radius):
    # radius 0.6: wide, overlapping hats (|N(x)| up to P) in the pairwise path's segments
    a, b = pair(kernel=kernel, conv_bias=True, radius=radius)
    values, t, mask = irregular_batch()
    out_a = a.forward_features(values, t, mask, path='grid')
    out_b = b.forward_features(values, t, mask, path='pairwise')
    torch.testing.assert_close(out_a, out_b, rtol=1e-11, atol=1e-11)
    assert out_a.abs().amax() > 0.1 and (out_a[1, :, -3:] == 0).all()
    (out_a.square().sum()).backward()
    (out_b.square().sum()).backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        if pa.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-9, atol=1e-11, msg=name)
    for ba, bb in zip(a.buffers(), b.buffers()):
        torch.testing.assert_close(ba, bb)


def reference_pair(conv, x, t, mask):
    """A plain O(B L^2) reference of one SMPParallelCausalConv1d in eval mode on irregular data (module docstring:
    SMP function at 1 - 2 lag / (K - 1), the small kernel's taps interpolated linearly in time, zero from lag S)."""
    smp, small = conv.smp.conv, conv.small_conv.conv
    k, s = smp.kernel_size[0], small.weight.shape[-1]
    taps = torch.cat([small.weight.flip(-1), torch.zeros_like(small.weight[..., :1])], -1)  # by lag 0..S
    out_smp = torch.zeros(x.shape[0], conv.out_channels, x.shape[2], dtype=x.dtype)
    out_small = torch.zeros_like(out_smp)
    for b in range(x.shape[0]):
        for i in range(x.shape[2]):
            for j in range(x.shape[2]):
                lag = float(t[b, i] - t[b, j])
                if not mask[b, j] or lag < 0:
                    continue
                if lag <= k - 1:
                    coord = torch.tensor([[1 - 2 * lag / (k - 1)]], dtype=x.dtype)
                    kern = smp_kernel(coord, smp.weight_coord, smp.radius, smp.weights, normalize=True)[..., 0]
                    out_smp[b, :, i] += kern @ x[b, :, j]
                if lag < s:
                    m = int(lag)
                    w = (1 - (lag - m)) * taps[..., m] + (lag - m) * taps[..., m + 1]
                    out_small[b, :, i] += w @ x[b, :, j]
    if smp.bias is not None:
        out_smp = out_smp + smp.bias[:, None]
    return conv.smp.bn(out_smp) + conv.small_conv.bn(out_small)


@torch.no_grad()
def test_pairwise_path_matches_plain_reference_at_real_timestamps():
    model, _ = pair(conv_bias=True, depth=1)
    model.eval()
    values, t, mask = irregular_batch(integer=False)
    out = model.forward_features(values, t, mask)  # 'auto' takes the pairwise path for non-integer timestamps
    x = torch.where(mask[:, None], values, 0.0)
    block, fmask = model.blocks[0], mask[:, None].to(F64)
    h = torch.relu(reference_pair(block.conv1, x, t, mask)) * fmask
    h = torch.relu(reference_pair(block.conv2, h, t, mask)) * fmask
    expected = torch.relu(h + block.shortcut(x)) * fmask
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # chunking the query steps changes nothing
    model.pairwise_chunk = 1
    torch.testing.assert_close(model.forward_features(values, t, mask), expected, rtol=1e-12, atol=1e-12)


def test_masked_batch_norm_uses_observed_steps_only():
    x = torch.randn(3, 4, 6, dtype=F64)
    mask = torch.rand(3, 6) > 0.4
    mask[0, 0] = True
    bn = nn.BatchNorm1d(4, dtype=F64)
    ref = copy.deepcopy(bn)
    out = masked_batch_norm(x, mask, bn)
    observed = x.permute(0, 2, 1)[mask]  # [N_obs, C]
    expected = ref(observed)
    torch.testing.assert_close(out.permute(0, 2, 1)[mask], expected)
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)


def test_timm_contract_and_pools():
    model, _ = pair()
    values, t, mask = irregular_batch()
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(values, t, mask)
        logits = model(values, t, mask)
        last = feats[torch.arange(3), :, mask.sum(1) - 1]  # the last observed step of each series
        torch.testing.assert_close(logits, model.head(last))
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True, mask=mask), last)
        model.reset_classifier(0, 'avg')
        mean = (feats * mask[:, None]).sum(-1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(model(values, t, mask), mean)
        model.reset_classifier(0, 'max')
        torch.testing.assert_close(model(values, t, mask), feats.masked_fill(~mask[:, None], -1e9).amax(-1))
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model(values, t, mask).shape == (3, 7)
    nwd = model.no_weight_decay()
    assert nwd and all(n.endswith(('.weight_coord', '.radius')) for n in nwd)
    # reparameterized: the integer-timestamp path gives the same logits, real timestamps are refused
    model.eval()
    with torch.no_grad():
        before = model(values, t, mask)
        model.reparameterize()
        torch.testing.assert_close(model(values, t, mask), before, rtol=1e-10, atol=1e-10)
        with pytest.raises(ValueError, match='integer timestamps only'):
            model(values, t + 0.5, mask)


def test_bad_input_names_the_problem():
    model, _ = pair()
    values, t, mask = irregular_batch()
    cases = [
        (dict(values=values[0]), ValueError, r'values must be \[B, C, L\]'),
        (dict(values=values.repeat(1, 2, 1)), ValueError, 'in_chans=1'),
        (dict(timestamps=t[:2]), ValueError, 'timestamps must be'),
        (dict(timestamps=t[:, :-1]), ValueError, 'timestamps must be'),
        (dict(mask=mask[:, :-1]), ValueError, 'mask must be'),
        (dict(mask=mask.to(F64)), TypeError, 'mask must be a bool'),
        (dict(timestamps=t.clone().index_put_((torch.tensor(0), torch.tensor(2)), torch.tensor(float('nan'),
                                                                                            dtype=F64))),
         ValueError, 'timestamps hold NaN or infinite'),
        (dict(timestamps=t.clone().index_put_((torch.tensor(2), torch.tensor(0)), torch.tensor(float('inf'),
                                                                                            dtype=F64))),
         ValueError, 'timestamps hold NaN or infinite'),
        (dict(timestamps=t.flip(1)), ValueError, 'strictly increase'),
        (dict(mask=torch.zeros_like(mask)), ValueError, 'at least one observed step'),
        (dict(values=torch.where(mask[:, None], values, 0.0).index_put_(
            (torch.tensor(0), torch.tensor(0), torch.tensor(1)), torch.tensor(float('nan'), dtype=F64))),
         ValueError, 'values hold NaN'),
    ]
    for change, error, message in cases:
        args = {**dict(values=values, timestamps=t, mask=mask), **change}
        with pytest.raises(error, match=message):
            model(**args)
    with pytest.raises(ValueError, match="kernel must be 'smp' or 'mlp'"):
        timm.create_model('smpconv_irregular_tcn', kernel='gabor')


def test_drop_observations_follows_the_protocol():
    x = torch.randn(20, 2, 10)
    x[3, :, 4] = float('nan')  # already missing: not counted, stays missing
    data = TensorDataset(x, torch.arange(20))
    out = drop_observations(data, 0.3)
    again = drop_observations(data, 0.3)
    assert torch.equal(out.timestamps, again.timestamps)  # seeded
    assert not torch.equal(out.timestamps, drop_observations(data, 0.3, seed=1).timestamps)
    counts = out.mask.sum(1)
    assert counts[3] == 9 - int(9 * 0.3) and (counts[torch.arange(20) != 3] == 10 - int(10 * 0.3)).all()
    for i in range(20):
        inputs, label = out[i]
        n = int(counts[i])
        steps = inputs['timestamps'][:n].long()
        assert label == i and (steps.diff() > 0).all()
        assert i != 3 or 4 not in steps.tolist()
        torch.testing.assert_close(inputs['values'][:, :n], x[i][:, steps])
        assert (inputs['values'][:, n:] == 0).all() and not inputs['mask'][n:].any()


@torch.no_grad()
def test_sparse_integer_timestamps_take_the_pairwise_path():
    model, _ = pair()
    model.eval()
    values, t, mask = irregular_batch()
    t = t * 50  # integer, but spanning ~50x the steps: a zero-filled grid would be mostly empty
    calls = []
    grid_forward = model._grid_forward
    model._grid_forward = lambda *args: calls.append(1) or grid_forward(*args)
    auto = model.forward_features(values, t, mask)
    assert not calls
    torch.testing.assert_close(auto, model.forward_features(values, t, mask, path='grid'), rtol=1e-12, atol=1e-12)
    assert calls


@pytest.mark.parametrize('path', ['grid', 'pairwise'])
def test_grad_checkpointing_changes_no_gradient(path):
    # (recomputing a block in backward updates its BatchNorm statistics a second time, as with any checkpointed BN)
    a, b = pair()
    b.set_grad_checkpointing()
    values, t, mask = irregular_batch()
    a.forward_features(values, t, mask, path=path).square().sum().backward()
    b.forward_features(values, t, mask, path=path).square().sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        if pa.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize('static', [False, True])
def test_source_window_is_each_steps_observations_within_the_span(static):
    """The source window (compact order: observed steps first) holds, for every observed query, exactly the observed
    steps with 0 <= lag <= max_lag (brute force over all pairs), the query last; the static width serves timestamps
    at least min_gap apart (gaps of 1-2 time units here) and the data's width is the largest span count."""
    from smpconv_models.layers.irregular_conv import source_window

    g = torch.Generator().manual_seed(3)
    t = (torch.rand(3, 40, generator=g, dtype=F64) + 1.0).cumsum(1)
    mask = torch.rand(3, 40, generator=g) > 0.3
    window = source_window(t, mask, 6.0, static=static)
    expected_width = 7 if static else max(int(((t[b, i] - t[b][mask[b]] >= 0) & (t[b, i] - t[b][mask[b]] <= 6.0))
                                              .sum()) for b in range(3) for i in range(40) if mask[b, i])
    assert window.lag.shape == (3, 40, expected_width)
    for b in range(3):
        steps = window.order[b]
        for r in range(int(mask[b].sum())):  # compact query r is step steps[r]
            i = int(steps[r])
            lags = t[b, i] - t[b][mask[b]]
            want = sorted(lags[(lags >= 0) & (lags <= 6.0)].tolist(), reverse=True)
            got = window.lag[b, r][window.valid[b, r]].tolist()
            assert got == pytest.approx(want, abs=0) and window.valid[b, r, -1]
        assert not window.valid[b, int(mask[b].sum()):].any()  # unobserved queries see nothing
