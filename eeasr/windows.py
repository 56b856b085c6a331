"""Cutting speech longer than the device window into consecutive windows (the device contract).

A window holds at most W feature frames. When speech is longer, each window ends at the quietest frame of its
last `search` frames (a pause, when there is one), so words are rarely cut; the texts of the windows are joined.
Frame energy is the mean log-mel of the frame (before normalization), which the device already has, summed
in double in bin order so that it does not depend on how many frames are computed at once (C reproduces it
exactly). Host, evaluation and firmware use this one rule.
"""

from __future__ import annotations

import numpy as np

DEFAULT_SEARCH = 150  # look for a pause in the last 1.5 s of a full window


def frame_energy(logmel: np.ndarray) -> np.ndarray:
    """Mean log-mel of each frame [T, n_mels] -> float64 [T]: a double sum in bin order, then / n_mels."""
    lm = np.asarray(logmel, np.float32)
    acc = np.zeros(lm.shape[0], np.float64)
    for j in range(lm.shape[1]):
        acc += lm[:, j]
    return acc / lm.shape[1]


def window_spans(frame_energy: np.ndarray, window: int, search: int = DEFAULT_SEARCH) -> list[tuple[int, int]]:
    """[start, end) frame spans covering all frames, each at most `window` long."""
    n = len(frame_energy)
    if window <= 0:
        raise ValueError("window must be positive")
    spans, start = [], 0
    while n - start > window:
        lo = start + max(1, window - search)
        end = lo + int(np.argmin(frame_energy[lo:start + window + 1]))
        end = max(end, start + 1)
        spans.append((start, end))
        start = end
    spans.append((start, n))
    return [s for s in spans if s[1] > s[0]]
