"""Feature test vectors: a little-endian binary file the firmware's C tests read (no JSON parser in C).

Format, version 1. All integers and floats little-endian, fields packed with no alignment padding:

    header:
      char[4]  magic "EEFV"
      u32      version (1)
      u32      sample_rate, win_length, hop_length, n_fft, n_mels
      f64      f_min, f_max, log_floor
      char[16] FeatureConfig.hash() as ASCII hex
      u32      n_cases
    n_cases times:
      char[32] name, ASCII, NUL padded (at most 31 characters, so always NUL terminated)
      u32      n_samples
      i16      samples[n_samples]
      u32      n_frames                       (= num_frames(n_samples))
      f32      log_mel[n_frames * n_mels]      frame-major: frame t, bin j at t * n_mels + j
      f32      mean[n_mels], std[n_mels]       normalization for this case
      f32      scale
      i32      zero_point
      i8       quantized[n_frames * n_mels]    quantize_int8((log_mel - mean) / std, scale, zero_point)
    end of file

`quantized` is computed from the stored float32 `log_mel` with float32 arithmetic, so a C test reproduces
it bit-exactly from the stored values; its own log-mel need only match `log_mel` within tolerance.

`eeasr-data vectors --out FILE` writes the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from eeasr.features import FeatureConfig, NormAccumulator, NormStats, log_mel, num_frames, quantize_int8

MAGIC = b"EEFV"
VERSION = 1
NAME_BYTES = 32
_HEADER = struct.Struct("<4sI5I3d16sI")


@dataclass
class FeatureCase:
    name: str
    samples: np.ndarray  # int16 [n_samples]
    log_mel: np.ndarray  # float32 [n_frames, n_mels]
    norm: NormStats
    scale: float
    zero_point: int
    quantized: np.ndarray  # int8 [n_frames, n_mels]


def _to_int16(signal: np.ndarray, peak: float) -> np.ndarray:
    """Scale a float signal so its peak is `peak` (fraction of full scale); saturate like an ADC."""
    scaled = np.round(signal / np.max(np.abs(signal)) * peak * 32767.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def _loud_chirp_tones(cfg: FeatureConfig) -> np.ndarray:
    t = np.arange(cfg.sample_rate) / cfg.sample_rate
    chirp = np.sin(2 * np.pi * (100 * t + (7000 - 100) / 2 * t**2))
    tones = 0.6 * np.sin(2 * np.pi * 440 * t) + 0.4 * np.sin(2 * np.pi * 3000 * t)
    return _to_int16(chirp + tones, peak=1.05)  # a little over full scale: some samples hit the rails


def _near_silent_lsb(cfg: FeatureConfig) -> np.ndarray:
    # Sparse +-1/+-2 LSB clicks: a click near a window edge alone gives mel energies below the log floor.
    rng = np.random.default_rng(1)
    n = cfg.sample_rate // 2
    clicks = rng.integers(-2, 3, n)
    return np.where(rng.random(n) < 0.003, clicks, 0).astype(np.int16)


def _noise(n: int, seed: int) -> np.ndarray:
    return _to_int16(np.random.default_rng(seed).standard_normal(n), peak=0.1)


def _periodic_hop(cfg: FeatureConfig) -> np.ndarray:
    """Harmonics of sample_rate / hop_length: every frame sees the same samples, so all rows are equal."""
    rng = np.random.default_rng(3)
    period = np.arange(cfg.hop_length) / cfg.hop_length
    one = sum(rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * h * period + rng.uniform(0, 2 * np.pi))
              for h in range(1, 20))
    return np.tile(_to_int16(one, peak=0.5), 20 + cfg.win_length // cfg.hop_length)


def _speech_like(cfg: FeatureConfig) -> np.ndarray:
    """Gliding f0 with formant-shaped harmonics, 4 Hz syllable-rate amplitude modulation, a noise floor."""
    rng = np.random.default_rng(4)
    n = int(1.2 * cfg.sample_rate) + 37  # not a whole number of hops: the stream keeps a remainder
    t = np.arange(n) / cfg.sample_rate
    f0 = 120 + 80 * t / t[-1]
    phase = 2 * np.pi * np.cumsum(f0) / cfg.sample_rate
    voice = np.zeros(n)
    for h in range(1, 40):
        freq = h * f0
        gain = sum(np.exp(-0.5 * ((freq - formant) / 150) ** 2) for formant in (500, 1500, 2500)) + 0.02
        voice += np.where(freq < 0.45 * cfg.sample_rate, gain, 0.0) * np.sin(h * phase) / h
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)
    pcm = _to_int16(voice * envelope, peak=0.3).astype(np.int32) + np.round(3 * rng.standard_normal(n))
    return np.clip(pcm, -32768, 32767).astype(np.int16)


def _tie_norm(feats: np.ndarray, scale: float) -> NormStats:
    """Per-bin mean so that (feats[t, j] - mean[j]) / scale == k + 0.5 exactly for every frame.

    Needs all rows equal. With `scale` a power of two, and the offset taking the sign of the feature (so
    feats - offset is smaller in magnitude and stays exactly representable), every float32 operation is
    exact. |k + 0.5| runs over 0.5 .. 7.5, so even-k ties, where half away from zero and half to even
    disagree, occur with both signs (this signal has log-mel values of both signs).
    """
    row = feats[0].astype(np.float64)
    offsets = np.where(row >= 0, 1.0, -1.0) * ((np.arange(row.size) % 8) + 0.5) * scale
    mean = (row - offsets).astype(np.float32)
    return NormStats(mean=mean, std=np.ones_like(mean))


def _make_case(name: str, samples: np.ndarray, norm: NormStats, scale: float, zero_point: int,
               cfg: FeatureConfig) -> FeatureCase:
    feats = log_mel(samples, cfg)
    q = quantize_int8(norm.apply(feats), scale, zero_point)
    return FeatureCase(name, samples, feats, norm, float(np.float32(scale)), zero_point, q)


def feature_cases(cfg: FeatureConfig = FeatureConfig()) -> list[FeatureCase]:
    """The deterministic cases written by `write_feature_vectors`."""
    signals = {
        "loud_chirp_tones": _loud_chirp_tones(cfg),
        "near_silent_lsb": _near_silent_lsb(cfg),
        "digital_zeros": np.zeros(cfg.sample_rate // 4, dtype=np.int16),
        "short_clip": _noise(cfg.win_length - 1, seed=2),
        "one_frame": _noise(cfg.win_length + cfg.hop_length - 1, seed=5),
        "speech_like_am": _speech_like(cfg),
    }
    # Statistics of the speech-like clip stand in for the training set's; with a calibrated-looking scale
    # and zero point, the loud and the silent cases then saturate at both ends of int8.
    acc = NormAccumulator(cfg.n_mels)
    acc.update(log_mel(signals["speech_like_am"], cfg))
    norm, scale, zero_point = acc.result(), 8.5 / 255, -8
    cases = [_make_case(name, pcm, norm, scale, zero_point, cfg) for name, pcm in signals.items()]

    ties = _periodic_hop(cfg)
    tie_scale = 2.0**-4
    cases.append(_make_case("rounding_ties", ties, _tie_norm(log_mel(ties, cfg), tie_scale), tie_scale, -3, cfg))
    _check_ties(cases[-1])
    return cases


def _check_ties(case: FeatureCase) -> None:
    y = case.norm.apply(case.log_mel) / np.float32(case.scale)
    if not (np.all(np.abs(y - np.trunc(y)) == 0.5) and (y > 0).any() and (y < 0).any()):
        raise RuntimeError("rounding_ties case lost its exact .5 ties; its construction needs revisiting")


def _write_case(f: BinaryIO, case: FeatureCase) -> None:
    name = case.name.encode("ascii")
    if len(name) >= NAME_BYTES:
        raise ValueError(f"case name too long: {case.name}")
    f.write(name.ljust(NAME_BYTES, b"\0"))
    f.write(struct.pack("<I", case.samples.size))
    f.write(case.samples.astype("<i2").tobytes())
    f.write(struct.pack("<I", case.log_mel.shape[0]))
    f.write(case.log_mel.astype("<f4").tobytes())
    f.write(case.norm.mean.astype("<f4").tobytes())
    f.write(case.norm.std.astype("<f4").tobytes())
    f.write(struct.pack("<fi", case.scale, case.zero_point))
    f.write(case.quantized.astype("i1").tobytes())


def write_feature_vectors(path: str | Path, cfg: FeatureConfig = FeatureConfig()) -> list[FeatureCase]:
    """Write the cases of `feature_cases(cfg)` to `path` in the format above; return them."""
    cases = feature_cases(cfg)
    with open(path, "wb") as f:
        f.write(_HEADER.pack(MAGIC, VERSION, cfg.sample_rate, cfg.win_length, cfg.hop_length, cfg.n_fft,
                             cfg.n_mels, cfg.f_min, cfg.f_max, cfg.log_floor, cfg.hash().encode("ascii"),
                             len(cases)))
        for case in cases:
            _write_case(f, case)
    return cases


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("feature vectors file is truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        s = struct.Struct(fmt)
        return s.unpack(self.take(s.size))

    def array(self, dtype: str, count: int) -> np.ndarray:
        dt = np.dtype(dtype)
        return np.frombuffer(self.take(dt.itemsize * count), dtype=dt).astype(dt.newbyteorder("="))


def _read_case(r: _Reader, cfg: FeatureConfig) -> FeatureCase:
    name = r.take(NAME_BYTES).rstrip(b"\0").decode("ascii")
    (n_samples,) = r.unpack("<I")
    samples = r.array("<i2", n_samples)
    (n_frames,) = r.unpack("<I")
    if n_frames != num_frames(n_samples, cfg):
        raise ValueError(f"case {name}: {n_frames} frames for {n_samples} samples")
    feats = r.array("<f4", n_frames * cfg.n_mels).reshape(n_frames, cfg.n_mels)
    norm = NormStats(mean=r.array("<f4", cfg.n_mels), std=r.array("<f4", cfg.n_mels))
    scale, zero_point = r.unpack("<fi")
    quantized = r.array("i1", n_frames * cfg.n_mels).reshape(n_frames, cfg.n_mels)
    return FeatureCase(name, samples, feats, norm, scale, zero_point, quantized)


def read_feature_vectors(path: str | Path) -> tuple[FeatureConfig, list[FeatureCase]]:
    """Parse a file written by `write_feature_vectors`; errors on a wrong magic, version, hash or length."""
    r = _Reader(Path(path).read_bytes())
    magic, version, sr, win, hop, n_fft, n_mels, f_min, f_max, floor, digest, n_cases = r.unpack(_HEADER.format)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"not a version {VERSION} feature vectors file (magic {magic!r}, version {version})")
    cfg = FeatureConfig(sr, win, hop, n_fft, n_mels, f_min, f_max, floor)
    if digest.decode("ascii") != cfg.hash():
        raise ValueError("feature config hash does not match the config fields")
    cases = [_read_case(r, cfg) for _ in range(n_cases)]
    if r.pos != len(r.data):
        raise ValueError("trailing bytes after the last case")
    return cfg, cases

