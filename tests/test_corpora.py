import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from eeasr.audio import load_audio
from eeasr.manifest import Utterance, file_sha256, read_manifest
from eeasr.text import normalize_text
from eeasr.train.data.corpora import (
    import_corpus,
    librispeech_subset_split,
    read_jsonl,
    read_librispeech,
    speaker_split,
)


def noise(n: int, channels: int = 1) -> np.ndarray:
    x = (np.random.default_rng(n).standard_normal((n, channels)) * 2000).astype(np.int16)
    return x[:, 0] if channels == 1 else x


def librispeech_tree(root: Path) -> Path:
    """train-clean-100: speaker 19, chapters 198 (2 utts) and 227 (1); dev-clean: speaker 26, chapter 495 (2)."""
    layout = {("train-clean-100", "19", "198"): 2, ("train-clean-100", "19", "227"): 1, ("dev-clean", "26", "495"): 2}
    for (subset, spk, chap), n in layout.items():
        d = root / subset / spk / chap
        d.mkdir(parents=True)
        lines = []
        for i in range(n):
            uid = f"{spk}-{chap}-{i:04d}"
            sf.write(d / f"{uid}.flac", noise(1600 + 160 * i), 16000)
            lines.append(f"{uid} HELLO WORLD NUMBER {i}\n")
        (d / f"{spk}-{chap}.trans.txt").write_text("".join(lines))
    return root


def test_read_librispeech_maps_subsets_to_splits(tmp_path: Path) -> None:
    utts = read_librispeech(librispeech_tree(tmp_path / "LibriSpeech"))
    # sorted by transcript path, so dev-clean comes first
    assert [u.id for u in utts] == ["26-495-0000", "26-495-0001", "19-198-0000", "19-198-0001", "19-227-0000"]
    assert [u.split for u in utts] == ["dev", "dev", "train", "train", "train"]
    u = utts[3]
    assert u.path == tmp_path / "LibriSpeech/train-clean-100/19/198/19-198-0001.flac"
    assert (u.text, u.speaker, u.source, u.duration) == ("HELLO WORLD NUMBER 1", "19", "librispeech", 0.0)


def test_read_librispeech_speaker_tree(tmp_path: Path) -> None:
    librispeech_tree(tmp_path)
    assert {u.split for u in read_librispeech(tmp_path / "train-clean-100", split="test")} == {"test"}
    assert {u.split for u in read_librispeech(tmp_path / "dev-clean")} == {"dev"}  # from the root's name
    renamed = (tmp_path / "train-clean-100").rename(tmp_path / "mine")
    assert {u.split for u in read_librispeech(renamed)} == {speaker_split("19")}


def test_subset_names() -> None:
    assert [librispeech_subset_split(n) for n in
            ["train-clean-100", "train-other-500", "dev-other", "test-clean", "extra"]] == \
        ["train", "train", "dev", "test", None]


def test_speaker_split_is_stable_and_proportional() -> None:
    splits = [speaker_split(f"spk{i}") for i in range(4000)]
    assert splits == [speaker_split(f"spk{i}") for i in range(4000)]
    counts = Counter(splits)
    assert 0.035 < counts["dev"] / 4000 < 0.065 and 0.035 < counts["test"] / 4000 < 0.065
    assert speaker_split("spk0", dev_fraction=1.0) == "dev"


def test_read_jsonl_accepts_key_variants(tmp_path: Path) -> None:
    m = tmp_path / "corpus.jsonl"
    rows = [
        {"audio_filepath": "wavs/a.wav", "text": "one", "duration": 1.5, "speaker": "s1", "split": "validation"},
        {"audio": "/abs/b.flac", "transcript": "two", "id": "bee", "speaker": 7},
        {"path": "c.wav", "text": "three", "source": "mycorpus", "split": "test"},
    ]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    a, b, c = read_jsonl(m)
    assert (a.id, a.path, a.text, a.duration, a.speaker, a.split, a.source) == \
        ("a", tmp_path / "wavs/a.wav", "one", 1.5, "s1", "dev", "corpus")
    assert (b.id, b.path, b.text, b.speaker, b.split) == ("bee", Path("/abs/b.flac"), "two", "7", speaker_split("7"))
    assert (c.speaker, c.split, c.source, c.duration) == ("unknown", "test", "mycorpus", 0.0)


@pytest.mark.parametrize("line,problem", [
    ('{"path": "a.wav"}', "missing key: one of text, transcript"),
    ('{"text": "x"}', "missing key: one of path, audio_filepath, audio"),
    ('{"path": "a.wav", "text": "x", "split": "holdout"}', "split 'holdout'"),
    ('{"path": "a.wav", "text": "x"', "Expecting"),
])
def test_read_jsonl_bad_line_names_line(tmp_path: Path, line: str, problem: str) -> None:
    m = tmp_path / "corpus.jsonl"
    m.write_text('{"path": "ok.wav", "text": "fine"}\n' + line + "\n")
    with pytest.raises(ValueError) as err:
        read_jsonl(m)
    assert str(err.value).startswith(f"{m}:2: ") and problem in str(err.value) and "\n" not in str(err.value)


