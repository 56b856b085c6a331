"""Deployment cost of a gated (I3D) bundle against the gate threshold beta: modules and multiply-accumulates the
device runs per window, TFLM time, handoff bytes, the share of windows the device answers, and system WER.

    nice -n 19 .venv/bin/python bench/gated_cost.py --run ~/.cache/eeasr/runs/i3d-ggp     # test split, 100 utts
    nice -n 19 .venv/bin/python bench/gated_cost.py --bundle DIR --n 300 --betas 0,0.3,0.5,0.7,1
    nice -n 19 .venv/bin/python bench/gated_cost.py --bundle DIR --wav a.flac b.wav --refs manifest.jsonl

--run takes an I3D training run (or an exported model directory) and converts it once with eeasr.convert
(`eeasr-train export` first when it has no calibration set, then `eeasr-convert --exits K`) into
~/.cache/eeasr/bundles/, reused while it records the model and eeasr-convert's default options; --exits K
defaults to the last exit with a server part after it (a model whose only exit is its last layer runs entirely
on the device). --bundle takes a gated bundle as it is.

Audio: --wav files (each one utterance; --refs gives their transcripts), or else a fixed seeded subset of --n
utterances of a corpus split (bench/testset.py, the rule every benchmark shares; default: the run's corpus, or
~/.cache/eeasr/corpus, test split). A corpus utterance's log-mel features come from the feature cache
`eeasr-train fit` built for that manifest and feature config when there is one (its dev and test items are the
unaugmented audio), else from the audio; both go through the bundle's normalization and are cut into device
windows as `eeasr-train eval` cuts them (eeasr.windows). Every window then runs, per beta:
- device: the bundle's gated program (eeasr.gated_program) under the real TFLM interpreter with its gates at
  beta, and the device's exit policy (the bundle's calibrated measure and threshold, or --threshold) on the
  head: a confident window is answered on the device with greedy CTC (windows under 4 feature frames get an
  empty answer, as the device gives);
- server: the others as HANDOFF frames (their bytes counted as posted) through host/server.py's `Suffix`, the
  code `eeasr-host serve` runs, in-process and in batches; a local gate predictor's server layers decide at the
  same beta, a global one's take the device predictor's decisions from the handoff's module mask.
Per beta: average device modules run per window (of 2 x device layers), server modules per handed-off window
and both per window (the CSV's `modules`), device MACs per window (the segments run, from the manifest's
per-segment costs), the modelled ESP32-S3 time per window (the same costs' ESP-NN roofline, weights in flash),
TFLM time per window on this host, the share of windows answered on the device, handoff bytes per handed-off
window and per second of audio, and the WER of the device + server texts. Writes gated_cost.md, gated_cost.csv
and gated_cost.png (MACs vs beta, WER vs average modules) under --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from report import parser, save_figure, write_tables  # noqa: E402
from testset import default_manifest, seeded_subset, split_utterances  # noqa: E402

from eeasr.audio import AudioError, load_audio  # noqa: E402
from eeasr.bundle import MANIFEST, Bundle, BundleError, load_bundle  # noqa: E402
from eeasr.features import FeatureConfig, NormStats, log_mel  # noqa: E402
from eeasr.manifest import read_manifest  # noqa: E402
from eeasr.metrics import wer  # noqa: E402
from eeasr.paths import default_cache_dir  # noqa: E402
from eeasr.windows import frame_energy, window_spans  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SERVER_BATCH = 32          # handoffs per server call (`eeasr-host serve --max-batch`'s default)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Item:
    """One utterance: its id, reference (None: unknown), seconds of audio and normalized feature windows."""
    id: str
    ref: str | None
    audio_s: float
    windows: list[np.ndarray]


# ---- the bundle ------------------------------------------------------------------------------------------------

def bundle_of_run(run: Path, exits: int | None, manifest: Path | None) -> tuple[Bundle, Path]:
    """The run converted with eeasr.convert into ~/.cache/eeasr/bundles (exported first when it has no
    calibration set), or the bundle already there for the same model and EXITS; and the run's corpus manifest."""
    from eeasr.train.checkpoint import load_checkpoint

    cache = default_cache_dir() / "bundles"
    ck = load_checkpoint(run)
    cfg = ck.cfg.model
    if cfg.encoder != "i3d":
        raise SystemExit(f"{run}: a {cfg.encoder!r} model; this benchmark takes i3d models (gated bundles)")
    corpus = Path(ck.cfg.data.corpus).expanduser() / "manifest.jsonl"
    model_dir = run
    if not (run / "calibration.npz").exists():
        model_dir = cache / f"{ck.model_hash}-model"
        if not (model_dir / "calibration.npz").exists():
            from eeasr.train.export import export

            log(f"exporting {run} into {model_dir} (calibration set from {manifest or corpus})")
            export(run, model_dir, manifest or corpus)
        ck = load_checkpoint(model_dir)
    from eeasr.convert.build import ConvertOptions, bundle_options, convert_checkpoint

    opts = ConvertOptions(exits=exits or max(1, len(cfg.exits) - 1))
    out = cache / f"{ck.model_hash}-exits{opts.exits}"
    if (out / MANIFEST).exists():   # reused while it records the options eeasr-convert converts with now
        try:
            b = load_bundle(out, model_hash=ck.model_hash)
            if b.manifest.get("options") == bundle_options(opts):
                log(f"reusing bundle {out} ({b.bundle_id[:12]})")
                return b, corpus
            log(f"{out} was converted with other options; converting again")
        except BundleError as e:
            log(f"{out}: {e}; converting again")
    log(f"converting {model_dir} (--exits {opts.exits}) into {out}")
    return convert_checkpoint(model_dir, out, opts, log=log), corpus


