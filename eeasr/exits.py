"""CTC decoding helpers and exit-selection measures, shared by evaluation, the host and the device (numpy only).

Inputs are log-probabilities [T, V] over the valid frames only (padding never votes). Measures:
- `frame_entropy`: paper 1, Eq. 5: the mean over frames of the entropy at each frame, divided by |Y| as
  in the paper (a constant factor, so thresholds are simply on another scale).
- `nonblank_entropy`: the same over frames whose best label is not the blank (blanks dominate CTC output and
  are confidently predicted even when the words are not); falls back to all frames when every frame is blank.
- `nbest_posterior`: Eq. 6: the softmax over the K best hypotheses' log-scores, taken at the best one.
Low entropy and high posterior mean confident.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BLANK = 0


def ctc_collapse(path: Sequence[int], blank: int = BLANK) -> list[int]:
    """A frame-level CTC path to labels: repeats merged, blanks removed."""
    out, prev = [], -1
    for t in path:
        if t != prev and t != blank:
            out.append(int(t))
        prev = t
    return out


def greedy_ctc(logp: np.ndarray, blank: int = BLANK) -> list[int]:
    """Best path: argmax per frame, collapsed."""
    return ctc_collapse(np.asarray(logp).argmax(axis=-1).tolist(), blank)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis in float32, as the device takes it of an exit's dequantized int8 logits."""
    x = np.asarray(logits, np.float32)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _entropy_per_frame(logp: np.ndarray) -> np.ndarray:
    logp = np.asarray(logp, dtype=np.float64)
    return -(np.exp(logp) * logp).sum(axis=-1)


def frame_entropy(logp: np.ndarray) -> float:
    """Eq. 5: -1/(T|Y|) sum_t sum_y P log P."""
    logp = np.asarray(logp)
    if logp.shape[0] == 0:
        return 0.0
    return float(_entropy_per_frame(logp).mean() / logp.shape[-1])


def nonblank_entropy(logp: np.ndarray, blank: int = BLANK) -> float:
    """Eq. 5 restricted to frames whose argmax is not the blank."""
    logp = np.asarray(logp)
    if logp.shape[0] == 0:
        return 0.0
    keep = logp.argmax(axis=-1) != blank
    frames = logp[keep] if keep.any() else logp
    return float(_entropy_per_frame(frames).mean() / logp.shape[-1])


def nbest_posterior(scores: Sequence[float]) -> float:
    """Eq. 6: softmax over the K-best hypotheses' log-scores, evaluated at the best hypothesis."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return 0.0
    s = s - s.max()
    return float(1.0 / np.exp(s).sum())
