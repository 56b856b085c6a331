"""The whole split's WER, the share of windows ended on the device and the upward bytes, as the device's exit
threshold varies (EXITS=2: exits 1 and 2 on the device, the last exit on the server).

    nice -n 19 .venv/bin/python bench/split_sweep.py                     # models/default, whole test split
    nice -n 19 .venv/bin/python bench/split_sweep.py --limit 300         # a fixed seeded subset of 300 utterances
    nice -n 19 .venv/bin/python bench/split_sweep.py --bundle DIR        # another EXITS=2 bundle of --model

Without --bundle, the bundle is the one `eeasr-host stream` uses: models/default converted with --exits 2 into
~/.cache/eeasr/bundles/<model hash>-k2 (converted on first use, reused while it matches the model). Test
utterances are cut into device windows exactly as bench/int8_wer.py and `eeasr-train eval` cut them. Every
window then runs once through the whole split:
- the device program (eeasr.device_program) under the real TFLM interpreter, segments 1 and 2; at each device
  exit, the frame entropy and the non-blank entropy of the log-softmax of the dequantized int8 logits (what
  the device computes) and the greedy text;
- the server's code path (eeasr.host.server.Suffix: the bundle's ONNX under onnxruntime) on the dequantized
  int8 handoff, greedy text at the last exit; the handoff's size as a protocol frame (what goes upward).
The thresholds are then swept offline for both measures, from "never exit early" to "always exit at exit 1"
(40 points on the quantiles of the measure over both device exits, plus the bundle's calibrated threshold).
The policy is the device's: the first device exit whose measure <= threshold answers, else the server does.
Per threshold: the share of windows (and of utterances, all of whose windows) ended on the device, the
system WER (window texts joined per utterance), and the handoff bytes per second of audio (0 for a window
ended on the device).

Before the run, the cost per window is measured on a few windows: when no --limit is given and the estimate
exceeds --budget-min minutes, a fixed seeded subset of --fallback-limit utterances is scored instead, and the
output says so. Writes split_sweep.md, split_sweep.csv (the sweep), split_sweep_windows.csv (every window's
measures and texts) and split_sweep.png under --out.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from report import parser, save_figure, write_tables  # noqa: E402
from int8_wer import Item, load_items, log  # noqa: E402
from testset import add_subset_args, choose, fit_budget  # noqa: E402

from eeasr.bundle import Bundle, BundleError, load_bundle  # noqa: E402
from eeasr.device_program import DeviceProgram  # noqa: E402
from eeasr.exits import BLANK, frame_entropy, greedy_ctc, nonblank_entropy  # noqa: E402
from eeasr.metrics import wer  # noqa: E402
from eeasr.protocol import Handoff, ResultFlag, pack_frame  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MEASURES = ("entropy", "nonblank_entropy")   # the manifest's names of the device's exit measures
POINTS = 40
PROBE_WINDOWS = 4
PCM_BYTES_PER_S = 32000      # raw 16-bit PCM at 16 kHz
CODEC_BYTES_PER_S = 2000     # a 16 kbit/s speech codec


@dataclass
class WindowRun:
    """One window through the split: per device exit its measures and greedy text; the server's text; the
    handoff frame's size."""
    utt: int
    window: int
    measures: dict[str, list[float]]
    texts: list[str]
    server_text: str
    handoff_bytes: int


def get_bundle(bundle_dir: Path | None, model_dir: Path) -> Bundle:
    if bundle_dir is None:
        from eeasr.host.bundle_cache import default_bundle

        try:
            bundle_dir = default_bundle(log, model_dir)
        except BundleError as e:
            raise SystemExit(str(e)) from None
        log(f"bundle {bundle_dir}")
    try:
        b = load_bundle(bundle_dir)
    except BundleError as e:
        raise SystemExit(str(e)) from None
    if b.manifest.get("server") is None:
        raise SystemExit(f"{bundle_dir}: every exit is on the device; there is no split to sweep")
    return b