# ---- audio and features ----------------------------------------------------------------------------------------

def cached_logmel(manifest: Path, split: str, cfg: FeatureConfig, ids: set[str]) -> dict[str, np.ndarray]:
    """Log-mel features of `ids` from a feature cache of this manifest and feature config (train/data/cache.py
    layout), or {} when there is none."""
    sha = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
    for index in sorted((default_cache_dir() / "features").glob("*/index.json")):
        meta = json.loads(index.read_text())
        if meta.get("manifest_sha") == sha and FeatureConfig.from_dict(meta["features"]) == cfg:
            from eeasr.train.data.cache import load_split

            fs = load_split(index.parent, split, copies=1)
            log(f"features of the {split} split from the feature cache {index.parent}")
            return {i: f.astype(np.float32) for i, f in zip(fs.ids, fs.feats) if i in ids}
    return {}


def add_audio_args(ap: argparse.ArgumentParser) -> None:
    """The audio options every split benchmark of a bundle takes (this one and bench/aed_server_cost.py)."""
    ap.add_argument("--wav", nargs="+", type=Path, default=None, metavar="FILE",
                    help="audio files, each one utterance (default: --n utterances of the corpus split)")
    ap.add_argument("--refs", type=Path, default=None, help="with --wav: a manifest with their transcripts")
    ap.add_argument("--manifest", type=Path, default=None,
                    help="corpus manifest (default: the run's corpus, else ~/.cache/eeasr/corpus/manifest.jsonl)")
    ap.add_argument("--split", default="test", help="manifest split (default: %(default)s)")
    ap.add_argument("--n", type=int, default=100, help="utterances, a fixed seeded subset (default: %(default)d)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the subset (default: 0)")


def load_windows(args: argparse.Namespace, bundle: Bundle, manifest: Path | None = None) -> tuple[list[Item], str]:
    """The utterances `add_audio_args` chose, cut into the bundle's device windows as `eeasr-train eval` cuts
    them (log-mel from the feature cache when there is one, else from the audio; the bundle's normalization);
    and a phrase saying which they are."""
    f = bundle.manifest["features"]
    cfg, norm = FeatureConfig.from_dict(f["config"]), NormStats.from_dict(f["norm"])
    cached: dict[str, np.ndarray] = {}
    if args.wav:
        refs = {u.path.resolve(): u.text for u in read_manifest(args.refs)} if args.refs else {}
        utts = [(str(p), p, refs.get(p.resolve())) for p in args.wav]
        what = f"{len(utts)} audio files"
    else:
        manifest = manifest or args.manifest or default_manifest()
        pool = split_utterances(manifest, args.split)
        subset = seeded_subset(pool, args.n, args.seed)
        cached = cached_logmel(manifest, args.split, cfg, {u.id for u in subset})
        utts = [(u.id, u.path, u.text) for u in subset]
        what = f"{len(utts)} of the {len(pool)} {args.split} utterances of {manifest} (seed {args.seed})"
    items = []
    for uid, path, ref in utts:
        logmel = cached.get(uid)
        if logmel is None:
            try:
                logmel = log_mel(load_audio(path), cfg)
            except AudioError as e:
                log(f"skipped: {e}")
                continue
        feats = norm.apply(logmel)
        spans = window_spans(frame_energy(logmel), bundle.window)
        items.append(Item(uid, ref, len(logmel) * cfg.hop_length / cfg.sample_rate, [feats[a:b] for a, b in spans]))
    if not items:
        raise SystemExit("no readable audio")
    return items, what


# ---- one beta ------------------------------------------------------------------------------------------------

