"""WER of every int8 device exit under TFLM vs the float model, on the synthetic held-out test set.

    .venv/bin/python bench/int8_wer.py                                  # models/default, test split
    .venv/bin/python bench/int8_wer.py --limit 300                      # a fixed seeded subset of 300 utterances
    .venv/bin/python bench/int8_wer.py --bundle DIR --out bench/out     # a bundle converted with every exit on the device

The bundle must hold every exit of the model on the device (EXITS = all); without --bundle the model is
converted once with `eeasr-convert MODEL --exits ALL` into ~/.cache/eeasr/bundles/ (reused while it matches the
model). Test utterances go through the device front end and are cut into device windows exactly as
`eeasr-train eval` does (eeasr.features.log_mel, the model's normalization, eeasr.windows cuts). Each
window then runs:
- int8: the device program (eeasr.device_program) under the real TFLM interpreter, segment by segment with
  the manifest's requantization at the boundaries; greedy CTC on the log-softmax of each exit's int8 logits;
- float: the torch model on the unpadded window; greedy CTC at each exit.
Window texts are joined per utterance; WER per exit with a paired bootstrap 95% interval of the difference
(int8 - float, resampling utterances), and the frame-level argmax agreement of int8 with float.

Before the run, TFLM's CPU time per window is measured on a few windows and the int8 pass estimated: when no
--limit is given and the estimate exceeds --budget-min minutes, a fixed seeded subset of --fallback-limit
utterances is scored instead, and the output says so. Writes int8_wer.md, int8_wer.csv, int8_wer.png and
int8_wer_hyps.csv under --out.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from report import parser, save_figure, write_tables  # noqa: E402
from testset import add_subset_args, choose, fit_budget  # noqa: E402

from eeasr.audio import AudioError, load_audio  # noqa: E402
from eeasr.bundle import MANIFEST, Bundle, BundleError, load_bundle  # noqa: E402
from eeasr.device_program import DeviceProgram  # noqa: E402
from eeasr.exits import greedy_ctc  # noqa: E402
from eeasr.features import log_mel  # noqa: E402
from eeasr.manifest import Utterance  # noqa: E402
from eeasr.metrics import _counts, wer  # noqa: E402
from eeasr.paths import default_cache_dir  # noqa: E402
from eeasr.windows import frame_energy, window_spans  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROBE_WINDOWS = 4


@dataclass
class Item:
    """One test utterance: its normalized feature windows and, per exit, the window texts."""
    utt: Utterance
    windows: list[np.ndarray]
    float_text: list[list[str]] = field(default_factory=list)  # [exit][window]
    int8_text: list[list[str]] = field(default_factory=list)
    float_path: list[list[np.ndarray]] = field(default_factory=list)  # [exit][window]: argmax per valid frame


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def get_bundle(model_dir: Path, ck, bundle_dir: Path | None) -> Bundle:  # noqa: ANN001
    n = len(ck.cfg.model.exits)
    if bundle_dir is not None:
        b = load_bundle(bundle_dir, model_hash=ck.model_hash)
        if b.device_exits != n:
            raise SystemExit(f"{bundle_dir}: EXITS={b.device_exits}, this benchmark needs every exit on the device "
                             f"(convert with --exits {n})")
        return b
    bundle_dir = default_cache_dir() / "bundles" / f"{ck.model_hash}-exits{n}"
    if (bundle_dir / MANIFEST).exists():
        try:
            b = load_bundle(bundle_dir, model_hash=ck.model_hash)
            if b.device_exits == n:
                log(f"reusing bundle {bundle_dir} ({b.bundle_id[:12]})")
                return b
        except BundleError as e:
            log(f"{bundle_dir}: {e}; converting again")
    from eeasr.convert.build import ConvertOptions, convert_checkpoint

    log(f"converting {model_dir} with every exit on the device (--exits {n}) into {bundle_dir}")
    t = time.perf_counter()
    b = convert_checkpoint(model_dir, bundle_dir, ConvertOptions(exits=n), log=log)
    log(f"converted in {time.perf_counter() - t:.0f} s")
    return b


def load_items(ck, utts: list[Utterance], progress: bool) -> tuple[list[Item], list[str]]:  # noqa: ANN001
    """Features and windows as `eeasr-train eval` computes them (train/evaluate.py)."""
    from tqdm import tqdm

    items, skipped = [], []
    for u in tqdm(utts, desc="features", unit="utt", disable=not progress):
        try:
            pcm = load_audio(u.path)
        except AudioError as e:
            skipped.append(str(e))
            continue
        logmel = log_mel(pcm, ck.features)
        feats = ck.norm.apply(logmel)
        spans = window_spans(frame_energy(logmel), ck.cfg.data.window)
        if spans:
            items.append(Item(u, [feats[a:b] for a, b in spans]))
    return items, skipped


def run_float(ck, items: list[Item], batch_frames: int, progress: bool) -> None:  # noqa: ANN001
    """Greedy text of every window at every exit of the float torch model (batched by length, as eval)."""
    import torch
    from tqdm import tqdm

    n_exits = len(ck.cfg.model.exits)
    flat = [(i, j) for i, it in enumerate(items) for j in range(len(it.windows))]
    for it in items:
        it.float_text = [[""] * len(it.windows) for _ in range(n_exits)]
        it.float_path = [[np.zeros(0, np.int64)] * len(it.windows) for _ in range(n_exits)]
    order = sorted(range(len(flat)), key=lambda k: len(items[flat[k][0]].windows[flat[k][1]]))
    bar = tqdm(total=len(flat), desc="float (torch)", unit="win", disable=not progress)
    k = 0
    with torch.no_grad():
        while k < len(order):
            longest = len(items[flat[order[min(len(order) - 1, k)]][0]].windows[flat[order[min(len(order) - 1, k)]][1]])
            n = max(1, min(len(order) - k, batch_frames // max(1, longest)))
            idx = [flat[q] for q in order[k:k + n]]
            ws = [items[i].windows[j] for i, j in idx]
            t = max(len(w) for w in ws)
            x = torch.zeros(len(ws), t, ws[0].shape[1])
            for r, w in enumerate(ws):
                x[r, : len(w)] = torch.from_numpy(np.ascontiguousarray(w, np.float32))
            logps, lengths = ck.model(x, torch.tensor([len(w) for w in ws]))
            for r, (i, j) in enumerate(idx):
                for e, lp in enumerate(logps):
                    v = lp[r, : lengths[r]].numpy()
                    items[i].float_path[e][j] = v.argmax(-1)
                    items[i].float_text[e][j] = ck.tokenizer.decode(greedy_ctc(v))
            k += n
            bar.update(n)
    bar.close()


def run_int8(program: DeviceProgram, decode, items: list[Item], progress: bool) -> tuple[float, list[float]]:  # noqa: ANN001
    """Greedy text of every window at every device exit under TFLM. Returns seconds per window and, per exit,
    the fraction of valid encoder frames whose argmax label equals the float model's (run_float first)."""
    from tqdm import tqdm

    n_exits = len(program.stages)
    same, frames = np.zeros(n_exits), 0
    total = sum(len(it.windows) for it in items)
    bar = tqdm(total=total, desc="int8 (TFLM)", unit="win", disable=not progress)
    t0 = time.perf_counter()
    for it in items:
        it.int8_text = [[""] * len(it.windows) for _ in range(n_exits)]
        for j, w in enumerate(it.windows):
            out = program.run(*program.quantize_features(w))
            for e, ex in enumerate(out.exits):
                lp = ex.log_probs()
                it.int8_text[e][j] = decode(greedy_ctc(lp))
                same[e] += int((lp.argmax(-1) == it.float_path[e][j]).sum())
            frames += out.encoder_frames
            bar.update(1)
    bar.close()
    return (time.perf_counter() - t0) / max(1, total), list(same / max(1, frames))


