"""The log-mel front end: the one definition that training, converter, host and firmware implement.

Spec (defaults of `FeatureConfig`; docs/features.md has the same in C-ready detail):

- Input: 16 kHz mono PCM. int16 samples are scaled to float by x = s / 32768.
- Framing: frame i covers samples [160 i, 160 i + 400), no centre padding, so a stream can emit a frame as
  soon as its last sample arrives. n_frames = 0 if n < 400 else 1 + (n - 400) // 160.
- Window: periodic Hann, w[n] = 0.5 - 0.5 cos(2 pi n / 400), n = 0..399.
- Spectrum: frame * window, zero-padded at the END to 512 samples, real DFT, power |X[k]|^2 for k = 0..256.
- Mel: 80 triangular filters on the HTK mel scale, mel(f) = 2595 log10(1 + f / 700), from 20 Hz to 7600 Hz,
  built exactly like torchaudio.functional.melscale_fbanks(n_freqs=257, f_min=20, f_max=7600, n_mels=80,
  sample_rate=16000, norm=None, mel_scale="htk").
- Log: natural log of max(energy, 1e-10). No dither, no pre-emphasis.
- Normalization: (feature - mean) / std per mel bin in float32, with mean and std from the training set
  (`NormStats`), never per utterance.
- int8: q = clamp(round_half_away_from_zero(float32(x) / float32(scale)) + zero_point, -128, 127), as TFLite.

`log_mel` is the reference: these formulas in float64 (window and filterbank included). Consumers that
compute in float32 (torch training, the firmware) take float32 tables from `hann_window` / `mel_filterbank`.
`StreamingLogMel` yields bit-identical frames to `log_mel` from chunks of any size.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike

INT16_SCALE = 32768.0
STD_FLOOR = 1e-5


@dataclass(frozen=True)
class FeatureConfig:
    """Front-end parameters; `hash()` ties artifacts (checkpoints, bundles, test vectors) to them."""

    sample_rate: int = 16000
    win_length: int = 400
    hop_length: int = 160
    n_fft: int = 512
    n_mels: int = 80
    f_min: float = 20.0
    f_max: float = 7600.0
    log_floor: float = 1e-10

    def __post_init__(self) -> None:
        if not 0 < self.win_length <= self.n_fft:
            raise ValueError(f"need 0 < win_length <= n_fft, got {self.win_length}, {self.n_fft}")
        if self.hop_length <= 0 or self.n_mels <= 0 or self.log_floor <= 0:
            raise ValueError("hop_length, n_mels and log_floor must be positive")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got {self.f_min}, {self.f_max}")

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, int | float]) -> FeatureConfig:
        expected = {f.name for f in fields(cls)}
        if set(data) != expected:
            raise ValueError(f"feature config keys differ: missing {expected - set(data)}, "
                             f"unknown {set(data) - expected}")
        values: dict[str, int | float] = {}
        for f in fields(cls):
            value = data[f.name]
            kind = type(f.default)
            # JSON may give 16000.0 for an int; accept it only when it is integral.
            if kind is int and value != int(value):
                raise ValueError(f"{f.name} must be an integer, got {value}")
            values[f.name] = kind(value)
        return cls(**values)

    def hash(self) -> str:
        """First 16 hex digits of the sha256 of the canonical JSON (sorted keys, no spaces)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]


