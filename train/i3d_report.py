"""I3D analysis on a set of utterances: WER and executed layers per threshold beta (the paper's Fig. 2-4),
gate probabilities per layer (Fig. 5-6) and modules used against utterance length (Fig. 7).

Greedy CTC at the last exit, on the cached features of a split (`Utterances`: whole utterances that fit the
device window), as the trainer's dev evaluation and the pruning baseline (train/prune.py) score them, so the
three are comparable point for point. "Layers" is the paper's count: executed modules / 2.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from eeasr.exits import greedy_ctc
from eeasr.metrics import wer
from eeasr.tokenizer import Tokenizer
from eeasr.train.dataset import Utterances, bucket_batches
from eeasr.train.i3d import FFN, MHA, I3DTransformer


@dataclass
class BetaPoint:
    beta: float
    wer: float
    avg_layers: float  # mean over utterances of executed modules / 2
    avg_mha: float
    avg_ffn: float


@dataclass
class UttGates:
    id: str
    seconds: float
    mha: int           # attention modules executed
    ffn: int           # feed-forward modules executed


@dataclass
class GateReport:
    points: list[BetaPoint]
    beta: float            # the threshold the per-layer and per-utterance data were taken at
    prob_mean: np.ndarray  # [N, 2] p(execute) per layer (MHA, FFN), mean over utterances
    prob_std: np.ndarray   # [N, 2] its standard deviation
    utts: list[UttGates]


@torch.no_grad()
def _decode(model: I3DTransformer, data: Utterances, tokenizer: Tokenizer, batches: list[list[int]],
            beta: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Texts, gates [U, N, 2] and probabilities [U, N, 2], in the order of the flattened batches."""
    dev = next(model.parameters()).device
    texts, gates, probs = [], [], []
    for idx in batches:
        b = data.collate(idx)
        out = model.gated(b.feats.to(dev), b.n_frames.to(dev), beta=beta)
        lp = out.logps[-1].float().cpu().numpy()
        texts += [tokenizer.decode(greedy_ctc(lp[i, : out.lengths[i]])) for i in range(len(idx))]
        gates.append(out.gates.cpu().numpy())
        probs.append(out.probs.float().cpu().numpy())
    return texts, np.concatenate(gates), np.concatenate(probs)


def gate_report(model: I3DTransformer, data: Utterances, tokenizer: Tokenizer, betas: Sequence[float],
                beta: float | None = None, max_frames: int = 24000, frame_s: float = 0.01) -> GateReport:
    """Decode `data` at every threshold in `betas`; per-layer and per-utterance gate data at `beta` (default: the
    model's own). `frame_s` is the feature hop in seconds (utterance lengths for Fig. 7)."""
    beta = model.beta if beta is None else beta
    model.eval()
    batches = bucket_batches(data.lengths, max_frames, seed=0, epoch=0, shuffle=False)
    order = [i for idx in batches for i in idx]
    refs = [data.texts[i] for i in order]
    points, at_beta = [], None
    for b in sorted(set(betas) | {beta}):
        texts, gates, probs = _decode(model, data, tokenizer, batches, b)
        if b in betas:
            used = gates.sum(1)  # [U, 2] modules executed per utterance
            points.append(BetaPoint(b, wer(refs, texts), float(used.sum(1).mean() / 2), float(used[:, MHA].mean()),
                                    float(used[:, FFN].mean())))
        if b == beta:
            at_beta = (gates, probs)
    gates, probs = at_beta
    utts = [UttGates(data.ids[i], float(data.lengths[i] * frame_s), int(g[:, MHA].sum()), int(g[:, FFN].sum()))
            for i, g in zip(order, gates)]
    return GateReport(points, beta, probs.mean(0), probs.std(0), utts)


