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
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the tables here as Markdown.")
def eval_(run: Path, manifest: Path | None, split: str, real: bool, beam: int, limit: int | None,
          baselines: tuple[Path, ...], out: Path | None) -> None:
    """WER of every exit (greedy and beam search), per engine family, through the device front end and windows."""
    from eeasr.train.evaluate import compare_table, interval_line, per_group_table, run as run_eval, wer_table

    ck = _load(run)
    utts = _eval_set(manifest, split, real, limit)
    results, skipped = run_eval(ck, utts, beam=beam)
    layers = ck.cfg.model.exits
    text = f"## {run.name}: {len(results)} utterances ({'real clips' if real else split})\n\n"
    text += wer_table(results, layers, beam > 1) + "\n" + per_group_table(results, layers, "source")
    if baselines:
        single = {}
        for b in baselines:
            bk = _load(b)
            if len(bk.cfg.model.exits) != 1:
                raise click.ClickException(f"{b}: a baseline has one exit, this one has {bk.cfg.model.exits}")
            single[bk.cfg.model.exits[0]] = run_eval(bk, utts, beam=beam)[0]
        text += "\n" + compare_table(results, layers, single, beam > 1)
    if real:
        from eeasr.audio import load_audio
        from eeasr.metrics import wer
        from eeasr.train.data.realclips import pocketsphinx_transcribe

        ps = [pocketsphinx_transcribe(load_audio(r.utt.path)) for r in results]
        text += f"\nlast exit: {interval_line(results, len(layers) - 1)}\n"
        text += f"pocketsphinx 5.1.1: {wer([r.utt.text for r in results], ps):.1f}%\n"
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
