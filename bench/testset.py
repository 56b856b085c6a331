"""The held-out test utterances the benchmarks score (bench/int8_wer.py, split_sweep.py, split_latency.py, ...).

The same seeded-subset rule as bench/int8_wer.py (`random.Random(seed).sample` of manifest positions, kept in
manifest order), so a subset of N utterances with seed S is the same set in every benchmark.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eeasr.manifest import Utterance, read_manifest
from eeasr.paths import default_cache_dir


def default_manifest() -> Path:
    return default_cache_dir() / "corpus" / "manifest.jsonl"


def split_utterances(manifest: Path | None, split: str = "test") -> list[Utterance]:
    """Every utterance of `split` in the corpus manifest (default: ~/.cache/eeasr/corpus/manifest.jsonl);
    SystemExit with what to do when the manifest is missing or has none."""
    path = manifest or default_manifest()
    if not path.is_file():
        raise SystemExit(f"{path}: no corpus manifest; synthesize the corpus with `make data` or pass --manifest")
    utts = [u for u in read_manifest(path) if u.split == split]
    if not utts:
        raise SystemExit(f"{path} has no {split!r} utterances")
    return utts


def seeded_subset(utts: list[Utterance], n: int, seed: int) -> list[Utterance]:
    """A fixed subset of min(n, len(utts)) utterances, in manifest order."""
    keep = set(random.Random(seed).sample(range(len(utts)), min(n, len(utts))))
    return [u for i, u in enumerate(utts) if i in keep]


def add_subset_args(ap: argparse.ArgumentParser, budget_min: float, seed_help: str = "seed of the subset") -> None:
    """--manifest, --split, --limit, --budget-min, --fallback-limit and --seed (`choose` and `fit_budget` read them)."""
    ap.add_argument("--manifest", type=Path, default=None,
                    help="corpus manifest (default: ~/.cache/eeasr/corpus/manifest.jsonl)")
    ap.add_argument("--split", default="test", help="manifest split to score (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=None, metavar="N",
                    help="score a fixed seeded subset of N utterances (default: all, unless over --budget-min)")
    ap.add_argument("--budget-min", type=float, default=budget_min, metavar="MIN",
                    help="without --limit: when the estimated pass exceeds MIN minutes, score --fallback-limit "
                         "utterances instead (default: %(default)g)")
    ap.add_argument("--fallback-limit", type=int, default=300, metavar="N",
                    help="subset size when over the budget (default: %(default)d)")
    ap.add_argument("--seed", type=int, default=0, help=f"{seed_help} (default: 0)")


def choose(args: argparse.Namespace) -> tuple[list[Utterance], list[Utterance], str]:
    """(the split's utterances, those --limit keeps, a note saying which) for `add_subset_args`' options."""
    utts = split_utterances(args.manifest, args.split)
    if args.limit is None:
        return utts, utts, f"all {len(utts)} {args.split} utterances"
    chosen = seeded_subset(utts, args.limit, args.seed)
    return utts, chosen, (f"a fixed subset of {len(chosen)} of the {len(utts)} {args.split} utterances (--limit, "
                          f"seed {args.seed})")


def fit_budget(args: argparse.Namespace, utts: Sequence[Utterance], items: list[Any], estimate_min: float,
               estimate: str) -> tuple[list[Any], str | None]:
    """Without --limit and over --budget-min: the `items` (anything with `.utt`) of a fixed seeded subset of
    --fallback-limit of `utts`, and a note with the `estimate` that decided it; else (items, None)."""
    if args.limit is not None or estimate_min <= args.budget_min:
        return items, None
    keep = {u.id for u in seeded_subset(list(utts), args.fallback_limit, args.seed)}
    kept = [it for it in items if it.utt.id in keep]
    return kept, (f"a fixed subset of {len(kept)} of the {len(utts)} {args.split} utterances (seed {args.seed}): "
                  f"the full set was estimated at {estimate}, over the {args.budget_min:g} min budget")
