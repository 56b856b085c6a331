"""Cutting an utterance into device windows as its feature frames arrive (the rule of eeasr/windows.py).

`window_spans` needs the whole utterance; a device cannot wait for it. The rule only ever looks at frames
[start + W - search, start + W] to place a cut, so the cut can be made as soon as more than W frames are
buffered: the spans are the same as `window_spans` on the utterance's energies, cut by cut, and the
device holds at most W + 1 frames (plus what one push adds).

The energy the cuts compare is `eeasr.windows.frame_energy` (a numpy float32 mean would sum a lone row and a
block of rows in different orders, so streaming and whole-utterance cuts could differ).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eeasr.windows import DEFAULT_SEARCH, frame_energy


@dataclass
class Window:
    """Frames [start, end) of the utterance (feature-frame indices from its first frame)."""
    start: int
    end: int
    frames: np.ndarray       # [end - start, n_mels], whatever the caller pushed (int8 on the device)

    @property
    def n_frames(self) -> int:
        return self.end - self.start


class StreamingWindows:
    """Feed frames and their energies (mean log-mel) as they are computed; get windows as they are cut."""

    def __init__(self, window: int, search: int = DEFAULT_SEARCH) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        self.window = window
        self.search = search
        self._start = 0                      # utterance frame index of the first buffered frame
        self._frames: np.ndarray | None = None
        self._energy = np.zeros(0, np.float64)

    @property
    def buffered(self) -> int:
        return len(self._energy)

    def push(self, frames: np.ndarray, energy: np.ndarray) -> list[Window]:
        """Add frames [k, ...] with energies [k]; return the windows cut because of them (in order)."""
        energy = np.asarray(energy)
        if len(frames) != len(energy):
            raise ValueError(f"{len(frames)} frames but {len(energy)} energies")
        self._frames = frames.copy() if self._frames is None else np.concatenate([self._frames, frames])
        self._energy = np.concatenate([self._energy, energy])
        out: list[Window] = []
        w = self.window
        while len(self._energy) > w:
            lo = max(1, w - self.search)
            end = lo + int(np.argmin(self._energy[lo:w + 1]))   # first minimum on ties, as window_spans
            out.append(Window(self._start, self._start + end, self._frames[:end]))
            self._frames, self._energy = self._frames[end:], self._energy[end:]
            self._start += end
        return out

    def finish(self) -> Window | None:
        """End of the utterance: the remaining frames as its last window (None when nothing is left)."""
        if self._frames is None or not len(self._energy):
            return None
        last = Window(self._start, self._start + len(self._energy), self._frames)
        self._start += len(self._energy)
        self._frames, self._energy = None, np.zeros(0, np.float64)
        return last


__all__ = ["StreamingWindows", "Window", "frame_energy"]  # frame_energy re-exported from eeasr.windows
