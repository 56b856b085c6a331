"""`eeasr-train`: train and evaluate dynamic-depth recognizers."""

from __future__ import annotations

from pathlib import Path

import click
import yaml


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """Train and evaluate early-exit and dynamic-depth speech recognizers.

    \b
    Stages before this one:
      eeasr-data synth ...      build a corpus (make data)
      eeasr-data features ...   cache its augmented features (done by `fit` when missing)
    Recipes live in configs/*.yaml; a run directory holds weights, config, tokenizer and normalization
    statistics, and is what `eeasr-train eval` and `eeasr-convert` take.
    """


def _overrides(pairs: tuple[str, ...]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE, e.g. optim.epochs=2", param_hint="--set")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path),
              default=Path("configs/default.yaml"), help="YAML recipe.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run directory [default: the recipe's `out`].")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a recipe value, e.g. optim.epochs=2.")
@click.option("--compile/--no-compile", "compile_model", default=None,
              help="torch.compile the model [default: on for CPU].")
def fit(config_path: Path, out: Path | None, sets: tuple[str, ...], compile_model: bool | None) -> None:
    """Train a model from a recipe; rerunning the same command resumes from the last checkpoint.

    Builds the feature cache and the tokenizer when missing, logs every step to train_log.csv, evaluates
    greedy WER per exit on dev after each epoch and averages the last checkpoints into model.pt.
    """
    from eeasr.train.config import load_config
    from eeasr.train.trainer import fit as run_fit

    cfg = load_config(config_path, _overrides(sets))
    try:
        run = run_fit(cfg, out, compile_model=compile_model)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"model: {run / 'model.pt'}")


def _eval_set(manifest: Path | None, split: str, real: bool, limit: int | None) -> list:
    from eeasr.manifest import read_manifest
    from eeasr.paths import default_cache_dir

    if real:
        from eeasr.train.data.realclips import build_realclips

        manifest = build_realclips(default_cache_dir() / "realclips")
    manifest = manifest or default_cache_dir() / "corpus" / "manifest.jsonl"
    utts = [u for u in read_manifest(manifest) if u.split == split]
    if not utts:
        raise click.ClickException(f"{manifest} has no {split!r} utterances")
    return utts[:limit] if limit else utts


@main.command("eval")
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option("--manifest", type=click.Path(exists=True, path_type=Path), default=None,
              help="Corpus manifest [default: ~/.cache/eeasr/corpus/manifest.jsonl].")
@click.option("--split", default="test", help="Which split of the manifest to score.")
@click.option("--real", is_flag=True, help="Score the real recorded clips of pocketsphinx-testdata instead "
              "(with pocketsphinx 5.1.1's WER on the same audio and bootstrap intervals).")
@click.option("--beam", type=int, default=16, help="CTC beam width (1 = greedy only).")
@click.option("--limit", type=int, default=None, help="Score only the first N utterances.")
@click.option("--baseline", "baselines", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="A single-exit run (no-EE baseline, e.g. configs/baseline-L2.yaml) scored on the same audio; "
              "repeat it. Adds a table in the shape of the paper's Table 2: EE vs no-EE per layer.")
@click.option("--pocketsphinx/--no-pocketsphinx", default=None,
              help="Also score pocketsphinx 5.1.1 on the same audio, per engine family [default: on with --real; "
              "on the 1,448-utterance test set it takes about 20 min on one core].")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the tables here as Markdown.")
