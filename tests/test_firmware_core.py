"""The firmware's portable C core (firmware/components/eeasr_core) against the Python reference.

`make firmware-check` builds it natively with gcc and runs its sanitizer unit tests and the test vectors; the
rest compares the C code, through eeasr.host.ccore, with eeasr.features, eeasr.exits and eeasr.bundle on
random and recorded audio and random logits. Tolerances are those of docs/features.md for a float32 front
end; everything int8 is compared exactly, except end-to-end features at rounding ties.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from eeasr.bundle import QParams, requantize
from eeasr.exits import frame_entropy, greedy_ctc, log_softmax, nonblank_entropy
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
from eeasr.host import ccore
from eeasr.testvectors import feature_cases

ROOT = Path(__file__).resolve().parents[1]
REAL = Path("/usr/share/pocketsphinx/test/data")  # Debian pocketsphinx-testdata (make apt-deps)
FLOOR = np.float32(np.log(1e-10))
SYNTHETIC = {c.name: c.samples for c in feature_cases()}


def _real_clips() -> dict[str, np.ndarray]:
    clips = {"goforward": np.fromfile(REAL / "goforward.raw", "<i2")}
    for path in [*sorted(REAL.glob("librivox/*.wav"))[:2], *sorted(REAL.glob("cards/*.wav"))[:2]]:
        clips[path.stem] = sf.read(path, dtype="int16")[0]
    return clips


REAL_CLIPS = _real_clips()


def _noise(level: float, n: int = 16000, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(n) * level
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def _speech_norm() -> NormStats:
    acc = NormAccumulator()
    acc.update(log_mel(SYNTHETIC["speech_like_am"]))
    return acc.result()


def _check_logmel(got: np.ndarray, ref: np.ndarray) -> float:
    """docs/features.md tolerances for float32; returns the largest |dL| anywhere."""
    assert got.shape == ref.shape and got.dtype == np.float32
    if ref.size == 0:
        return 0.0
    ref = ref.astype(np.float64)
    diff = np.abs(got - ref)
    loudest = ref.max(axis=1, keepdims=True)
    assert diff[ref > loudest - 6 * np.log(10)].max() < 1e-3  # within 60 dB of the frame's loudest bin
    assert diff[ref == FLOOR].max(initial=0) < 1e-5
    assert (np.abs(np.exp(got) - np.exp(ref)) / np.exp(loudest)).max() < 1e-5
    return float(diff.max())


# --- the native build ----------------------------------------------------------------------------------------

def test_make_firmware_check_passes() -> None:
    """The top-level target CI runs: unit tests under ASan/UBSan and the vectors of `eeasr-data vectors`."""
    proc = subprocess.run(["make", "-C", str(ROOT), "firmware-check", f"VENV={sys.prefix}"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "0 failed" in proc.stdout and "vector check: passed" in proc.stdout
    assert "int8 from the stored log-mel: 0 differ" in proc.stdout


def test_unit_tests_are_built_with_sanitizers() -> None:
    proc = subprocess.run(["make", "-C", str(ccore.NATIVE), "unit"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert ", 0 failed" in proc.stdout
    binary = (ccore.NATIVE / "build" / "unit_tests").read_bytes()
    assert b"__asan_init" in binary and b"__ubsan_handle" in binary


def test_binding_imports_no_torch_or_tensorflow() -> None:
    code = ("import sys, numpy as np; from eeasr.host import ccore; "
            "ccore.StreamingLogMel().push(np.zeros(800, np.int16)); "
            "assert not {'torch', 'tensorflow'} & set(sys.modules), 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_gcc_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ccore, "LIBRARY", tmp_path / "libeeasr_core.so")
    monkeypatch.setattr(ccore.shutil, "which", lambda tool: None if tool == "gcc" else "/usr/bin/" + tool)
    with pytest.raises(ccore.CCoreError, match="build-essential") as err:
        ccore.build_library()
    assert "\n" not in str(err.value)


# --- front end -----------------------------------------------------------------------------------------------

def test_tables_equal_the_python_float32_tables() -> None:
    window, fbank = ccore.tables()
    assert np.array_equal(window, hann_window())
    assert np.array_equal(fbank, mel_filterbank())


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_logmel_of_the_vector_signals(name: str) -> None:
    pcm = SYNTHETIC[name]
    _check_logmel(ccore.StreamingLogMel().push(pcm), log_mel(pcm))


@pytest.mark.parametrize("name", sorted(REAL_CLIPS))
def test_logmel_of_recorded_speech_within_1e3_everywhere(name: str) -> None:
    pcm = REAL_CLIPS[name]
    assert _check_logmel(ccore.StreamingLogMel().push(pcm), log_mel(pcm)) < 1e-3


@pytest.mark.parametrize("level", [1.0, 30.0, 3000.0, 30000.0])
def test_logmel_of_noise_within_1e3_everywhere(level: float) -> None:
    pcm = _noise(level, seed=int(level))
    assert _check_logmel(ccore.StreamingLogMel().push(pcm), log_mel(pcm)) < 1e-3


def test_streaming_in_odd_chunks_equals_one_push() -> None:
    pcm = REAL_CLIPS["goforward"][:23456]
    whole = ccore.StreamingLogMel().push(pcm)
    assert whole.shape == (num_frames(pcm.size), 80)
    rng = np.random.default_rng(3)
    for sizes in ([1], [7], [159, 161], [399, 401], [1000, 3, 4097]):
        c_stream, py_stream = ccore.StreamingLogMel(), StreamingLogMel()
        parts, at, i = [], 0, 0
        while at < pcm.size:
            chunk = pcm[at:at + sizes[i % len(sizes)]]
            got = c_stream.push(chunk)
            assert got.shape[0] == py_stream.push(chunk).shape[0]  # frames come out at the same pushes
            parts.append(got)
            at, i = at + chunk.size, i + 1
        assert np.array_equal(np.concatenate(parts), whole)
    cuts = np.sort(rng.integers(0, pcm.size, 40))
    stream = ccore.StreamingLogMel()
    stream.push(pcm[:999])
    stream.reset()
    assert np.array_equal(np.concatenate([stream.push(c) for c in np.split(pcm, cuts)]), whole)


def test_stream_rejects_other_input_and_configs() -> None:
    with pytest.raises(TypeError):
        ccore.StreamingLogMel().push(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="compiled for"):
        ccore.StreamingLogMel(FeatureConfig(n_mels=64))


# --- normalization and int8 ----------------------------------------------------------------------------------

def test_normalize_and_int8_of_the_reference_logmel_are_bit_exact() -> None:
    norm, scale, zp = _speech_norm(), float(np.float32(8.5 / 255)), -8
    for pcm in [*SYNTHETIC.values(), *REAL_CLIPS.values()]:
        ref = log_mel(pcm)
        assert np.array_equal(ccore.normalize(ref, norm), norm.apply(ref))
        assert np.array_equal(ccore.features_int8(ref, norm, scale, zp), quantize_int8(norm.apply(ref), scale, zp))
    for case in feature_cases():  # the rounding_ties case: every z / scale exactly k + 0.5
        got = ccore.features_int8(case.log_mel, case.norm, case.scale, case.zero_point)
        assert np.array_equal(got, case.quantized)


def _end_to_end_int8(pcm: np.ndarray, norm: NormStats, scale: float, zp: int) -> int:
    """C log-mel -> int8 vs the reference's int8: equal, or 1 apart where the reference's z / scale lies
    within the two log-mels' difference of a rounding boundary. Returns how many differ."""
    ref = log_mel(pcm)
    stream = ccore.StreamingLogMel(norm=norm, scale=scale, zero_point=zp)
    got_q = stream.push_int8(pcm)
    stream.reset()
    got = stream.push(pcm)
    assert np.array_equal(got_q, ccore.features_int8(got, norm, scale, zp))
    assert np.array_equal(stream.push_normalized(pcm[:0]), np.zeros((0, 80), np.float32))
    ref_q = quantize_int8(norm.apply(ref), scale, zp)
    off = got_q != ref_q
    assert np.abs(got_q.astype(int) - ref_q).max(initial=0) <= 1
    y = np.abs(norm.apply(ref) / np.float32(scale)).astype(np.float64)
    tie_distance = np.abs(y - np.floor(y) - 0.5)
    reach = np.abs(got.astype(np.float64) - ref) / norm.std / scale + 1e-5
    assert (tie_distance[off] <= reach[off]).all()
    return int(off.sum())


