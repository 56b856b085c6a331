"""`eeasr-train`: train and evaluate dynamic-depth recognizers."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """Train and evaluate early-exit and dynamic-depth speech recognizers.

    \b
    Stages before this one:
      eeasr-data synth ...      build a corpus
      eeasr-data features ...   cache its augmented features
      eeasr-data tokenizer ...  train the BPE tokenizer on its training text
    Recipes live in configs/*.yaml; a checkpoint directory holds weights, config, tokenizer and
    normalization statistics, and is what `eeasr-convert` takes.
    """
