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
