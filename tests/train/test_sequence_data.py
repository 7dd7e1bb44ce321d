"""Sequence sources (``ts:``, ``npz:``, ``hf:``, ``speechcommands:``), MFCCs, masks, augmentation and the small-data
recipe, on data written by the tests; every check compares values with what was written or an independent
computation."""
from __future__ import annotations

import json
import wave

import numpy as np
import pytest
import timm
import torch

import smpconv_models  # noqa: F401
from smpconv_models.train.config import recipe_for, recipe_model_args, small_data_schedule
from smpconv_models.train.data import SequenceAugment, SequenceSet, build_data, mfcc, parse_augment, read_ts
from smpconv_models.train.data import audio as audio_data

TS_HEADER = """# a comment line
@problemName Toy
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true up down flat
@data
"""
# (dimension 1, dimension 2, label); '?' is missing
TS_TRAIN = [([1, 2, 3, 4], [0, 0, 1, 1], 'down'), ([5, '?', 7], [2, 2, 2], 'up'),
            ([1, 1, 1, 1, 1], [3, 4, 5, 6, 7], 'flat')]
TS_TEST = [([2, 2], [1, 1], 'up'), ([9, 8, 7, 6, 5, 4], [0, 1, 0, 1, 0, 1], 'flat')]


def _ts_text(rows) -> str:
    return TS_HEADER + ''.join(
        ':'.join([','.join(map(str, a)), ','.join(map(str, b)), label]) + '\n' for a, b, label in rows)


def _write_ts(folder, name='Toy'):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f'{name}_TRAIN.ts').write_text(_ts_text(TS_TRAIN))
    (folder / f'{name}_TEST.ts').write_text(_ts_text(TS_TEST))


def _as_float(values) -> np.ndarray:
    return np.array([np.nan if v == '?' else float(v) for v in values])


def test_read_ts_parses_values_lengths_missing_and_header_label_order(tmp_path):
    _write_ts(tmp_path)
    parsed = read_ts(tmp_path / 'Toy_TRAIN.ts')
    assert parsed.class_names == ('up', 'down', 'flat') and parsed.problem_name == 'Toy'
    assert parsed.labels.tolist() == [1, 0, 2] and parsed.lengths.tolist() == [4, 3, 5]
    for series, (a, b, _) in zip(parsed.series, TS_TRAIN):
        np.testing.assert_array_equal(series, np.stack([_as_float(a), _as_float(b)]))


def test_ts_archive_left_pads_masks_and_normalises_with_train_statistics(tmp_path):
    _write_ts(tmp_path / 'archive' / 'Toy')  # the archive's per-problem folder: ts:DIR/NAME finds DIR/NAME/NAME_*.ts
    data = build_data(f'ts:{tmp_path / "archive" / "Toy"}', 'sequence')
    assert (data.num_classes, data.in_chans, data.length) == (3, 2, 6)  # longest series is in the test split
    observed = [np.concatenate([_as_float(r[d]) for r in TS_TRAIN]) for d in (0, 1)]
    mean = np.array([np.nanmean(o) for o in observed])
    std = np.array([np.nanstd(o) for o in observed])
    np.testing.assert_allclose(data.mean, mean)
    np.testing.assert_allclose(data.std, std)
    inputs, label = data.train[1]  # [5, ?, 7] / [2, 2, 2], label 'up'
    assert int(label) == 0 and inputs['mask'].tolist() == [False] * 3 + [True] * 3
    expected = (np.stack([_as_float(TS_TRAIN[1][0]), _as_float(TS_TRAIN[1][1])]) - mean[:, None]) / std[:, None]
    expected = np.nan_to_num(expected)  # missing -> 0 (the training mean)
    np.testing.assert_allclose(inputs['x'][:, 3:].numpy(), expected, rtol=1e-6)
    assert inputs['x'][:, :3].abs().sum() == 0  # left padding is zero
    test_inputs, test_label = data.test[0]  # normalised with the training statistics, not the test split's
    assert int(test_label) == 0 and test_inputs['mask'].sum() == 2
    np.testing.assert_allclose(test_inputs['x'][:, -2:].numpy(),
                               (np.array([[2, 2], [1, 1]]) - mean[:, None]) / std[:, None], rtol=1e-6)


