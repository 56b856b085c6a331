import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from eeasr import audio
from eeasr.audio import AudioError, audio_duration, load_audio, write_audio


def tone(n: int, sr: int = 16000, amp: float = 0.3) -> np.ndarray:
    return (amp * 32767 * np.sin(2 * np.pi * 440 * np.arange(n) / sr)).astype(np.int16)


def corrupt_file(tmp_path: Path) -> Path:
    p = tmp_path / "corrupt.flac"
    p.write_bytes(np.random.default_rng(0).bytes(4000))
    return p


def truncated_flac(tmp_path: Path) -> Path:
    p = tmp_path / "truncated.flac"
    sf.write(p, tone(16000), 16000)
    p.write_bytes(p.read_bytes()[:2000])
    return p


def assert_one_line_about(err: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: ")
    for w in words:
        assert w in msg


@pytest.mark.parametrize("suffix", [".flac", ".wav"])
def test_conformant_file_loads_exactly(tmp_path: Path, suffix: str) -> None:
    p = tmp_path / f"a{suffix}"
    x = tone(8000)
    x[:3] = [-32768, 32767, 0]
    sf.write(p, x, 16000, subtype="PCM_16")
    y = load_audio(p)
    assert y.dtype == np.int16
    np.testing.assert_array_equal(y, x)


def test_wrong_rate_is_refused_then_resampled(tmp_path: Path) -> None:
    p = tmp_path / "cd.wav"
    sf.write(p, tone(44100, 44100), 44100)
    with pytest.raises(AudioError) as err:
        load_audio(p)
    assert_one_line_about(err, p, "44100 Hz", "expected 16000 Hz", "eeasr-data import")
    y = load_audio(p, resample=True)
    assert y.dtype == np.int16 and y.shape == (16000,)


def test_stereo_is_refused_then_downmixed(tmp_path: Path) -> None:
    p = tmp_path / "stereo.wav"
    left, right = tone(1600), np.full(1600, 1000, np.int16)
    sf.write(p, np.stack([left, right], axis=1), 16000)
    with pytest.raises(AudioError) as err:
        load_audio(p)
    assert_one_line_about(err, p, "2 channels", "mono")
    y = load_audio(p, resample=True)
    expected = np.round((left.astype(np.float64) + right) / 2)
    np.testing.assert_allclose(y, expected, atol=1)


def test_float_file_is_scaled_and_clipped(tmp_path: Path) -> None:
    p = tmp_path / "float.wav"
    sf.write(p, np.array([0.5, 1.5, -2.0, -0.25], np.float32), 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(p), [16384, 32767, -32768, -8192])


def test_empty_files_are_refused(tmp_path: Path) -> None:
    zero_bytes = tmp_path / "zero.flac"
    zero_bytes.write_bytes(b"")
    with pytest.raises(AudioError) as err:
        load_audio(zero_bytes, resample=True)
    assert_one_line_about(err, zero_bytes, "empty")
    no_samples = tmp_path / "nosamples.wav"
    sf.write(no_samples, np.zeros(0, np.int16), 16000)
    with pytest.raises(AudioError) as err:
        load_audio(no_samples, resample=True)
    assert_one_line_about(err, no_samples, "no samples")


@pytest.mark.parametrize("make", [corrupt_file, truncated_flac])
def test_corrupt_and_truncated_files_are_refused(tmp_path: Path, make) -> None:
    p = make(tmp_path)
    with pytest.raises(AudioError) as err:
        load_audio(p, resample=True)
    assert_one_line_about(err, p, "cannot decode")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "nope.flac"
    with pytest.raises(AudioError) as err:
        audio_duration(p)
    assert_one_line_about(err, p, "no such file")


def test_audio_error_is_a_picklable_value_error(tmp_path: Path) -> None:
    with pytest.raises(AudioError) as err:
        load_audio(tmp_path / "nope.wav")
    assert isinstance(err.value, ValueError)
    assert str(pickle.loads(pickle.dumps(err.value))) == str(err.value)  # crosses process pools intact


def test_audio_duration_reads_header(tmp_path: Path) -> None:
    p = tmp_path / "a.flac"
    sf.write(p, tone(24000), 16000)
    assert audio_duration(p) == 1.5


@pytest.mark.parametrize("suffix,fmt", [(".flac", "FLAC"), (".WAV", "WAV")])
def test_write_audio_by_suffix(tmp_path: Path, suffix: str, fmt: str) -> None:
    p = tmp_path / f"out{suffix}"
    x = tone(1000)
    write_audio(p, x)
    info = sf.info(p)
    assert (info.format, info.subtype, info.samplerate, info.channels) == (fmt, "PCM_16", 16000, 1)
    np.testing.assert_array_equal(load_audio(p), x)
    assert sorted(tmp_path.iterdir()) == [p]


def test_write_audio_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="suffix"):
        write_audio(tmp_path / "a.mp3", tone(10))
    with pytest.raises(ValueError, match="int16"):
        write_audio(tmp_path / "a.flac", tone(10).astype(np.float32))
    with pytest.raises(ValueError, match="empty"):
        write_audio(tmp_path / "a.flac", np.zeros(0, np.int16))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "a.flac"
    write_audio(p, tone(1000))
    before = p.read_bytes()

    def dies_halfway(f, *args, **kwargs) -> None:
        f.write(b"fLaC half")
        raise KeyboardInterrupt

    monkeypatch.setattr(audio.sf, "write", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        write_audio(p, tone(2000))
    assert p.read_bytes() == before
    assert list(tmp_path.iterdir()) == [p]