class Split:
    """Device and server of one gated bundle, as `eeasr-host stream` runs them, without the wires."""

    def __init__(self, bundle: Bundle, threshold: float | None) -> None:
        from eeasr.exits import BLANK
        from eeasr.gated_program import GatedProgram
        from eeasr.host.device_sim import PyExitPolicy, bundle_threshold
        from eeasr.host.server import Suffix
        from eeasr.tokenizer import Tokenizer

        self.bundle = bundle
        self.program = GatedProgram.from_bundle(bundle)
        measure, calibrated = bundle_threshold(bundle)
        self.policy = PyExitPolicy(measure, calibrated if threshold is None else threshold,
                                   int(bundle.manifest["model"].get("blank", BLANK)))
        self.suffix = Suffix(bundle) if bundle.manifest.get("server") else None
        self.tokenizer = Tokenizer.load(bundle.file(bundle.manifest["tokenizer"]["file"]))
        self.latency = {s["name"]: s["cost"]["latency_s"]["esp-nn/flash"] for s in bundle.segments}

    def run(self, items: list[Item], beta: float, bar) -> dict:  # noqa: ANN001
        """Every window at `beta` through device and server; the table's row."""
        from eeasr.features import dequantize_int8
        from eeasr.host.device_sim import MIN_WINDOW_FRAMES
        from eeasr.protocol import Handoff, pack_frame

        suffix, program = self.suffix, self.program
        if suffix is not None and suffix.gated["predictor"] == "local":
            suffix.gated = {**suffix.gated, "beta": beta}   # its server layers' own predictors, at the same beta
        texts = {it.id: [""] * len(it.windows) for it in items}
        dev_modules, macs, modelled, tflm_s, srv_modules, up = [], [], [], [], [], []
        on_device = 0
        pending: list[tuple[str, int, Handoff]] = []

        def to_server() -> None:   # as the server's batcher: one model call per batch, each with its own mask
            decoded = suffix.run_batch([dequantize_int8(h.hidden, h.scale, h.zero_point) for _, _, h in pending],
                                       [h.modules for _, _, h in pending])
            for (uid, j, _), d in zip(pending, decoded):
                texts[uid][j] = d.text
                srv_modules.append(d.modules_run or 0)
            pending.clear()

        for it in items:
            for j, w in enumerate(it.windows):
                bar.update(1)
                if len(w) < MIN_WINDOW_FRAMES:   # the device answers it empty, without running
                    on_device += 1
                    continue
                x, n = program.quantize_features(w)
                t = time.perf_counter()
                out = program.run(x, n, beta=beta)
                tflm_s.append(time.perf_counter() - t)
                dev_modules.append(out.modules_run)
                macs.append(out.macs)
                modelled.append(sum(self.latency[s] for s in out.invoked))
                d = self.policy.decide(out.exits[0])
                if suffix is None or d.confident:
                    on_device += 1
                    texts[it.id][j] = self.tokenizer.decode(d.tokens)
                    continue
                qp = out.hidden_qparams
                h = Handoff(0, j, 0, out.hidden_layer, self.bundle.model_hash[:16], qp.scale, qp.zero_point,
                            np.ascontiguousarray(out.hidden_q), out.module_mask)
                suffix.check(h)
                up.append(len(pack_frame(h, 0)))
                pending.append((it.id, j, h))
                if len(pending) == SERVER_BATCH:
                    to_server()
        if pending:
            to_server()
        n_windows = sum(len(it.windows) for it in items)
        scored = [it for it in items if it.ref is not None]
        audio_s = sum(it.audio_s for it in items)

        def mean(v: list[float], digits: int) -> float | None:
            return round(float(np.mean(v)), digits) if v else None

        return {
            "beta": beta, "windows": n_windows,
            "device_modules": mean(dev_modules, 3), "device_modules_of": 2 * program.device_layers,
            "server_modules": mean(srv_modules, 3),
            "modules": round((sum(dev_modules) + sum(srv_modules)) / len(dev_modules), 3) if dev_modules else None,
            "device_macs": int(round(float(np.mean(macs)))) if macs else 0,
            "modelled_s": mean(modelled, 4), "tflm_ms": mean([1000 * s for s in tflm_s], 2),
            "on_device": round(on_device / max(1, n_windows), 4), "handoff_bytes": mean(up, 1),
            "up_bytes_per_s": round(sum(up) / max(audio_s, 1e-9), 1),
            "wer": round(wer([it.ref for it in scored], [" ".join(t for t in texts[it.id] if t) for it in scored]), 2)
            if scored else None,
        }


# ---- output ------------------------------------------------------------------------------------------------------