def eval_(run: Path, manifest: Path | None, split: str, real: bool, beam: int, limit: int | None,
          baselines: tuple[Path, ...], pocketsphinx: bool | None, out: Path | None) -> None:
    """WER of every exit (greedy and beam search), per engine family, through the device front end and windows."""
    from tqdm import tqdm

    from eeasr.train.evaluate import (compare_table, interval_line, per_group_table, run as run_eval,
                                      texts_at_exit, wer_table)

    ck = _load(run)
    utts = _eval_set(manifest, split, real, limit)
    results, skipped = run_eval(ck, utts, beam=beam)
    layers = ck.cfg.model.exits
    others = {}
    if real if pocketsphinx is None else pocketsphinx:
        from eeasr.audio import load_audio
        from eeasr.train.data.realclips import pocketsphinx_transcribe

        others["pocketsphinx 5.1.1"] = [pocketsphinx_transcribe(load_audio(r.utt.path))
                                        for r in tqdm(results, desc="pocketsphinx", unit="utt")]
    text = f"## {run.name}: {len(results)} utterances ({'real clips' if real else split})\n\n"
    text += wer_table(results, layers, beam > 1) + "\n" + per_group_table(results, layers, "source", others)
    if baselines:
        single = {}
        for b in baselines:
            bk = _load(b)
            if len(bk.cfg.model.exits) != 1:
                raise click.ClickException(f"{b}: a baseline has one exit, this one has {bk.cfg.model.exits}")
            single[bk.cfg.model.exits[0]] = run_eval(bk, utts, beam=beam)[0]
        text += "\n" + compare_table(results, layers, single, beam > 1)
    refs = [r.utt.text for r in results]
    text += f"\nlast exit: {interval_line(refs, texts_at_exit(results, len(layers) - 1))}\n"
    for name, hyps in others.items():
        text += f"{name}: {interval_line(refs, hyps)}\n"
    _report(text, skipped, out)


def _report(text: str, skipped: list[str], out: Path | None) -> None:
    """Print an evaluation report (with a note on the unreadable files) and write it to `out` when given."""
    if skipped:
        text += f"\nskipped {len(skipped)} files, e.g. {skipped[0]}\n"
    click.echo(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


def _load(run: Path):
    from eeasr.train.checkpoint import load_checkpoint

    try:
        return load_checkpoint(run)
    except ValueError as e:
        raise click.ClickException(str(e)) from None


@main.command()
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option("--manifest", type=click.Path(exists=True, path_type=Path), default=None,
              help="Corpus manifest with dev and test splits [default: ~/.cache/eeasr/corpus/manifest.jsonl].")
@click.option("--target-wer", type=float, default=None,
              help="WER (%) the calibrated threshold must meet on dev [default: the last exit's dev WER + 2].")
@click.option("--beam", type=int, default=16, help="Beam width K for the N-best posterior (Eq. 6).")
@click.option("--limit", type=int, default=None, help="Use only the first N utterances of each split.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output directory [default: RUN/exits].")
def exits(run: Path, manifest: Path | None, target_wer: float | None, beam: int, limit: int | None,
          out: Path | None) -> None:
    """Exit selection: sweep thresholds (average exit vs WER, Fig. 3) and calibrate them on dev.

    Measures: average frame entropy (Eq. 5), the same over non-blank frames, and the N-best sentence
    posterior (Eq. 6) over the beam's K hypotheses. Writes sweep.csv, sweep.png and thresholds.json.
    """
    import json

    from eeasr.metrics import wer
    from eeasr.train.evaluate import MEASURES, calibrate, run as run_eval, select, sweep, texts_at_exit, write_sweep

    ck = _load(run)
    out = out or run / "exits"
    out.mkdir(parents=True, exist_ok=True)
    layers = ck.cfg.model.exits
    dev, _ = run_eval(ck, _eval_set(manifest, "dev", False, limit), beam=beam)
    test, _ = run_eval(ck, _eval_set(manifest, "test", False, limit), beam=beam)
    rows = sweep(test, layers)
    write_sweep(rows, out / "sweep.csv", out / "sweep.png", f"{run.name}: exit selection on test")
    last_dev = wer([r.utt.text for r in dev], texts_at_exit(dev, len(layers) - 1))
    target = target_wer if target_wer is not None else last_dev + 2.0
    cal = {}
    click.echo(f"calibrated on dev for WER <= {target:.1f}% (last exit alone: {last_dev:.1f}%), scored on test:")
    for m in MEASURES:
        try:
            c = calibrate(dev, layers, m, target)
        except ValueError as e:
            click.echo(f"  {m}: {e}")
            continue
        texts, avg = select(test, m, c["threshold"], layers, beam=(m == "posterior"))
        c["test_wer"], c["test_avg_exit_layer"] = wer([r.utt.text for r in test], texts), avg
        cal[m] = c
        click.echo(f"  {m:17s} threshold {c['threshold']:.4g}: dev WER {c['wer']:.1f}% at avg layer "
                   f"{c['avg_exit_layer']:.2f}; test WER {c['test_wer']:.1f}% at avg layer {avg:.2f}")
    (out / "thresholds.json").write_text(json.dumps({"target_wer": target, "model_hash": ck.model_hash,
                                                     "measures": cal}, indent=1))
    click.echo(f"{out / 'sweep.png'}")


@main.command()
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("models/default"),
              help="Model directory to write.")