def test_end_to_end_int8_differs_only_at_rounding_ties() -> None:
    norm, scale, zp = _speech_norm(), float(np.float32(8.5 / 255)), -8
    signals = [*SYNTHETIC.values(), *REAL_CLIPS.values()]
    differ = sum(_end_to_end_int8(pcm, norm, scale, zp) for pcm in signals)
    assert differ < 1e-3 * sum(num_frames(pcm.size) * 80 for pcm in signals)
    for case in feature_cases():  # rounding_ties: every reference value sits exactly on a tie
        _end_to_end_int8(case.samples, case.norm, case.scale, case.zero_point)


def test_quantize_matches_python_including_ties_and_saturation() -> None:
    rng = np.random.default_rng(5)
    halves = (np.arange(-300, 300) + 0.5).astype(np.float32)
    x = np.concatenate([rng.normal(0, 3, 5000).astype(np.float32), halves, [np.inf, -np.inf, 1e30, -1e30, 0.0]])
    for scale, zp in [(1.0, 0), (1.0, -3), (0.0333, -8), (2.0**-4, 100), (0.37, -128)]:
        assert np.array_equal(ccore.quantize_int8(x, scale, zp), quantize_int8(x, scale, zp))
    assert ccore.quantize_int8(np.float32(0.10098982602357864), 0.06732655316591263, 0) == 2  # float32 division
    with pytest.raises(ValueError):
        ccore.quantize_int8(np.array([np.nan], np.float32), 1.0, 0)
    with pytest.raises(ValueError):
        ccore.quantize_int8(x, 0.0, 0)


