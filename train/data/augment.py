"""Waveform augmentation that moves TTS audio towards what a microphone hears.

Applied once, when features are cached (train/data/cache.py); training then adds only SpecAugment. Order:
speed -> reverberation -> band-limiting -> additive noise at an SNR -> gain (with clipping) -> noise floor ->
int16, the same int16 the device's front end reads. Every draw comes from a generator seeded by the
utterance id and copy index, so a cache is reproducible. There is no noise corpus offline, so noise is
synthetic (white, pink, brown, mains hum) or babble made of other utterances of the corpus.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import soxr
from scipy import signal

SAMPLE_RATE = 16000
_INT16_MAX = 32767
_NOISE_LOW_HZ = 20.0  # coloured noise starts here: the lower edge of hearing, microphones and the mel filterbank


@dataclass(frozen=True)
class AugmentConfig:
    p_noise: float = 0.7
    snr_db: tuple[float, float] = (0.0, 20.0)
    p_reverb: float = 0.5
    rt60_s: tuple[float, float] = (0.15, 0.8)
    p_bandlimit: float = 0.5
    lowpass_hz: tuple[float, float] = (3000.0, 7500.0)
    highpass_hz: tuple[float, float] = (60.0, 300.0)
    p_speed: float = 0.6
    speed: tuple[float, float] = (0.9, 1.1)
    gain_db: tuple[float, float] = (-20.0, 6.0)  # applied to a signal first set to -20 dBFS RMS
    floor_dbfs: tuple[float, float] = (-90.0, -66.0)


def utterance_rng(utt_id: str, copy: int) -> np.random.Generator:
    """A generator fixed by the utterance and the augmented copy (stable across processes and runs)."""
    seed = int.from_bytes(hashlib.sha256(f"{utt_id}/{copy}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float in [-1, 1) to int16 with clipping, as an ADC saturates."""
    return np.clip(np.round(x * 32768.0), -32768, _INT16_MAX).astype(np.int16)


def add_noise_floor(audio: np.ndarray, rng: np.random.Generator,
                    floor_dbfs: tuple[float, float] = AugmentConfig.floor_dbfs) -> np.ndarray:
    """Float audio plus white noise at a random level in dBFS (RMS); returns int16 with no digital silence."""
    level = 10 ** (rng.uniform(*floor_dbfs) / 20)
    return to_int16(audio + rng.normal(0.0, level, size=audio.shape))


def _colored_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    white = rng.normal(size=n)
    if kind == "white":
        return white
    if kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        f0 = rng.choice([50.0, 60.0])
        hum = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 8))
        return hum + 0.05 * white
    # Pink (1/f) and brown (1/f^2) power spectra by shaping white noise, from _NOISE_LOW_HZ up. Below it (DC and
    # sub-audio drift) they would hold most of their power (brown: ~99%) where no microphone passes it and no
    # feature sees it, so the SNR would be met by noise that masks nothing.
    spec = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    shape = np.zeros_like(f)
    audible = f >= _NOISE_LOW_HZ
    shape[audible] = f[audible] ** (-0.5 if kind == "pink" else -1.0)
    return np.fft.irfft(spec * shape, n)


def _babble(n: int, pool: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    for _ in range(int(rng.integers(3, 7))):
        other = pool[int(rng.integers(len(pool)))].astype(np.float64)
        other = np.resize(other, n) if len(other) < n else other[:n]
        out += np.roll(other, int(rng.integers(n))) / (_rms(other) + 1e-9)
    return out


def _room_impulse(rng: np.random.Generator, rt60: float) -> np.ndarray:
    """Exponentially decaying noise tail after a direct path: a statistical room model (no geometry needed)."""
    n = int(min(1.2 * rt60, 1.0) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.normal(size=n) * np.exp(-6.9 * t / rt60)
    tail[: int(0.002 * SAMPLE_RATE)] = 0.0  # the first reflection arrives a little after the direct sound
    h = tail * rng.uniform(0.1, 0.5) / (np.sqrt(np.sum(tail**2)) + 1e-9)
    h[0] = 1.0
    return h


def augment(audio: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig(),
            babble_pool: list[np.ndarray] | None = None) -> tuple[np.ndarray, dict]:
    """One augmented int16 copy of float audio, and a record of what was applied."""
    x = audio.astype(np.float64)
    info: dict = {}
    if rng.random() < cfg.p_speed:
        factor = float(rng.uniform(*cfg.speed))
        # Resampling by 1/factor and playing at 16 kHz changes tempo and pitch together (Kaldi-style).
        x = soxr.resample(x, SAMPLE_RATE, SAMPLE_RATE / factor, quality="HQ")
        info["speed"] = round(factor, 3)
    if rng.random() < cfg.p_reverb:
        rt60 = float(rng.uniform(*cfg.rt60_s))
        x = signal.fftconvolve(x, _room_impulse(rng, rt60))[: len(x)]
        info["rt60"] = round(rt60, 3)
    if rng.random() < cfg.p_bandlimit:
        lo, hi = float(rng.uniform(*cfg.highpass_hz)), float(rng.uniform(*cfg.lowpass_hz))
        sos = signal.butter(4, [lo, hi], btype="bandpass", fs=SAMPLE_RATE, output="sos")
        x = signal.sosfilt(sos, x)
        info["band"] = [round(lo), round(hi)]
    if rng.random() < cfg.p_noise:
        kinds = ["white", "pink", "brown", "hum"] + (["babble", "babble"] if babble_pool else [])
        kind = str(rng.choice(kinds))
        noise = _babble(len(x), babble_pool, rng) if kind == "babble" else _colored_noise(len(x), kind, rng)
        snr = float(rng.uniform(*cfg.snr_db))
        x = x + noise * (_rms(x) / (_rms(noise) * 10 ** (snr / 20)))
        info["noise"] = kind
        info["snr_db"] = round(snr, 1)
    gain = float(rng.uniform(*cfg.gain_db))
    x = x * (10 ** ((gain - 20.0) / 20) / _rms(x))
    info["gain_db"] = round(gain, 1)
    return add_noise_floor(x, rng, cfg.floor_dbfs), info
