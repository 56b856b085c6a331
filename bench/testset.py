"""The held-out test utterances the split benchmarks score (bench/split_sweep.py, bench/split_latency.py).

The same seeded-subset rule as bench/int8_wer.py (`random.Random(seed).sample` of manifest positions, kept in
manifest order), so a subset of N utterances with seed S is the same set in every benchmark.
"""

from __future__ import annotations

import random
from pathlib import Path

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