def hann_window(cfg: FeatureConfig = FeatureConfig(), dtype: DTypeLike = np.float32) -> np.ndarray:
    """Periodic Hann window [win_length], computed in float64 and returned as `dtype`."""
    n = np.arange(cfg.win_length, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / cfg.win_length)).astype(dtype)


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(cfg: FeatureConfig = FeatureConfig(), dtype: DTypeLike = np.float32) -> np.ndarray:
    """HTK triangular filters [n_freqs, n_mels] like torchaudio's melscale_fbanks(norm=None), computed in
    float64 (torchaudio uses float32, a difference of a few float32 ulps) and returned as `dtype`."""
    # torchaudio uses sample_rate // 2 (integer) as the top bin frequency.
    bin_hz = np.linspace(0.0, cfg.sample_rate // 2, cfg.n_freqs)
    mel_pts = np.linspace(_hz_to_mel(cfg.f_min), _hz_to_mel(cfg.f_max), cfg.n_mels + 2)
    edge_hz = _mel_to_hz(mel_pts)
    edge_gap = np.diff(edge_hz)
    slopes = edge_hz[None, :] - bin_hz[:, None]
    down = -slopes[:, :-2] / edge_gap[:-1]
    up = slopes[:, 2:] / edge_gap[1:]
    return np.maximum(0.0, np.minimum(down, up)).astype(dtype)


def num_frames(n_samples: int, cfg: FeatureConfig = FeatureConfig()) -> int:
    """Frames in a clip of n_samples: no centre padding, an incomplete last frame is dropped."""
    if n_samples < cfg.win_length:
        return 0
    return 1 + (n_samples - cfg.win_length) // cfg.hop_length


class _FrontEnd:
    """Tables for one config, and the float64 computation of complete frames.

    The mel sum runs over each filter's nonzero bins in ascending order, one frame column at a time, so a
    frame's value never depends on how many frames are computed together (streaming == batch, bit for bit;
    a BLAS matmul gives no such guarantee). It is also the natural loop in C.
    """

    def __init__(self, cfg: FeatureConfig) -> None:
        self.cfg = cfg
        self.window = hann_window(cfg, np.float64)
        fb = mel_filterbank(cfg, np.float64)
        self.filters: list[tuple[int, np.ndarray]] = []
        for m in range(cfg.n_mels):
            nonzero = np.flatnonzero(fb[:, m])
            lo, hi = (int(nonzero[0]), int(nonzero[-1]) + 1) if nonzero.size else (0, 0)
            self.filters.append((lo, fb[lo:hi, m]))

    def frames(self, x: np.ndarray) -> np.ndarray:
        """Log-mel [num_frames(len(x)), n_mels] float32 of float64 samples x."""
        cfg = self.cfg
        n = num_frames(x.shape[0], cfg)
        if n == 0:
            return np.zeros((0, cfg.n_mels), dtype=np.float32)
        starts = np.lib.stride_tricks.sliding_window_view(x, cfg.win_length)[:: cfg.hop_length][:n]
        spec = np.fft.rfft(starts * self.window, n=cfg.n_fft, axis=-1)
        power_t = np.ascontiguousarray((spec.real**2 + spec.imag**2).T)  # [n_freqs, n]
        energy = np.zeros((cfg.n_mels, n), dtype=np.float64)
        for m, (lo, weights) in enumerate(self.filters):
            acc = energy[m]
            for k, w in enumerate(weights, start=lo):
                acc += power_t[k] * w
        return np.log(np.maximum(energy, cfg.log_floor)).T.astype(np.float32)


def _to_float64(pcm: np.ndarray) -> np.ndarray:
    pcm = np.asarray(pcm)
    if pcm.ndim != 1:
        raise ValueError(f"expected mono 1-D audio, got shape {pcm.shape}")
    if pcm.dtype == np.int16:
        return pcm.astype(np.float64) / INT16_SCALE
    if np.issubdtype(pcm.dtype, np.floating):
        return pcm.astype(np.float64)
    raise TypeError(f"audio must be int16 or float in [-1, 1), got {pcm.dtype}")


def log_mel(pcm: np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """Reference log-mel [T, n_mels] float32 of int16 or float audio, computed in float64."""
    return _FrontEnd(cfg).frames(_to_float64(pcm))


class StreamingLogMel:
    """Log-mel of an int16 stream fed in chunks of any size; frames equal `log_mel` of the concatenation."""

    def __init__(self, cfg: FeatureConfig = FeatureConfig()) -> None:
        self._front = _FrontEnd(cfg)
        self._pending = np.zeros(0, dtype=np.int16)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add int16 samples; return the frames [k, n_mels] completed by them (k may be 0)."""
        chunk = np.asarray(chunk)
        if chunk.dtype != np.int16 or chunk.ndim != 1:
            raise TypeError(f"chunks must be 1-D int16, got {chunk.dtype} {chunk.shape}")
        buf = np.concatenate([self._pending, chunk])
        cfg = self._front.cfg
        n = num_frames(buf.shape[0], cfg)
        self._pending = buf[n * cfg.hop_length:]
        return self._front.frames(buf.astype(np.float64) / INT16_SCALE)

    def reset(self) -> None:
        """Forget buffered samples (start of a new utterance)."""
        self._pending = np.zeros(0, dtype=np.int16)


@dataclass
class NormStats:
    """Global per-bin mean and std (float32), computed on the training set and stored with the model."""

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float32)
        self.std = np.asarray(self.std, dtype=np.float32)
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape:
            raise ValueError(f"mean and std must be equal-length vectors, got {self.mean.shape}, {self.std.shape}")
        if not np.all(self.std > 0):
            raise ValueError("std must be positive")

    def apply(self, feats: np.ndarray) -> np.ndarray:
        """(feats - mean) / std in float32, the exact arithmetic the device performs."""
        return (np.asarray(feats, dtype=np.float32) - self.mean) / self.std

    def to_dict(self) -> dict[str, list[float]]:
        # float32 -> Python float is exact, and JSON floats round-trip, so load gives the same bits.
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> NormStats:
        return cls(mean=np.array(data["mean"]), std=np.array(data["std"]))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> NormStats:
        return cls.from_dict(json.loads(Path(path).read_text()))


class NormAccumulator:
    """Running float64 (count, mean, sum of squared deviations) per bin over feature matrices [T, n_mels].

    Batches and other accumulators' states are merged with Chan et al.'s pairwise update, which avoids the
    cancellation of sum(x^2) - n mean^2 and lets parallel workers each keep one (`state` / `merge_state`).
    std is the population std (ddof=0), floored at STD_FLOOR so constant bins do not divide by zero.
    """

    def __init__(self, n_mels: int = 80) -> None:
        self.n_mels = n_mels
        self.count = 0
        self._mean = np.zeros(n_mels)
        self._m2 = np.zeros(n_mels)

    def _merge(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        if count == 0:
            return
        total = self.count + count
        delta = mean - self._mean
        self._mean = self._mean + delta * (count / total)
        self._m2 = self._m2 + m2 + delta**2 * (self.count * count / total)
        self.count = total

    def update(self, feats: np.ndarray) -> None:
        feats = np.asarray(feats, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[1] != self.n_mels:
            raise ValueError(f"expected features [T, {self.n_mels}], got shape {feats.shape}")
        if feats.shape[0]:
            mean = feats.mean(axis=0)
            self._merge(feats.shape[0], mean, ((feats - mean) ** 2).sum(axis=0))

    def state(self) -> np.ndarray:
        """float64 [1 + 2 n_mels]: count, mean, sum of squared deviations (e.g. to store in an .npz)."""
        return np.concatenate([[float(self.count)], self._mean, self._m2])

    def merge_state(self, state: np.ndarray) -> None:
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (1 + 2 * self.n_mels,):
            raise ValueError(f"expected a state of {1 + 2 * self.n_mels} values, got shape {state.shape}")
        self._merge(int(state[0]), state[1:1 + self.n_mels], state[1 + self.n_mels:])

    def result(self) -> NormStats:
        if self.count == 0:
            raise ValueError("no frames accumulated")
        std = np.maximum(np.sqrt(self._m2 / self.count), STD_FLOOR)
        return NormStats(mean=self._mean, std=std)


def _round_half_away(y: np.ndarray) -> np.ndarray:
    """std::round on float32 without float error: the fraction y - trunc(y) is exact in float32."""
    whole = np.trunc(y)
    frac = y - whole
    return whole + np.sign(y) * (np.abs(frac) >= 0.5)


def _check_qparams(scale: float, zero_point: int) -> np.float32:
    scale32 = np.float32(scale)
    if not (np.isfinite(scale32) and scale32 > 0):
        raise ValueError(f"scale must be positive and finite, got {scale}")
    if not -128 <= zero_point <= 127:
        raise ValueError(f"int8 zero point must be in [-128, 127], got {zero_point}")
    return scale32


def quantize_int8(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """TFLite int8 quantization: clamp(round_half_away(float32(x) / float32(scale)) + zp, -128, 127)."""
    scale32 = _check_qparams(scale, zero_point)
    x32 = np.asarray(x, dtype=np.float32)
    if np.isnan(x32).any():
        raise ValueError("cannot quantize NaN")
    # Any |y| > 512 saturates whatever the zero point; clipping first keeps +-inf out of the rounding.
    y = np.clip(x32 / scale32, np.float32(-512), np.float32(512))
    return np.clip(_round_half_away(y) + zero_point, -128, 127).astype(np.int8)


def dequantize_int8(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """float32((q - zp) * scale); (q - zp) is exact, so the float32 product equals TFLite's double one."""
    scale32 = _check_qparams(scale, zero_point)
    q = np.asarray(q)
    if q.dtype != np.int8:
        raise TypeError(f"expected int8, got {q.dtype}")
    return (q.astype(np.int32) - zero_point).astype(np.float32) * scale32


def requantize_int8(q: np.ndarray, in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> np.ndarray:
    """Move int8 values from one quantization to another at a segment boundary whose two ends differ.

    Defined as quantize_int8(dequantize_int8(q, in_scale, in_zp), out_scale, out_zp): float32 throughout,
    rounding half away from zero, clamped. Equal parameters give q back unchanged. The firmware must use
    exactly this (a 256-entry table per boundary is one way), never a fixed-point multiplier approximation.
    """
    return quantize_int8(dequantize_int8(q, in_scale, in_zp), out_scale, out_zp)
