"""The log-mel front end, its torch twin, int8 quantization, normalization and the C test vectors."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eeasr.features import (
    FeatureConfig,
    NormAccumulator,
    NormStats,
    StreamingLogMel,
    dequantize_int8,
    hann_window,
    log_mel,
    mel_filterbank,
    num_frames,
    quantize_int8,
    requantize_int8,
)
from eeasr.testvectors import feature_cases, read_feature_vectors, write_feature_vectors
from eeasr.train.features_torch import LogMel

CFG = FeatureConfig()
FLOOR = np.float32(np.log(1e-10))
FAST = settings(max_examples=40, deadline=None)

SIGNALS = {c.name: c.samples for c in feature_cases(CFG)}


def test_shared_modules_import_no_torch() -> None:
    code = "import sys, eeasr.features, eeasr.testvectors; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- config -------------------------------------------------------------------------------------------------

def test_config_round_trip_and_hash() -> None:
    d = json.loads(json.dumps(CFG.to_dict()))
    assert FeatureConfig.from_dict(d) == CFG
    assert FeatureConfig.from_dict({**d, "sample_rate": 16000.0}) == CFG
    assert CFG.hash() == "5bdbfeb587617ab3"  # pinned: a change invalidates every stored artifact
    assert FeatureConfig(n_mels=64).hash() != CFG.hash()
    with pytest.raises(ValueError):
        FeatureConfig.from_dict({**d, "dither": 0.0})
    with pytest.raises(ValueError):
        FeatureConfig.from_dict({k: v for k, v in d.items() if k != "f_max"})
    with pytest.raises(ValueError):
        FeatureConfig(f_max=9000.0)


# --- the numpy reference ------------------------------------------------------------------------------------

def test_hann_window_is_periodic() -> None:
    w = hann_window(CFG)
    n = np.arange(400)
    assert w.dtype == np.float32 and w.shape == (400,)
    np.testing.assert_allclose(w, 0.5 - 0.5 * np.cos(2 * np.pi * n / 400), atol=1e-7)
    assert w[0] == 0 and w[200] == 1 and np.array_equal(w[1:200], w[399:200:-1])
    assert np.array_equal(hann_window(CFG, np.float64), 0.5 - 0.5 * np.cos(2 * np.pi * n / 400))


def _torchaudio_htk_fbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sr: int) -> np.ndarray:
    """melscale_fbanks(norm=None, mel_scale="htk") written out filter by filter, bin by bin."""
    import math

    def hz_to_mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def mel_to_hz(m: float) -> float:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    lo_mel, hi_mel = hz_to_mel(f_min), hz_to_mel(f_max)
    edges = [mel_to_hz(lo_mel + (hi_mel - lo_mel) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    fb = np.zeros((n_freqs, n_mels))
    for m in range(n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        for k in range(n_freqs):
            f = (sr // 2) * k / (n_freqs - 1)
            if left <= f <= centre:
                fb[k, m] = (f - left) / (centre - left)
            elif centre < f <= right:
                fb[k, m] = (right - f) / (right - centre)
    return fb


def test_filterbank_matches_torchaudio_formula() -> None:
    fb = mel_filterbank(CFG)
    assert fb.shape == (257, 80) and fb.dtype == np.float32
    expected = _torchaudio_htk_fbank(257, 20.0, 7600.0, 80, 16000)
    np.testing.assert_allclose(fb, expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(mel_filterbank(CFG, np.float64), expected, rtol=0, atol=1e-12)
    assert (fb.max(axis=0) > 0.4).all() and fb.max() <= 1.0  # every filter sees at least one bin


@pytest.mark.parametrize("n,expected", [(0, 0), (1, 0), (399, 0), (400, 1), (559, 1), (560, 2), (16000, 98)])
def test_frame_count_rule(n: int, expected: int) -> None:
    assert num_frames(n, CFG) == expected
    assert log_mel(np.zeros(n, dtype=np.int16), CFG).shape == (expected, 80)


def test_log_mel_matches_explicit_dft() -> None:
    pcm = SIGNALS["speech_like_am"]
    feats = log_mel(pcm, CFG)
    x = pcm.astype(np.float64) / 32768
    n = np.arange(400)
    # Zero padding at the end: the 512-point DFT of the padded frame sums over the first 400 samples only.
    dft = np.exp(-2j * np.pi * np.outer(np.arange(257), n) / 512)
    fb = _torchaudio_htk_fbank(257, 20.0, 7600.0, 80, 16000)
    for i in (0, 1, 57, feats.shape[0] - 1):
        frame = x[160 * i:160 * i + 400] * (0.5 - 0.5 * np.cos(2 * np.pi * n / 400))
        power = np.abs(dft @ frame) ** 2
        expected = np.log(np.maximum(power @ fb, 1e-10))
        np.testing.assert_allclose(feats[i], expected, rtol=1e-7, atol=1e-7)  # float32 output rounding


def test_frame_i_covers_samples_160i_to_160i_plus_400() -> None:
    for pos in (1, 159, 160, 399, 400, 1000):
        pcm = np.zeros(2000, dtype=np.int16)
        pcm[pos] = 20000
        lit = np.flatnonzero((log_mel(pcm, CFG) > FLOOR).any(axis=1))
        expected = [i for i in range(num_frames(2000)) if 160 * i < pos < 160 * i + 400]  # w[0] = 0
        assert lit.tolist() == expected, pos


def test_int16_and_float_input_agree_and_bad_input_is_rejected() -> None:
    pcm = SIGNALS["loud_chirp_tones"]
    assert np.array_equal(log_mel(pcm, CFG), log_mel(pcm.astype(np.float32) / 32768, CFG))
    with pytest.raises(TypeError):
        log_mel(pcm.astype(np.int32), CFG)
    with pytest.raises(ValueError):
        log_mel(np.zeros((2, 800), dtype=np.int16), CFG)


def test_digital_zeros_sit_on_the_log_floor() -> None:
    feats = log_mel(np.zeros(1600, dtype=np.int16), CFG)
    assert feats.dtype == np.float32 and (feats == FLOOR).all()


@FAST
@given(n=st.integers(0, 3000), seed=st.integers(0, 2**31 - 1), cuts=st.lists(st.integers(0, 3000), max_size=12))
def test_streaming_equals_batch_for_any_chunking(n: int, seed: int, cuts: list[int]) -> None:
    pcm = np.random.default_rng(seed).integers(-32768, 32768, n).astype(np.int16)
    stream = StreamingLogMel(CFG)
    bounds = [0, *sorted(c for c in cuts if c <= n), n]
    frames = [stream.push(pcm[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    assert np.array_equal(np.concatenate(frames), log_mel(pcm, CFG))


def test_streaming_reset_starts_a_new_utterance() -> None:
    pcm = SIGNALS["speech_like_am"]
    stream = StreamingLogMel(CFG)
    stream.push(pcm[:1234])
    stream.reset()
    assert np.array_equal(stream.push(pcm), log_mel(pcm, CFG))
    with pytest.raises(TypeError):
        stream.push(pcm.astype(np.float32))


# --- torch LogMel -------------------------------------------------------------------------------------------

def _torch_batch() -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor]:
    clips = [SIGNALS["loud_chirp_tones"], SIGNALS["near_silent_lsb"], SIGNALS["speech_like_am"][:5000],
             SIGNALS["digital_zeros"], SIGNALS["short_clip"][:300]]
    n_max = max(c.size for c in clips) + 77
    # Loud garbage in the padding: valid frames must not see it.
    wave = np.random.default_rng(9).uniform(-1, 1, (len(clips), n_max)).astype(np.float32)
    for b, c in enumerate(clips):
        wave[b, :c.size] = c.astype(np.float32) / 32768
    return clips, torch.from_numpy(wave), torch.tensor([c.size for c in clips])


def test_torch_logmel_float64_equals_reference() -> None:
    clips, wave, lengths = _torch_batch()
    feats, n_frames = LogMel(CFG, compute_dtype=torch.float64)(wave, lengths)
    assert feats.dtype == torch.float32 and feats.shape == (5, num_frames(wave.shape[1]), 80)
    for b, clip in enumerate(clips):
        ref = log_mel(clip, CFG)
        assert int(n_frames[b]) == ref.shape[0]
        np.testing.assert_allclose(feats[b, :ref.shape[0]].numpy(), ref, rtol=1e-6, atol=1e-6)
        assert (feats[b, ref.shape[0]:] == 0).all()


def test_torch_logmel_float32_within_float32_resolution() -> None:
    """Tolerances, in nepers of log energy, judged against the log floor and float32's dynamic range.

    - within 60 dB of the frame's loudest bin: |diff| < 1e-3;
    - where the reference clamps to the floor, float32 clamps too: |diff| < 1e-5;
    - everywhere, the energies differ by less than 1e-5 of the frame's loudest (float32 FFT rounding).
    """
    clips, wave, lengths = _torch_batch()
    feats, n_frames = LogMel(CFG, pad_value=-5.0)(wave, lengths)
    floor_seen = False
    for b, clip in enumerate(clips):
        ref = log_mel(clip, CFG).astype(np.float64)
        got = feats[b, :ref.shape[0]].numpy().astype(np.float64)
        assert int(n_frames[b]) == ref.shape[0] and (feats[b, ref.shape[0]:] == -5.0).all()
        if ref.size == 0:
            continue
        loudest = ref.max(axis=1, keepdims=True)
        diff = np.abs(got - ref)
        assert diff[ref > loudest - 6 * np.log(10)].max() < 1e-3
        at_floor = ref == FLOOR
        floor_seen |= bool(at_floor.any())
        assert diff[at_floor].max(initial=0) < 1e-5
        assert (np.abs(np.exp(got) - np.exp(ref)) / np.exp(loudest)).max() < 1e-5
    assert floor_seen


def test_torch_logmel_ignores_autocast() -> None:
    clips, wave, lengths = _torch_batch()
    model = LogMel(CFG)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, _ = model(wave, lengths)
    assert torch.equal(feats, model(wave, lengths)[0])


# --- int8 quantization --------------------------------------------------------------------------------------

def test_quantize_ties_round_half_away_from_zero() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, -0.49999997], dtype=np.float32)
    assert quantize_int8(x, 1.0, 0).tolist() == [1, 2, 3, -1, -2, -3, 0, 0]
    assert np.round(x[:6]).tolist() == [0, 2, 2, 0, -2, -2]  # what banker's rounding would have given
    assert quantize_int8(x[:3], 1.0, -10).tolist() == [-9, -8, -7]  # round first, then add the zero point


def test_quantize_clamps() -> None:
    x = np.array([1e3, -1e3, np.inf, -np.inf, 1e38], dtype=np.float32)
    assert quantize_int8(x, 0.5, 3).tolist() == [127, -128, 127, -128, 127]
    assert quantize_int8(np.array([125.0]), 1.0, 2).tolist() == [127]
    assert quantize_int8(np.array([126.0]), 1.0, 2).tolist() == [127]


def test_quantize_divides_in_float32() -> None:
    # Exactly 1.5 in float32 but 1.49999994... in float64: TFLite gives 2, a float64 divide 1.
    x, scale = 0.10098982602357864, 0.06732655316591263
    assert x / scale < 1.5 and np.float32(x) / np.float32(scale) == np.float32(1.5)
    assert quantize_int8(np.array([x]), scale, 0).tolist() == [2]
    # Input is cast to float32 first: 2.4999999999 becomes 2.5, a tie, rounded away from zero.
    assert quantize_int8(np.array([2.4999999999]), 1.0, 0).tolist() == [3]


def test_quantize_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        quantize_int8(np.array([np.nan]), 1.0, 0)
    with pytest.raises(ValueError):
        quantize_int8(np.array([1.0]), 0.0, 0)
    with pytest.raises(ValueError):
        quantize_int8(np.array([1.0]), 1.0, 128)


def _tflite_reference(x: float, scale: float, zp: int) -> int:
    y = float(np.float32(x) / np.float32(scale))
    rounded = int(Decimal(y).quantize(Decimal(1), rounding=ROUND_HALF_UP))  # ties away from zero
    return min(127, max(-128, rounded + zp))


@FAST
@given(x=st.floats(-300, 300, width=32), scale=st.floats(2**-10, 4, width=32), zp=st.integers(-128, 127))
def test_quantize_matches_decimal_reference(x: float, scale: float, zp: int) -> None:
    assert int(quantize_int8(np.array([x]), scale, zp)[0]) == _tflite_reference(x, scale, zp)


def test_dequantize() -> None:
    q = np.array([-128, -3, 0, 127], dtype=np.int8)
    out = dequantize_int8(q, 0.25, -3)
    assert out.dtype == np.float32 and out.tolist() == [-31.25, 0.0, 0.75, 32.5]
    with pytest.raises(TypeError):
        dequantize_int8(q.astype(np.int32), 0.25, -3)


ALL_INT8 = np.arange(-128, 128).astype(np.int8)


def test_requantize_identity_ties_and_clamp() -> None:
    assert np.array_equal(requantize_int8(ALL_INT8, 0.0371, 7, 0.0371, 7), ALL_INT8)
    q = np.array([5, -5, 3, -3], dtype=np.int8)
    assert requantize_int8(q, 1.0, 0, 2.0, 0).tolist() == [3, -3, 2, -2]
    assert requantize_int8(np.array([100, -100], dtype=np.int8), 1.0, 0, 0.5, 0).tolist() == [127, -128]


@FAST
@given(in_scale=st.floats(2**-10, 1, width=32),
       out_scale=st.floats(2**-10, 1, width=32),
       in_zp=st.integers(-128, 127), out_zp=st.integers(-128, 127))
def test_requantize_is_float32_dequantize_then_quantize(in_scale: float, out_scale: float, in_zp: int,
                                                         out_zp: int) -> None:
    got = requantize_int8(ALL_INT8, in_scale, in_zp, out_scale, out_zp)
    real = (ALL_INT8.astype(np.float32) - np.float32(in_zp)) * np.float32(in_scale)
    expected = [_tflite_reference(v, out_scale, out_zp) for v in real.tolist()]
    assert got.tolist() == expected
    ideal = np.clip(np.round((ALL_INT8.astype(np.float64) - in_zp) * in_scale / out_scale) + out_zp, -128, 127)
    assert np.abs(got - ideal).max() <= 1


# --- normalization ------------------------------------------------------------------------------------------

def test_accumulator_matches_numpy_mean_std() -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.normal(-8, 3, (n, 80)) for n in (5, 0, 130, 1, 64)]
    for c in chunks:
        c[:, 7] = -23.0  # a constant bin: its std is floored, not zero
    acc = NormAccumulator(80)
    for c in chunks:
        acc.update(c)
    stats = acc.result()
    every = np.concatenate(chunks)
    assert acc.count == every.shape[0]
    np.testing.assert_allclose(stats.mean, every.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats.std, np.maximum(every.std(axis=0), 1e-5), rtol=1e-6)
    assert stats.std[7] == np.float32(1e-5)
    with pytest.raises(ValueError):
        NormAccumulator(80).result()
    with pytest.raises(ValueError):
        acc.update(np.zeros((3, 40)))


def test_accumulator_states_merge_like_one_pass() -> None:
    rng = np.random.default_rng(2)
    chunks = [rng.normal(-5, 2, (n, 80)) for n in (40, 7, 300)]
    one, merged = NormAccumulator(80), NormAccumulator(80)
    for c in chunks:
        one.update(c)
        worker = NormAccumulator(80)
        worker.update(c)
        merged.merge_state(worker.state())
    merged.merge_state(NormAccumulator(80).state())  # an idle worker contributes nothing
    assert merged.count == one.count
    np.testing.assert_allclose(merged.result().mean, one.result().mean, rtol=1e-6)
    np.testing.assert_allclose(merged.result().std, one.result().std, rtol=1e-6)


def test_norm_stats_round_trip_and_apply(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    stats = NormStats(mean=rng.normal(size=80), std=rng.uniform(0.5, 4, 80))
    again = NormStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert np.array_equal(again.mean, stats.mean) and np.array_equal(again.std, stats.std)
    stats.save(tmp_path / "norm.json")
    loaded = NormStats.load(tmp_path / "norm.json")
    assert np.array_equal(loaded.mean, stats.mean) and np.array_equal(loaded.std, stats.std)
    feats = rng.normal(size=(10, 80)).astype(np.float32)
    out = stats.apply(feats)
    assert out.dtype == np.float32 and np.array_equal(out, (feats - stats.mean) / stats.std)
    with pytest.raises(ValueError):
        NormStats(mean=np.zeros(80), std=np.zeros(80))


# --- C test vectors -----------------------------------------------------------------------------------------

def test_vectors_round_trip_and_contents(tmp_path: Path) -> None:
    path = tmp_path / "features.bin"
    written = write_feature_vectors(path, CFG)
    cfg, cases = read_feature_vectors(path)
    assert cfg == CFG and path.read_bytes()[:4] == b"EEFV"
    assert [c.name for c in cases] == ["loud_chirp_tones", "near_silent_lsb", "digital_zeros", "short_clip",
                                       "one_frame", "speech_like_am", "rounding_ties"]
    for w, c in zip(written, cases):
        assert np.array_equal(w.samples, c.samples) and c.samples.dtype == np.int16
        assert np.array_equal(c.log_mel, log_mel(c.samples, CFG))
        assert np.array_equal(w.norm.mean, c.norm.mean) and np.array_equal(w.norm.std, c.norm.std)
        assert (w.scale, w.zero_point) == (c.scale, c.zero_point)
        assert np.array_equal(c.quantized, quantize_int8(c.norm.apply(c.log_mel), c.scale, c.zero_point))
    by_name = {c.name: c for c in cases}
    assert by_name["short_clip"].log_mel.shape == (0, 80)
    assert (by_name["digital_zeros"].log_mel == FLOOR).all()
    silent = by_name["near_silent_lsb"].log_mel
    assert (silent == FLOOR).any() and (silent > FLOOR).any()
    loud = by_name["loud_chirp_tones"]
    assert loud.samples.min() == -32768 and loud.samples.max() == 32767
    assert (loud.quantized == 127).any() and (loud.quantized == -128).any()


def test_vectors_rounding_ties_case_separates_rounding_rules() -> None:
    case = next(c for c in feature_cases(CFG) if c.name == "rounding_ties")
    y = case.norm.apply(case.log_mel) / np.float32(case.scale)
    assert (np.abs(y - np.trunc(y)) == 0.5).all()
    half_even = np.clip(np.round(y) + case.zero_point, -128, 127)
    assert (case.quantized != half_even).mean() > 0.25


def test_vectors_reader_rejects_damaged_files(tmp_path: Path) -> None:
    path = tmp_path / "features.bin"
    write_feature_vectors(path, CFG)
    data = path.read_bytes()
    for damaged in (b"XXXX" + data[4:], data[:-1], data + b"\0"):
        path.write_bytes(damaged)
        with pytest.raises(ValueError):
            read_feature_vectors(path)
