import json
import shutil
from pathlib import Path

import numpy as np

from eeasr.audio import load_audio
from eeasr.manifest import read_manifest, write_manifest
from eeasr.paths import default_cache_dir
from eeasr.train.data.sources import text_split
from eeasr.train.data.synth import SynthConfig, _run_batch, build, plan
from eeasr.train.data.voices import HELDOUT_FAMILY, Voice, catalogue, check_voices


def test_catalogue_holds_out_voices_of_every_engine_and_one_family():
    voices = catalogue()
    train = [v for v in voices if v.split == "train"]
    assert len({v.id for v in train}) >= 10
    assert HELDOUT_FAMILY not in {v.family for v in train}
    for split in ("dev", "test"):
        held = [v for v in voices if v.split == split]
        assert {v.engine for v in held} == {"espeak-ng", "flite", "festival"}
        assert HELDOUT_FAMILY in {v.family for v in held}
        assert not {v.id for v in held} & {v.id for v in train}
    # The same recorded person is never on both sides of the train/eval line.
    assert not {v.speaker for v in train} & {v.speaker for v in voices if v.split == "test"}


def test_tiny_corpus_is_16k_mono_flac_with_noise_floor(tiny_corpus: Path):
    utts = read_manifest(tiny_corpus / "manifest.jsonl")
    summary = json.loads((tiny_corpus / "corpus.json").read_text())
    assert {u.split for u in utts} == {"train", "dev", "test"}
    assert summary["splits"]["train"]["hours"] > 0.03
    for u in utts:
        pcm = load_audio(u.path)  # raises unless 16 kHz mono
        assert u.path.suffix == ".flac"
        assert abs(len(pcm) / 16000 - u.duration) < 1e-3
        assert np.mean(pcm == 0) < 0.2, "TTS digital silence must be covered by a noise floor"
        assert u.text == u.text.lower() and u.sha256
        assert (u.heldout is None) == (u.split == "train")
    train_voices = {u.voice for u in utts if u.split == "train"}
    assert not train_voices & {u.voice for u in utts if u.split != "train"}
    # Debian-text sentences land in one split only (generated commands may repeat).
    for u in utts:
        if u.settings["text_source"] != "generated":
            assert text_split(u.text) == u.split


def test_plan_is_fixed_by_the_seed(tmp_path: Path):
    cache = default_cache_dir()
    a, b = plan(SynthConfig(hours=0.02, seed=1), cache), plan(SynthConfig(hours=0.02, seed=1), cache)
    c = plan(SynthConfig(hours=0.02, seed=2), cache)
    assert a == b and a != c


def test_resume_redoes_only_missing_work_and_reproduces_files(tiny_corpus: Path, tmp_path: Path):
    utts = read_manifest(tiny_corpus / "manifest.jsonl")
    half = utts[: len(utts) // 2]
    # Simulate a build killed half-way: its plan, half the files and a partial manifest.
    shutil.copy(tiny_corpus / "plan.json", tmp_path / "plan.json")
    for u in half:
        dst = tmp_path / u.path.relative_to(tiny_corpus)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(u.path, dst)
        u.path = dst
    write_manifest(tmp_path / "manifest.partial.jsonl", half)
    stamp = {u.id: u.path.stat().st_mtime_ns for u in half}
    build(SynthConfig(hours=0.05, eval_hours=0.01), tmp_path, default_cache_dir(), progress=False)
    resumed = {u.id: u for u in read_manifest(tmp_path / "manifest.jsonl")}
    assert set(resumed) == {u.id for u in utts}
    assert all(resumed[i].path.stat().st_mtime_ns == t for i, t in stamp.items()), "finished files were redone"
    # Same seed, same engines: the same bytes (piper, not used here, is the engine that is not bit-exact).
    assert {u.id: u.sha256 for u in utts} == {i: u.sha256 for i, u in resumed.items()}


def test_missing_voices_are_refused_before_a_build():
    import pytest

    bad = [Voice("flite-nope", "flite", "flite", "nope", "nope", "train", None),
           Voice("espeak-en-us+nope", "espeak-ng", "espeak-ng", "en-us+nope", "x", "train", None)]
    check_voices([v for v in catalogue()])
    with pytest.raises(RuntimeError, match="flite-nope, espeak-en-us\\+nope .*apt-deps"):
        check_voices(bad)


def test_a_failing_engine_batch_is_skipped_with_a_reason(tmp_path: Path):
    bad = Voice("festival-nope", "festival", "festival-diphone", "nope", "nope", "train", None)
    jobs = plan(SynthConfig(hours=0.002), default_cache_dir())[:2]
    done, skipped = _run_batch(str(tmp_path), bad, jobs, 6.0)
    assert done == [] and len(skipped) == 2
    assert all("festival failed" in s["reason"] and "\n" not in s["reason"] for s in skipped)


def test_build_refuses_a_directory_of_another_config(tiny_corpus: Path):
    import pytest

    with pytest.raises(RuntimeError, match="another config"):
        build(SynthConfig(hours=0.05, eval_hours=0.01, seed=9), tiny_corpus, default_cache_dir(),
              progress=False)
