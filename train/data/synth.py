"""Offline speech corpus synthesis: Debian TTS voices over Debian text, 16 kHz mono FLAC + JSONL manifest.

The plan (which text, voice and prosody each utterance gets) is a pure function of the config and seed, so a
seed reproduces the corpus; each file's sha256 is recorded as well. Work runs in batches over a process pool;
finished batches are appended to `manifest.partial.jsonl`, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eeasr.audio import write_audio
from eeasr.manifest import Utterance, append_manifest, iter_manifest, write_manifest
from eeasr.text import chunk_sentence
from eeasr.train.data import sources
from eeasr.train.data.augment import add_noise_floor, utterance_rng
from eeasr.train.data.voices import (FAMILY_WEIGHTS, SAMPLE_RATE, Voice, catalogue, check_voices, sample_settings,
                                    synthesize)

CORPUS_VERSION = 1
SPLITS = ("train", "dev", "test")
SOURCE_WEIGHTS = {"fortunes": 0.30, "wordnet": 0.12, "bible": 0.20, "jargon": 0.13, "generated": 0.25}


@dataclass
class SynthConfig:
    hours: float = 21.0            # hours of training speech
    eval_hours: float | None = None  # hours of dev and of test each; default: 5% of `hours`, at most 1.5
    seed: int = 0
    max_words: int = 12            # long sentences are cut into chunks of at most this many words
    max_seconds: float = 6.0       # utterances longer than this are dropped (they would not fit a window)
    batch: int = 24
    families: tuple[str, ...] = field(default_factory=lambda: ("espeak-ng", "flite", "festival-diphone",
                                                                "festival-hts"))

    def split_seconds(self) -> dict[str, float]:
        eval_h = self.eval_hours if self.eval_hours is not None else min(1.5, 0.05 * self.hours)
        return {"train": self.hours * 3600, "dev": eval_h * 3600, "test": eval_h * 3600}


@dataclass(frozen=True)
class Job:
    id: str
    split: str
    text: str
    voice: str
    settings: dict
    source: str


def _estimate_seconds(text: str, voice: Voice, settings: dict) -> float:
    # Calibrated on a 0.2 h build: espeak-ng speaks ~0.85 of its nominal rate, the others ~0.3 s per word.
    words = len(text.split())
    per_word = 51.0 / settings["wpm"] if "wpm" in settings else 0.29 * settings["stretch"]
    return 0.25 + words * per_word


def _text_pools(cache_dir: Path, cfg: SynthConfig, rng: random.Random) -> dict[str, dict[str, list[str]]]:
    """Normalized chunks of every Debian source, per split, shuffled by the seed."""
    pools: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    for name in sources.DEBIAN_SOURCE_NAMES:
        per_split: dict[str, list[str]] = defaultdict(list)
        for raw in sources.load_source(name, cache_dir):
            for chunk in chunk_sentence(raw, cfg.max_words):
                if len(chunk.split()) >= 2:
                    per_split[sources.text_split(chunk)].append(chunk)
        for split in SPLITS:
            chunks = sorted(set(per_split[split]))
            rng.shuffle(chunks)
            pools[split][name] = chunks
    return pools


def plan(cfg: SynthConfig, cache_dir: Path) -> list[Job]:
    """Every utterance of the corpus, decided before any audio is made."""
    rng = random.Random(cfg.seed)
    pools = _text_pools(cache_dir, cfg, rng)
    voices = [v for v in catalogue() if v.family in cfg.families]
    jobs: list[Job] = []
    for split, target in cfg.split_seconds().items():
        srng = random.Random(f"{cfg.seed}-{split}")
        by_family: dict[str, list[Voice]] = defaultdict(list)
        for v in voices:
            if v.split == split:
                by_family[v.family].append(v)
        families = [f for f in FAMILY_WEIGHTS[split] if by_family[f]]
        fweights = [FAMILY_WEIGHTS[split][f] for f in families]
        names = list(SOURCE_WEIGHTS)
        cursor = Counter()
        gen = sources.generated(10**9, seed=srng.randrange(2**31))
        total = 0.0
        while total < target:
            src = srng.choices(names, weights=[SOURCE_WEIGHTS[n] for n in names])[0]
            if src == "generated":
                text = next(iter(chunk_sentence(next(gen), cfg.max_words)), "")
            else:
                pool = pools[split][src]
                text = pool[cursor[src] % len(pool)]
                cursor[src] += 1
            if not text:
                continue
            voice = srng.choice(by_family[srng.choices(families, weights=fweights)[0]])
            settings = sample_settings(voice, srng)
            jobs.append(Job(f"{split}-{len(jobs):06d}", split, text, voice.id, settings, src))
            total += _estimate_seconds(text, voice, settings)
    return jobs


def _plan_hash(jobs: list[Job]) -> str:
    blob = json.dumps([asdict(j) for j in jobs], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _run_batch(out_dir: str, voice: Voice, jobs: list[Job], max_seconds: float) -> tuple[list[dict], list[dict]]:
    """Synthesize one batch of one voice; returns manifest records and skipped jobs (with reasons)."""
    done, skipped = [], []
    try:
        audios = synthesize(voice, [j.text for j in jobs], [j.settings for j in jobs])
    except Exception as e:  # one broken batch must not stop the build: report it and go on
        return [], [{"id": j.id, "reason": f"{voice.engine} failed: {str(e).splitlines()[0][:200]}"} for j in jobs]
    for job, audio in zip(jobs, audios):
        duration = len(audio) / SAMPLE_RATE
        if duration > max_seconds:
            skipped.append({"id": job.id, "reason": f"{duration:.1f} s is longer than max_seconds={max_seconds}"})
            continue
        if duration < 0.3 or not np.any(audio):
            skipped.append({"id": job.id, "reason": "engine produced no speech"})
            continue
        # TTS emits exact digital zeros; no microphone does, so every file gets a noise floor.
        pcm = add_noise_floor(audio, utterance_rng(job.id, 0))
        rel = Path("audio") / job.split / voice.id / f"{job.id}.flac"
        path = Path(out_dir) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_audio(path, pcm, SAMPLE_RATE)
        done.append(asdict(Utterance(
            id=job.id, path=path, text=job.text, duration=round(duration, 3), speaker=voice.speaker,
            source=voice.family, split=job.split, voice=voice.id, engine=voice.engine,
            settings={**job.settings, "text_source": job.source}, heldout=voice.heldout,
            sha256=hashlib.sha256(path.read_bytes()).hexdigest())))
    return done, skipped


def _batches(jobs: list[Job], size: int) -> Iterator[tuple[str, list[Job]]]:
    by_voice: dict[str, list[Job]] = defaultdict(list)
    for j in jobs:
        by_voice[j.voice].append(j)
    for vid, vjobs in by_voice.items():
        for i in range(0, len(vjobs), size):
            yield vid, vjobs[i:i + size]


def _read_jsonl(path: Path) -> list[dict]:
    """The skipped-jobs log; a torn last line (killed mid-write) is ignored and its job redone."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def build(cfg: SynthConfig, out_dir: Path, cache_dir: Path, workers: int | None = None,
          progress: bool = True) -> dict:
    """Build (or resume) the corpus in `out_dir`; returns the summary also written to corpus.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    jobs = plan(cfg, cache_dir)
    phash = _plan_hash(jobs)
    summary_path = out_dir / "corpus.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary.get("plan_hash") == phash and (out_dir / "manifest.jsonl").exists():
            return summary  # already built from this exact plan
        raise RuntimeError(f"{out_dir} holds a corpus built from another config (plan {summary.get('plan_hash')}, "
                           f"now {phash}); choose another --out or delete it")
    partial = out_dir / "manifest.partial.jsonl"
    skipped_path = out_dir / "skipped.jsonl"
    state = out_dir / "plan.json"
    if state.exists() and json.loads(state.read_text())["plan_hash"] != phash:
        raise RuntimeError(f"{out_dir} holds a partial build of another config; choose another --out or delete it")
    state.write_text(json.dumps({"plan_hash": phash, "config": asdict(cfg)}, indent=1))

    done_ids = {u.id for u in iter_manifest(partial)} if partial.exists() else set()
    finished = done_ids | {r["id"] for r in _read_jsonl(skipped_path)}
    todo = [j for j in jobs if j.id not in finished]
    voices = {v.id: v for v in catalogue()}
    check_voices([voices[vid] for vid in {j.voice for j in todo}])
    est = {j.id: _estimate_seconds(j.text, voices[j.voice], j.settings) for j in todo}
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(workers) as pool, tqdm(total=round(sum(est.values()) / 60), unit="min",
                                                    desc="synthesizing (minutes of audio)",
                                                    disable=not progress) as bar:
        futures = {pool.submit(_run_batch, str(out_dir), voices[vid], batch, cfg.max_seconds): batch
                   for vid, batch in _batches(todo, cfg.batch)}
        for fut in as_completed(futures):
            done, skipped = fut.result()
            append_manifest(partial, [Utterance(**r) for r in done])
            with skipped_path.open("a") as f:
                for s in skipped:
                    f.write(json.dumps(s) + "\n")
            bar.update(sum(est[j.id] for j in futures[fut]) / 60)

    utts = sorted(iter_manifest(partial), key=lambda u: u.id)
    write_manifest(out_dir / "manifest.jsonl", utts)
    summary = _summarize(cfg, phash, utts, _read_jsonl(skipped_path), out_dir, time.time() - t0)
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    partial.unlink()
    return summary


def _summarize(cfg: SynthConfig, phash: str, utts: list[Utterance], skipped: list[dict], out_dir: Path,
               wall: float) -> dict:
    splits = {}
    for split in SPLITS:
        su = [u for u in utts if u.split == split]
        splits[split] = {
            "utterances": len(su),
            "hours": round(sum(u.duration for u in su) / 3600, 3),
            "voices": len({u.voice for u in su}),
            "speakers": len({u.speaker for u in su}),
            "hours_per_family": {f: round(sum(u.duration for u in su if u.source == f) / 3600, 3)
                                 for f in sorted({u.source for u in su})},
            "heldout": dict(Counter(u.heldout or "none" for u in su)),
        }
    disk = sum(p.stat().st_size for p in (out_dir / "audio").rglob("*.flac"))
    audio_s = sum(u.duration for u in utts)
    reasons = Counter(s["reason"].split(":")[0] if "failed" in s["reason"] else s["reason"].split(" is ")[-1]
                      for s in skipped)
    return {
        "version": CORPUS_VERSION, "plan_hash": phash, "config": asdict(cfg), "splits": splits,
        "skipped": len(skipped), "skipped_reasons": dict(reasons), "disk_bytes": disk,
        "wall_seconds_last_run": round(wall, 1),
        "audio_seconds_per_wall_second": round(audio_s / wall, 1) if wall > 0 else None,
        "licences": sources.SOURCE_LICENCES,
    }