@click.option("--manifest", type=click.Path(exists=True, path_type=Path), default=None,
              help="Corpus whose dev split gives the calibration set [default: ~/.cache/eeasr/corpus].")
def export(run: Path, out: Path, manifest: Path | None) -> None:
    """Package a trained run as a self-contained model directory (fp16 weights, tokenizer, normalization,
    a calibration set of real dev features for int8 conversion, and a model card)."""
    from eeasr.paths import default_cache_dir
    from eeasr.train.export import export as run_export

    _load(run)  # a clear error for an incomplete run
    model_hash = run_export(run, out, manifest or default_cache_dir() / "corpus" / "manifest.jsonl")
    click.echo(f"{out} (model hash {model_hash})")


@main.command()
@click.argument("corpus", type=click.Path(exists=True, path_type=Path))
@click.option("--from", "init", type=click.Path(exists=True, path_type=Path), default=Path("models/default"),
              help="Model to start from.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory.")
@click.option("--epochs", type=int, default=3, help="Passes over your corpus.")
@click.option("--lr", type=float, default=5e-4, help="Peak learning rate (lower than from scratch).")
def finetune(corpus: Path, init: Path, out: Path, epochs: int, lr: float) -> None:
    """Fine-tune a model on your own corpus (an `eeasr-data import` or `synth` directory).

    Keeps the model's tokenizer, normalization and shape; rerun the same command to resume.
    """
    from eeasr.train.config import load_config
    from eeasr.train.trainer import fit as run_fit

    _load(init)
    cfg = load_config(init / "config.yaml", {"init": str(init), "data.corpus": str(corpus), "optim.epochs": epochs,
                                             "optim.lr": lr, "optim.warmup_steps": 100, "out": str(out)})
    run_fit(cfg, out)
    click.echo(f"model: {out / 'model.pt'}")


@main.command("eval-aed")
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option("--lm", "lm_run", type=click.Path(exists=True, path_type=Path), default=None,
              help="An `eeasr-train lm` run: adds the N-best rescored by the LM.")
@click.option("--lm-weight", type=float, default=0.5, help="LM weight in the rescored log-score am + w * lm.")
@click.option("--ctc", "ctc_run", type=click.Path(exists=True, path_type=Path), default=None,
              help="A CTC run scored on the same audio: its greedy and beam WER per exit layer, side by side.")
@click.option("--manifest", type=click.Path(exists=True, path_type=Path), default=None,
              help="Corpus manifest [default: ~/.cache/eeasr/corpus/manifest.jsonl].")
@click.option("--split", default="test", help="Which split of the manifest to score.")
@click.option("--beam", type=int, default=10, help="Attention beam width (and N of the N-best).")
@click.option("--limit", type=int, default=None, help="Score only the first N utterances.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the table here as Markdown.")
@click.option("--sweep", "sweep_dir", type=click.Path(path_type=Path), default=None,
              help="Also sweep exit selection here (sweep.csv, sweep.png; Fig. 3 shape): CTC entropy measures "
                   "answer with the exit's CTC greedy text, the sentence posterior (Eq. 6) of the attention N-best "
                   "with its attention beam text.")