def layers(first: int, last: int) -> str:
    return f"layer {first}" if first == last else f"layers {first}-{last}"


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    lines = ["| beta | device modules / window | server modules / handoff | device MACs / window | modelled ESP32-S3 "
             "s / window | TFLM ms / window (this host) | answered on device | handoff B / handoff | up B / s audio "
             "| WER % |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['beta']:g} | {fmt(r['device_modules'], '.2f')} of {r['device_modules_of']} "
                     f"| {fmt(r['server_modules'], '.2f')} | {r['device_macs'] / 1e6:.2f} M "
                     f"| {fmt(r['modelled_s'], '.3f')} | {fmt(r['tflm_ms'], '.1f')} | {100 * r['on_device']:.1f} % "
                     f"| {fmt(r['handoff_bytes'], ',.0f')} | {r['up_bytes_per_s']:,.0f} | {fmt(r['wer'], '.1f')} |")
    return "\n".join(lines)


def write_png(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.0), dpi=120)
    a.plot([r["beta"] for r in rows], [r["device_macs"] / 1e6 for r in rows], "o-")
    a.set_xlabel("gate threshold beta")
    a.set_ylabel("device MACs per window (M)")
    a.grid(alpha=0.3)
    scored = [r for r in rows if r["wer"] is not None and r["device_modules"] is not None]
    if scored:
        xs = [r["device_modules"] for r in scored]
        b.plot(xs, [r["wer"] for r in scored], "s-", label="modules on the device")
        if any(r["server_modules"] is not None for r in scored):
            b.plot([r["modules"] for r in scored], [r["wer"] for r in scored], "^--", label="device + server modules")
        for r, x in zip(scored, xs):
            b.annotate(f"{r['beta']:g}", (x, r["wer"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        b.legend()
    b.set_xlabel("average modules run per window")
    b.set_ylabel("WER % (device + server)")
    b.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = parser(__doc__)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", type=Path, help="a gated bundle (eeasr-convert of an i3d model)")
    src.add_argument("--run", type=Path, help="an i3d run or model directory, converted once into the cache")
    ap.add_argument("--exits", type=int, default=None, metavar="K",
                    help="with --run: device exits (default: the last exit with a server part after it)")
    ap.add_argument("--betas", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
                    help="comma-separated gate thresholds (default: %(default)s)")
    ap.add_argument("--threshold", type=float, default=None,
                    help="the device's exit threshold (default: the bundle's calibrated one)")
    add_audio_args(ap)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="output directory (default: bench/out)")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = ap.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["nice -n 19 .venv/bin/python bench/gated_cost.py", *map(str, given)])
    try:
        betas = [float(b) for b in args.betas.split(",")]
    except ValueError:
        ap.error(f"--betas {args.betas!r}: expected numbers separated by commas")
    if any(not 0.0 <= b <= 1.0 for b in betas):
        ap.error(f"--betas {args.betas!r}: every beta lies in [0, 1]")

    manifest = args.manifest
    if args.run is not None:
        bundle, corpus = bundle_of_run(args.run, args.exits, manifest)
        manifest = manifest or corpus
    else:
        bundle = load_bundle(args.bundle)
    if bundle.manifest["device"]["program"]["kind"] != "gated":
        raise SystemExit(f"{bundle.path}: an early-exit bundle; this benchmark measures gated (I3D) bundles")
    items, what = load_windows(args, bundle, manifest)

    from tqdm import tqdm

    split = Split(bundle, args.threshold)
    n_windows = sum(len(it.windows) for it in items)
    rows = []
    with tqdm(total=n_windows * len(betas), desc="windows x betas", unit="win", disable=not args.progress) as bar:
        for beta in betas:
            rows.append(split.run(items, beta, bar))
    prog = bundle.manifest["device"]["program"]
    server = bundle.manifest.get("server")
    where = (f"device {layers(1, split.program.device_layers)}, server "
             f"{layers(server['after_layer'] + 1, prog['n_layers'])}" if server
             else f"all {prog['n_layers']} layers on the device (no server part)")
    head = (f"Gated bundle {bundle.path} (model {bundle.model_hash}, {prog['predictor']['kind']} gate predictor, "
            f"{where}), {what}: {len(items)} utterances, {n_windows} windows of W={bundle.window}. Device exit: "
            f"{split.policy.measure.name.lower()} <= {fmt(split.policy.threshold, '.4g')} answers on the device "
            f"({'--threshold' if args.threshold is not None else 'the bundle calibration'}). MACs and the modelled "
            f"ESP32-S3 time count the segments run (convert/cost.py's per-segment figures, ESP-NN kernels, weights in "
            f"flash); TFLM time is the tflite-micro wheel on this host.\n\n`{command}`\n\n")
    text = head + table(rows) + "\n"
    write_tables(args.out, "gated_cost", text, rows)
    write_png(rows, args.out / "gated_cost.png", f"{bundle.path.name}: {len(items)} utterances, {n_windows} windows")
    log(f"wrote {args.out}/gated_cost.md, gated_cost.csv, gated_cost.png")
    return rows


if __name__ == "__main__":
    main()
