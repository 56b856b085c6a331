"""Waveform augmentation: each effect measured on its own, with every other effect switched off."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from math import erf, sqrt

import numpy as np
import pytest
from scipy import signal

from eeasr.train.data.augment import AugmentConfig, add_noise_floor, augment, utterance_rng

SR = 16000
OFF = AugmentConfig(p_noise=0.0, p_reverb=0.0, p_bandlimit=0.0, p_speed=0.0)


def only(**changes) -> AugmentConfig:
    """The config with every random effect off except those given."""
    return dataclasses.replace(OFF, **changes)


def speechlike(n: int, seed: int = 0) -> np.ndarray:
    """A voiced, amplitude-modulated harmonic signal with a gliding pitch, in float [-1, 1)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = 110.0 + 30.0 * seed + 20.0 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase + rng.uniform(0, 6.3)) / k for k in range(1, 25))
    envelope = 0.3 + 0.7 * np.sin(2 * np.pi * 2.5 * t) ** 2
    return 0.2 * voiced * envelope / np.max(np.abs(voiced))


def db(x: float) -> float:
    return 10 * np.log10(x)


def rms_dbfs(pcm: np.ndarray) -> float:
    x = pcm.astype(np.float64) / 32768.0
    return 20 * np.log10(np.sqrt(np.mean(x**2)))


def longest_run(mask: np.ndarray) -> int:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((ends - starts).max()) if len(starts) else 0


# --- noise floor -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("copy", range(6))
def test_noise_floor_turns_digital_silence_into_noise_at_a_level_in_range(copy: int):
    lo, hi = AugmentConfig.floor_dbfs
    out = add_noise_floor(np.zeros(32000), utterance_rng("silence", copy))
    assert out.dtype == np.int16 and out.shape == (32000,)
    level = rms_dbfs(out)
    # Rounding to int16 adds 1/12 LSB^2 of quantization noise: +0.35 dB at worst at -90 dBFS (1 LSB RMS).
    assert lo - 0.1 <= level <= hi + 0.4, level
    # -90 dBFS is ~1 LSB RMS, so single zero samples are common (~37% there); what must never appear is
    # digital silence, a run of zeros. A run of 16 has probability < 1e-7 per sample even at -90 dBFS.
    assert longest_run(out == 0) < 16
    # The zeros are exactly those of rounded Gaussian noise of the measured RMS: P(|N(0, s)| < 0.5 LSB).
    sigma = np.sqrt(np.mean(out.astype(np.float64) ** 2) - 1 / 12)
    expected = erf(0.5 / (sigma * sqrt(2)))
    assert abs(np.mean(out == 0) - expected) < 0.02


@pytest.mark.parametrize("level", [-80.0, -66.0, -50.0])
def test_noise_floor_hits_a_fixed_level_and_leaves_no_zeros_when_loud(level: float):
    out = add_noise_floor(np.zeros(48000), utterance_rng("silence", 0), (level, level))
    assert out.dtype == np.int16
    assert abs(rms_dbfs(out) - level) < 0.2
    if level >= -50.0:  # ~103 LSB RMS: well under 1% of samples round to zero
        assert np.mean(out == 0) < 0.01


def test_noise_floor_is_added_to_the_signal_not_replacing_it():
    x = speechlike(16000)
    out = add_noise_floor(x, utterance_rng("u", 0), (-70.0, -70.0))
    residual = out / 32768.0 - x
    assert abs(20 * np.log10(np.sqrt(np.mean(residual**2))) - (-70.0)) < 0.5


# --- determinism -----------------------------------------------------------------------------------------


def test_same_utterance_and_copy_give_identical_output_and_others_differ():
    x = speechlike(24000)
    pool = [speechlike(20000, seed=s) for s in (1, 2, 3)]
    a, info_a = augment(x, utterance_rng("spk1/utt7", 1), AugmentConfig(), pool)
    b, info_b = augment(x, utterance_rng("spk1/utt7", 1), AugmentConfig(), pool)
    assert np.array_equal(a, b) and info_a == info_b
    for other in (utterance_rng("spk1/utt7", 2), utterance_rng("spk1/utt8", 1)):
        c, _ = augment(x, other, AugmentConfig(), pool)
        assert len(c) != len(a) or not np.array_equal(a, c)


