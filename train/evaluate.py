"""Evaluation of an early-exit model: WER per exit (greedy and beam), per engine, and exit selection.

Audio goes through the device front end (eeasr.features) and is cut into device windows (eeasr.windows), so
what is scored is what the device would see. Each window is decided on its own, as on the device: exit
selection picks, per window, the first exit whose measure passes the threshold (else the last exit).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from eeasr.audio import AudioError, load_audio
from eeasr.exits import ctc_collapse, frame_entropy, greedy_ctc, nbest_posterior, nonblank_entropy
from eeasr.features import log_mel
from eeasr.manifest import Utterance
from eeasr.metrics import bootstrap_interval, error_rate, wer
from eeasr.train.checkpoint import Checkpoint
from eeasr.windows import frame_energy, window_spans

MEASURES = ("entropy", "nonblank_entropy", "posterior")


class BeamDecoder:
    """CTC prefix beam search (flashlight-text's lexicon-free decoder, no LM): the K best label sequences."""

    def __init__(self, vocab_size: int, beam: int = 16, blank: int = 0) -> None:
        from flashlight.lib.text.decoder import (CriterionType, LexiconFreeDecoder, LexiconFreeDecoderOptions,
                                                 ZeroLM)

        opts = LexiconFreeDecoderOptions(beam_size=beam, beam_size_token=vocab_size, beam_threshold=50.0,
                                         lm_weight=0.0, sil_score=0.0, log_add=True,
                                         criterion_type=CriterionType.CTC)
        self._decoder = LexiconFreeDecoder(opts, ZeroLM(), -1, blank, [])
        self.blank = blank

    def nbest(self, logp: np.ndarray) -> list[tuple[list[int], float]]:
        """(labels, log-score) of the distinct best hypotheses, best first."""
        if len(logp) == 0:
            return [([], 0.0)]
        e = np.ascontiguousarray(logp, dtype=np.float32)
        merged: dict[tuple[int, ...], float] = {}
        for r in self._decoder.decode(e.ctypes.data, e.shape[0], e.shape[1]):
            labels = tuple(ctc_collapse([t for t in r.tokens if t >= 0], self.blank))
            merged[labels] = np.logaddexp(merged[labels], r.score) if labels in merged else r.score
        return sorted(((list(k), float(v)) for k, v in merged.items()), key=lambda x: -x[1])


@dataclass
class WindowResult:
    """One device window: per exit, the greedy and beam text and the three measures."""
    greedy: list[str] = field(default_factory=list)
    beam: list[str] = field(default_factory=list)
    measures: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


@dataclass
class UttResult:
    utt: Utterance
    windows: list[WindowResult]


def _windows(ck: Checkpoint, pcm: np.ndarray) -> list[np.ndarray]:
    logmel = log_mel(pcm, ck.features)
    feats = ck.norm.apply(logmel)
    return [feats[a:b] for a, b in window_spans(frame_energy(logmel), ck.cfg.data.window)]


def load_windows(ck: Checkpoint, utts: list[Utterance]
                 ) -> tuple[list[tuple[Utterance, list[np.ndarray]]], list[str]]:
    """The normalized feature windows of each readable utterance, and one-line messages for the unreadable ones."""
    items, skipped = [], []
    for u in utts:
        try:
            items.append((u, _windows(ck, load_audio(u.path))))
        except AudioError as e:
            skipped.append(str(e))
    return items, skipped


@torch.no_grad()
def run(ck: Checkpoint, utts: list[Utterance], beam: int = 16, batch_frames: int = 24000,
        progress: bool = True) -> tuple[list[UttResult], list[str]]:
    """Decode every utterance at every exit; returns results and one-line messages for skipped files."""
    from tqdm import tqdm

    decoder = BeamDecoder(ck.tokenizer.vocab_size, beam) if beam > 1 else None
    items, skipped = load_windows(ck, utts)
    flat = [(i, w) for i, (_, ws) in enumerate(items) for w in ws]
    order = sorted(range(len(flat)), key=lambda k: len(flat[k][1]))
    results = [UttResult(u, [WindowResult() for _ in ws]) for u, ws in items]
    slot = {}
    for i, (_, ws) in enumerate(items):
        for j in range(len(ws)):
            slot[len(slot)] = (i, j)
    bar = tqdm(total=len(flat), desc="decoding windows", disable=not progress)
    k = 0
    while k < len(order):
        longest = len(flat[order[min(len(order) - 1, k)]][1])
        n = max(1, min(len(order) - k, batch_frames // max(1, longest)))
        idx = order[k:k + n]
        t = max(len(flat[q][1]) for q in idx)
        x = torch.zeros(len(idx), t, flat[idx[0]][1].shape[1])
        for r, q in enumerate(idx):
            x[r, : len(flat[q][1])] = torch.from_numpy(flat[q][1])
        logps, lengths = ck.model(x, torch.tensor([len(flat[q][1]) for q in idx]))
        for r, q in enumerate(idx):
            ui, wi = slot[q]
            wr = results[ui].windows[wi]
            for lp in logps:
                v = lp[r, : lengths[r]].numpy()
                wr.greedy.append(ck.tokenizer.decode(greedy_ctc(v)))
                wr.measures["entropy"].append(frame_entropy(v))
                wr.measures["nonblank_entropy"].append(nonblank_entropy(v))
                if decoder is not None:
                    nb = decoder.nbest(v)
                    wr.beam.append(ck.tokenizer.decode(nb[0][0]))
                    wr.measures["posterior"].append(nbest_posterior([s for _, s in nb]))
        k += n
        bar.update(n)
    bar.close()
    return results, skipped


def texts_at_exit(results: list[UttResult], j: int, beam: bool = False) -> list[str]:
    return [" ".join((w.beam if beam else w.greedy)[j] for w in r.windows).strip() for r in results]


def wer_table(results: list[UttResult], exit_layers: list[int], beam: bool) -> str:
    """Markdown: WER per exit, greedy and (when decoded) beam."""
    refs = [r.utt.text for r in results]
    head = "| exit (layer) | greedy WER % | " + ("beam WER % |" if beam else "") + "\n"
    head += "|---|---|" + ("---|" if beam else "") + "\n"
    rows = []
    for j, layer in enumerate(exit_layers):
        row = f"| {j + 1} ({layer}) | {wer(refs, texts_at_exit(results, j)):.1f} |"
        if beam:
            row += f" {wer(refs, texts_at_exit(results, j, True)):.1f} |"
        rows.append(row)
    return head + "\n".join(rows) + "\n"


def compare_table(results: list[UttResult], exit_layers: list[int], single: dict[int, list[UttResult]],
                  beam: bool) -> str:
    """Markdown in the shape of paper 1's Table 2: each exit of the EE model next to a single-exit model of that
    depth (no-EE), scored on the same utterances."""
    refs = [r.utt.text for r in results]
    kinds = [False, True] if beam else [False]
    names = ["greedy", "beam"][: len(kinds)]
    head = "| layer | " + " | ".join(f"EE {n} WER % | no-EE {n} WER %" for n in names) + " |\n"
    head += "|---|" + "---|---|" * len(kinds) + "\n"
    rows = []
    for j, layer in enumerate(exit_layers):
        cells = []
        for b in kinds:
            base = "-"
            if layer in single:
                base = f"{wer([r.utt.text for r in single[layer]], texts_at_exit(single[layer], 0, b)):.1f}"
            cells.append(f"{wer(refs, texts_at_exit(results, j, b)):.1f} | {base}")
        rows.append(f"| {layer} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def per_group_table(results: list[UttResult], exit_layers: list[int], key: str = "source",
                    others: dict[str, list[str]] | None = None) -> str:
    """Markdown: greedy WER per exit for each engine family (or another manifest field), and the WER of other
    recognizers' hypotheses (`others`: name -> one text per result, e.g. pocketsphinx) on the same audio."""
    others = others or {}
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(results):
        groups[str(getattr(r.utt, key))].append(i)
    head = f"| {key} | utts | " + " | ".join(f"exit {j + 1} ({l})" for j, l in enumerate(exit_layers))
    head += "".join(f" | {name}" for name in others) + " |\n"
    head += "|---|---|" + "---|" * (len(exit_layers) + len(others)) + "\n"
    rows = []
    for g, idx in sorted(groups.items()):
        rs = [results[i] for i in idx]
        refs = [r.utt.text for r in rs]
        cells = [f"{wer(refs, texts_at_exit(rs, j)):.1f}" for j in range(len(exit_layers))]
        cells += [f"{wer(refs, [hyps[i] for i in idx]):.1f}" for hyps in others.values()]
        rows.append(f"| {g} | {len(rs)} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def interval_line(refs: list[str], hyps: list[str], seed: int = 0) -> str:
    """WER with its error count and a 95% bootstrap interval over utterances (few clips: the interval matters)."""
    lo, hi = bootstrap_interval(refs, hyps, n_resamples=2000, seed=seed)
    er = error_rate(refs, hyps)
    return f"{er.rate:.1f}% ({er.errors}/{er.ref_len} words; 95% bootstrap interval {lo:.1f}-{hi:.1f})"


def _passes(measure: str, value: float, threshold: float) -> bool:
    return value >= threshold if measure == "posterior" else value <= threshold


def select(results: list[UttResult], measure: str, threshold: float, exit_layers: list[int],
           beam: bool = False) -> tuple[list[str], float]:
    """Texts with per-window exit selection, and the average exit layer over windows."""
    texts, layers = [], []
    for r in results:
        parts = []
        for w in r.windows:
            vals = w.measures[measure]
            j = next((j for j, v in enumerate(vals) if _passes(measure, v, threshold)), len(exit_layers) - 1)
            parts.append((w.beam if beam else w.greedy)[j])
            layers.append(exit_layers[j])
        texts.append(" ".join(parts).strip())
    return texts, float(np.mean(layers)) if layers else math.nan


def thresholds(results: list[UttResult], measure: str, n: int = 40) -> np.ndarray:
    vals = np.array([v for r in results for w in r.windows for v in w.measures[measure]])
    return np.unique(np.quantile(vals, np.linspace(0, 1, n))) if len(vals) else np.array([])


def sweep(results: list[UttResult], exit_layers: list[int]) -> list[dict]:
    """Average exit vs WER for each measure over thresholds spanning its observed range (paper 1, Fig. 3)."""
    refs = [r.utt.text for r in results]
    rows = []
    for m in MEASURES:
        if not any(r.windows and r.windows[0].measures[m] for r in results):
            continue
        for th in thresholds(results, m):
            texts, avg = select(results, m, float(th), exit_layers, beam=(m == "posterior"))
            rows.append({"measure": m, "threshold": float(th), "avg_exit_layer": avg, "wer": wer(refs, texts)})
    return rows


def calibrate(results: list[UttResult], exit_layers: list[int], measure: str, target_wer: float) -> dict:
    """The threshold with the lowest average exit whose WER meets the target (on dev)."""
    refs = [r.utt.text for r in results]
    best = None
    for th in thresholds(results, measure, 200):
        texts, avg = select(results, measure, float(th), exit_layers, beam=(measure == "posterior"))
        w = wer(refs, texts)
        if w <= target_wer and (best is None or avg < best["avg_exit_layer"]):
            best = {"measure": measure, "threshold": float(th), "avg_exit_layer": avg, "wer": w}
    if best is None:
        raise ValueError(f"no {measure} threshold reaches WER {target_wer}% on this set "
                         f"(the last exit alone gives {wer(refs, texts_at_exit(results, len(exit_layers) - 1)):.1f}%)")
    return best


def write_sweep(rows: list[dict], csv_path: Path, png_path: Path, title: str) -> None:
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["measure", "threshold", "avg_exit_layer", "wer"])
        w.writeheader()
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for m, style in zip(MEASURES, ("-o", "--s", ":^")):
        pts = sorted((r["wer"], r["avg_exit_layer"]) for r in rows if r["measure"] == m)
        if pts:
            ax.plot(*zip(*pts), style, markersize=3, label=m.replace("_", " "))
    ax.set_xlabel("WER (%)")
    ax.set_ylabel("average exit layer")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