def run_split(program: DeviceProgram, suffix, decode, bundle: Bundle, items: list[Item],  # noqa: ANN001
              progress: bool) -> list[list[WindowRun]]:
    """Every window through the device program (all device exits) and the server's last exit."""
    from tqdm import tqdm

    blank = int(bundle.manifest["model"].get("blank", BLANK))
    layer = int(bundle.manifest["device"]["handoff"]["layer"])
    runs: list[list[WindowRun]] = []
    bar = tqdm(total=sum(len(it.windows) for it in items), desc="TFLM + server", unit="win", disable=not progress)
    for i, it in enumerate(items):
        runs.append([])
        for j, w in enumerate(it.windows):
            out = program.run(*program.quantize_features(w))
            measures: dict[str, list[float]] = {m: [] for m in MEASURES}
            texts = []
            for ex in out.exits:
                lp = ex.log_probs()
                measures["entropy"].append(frame_entropy(lp))
                measures["nonblank_entropy"].append(nonblank_entropy(lp, blank))
                texts.append(decode(greedy_ctc(lp, blank)))
            server = suffix.run_batch([out.hidden])[0]
            flags = ResultFlag.FINAL if j == len(it.windows) - 1 else 0
            frame = pack_frame(Handoff(i, j, flags, layer, bundle.model_hash[:16], out.hidden_qparams.scale,
                                       out.hidden_qparams.zero_point, out.hidden_q), j)
            runs[-1].append(WindowRun(i, j, measures, texts, server.text, len(frame)))
            bar.update(1)
    bar.close()
    return runs


def answering_exit(w: WindowRun, measure: str, threshold: float) -> int:
    """The device's policy: the first device exit (1-based) whose measure <= threshold; 0: handed off."""
    for k, v in enumerate(w.measures[measure]):
        if v <= threshold:
            return k + 1
    return 0


def evaluate(runs: list[list[WindowRun]], refs: list[str], audio_s: float, measure: str, threshold: float,
             n_exits: int) -> dict:
    hyps, at = [], np.zeros(n_exits + 1, int)
    up, utts_device = 0, 0
    for utt in runs:
        parts, on_device = [], True
        for w in utt:
            k = answering_exit(w, measure, threshold)
            at[k] += 1
            if k:
                parts.append(w.texts[k - 1])
            else:
                parts.append(w.server_text)
                up += w.handoff_bytes
                on_device = False
        utts_device += on_device
        hyps.append(" ".join(p for p in parts if p).strip())
    n = max(1, int(at.sum()))
    return {"device_windows_pct": 100.0 * at[1:].sum() / n,
            **{f"exit{k}_pct": 100.0 * at[k] / n for k in range(1, n_exits + 1)},
            "device_utts_pct": 100.0 * utts_device / max(1, len(runs)),
            "wer": wer(refs, hyps), "up_bytes_per_s": up / audio_s}


def thresholds(runs: list[list[WindowRun]], measure: str) -> np.ndarray:
    """POINTS - 1 quantiles (0..1) of the measure over every window's device exits; with -inf ("never exit")
    first, and the maximum (every window exits at exit 1) last."""
    values = np.array([v for utt in runs for w in utt for v in w.measures[measure]])
    return np.concatenate([[-np.inf], np.unique(np.quantile(values, np.linspace(0, 1, POINTS - 1)))])


def fmt_threshold(t: float) -> str:
    return "never" if t == -np.inf else f"{t:.3e}"


