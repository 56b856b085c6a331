"""Exit thresholds calibrated on what the device and the server will really compute.

Per calibration utterance (one window each: the shipped calibration set holds utterances up to W frames): the
log-softmax (in float, as the device does) of every device exit's int8 TFLM logits, and the server model's
log-probabilities on the dequantized TFLM handoff for the exits after them. For each exit measure of
eeasr.exits that the device computes cheaply (average frame entropy, Eq. 5, and the same over non-blank
frames), the threshold is the one with the lowest average exit layer whose greedy WER over the set meets the
target, with the bundle's own policy: the first DEVICE exit (1..K) whose measure passes, else the server's last
exit (the server never answers from its intermediate exits), so thresholds are per model hash and EXITS as the
device contract says. With K = all exits this is the rule of eeasr.train.evaluate. The default target is the last exit's WER on these TFLM outputs + 2 points (the rule of
`eeasr-train exits`). A first simple version: one threshold per measure for every exit, no N-best posterior.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from eeasr.exits import frame_entropy, greedy_ctc, nonblank_entropy
from eeasr.metrics import _counts

DEVICE_MEASURES = {"entropy": frame_entropy, "nonblank_entropy": nonblank_entropy}


def _select(values: np.ndarray, threshold: float, fallback: int) -> np.ndarray:
    """Per utterance, the first device exit whose measure <= threshold, else `fallback`. values [N, K]."""
    passes = values <= threshold
    return np.where(passes.any(axis=1), passes.argmax(axis=1), fallback)


def calibrate(logps: list[list[np.ndarray]], texts: list[str], decode: Any, exit_layers: list[int],
              device_exits: int | None = None, target_wer: float | None = None,
              n_candidates: int = 200, server_texts: list[str] | None = None) -> dict[str, Any]:
    """`logps[i][j]`: log-probabilities [T_valid, V] of utterance i at exit j (all exits of the model); the
    first `device_exits` (default: all) run on the device. `server_texts`: the server's answers when it does not
    answer with its last exit's greedy CTC (a Conformer-AED's attention decoder). Returns the manifest's
    thresholds section: target, WER of each exit that can answer, and per measure {threshold, wer,
    avg_exit_layer}."""
    k = len(exit_layers) if device_exits is None else device_exits
    answering = list(range(k)) + ([len(exit_layers) - 1] if k < len(exit_layers) else [])
    logps = [[row[j] for j in answering] for row in logps]
    exit_layers = [exit_layers[j] for j in answering]
    n_exits = len(exit_layers)
    hyps = [[decode(greedy_ctc(lp)) for lp in row] for row in logps]
    if server_texts is not None and k < len(logps[0]):
        hyps = [h[:-1] + [s] for h, s in zip(hyps, server_texts, strict=True)]
    # word errors [N, E] and reference lengths [N], so each candidate threshold is a sum, not a new alignment
    counts = [_counts(texts, [h[j] for h in hyps], "word") for j in range(n_exits)]
    errors = np.stack([c[:, :3].sum(axis=1) for c in counts], axis=1)
    ref_words = max(1, int(counts[0][:, 3].sum()))

    def wer_of(chosen: np.ndarray) -> float:
        return 100.0 * float(errors[np.arange(len(chosen)), chosen].sum()) / ref_words

    per_exit = [wer_of(np.full(len(texts), j)) for j in range(n_exits)]
    target = per_exit[-1] + 2.0 if target_wer is None else float(target_wer)
    out: dict[str, Any] = {"calibrated_on": "TFLM int8 device exits + server ONNX on the dequantized TFLM handoff",
                           "utterances": len(texts), "target_wer": round(target, 3),
                           "device_exits": k, "answering_exit_layers": exit_layers,
                           "wer_per_exit": [round(w, 3) for w in per_exit], "rule": "first device exit whose "
                           "measure <= threshold, else the last exit", "measures": {}}
    layers = np.array(exit_layers)
    for name, fn in DEVICE_MEASURES.items():
        values = np.array([[fn(lp) for lp in row[:k]] for row in logps])  # [N, K]: the device measures
        cands = np.unique(np.quantile(values, np.linspace(0, 1, n_candidates)))
        cands = np.concatenate([[values.min() - 1.0], cands])  # never exit early: the last exit alone
        best = None
        for th in cands:
            chosen = _select(values, float(th), n_exits - 1)
            w = wer_of(chosen)
            avg = float(layers[chosen].mean())
            if w <= target and (best is None or avg < best["avg_exit_layer"] - 1e-9):
                best = {"threshold": float(th), "wer": round(w, 3), "avg_exit_layer": round(avg, 3)}
        out["measures"][name] = best
    usable = {k: v for k, v in out["measures"].items() if v is not None}
    out["default_measure"] = min(usable, key=lambda k: usable[k]["avg_exit_layer"]) if usable else None
    return out


__all__ = ["calibrate", "DEVICE_MEASURES"]
