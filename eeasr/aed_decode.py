"""Attention decoding for a Conformer-AED (paper 1, Sec. 3), in numpy over onnxruntime: no torch, so the server
(host/server.py) runs it. Device exits answer with their CTC heads (greedy, cheap); a handoff is finished on the
server by the last exit's attention decoder, its N-best rescored by a Transformer LM, and the N-best sentence
posterior (Eq. 6) as the answer's confidence.

The search itself is defined here once: train/aed.py's `beam_search` (torch) runs this one, so training-side
evaluation and the server rank hypotheses by the same rules.

Ids (eeasr/tokenizer.py): the tokenizer's units 1..V-1, sos = V (decoder input only), eos = V + 1; every step's
log-probabilities cover `decoder_vocab(V)` = V + 2 ids, blank and sos at -inf.

The ONNX graphs (written and checked against torch by convert/aed_server.py; names below):
- decoder init: `memory` float32 [U, T, d] (the last exit's encoder output, one row per utterance) ->
  `cross_kv` float32 [U, layers, 2, H, T, d/H], the cross-attention keys and values of every decoder layer,
  computed once per utterance.
- decoder step: `tokens` int64 [N] (the newest unit of each prefix), `position` int64 [] (its position; 0 = sos),
  `self_kv` float32 [N, layers, 2, H, t, d/H] (the self-attention keys/values of the t = position earlier
  positions; t = 0 at the first step), `cross_kv` [U, ...] and `lengths` int64 [U] (valid memory frames) ->
  `logp` float32 [N, V + 2] (the next unit) and `self_kv_out` [N, layers, 2, H, t + 1, d/H]. The N rows are
  U groups of N / U consecutive rows (a beam), each attending to its utterance's memory. One step costs one
  position through the decoder (no recomputation of the prefix) plus attention over t + T keys.
- LM: `tokens` int64 [N, L] (sos first) -> `logp` float32 [N, L, V + 2], the next unit after every prefix: a
  causal Transformer, so position i is the step function of tokens[:, : i + 1], all positions in one call
  (N-best rescoring scores whole hypotheses; it is not fused into the search).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eeasr.bundle import Bundle, BundleError
from eeasr.exits import nbest_posterior
from eeasr.server_model import ServerModelError, onnx_session
from eeasr.tokenizer import decoder_vocab, eos_id, sos_id

IGNORE = -100  # target of padded decoder positions

INIT_INPUTS, INIT_OUTPUTS = ("memory",), ("cross_kv",)
STEP_INPUTS, STEP_OUTPUTS = ("tokens", "position", "self_kv", "cross_kv", "lengths"), ("logp", "self_kv_out")
LM_INPUTS, LM_OUTPUTS = ("tokens",), ("logp",)


def decoder_io(seqs: Sequence[Sequence[int]], sos: int, eos: int) -> tuple[np.ndarray, np.ndarray]:
    """Teacher forcing: inputs [N, U+1] = sos y1..yU (padded with eos) and targets [N, U+1] = y1..yU eos (padded
    with IGNORE), int64. Padding sits after each sequence, so a causal decoder never sees it at a real position."""
    n, longest = len(seqs), max((len(s) for s in seqs), default=0) + 1
    inp = np.full((n, longest), eos, np.int64)
    out = np.full((n, longest), IGNORE, np.int64)
    for i, s in enumerate(seqs):
        inp[i, 0] = sos
        inp[i, 1: len(s) + 1] = s
        out[i, : len(s)] = s
        out[i, len(s)] = eos
    return inp, out


@dataclass
class Hypothesis:
    """One attention-decoder hypothesis. `tokens`: units (no sos/eos); `am`: the decoder's log-probability of
    tokens + eos; `lm`: the LM's (0 until `rescore`); `logp`: the log-score s_k of Eq. 6 (am + lm_weight * lm);
    `score`: what ranks the N-best (logp / (len(tokens) + 1) with length normalization, else logp)."""
    tokens: list[int]
    am: float
    logp: float
    score: float
    lm: float = 0.0


def ranked(tokens: list[int], am: float, lm: float, lm_weight: float, length_norm: bool) -> Hypothesis:
    logp = am + lm_weight * lm
    return Hypothesis(tokens, am, logp, logp / (len(tokens) + 1) if length_norm else logp, lm)


StepFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def beam_search(step: StepFn, max_units: Sequence[int], sos: int, eos: int, beam: int = 10,
                length_norm: bool = True, reorder: Callable[[np.ndarray], None] | None = None
                ) -> list[list[Hypothesis]]:
    """Batched attention beam search over B utterances; returns each one's N-best (at most `beam`), best first.

    The search keeps B * beam slots (slot b * beam + j belongs to utterance b). `step(tokens, rows)` maps the
    prefixes [N, L] int64 (sos first) of the slots `rows` [N] to the next unit's log-probabilities [N, V]; `rows`
    are all `beam` slots of each utterance still searching, in order. After each step slot i continues the prefix
    of slot perm[i]: `reorder(perm)` tells a stateful `step` (cached keys/values) so.

    Every step keeps the `beam` best extensions of the live prefixes (equal scores: a fixed, arbitrary order); one
    ending in eos is finished and its slot refilled by the next best. An utterance stops at `max_units[b]` units
    (where only eos may follow), or once it has `beam` finished hypotheses and no live prefix is more probable
    than the `beam`-th best of them: log-probabilities only fall as a prefix grows, so that stop is exact for
    unnormalized scores (SpeechBrain stops at `beam` finished, which on a weak model can end the search before
    the most probable hypothesis is reached). The N-best is ranked by `Hypothesis.score` (length-normalized when
    `length_norm`). Scores are accumulated in float32.
    """
    n_utts, k = len(max_units), beam
    tokens = np.full((n_utts * k, 1), sos, np.int64)
    scores = np.full((n_utts, k), -np.inf, np.float32)
    scores[:, 0] = 0.0  # one live prefix to start with: the others would only duplicate it
    finished: list[list[Hypothesis]] = [[] for _ in range(n_utts)]
    live = [True] * n_utts
    t = 0
    while any(live):
        rows = np.flatnonzero(np.repeat(live, k))
        out = np.asarray(step(tokens[rows], rows), np.float32)
        v = out.shape[-1]
        logp = np.full((n_utts * k, v), -np.inf, np.float32)
        logp[rows] = out
        logp = logp.reshape(n_utts, k, v)
        at_limit = np.array([t >= m for m in max_units])
        logp[at_limit, :, :eos] = -np.inf  # at the limit only eos may follow
        logp[at_limit, :, eos + 1:] = -np.inf
        cand = (scores[:, :, None] + logp).reshape(n_utts, k * v)
        idx = np.argpartition(-cand, k - 1, axis=1)[:, :k]  # the k best, then in order (a full sort is slow)
        idx = np.take_along_axis(idx, np.argsort(-np.take_along_axis(cand, idx, 1), axis=1, kind="stable"), 1)
        top = np.take_along_axis(cand, idx, 1)
        src, tok = idx // v, idx % v
        perm = (np.arange(n_utts)[:, None] * k + src).reshape(-1)
        tokens = np.concatenate([tokens[perm], tok.reshape(-1, 1)], 1)
        if reorder is not None:
            reorder(perm)
        scores = top.copy()
        for b in range(n_utts):
            if not live[b]:
                continue
            for j in range(k):
                if tok[b, j] == eos and top[b, j] > -np.inf:
                    finished[b].append(ranked(tokens[b * k + j, 1:-1].tolist(), float(top[b, j]), 0.0, 0.0,
                                              length_norm))
                    scores[b, j] = -np.inf
            best_live = float(scores[b].max())
            if best_live == -math.inf or (len(finished[b]) >= k and
                                          best_live <= sorted(h.am for h in finished[b])[-k]):
                live[b] = False
        t += 1
    return [sorted(f, key=lambda h: -h.score)[:k] for f in finished]


def rescore(nbest: Sequence[Hypothesis], lm_logps: Sequence[float], lm_weight: float,
            length_norm: bool = True) -> list[Hypothesis]:
    """N-best rescoring: each hypothesis' log-score becomes am + lm_weight * lm (`lm_logps`: the LM's log P of
    tokens + eos); re-ranked by the (length-normalized) new score."""
    out = [ranked(h.tokens, h.am, lm, lm_weight, length_norm) for h, lm in zip(nbest, lm_logps, strict=True)]
    return sorted(out, key=lambda h: -h.score)


def sentence_posterior(nbest: Sequence[Hypothesis]) -> float:
    """Eq. 6: exp(s_1) / sum_k exp(s_k) over the N-best's log-scores (`Hypothesis.logp`), at the output (first)
    hypothesis. It is eeasr.exits.nbest_posterior (the softmax at the highest log-score) scaled by exp(s_1 - max),
    which is 1 unless length normalization or the LM ranked a hypothesis of lower log-score first."""
    if not nbest:
        return 0.0
    s = [h.logp for h in nbest]
    return nbest_posterior(s) * math.exp(s[0] - max(s))


def _check_names(session: Any, inputs: Sequence[str], outputs: Sequence[str], where: str) -> None:
    got_in, got_out = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    if sorted(got_in) != sorted(inputs) or sorted(got_out) != sorted(outputs):
        raise ServerModelError(f"{where}: inputs {got_in} and outputs {got_out}, expected {list(inputs)} and "
                               f"{list(outputs)}")


class DecoderModel:
    """An exit's attention decoder as its two ONNX graphs (init and step, see the module docstring)."""

    def __init__(self, init_onnx: bytes, step_onnx: bytes, threads: int = 1, where: str = "decoder") -> None:
        self.init = onnx_session(init_onnx, threads, f"{where} (init)")
        self.step = onnx_session(step_onnx, threads, f"{where} (step)")
        _check_names(self.init, INIT_INPUTS, INIT_OUTPUTS, f"{where} (init)")
        _check_names(self.step, STEP_INPUTS, STEP_OUTPUTS, f"{where} (step)")
        # [U, layers, 2, H, T, d/H]: the static dims give the shape of an empty self-attention cache
        shape = self.init.get_outputs()[0].shape
        self.layers, self.heads, self.head_dim = (int(shape[i]) for i in (1, 3, 5))

    def cross(self, memory: np.ndarray) -> np.ndarray:
        """memory float32 [U, T, d] -> cross_kv [U, layers, 2, H, T, d/H]."""
        return self.init.run(None, {"memory": np.ascontiguousarray(memory, np.float32)})[0]

    def run_step(self, tokens: np.ndarray, position: int, self_kv: np.ndarray, cross_kv: np.ndarray,
                 lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One decoder step (module docstring): log-probabilities [N, V + 2] and the grown cache."""
        logp, kv = self.step.run(None, {"tokens": np.asarray(tokens, np.int64), "position": np.array(position, np.int64),
                                        "self_kv": self_kv, "cross_kv": cross_kv,
                                        "lengths": np.asarray(lengths, np.int64)})
        return logp, kv

    def empty_cache(self, n: int) -> np.ndarray:
        return np.zeros((n, self.layers, 2, self.heads, 0, self.head_dim), np.float32)

    def nbest(self, memory: np.ndarray, lengths: np.ndarray, sos: int, eos: int, beam: int = 10,
              length_norm: bool = True, max_len_ratio: float = 1.0) -> list[list[Hypothesis]]:
        """Attention beam search over a batch of encoder outputs [U, T, d] with `lengths` valid frames; at most
        `max_len_ratio` * (valid frames) units per utterance (as train/aed.py's EarlyExitConformerAED.beam_search)."""
        lengths = np.asarray(lengths, np.int64)
        state = _BeamState(self, self.cross(memory), lengths, beam)
        max_units = [math.ceil(max_len_ratio * int(n)) for n in lengths]
        return beam_search(state.step, max_units, sos, eos, beam, length_norm, state.reorder)


class _BeamState:
    """The decoder stepped by `beam_search`: cross-attention keys/values once per utterance, every slot's
    self-attention cache kept in slot order and reordered with the beam (train/aed.py's _BeamDecoder)."""

    def __init__(self, model: DecoderModel, cross: np.ndarray, lengths: np.ndarray, beam: int) -> None:
        self.model, self.cross, self.lengths, self.beam = model, cross, lengths, beam
        self.kv = model.empty_cache(len(lengths) * beam)  # [slots, layers, 2, H, t, d/H]

    def step(self, tokens: np.ndarray, rows: np.ndarray) -> np.ndarray:
        utts = rows[:: self.beam] // self.beam
        every = len(utts) == len(self.lengths)
        logp, new = self.model.run_step(tokens[:, -1], tokens.shape[1] - 1, self.kv[rows],
                                        self.cross if every else self.cross[utts], self.lengths[utts])
        if every:
            self.kv = new
        else:  # slots of finished utterances keep zeros: they are never read again
            self.kv = np.zeros((self.kv.shape[0], *new.shape[1:]), np.float32)
            self.kv[rows] = new
        return logp

    def reorder(self, perm: np.ndarray) -> None:
        self.kv = self.kv[perm]


class LMModel:
    """A Transformer LM as ONNX (module docstring) scoring whole unit sequences."""

    def __init__(self, onnx_bytes: bytes, vocab_size: int, threads: int = 1, where: str = "LM") -> None:
        self.session = onnx_session(onnx_bytes, threads, where)
        _check_names(self.session, LM_INPUTS, LM_OUTPUTS, where)
        self.sos, self.eos = sos_id(vocab_size), eos_id(vocab_size)

    def score(self, seqs: Sequence[Sequence[int]], batch: int = 256) -> list[float]:
        """log P(units + eos) of each unit sequence (no sos/eos in `seqs`), as train/lm.py LanguageModel.score."""
        out: list[float] = []
        for i in range(0, len(seqs), batch):
            inp, tgt = decoder_io(seqs[i:i + batch], self.sos, self.eos)
            lp = self.session.run(None, {"tokens": inp})[0]
            tok = np.take_along_axis(lp, np.maximum(tgt, 0)[..., None], 2)[..., 0]
            out += np.where(tgt != IGNORE, tok, np.float32(0.0)).sum(1).tolist()  # padding gathers blank's -inf
        return out


@dataclass
class AttentionResult:
    """One utterance's answer: the output `tokens`, the ranked N-best (rescored when there is an LM) and the
    Eq. 6 posterior of the output (its confidence)."""
    tokens: list[int]
    nbest: list[Hypothesis]
    posterior: float


class AttentionDecoder:
    """A bundle's server-side finish of the last exit: attention beam search, optional LM rescoring, Eq. 6.
    `name` says which decoder answered: "attention" or "attention+lm"."""

    def __init__(self, decoder: DecoderModel, vocab_size: int, beam: int = 10, length_norm: bool = True,
                 max_len_ratio: float = 1.0, lm: LMModel | None = None, lm_weight: float = 0.5) -> None:
        self.decoder, self.lm, self.lm_weight = decoder, lm, lm_weight
        self.sos, self.eos = sos_id(vocab_size), eos_id(vocab_size)
        self.beam, self.length_norm, self.max_len_ratio = beam, length_norm, max_len_ratio
        self.name = "attention+lm" if lm is not None else "attention"

    @classmethod
    def from_bundle(cls, bundle: Bundle, threads: int = 1) -> AttentionDecoder | None:
        """The decoder the bundle's manifest lists under server.decoder (None when it has none: a CTC model).
        BundleError when its ids are not the tokenizer's rule (eeasr/tokenizer.py)."""
        server = bundle.manifest.get("server") or {}
        entry: dict[str, Any] | None = server.get("decoder")
        if not entry:
            return None
        where = f"{bundle.path}/{entry['step']['file']}"
        v = int(bundle.manifest["tokenizer"]["vocab_size"])
        if (entry["sos"], entry["eos"], entry["vocab"]) != (sos_id(v), eos_id(v), decoder_vocab(v)):
            raise BundleError(f"{where}: decoder ids sos {entry['sos']}, eos {entry['eos']}, vocab {entry['vocab']}; "
                              f"a tokenizer of {v} units has {sos_id(v)}, {eos_id(v)}, {decoder_vocab(v)}")
        decoder = DecoderModel(bundle.file(entry["init"]["file"]).read_bytes(),
                               bundle.file(entry["step"]["file"]).read_bytes(), threads, where)
        lm = None
        if entry.get("lm"):
            lm = LMModel(bundle.file(entry["lm"]["file"]).read_bytes(), v, threads,
                         f"{bundle.path}/{entry['lm']['file']}")
        return cls(decoder, v, int(entry["beam"]), bool(entry["length_norm"]), float(entry["max_len_ratio"]), lm,
                   float(entry["lm"]["weight"]) if lm is not None else 0.0)

    def decode(self, memory: np.ndarray, lengths: np.ndarray) -> list[AttentionResult]:
        """Encoder outputs [U, T, d] with `lengths` valid frames (each >= 1) -> one answer per utterance."""
        nbests = self.decoder.nbest(memory, lengths, self.sos, self.eos, self.beam, self.length_norm,
                                    self.max_len_ratio)
        if self.lm is not None:
            lm_logps = iter(self.lm.score([h.tokens for nb in nbests for h in nb]))
            nbests = [rescore(nb, [next(lm_logps) for _ in nb], self.lm_weight, self.length_norm) for nb in nbests]
        return [AttentionResult(nb[0].tokens if nb else [], nb, sentence_posterior(nb)) for nb in nbests]


__all__ = ["Hypothesis", "ranked", "beam_search", "rescore", "sentence_posterior", "decoder_io", "IGNORE",
           "DecoderModel", "LMModel", "AttentionDecoder", "AttentionResult", "INIT_INPUTS", "INIT_OUTPUTS",
           "STEP_INPUTS", "STEP_OUTPUTS", "LM_INPUTS", "LM_OUTPUTS"]