def write_png(rows: list[dict], calibrated: dict[str, float | None], refs: dict[str, float], path: Path,
              title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=110)
    for ax, measure in zip(axes[:2], MEASURES):
        rs = [r for r in rows if r["measure"] == measure and r["threshold"] != -np.inf]
        x = [r["threshold"] for r in rs]
        ax.plot(x, [r["wer"] for r in rs], "o-", ms=3, color="C0", label="system WER %")
        ax.axhline(refs["server"], color="C0", ls=":", lw=1, label="server only (last exit)")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
        ax.set_xlabel(f"device exit threshold ({measure})")
        ax.set_ylabel("WER %", color="C0")
        ax2 = ax.twinx()
        ax2.plot(x, [r["device_windows_pct"] for r in rs], "s--", ms=3, color="C1", label="ended on device %")
        ax2.plot(x, [r["exit1_pct"] for r in rs], "^:", ms=3, color="C2", label="ended at exit 1 %")
        ax2.set_ylabel("% of windows", color="C1")
        ax2.set_ylim(-2, 102)
        if calibrated[measure] is not None:
            ax.axvline(calibrated[measure], color="k", lw=1, ls="--", label="calibrated (manifest)")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="center left")
        ax.grid(alpha=0.3)
        ax.set_title(measure, fontsize=9)
    ax = axes[2]
    for c, measure in enumerate(MEASURES):
        rs = [r for r in rows if r["measure"] == measure and not r["calibrated"]]
        ax.plot([r["up_bytes_per_s"] for r in rs], [r["wer"] for r in rs], "o-", ms=3, color=f"C{c}",
                label=measure)
        cal = [r for r in rows if r["measure"] == measure and r["calibrated"]]
        if cal:
            ax.plot([cal[0]["up_bytes_per_s"]], [cal[0]["wer"]], "*", ms=14, color=f"C{c}", mec="k",
                    label=f"{measure}: calibrated")
    ax.axvline(CODEC_BYTES_PER_S, color="gray", ls=":", lw=1, label="16 kbit/s codec (2 KB/s)")
    ax.set_xlabel("handoff bytes upward per second of audio")
    ax.set_ylabel("system WER %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("WER vs uplink", fontsize=9)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "default",
                    help="model directory: windows are cut with its features (default: models/default)")
    ap.add_argument("--bundle", type=Path, default=None,
                    help="an EXITS=2 bundle of --model (default: the one `eeasr-host stream` uses, converted "
                         "on first use)")
    add_subset_args(ap, budget_min=20.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="output directory (default: bench/out)")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = ap.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["nice -n 19 .venv/bin/python bench/split_sweep.py", *given])

    bundle = get_bundle(args.bundle, args.model)
    import torch

    from eeasr.host.server import Suffix
    from eeasr.train.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    ck = load_checkpoint(args.model)
    if ck.model_hash != bundle.model_hash:
        raise SystemExit(f"{bundle.path} is model {bundle.model_hash}, {args.model} is model {ck.model_hash}: pass "
                         f"a bundle converted from {args.model}")
    t_start = time.perf_counter()
    program = DeviceProgram.from_bundle(bundle)
    suffix = Suffix(bundle, threads=1)
    n_exits = len(program.stages)
    all_utts, utts, subset_note = choose(args)
    items, skipped = load_items(ck, utts, args.progress)
    for s in skipped:
        log(f"skipped: {s}")

    # speed probe: the whole split on a few windows, and the estimate of the run
    probe = Item(items[0].utt, [w for it in items for w in it.windows][:PROBE_WINDOWS])
    t = time.perf_counter()
    run_split(program, suffix, ck.tokenizer.decode, bundle, [probe], progress=False)
    per_window = (time.perf_counter() - t) / len(probe.windows)
    n_windows = sum(len(it.windows) for it in items)
    estimate_min = n_windows * per_window / 60
    log(f"{per_window:.3f} s per window ({n_exits} TFLM segments + server model); {n_windows} windows of "
        f"{len(items)} utterances -> about {estimate_min:.1f} min")
    items, over = fit_budget(args, all_utts, items, estimate_min,
                             f"{estimate_min:.0f} min ({per_window:.2f} s per window x {n_windows} windows)")
    if over:
        subset_note = over
        log(f"over budget: scoring {subset_note.split(':')[0]}")

    t_pass = time.perf_counter()
    runs = run_split(program, suffix, ck.tokenizer.decode, bundle, items, args.progress)
    pass_s = time.perf_counter() - t_pass
    refs = [it.utt.text for it in items]
    audio_s = float(sum(it.utt.duration for it in items))
    n_windows = sum(len(r) for r in runs)

    th = bundle.thresholds
    calibrated: dict[str, float | None] = {}
    for m in MEASURES:
        entry = (th.get("measures") or {}).get(m)
        calibrated[m] = float(entry["threshold"]) if entry and entry.get("threshold") is not None else None
    rows = []
    for m in MEASURES:
        points = [(float(t), False) for t in thresholds(runs, m)]
        if calibrated[m] is not None:
            points.append((calibrated[m], True))
        for t, cal in sorted(points, key=lambda p: p[0]):
            rows.append({"measure": m, "threshold": t, "calibrated": cal,
                         **evaluate(runs, refs, audio_s, m, t, n_exits)})
    server_only = evaluate(runs, refs, audio_s, "entropy", -np.inf, n_exits)
    ref_wer = {"server": server_only["wer"]}
    for k in range(n_exits):   # device only, answering at exit k+1 whatever the measure
        hyps = [" ".join(w.texts[k] for w in utt if w.texts[k]).strip() for utt in runs]
        ref_wer[f"exit{k + 1}"] = wer(refs, hyps)
    handoff_all = server_only["up_bytes_per_s"]

    from importlib.metadata import version

    layers = [s.exit_layer for s in program.stages]
    last = bundle.manifest["exits"][-1]
    wall = time.perf_counter() - t_start
    device_exits = ", ".join(f"{k + 1} (layer {lay})" for k, lay in enumerate(layers))
    head = (f"The whole split (EXITS={bundle.device_exits}: device exits {device_exits} int8 under TFLM, server exit "
            f"{last['index']} (layer {last['layer']}) under onnxruntime on the dequantized int8 handoff) as the "
            f"device's exit threshold varies; greedy CTC; {subset_note}: {len(items)} utterances, "
            f"{n_windows} windows of W={program.window}, {audio_s / 60:.1f} min of audio. Model {bundle.model_hash}, "
            f"bundle {bundle.bundle_id[:12]}, tflite-micro {version('tflite-micro')}, onnxruntime "
            f"{version('onnxruntime')}. Policy: the first device exit whose measure <= threshold answers, else the "
            f"server. Upward bytes: HANDOFF protocol frames (header, payload, CRC; as the host posts them) per "
            f"second of audio; raw 16-bit PCM is {PCM_BYTES_PER_S} B/s, a 16 kbit/s codec {CODEC_BYTES_PER_S} B/s. "
            f"The pass took {pass_s / 60:.1f} min ({pass_s / max(1, n_windows):.2f} s per window on this machine), "
            f"{wall / 60:.1f} min in all.\n\n`{command}`\n\n"
            f"References: server only (every window handed off) WER {ref_wer['server']:.1f} % at "
            f"{handoff_all:.0f} B/s upward ({100 * handoff_all / PCM_BYTES_PER_S:.1f} % of PCM); "
            + "; ".join(f"device only at exit {k + 1} (layer {lay}) WER {ref_wer[f'exit{k + 1}']:.1f} %"
                        for k, lay in enumerate(layers))
            + f" (0 B/s). Calibrated thresholds (manifest, {th.get('utterances', '?')} calibration utterances, "
              f"default measure {th.get('default_measure')}): "
            + ", ".join(f"{m} {'none' if c is None else f'{c:.3e}'}" for m, c in calibrated.items()) + ".\n")
    tables = ""
    for m in MEASURES:
        tables += (f"\n**{m}**\n\n| threshold | ended on device: windows % | at exit 1 % | at exit 2 % | "
                   f"utterances on device % | system WER % | upward B/s of audio |\n|---|---|---|---|---|---|---|\n")
        for r in rows:
            if r["measure"] != m:
                continue
            t = fmt_threshold(r["threshold"]) + (" **(calibrated)**" if r["calibrated"] else "")
            tables += (f"| {t} | {r['device_windows_pct']:.1f} | {r['exit1_pct']:.1f} | {r['exit2_pct']:.1f} | "
                       f"{r['device_utts_pct']:.1f} | {r['wer']:.1f} | {r['up_bytes_per_s']:.0f} |\n")
    text = head + tables
    write_tables(args.out, "split_sweep", text,
                 [{k: (round(v, 4) if isinstance(v, float) and k != "threshold" else v) for k, v in r.items()}
                  for r in rows])
    with open(args.out / "split_sweep_windows.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "window", "reference", *[f"{m}_exit{k + 1}" for k in range(n_exits) for m in MEASURES],
                    *[f"text_exit{k + 1}" for k in range(n_exits)], "text_server", "handoff_bytes"])
        for it, utt in zip(items, runs):
            for r in utt:
                w.writerow([it.utt.id, r.window, it.utt.text,
                            *[f"{r.measures[m][k]:.6g}" for k in range(n_exits) for m in MEASURES],
                            *r.texts, r.server_text, r.handoff_bytes])
    write_png(rows, calibrated, ref_wer, args.out / "split_sweep.png",
              f"{args.model.name}, EXITS={bundle.device_exits}: system WER and share ended on the device vs the exit "
              f"threshold ({len(items)} {args.split} utterances)")
    log(f"wrote {args.out}/split_sweep.md, split_sweep.csv, split_sweep_windows.csv, split_sweep.png")


if __name__ == "__main__":
    main()