def eval_aed(run: Path, lm_run: Path | None, lm_weight: float, ctc_run: Path | None, manifest: Path | None,
             split: str, beam: int, limit: int | None, out: Path | None, sweep_dir: Path | None) -> None:
    """WER of every exit of a Conformer-AED run: CTC greedy, attention beam search, the N-best rescored by an LM."""
    from eeasr.train.aed import aed_wer_table, evaluate_aed
    from eeasr.train.evaluate import run as run_eval
    from eeasr.train.evaluate import sweep, write_sweep
    from eeasr.train.lm import load_lm

    ck = _load(run)
    utts = _eval_set(manifest, split, False, limit)
    try:
        lm = load_lm(lm_run) if lm_run else None
        results, skipped = evaluate_aed(ck, utts, beam=beam, lm=lm, lm_weight=lm_weight)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    ctc, ctc_layers = None, None
    if ctc_run:
        ck2 = _load(ctc_run)
        ctc, ctc_layers = run_eval(ck2, utts, beam=16)[0], ck2.cfg.model.exits
    text = f"## {run.name}: {len(results)} utterances ({split}), attention beam {beam}"
    text += f", LM {lm_run.name} weight {lm_weight}" if lm_run else ""
    text += f"; CTC model {ctc_run.name}" if ctc_run else ""
    text += "\n\n" + aed_wer_table(results, ck.cfg.model.exits, ctc, ctc_layers)
    _report(text, skipped, out)
    if sweep_dir:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_sweep(sweep(results, ck.cfg.model.exits), sweep_dir / "sweep.csv", sweep_dir / "sweep.png",
                    f"{run.name}: exit selection on {split}")
        click.echo(f"{sweep_dir / 'sweep.png'}")


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path),
              default=Path("configs/lm.yaml"), help="LM recipe.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run directory [default: the recipe's `out`].")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a recipe value, e.g. epochs=2.")
def lm(config_path: Path, out: Path | None, sets: tuple[str, ...]) -> None:
    """Train the Transformer LM that rescores the Conformer-AED's N-best, on the corpus's training transcripts
    with the AED run's tokenizer; rerunning the same command resumes."""
    from eeasr.train.lm import load_lm_config, train_lm

    try:
        run = train_lm(load_lm_config(config_path, _overrides(sets)), out)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"LM: {run / 'lm.pt'}")


def _cached_split(ck, split: str, manifest: Path | None, limit: int | None):  # noqa: ANN001, ANN202
    """Utterances of one split from the feature cache (built when missing), normalized with the run's stats."""
    from eeasr.paths import default_cache_dir
    from eeasr.train.data.cache import CacheConfig, FeatureSet, build_cache, load_split
    from eeasr.train.dataset import Utterances

    manifest = manifest or Path(ck.cfg.data.corpus).expanduser() / "manifest.jsonl"
    if not manifest.exists():
        raise click.ClickException(f"{manifest} not found: pass --manifest or build the corpus (`make data`)")
    cache = build_cache(manifest, default_cache_dir() / "features", ck.features, CacheConfig(copies=ck.cfg.data.copies))
    fs = load_split(cache, split)
    if limit:
        fs = FeatureSet(fs.feats[:limit], fs.ids[:limit], fs.texts[:limit], fs.copies[:limit])
    data = Utterances(fs, ck.norm, ck.tokenizer, ck.cfg.data.window)
    if not len(data):
        raise click.ClickException(f"{manifest} has no {split!r} utterances that fit the window")
    return data


@main.command()
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option("--manifest", type=click.Path(exists=True, path_type=Path), default=None,
              help="Corpus manifest [default: the run's data.corpus].")
