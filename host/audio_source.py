"""Where `eeasr-host stream` gets its audio: WAV/FLAC files (one utterance each) or a microphone.

Everything leaves here as 16 kHz mono int16, the device contract. A file at another rate or with more
channels is converted by eeasr/audio.py's loader (soxr, downmix by averaging) and the caller is told so;
a file that cannot be decoded becomes a one-line `AudioError` naming it, and the other files go on.
The microphone is a PortAudio input stream (sounddevice) at 16 kHz mono int16, read in 100 ms blocks.
"""

from __future__ import annotations

import math
import queue
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eeasr.audio import SAMPLE_RATE, AudioError, audio_info, load_audio

MIC_BLOCK = 1600          # 100 ms per callback: small enough for a live meter, large enough to be cheap


@dataclass
class WavUtterance:
    path: Path
    pcm: np.ndarray | None          # int16 mono 16 kHz; None when the file could not be used
    error: str | None = None        # one line naming the file
    note: str | None = None         # e.g. "resampled from 44100 Hz stereo"


def load_wav(path: str | Path) -> WavUtterance:
    """One file as a host-segmented utterance; never raises for a bad file (the error is in the result)."""
    path = Path(path)
    try:
        info = audio_info(path)
        note = None
        if info.sample_rate != SAMPLE_RATE or info.channels != 1:
            note = (f"{path}: {info.sample_rate} Hz, {info.channels} channel(s); converted to 16 kHz mono "
                    f"(the device contract)")
        return WavUtterance(path, load_audio(path, resample=note is not None), note=note)
    except AudioError as e:
        return WavUtterance(path, None, error=str(e))


def level_dbfs(pcm: np.ndarray) -> float:
    """RMS level of int16 samples in dB relative to full scale (-120 for silence)."""
    if len(pcm) == 0:
        return -120.0
    rms = math.sqrt(float(np.mean(np.square(pcm, dtype=np.float64))))
    return 20 * math.log10(max(rms, 1e-6) / 32768.0)


class MicError(RuntimeError):
    """The microphone cannot be opened or read; the message says which device and why, in one line."""


class Microphone:
    """A PortAudio input stream at 16 kHz mono int16, opened (so a wrong device fails at once) but recording
    only from `start`; `read` returns the next block as it is recorded.

    The PortAudio callback only copies blocks into a queue, so a slow consumer never stalls the driver;
    overflows PortAudio reports are counted (`overflows`) rather than hidden.
    """

    def __init__(self, device: str | int | None = None, block: int = MIC_BLOCK) -> None:
        import sounddevice as sd

        self.overflows = 0
        self._q: queue.Queue[np.ndarray] = queue.Queue()
        try:
            self._stream = sd.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="int16", blocksize=block,
                                          device=device, callback=self._callback)
            self.name = str(sd.query_devices(self._stream.device)["name"])
        except (sd.PortAudioError, ValueError) as e:
            which = "the default input" if device is None else f"input device {device!r}"
            raise MicError(f"cannot open {which} at 16 kHz mono: {' '.join(str(e).split())} "
                           f"(list inputs with `python -m sounddevice`; choose one with --mic-device)") from None

    def _callback(self, data: np.ndarray, frames: int, time: object, status: object) -> None:
        if status and getattr(status, "input_overflow", False):
            self.overflows += 1
        self._q.put(data[:, 0].copy())

    def start(self) -> None:
        self._stream.start()

    def read(self, timeout: float = 1.0) -> np.ndarray | None:
        """The next recorded block, or None when nothing arrived within `timeout` seconds."""
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        if not self._stream.closed:
            self._stream.stop()
            self._stream.close()

    def __enter__(self) -> Microphone:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["WavUtterance", "load_wav", "level_dbfs", "Microphone", "MicError", "MIC_BLOCK"]
