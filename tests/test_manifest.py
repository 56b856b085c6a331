import hashlib
import json
import warnings
from pathlib import Path

import pytest

from eeasr.manifest import (
    Utterance,
    append_manifest,
    file_sha256,
    iter_manifest,
    read_manifest,
    write_manifest,
)


def utt(i: int, path: Path, **kw) -> Utterance:
    return Utterance(id=f"u{i}", path=path, text="hello world", duration=1.25, speaker="spk1",
                     source="librispeech", split="train", **kw)


def test_round_trip_with_relative_and_absolute_paths(tmp_path: Path) -> None:
    corpus, elsewhere = tmp_path / "corpus", tmp_path / "elsewhere"
    corpus.mkdir()
    utts = [
        utt(0, corpus / "audio" / "a.flac"),
        utt(1, elsewhere / "b.flac", voice="amy", engine="piper", settings={"length_scale": 1.1},
            heldout="voice", sha256="ab" * 32, extra={"snr_db": 12.5}),
    ]
    m = corpus / "manifest.jsonl"
    write_manifest(m, utts)
    assert read_manifest(m) == utts
    lines = [json.loads(line) for line in m.read_text().splitlines()]
    assert [r["path"] for r in lines] == ["audio/a.flac", (elsewhere / "b.flac").as_posix()]
    assert lines[1]["snr_db"] == 12.5
    assert all(list(r) == sorted(r) for r in lines)  # json.loads keeps the file's key order
    assert list(corpus.iterdir()) == [m]  # no temporary file left behind


def test_all_keys_always_written(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    write_manifest(m, [utt(0, tmp_path / "a.flac")])
    assert sorted(json.loads(m.read_text())) == sorted(
        ["id", "path", "text", "duration", "speaker", "source", "split", "voice", "engine", "settings",
         "heldout", "sha256"])


def test_paths_resolve_against_manifest_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = tmp_path / "sub" / "m.jsonl"
    m.parent.mkdir()
    write_manifest(m, [utt(0, tmp_path / "sub" / "x" / "a.flac")])
    monkeypatch.chdir(tmp_path)
    [u] = read_manifest(Path("sub/m.jsonl"))
    assert u.path == tmp_path / "sub" / "x" / "a.flac"


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    write_manifest(m, [utt(0, tmp_path / "a.flac"), utt(1, tmp_path / "b.flac")])
    m.write_text(m.read_text() + "\n{not json\n")
    with pytest.raises(ValueError) as err:
        read_manifest(m)
    msg = str(err.value)
    assert msg.startswith(f"{m}:4: malformed JSON") and "\n" not in msg


@pytest.mark.parametrize("change,problem", [
    ({"split": "training"}, "split 'training'"),
    ({"duration": "long"}, "duration"),
    ({"heldout": "maybe"}, "heldout 'maybe'"),
    ({"text": None}, "text must be a string"),
])
def test_invalid_field_names_line(tmp_path: Path, change: dict, problem: str) -> None:
    m = tmp_path / "m.jsonl"
    write_manifest(m, [utt(0, tmp_path / "a.flac")])
    rec = json.loads(m.read_text()) | change
    m.write_text(m.read_text() + json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match=rf"^{m}:2: .*{problem}"):
        read_manifest(m)


def test_missing_key_names_line(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text('{"id": "u0", "path": "a.flac"}\n')
    with pytest.raises(ValueError, match=rf"^{m}:1: missing key\(s\) text, duration, speaker, source, split"):
        read_manifest(m)


def test_unknown_keys_kept_in_extra(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    write_manifest(m, [utt(0, tmp_path / "a.flac")])
    rec = json.loads(m.read_text()) | {"lang": "en", "extra": [1]}
    m.write_text(json.dumps(rec) + "\n")
    [u] = read_manifest(m)
    assert u.extra == {"lang": "en", "extra": [1]}
    write_manifest(m, [u])
    assert json.loads(m.read_text()) == rec


def test_append_and_iterate(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    append_manifest(m, [utt(0, tmp_path / "a.flac")])
    append_manifest(m, [utt(1, tmp_path / "b.flac"), utt(2, tmp_path / "c.flac")])
    assert [u.id for u in iter_manifest(m)] == ["u0", "u1", "u2"]


def test_torn_last_line_is_skipped_then_repaired(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    append_manifest(m, [utt(0, tmp_path / "a.flac")])
    with open(m, "a") as f:
        f.write('{"id": "u1", "pa')  # a build killed mid-append
    with pytest.warns(UserWarning, match=r"m.jsonl:2: skipped a torn last line"):
        assert [u.id for u in read_manifest(m)] == ["u0"]
    append_manifest(m, [utt(2, tmp_path / "c.flac")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [u.id for u in read_manifest(m)] == ["u0", "u2"]


def test_append_keeps_complete_unterminated_line(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    write_manifest(m, [utt(0, tmp_path / "a.flac")])
    m.write_text(m.read_text().rstrip("\n"))
    append_manifest(m, [utt(1, tmp_path / "b.flac")])
    assert [u.id for u in read_manifest(m)] == ["u0", "u1"]


def test_utterance_validates() -> None:
    with pytest.raises(ValueError, match="split"):
        Utterance(id="x", path="a.flac", text="", duration=0, speaker="s", source="c", split="eval")
    with pytest.raises(ValueError, match="duration"):
        Utterance(id="x", path="a.flac", text="", duration=float("nan"), speaker="s", source="c", split="dev")
    assert isinstance(Utterance(id="x", path="a.flac", text="", duration=1, speaker="s", source="c",
                                split="dev").path, Path)


def test_file_sha256(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc" * 1000)
    assert file_sha256(p) == hashlib.sha256(b"abc" * 1000).hexdigest()