@pytest.mark.parametrize("in_q,out_q", [
    ((0.05, -7), (0.05, -7)),  # equal ends: unchanged
    ((1.0, 0), (2.0, 0)),  # every odd value lands on a tie
    ((0.5, 3), (0.25, -1)),  # doubling saturates
    ((0.0713, 3), (0.0391, -20)),
    ((0.1, -128), (0.3, 127)),
    ((0.0123, 50), (0.987, -60)),
])
def test_requantize_all_256_inputs(in_q: tuple[float, int], out_q: tuple[float, int]) -> None:
    q = np.arange(-128, 128, dtype=np.int8)
    src, dst = QParams(float(np.float32(in_q[0])), in_q[1]), QParams(float(np.float32(out_q[0])), out_q[1])
    got = ccore.requantize_int8(q, src.scale, src.zero_point, dst.scale, dst.zero_point)
    assert np.array_equal(got, requantize(q, src, dst))
    assert np.array_equal(got, requantize_int8(q, src.scale, src.zero_point, dst.scale, dst.zero_point))
    table = ccore.requantize_table(src.scale, src.zero_point, dst.scale, dst.zero_point)
    assert np.array_equal(table[q.view(np.uint8)], got)  # indexed by q as uint8


def test_requantize_random_scale_pairs() -> None:
    rng = np.random.default_rng(11)
    q = np.arange(-128, 128, dtype=np.int8)
    for _ in range(200):
        a, b = (float(np.float32(s)) for s in 10.0 ** rng.uniform(-3, 0.5, 2))
        za, zb = (int(z) for z in rng.integers(-128, 128, 2))
        assert np.array_equal(ccore.requantize_int8(q, a, za, b, zb), requantize_int8(q, a, za, b, zb))


def test_dequantize_matches_python() -> None:
    q = np.arange(-128, 128, dtype=np.int8).reshape(16, 16)
    assert np.array_equal(ccore.dequantize_int8(q, 0.0713, 3), dequantize_int8(q, 0.0713, 3))


# --- exit measures and greedy CTC ----------------------------------------------------------------------------