def write_gate_report(rep: GateReport, out: Path, title: str,
                      pruned: Sequence[tuple[int, float]] = ()) -> list[Path]:
    """sweep.csv/png (WER vs average layers per beta, with the pruned baseline's (layers, WER) points when
    given), gates.csv/png (Fig. 5-6) and utts.csv + lengths.png (Fig. 7). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "sweep.csv", ["beta", "wer", "avg_layers", "avg_mha", "avg_ffn"],
               [[p.beta, f"{p.wer:.2f}", f"{p.avg_layers:.3f}", f"{p.avg_mha:.3f}", f"{p.avg_ffn:.3f}"]
                for p in rep.points])
    _write_csv(out / "gates.csv", ["layer", "mha_mean", "mha_std", "ffn_mean", "ffn_std"],
               [[n + 1, *(f"{v:.4f}" for v in (m[MHA], s[MHA], m[FFN], s[FFN]))]
                for n, (m, s) in enumerate(zip(rep.prob_mean, rep.prob_std))])
    _write_csv(out / "utts.csv", ["id", "seconds", "mha", "ffn"],
               [[u.id, f"{u.seconds:.2f}", u.mha, u.ffn] for u in rep.utts])

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot([p.avg_layers for p in rep.points], [p.wer for p in rep.points], "-o", label="I3D (threshold beta)")
    for p in rep.points:
        ax.annotate(f"{p.beta:g}", (p.avg_layers, p.wer), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if pruned:
        ax.plot(*zip(*sorted(pruned)), "--s", markersize=4, label="pruned (LayerDrop + InterCTC)")
    ax.set_xlabel("average number of layers ((MHA + FFN modules) / 2)")
    ax.set_ylabel("WER (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out / "sweep.png")

    layers = np.arange(1, len(rep.prob_mean) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, m, name in zip(axes, (MHA, FFN), ("MHA", "FFN")):
        ax.bar(layers, rep.prob_mean[:, m], yerr=rep.prob_std[:, m], capsize=3, color="tab:blue", alpha=0.8)
        ax.axhline(rep.beta, color="tab:red", linewidth=1, label=f"beta = {rep.beta:g}")
        ax.set_xlabel("layer")
        ax.set_title(f"{name} gate probability")
        ax.set_xticks(layers)
        ax.legend()
    axes[0].set_ylabel("p(execute), mean and std")
    axes[0].set_ylim(0, 1.05)
    fig.suptitle(title)
    _save(fig, out / "gates.png")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, name in zip(axes, ("mha", "ffn")):
        counts = sorted({getattr(u, name) for u in rep.utts})
        ax.boxplot([[u.seconds for u in rep.utts if getattr(u, name) == c] for c in counts])
        ax.set_xticks(range(1, len(counts) + 1), [str(c) for c in counts])
        ax.set_xlabel(f"{name.upper()} modules used")
    axes[0].set_ylabel("utterance length (s)")
    fig.suptitle(f"{title}: length by modules used (beta = {rep.beta:g})")
    _save(fig, out / "lengths.png")
    return [out / n for n in ("sweep.csv", "gates.csv", "utts.csv", "sweep.png", "gates.png", "lengths.png")]


WER_AXIS_CAP = 100.0  # the comparison plot's top: points above it are listed, not drawn


@dataclass
class Curve:
    """One model family on the WER-vs-layers plot: a line of points (an I3D sweep over beta, a pruning path) or
    single static models (label per point)."""
    label: str
    points: list[tuple[float, float, str]]  # (average layers, WER %, what the point is: beta, depth, run)
    line: bool = True


def write_comparison(curves: Sequence[Curve], out: Path, title: str) -> list[Path]:
    """The paper's Fig. 2-3 shape: WER against average executed layers for every curve on one plot
    (compare.png), the same points as compare.csv and as a Markdown table (compare.md). Returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rows = [[c.label, note, f"{x:.2f}", f"{y:.2f}"] for c in curves for x, y, note in c.points]
    _write_csv(out / "compare.csv", ["model", "point", "avg_layers", "wer"], rows)
    md = ["| model | point | avg layers | WER % |", "|---|---|---:|---:|"]
    md += [f"| {m} | {p} | {x} | {y} |" for m, p, x, y in rows]
    (out / "compare.md").write_text("\n".join(md) + "\n")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for c in curves:
        pts = sorted(c.points)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o" if c.line else "s", markersize=4 if c.line else 8,
                label=c.label)
    # Degenerate points (e.g. beta = 1: no module runs, WER far above 100) would flatten the curves that matter.
    wers = [y for c in curves for _, y, _ in c.points]
    if max(wers) > WER_AXIS_CAP:
        ax.set_ylim(min(wers) - 2, WER_AXIS_CAP)
        ax.text(0.02, 0.98, f"{sum(w > WER_AXIS_CAP for w in wers)} point(s) above {WER_AXIS_CAP:g}% WER off the "
                "plot (compare.csv has them)", transform=ax.transAxes, va="top", fontsize=7)
    ax.set_xlabel("average number of layers ((MHA + FFN modules) / 2)")
    ax.set_ylabel("WER (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out / "compare.png")
    return [out / n for n in ("compare.csv", "compare.md", "compare.png")]


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _save(fig: object, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["BetaPoint", "UttGates", "GateReport", "gate_report", "write_gate_report"]
