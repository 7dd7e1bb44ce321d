"""Training data and model building: every data source on tiny local data, shuffling, channel adaptation."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import smpconv_models  # noqa: F401
from smpconv_models.hub import save_pretrained
from smpconv_models.models import build_model
from smpconv_models.models._checkpoint import adapt_input_weight
from smpconv_models.train.data import DatasetNotFoundError, EpochShuffleSampler, build_data, sequence_permutation


def test_digits_as_sequences_and_images():
    seq = build_data('digits', 'sequence')
    img = build_data('digits', 'image', img_size=16)
    assert len(seq.train) + len(seq.test) == 1797 and len(seq.test) == 359
    x, y = seq.train[0]
    assert x.shape == (1, 64) and 0 <= int(y) < 10
    xi, yi = img.train[0]
    assert xi.shape == (1, 16, 16) and int(yi) == int(y)  # same fixed split and order for both views
    again = build_data('digits', 'sequence', seed=123)  # the split does not depend on the run seed
    assert torch.equal(again.test.tensors[1], seq.test.tensors[1])


def test_epoch_shuffle_is_a_function_of_seed_and_epoch():
    a, b = EpochShuffleSampler(50, seed=1), EpochShuffleSampler(50, seed=1)
    a.set_epoch(3)
    list(b)  # b has run an epoch already: order must still only depend on (seed, epoch)
    b.set_epoch(3)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(4)
    assert list(a) != list(b)
    assert torch.equal(sequence_permutation(784), sequence_permutation(784))
    assert sorted(sequence_permutation(784).tolist()) == list(range(784))


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12, 3), value, dtype=np.uint8)).save(path)


def test_image_folder(tmp_path):
    for split in ('train', 'val'):
        for cls, value in (('cat', 10), ('dog', 200)):
            for i in range(2):
                _png(tmp_path / split / cls / f'{i}.png', value)
    from timm.data import create_transform

    tf = create_transform(16, is_training=False, crop_pct=1.0)
    data = build_data(f'folder:{tmp_path}', 'image', img_size=16, train_transform=tf, eval_transform=tf)
    assert data.num_classes == 2 and len(data.train) == 4 and len(data.test) == 4
    x, y = data.test[3]
    assert x.shape == (3, 16, 16) and int(y) == 1 and x.mean() > data.test[0][0].mean()
    _png(tmp_path / 'only_train' / 'train' / 'cat' / '0.png', 0)
    with pytest.raises(DatasetNotFoundError, match='val/ or validation/ or test/'):
        build_data(f'folder:{tmp_path / "only_train"}', 'image')


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip('datasets')
    images = [Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)) for i in range(4)]
    features = datasets.Features({'image': datasets.Image(), 'label': datasets.ClassLabel(names=['a', 'b', 'c'])})
    split = datasets.Dataset.from_dict({'image': images, 'label': [0, 1, 2, 1]}, features=features)
    datasets.DatasetDict({'train': split, 'test': split}).save_to_disk(str(tmp_path / 'ds'))
    from torchvision import transforms as T

    data = build_data(f'hf:{tmp_path / "ds"}', 'image', train_transform=T.ToTensor(), eval_transform=T.ToTensor())
    assert data.num_classes == 3 and len(data.train) == 4
    x, y = data.test[2]
    assert x.shape == (3, 8, 8) and y == 2 and x.max().item() == pytest.approx(80 / 255)


def test_missing_torchvision_dataset_is_clear(tmp_path):
    with pytest.raises(DatasetNotFoundError, match='never downloads'):
        build_data(f'cifar10:{tmp_path}', 'image')
    with pytest.raises(ValueError, match='needs a local path'):
        build_data('mnist', 'image')


def test_in_chans_adaptation_follows_timm_rule(tmp_path):
    src = timm.create_model('smpconv_tcn_mnist', seq_len=16, depth=1, width=4, n_points=3)  # 1 input channel
    save_pretrained(src, tmp_path / 'src')
    model = build_model('smpconv_tcn_mnist', {'in_chans': 3, 'seq_len': 16}, str(tmp_path / 'src'))
    w_src = src.blocks[0].conv1.smp.conv.weights
    w_dst = model.blocks[0].conv1.smp.conv.weights
    assert w_dst.shape == (4, 3, 3)
    torch.testing.assert_close(w_dst, w_src.repeat(1, 3, 1) / 3)
    torch.testing.assert_close(adapt_input_weight(torch.ones(2, 3, 5), 1), torch.full((2, 1, 5), 3.0))
    # the same input repeated on 3 channels gives the original model's output
    x = torch.randn(2, 1, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x.repeat(1, 3, 1)), src.eval()(x), rtol=1e-4, atol=1e-5)