@pytest.mark.parametrize('body, message', [
    ('@problemName X\n@classLabel true a b\n1,2:a\n', 'line 3: expected a header tag'),
    ('@problemName X\n@classLabel true a b\n', 'no @data line'),
    ('@dimensions 2\n@classLabel true a b\n@data\n1,2:3,4:a\n1,2:b\n', 'line 5: 1 dimensions, but the file has 2'),
    ('@classLabel true a b\n@data\n1,2:a\n1,2:c\n', "line 4: unknown class label 'c'"),
    ('@classLabel true a b\n@data\n1,x:a\n', "line 3: dimension 1 has a value that is not a number: 'x'"),
    ('@timeStamps true\n@classLabel true a\n@data\n(0,1):a\n', 'line 3: @timeStamps true is not supported'),
])
def test_malformed_ts_files_name_the_line(tmp_path, body, message):
    path = tmp_path / 'bad.ts'
    path.write_text(body)
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
        read_ts(path)


def test_npz_arrays_with_lengths_string_labels_and_mask(tmp_path):
    rng = np.random.default_rng(0)
    x_train, x_test = rng.normal(size=(4, 2, 6)), rng.normal(size=(2, 2, 6))
    x_train[1, 0, 0] = np.nan
    path = tmp_path / 'd.npz'
    np.savez(path, x_train=x_train, y_train=np.array(['b', 'a', 'b', 'c']), x_test=x_test,
             y_test=np.array(['c', 'a']), lengths_train=np.array([6, 3, 6, 6]),
             mask_test=np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=bool))
    data = build_data(f'npz:{path}', 'sequence')
    assert (data.num_classes, data.in_chans, data.length) == (3, 2, 6)
    observed = np.concatenate([x_train[0], x_train[1, :, :3], x_train[2], x_train[3]], axis=1)
    mean, std = np.nanmean(observed, axis=1), np.nanstd(observed, axis=1)
    np.testing.assert_allclose(data.mean, mean)
    inputs, label = data.train[1]  # series 1 keeps its first 3 steps, right-aligned
    assert int(label) == 0 and inputs['mask'].tolist() == [False] * 3 + [True] * 3
    np.testing.assert_allclose(inputs['x'][:, 3:].numpy(),
                               np.nan_to_num((x_train[1, :, :3] - mean[:, None]) / std[:, None]), rtol=1e-5)
    test_inputs, test_label = data.test[0]  # mask_test: the series ends at its last observed step
    assert int(test_label) == 2 and test_inputs['mask'].sum() == 4
    np.testing.assert_allclose(test_inputs['x'][:, 2:].numpy(), (x_test[0, :, :4] - mean[:, None]) / std[:, None],
                               rtol=1e-5)
    np.savez(tmp_path / 'bad.npz', x_train=x_train, y_train=np.zeros(3), x_test=x_test, y_test=np.zeros(2))
    with pytest.raises(ValueError, match='x_train has 4 series but y_train has 3 labels'):
        build_data(f'npz:{tmp_path / "bad.npz"}', 'sequence')