def _logit_cases() -> list[tuple[np.ndarray, int, int, float, int]]:
    """(int8 logits [T, V], t_valid, blank, scale, zero_point)."""
    rng = np.random.default_rng(21)
    cases = []
    for t, v in [(1, 2), (12, 5), (50, 64), (100, 257), (30, 1000)]:
        cases.append((rng.integers(-128, 128, (t, v)).astype(np.int8), t, 0, 0.1, -3))
    ctc = rng.integers(-60, 0, (80, 129))
    ctc[:, 0] = 90
    hit = rng.random(80) < 0.2
    ctc[hit, 0] = -20
    ctc[hit, rng.integers(1, 129, hit.sum())] = 100
    cases.append((ctc.astype(np.int8), 64, 0, 0.15, 10))  # confident CTC head, padded window
    cases.append((np.tile(np.int8([127] + [-100] * 9), (20, 1)), 20, 0, 0.05, 0))  # all blank: fallback
    cases.append((rng.integers(-2, 3, (60, 16)).astype(np.int8), 60, 0, 0.5, 0))  # argmax ties
    cases.append((rng.integers(-128, 128, (40, 20)).astype(np.int8), 40, 3, 0.08, 2))  # another blank
    cases.append((rng.integers(-128, 128, (10, 32)).astype(np.int8), 0, 0, 0.2, 5))  # no valid frames
    return cases


@pytest.mark.parametrize("case", range(len(_logit_cases())))
def test_exit_measures_and_greedy_ctc_equal_eeasr_exits(case: int) -> None:
    logits, t_valid, blank, scale, zp = _logit_cases()[case]
    logp = log_softmax(dequantize_int8(logits[:t_valid], scale, zp))  # what the device's thresholds assume
    got = ccore.exit_measures(logits, scale, zp, t_valid=t_valid, blank=blank)
    assert got.entropy == pytest.approx(frame_entropy(logp), rel=1e-5, abs=1e-7)
    assert got.nonblank_entropy == pytest.approx(nonblank_entropy(logp, blank), rel=1e-5, abs=1e-7)
    from_logp = ccore.exit_measures_logp(logp, blank=blank)
    assert from_logp.entropy == pytest.approx(frame_entropy(logp), rel=1e-5, abs=1e-7)
    assert from_logp.nonblank_entropy == pytest.approx(nonblank_entropy(logp, blank), rel=1e-5, abs=1e-7)
    want = greedy_ctc(logp, blank)
    assert ccore.greedy_ctc(logits, t_valid=t_valid, blank=blank) == want
    assert ccore.greedy_ctc(logp, blank=blank) == want
    if t_valid:
        c_logp = ccore.log_softmax(dequantize_int8(logits[:t_valid], scale, zp))
        np.testing.assert_allclose(c_logp, logp, rtol=0, atol=1e-5)


def test_exit_measures_of_float_logp() -> None:
    rng = np.random.default_rng(8)
    logits = rng.normal(0, 4, (70, 300))
    logp = (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)
    got = ccore.exit_measures_logp(logp)
    assert got.entropy == pytest.approx(frame_entropy(logp), rel=1e-5)
    assert got.nonblank_entropy == pytest.approx(nonblank_entropy(logp), rel=1e-5)
    assert ccore.greedy_ctc(logp) == greedy_ctc(logp)
    assert ccore.greedy_ctc(logp, t_valid=33) == greedy_ctc(logp[:33])
    with pytest.raises(ValueError):
        ccore.greedy_ctc(logp, t_valid=71)


# --- gated (I3D) programs: pooling, gate decisions, the stream between segments --------------------------------

def _stream_qparams(rng: np.random.Generator) -> QParams:
    return QParams(float(np.float32(10 ** rng.uniform(-2.5, -0.3))), int(rng.integers(-128, 128)))


