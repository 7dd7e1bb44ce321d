"""Speech Commands (``--data speechcommands:ROOT``) under the official SMPConv / CKConv protocol, and MFCCs in torch.

The protocol (SMPConv's ``smp/datasets/speech_commands.py``, from CKConv, from NeuralCDE's data code): the ten
words ``yes no up down left right on off stop go`` (labels 0-9 in that order) of Speech Commands v0.02, only the
clips of exactly one second (16,000 samples at 16 kHz; the shorter ones are discarded, leaving 34,975), samples
scaled by ``1 / 2**15``; either the raw ``1 x 16000`` waveform or 20 MFCCs x 161 frames; then every clip is split
70 / 15 / 15 into train / validation / test, stratified by word (scikit-learn ``train_test_split`` with
``random_state`` 0, then 1 on the remaining 30%), ignoring the dataset's ``validation_list.txt`` /
``testing_list.txt``; the test split is the 15% test part. Normalisation uses the training split's statistics along
the *last* axis of the official ``[N, C, L]`` tensors, i.e. one mean / std (unbiased, ``+ 1e-5``) per time step over
all channels -- NeuralCDE's time-major ``[N, L, C]`` tensors made the same code per-channel; we follow the code
that produced the paper's numbers. Files are read in sorted order (the official code uses the file system's).

Features are computed once and cached as ``.safetensors`` next to the data (written atomically), keyed by the list
of clips, so later runs (and epochs) read the cache.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import wave
from pathlib import Path

import numpy as np
import torch

from .common import DataBundle, DatasetNotFoundError
from .sequences import SequenceSet

__all__ = ['WORDS', 'read_wav', 'mel_filterbank', 'dct_matrix', 'mfcc', 'speech_commands', 'find_speech_commands',
           'CLIP_SAMPLES']

_logger = logging.getLogger(__name__)

WORDS = ('yes', 'no', 'up', 'down', 'left', 'right', 'on', 'off', 'stop', 'go')
CLIP_SAMPLES = 16000
_CACHE_VERSION = '1'


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """``(samples, sample_rate)`` of a PCM WAV file with the standard library: ``[T]`` for mono, ``[channels, T]``
    otherwise, integer samples as read (16-bit: -32768..32767; 8-bit unsigned is centred). Other encodings (float
    WAV) need the optional ``soundfile`` package."""
    path = Path(path)
    try:
        with wave.open(str(path), 'rb') as f:
            channels, width, rate, frames = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
            raw = f.readframes(frames)
    except wave.Error as e:
        try:
            import soundfile
        except ImportError:
            raise ValueError(f'{path}: not a PCM WAV file the standard library reads ({e}); install soundfile for '
                             'other encodings') from None
        data, rate = soundfile.read(str(path), dtype='int16', always_2d=True)
        data = data.T.astype(np.float64)
        return (data[0] if data.shape[0] == 1 else data), int(rate)
    if width == 1:
        data = np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128
    elif width == 2:
        data = np.frombuffer(raw, dtype='<i2').astype(np.float64)
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        data = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float64)
    elif width == 4:
        data = np.frombuffer(raw, dtype='<i4').astype(np.float64)
    else:
        raise ValueError(f'{path}: unsupported WAV sample width {width} bytes')
    data = data.reshape(-1, channels).T
    return (data[0] if channels == 1 else data), rate


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[n_freqs, n_mels]`` triangular HTK-mel filters without area normalisation (torchaudio's
    ``melscale_fbanks(..., norm=None, mel_scale='htk')``): ``n_mels + 2`` points equally spaced in mel between
    ``f_min`` and ``f_max`` (default ``sample_rate // 2``), filter ``m`` rising from point ``m`` to ``m + 1`` and
    falling to ``m + 2``, evaluated at the ``n_freqs`` STFT bin frequencies."""
    f_max = float(sample_rate // 2) if f_max is None else f_max
    freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=dtype)
    mels = torch.linspace(float(_hz_to_mel(torch.tensor(f_min, dtype=dtype))),
                          float(_hz_to_mel(torch.tensor(f_max, dtype=dtype))), n_mels + 2, dtype=dtype)
    points = _mel_to_hz(mels)
    gaps = points[1:] - points[:-1]
    offsets = points[None, :] - freqs[:, None]  # [n_freqs, n_mels + 2]
    rising = -offsets[:, :-2] / gaps[:-1]
    falling = offsets[:, 2:] / gaps[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def dct_matrix(n_mfcc: int, n_mels: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[n_mels, n_mfcc]`` orthonormal DCT-II (torchaudio's ``create_dct(n_mfcc, n_mels, norm='ortho')``):
    ``sqrt(2 / n_mels) * cos(pi / n_mels * (n + 0.5) * k)``, row ``k = 0`` scaled by ``1 / sqrt(2)``."""
    n = torch.arange(n_mels, dtype=dtype)
    k = torch.arange(n_mfcc, dtype=dtype)[:, None]
    dct = torch.cos(math.pi / n_mels * (n + 0.5) * k) * math.sqrt(2.0 / n_mels)
    dct[0] = dct[0] / math.sqrt(2.0)
    return dct.t()


def mfcc(waveform: torch.Tensor, sample_rate: int = 16000, n_mfcc: int = 20, n_fft: int = 200, n_mels: int = 64,
         log_offset: float = 1e-6) -> torch.Tensor:
    """MFCCs ``[..., n_mfcc, frames]`` of ``waveform`` ``[..., T]`` as torchaudio's
    ``MFCC(sample_rate, n_mfcc, log_mels=True, melkwargs=dict(n_fft=n_fft, n_mels=n_mels))`` defines them: power
    spectrogram of a centred (reflect-padded) STFT with a periodic Hann window of ``n_fft`` and hop ``n_fft // 2``,
    HTK mel filters (no normalisation, 0 Hz to Nyquist), ``log(mel + 1e-6)``, orthonormal DCT-II. One second at
    16 kHz with the official settings gives ``[20, 161]``."""
    shape = waveform.shape
    x = waveform.reshape(-1, shape[-1])
    window = torch.hann_window(n_fft, periodic=True, dtype=x.dtype, device=x.device)
    spec = torch.stft(x, n_fft, hop_length=n_fft // 2, win_length=n_fft, window=window, center=True,
                      pad_mode='reflect', normalized=False, onesided=True, return_complex=True).abs().pow(2)
    fb = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, dtype=x.dtype).to(x.device)
    mel = torch.log(torch.matmul(spec.transpose(-1, -2), fb) + log_offset)  # [B, frames, n_mels]
    out = torch.matmul(mel, dct_matrix(n_mfcc, n_mels, dtype=x.dtype).to(x.device)).transpose(-1, -2)
    return out.reshape(*shape[:-1], n_mfcc, out.shape[-1])


def find_speech_commands(root: str) -> Path:
    """The folder holding the word folders: ``ROOT/SpeechCommands/speech_commands_v0.02`` (torchaudio's layout),
    ``ROOT/speech_commands_v0.02``, ``ROOT/SpeechCommands`` (the official code's) or ``ROOT`` itself."""
    base = Path(root)
    for folder in (base / 'SpeechCommands' / 'speech_commands_v0.02', base / 'speech_commands_v0.02',
                   base / 'SpeechCommands', base):
        if all((folder / w).is_dir() for w in WORDS):
            return folder
    raise DatasetNotFoundError(
        f'Speech Commands not found under {root!r}: expected ROOT/SpeechCommands/speech_commands_v0.02/<word>/*.wav '
        f'for the words {", ".join(WORDS)} (the layout torchaudio downloads; this tool never downloads data)')


def _clip_list(folder: Path) -> tuple[list[tuple[Path, int]], str]:
    clips, digest = [], hashlib.sha256(_CACHE_VERSION.encode())
    for label, word in enumerate(WORDS):
        for path in sorted((folder / word).glob('*.wav')):
            clips.append((path, label))
            digest.update(f'{word}/{path.name}:{path.stat().st_size}\n'.encode())
    if not clips:
        raise DatasetNotFoundError(f'no .wav files in the word folders of {folder}')
    return clips, digest.hexdigest()


def _official_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test indices: stratified 70 / 15 / 15 (``random_state`` 0, then 1)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, train_size=0.7, random_state=0, shuffle=True, stratify=labels)
    val, test = train_test_split(rest, train_size=0.5, random_state=1, shuffle=True, stratify=labels[rest])
    return train, val, test


def _normalise_steps(x: torch.Tensor, train: np.ndarray, chunk: int = 2048) -> torch.Tensor:
    """The official normalisation: per time step (last axis), mean and unbiased std over the training clips and
    channels, ``(x - mean) / (std + 1e-5)`` (statistics accumulated in float64, chunk by chunk)."""
    total = torch.zeros(x.shape[-1], dtype=torch.float64)
    squares = torch.zeros(x.shape[-1], dtype=torch.float64)
    for i in range(0, len(train), chunk):
        part = x[torch.as_tensor(train[i:i + chunk])].double()
        total += part.sum(dim=(0, 1))
        squares += part.pow(2).sum(dim=(0, 1))
    n = len(train) * x.shape[1]
    mean = total / n
    std = ((squares - n * mean ** 2).clamp(min=0) / max(n - 1, 1)).sqrt()
    return ((x - mean.float()) / (std + 1e-5).float()).float()


def _features(clips: list[tuple[Path, int]], use_mfcc: bool) -> tuple[torch.Tensor, torch.Tensor]:
    waves, labels = [], []
    for path, label in clips:
        samples, rate = read_wav(path)
        if samples.ndim != 1:
            raise ValueError(f'{path}: expected a mono clip, got {samples.shape[0]} channels')
        if rate != 16000:
            raise ValueError(f'{path}: sample rate {rate} Hz, Speech Commands clips are 16000 Hz')
        if len(samples) != CLIP_SAMPLES:  # the official protocol discards clips shorter than one second
            continue
        waves.append(torch.from_numpy((samples / 2 ** 15).astype(np.float32)))
        labels.append(label)
    if not waves:
        raise DatasetNotFoundError('no one-second (16000-sample) clips found')
    x = torch.stack(waves)[:, None, :]  # [N, 1, 16000]
    if use_mfcc:
        x = torch.cat([mfcc(x[i:i + 1024, 0]) for i in range(0, len(x), 1024)])  # [N, 20, 161]
    return x, torch.tensor(labels, dtype=torch.long)


def _cache_path(folder: Path, use_mfcc: bool) -> Path:
    return folder / 'smpconv_cache' / f'speechcommands_{"mfcc" if use_mfcc else "raw"}.safetensors'


def speech_commands(root: str, use_mfcc: bool = True) -> DataBundle:
    """``--data speechcommands:ROOT``: MFCCs ``[20, 161]`` (``use_mfcc``, for ``smpconv_tcn_speech``) or the raw
    waveform ``[1, 16000]`` (``smpconv_tcn_speech_raw``), 10 classes, the official split and normalisation."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = find_speech_commands(root)
    clips, fingerprint = _clip_list(folder)
    cache = _cache_path(folder, use_mfcc)
    tensors = None
    if cache.is_file():
        with safe_open(str(cache), framework='pt') as f:
            if (f.metadata() or {}).get('fingerprint') == fingerprint:
                names = f.keys()
                tensors = {k: f.get_tensor(k) for k in names}
    if tensors is None:
        _logger.info('computing Speech Commands %s features for %d clips (cached in %s)',
                     'MFCC' if use_mfcc else 'raw', len(clips), cache)
        x, y = _features(clips, use_mfcc)
        train, _, test = _official_split(y.numpy())
        x = _normalise_steps(x, train)
        tensors = {'train_x': x[train].contiguous(), 'train_y': y[train], 'test_x': x[test].contiguous(),
                   'test_y': y[test]}
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f'{cache.name}.tmp-{os.getpid()}')
            save_file(tensors, str(tmp), metadata={'fingerprint': fingerprint, 'clips': str(len(y))})
            os.replace(tmp, cache)
        except OSError as e:
            _logger.warning('could not cache Speech Commands features in %s: %s', cache, e)
    train_set = SequenceSet(tensors['train_x'], tensors['train_y'])
    test_set = SequenceSet(tensors['test_x'], tensors['test_y'])
    chans, length = tensors['train_x'].shape[1:]
    return DataBundle(train_set, test_set, len(WORDS), int(chans), 'sequence', int(length),
                      f'speechcommands-{"mfcc" if use_mfcc else "raw"}')