def test_hf_dataset_with_a_sequence_column(tmp_path):
    datasets = pytest.importorskip('datasets')
    features = datasets.Features({'x': datasets.Sequence(datasets.Value('float32')),
                                  'label': datasets.ClassLabel(names=['a', 'b', 'c'])})
    train = datasets.Dataset.from_dict({'x': [[1, 2, 3], [4, 5], [6, 7, 8]], 'label': [0, 2, 1]}, features=features)
    test = datasets.Dataset.from_dict({'x': [[1, 1, 1, 1]], 'label': [2]}, features=features)
    datasets.DatasetDict({'train': train, 'test': test}).save_to_disk(str(tmp_path / 'seq'))
    data = build_data(f'hf:{tmp_path / "seq"}', 'sequence')
    assert (data.num_classes, data.in_chans, data.length) == (3, 1, 4)
    values = np.array([1, 2, 3, 4, 5, 6, 7, 8.0])
    np.testing.assert_allclose(data.mean, [values.mean()])
    inputs, label = data.train[1]
    assert int(label) == 2 and inputs['mask'].tolist() == [False, False, True, True]
    np.testing.assert_allclose(inputs['x'][0, 2:].numpy(), (np.array([4, 5]) - values.mean()) / values.std(), rtol=1e-6)


def _mfcc_reference(signal: np.ndarray, sr=16000, n_fft=200, n_mels=64, n_mfcc=20) -> np.ndarray:
    """MFCCs from their definition with numpy / scipy: reflect-padded frames, periodic Hann window, |rfft|^2,
    triangular HTK-mel filters built one by one, log(. + 1e-6), scipy's orthonormal DCT-II."""
    from scipy.fft import dct

    hop = n_fft // 2
    padded = np.pad(signal, n_fft // 2, mode='reflect')
    n_frames = 1 + (len(padded) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([padded[i * hop:i * hop + n_fft] * window for i in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [frames, n_fft / 2 + 1]
    bin_hz = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_edges = np.linspace(0, 2595 * np.log10(1 + (sr / 2) / 700), n_mels + 2)
    hz_edges = 700 * (10 ** (mel_edges / 2595) - 1)
    filters = np.zeros((n_mels, len(bin_hz)))
    for m in range(n_mels):
        lo, mid, hi = hz_edges[m:m + 3]
        for j, f in enumerate(bin_hz):
            if lo <= f <= mid:
                filters[m, j] = (f - lo) / (mid - lo)
            elif mid < f <= hi:
                filters[m, j] = (hi - f) / (hi - mid)
    log_mel = np.log(power @ filters.T + 1e-6)  # [frames, n_mels]
    return dct(log_mel, type=2, norm='ortho', axis=1)[:, :n_mfcc].T


def test_mfcc_matches_an_independent_numpy_reference():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    signal = 0.3 * np.sin(2 * np.pi * 440 * t) * np.hanning(16000) + 0.05 * rng.normal(size=16000)
    ours = mfcc(torch.from_numpy(signal)[None])  # float64
    assert ours.shape == (1, 20, 161)
    np.testing.assert_allclose(ours[0].numpy(), _mfcc_reference(signal), rtol=1e-9, atol=1e-9)


def _write_wav(path, samples: np.ndarray, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), 'wb') as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(samples.astype('<i2').tobytes())


def _speech_tree(root, per_word=8):
    rng = np.random.default_rng(0)
    folder = root / 'SpeechCommands' / 'speech_commands_v0.02'
    clips = {}
    for label, word in enumerate(audio_data.WORDS):
        for i in range(per_word):
            samples = (rng.normal(0, 3000, 16000) + 500 * label).clip(-32768, 32767).astype(np.int16)
            _write_wav(folder / word / f'{i:04d}_nohash_0.wav', samples)
            clips[(word, i)] = samples
        _write_wav(folder / word / 'short_nohash_0.wav', rng.normal(0, 3000, 9000).astype(np.int16))
    (folder / 'validation_list.txt').write_text('yes/0000_nohash_0.wav\n')
    (folder / 'testing_list.txt').write_text('no/0000_nohash_0.wav\n')
    return folder, clips


def test_speech_commands_official_protocol_and_cache(tmp_path, monkeypatch):
    folder, clips = _speech_tree(tmp_path)
    samples, rate = audio_data.read_wav(folder / 'yes' / '0003_nohash_0.wav')
    assert rate == 16000 and np.array_equal(samples, clips[('yes', 3)].astype(np.float64))
    raw = build_data(f'speechcommands:{tmp_path}', 'sequence', model_name='smpconv_tcn_speech_raw')
    # 80 one-second clips (the 10 short ones are dropped): 70% train, the 30% rest halved (validation, test)
    assert (len(raw.train), len(raw.test), raw.in_chans, raw.length, raw.num_classes) == (56, 12, 1, 16000, 10)
    from sklearn.model_selection import train_test_split

    labels = np.repeat(np.arange(10), 8)  # sorted file order within each word
    train_idx, rest = train_test_split(np.arange(80), train_size=0.7, random_state=0, stratify=labels)
    _, test_idx = train_test_split(rest, train_size=0.5, random_state=1, stratify=labels[rest])
    waves = np.stack([clips[(audio_data.WORDS[k // 8], k % 8)] for k in range(80)]) / 2 ** 15
    mean, std = waves[train_idx].mean(0), waves[train_idx].std(0, ddof=1)  # per time step, training clips only
    k = test_idx[0]
    x, y = raw.test[0]
    assert int(y) == labels[k]
    np.testing.assert_allclose(x[0].numpy(), (waves[k] - mean) / (std + 1e-5), rtol=1e-4, atol=1e-4)
    assert (folder / 'smpconv_cache' / 'speechcommands_raw.safetensors').is_file()

    def no_recompute(*args, **kwargs):
        raise AssertionError('features recomputed despite the cache')

    monkeypatch.setattr(audio_data, '_features', no_recompute)
    again = build_data(f'speechcommands:{tmp_path}', 'sequence', model_name='smpconv_tcn_speech_raw')
    assert torch.equal(again.test[0][0], x)
    monkeypatch.undo()
    feats = build_data(f'speechcommands:{tmp_path}', 'sequence', model_name='smpconv_tcn_speech')
    assert (feats.in_chans, feats.length) == (20, 161) and len(feats.train) == 56
    coeffs = mfcc(torch.from_numpy(waves).float()).double()
    train_coeffs = coeffs[torch.as_tensor(train_idx)]
    expected = (coeffs[k] - train_coeffs.mean((0, 1))) / (train_coeffs.std((0, 1)) + 1e-5)
    np.testing.assert_allclose(feats.test[0][0].numpy(), expected.numpy(), rtol=1e-3, atol=1e-3)


def test_mask_makes_left_padding_invisible_to_the_tcn():
    torch.manual_seed(0)
    model = timm.create_model('smpconv_tcn_chartraj', seq_len=40, in_chans=3, num_classes=4).double().eval()
    x = torch.randn(2, 3, 25, dtype=torch.float64)
    padded = torch.cat([torch.zeros(2, 3, 15, dtype=torch.float64), x], 2)
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[:, 15:] = True
    torch.testing.assert_close(model(padded, mask=mask), model(x), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(model(padded), model(x), rtol=1e-6, atol=1e-9)  # unmasked, the padding leaks in
    model.reset_classifier(4, global_pool='avg')  # the small-data recipe's pooling averages the real steps only
    model.eval()
    torch.testing.assert_close(model(padded, mask=mask), model(x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)), rtol=0, atol=0)
    model.reset_classifier(4, global_pool='max')  # padded steps are zero, the features >= 0
    model.eval()
    torch.testing.assert_close(model(padded, mask=mask), model(x), rtol=1e-10, atol=1e-12)
    # the small-data recipe's model (centred kernels, average and maximum): the padding stays invisible
    centred = timm.create_model('smpconv_tcn_chartraj', in_chans=3, num_classes=4, seq_len=40,
                                **recipe_model_args('smpconv_tcn_chartraj', 'npz:/x.npz', 40)).double().eval()
    assert centred.causal is False and centred.global_pool == 'avgmax'
    torch.testing.assert_close(centred(padded, mask=mask), centred(x), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(centred(padded), centred(x), rtol=1e-6, atol=1e-9)


def test_sequence_augment_is_seeded_and_keeps_padding_zero():
    x = torch.randn(6, 2, 20)
    mask = torch.ones(6, 20, dtype=torch.bool)
    mask[:, :5] = False
    base = SequenceSet(x * mask[:, None], torch.arange(6), mask)
    aug = SequenceAugment(base, seed=3, **parse_augment('shift=0.2,scale=0.1,jitter=0.05,cutout=0.2'))
    aug.set_epoch(2)
    first = aug[4][0]
    again = SequenceAugment(base, seed=3, **parse_augment('shift=0.2,scale=0.1,jitter=0.05,cutout=0.2'))
    again.set_epoch(2)
    assert torch.equal(again[4][0]['x'], first['x'])  # a function of (seed, epoch, index) only
    again.set_epoch(3)
    assert not torch.equal(again[4][0]['x'], first['x'])
    assert first['x'][:, ~first['mask']].abs().sum() == 0 and first['mask'][:5].sum() == 0
    with pytest.raises(ValueError, match="bad sequence augmentation 'warp=1'"):
        parse_augment('shift=0.1,warp=1')


def test_small_data_recipe_is_the_default_for_user_sequences_only():
    official = recipe_for('smpconv_tcn_chartraj', 'ts:/data/Multivariate_ts/CharacterTrajectories')
    assert official['lr'] == 1e-4 and official['epochs'] == 300 and official['optimizer'] == 'adam'
    small = recipe_for('smpconv_tcn_chartraj', 'ts:/data/Univariate_ts/GunPoint')
    assert small['epochs'] is None and small['seq_augment'] and small['optimizer'] == 'adamw'
    assert recipe_for('smpconv_tcn_mnist', 'npz:/x.npz')['lr'] == small['lr']
    assert recipe_for('smpconv_tcn_speech', 'speechcommands:/data')['lr'] == 2e-3
    assert small['ensemble'] == 3 and official.get('ensemble') is None  # the grid TCNs' own small-data value
    assert recipe_for('smpconv_irregular_tcn', 'npz:/x.npz').get('ensemble') is None  # no ensemble of these
    assert recipe_model_args('smpconv_tcn_chartraj', 'ts:/d/GunPoint', 151) == {  # centred, capped at 127 taps
        'radius': 4 / 126, 'global_pool': 'avgmax', 'causal': False, 'kernel_size': 127}
    assert recipe_model_args('smpconv_tcn_chartraj', 'ts:/d/GunPoint', 64) == {  # 2 L - 1 = 127 taps: whole series
        'radius': 2 / 63, 'global_pool': 'avgmax', 'causal': False}
    assert recipe_model_args('smpconv_irregular_tcn', 'npz:/x.npz', 151) == {'radius': 2 / 150, 'global_pool': 'max'}
    assert recipe_model_args('smpconv_tcn_chartraj', 'ts:/d/CharacterTrajectories', 182) == {}
    assert recipe_model_args('smpconv_tcn_mnist', 'npz:/x.npz', 2)['small_kernel_size'] == 3  # centred: 3 taps
    assert 'small_kernel_size' not in recipe_model_args('smpconv_tcn_mnist', 'npz:/x.npz', 3)  # 5 centred taps
    assert recipe_model_args('smpconv_irregular_tcn', 'npz:/x.npz', 4)['small_kernel_size'] == 4  # causal: 4 taps
    schedules = {n: small_data_schedule(n) for n in (30, 180, 200, 1000, 5000)}
    assert {n: (s['batch_size'], s['epochs']) for n, s in schedules.items()} == {
        30: (8, 167),  # 3 steps per epoch: the 500-step target decides
        180: (16, 80),  # 11 steps per epoch: the 80-epoch floor decides (880 steps)
        200: (32, 84),  # 6 steps per epoch: 504 steps
        1000: (32, 65),  # 31 steps per epoch: the 2000-step cap decides
        5000: (32, 20)}  # 156 steps per epoch: the 20-epoch floor decides
    assert small_data_schedule(30, epochs=10)['eval_every'] == 1 and schedules[30]['eval_every'] == 8
    assert small_data_schedule(100, batch_size=50)['epochs'] == 250  # a given batch size sets the epochs


def test_short_run_learns_a_separable_set(tmp_path):
    from smpconv_models.train.cli import main

    rng = np.random.default_rng(0)

    def split(n):  # slow or fast sines at random phases, 20-32 steps (variable lengths: the masked path)
        y = np.arange(n) % 2
        t = np.arange(32)
        x = np.sin(2 * np.pi * (2 + 4 * y[:, None]) * t / 32 + rng.uniform(0, 6.3, (n, 1)))
        return x[:, None] + 0.3 * rng.normal(size=(n, 1, 32)), y, rng.integers(20, 33, n)

    (x_train, y_train, len_train), (x_test, y_test, len_test) = split(64), split(64)
    np.savez(tmp_path / 'sines.npz', x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             lengths_train=len_train, lengths_test=len_test)
    out = tmp_path / 'run'
    assert main(['--model', 'smpconv_tcn_chartraj', '--data', f'npz:{tmp_path / "sines.npz"}', '--output-dir',
                 str(out), '--epochs', '12', '--ensemble', '1', '--cpu', '--plot', 'false', '--model-args',
                 '{"width": 16, "depth": 2}']) == 0
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['eval_top1'] >= 85.0  # chance is 50%
    lines = [json.loads(ln) for ln in (out / 'metrics.jsonl').read_text().splitlines()]
    assert len(lines) == 12 and 'eval_top1' in lines[-1]


def test_generated_sets_and_the_rocket_baseline():
    from smpconv_models.experiments.small_data import DATASETS, make_dataset, rocket_accuracy

    for spec in DATASETS:
        arrays = make_dataset(spec)
        assert arrays['x_train'].shape == (spec.n_train, spec.channels, spec.length)
        counts = np.bincount(arrays['y_train'], minlength=spec.classes)
        assert len(counts) == spec.classes and counts.max() - counts.min() <= 1  # balanced classes
        if spec.kind == 'traj':  # variable lengths, zero after each series' end
            lengths = arrays['lengths_train']
            assert lengths.min() < lengths.max() <= spec.length
            assert np.abs(arrays['x_train'][0, :, lengths[0]:]).sum() == 0
    again = make_dataset(DATASETS[0])
    assert np.array_equal(again['x_test'], make_dataset(DATASETS[0])['x_test'])  # seeded
    rng = np.random.default_rng(1)
    y = np.arange(80) % 2
    t = np.arange(40)
    x = np.sin(2 * np.pi * (2 + 5 * y[:, None]) * t / 40 + rng.uniform(0, 6.3, (80, 1)))[:, None]
    x = torch.tensor(x + 0.3 * rng.normal(size=x.shape), dtype=torch.float32)
    y = torch.tensor(y)
    assert rocket_accuracy(x[:40], y[:40], x[40:], y[40:], n_kernels=300) >= 95.0


def test_series_norm_standardises_each_series_over_its_real_steps():
    from smpconv_models.train.data import standardise_series

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 10, generator=g) * torch.tensor([[[5.0]], [[0.1]], [[2.0]]]) + 3.0
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, :4] = False
    x[1, :, :4] = 0
    x[2, 1] = 7.0  # a constant channel
    out = standardise_series(SequenceSet(x, torch.arange(3), mask))
    z = out.x.double()
    for i in range(3):
        real = z[i][:, mask[i]]
        ref = x[i][:, mask[i]].double()
        expected = (ref - ref.mean(-1, keepdim=True)) / ref.std(-1, unbiased=False, keepdim=True)
        if i == 2:
            expected[1] = 0.0
        torch.testing.assert_close(real, expected, rtol=1e-5, atol=1e-5)
    assert z[1][:, :4].abs().sum() == 0 and torch.equal(out.mask, mask) and torch.equal(out.y, torch.arange(3))
    with pytest.raises(ValueError, match='in-memory sequences'):
        standardise_series(torch.utils.data.TensorDataset(x))