@click.option("--limit", type=int, default=None, help="Use only the first N utterances of dev and of test.")
@click.option("--min-layers", type=int, default=1, help="Stop pruning at this depth.")
@click.option("--save-models", is_flag=True, help="Also write each depth's model as a checkpoint (OUT/L<k>).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output directory [default: RUN/prune].")
def prune(run: Path, manifest: Path | None, limit: int | None, min_layers: int, save_models: bool,
          out: Path | None) -> None:
    """Iterative layer pruning of a Transformer run (the I3D paper's static baseline; train a LayerDrop +
    InterCTC model with configs/transformer-layerdrop.yaml first): remove, one at a time, the layer whose removal
    hurts dev WER least, no retraining. Writes prune.csv: depth, kept layers, dev and test greedy WER."""
    import csv

    from eeasr.train.prune import prune_path, pruned, save_pruned
    from eeasr.train.trainer import evaluate_greedy

    ck = _load(run)
    if ck.cfg.model.encoder != "transformer":
        raise click.ClickException(f"{run}: pruning takes a transformer run, this one is {ck.cfg.model.encoder!r}")
    out = out or run / "prune"
    out.mkdir(parents=True, exist_ok=True)
    dev, test = _cached_split(ck, "dev", manifest, limit), _cached_split(ck, "test", manifest, limit)
    frames = ck.cfg.data.max_batch_frames
    with (out / "prune.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["n_layers", "kept", "dev_wer", "test_wer"])
        for step in prune_path(ck.model, dev, ck.tokenizer, frames, min_layers):
            test_wer = evaluate_greedy(pruned(ck.model, step.kept), test, ck.tokenizer, frames,
                                       next(ck.model.parameters()).device)[0]
            w.writerow([step.n_layers, " ".join(map(str, step.kept)), f"{step.dev_wer:.2f}", f"{test_wer:.2f}"])
            f.flush()
            click.echo(f"{step.n_layers:3d} layers {step.kept}: dev WER {step.dev_wer:.1f}%, test {test_wer:.1f}%")
            if save_models:
                save_pruned(ck, step.kept, out / f"L{step.n_layers}")
    click.echo(f"{out / 'prune.csv'}")


@main.command("i3d-compare")
@click.option("--sweep", "sweeps", multiple=True, metavar="LABEL=CSV",
              help="An I3D sweep (the sweep.csv of `eeasr-train i3d-sweep`) as one curve; repeatable.")
@click.option("--static", "statics", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="A standard Transformer run scored here as one point at its depth; repeatable.")
@click.option("--pruned", "pruned_csv", type=click.Path(exists=True, path_type=Path), default=None,
              help="A prune.csv (eeasr-train prune) as one curve.")
@click.option("--split", default="test", help="Which split the static runs are scored on (as the sweeps were).")
@click.option("--manifest", type=click.Path(exists=True, path_type=Path), default=None,
              help="Corpus manifest [default: each run's data.corpus].")
@click.option("--limit", type=int, default=None, help="Score only the first N utterances (as the sweeps did).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/out/i3d"), show_default=True,
              help="Output directory.")