def mixed_corpus(d: Path) -> list[Utterance]:
    """Two good files, three that need conversion, four bad ones."""
    d.mkdir()
    sf.write(d / "good1.flac", noise(16000), 16000)
    sf.write(d / "good2.wav", noise(8000), 16000)
    sf.write(d / "cd.wav", noise(44100), 44100)  # 1 s at 44.1 kHz
    sf.write(d / "stereo.flac", noise(3200, channels=2), 16000)
    sf.write(d / "stereo8k.wav", noise(4000, channels=2), 8000)  # 0.5 s, both resampled and downmixed
    (d / "empty.flac").write_bytes(b"")
    (d / "corrupt.flac").write_bytes(np.random.default_rng(1).bytes(3000))
    sf.write(d / "truncated.flac", noise(16000), 16000)
    (d / "truncated.flac").write_bytes((d / "truncated.flac").read_bytes()[:1500])
    names = ["good1.flac", "good2.wav", "cd.wav", "stereo.flac", "stereo8k.wav",
             "empty.flac", "corrupt.flac", "truncated.flac", "missing.flac"]
    return [Utterance(id=n.split(".")[0], path=d / n, text=f"Hello, World {i}!", duration=0.0,
                      speaker=f"spk{i % 2}", source="test", split="train") for i, n in enumerate(names)]


def test_import_corpus_reports_bad_files_and_imports_the_rest(tmp_path: Path, capsys) -> None:
    utts = mixed_corpus(tmp_path / "raw")
    report = import_corpus(utts, tmp_path / "out", workers=1, progress=False)
    assert (report.imported, report.resampled, report.downmixed, len(report.skipped)) == (5, 2, 2, 4)
    stderr = capsys.readouterr().err
    for bad in ["empty.flac", "corrupt.flac", "truncated.flac", "missing.flac"]:
        [msg] = [m for m in report.skipped if bad in m]
        assert msg.startswith(str(tmp_path / "raw" / bad) + ": ") and "\n" not in msg
        assert msg in stderr.splitlines()

    out = read_manifest(report.manifest)
    assert report.manifest == tmp_path / "out" / "manifest.jsonl"
    assert [u.id for u in out] == ["good1", "good2", "cd", "stereo", "stereo8k"]
    expected_len = {"good1": 16000, "good2": 8000, "cd": 16000, "stereo": 3200, "stereo8k": 8000}
    for u in out:
        info = sf.info(u.path)
        assert (info.format, info.samplerate, info.channels, info.frames) == ("FLAC", 16000, 1, expected_len[u.id])
        assert u.path.is_relative_to(tmp_path / "out" / "audio")
        assert u.duration == expected_len[u.id] / 16000
        assert u.sha256 == file_sha256(u.path)
        assert u.text == normalize_text(utts[[v.id for v in utts].index(u.id)].text)
    np.testing.assert_array_equal(load_audio(out[0].path), noise(16000))  # conformant audio is unchanged


def test_import_corpus_parallel_matches_serial(tmp_path: Path) -> None:
    utts = mixed_corpus(tmp_path / "raw")
    serial = import_corpus(utts, tmp_path / "a", workers=1, progress=False)
    parallel = import_corpus(utts, tmp_path / "b", workers=2, progress=False)
    assert (parallel.imported, parallel.resampled, parallel.downmixed) == (5, 2, 2)
    assert [(u.id, u.sha256) for u in read_manifest(parallel.manifest)] == \
        [(u.id, u.sha256) for u in read_manifest(serial.manifest)]


def test_import_skips_duplicates_and_empty_text(tmp_path: Path) -> None:
    d = tmp_path / "raw"
    d.mkdir()
    sf.write(d / "a.flac", noise(1600), 16000)
    sf.write(d / "b.flac", noise(1600), 16000)

    def mk(uid: str, name: str, text: str) -> Utterance:
        return Utterance(id=uid, path=d / name, text=text, duration=0.0, speaker="s", source="t", split="dev")

    other_speaker = replace(mk("a", "b.flac", "dup"), speaker="s2")
    report = import_corpus([mk("a", "a.flac", "yes"), other_speaker, mk("a/b", "b.flac", "x"),
                            mk("a_b", "b.flac", "x"), mk("c", "b.flac", "  ")],
                           tmp_path / "out", workers=1, progress=False)
    assert (report.imported, len(report.skipped)) == (2, 3)
    assert report.skipped[0] == f"{d / 'b.flac'}: id 'a' clashes with id 'a' of {d / 'a.flac'} " \
        "(give each utterance a unique id)"
    assert "id 'a_b' clashes with id 'a/b'" in report.skipped[1]
    assert "empty after normalization" in report.skipped[2]


def test_librispeech_end_to_end(tmp_path: Path) -> None:
    report = import_corpus(read_librispeech(librispeech_tree(tmp_path / "ls")), tmp_path / "out", workers=1)
    assert (report.imported, report.resampled, report.downmixed, report.skipped) == (5, 0, 0, [])
    out = read_manifest(report.manifest)
    assert out[2].path == tmp_path / "out/audio/19/19-198-0000.flac"
    assert out[2].text == normalize_text("HELLO WORLD NUMBER 0")
    assert report.summary().startswith("imported 5 utterances (0 resampled, 0 downmixed), skipped 0")
