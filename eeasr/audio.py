"""Audio I/O: every model in the toolchain eats 16 kHz mono 16-bit PCM, and this is the one gate to it.

Problems with a file raise `AudioError`, whose message is a single line naming the file, what is
wrong and what to do, so that batch tools can print it and carry on with the next file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000
_FORMATS = {".flac": "FLAC", ".wav": "WAV"}

PathLike = str | os.PathLike[str]


class AudioError(ValueError):
    """A file that is not usable 16 kHz mono audio; the message is one line: '<file>: <problem> (<fix>)'."""


def _error(path: PathLike, problem: str, fix: str) -> AudioError:
    # Collapse newlines (in odd file names or libsndfile texts) so the message stays one line.
    return AudioError(" ".join(f"{os.fspath(path)}: {problem} ({fix})".split()))


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def audio_info(path: PathLike) -> AudioInfo:
    """Header facts of an audio file, without decoding it; raises AudioError when it cannot be opened."""
    _check_exists(path)
    try:
        info = sf.info(os.fspath(path))
    except sf.LibsndfileError as e:
        raise _unreadable(path, e) from None
    return AudioInfo(info.samplerate, info.channels, info.frames)


def audio_duration(path: PathLike) -> float:
    """Duration in seconds, read from the header (fast: no decoding)."""
    return audio_info(path).duration


def load_audio(path: PathLike, sample_rate: int = SAMPLE_RATE, resample: bool = False) -> np.ndarray:
    """Decode `path` to a 1-D int16 array at `sample_rate`.

    Without `resample`, a file at another rate or with more than one channel raises AudioError.
    With `resample=True`, channels are downmixed to mono by averaging them and the rate is
    converted with soxr 'HQ'. Float files are scaled to int16, clipping values beyond full scale.
    Unreadable, corrupt, truncated or empty files always raise AudioError.
    """
    info = audio_info(path)
    if not resample:
        _check_conformant(path, info, sample_rate)
    try:
        # float32 holds every int16 value exactly, and libsndfile's own float->int path does not clip.
        x = sf.read(os.fspath(path), dtype="float32", always_2d=True)[0]
    except sf.LibsndfileError as e:
        raise _unreadable(path, e) from None
    if x.shape[0] == 0:
        raise _error(path, "file holds no samples", "re-record or drop this utterance")
    if not np.isfinite(x).all():
        raise _error(path, "file holds NaN or infinite samples", "re-export it as 16-bit PCM")
    mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    if info.sample_rate != sample_rate:
        mono = soxr.resample(mono, info.sample_rate, sample_rate, quality="HQ")
    return _to_int16(mono)


def write_audio(path: PathLike, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono int16 `pcm` as FLAC or WAV (chosen by the suffix), atomically."""
    fmt = _FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"{os.fspath(path)}: unsupported suffix, expected one of {', '.join(_FORMATS)}")
    if pcm.dtype != np.int16 or pcm.ndim != 1:
        raise ValueError(f"{os.fspath(path)}: expected 1-D int16 PCM, got {pcm.ndim}-D {pcm.dtype}")
    if pcm.size == 0:
        # load_audio rejects empty files, so never produce one.
        raise ValueError(f"{os.fspath(path)}: refusing to write an empty audio file")
    with atomic_write(path) as f:
        sf.write(f, pcm, sample_rate, format=fmt, subtype="PCM_16")


@contextmanager
def atomic_write(path: PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path` for binary writing; on success, fsync it and rename it onto
    `path`, so readers (and interrupted builds) only ever see the old file or the complete new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_exists(path: PathLike) -> None:
    p = Path(path)
    if not p.exists():
        raise _error(path, "no such file", "check the path; manifest paths are relative to the manifest")
    if not p.is_file():
        raise _error(path, "not a regular file", "point to an audio file")
    if p.stat().st_size == 0:
        raise _error(path, "file is empty (0 bytes)", "re-record or drop this utterance")


def _check_conformant(path: PathLike, info: AudioInfo, sample_rate: int) -> None:
    fix = "resample it, or import with `eeasr-data import`, which resamples and downmixes"
    if info.sample_rate != sample_rate:
        raise _error(path, f"sample rate {info.sample_rate} Hz, expected {sample_rate} Hz", fix)
    if info.channels != 1:
        raise _error(path, f"{info.channels} channels, expected mono", fix)


def _unreadable(path: PathLike, e: sf.LibsndfileError) -> AudioError:
    return _error(
        path, f"cannot decode audio: {e.error_string.rstrip('.')}", "the file is corrupt or truncated; re-encode it"
    )


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
