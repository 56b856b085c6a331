"""The feature cache: augmented waveforms turned into log-mel features once, so training only adds SpecAugment.

Layout of a cache directory (its name is a hash of the manifest, feature config and cache config):
  index.json            version, configs, manifest hash, shards per split, skipped files
  norm.json             global mean/std over the training features (eeasr.features.NormStats)
  <split>/shard-NNNNN.npz   feats float16 [sum T, 80], lengths, ids, texts, copy index, norm accumulator
                            state, the files it skipped
Train utterances get `copies` versions: copy 0 is the corpus audio as it is, the others are augmented. Shards
are written atomically and skipped when present, so an interrupted build resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eeasr.audio import AudioError, load_audio
from eeasr.features import FeatureConfig, NormAccumulator, NormStats, log_mel
from eeasr.manifest import Utterance, read_manifest
from eeasr.train.data.augment import AugmentConfig, augment, utterance_rng

# Part of every cache key. 2: shards store their skipped files; pink/brown augmentation noise has no sub-20 Hz power.
CACHE_VERSION = 2


@dataclass(frozen=True)
class CacheConfig:
    copies: int = 2          # versions of each training utterance (copy 0 unaugmented)
    shard_size: int = 400
    babble_pool: int = 200   # training utterances kept in memory by each worker to make babble noise
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class FeatureSet:
    """One split of the cache in memory."""
    feats: list[np.ndarray]   # float16 [T, n_mels] each, unnormalized
    ids: list[str]
    texts: list[str]
    copies: list[int]


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def cache_key(manifest: Path, feature_cfg: FeatureConfig, cfg: CacheConfig) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "manifest": _file_hash(manifest), "features": feature_cfg.to_dict(),
                       "cache": asdict(cfg)}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_BABBLE: list[np.ndarray] = []


def _init_worker(paths: list[str]) -> None:
    """Each worker keeps a few training utterances in memory as babble noise."""
    for p in paths:
        try:
            _BABBLE.append(load_audio(p).astype(np.float32) / 32768.0)
        except AudioError:
            continue


def _build_shard(out: str, split: str, utts: list[Utterance], copies: int, feature_cfg: FeatureConfig,
                 cfg: CacheConfig) -> dict:
    feats, lengths, ids, texts, copy_idx, skipped = [], [], [], [], [], []
    acc = NormAccumulator(feature_cfg.n_mels)
    for u in utts:
        try:
            pcm = load_audio(u.path)
        except AudioError as e:  # one bad file never stops the build; it is counted and reported
            skipped.append(str(e))
            continue
        audio = pcm.astype(np.float32) / 32768.0
        # All copies or none: a copy that speed perturbation made too short skips the whole utterance, so that
        # every cached utterance has `copies` versions and a skipped one adds nothing to the norm stats.
        versions: list[np.ndarray] = []
        for c in range(copies):
            wav = pcm if c == 0 else augment(audio, utterance_rng(u.id, c), cfg.augment, _BABBLE)[0]
            f = log_mel(wav, feature_cfg)
            if len(f) == 0:
                what = "the audio" if c == 0 else f"augmented copy {c}"
                skipped.append(f"{u.path}: {what} is shorter than one feature frame (drop or lengthen it)")
                break
            versions.append(f)
        if len(versions) < copies:
            continue
        for c, f in enumerate(versions):
            if split == "train":
                acc.update(f)
            feats.append(f.astype(np.float16))
            lengths.append(len(f))
            ids.append(u.id)
            texts.append(u.text)
            copy_idx.append(c)
    path = Path(out)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, feats=np.concatenate(feats) if feats else np.zeros((0, feature_cfg.n_mels), np.float16),
             lengths=np.array(lengths, np.int32), ids=np.array(ids), texts=np.array(texts),
             copies=np.array(copy_idx, np.int8), acc=acc.state(), skipped=np.array(skipped, dtype=str))
    tmp.replace(path)
    return {"skipped": skipped}


def _shards(utts: list[Utterance], size: int) -> Iterator[tuple[str, int, list[Utterance]]]:
    for split in ("train", "dev", "test"):
        su = [u for u in utts if u.split == split]
        for i in range(0, len(su), size):
            yield split, i // size, su[i:i + size]


def build_cache(manifest: Path, root: Path, feature_cfg: FeatureConfig = FeatureConfig(),
                cfg: CacheConfig = CacheConfig(), workers: int | None = None, progress: bool = True) -> Path:
    """Build or resume the cache of `manifest` under `root`; returns the cache directory."""
    out = root / cache_key(manifest, feature_cfg, cfg)
    if (out / "index.json").exists():
        return out
    utts = read_manifest(manifest)
    train = [u.path for u in utts if u.split == "train"]
    babble = random.Random(0).sample(train, min(cfg.babble_pool, len(train)))
    shards = list(_shards(utts, cfg.shard_size))
    todo = [(s, i, su) for s, i, su in shards if not (out / s / f"shard-{i:05d}.npz").exists()]
    for split in ("train", "dev", "test"):
        (out / split).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(workers or os.cpu_count() or 1, initializer=_init_worker, initargs=(babble,)) as pool, \
            tqdm(total=sum(len(su) for _, _, su in todo), unit="utt", desc="features", disable=not progress) as bar:
        futs = {pool.submit(_build_shard, str(out / s / f"shard-{i:05d}.npz"), s, su,
                            cfg.copies if s == "train" else 1, feature_cfg, cfg): len(su) for s, i, su in todo}
        for fut in as_completed(futs):
            fut.result()  # raises what a worker raised
            bar.update(futs[fut])
    acc = NormAccumulator(feature_cfg.n_mels)
    # Skipped files are read back from every shard, not only those built by this run: a resumed build reports
    # the same files as an uninterrupted one (in shard order, so the list is reproducible).
    skipped: list[str] = []
    index: dict = {"version": CACHE_VERSION, "manifest": str(manifest), "manifest_sha": _file_hash(manifest),
                   "features": feature_cfg.to_dict(), "cache": asdict(cfg), "splits": {}}
    for split in ("train", "dev", "test"):
        files = sorted((out / split).glob("shard-*.npz"))
        n_utt = frames = 0
        for f in files:
            with np.load(f) as z:
                n_utt += len(z["lengths"])
                frames += int(z["lengths"].sum())
                if split == "train":
                    acc.merge_state(z["acc"])
                skipped += z["skipped"].tolist()
        index["splits"][split] = {"shards": [f.name for f in files], "items": n_utt, "frames": frames}
    if index["splits"]["train"]["items"]:
        acc.result().save(out / "norm.json")
    index["skipped"] = skipped
    (out / "index.json").write_text(json.dumps(index, indent=1, default=list) + "\n")
    return out


def load_split(cache: Path, split: str, copies: int | None = None) -> FeatureSet:
    """All items of one split (optionally only the first `copies` versions of each utterance)."""
    index = json.loads((cache / "index.json").read_text())
    fs = FeatureSet([], [], [], [])
    for name in index["splits"][split]["shards"]:
        with np.load(cache / split / name) as z:
            feats, lengths = z["feats"], z["lengths"]
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            for s, n, i, t, c in zip(starts, lengths, z["ids"], z["texts"], z["copies"]):
                if copies is None or c < copies:
                    fs.feats.append(feats[s:s + n])
                    fs.ids.append(str(i))
                    fs.texts.append(str(t))
                    fs.copies.append(int(c))
    return fs


def load_norm(cache: Path) -> NormStats:
    return NormStats.load(cache / "norm.json")
