"""The feature cache, built by its real process pool from the tiny synthesized corpus."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from eeasr.audio import load_audio, write_audio
from eeasr.features import FeatureConfig, NormStats, log_mel
from eeasr.manifest import read_manifest, write_manifest
from eeasr.train.data.augment import AugmentConfig
from eeasr.train.data.cache import CACHE_VERSION, CacheConfig, build_cache, cache_key, load_norm, load_split

# Small shards, so the tiny corpus spans several train shards and the resume tests have something to skip.
CFG = CacheConfig(copies=2, shard_size=16, babble_pool=20)
SPLITS = ("train", "dev", "test")


def build(manifest: Path, root: Path, cfg: CacheConfig = CFG) -> Path:
    return build_cache(manifest, root, FeatureConfig(), cfg, workers=2, progress=False)


def shard_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def cache(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tiny_corpus / "manifest.jsonl", tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def index(cache: Path) -> dict:
    return json.loads((cache / "index.json").read_text())


def test_index_lists_every_split_with_copies_of_train_only(tiny_corpus: Path, cache: Path, index: dict):
    utts = read_manifest(tiny_corpus / "manifest.jsonl")
    assert cache.name == cache_key(tiny_corpus / "manifest.jsonl", FeatureConfig(), CFG)
    assert index["version"] == CACHE_VERSION and index["skipped"] == []
    assert set(index["splits"]) == set(SPLITS)
    for split in SPLITS:
        ids = [u.id for u in utts if u.split == split]
        entry = index["splits"][split]
        copies = CFG.copies if split == "train" else 1
        assert entry["items"] == copies * len(ids) > 0
        assert entry["shards"] == [f"shard-{i:05d}.npz" for i in range(-(-len(ids) // CFG.shard_size))]
        fs = load_split(cache, split)
        assert sorted(zip(fs.ids, fs.copies)) == sorted((i, c) for i in ids for c in range(copies))
        assert entry["frames"] == sum(len(f) for f in fs.feats)
        texts = {u.id: u.text for u in utts}
        assert all(texts[i] == t for i, t in zip(fs.ids, fs.texts))
        assert all(f.dtype == np.float16 and f.shape[1] == 80 for f in fs.feats)
    assert len(index["splits"]["train"]["shards"]) > 1
    assert index["features"] == FeatureConfig().to_dict()
    assert index["cache"] == json.loads(json.dumps(dataclasses.asdict(CFG)))


def test_load_split_can_keep_only_the_first_copies(cache: Path, index: dict):
    fs = load_split(cache, "train", copies=1)
    assert set(fs.copies) == {0} and len(fs.ids) == index["splits"]["train"]["items"] // CFG.copies


def test_norm_stats_are_the_mean_and_std_of_the_cached_train_frames(cache: Path):
    norm = load_norm(cache)
    assert json.loads((cache / "norm.json").read_text()).keys() == {"mean", "std"}
    frames = np.concatenate(load_split(cache, "train").feats).astype(np.float64)
    assert norm.mean.shape == norm.std.shape == (80,)
    # The stats come from the float32 features; the cache stores float16 (a relative step of 2^-11).
    scale = np.abs(frames).max()
    np.testing.assert_allclose(norm.mean, frames.mean(axis=0), rtol=0, atol=scale * 2**-11)
    np.testing.assert_allclose(norm.std, frames.std(axis=0), rtol=0, atol=scale * 2**-11)
    # Dev and test frames play no part.
    dev = np.concatenate(load_split(cache, "dev").feats).astype(np.float64)
    mixed = np.concatenate([frames, dev])
    assert not np.allclose(norm.mean, mixed.mean(axis=0), rtol=0, atol=scale * 2**-11)
    assert isinstance(norm, NormStats) and np.all(norm.std > 0.1)


def test_copy_0_is_the_corpus_audio_and_copy_1_is_augmented(tiny_corpus: Path, cache: Path):
    paths = {u.id: u.path for u in read_manifest(tiny_corpus / "manifest.jsonl")}
    for split in SPLITS:
        fs = load_split(cache, split)
        by_copy = {(i, c): f for i, c, f in zip(fs.ids, fs.copies, fs.feats)}
        for utt_id in sorted({i for i in fs.ids})[:4]:
            ref = log_mel(load_audio(paths[utt_id]))
            cached = by_copy[utt_id, 0].astype(np.float32)
            assert cached.shape == ref.shape
            np.testing.assert_allclose(cached, ref, rtol=2**-10, atol=1e-3)
            if split == "train":
                aug = by_copy[utt_id, 1].astype(np.float32)
                # Speed perturbation may change its length; the content differs in any case.
                assert aug.shape != ref.shape or not np.allclose(aug, ref, atol=0.05)


def test_rebuild_with_an_index_present_returns_the_same_cache_untouched(tiny_corpus: Path, cache: Path):
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert build(tiny_corpus / "manifest.jsonl", cache.parent) == cache
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == before


def test_resume_rebuilds_only_the_missing_shard_identically(tiny_corpus: Path, cache: Path, tmp_path: Path):
    # An interrupted build: no index yet, and one shard never written.
    copy = tmp_path / cache.name
    shutil.copytree(cache, copy)
    (copy / "index.json").unlink()
    (copy / "norm.json").unlink()
    lost = copy / "train" / "shard-00001.npz"
    original = shard_arrays(lost)
    lost.unlink()
    kept = {p: p.stat().st_mtime_ns for p in copy.rglob("shard-*.npz")}

    assert build(tiny_corpus / "manifest.jsonl", tmp_path) == copy
    rebuilt = shard_arrays(lost)
    assert rebuilt.keys() == original.keys()
    for k in original:
        assert np.array_equal(rebuilt[k], original[k]), k  # augmentation, babble included, is reproducible
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert json.loads((copy / "index.json").read_text()) == json.loads((cache / "index.json").read_text())
    assert (copy / "norm.json").read_text() == (cache / "norm.json").read_text()


def corrupt_manifest(tiny_corpus: Path, tmp_path: Path) -> tuple[Path, list[Path], list[str]]:
    """A copy of the manifest in which one train and one dev utterance point to bad files."""
    utts = read_manifest(tiny_corpus / "manifest.jsonl")
    corrupt = tmp_path / "audio" / "corrupt.flac"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"fLaC" + np.random.default_rng(0).bytes(5000))
    missing = tmp_path / "audio" / "missing.flac"
    train = next(i for i, u in enumerate(utts) if u.split == "train" and i > 20)
    dev = next(i for i, u in enumerate(utts) if u.split == "dev")
    utts[train].path, utts[dev].path = corrupt, missing
    manifest = tmp_path / "manifest.jsonl"
    write_manifest(manifest, utts)
    return manifest, [corrupt, missing], [utts[train].id, utts[dev].id]


def test_bad_audio_files_are_skipped_and_reported(tiny_corpus: Path, tmp_path: Path):
    manifest, bad_paths, bad_ids = corrupt_manifest(tiny_corpus, tmp_path)
    out = build(manifest, tmp_path / "cache")
    index = json.loads((out / "index.json").read_text())
    skipped = index["skipped"]
    assert len(skipped) == 2
    for path in bad_paths:
        (msg,) = [m for m in skipped if str(path) in m]
        assert "\n" not in msg and msg.startswith(f"{path}: ")
    utts = read_manifest(manifest)
    for split in SPLITS:
        copies = CFG.copies if split == "train" else 1
        want = {(u.id, c) for u in utts if u.split == split and u.id not in bad_ids for c in range(copies)}
        fs = load_split(out, split)
        assert sorted(zip(fs.ids, fs.copies)) == sorted(want)
        assert index["splits"][split]["items"] == len(want)

    # Resuming an interrupted build of the same manifest still reports both files, whichever shards it redoes.
    (out / "index.json").unlink()
    (out / "dev" / "shard-00000.npz").unlink()
    assert build(manifest, tmp_path / "cache") == out
    resumed = json.loads((out / "index.json").read_text())
    assert resumed["skipped"] == skipped  # and in the same (shard) order
    assert resumed["splits"] == index["splits"]


def test_an_utterance_too_short_for_an_augmented_copy_is_skipped_whole(tiny_corpus: Path, tmp_path: Path):
    """410 samples make one frame unaugmented, none when sped up by more than 2.5%: keep no partial copies."""
    utts = [u for u in read_manifest(tiny_corpus / "manifest.jsonl") if u.split == "train"][:3]
    short = tmp_path / "short.flac"
    write_audio(short, load_audio(utts[0].path)[:410])
    utts[0] = dataclasses.replace(utts[0], id="short", path=short, duration=410 / 16000)
    manifest = tmp_path / "manifest.jsonl"
    write_manifest(manifest, utts)
    # Every augmented copy is sped up by 1.05.
    aug = AugmentConfig(p_speed=1.0, speed=(1.05, 1.05))
    cfg = CacheConfig(copies=3, shard_size=16, babble_pool=2, augment=aug)
    out = build(manifest, tmp_path / "cache", cfg)
    index = json.loads((out / "index.json").read_text())
    assert len(index["skipped"]) == 1 and str(short) in index["skipped"][0]
    fs = load_split(out, "train")
    assert "short" not in fs.ids
    assert sorted(zip(fs.ids, fs.copies)) == sorted((u.id, c) for u in utts[1:] for c in range(3))
    frames = np.concatenate(fs.feats).astype(np.float64)
    np.testing.assert_allclose(load_norm(out).mean, frames.mean(axis=0), atol=np.abs(frames).max() * 2**-11)


def test_cache_key_follows_the_manifest_and_both_configs(tiny_corpus: Path, tmp_path: Path):
    manifest = tiny_corpus / "manifest.jsonl"
    key = cache_key(manifest, FeatureConfig(), CFG)
    assert key == cache_key(manifest, FeatureConfig(), CacheConfig(copies=2, shard_size=16, babble_pool=20))
    variants = [
        cache_key(manifest, FeatureConfig(n_mels=64), CFG),
        cache_key(manifest, FeatureConfig(f_max=8000.0), CFG),
        cache_key(manifest, FeatureConfig(), dataclasses.replace(CFG, copies=3)),
        cache_key(manifest, FeatureConfig(), dataclasses.replace(CFG, shard_size=17)),
        cache_key(manifest, FeatureConfig(), dataclasses.replace(CFG, augment=AugmentConfig(p_noise=0.5))),
        cache_key(manifest, FeatureConfig(), dataclasses.replace(CFG, augment=AugmentConfig(snr_db=(5.0, 20.0)))),
    ]
    edited = tmp_path / "manifest.jsonl"
    edited.write_bytes(manifest.read_bytes() + b"\n")
    variants.append(cache_key(edited, FeatureConfig(), CFG))
    assert len({key, *variants}) == len(variants) + 1