def paired_interval(refs: list[str], a: list[str], b: list[str], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of WER(b) - WER(a), resampling utterances (paired)."""
    ca, cb = _counts(refs, a, "word"), _counts(refs, b, "word")
    ea, eb, ref_len = ca[:, :3].sum(1), cb[:, :3].sum(1), ca[:, 3]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(refs), size=(n, len(refs)))
    words = np.maximum(1, ref_len[idx].sum(1))
    diff = 100.0 * (eb[idx].sum(1) - ea[idx].sum(1)) / words
    return float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))


def write_png(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    layers = [r["layer"] for r in rows]
    ax.plot(layers, [r["float_wer"] for r in rows], "o-", label="float (torch)")
    ax.plot(layers, [r["int8_wer"] for r in rows], "s--", label="int8 (TFLM, device program)")
    ax.set_xlabel("exit layer")
    ax.set_ylabel("greedy WER %")
    ax.set_xticks(layers)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "default",
                    help="model directory (default: models/default)")
    ap.add_argument("--bundle", type=Path, default=None,
                    help="bundle with every exit on the device (default: convert into ~/.cache/eeasr/bundles/)")
    add_subset_args(ap, budget_min=25.0, seed_help="seed of the subset and the bootstrap")
    ap.add_argument("--batch-frames", type=int, default=24000,
                    help="feature frames per float batch (default: %(default)d)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default: 1)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out",
                    help="output directory (default: bench/out)")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = ap.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["nice -n 19 .venv/bin/python bench/int8_wer.py", *given])

    import torch

    from eeasr.train.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    ck = load_checkpoint(args.model)
    layers = list(ck.cfg.model.exits)
    bundle = get_bundle(args.model, ck, args.bundle)
    t_start = time.perf_counter()  # the scoring, without the conversion
    cpu_start = time.process_time()
    program = DeviceProgram.from_bundle(bundle)
    all_utts, utts, subset_note = choose(args)
    items, skipped = load_items(ck, utts, args.progress)
    for s in skipped:
        log(f"skipped: {s}")

    # speed probe: TFLM per window, and the estimate of the whole run
    probe = [w for it in items for w in it.windows][:PROBE_WINDOWS]
    t, c = time.perf_counter(), time.process_time()
    for w in probe:
        program.run(*program.quantize_features(w))
    per_window = (time.process_time() - c) / max(1, len(probe))  # CPU: what the budget is about
    wall_per_window = (time.perf_counter() - t) / max(1, len(probe))
    n_windows = sum(len(it.windows) for it in items)
    estimate_min = n_windows * per_window / 60
    log(f"TFLM: {per_window:.3f} s CPU ({wall_per_window:.3f} s wall) per window ({len(program.stages)} segments); "
        f"{n_windows} windows of {len(items)} utterances -> about {estimate_min:.1f} min of CPU for the int8 pass")
    items, over = fit_budget(args, all_utts, items, estimate_min,
                             f"{estimate_min:.0f} min of TFLM CPU time ({per_window:.2f} s per window x {n_windows} "
                             f"windows)")
    if over:
        subset_note = over
        n_sub = sum(len(it.windows) for it in items)
        log(f"over budget: scoring {subset_note.split(':')[0]} ({n_sub} windows, about "
            f"{n_sub * per_window / 60:.1f} min)")

    run_float(ck, items, args.batch_frames, args.progress)
    s_per_window, agree = run_int8(program, ck.tokenizer.decode, items, args.progress)

    refs = [it.utt.text for it in items]
    rows = []
    for e, layer in enumerate(layers):
        f_h = [" ".join(it.float_text[e]).strip() for it in items]
        q_h = [" ".join(it.int8_text[e]).strip() for it in items]
        fw, qw = wer(refs, f_h), wer(refs, q_h)
        lo, hi = paired_interval(refs, f_h, q_h, seed=args.seed)
        rows.append({"exit": e + 1, "layer": layer, "float_wer": round(fw, 2), "int8_wer": round(qw, 2),
                     "delta": round(qw - fw, 2), "delta_ci_lo": round(lo, 2), "delta_ci_hi": round(hi, 2),
                     "frame_argmax_agreement": round(agree[e], 4), "within_1": bool(qw - fw <= 1.0)})
    n_windows = sum(len(it.windows) for it in items)
    words = int(_counts(refs, refs, "word")[:, 3].sum())
    from importlib.metadata import version

    wall = time.perf_counter() - t_start
    cpu = time.process_time() - cpu_start
    head = (f"int8 device exits under TFLM vs the float model, greedy CTC, {subset_note}: {len(items)} utterances, "
            f"{n_windows} windows of W={program.window}, {words} reference words. Model {ck.model_hash}, bundle "
            f"{bundle.bundle_id[:12]} (EXITS={bundle.device_exits}), tflite-micro {version('tflite-micro')}. "
            f"TFLM {s_per_window:.2f} s per window for {len(program.stages)} segments on this machine; scoring "
            f"took {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU (conversion not included).\n\n"
            f"`{command}`\n\n")
    table = ("| exit (layer) | float WER % | int8 TFLM WER % | int8 - float | 95% interval (paired bootstrap) | "
             "frame argmax agreement | within +1.0 |\n|---|---|---|---|---|---|---|\n")
    for r in rows:
        table += (f"| {r['exit']} ({r['layer']}) | {r['float_wer']:.1f} | {r['int8_wer']:.1f} | {round(r['delta'], 1) or 0.0:+.1f} | "
                  f"{r['delta_ci_lo']:+.1f} .. {r['delta_ci_hi']:+.1f} | {r['frame_argmax_agreement']:.3f} | "
                  f"{'yes' if r['within_1'] else 'NO'} |\n")
    text = head + table
    write_tables(args.out, "int8_wer", text, rows)
    with open(args.out / "int8_wer_hyps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "source", "reference", *[f"{k}_exit{e + 1}" for e in range(len(layers))
                                                    for k in ("float", "int8")]])
        for it in items:
            w.writerow([it.utt.id, it.utt.source, it.utt.text,
                        *[" ".join(getattr(it, f"{k}_text")[e]).strip() for e in range(len(layers))
                          for k in ("float", "int8")]])
    write_png(rows, args.out / "int8_wer.png", f"{args.model.name}: int8 TFLM vs float, {len(items)} {args.split} "
                                               f"utterances")
    log(f"wrote {args.out}/int8_wer.md, int8_wer.csv, int8_wer_hyps.csv, int8_wer.png")


if __name__ == "__main__":
    main()
