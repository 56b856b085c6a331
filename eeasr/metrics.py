"""Word and character error rates (through jiwer), bootstrap intervals and token agreement.

Both references and hypotheses go through eeasr.text.normalize_text first, so scoring sees the
same text the recognizer was trained on. CER counts characters of the normalized text, spaces
included (jiwer's definition).

Empty references are allowed: an utterance with an empty reference contributes its hypothesis
length as insertions and nothing to ref_len. When the total ref_len is 0 the rate is defined as
0.0 if there are no errors and 100.0 otherwise, so it stays finite and JSON-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import jiwer
import numpy as np

from eeasr.text import normalize_text

Unit = Literal["word", "char"]


@dataclass(frozen=True)
class ErrorRate:
    errors: int  # substitutions + deletions + insertions
    substitutions: int
    deletions: int
    insertions: int
    ref_len: int
    rate: float  # percent


def _rate(errors: np.ndarray | int, ref_len: np.ndarray | int) -> np.ndarray:
    errors, ref_len = np.asarray(errors, dtype=np.float64), np.asarray(ref_len, dtype=np.float64)
    empty = np.where(errors > 0, 100.0, 0.0)
    return np.where(ref_len > 0, 100.0 * errors / np.maximum(ref_len, 1.0), empty)


def _counts(refs: Sequence[str], hyps: Sequence[str], unit: Unit) -> np.ndarray:
    """Per-utterance [substitutions, deletions, insertions, ref_len], shape (n, 4)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    counts = np.zeros((len(refs), 4), dtype=np.int64)
    if not refs:
        return counts
    process = jiwer.process_words if unit == "word" else jiwer.process_characters
    out = process([normalize_text(r) for r in refs], [normalize_text(h) for h in hyps])
    column = {"substitute": 0, "delete": 1, "insert": 2}
    for row, ref, chunks in zip(counts, out.references, out.alignments):
        for c in chunks:
            if c.type in column:
                span = c.hyp_end_idx - c.hyp_start_idx if c.type == "insert" else c.ref_end_idx - c.ref_start_idx
                row[column[c.type]] += span
        row[3] = len(ref)
    return counts


def error_rate(refs: Sequence[str], hyps: Sequence[str], unit: Unit = "word") -> ErrorRate:
    """Corpus-level error rate: total edits over total reference length."""
    s, d, i, n = (int(x) for x in _counts(refs, hyps, unit).sum(axis=0))
    return ErrorRate(s + d + i, s, d, i, n, float(_rate(s + d + i, n)))


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate in percent."""
    return error_rate(refs, hyps, "word").rate


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate in percent."""
    return error_rate(refs, hyps, "char").rate


def bootstrap_interval(
    refs: Sequence[str],
    hyps: Sequence[str],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    unit: Unit = "word",
) -> tuple[float, float]:
    """Percentile bootstrap interval (percent) of the corpus error rate, resampling utterances."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    counts = _counts(refs, hyps, unit)
    n = len(counts)
    if n == 0:
        return 0.0, 0.0
    errors, ref_len = counts[:, :3].sum(axis=1), counts[:, 3]
    rng = np.random.default_rng(seed)
    # Resample in blocks to bound memory at ~4M indices whatever the test set size.
    block = max(1, 4_000_000 // n)
    rates = []
    for start in range(0, n_resamples, block):
        idx = rng.integers(0, n, size=(min(block, n_resamples - start), n))
        rates.append(_rate(errors[idx].sum(axis=1), ref_len[idx].sum(axis=1)))
    tail = 50.0 * (1.0 - confidence)
    lo, hi = np.percentile(np.concatenate(rates), [tail, 100.0 - tail])
    return float(lo), float(hi)


def token_agreement(ref_tokens: Sequence[int], hyp_tokens: Sequence[int]) -> float:
    """1 - edit distance / len(ref), clamped at 0; two empty sequences agree fully (1.0)."""
    if not ref_tokens:
        return 0.0 if hyp_tokens else 1.0
    out = jiwer.process_words(" ".join(map(str, ref_tokens)), " ".join(map(str, hyp_tokens)))
    distance = out.substitutions + out.deletions + out.insertions
    return max(0.0, 1.0 - distance / len(ref_tokens))
