"""`eeasr-data`: build speech corpora and their feature caches."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from eeasr.paths import default_cache_dir


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """Build the data eeasr trains on.

    \b
    Typical use:
      eeasr-data synth --hours 21 --out ~/.cache/eeasr/corpus   # offline TTS corpus (make data)
      eeasr-data features --corpus ~/.cache/eeasr/corpus        # augmented log-mel cache
      eeasr-data import librispeech /data/LibriSpeech --out my-corpus
    """


@main.command()
@click.option("--hours", type=float, default=21.0, help="Hours of training speech to synthesize.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Corpus directory (created).")
@click.option("--eval-hours", type=float, default=None, help="Hours of dev and of test each [default: 5% of --hours, at most 1.5].")
@click.option("--seed", type=int, default=0, help="Fixes texts, voices and prosody.")
@click.option("--max-words", type=int, default=12, help="Longer sentences are cut into chunks of this many words.")
@click.option("--max-seconds", type=float, default=6.0, help="Longer utterances are dropped (device window).")
@click.option("--workers", type=int, default=None, help="Processes [default: all cores].")
def synth(hours: float, out: Path, eval_hours: float | None, seed: int, max_words: int, max_seconds: float,
          workers: int | None) -> None:
    """Synthesize a speech corpus offline with Debian TTS voices.

    espeak-ng (accents x voice variants), flite and festival (diphone and HTS) voices read sentences from
    fortunes, WordNet, the World English Bible and the Jargon File, plus generated numbers, dates and
    commands. Writes 16 kHz mono FLAC, manifest.jsonl and corpus.json to --out. Whole voices of every
    engine, and the festival HTS family, are held out of training for dev and test. Rerunning resumes.
    """
    from eeasr.train.data.synth import SynthConfig, build

    cfg = SynthConfig(hours=hours, eval_hours=eval_hours, seed=seed, max_words=max_words, max_seconds=max_seconds)
    try:
        summary = build(cfg, out, default_cache_dir(), workers=workers)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    _print_corpus(summary)


def _print_corpus(summary: dict) -> None:
    click.echo(f"{'split':6} {'utts':>7} {'hours':>7} {'voices':>6}  families (hours)")
    for split, s in summary["splits"].items():
        fams = ", ".join(f"{k} {v:.2f}" for k, v in s["hours_per_family"].items())
        click.echo(f"{split:6} {s['utterances']:7d} {s['hours']:7.2f} {s['voices']:6d}  {fams}")
    click.echo(f"disk {summary['disk_bytes'] / 1e9:.2f} GB, skipped {summary['skipped']} "
               f"{summary['skipped_reasons'] or ''}, wall {summary['wall_seconds_last_run']:.0f} s (last run), "
               f"{summary['audio_seconds_per_wall_second']} audio s per wall s")


@main.command()
@click.option("--corpus", type=click.Path(exists=True, path_type=Path), required=True,
              help="Corpus directory (holding manifest.jsonl) or a manifest file.")
@click.option("--copies", type=int, default=2, help="Versions of each training utterance; copy 0 is unaugmented.")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Where caches live [default: ~/.cache/eeasr/features].")
@click.option("--workers", type=int, default=None, help="Processes [default: all cores].")
def features(corpus: Path, copies: int, root: Path | None, workers: int | None) -> None:
    """Augment the waveforms and cache log-mel features (the device contract's front end).

    Training utterances get noise (0-20 dB SNR), room reverberation, band-limiting, speed 0.9-1.1 and gain;
    dev and test are cached as they are. Also computes the global normalization statistics (norm.json).
    Prints the cache directory, which `eeasr-train` takes.
    """
    from eeasr.train.data.cache import CacheConfig, build_cache

    manifest = corpus / "manifest.jsonl" if corpus.is_dir() else corpus
    out = build_cache(manifest, root or default_cache_dir() / "features", cfg=CacheConfig(copies=copies),
                      workers=workers)
    index = json.loads((out / "index.json").read_text())
    for split, s in index["splits"].items():
        click.echo(f"{split:6} {s['items']:7d} items {s['frames'] / 100 / 3600:7.2f} h of features")
    if index["skipped"]:
        click.echo(f"skipped {len(index['skipped'])} files, e.g.: {index['skipped'][0]}", err=True)
    click.echo(str(out))


@main.command("import")
@click.argument("kind", type=click.Choice(["librispeech", "jsonl"]))
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Corpus directory (created).")
@click.option("--workers", type=int, default=None, help="Processes [default: all cores].")
def import_(kind: str, source: Path, out: Path, workers: int | None) -> None:
    """Import a real corpus: a LibriSpeech directory tree or a JSONL manifest (path/audio_filepath + text).

    Audio is checked, resampled to 16 kHz mono where needed and written as FLAC with an eeasr manifest;
    unreadable or empty files are skipped with a one-line message each and counted.
    """
    from eeasr.train.data.corpora import import_corpus, read_jsonl, read_librispeech

    utts = read_librispeech(source) if kind == "librispeech" else read_jsonl(source)
    report = import_corpus(utts, out, workers=workers)
    click.echo(report.summary())


@main.command()
@click.option("--corpus", type=click.Path(exists=True, path_type=Path), required=True,
              help="Corpus directory (holding manifest.jsonl) or a manifest file.")
@click.option("--vocab", type=int, default=256, help="BPE units (the CTC blank comes on top).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Model file [default: tokenizer-VOCAB.model beside the manifest].")
def tokenizer(corpus: Path, vocab: int, out: Path | None) -> None:
    """Train the sentencepiece BPE tokenizer on the corpus's training text."""
    from eeasr.manifest import iter_manifest
    from eeasr.tokenizer import Tokenizer

    manifest = corpus / "manifest.jsonl" if corpus.is_dir() else corpus
    out = out or manifest.parent / f"tokenizer-{vocab}.model"
    texts = [u.text for u in iter_manifest(manifest) if u.split == "train"]
    if not texts:
        raise click.ClickException(f"{manifest} has no training utterances to learn a tokenizer from")
    tok = Tokenizer.train(texts, out, vocab_size=vocab)
    click.echo(f"{out} ({tok.vocab_size} outputs incl. blank, sha256 {tok.sha256[:12]})")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Binary vectors file to write.")
def vectors(out: Path) -> None:
    """Write the front end's test vectors (int16 audio, log-mel, int8 features) for the C tests."""
    from eeasr.testvectors import write_feature_vectors

    write_feature_vectors(out)
    click.echo(str(out))


if __name__ == "__main__":
    sys.exit(main())