def test_pool_valid_equals_the_gated_reference_for_every_t_valid() -> None:
    from eeasr.bundle import quantize
    from eeasr.gated_program import Stream, pool_valid

    rng = np.random.default_rng(31)
    for rows, d in ((16, 32), (37, 144), (150, 144)):
        q = rng.integers(-128, 128, (rows, d)).astype(np.int8)
        ts = range(1, rows + 1) if rows < 40 else (1, 2, 3, 7, 64, 149, 150)
        for t in ts:
            src, dst = _stream_qparams(rng), QParams(float(np.float32(10 ** rng.uniform(-3, -1))),
                                                     int(rng.integers(-20, 20)))
            want = pool_valid(Stream(q[None], src), t)[0]
            got = ccore.pool_valid(q, t, src.scale, src.zero_point)
            assert got.tobytes() == want.tobytes(), (rows, d, t)   # bit for bit, padding rows never read
            assert np.array_equal(ccore.pool_valid_int8(q, t, src.scale, src.zero_point, dst.scale, dst.zero_point),
                                  quantize(want, dst))
    loud = np.full((150, 8), 127, np.int8)   # the largest sum: exact in int32, saturating at the predictor
    assert np.array_equal(ccore.pool_valid_int8(loud, 150, 0.1, -1, 0.01, 0), np.full(8, 127, np.int8))
    for bad in (0, 151):
        with pytest.raises(ValueError, match="t_valid"):
            ccore.pool_valid(loud, bad, 0.1, -1)


def _beta_at(margin: float) -> float:
    """A beta whose threshold log(beta / (1 - beta)) is exactly `margin`, searched ulp by ulp around
    sigmoid(margin); the nearest one when none is."""
    import math

    from eeasr.gated_program import gate_threshold

    beta = 1.0 / (1.0 + math.exp(-margin))
    candidates = [beta]
    for direction in (1.0, -1.0):
        b = beta
        for _ in range(200):
            b = math.nextafter(b, direction)
            candidates.append(b)
    return min(candidates, key=lambda b: (gate_threshold(b) != margin, abs(gate_threshold(b) - margin)))


def test_gate_decisions_equal_the_gated_reference_at_and_around_the_threshold() -> None:
    from eeasr.bundle import dequantize
    from eeasr.gated_program import decide, gate_threshold

    rng = np.random.default_rng(37)
    margins = np.arange(-128, 128, dtype=np.int8)
    exact = 0
    for _ in range(12):
        qp = _stream_qparams(rng)
        real = dequantize(margins, qp).astype(np.float64)
        at = [_beta_at(float(real[i])) for i in rng.choice(256, 8, replace=False)]
        exact += sum(gate_threshold(b) in real for b in at)
        for beta in (0.0, 1.0, 0.5, *rng.uniform(0, 1, 4).tolist(), *at):
            assert ccore.gate_threshold(beta) == gate_threshold(beta)
            got = ccore.gate_decide(margins, qp.scale, qp.zero_point, beta)
            assert np.array_equal(got, decide(real, beta)), (qp, beta)
    assert exact >= 40   # most of those betas put a margin exactly on the threshold: the tie stays closed
    qp = QParams(0.5, 0)
    assert ccore.gate_decide(margins, qp.scale, qp.zero_point, 0.0).all()           # beta 0: every module runs
    assert not ccore.gate_decide(margins, qp.scale, qp.zero_point, 1.0).any()       # beta 1: none
    assert ccore.gate_decide(np.int8([0, 1]), qp.scale, qp.zero_point, 0.5).tolist() == [False, True]
    with pytest.raises(ValueError, match="beta"):
        ccore.gate_decide(margins, qp.scale, qp.zero_point, 1.5)


def test_the_stream_moves_between_segments_as_the_gated_reference() -> None:
    """A gated program requantizes the residual stream from the quantization of the segment that wrote it last
    to the next segment's input (eeasr.gated_program.Stream.to): the C core's one requantize function."""
    from eeasr.gated_program import Stream

    rng = np.random.default_rng(41)
    q = rng.integers(-128, 128, (37, 144)).astype(np.int8)
    for _ in range(50):
        a, b = _stream_qparams(rng), _stream_qparams(rng)
        for src, dst in ((a, b), (a, a)):
            got = ccore.requantize_int8(q, src.scale, src.zero_point, dst.scale, dst.zero_point)
            assert np.array_equal(got, Stream(q, src).to(dst))