def test_utterance_rng_is_stable_across_processes():
    """The seed comes from sha256, not Python's salted hash(): another interpreter draws the same numbers."""
    here = utterance_rng("spk1/utt7", 3).integers(0, 2**62, size=4).tolist()
    code = ("from eeasr.train.data.augment import utterance_rng;"
            "print(utterance_rng('spk1/utt7', 3).integers(0, 2**62, size=4).tolist())")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == str(here)


# --- additive noise at an SNR ----------------------------------------------------------------------------


def measured_snr(out: np.ndarray, clean: np.ndarray) -> float:
    """Project the output on the clean signal: y = a s + r; the SNR is |a s|^2 / |r|^2."""
    y = out.astype(np.float64) / 32768.0
    a = float(y @ clean / (clean @ clean))
    residual = y - a * clean
    return db(np.sum((a * clean) ** 2) / np.sum(residual**2))


def test_noise_is_added_at_the_recorded_snr_for_every_synthetic_kind():
    clean = speechlike(32000)
    cfg = only(p_noise=1.0, gain_db=(-6.0, -6.0))  # -26 dBFS: no clipping, floor >= 40 dB below the noise
    seen = set()
    for copy in range(40):
        out, info = augment(clean, utterance_rng("snr", copy), cfg)
        assert set(info) == {"noise", "snr_db", "gain_db"}
        assert info["noise"] in {"white", "pink", "brown", "hum"}
        lo, hi = cfg.snr_db
        assert lo <= info["snr_db"] <= hi
        assert measured_snr(out, clean) == pytest.approx(info["snr_db"], abs=1.0), info
        seen.add(info["noise"])
    assert {"white", "pink"} <= seen


def test_noise_snr_holds_in_the_band_the_features_see():
    """The log-mel front end sees 20-7600 Hz. Noise power below 20 Hz (DC, sub-audio drift) would count towards the
    SNR without masking any speech, so the effective SNR would be higher than recorded: it must not be."""
    clean = speechlike(32000)
    cfg = only(p_noise=1.0, gain_db=(-6.0, -6.0))
    band = signal.butter(8, [20.0, 7600.0], btype="bandpass", fs=SR, output="sos")
    seen = set()
    for copy in range(40):
        out, info = augment(clean, utterance_rng("snr", copy), cfg)
        y = out.astype(np.float64) / 32768.0
        a = float(y @ clean / (clean @ clean))
        s_band = signal.sosfiltfilt(band, a * clean)
        r_band = signal.sosfiltfilt(band, y - a * clean)
        snr = db(np.sum(s_band**2) / np.sum(r_band**2))
        assert snr == pytest.approx(info["snr_db"], abs=1.0), info
        seen.add(info["noise"])
    assert seen == {"white", "pink", "brown", "hum"}


def test_babble_is_added_at_the_recorded_snr():
    clean = speechlike(32000)
    # Other talkers: independent of the clean signal (different pitch and phases), so the projection holds.
    pool = [speechlike(n, seed=s) for s, n in ((1, 20000), (2, 40000), (3, 30000), (4, 25000))]
    cfg = only(p_noise=1.0, gain_db=(-6.0, -6.0))
    babble = 0
    for copy in range(30):
        out, info = augment(clean, utterance_rng("babble", copy), cfg, pool)
        if info["noise"] == "babble":
            babble += 1
            assert measured_snr(out, clean) == pytest.approx(info["snr_db"], abs=1.5), info
    assert babble >= 5  # babble is drawn 2 times in 6 when a pool is given


def test_noise_spectra_have_their_colour():
    """White is flat, pink falls ~3 dB/octave, brown ~6 dB/octave: compare 500 Hz and 4 kHz octave bands."""
    clean = speechlike(64000)
    cfg = only(p_noise=1.0, snr_db=(-30.0, -30.0), gain_db=(-6.0, -6.0))  # noise 30 dB above the signal
    slopes: dict[str, list[float]] = {}
    for copy in range(30):
        out, info = augment(clean, utterance_rng("colour", copy), cfg)
        f, p = signal.welch(out.astype(np.float64), SR, nperseg=2048)
        band = lambda c: p[(f >= c / np.sqrt(2)) & (f < c * np.sqrt(2))].mean()  # noqa: E731
        slopes.setdefault(info["noise"], []).append(db(band(4000.0) / band(500.0)) / 3)  # dB per octave
    expected = {"white": 0.0, "pink": -3.0, "brown": -6.0}
    for kind, want in expected.items():
        if kind in slopes:
            assert np.mean(slopes[kind]) == pytest.approx(want, abs=1.0), (kind, slopes[kind])
    assert {"white", "pink"} <= set(slopes)


