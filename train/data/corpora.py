"""Readers for users' real speech corpora, and the import that turns one into a clean corpus.

Readers only parse transcripts and layouts: they return raw text and `duration=0.0` where the corpus
does not say, and never open audio. `import_corpus` then checks every file, converts it to 16 kHz
mono FLAC, normalizes text, measures durations and writes the manifest, reporting bad files one line
each instead of stopping.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from eeasr.audio import SAMPLE_RATE, AudioError, audio_info, load_audio, write_audio
from eeasr.manifest import SPLITS, Utterance, file_sha256, write_manifest
from eeasr.text import normalize_text

DEV_FRACTION = 0.05
TEST_FRACTION = 0.05
_SPLIT_ALIASES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "val": "dev", "test": "test"}
_AUDIO_KEYS = ("path", "audio_filepath", "audio")
_TEXT_KEYS = ("text", "transcript")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def speaker_split(key: str, dev_fraction: float = DEV_FRACTION, test_fraction: float = TEST_FRACTION) -> str:
    """Deterministic split for a speaker (or utterance) id: a stable hash, not Python's salted hash(),
    so every run and machine agrees and a speaker never straddles two splits."""
    u = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return "dev" if u < dev_fraction else "test" if u < dev_fraction + test_fraction else "train"


def librispeech_subset_split(name: str) -> str | None:
    """Split of a LibriSpeech subset directory: train-clean-100, train-clean-360, train-other-500 ->
    train; dev-clean, dev-other -> dev; test-clean, test-other -> test; anything else -> None."""
    return _SPLIT_ALIASES.get(name.split("-")[0].lower())


def read_librispeech(root: Path, split: str | None = None) -> list[Utterance]:
    """Utterances of a LibriSpeech-style tree, `root/[subset/]<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`.

    Under a subset directory the split follows its name (librispeech_subset_split; an unrecognized
    name splits by speaker hash). When `root` is directly a speaker tree, every utterance goes to
    `split`; if that is None, to the split named by root's own name (e.g. dev-clean), else by speaker hash.
    """
    root = Path(root).absolute()
    if split is not None and split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    utts = []
    for trans in sorted(root.rglob("*.trans.txt")):
        chapter_dir = trans.parent
        speaker = chapter_dir.parent.name
        tree_split = _tree_split(chapter_dir.parent.parent, root, split)
        for utt_id, text in _read_transcripts(trans):
            utts.append(Utterance(
                id=utt_id, path=chapter_dir / f"{utt_id}.flac", text=text, duration=0.0, speaker=speaker,
                source="librispeech", split=tree_split or speaker_split(speaker),
            ))
    return utts


def read_jsonl(path: Path, source: str | None = None) -> list[Utterance]:
    """Utterances of a plain JSONL corpus manifest (NeMo style and the like).

    Each line needs an audio path ("path", "audio_filepath" or "audio"; relative to the JSONL's
    directory) and a transcript ("text" or "transcript"); "id", "duration", "speaker", "split"
    (train/dev/test, or validation/valid/val for dev) and "source" are optional. Defaults: id = the
    audio file's stem, speaker = "unknown", source = `source` or the JSONL's stem, duration = 0.0 (measured
    on import). Lines without a split split by speaker hash, or by id hash when the speaker is unknown.
    A malformed line raises a one-line ValueError naming file and line.
    """
    path = Path(path)
    base = path.absolute().parent
    utts = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                utts.append(_jsonl_utterance(json.loads(line), base, source or path.stem))
            except ValueError as e:  # JSONDecodeError included
                raise ValueError(" ".join(f"{path}:{lineno}: {e} (fix or delete this line)".split())) from None
    return utts


@dataclass
class ImportReport:
    """What import_corpus did. `skipped` holds one line per utterance left out: '<file>: <reason>'."""

    manifest: Path
    imported: int = 0
    resampled: int = 0
    downmixed: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"imported {self.imported} utterances ({self.resampled} resampled, {self.downmixed} downmixed), "
                f"skipped {len(self.skipped)}; manifest: {self.manifest}")


def import_corpus(utts: Iterable[Utterance], out_dir: Path, workers: int | None = None,
                  progress: bool = True) -> ImportReport:
    """Check, convert and normalize a corpus into `out_dir` (audio/<speaker>/<id>.flac + manifest.jsonl).

    Every file is re-encoded as 16 kHz mono 16-bit FLAC, even one that already conforms: the output
    is then one self-contained format whose sha256 fingerprints the exact samples training sees,
    and the original corpus can be moved or deleted. Bad files (unreadable, corrupt, empty, missing),
    empty transcripts and duplicate ids are skipped with a one-line message, printed and kept in the
    report; the import never stops on them. `workers` (default: all CPUs) > 1 uses a process pool.
    Manifest order follows input order.
    """
    out_dir = Path(out_dir).absolute()
    report = ImportReport(manifest=out_dir / "manifest.jsonl")
    jobs = _dedupe(utts, out_dir, report)
    kept = []
    bar = tqdm(total=len(jobs), desc="import", unit="utt", disable=not progress)
    for outcome in _run(jobs, workers or os.cpu_count() or 1):
        bar.update()
        if outcome.problem is not None:
            _skip(report, outcome.problem)
            continue
        kept.append(outcome.utt)
        report.resampled += outcome.resampled
        report.downmixed += outcome.downmixed
    bar.close()
    report.imported = len(kept)
    write_manifest(report.manifest, kept)
    return report


@dataclass
class _Outcome:
    utt: Utterance | None = None
    problem: str | None = None
    resampled: bool = False
    downmixed: bool = False


def _import_one(job: tuple[Utterance, Path]) -> _Outcome:
    utt, out = job
    text = normalize_text(utt.text)
    if not text:
        return _Outcome(problem=f"{utt.path}: transcript of {utt.id} is empty after normalization (fix the text)")
    try:
        info = audio_info(utt.path)
        pcm = load_audio(utt.path, resample=True)
    except AudioError as e:
        return _Outcome(problem=str(e))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_audio(out, pcm)
    done = replace(utt, path=out, text=text, duration=len(pcm) / SAMPLE_RATE, sha256=file_sha256(out))
    return _Outcome(done, resampled=info.sample_rate != SAMPLE_RATE, downmixed=info.channels > 1)


def _run(jobs: list[tuple[Utterance, Path]], workers: int) -> Iterator[_Outcome]:
    if workers <= 1:
        yield from map(_import_one, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_import_one, jobs, chunksize=8)


def _dedupe(utts: Iterable[Utterance], out_dir: Path, report: ImportReport) -> list[tuple[Utterance, Path]]:
    """Pair each utterance with its output file; a repeated id, or one whose file name another id
    already took, is skipped: it would make ids ambiguous or overwrite audio."""
    jobs = []
    taken: dict[str | Path, Utterance] = {}
    for utt in utts:
        out = out_dir / "audio" / _safe_name(utt.speaker) / f"{_safe_name(utt.id)}.flac"
        first = taken.get(utt.id) or taken.get(out)
        if first is not None:
            _skip(report, f"{utt.path}: id {utt.id!r} clashes with id {first.id!r} of {first.path} "
                          "(give each utterance a unique id)")
            continue
        taken[utt.id] = taken[out] = utt
        jobs.append((utt, out))
    return jobs


def _skip(report: ImportReport, problem: str) -> None:
    line = " ".join(problem.split())  # one line per file, even for odd file names
    report.skipped.append(line)
    tqdm.write(line, file=sys.stderr)


def _safe_name(s: str) -> str:
    """A file name that stays inside its directory: no separators, no leading dot ('..'), never empty."""
    name = _UNSAFE.sub("_", s)
    return "_" + name[1:] if name.startswith(".") else name or "_"


def _tree_split(tree: Path, root: Path, split: str | None) -> str | None:
    """Split of the speaker tree `tree` (the parent of the speaker directories), None if unknown."""
    if tree == root:
        return split or librispeech_subset_split(root.name)
    return librispeech_subset_split(tree.name)


def _read_transcripts(trans: Path) -> Iterator[tuple[str, str]]:
    with open(trans, encoding="utf-8") as f:
        for line in f:
            utt_id, _, text = line.strip().partition(" ")
            if utt_id:
                yield utt_id, text


def _jsonl_utterance(rec: Any, base: Path, default_source: str) -> Utterance:
    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    audio = _first(rec, _AUDIO_KEYS)
    text = _first(rec, _TEXT_KEYS)
    speaker = str(rec.get("speaker", "unknown"))
    utt_id = str(rec.get("id", Path(audio).stem))
    split = rec.get("split")
    if split is not None and (not isinstance(split, str) or split not in _SPLIT_ALIASES):
        raise ValueError(f"split {split!r} is not one of {', '.join(_SPLIT_ALIASES)}")
    return Utterance(
        id=utt_id, path=base / audio, text=text, duration=rec.get("duration", 0.0), speaker=speaker,
        source=rec.get("source", default_source),
        split=_SPLIT_ALIASES[split] if split else speaker_split(utt_id if speaker == "unknown" else speaker),
    )


def _first(rec: dict[str, Any], keys: tuple[str, ...]) -> str:
    for key in keys:
        if key in rec:
            if not isinstance(rec[key], str):
                raise ValueError(f"{key} must be a string, got {rec[key]!r}")
            return rec[key]
    raise ValueError(f"missing key: one of {', '.join(keys)}")
