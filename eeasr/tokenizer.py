"""BPE tokenizer (sentencepiece) with the CTC blank convention of the whole toolchain.

CTC convention, defined here once: token id 0 is the CTC blank and token id = sentencepiece id + 1,
so the CTC output layer has `Tokenizer.vocab_size` = sp.vocab_size() + 1 units. Sentencepiece id 0
is <unk> (token id 1); it never occurs for normalized text because every character of the
normalized alphabet is forced into the vocabulary. There is no bos, eos or pad in the CTC units.

Attention decoders and language models (train/aed.py, train/lm.py, eeasr/aed_decode.py) use the same unit ids
plus two of their own, defined here once: sos = V (decoder input only) and eos = V + 1 (decoder output only),
`decoder_vocab(V)` = V + 2 ids in all (V = Tokenizer.vocab_size).

`encode` runs eeasr.text.normalize_text on its input (idempotent, so already normalized text
passes unchanged); `decode` returns normalized text, so decode(encode(x)) == normalize_text(x).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from eeasr.text import normalize_text

BLANK_ID = 0

# The whole output alphabet of normalize_text; required so that no normalized text maps to <unk>.
_ALPHABET = "abcdefghijklmnopqrstuvwxyz'"


def decoder_vocab(vocab_size: int) -> int:
    """Decoder (and LM) ids for a tokenizer of `vocab_size` CTC units: the same ids plus sos and eos."""
    return vocab_size + 2


def sos_id(vocab_size: int) -> int:
    return vocab_size


def eos_id(vocab_size: int) -> int:
    return vocab_size + 1


class Tokenizer:
    """A sentencepiece BPE model seen through the CTC id convention above."""

    def __init__(self, model_bytes: bytes, source: str = "<bytes>") -> None:
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_bytes)
        except (RuntimeError, OSError):
            raise ValueError(f"not a valid sentencepiece model: {source}") from None
        self._model_bytes = model_bytes

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        path = Path(path)
        try:
            model_bytes = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"tokenizer model not found: {path}") from None
        return cls(model_bytes, source=str(path))

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        out_path: str | os.PathLike[str],
        vocab_size: int = 256,
        *,
        input_sentence_size: int = 2_000_000,
    ) -> Tokenizer:
        """Train a BPE model on `texts` and write it to `out_path`.

        `vocab_size` is the sentencepiece vocabulary (including <unk>); the CTC layer gets one more
        unit for the blank. Training is deterministic: the first `input_sentence_size` non-empty
        normalized texts are used in order (no shuffling), so the same input gives the same bytes.
        """
        sentences = (s for s in map(normalize_text, texts) if s)
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences,
                model_writer=model,
                model_type="bpe",
                vocab_size=vocab_size,
                character_coverage=1.0,
                required_chars=_ALPHABET,
                normalization_rule_name="identity",
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                input_sentence_size=input_sentence_size,
                shuffle_input_sentence=False,
                minloglevel=2,
            )
        except RuntimeError as e:
            raise ValueError(f"sentencepiece training failed: {str(e).strip().splitlines()[-1]}") from None
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_bytes(model.getvalue())
        os.replace(tmp, out_path)  # never leave a half-written model behind
        return cls(model.getvalue(), source=str(out_path))

    @property
    def vocab_size(self) -> int:
        """Number of CTC output units, blank included."""
        return self._sp.get_piece_size() + 1

    @property
    def blank_id(self) -> int:
        return BLANK_ID

    @property
    def sha256(self) -> str:
        """Hex digest of the model file bytes: identifies the tokenizer a model was trained with."""
        return hashlib.sha256(self._model_bytes).hexdigest()

    def encode(self, text: str) -> list[int]:
        return [i + 1 for i in self._sp.encode(normalize_text(text), out_type=int)]

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids to text; blanks are skipped, so a collapsed CTC path can be passed as is."""
        pieces = []
        for i in ids:
            if i == BLANK_ID:
                continue
            if not 0 < i < self.vocab_size:
                raise ValueError(f"token id {i} out of range [0, {self.vocab_size})")
            pieces.append(int(i) - 1)
        return self._sp.decode(pieces)

    def piece(self, token_id: int) -> str:
        """The text of one token (for debugging and logs); the blank is shown as <blank>."""
        return "<blank>" if token_id == BLANK_ID else self._sp.id_to_piece(token_id - 1)