# --- speed -----------------------------------------------------------------------------------------------


def test_speed_changes_length_by_the_recorded_factor():
    x = speechlike(24000)
    lo, hi = AugmentConfig.speed
    for copy in range(8):
        out, info = augment(x, utterance_rng("speed", copy), only(p_speed=1.0))
        assert set(info) == {"speed", "gain_db"}
        factor = info["speed"]
        assert lo <= factor <= hi
        # info["speed"] is rounded to 3 decimals: that alone moves len / factor by up to len * 5e-4 / factor^2.
        slack = len(x) * 5e-4 / factor**2 + 2
        assert abs(len(out) - len(x) / factor) <= slack, info


def test_speed_scales_pitch_by_the_factor():
    """Kaldi-style speed perturbation: tempo and pitch move together, so a 1 kHz tone moves to 1 kHz * factor."""
    x = 0.3 * np.sin(2 * np.pi * 1000.0 * np.arange(32000) / SR)
    out, info = augment(x, utterance_rng("pitch", 0), only(p_speed=1.0, speed=(1.08, 1.08)))
    spec = np.abs(np.fft.rfft(out.astype(np.float64) * np.hanning(len(out))))
    peak_hz = np.argmax(spec) * SR / len(out)
    assert peak_hz == pytest.approx(1000.0 * info["speed"], abs=2.0)


# --- band-limiting ---------------------------------------------------------------------------------------


def test_band_limiting_removes_energy_above_the_low_pass_cutoff():
    x = 0.1 * np.random.default_rng(0).normal(size=48000)
    for copy in range(10):
        out, info = augment(x, utterance_rng("band", copy), only(p_bandlimit=1.0))
        assert set(info) == {"band", "gain_db"}
        lo, hi = info["band"]
        assert AugmentConfig.highpass_hz[0] - 1 <= lo <= AugmentConfig.highpass_hz[1] + 1
        assert AugmentConfig.lowpass_hz[0] - 1 <= hi <= AugmentConfig.lowpass_hz[1] + 1
        f, p_in = signal.welch(x, SR, nperseg=1024)
        _, p_out = signal.welch(out.astype(np.float64) / 32768.0, SR, nperseg=1024)

        def stop_to_pass(p: np.ndarray, stop: np.ndarray) -> float:
            return p[stop].sum() / p[(f >= 2 * lo) & (f <= hi / 1.5)].sum()  # gain-free: a ratio

        # A 4th-order Butterworth edge: -3 dB at the cutoff, ~-24 dB an octave on (bilinear-warped, so the
        # roll-off steepens towards Nyquist). Measure from a quarter of the way between the cutoff and Nyquist
        # or 1.25 x the cutoff, whichever is lower; the band right at the cutoff only loses ~12 dB.
        start = min(1.25 * hi, hi + (SR / 2 - hi) / 4)
        stop = (f >= start) & (f < SR / 2)
        drop = db(stop_to_pass(p_out, stop) / stop_to_pass(p_in, stop))
        assert drop < -20.0, (info, drop)
        # Below the high-pass cutoff as well (an octave under it).
        low = (f > 0) & (f <= lo / 2)
        if low.any():
            assert db(stop_to_pass(p_out, low) / stop_to_pass(p_in, low)) < -20.0, info


# --- reverberation ---------------------------------------------------------------------------------------