def i3d_compare(sweeps: tuple[str, ...], statics: tuple[Path, ...], pruned_csv: Path | None, split: str,
                manifest: Path | None, limit: int | None, out: Path) -> None:
    """WER against average executed layers for I3D sweeps, standard Transformers of fewer layers and the pruned
    Transformer on one plot (the I3D paper's Fig. 2-3): compare.png, compare.csv and a Markdown table.
    Give the sweeps and the pruning the same --split/--limit as here, so every point scores the same utterances."""
    import csv

    from eeasr.train.i3d_report import Curve, write_comparison
    from eeasr.train.trainer import evaluate_greedy

    curves = []
    for s in sweeps:
        label, sep, path = s.partition("=")
        if not sep or not Path(path).is_file():
            raise click.BadParameter(f"{s!r}: expected LABEL=PATH to an existing sweep.csv", param_hint="--sweep")
        with open(path) as f:
            curves.append(Curve(label, [(float(r["avg_layers"]), float(r["wer"]), f"beta {r['beta']}")
                                        for r in csv.DictReader(f)]))
    if pruned_csv:
        with pruned_csv.open() as f:
            curves.append(Curve("pruned (LayerDrop + InterCTC)",
                                [(float(r["n_layers"]), float(r[f"{split}_wer"]), f"{r['n_layers']} layers")
                                 for r in csv.DictReader(f)]))
    points = []
    for run in statics:
        ck = _load(run)
        data = _cached_split(ck, split, manifest, limit)
        w = evaluate_greedy(ck.model, data, ck.tokenizer, ck.cfg.data.max_batch_frames,
                            next(ck.model.parameters()).device)[-1]
        points.append((float(ck.cfg.model.n_layers), w, run.name))
        click.echo(f"{run.name}: {ck.cfg.model.n_layers} layers, WER {w:.1f}%")
    if points:
        curves.append(Curve("standard Transformer", points, line=False))
    if not curves:
        raise click.UsageError("nothing to compare: give --sweep, --static or --pruned")
    files = write_comparison(curves, out, f"WER vs layers ({split}{f', first {limit}' if limit else ''})")
    click.echo((out / "compare.md").read_text() + "\n".join(map(str, files)))


@main.command("i3d-sweep")
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option("--betas", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
              help="Comma-separated gate thresholds to decode with.")
@click.option("--beta", type=float, default=None,
              help="Threshold of the gate and length plots [default: the run's i3d.beta].")
@click.option("--split", default="test", help="Which split of the manifest to score.")
@click.option("--manifest", type=click.Path(exists=True, path_type=Path), default=None,
              help="Corpus manifest [default: the run's data.corpus].")
@click.option("--limit", type=int, default=None, help="Score only the first N utterances.")
@click.option("--pruned", "pruned_csv", type=click.Path(exists=True, path_type=Path), default=None,
              help="A prune.csv (eeasr-train prune) whose depth vs WER on the same split joins the plot.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output directory [default: RUN/i3d].")
def i3d_sweep(run: Path, betas: str, beta: float | None, split: str, manifest: Path | None, limit: int | None,
              pruned_csv: Path | None, out: Path | None) -> None:
    """I3D: WER vs average executed layers per gate threshold beta (paper 2, Fig. 2-4), gate probabilities
    per layer (Fig. 5-6) and utterance length by modules used (Fig. 7). Writes CSV files and PNG plots."""
    import csv

    from eeasr.train.i3d import I3DTransformer
    from eeasr.train.i3d_report import gate_report, write_gate_report

    ck = _load(run)
    if not isinstance(ck.model, I3DTransformer):
        raise click.ClickException(f"{run}: not an i3d run ({ck.cfg.model.encoder!r})")
    try:
        beta_list = [float(b) for b in betas.split(",")]
    except ValueError:
        raise click.BadParameter(f"{betas!r}: expected numbers separated by commas", param_hint="--betas") from None
    data = _cached_split(ck, split, manifest, limit)
    rep = gate_report(ck.model, data, ck.tokenizer, beta_list, beta, ck.cfg.data.max_batch_frames,
                      ck.features.hop_length / ck.features.sample_rate)
    baseline = []
    if pruned_csv:
        with pruned_csv.open() as f:
            baseline = [(int(r["n_layers"]), float(r[f"{split}_wer"])) for r in csv.DictReader(f)]
    files = write_gate_report(rep, out or run / "i3d", f"{run.name} ({split}, {len(data)} utts)", baseline)
    for p in rep.points:
        click.echo(f"beta {p.beta:<5g} WER {p.wer:5.1f}%  layers {p.avg_layers:5.2f} "
                   f"(MHA {p.avg_mha:.2f}, FFN {p.avg_ffn:.2f})")
    click.echo("\n".join(map(str, files)))
