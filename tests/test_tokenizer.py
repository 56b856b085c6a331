import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eeasr.text import normalize_text
from eeasr.tokenizer import Tokenizer

# A small corpus without the letters q, x, z and without apostrophes: required_chars must still
# put them in the vocabulary.
CORPUS = [
    "the cat sat on the mat and the dog ran after it",
    "a bird in the hand is worth two in the bush",
    "she sells sea shells by the sea shore every morning",
    "the rain in spain stays mainly in the plain",
    "better late than never but never late is better",
    "when the going gets tough the tough get going",
    "all that glitters is not gold and all that wander are not lost",
    "it is 42 degrees on March 3, 2021 at 10:30!",
] * 20

VOCAB = 120


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "sub" / "bpe.model"
    Tokenizer.train(CORPUS, path, vocab_size=VOCAB)
    return path


@pytest.fixture(scope="module")
def tok(model_path: Path) -> Tokenizer:
    return Tokenizer.load(model_path)


def test_blank_convention(tok: Tokenizer) -> None:
    assert tok.blank_id == 0
    assert tok.vocab_size == VOCAB + 1
    ids = tok.encode("the cat sat on the mat")
    assert ids and all(1 <= i < tok.vocab_size for i in ids)
    assert tok.piece(0) == "<blank>"


def test_round_trip_on_normalized_text(tok: Tokenizer) -> None:
    for text in ["the cat sat on the mat", "quixotic zebras don't jump", "x", "forty two"]:
        assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz'", min_size=1, max_size=8), max_size=10))
def test_round_trip_property(tok: Tokenizer, words: list[str]) -> None:
    text = normalize_text(" ".join(words))
    assert tok.decode(tok.encode(text)) == text


def test_encode_normalizes_first(tok: Tokenizer) -> None:
    assert tok.encode("The CAT, sat!") == tok.encode("the cat sat")
    assert tok.decode(tok.encode("It's 42.")) == "it's forty two"
    assert tok.encode("") == []


def test_decode_skips_blanks_and_rejects_out_of_range(tok: Tokenizer) -> None:
    ids = tok.encode("the dog")
    assert tok.decode([0, *ids, 0]) == "the dog"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])


def test_training_is_deterministic(tmp_path: Path, tok: Tokenizer) -> None:
    again = Tokenizer.train(iter(CORPUS), tmp_path / "again.model", vocab_size=VOCAB)
    assert again.sha256 == tok.sha256
    other = Tokenizer.train(CORPUS, tmp_path / "other.model", vocab_size=VOCAB - 10)
    assert other.sha256 != tok.sha256


def test_sha256_matches_file(model_path: Path, tok: Tokenizer) -> None:
    assert tok.sha256 == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert not model_path.with_name(model_path.name + ".tmp").exists()


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer model not found"):
        Tokenizer.load(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a valid sentencepiece model"):
        Tokenizer.load(bad)


def test_vocab_too_large_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Vocabulary size too high"):
        Tokenizer.train(["ab ab"], tmp_path / "tiny.model", vocab_size=1000)
