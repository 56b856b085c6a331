"""Cutting speech longer than the device window into consecutive windows (the device contract).

A window holds at most W feature frames. When speech is longer, each window ends at the quietest frame of its
last `search` frames (a pause, when there is one), so words are rarely cut; the texts of the windows are joined.
Frame energy is the mean log-mel of the frame, which the device already has. Host, evaluation and firmware
use this one rule.
"""

from __future__ import annotations

import numpy as np

DEFAULT_SEARCH = 150  # look for a pause in the last 1.5 s of a full window


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