def test_reverb_keeps_length_and_adds_a_tail_decaying_at_the_recorded_rt60():
    n, at = 24000, 800
    x = np.zeros(n)
    x[at], x[at + 1] = 0.5, -0.25  # a click
    # Low gain keeps the click unclipped; a floor at -100 dBFS leaves ~45 dB of visible decay.
    cfg = only(p_reverb=1.0, gain_db=(-30.0, -30.0), floor_dbfs=(-100.0, -100.0))
    win = 160  # 10 ms
    for copy in range(6):
        out, info = augment(x, utterance_rng("room", copy), cfg)
        assert set(info) == {"rt60", "gain_db"} and len(out) == n
        rt60 = info["rt60"]
        assert AugmentConfig.rt60_s[0] <= rt60 <= AugmentConfig.rt60_s[1]
        y = out.astype(np.float64) / 32768.0
        assert np.max(np.abs(y)) < 0.99  # the click itself is not clipped
        floor = db(np.mean(y[: at - 10] ** 2))
        start = at + 2 + int(0.002 * SR)  # after the click and the 2 ms before the first reflection
        m = (n - start) // win
        energy = np.array([db(np.mean(w**2) + 1e-30) for w in y[start:start + m * win].reshape(m, win)])
        # Non-zero: the first 10 ms after the click are far above the floor (the dry input is silent there).
        assert energy[0] > floor + 30.0, (info, energy[:3], floor)
        # Decaying: fit dB against time over the windows still 10 dB above the floor; -60 dB takes rt60.
        above = np.flatnonzero(energy < floor + 10.0)
        k = int(above[0]) if len(above) else m
        assert k >= 5
        slope = np.polyfit(np.arange(k) * win / SR, energy[:k], 1)[0]
        assert slope < 0 and -60.0 / slope == pytest.approx(rt60, rel=0.15), (info, slope)
        # And it ends: the impulse response lasts at most 1.2 rt60, then only the floor remains.
        end = at + int(1.2 * rt60 * SR) + win
        assert db(np.mean(y[end:] ** 2)) < floor + 3.0


def test_reverb_preserves_a_dry_signal_component():
    """The direct path has unit gain: the output still correlates strongly with the dry input."""
    x = speechlike(32000)
    out, info = augment(x, utterance_rng("room", 0), only(p_reverb=1.0, gain_db=(-6.0, -6.0)))
    y = out.astype(np.float64)
    assert "rt60" in info and len(y) == len(x)
    assert np.corrcoef(x, y)[0, 1] > 0.7


# --- gain and clipping -----------------------------------------------------------------------------------


def test_gain_sets_the_rms_level():
    x = speechlike(32000)
    for gain in (-20.0, -10.0, 0.0):
        out, info = augment(x, utterance_rng("gain", 0), only(gain_db=(gain, gain)))
        assert info == {"gain_db": gain}
        # The signal is set to -20 dBFS RMS and then gets the gain; the floor is >= 26 dB below that.
        assert rms_dbfs(out) == pytest.approx(gain - 20.0, abs=0.05)


def test_loud_gain_saturates_like_an_adc_instead_of_wrapping():
    x = np.zeros(16000)
    x[::2000] = 0.5  # sparse clicks: at -14 dBFS RMS their peaks are far above full scale
    x[1000::2000] = -0.5
    out, _ = augment(x, utterance_rng("clip", 0), only(gain_db=(6.0, 6.0)))
    assert out.dtype == np.int16
    assert np.all(out[::2000] == 32767) and np.all(out[1000::2000] == -32768)


def test_every_effect_at_once_stays_in_int16_range():
    x = speechlike(24000)
    pool = [speechlike(16000, seed=s) for s in (1, 2)]
    loud = AugmentConfig(p_noise=1.0, p_reverb=1.0, p_bandlimit=1.0, p_speed=1.0, gain_db=(6.0, 6.0))
    for copy in range(6):
        for cfg in (AugmentConfig(), loud):
            out, info = augment(x.astype(np.float32), utterance_rng("all", copy), cfg, pool)
            assert out.dtype == np.int16 and out.ndim == 1
            assert np.isfinite(out.astype(np.float64)).all()
            assert abs(len(out) - len(x) / info.get("speed", 1.0)) <= 20
            assert np.std(out.astype(np.float64)) > 0
            # +6 dB on a -20 dBFS signal clips its peaks, but only a small fraction of the samples.
            assert np.mean(np.abs(out.astype(np.int32)) >= 32767) < 0.05
            if cfg is loud:
                assert set(info) == {"speed", "rt60", "band", "noise", "snr_db", "gain_db"}


def test_silent_input_gives_finite_output():
    """All-zero input (a silent file) must not produce NaN through the RMS normalization."""
    for cfg in (AugmentConfig(), AugmentConfig(p_noise=1.0, p_reverb=1.0, p_bandlimit=1.0, p_speed=1.0)):
        out, _ = augment(np.zeros(8000), utterance_rng("zeros", 1), cfg)
        assert out.dtype == np.int16
        assert rms_dbfs(out) < -10.0
