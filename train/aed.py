"""Early-exit Conformer-AED (paper 1, Sec. 3): a CTC head and an attention decoder at every exit.

Training (Eq. 2 and 4): the loss of exit m is `ctc_weight * CTC + (1 - ctc_weight) * CE` (0.3 / 0.7, the SpeechBrain
recipe the paper follows), CE with label smoothing and averaged over target units (eos included), CTC as the
Conformer-CTC's (per-utterance loss / target length, averaged); the trainer sums the exits (times their exit
weights). The encoder and the CTC heads are EarlyExitConformer's, unchanged, and `forward` still returns the CTC
log-probabilities of the exits, so greedy evaluation, the trainer's dev WER and the device export see a
Conformer-CTC.

Inference (`EarlyExitConformerAED.beam_search`, `beam_search`): attention beam search per exit (no CTC prefix
score), the N-best rescored with a Transformer LM (`rescore`, train/lm.py: N-best rescoring as in the paper, not
shallow fusion), and the N-best sentence posterior of Eq. 6 (`sentence_posterior`) as the exit-selection measure.
The search, the rescoring and the posterior are eeasr/aed_decode.py's (numpy), which the server runs on the
exported decoder (convert/aed_server.py): one definition, so both rank hypotheses alike.
`evaluate_aed` scores every exit (CTC greedy, attention beam, attention beam + LM) through the device front end
and windows, as train/evaluate.py does for CTC models.

Token ids. The CTC heads keep the tokenizer's convention (eeasr/tokenizer.py: 0 = blank, 1..V-1 = BPE units,
V = Tokenizer.vocab_size). The decoders and the LM use the same unit ids plus two of their own, defined in
eeasr/tokenizer.py: sos = V (decoder input only) and eos = V + 1 (decoder output only); `decoder_vocab(V)` = V + 2
embedding rows and output units.
The blank and sos are never predicted: their logits are fixed at -inf, so every decoder step is a distribution
over the V - 1 units and eos, in training (label smoothing spreads over those V classes) and decoding alike.

Each exit owns its decoder (embedding, layers, output layer), so an exit is self-contained: a deployment that
stops at exit k needs nothing from the exits above it. Decoders use SiLU (FeedForward) and pre-LayerNorm. Their
cross-attention masks padded encoder frames out exactly (a boolean mask, not the encoder's bounded -30 bias): an
autoregressive decoder runs in float on the server, outside the device's int8 contract.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eeasr.aed_decode import IGNORE, Hypothesis, rescore, sentence_posterior
from eeasr.aed_decode import beam_search as np_beam_search
from eeasr.aed_decode import decoder_io as np_decoder_io
from eeasr.exits import frame_entropy, greedy_ctc, nonblank_entropy
from eeasr.metrics import wer
from eeasr.tokenizer import decoder_vocab, eos_id, sos_id
from eeasr.train.config import ModelConfig
from eeasr.train.model import (ENCODERS, EarlyExitConformer, FeedForward, MultiHeadAttention, ctc_exit_loss,
                               sinusoid_positions, valid_mask)

if TYPE_CHECKING:
    from eeasr.manifest import Utterance
    from eeasr.train.checkpoint import Checkpoint
    from eeasr.train.dataset import Batch
    from eeasr.train.evaluate import UttResult
    from eeasr.train.lm import LMRun


def output_classes(vocab_size: int) -> Tensor:
    """[decoder_vocab] bool: the units a decoder step can predict (BPE units and eos; not blank, not sos)."""
    keep = torch.ones(decoder_vocab(vocab_size), dtype=torch.bool)
    keep[0] = keep[sos_id(vocab_size)] = False
    return keep


def decoder_io(seqs: Sequence[Sequence[int]], sos: int, eos: int) -> tuple[Tensor, Tensor]:
    """eeasr.aed_decode.decoder_io as torch tensors (sequences may be tensors)."""
    inp, out = np_decoder_io([torch.as_tensor(s).tolist() for s in seqs], sos, eos)
    return torch.from_numpy(inp), torch.from_numpy(out)


def smoothed_ce(logp: Tensor, targets: Tensor, smoothing: float, classes: Tensor) -> Tensor:
    """Label-smoothed cross-entropy averaged over non-IGNORE targets: (1 - e) * NLL + e * mean over the
    predictable `classes` of -log p (torch's label smoothing, restricted to the classes a step can output)."""
    keep = targets != IGNORE
    lp = logp[keep]
    nll = -lp.gather(1, targets[keep][:, None])[:, 0]
    if smoothing == 0.0:
        return nll.mean()
    return ((1.0 - smoothing) * nll - smoothing * lp[:, classes].mean(1)).mean()


class Attention(MultiHeadAttention):
    """train/model.py's attention as the decoder uses it: causal self-attention when no memory is given, else
    cross-attention on `memory` ([N, T, d], already normalized by the encoder block), attending where
    `memory_mask` ([N, 1, 1, T] bool) is True (None: every frame)."""

    def forward(self, x: Tensor, memory: Tensor | None = None, memory_mask: Tensor | None = None) -> Tensor:
        h = self.norm(x)
        k, v = self.keys_values(h if memory is None else memory)
        return self.attend(h, k, v, memory_mask, causal=memory is None)


KV = tuple[Tensor, Tensor]


class DecoderLayer(nn.Module):
    """Pre-LN Transformer decoder layer: causal self-attention, cross-attention (unless `cross` is False, as in
    the LM), SiLU feed-forward."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float, cross: bool = True) -> None:
        super().__init__()
        self.self_attn = Attention(d, heads, dropout)
        self.cross_attn = Attention(d, heads, dropout) if cross else None
        self.ff = FeedForward(d, ff, dropout)

    def forward(self, x: Tensor, memory: Tensor | None = None, memory_mask: Tensor | None = None) -> Tensor:
        x = x + self.self_attn(x)
        if self.cross_attn is not None:
            x = x + self.cross_attn(x, memory, memory_mask)
        return x + self.ff(x)

    def step(self, x: Tensor, cache: KV | None, cross: KV | None, memory_mask: Tensor | None,
             group: int) -> tuple[Tensor, KV]:
        """One new position x [N, 1, d] given the self-attention keys/values of the positions before it (`cache`,
        [N, H, t, d/H]); returns its output and the cache grown by it. `cross` holds the memory's keys/values per
        utterance [U, H, T, d/H], each shared by `group` = N / U consecutive rows (a beam)."""
        a = self.self_attn
        h = a.norm(x)
        k, v = a.keys_values(h)
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        x = x + a.attend(h, k, v)  # the newest position sees every earlier one: causal by construction
        if self.cross_attn is not None and cross is not None:
            c, (n, _, d) = self.cross_attn, x.shape
            # The rows of one utterance attend to the same memory: they act as its query positions.
            x = x + c.attend(c.norm(x).view(n // group, group, d), *cross, memory_mask).view(n, 1, d)
        return x + self.ff(x), (k, v)


class TransformerDecoder(nn.Module):
    """Token ids [N, L] (sos first) -> log-probabilities [N, L, decoder_vocab] of the next unit at each position
    (blank and sos at -inf). With `cross=True` it attends to an encoder output (an AED exit's decoder); without,
    it is a Transformer LM (train/lm.py). Absolute sinusoid positions, as the encoder. `step` is the same
    computation one position at a time with cached keys/values (beam search)."""

    def __init__(self, vocab_size: int, d: int, heads: int, ff: int, layers: int, dropout: float,
                 cross: bool = True) -> None:
        super().__init__()
        self.d = d
        self.embed = nn.Embedding(decoder_vocab(vocab_size), d)
        self.layers = nn.ModuleList(DecoderLayer(d, heads, ff, dropout, cross) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, decoder_vocab(vocab_size))
        self.drop = nn.Dropout(dropout)
        self.register_buffer("never", ~output_classes(vocab_size), persistent=False)

    def log_probs(self, x: Tensor) -> Tensor:
        """The last layer's output [..., d] -> log-probabilities [..., decoder_vocab] (blank and sos at -inf)."""
        logits = self.out(self.norm(x)).float().masked_fill(self.never, -math.inf)
        return F.log_softmax(logits, dim=-1)

    def forward(self, tokens: Tensor, memory: Tensor | None = None, memory_mask: Tensor | None = None) -> Tensor:
        x = self.embed(tokens)
        x = self.drop(x + sinusoid_positions(tokens.shape[1], self.d).to(x))
        for layer in self.layers:
            x = layer(x, memory, memory_mask)
        return self.log_probs(x)

    def cross_keys_values(self, memory: Tensor) -> list[KV]:
        """Per layer, the keys/values of `memory` [U, T, d]: computed once per utterance for `step`."""
        return [layer.cross_attn.keys_values(memory) for layer in self.layers if layer.cross_attn is not None]

    def step(self, last: Tensor, pos: int, caches: list[KV] | None, cross: list[KV] | None = None,
             memory_mask: Tensor | None = None, group: int = 1) -> tuple[Tensor, list[KV]]:
        """Log-probabilities [N, V] after the tokens `last` [N] at position `pos` (0 = sos), given the per-layer
        self-attention caches of positions 0..pos-1 (None at pos 0); returns them and the grown caches. `cross`,
        `memory_mask` [U, 1, 1, T] and `group`: as DecoderLayer.step."""
        x = self.embed(last[:, None]) + sinusoid_positions(pos + 1, self.d)[pos].to(self.never.device)
        new = []
        for i, layer in enumerate(self.layers):
            x, kv = layer.step(x, None if caches is None else caches[i], None if cross is None else cross[i],
                               memory_mask, group)
            new.append(kv)
        return self.log_probs(x)[:, 0], new


@torch.no_grad()
def beam_search(step: Callable[[Tensor, Tensor], Tensor], max_units: Sequence[int], sos: int, eos: int,
                beam: int = 10, length_norm: bool = True,
                reorder: Callable[[Tensor], None] | None = None) -> list[list[Hypothesis]]:
    """eeasr.aed_decode.beam_search (its rules and N-best) with torch callbacks: `step(tokens, rows)` takes the
    prefixes [N, L] and slots [N] as tensors and returns the next unit's log-probabilities [N, V] (any device);
    `reorder(perm)` gets the slot permutation as a tensor."""
    def np_step(tokens: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return step(torch.from_numpy(tokens), torch.from_numpy(rows)).float().cpu().numpy()

    np_reorder = None if reorder is None else lambda perm: reorder(torch.from_numpy(perm))
    return np_beam_search(np_step, max_units, sos, eos, beam, length_norm, np_reorder)


class _BeamDecoder:
    """One exit decoder stepped by `beam_search`: the memory's cross-attention keys/values computed once per
    utterance, the self-attention keys/values of every beam slot's prefix cached and reordered with the beam."""

    def __init__(self, decoder: TransformerDecoder, hidden: Tensor, lengths: Tensor, beam: int) -> None:
        self.decoder, self.beam = decoder, beam
        self.cross = decoder.cross_keys_values(hidden)
        self.mask = valid_mask(lengths, hidden.shape[1])[:, None, None, :]
        self.caches: list[KV] | None = None  # per layer [B * beam, H, t, d/H]
        self.slots = hidden.shape[0] * beam

    def step(self, tokens: Tensor, rows: Tensor) -> Tensor:
        dev = self.mask.device
        rows = rows.to(dev)
        utts = rows[:: self.beam] // self.beam
        caches = None if self.caches is None else [(k[rows], v[rows]) for k, v in self.caches]
        logp, new = self.decoder.step(tokens[:, -1].to(dev), tokens.shape[1] - 1, caches,
                                      [(k[utts], v[utts]) for k, v in self.cross], self.mask[utts], self.beam)
        self.caches = []
        for k, v in new:  # slots of finished utterances keep zeros: they are never read again
            full_k, full_v = k.new_zeros(self.slots, *k.shape[1:]), v.new_zeros(self.slots, *v.shape[1:])
            full_k[rows], full_v[rows] = k, v
            self.caches.append((full_k, full_v))
        return logp

    def reorder(self, perm: Tensor) -> None:
        perm = perm.to(self.mask.device)
        self.caches = [(k[perm], v[perm]) for k, v in self.caches]


class EarlyExitConformerAED(EarlyExitConformer):
    """EarlyExitConformer (encoder and CTC heads) plus a TransformerDecoder per exit (cfg.aed)."""

    init_bases = ("conformer",)   # can fine-tune a trained early-exit Conformer-CTC; the decoders start fresh
    fresh_prefixes = ("decoders.",)

    def __init__(self, cfg: ModelConfig, n_mels: int = 80) -> None:
        super().__init__(cfg, n_mels)
        a = cfg.aed
        if not 0.0 <= a.ctc_weight <= 1.0 or not 0.0 <= a.label_smoothing < 1.0:
            raise ValueError(f"aed.ctc_weight must be in [0, 1] and aed.label_smoothing in [0, 1), got "
                             f"{a.ctc_weight}, {a.label_smoothing}")
        self.sos, self.eos = sos_id(cfg.vocab_size), eos_id(cfg.vocab_size)
        self.decoders = nn.ModuleList(
            TransformerDecoder(cfg.vocab_size, cfg.d_model, a.decoder_heads, a.decoder_ff, a.decoder_layers,
                               cfg.dropout) for _ in cfg.exits)
        self.register_buffer("classes", output_classes(cfg.vocab_size), persistent=False)

    def encode(self, feats: Tensor, n_frames: Tensor, upto: int | None = None) -> tuple[list[Tensor], Tensor]:
        """Encoder outputs [B, T', d] at each exit (the first `upto`) and the valid encoder frames [B]."""
        x, lengths = self.front(feats, n_frames)
        mask = valid_mask(lengths, x.shape[1])
        bias = self.key_bias(lengths, x.shape[1]).to(x)
        n_exits = len(self.exits) if upto is None else upto
        exit_after = {layer - 1 for layer in self.cfg.exits[:n_exits]}
        hidden = []
        for i, block in enumerate(self.blocks[: self.cfg.exits[n_exits - 1]]):
            x = block(x, mask, bias)
            if i in exit_after:
                hidden.append(x)
        return hidden, lengths

    def forward(self, feats: Tensor, n_frames: Tensor, upto: int | None = None,
                with_hidden: bool = False) -> tuple[list[Tensor], Tensor] | tuple[list[Tensor], Tensor, list[Tensor]]:
        """CTC log-probabilities [B, T', V] per exit and valid T' (as EarlyExitConformer); with `with_hidden`,
        also the encoder outputs the decoders attend to (one call, so a compiled forward covers the encoder)."""
        hidden, lengths = self.encode(feats, n_frames, upto)
        logps = [F.log_softmax(head(h), dim=-1) for head, h in zip(self.exits, hidden)]
        return (logps, lengths, hidden) if with_hidden else (logps, lengths)

    def decoder_log_probs(self, j: int, tokens: Tensor, hidden: Tensor, lengths: Tensor) -> Tensor:
        """Exit j's (0-based) decoder on prefixes `tokens` [B, L] over encoder output `hidden` [B, T', d] with
        `lengths` valid frames: log-probabilities [B, L, decoder_vocab] of the next unit."""
        return self.decoders[j](tokens, hidden, valid_mask(lengths, hidden.shape[1])[:, None, None, :])

    def loss_terms(self, fwd: Callable[..., tuple], feats: Tensor, n_frames: Tensor, batch: Batch,
                   weights: list[float]) -> dict[str, Tensor]:
        """Per exit m ("exit1".."exitK"): weights[m] * (ctc_weight * CTC + (1 - ctc_weight) * CE) (Eq. 2, 4)."""
        logps, lengths, hidden = fwd(feats, n_frames, with_hidden=True)
        inp, out = decoder_io(batch.targets.split(batch.target_lengths.tolist()), self.sos, self.eos)
        inp, out = inp.to(feats.device), out.to(feats.device)
        a, cpu_lengths = self.cfg.aed, lengths.cpu()
        terms = {}
        for j, (w, lp, h) in enumerate(zip(weights, logps, hidden)):
            ctc = ctc_exit_loss(lp, cpu_lengths, batch.targets, batch.target_lengths)
            ce = smoothed_ce(self.decoder_log_probs(j, inp, h, lengths), out, a.label_smoothing, self.classes)
            terms[f"exit{j + 1}"] = w * (a.ctc_weight * ctc + (1.0 - a.ctc_weight) * ce)
        return terms

    @torch.no_grad()
    def beam_search(self, j: int, hidden: Tensor, lengths: Tensor, beam: int = 10, length_norm: bool = True,
                    max_len_ratio: float = 1.0) -> list[list[Hypothesis]]:
        """Attention beam search with exit j's (0-based) decoder for a batch of encoder outputs [B, T', d];
        at most `max_len_ratio` * (valid encoder frames) units per utterance (CTC's own bound at ratio 1)."""
        state = _BeamDecoder(self.decoders[j], hidden, lengths, beam)
        max_units = [math.ceil(max_len_ratio * int(n)) for n in lengths]
        return beam_search(state.step, max_units, self.sos, self.eos, beam, length_norm, state.reorder)


ENCODERS["conformer-aed"] = EarlyExitConformerAED


@dataclass
class AEDWindowResult:
    """One device window, per exit: `greedy` (CTC greedy), `beam` (attention beam search), `beam_lm` (the same
    N-best rescored by the LM; empty without one) and `measures`: "entropy" and "nonblank_entropy" of the CTC
    head, "posterior" (Eq. 6 over the attention N-best) and "posterior_lm" (after rescoring). The field names are
    evaluate.WindowResult's, so evaluate.texts_at_exit/select/sweep/calibrate take these results unchanged."""
    greedy: list[str] = field(default_factory=list)
    beam: list[str] = field(default_factory=list)
    beam_lm: list[str] = field(default_factory=list)
    measures: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


@torch.no_grad()
def evaluate_aed(ck: Checkpoint, utts: list[Utterance], beam: int = 10, lm: LMRun | None = None,
                 lm_weight: float = 0.5, length_norm: bool = True, batch_frames: int = 24000,
                 progress: bool = True) -> tuple[list[UttResult], list[str]]:
    """Decode every utterance at every exit of an AED run (CTC greedy, attention beam, and with `lm` the N-best
    rescored), through the device front end and windows; returns results and one-line messages for skipped files."""
    from tqdm import tqdm

    from eeasr.train.evaluate import UttResult, load_windows

    model = ck.model
    if not isinstance(model, EarlyExitConformerAED):
        raise ValueError(f"{ck.path}: encoder {ck.cfg.model.encoder!r} has no attention decoders (conformer-aed)")
    if lm is not None and lm.tokenizer.sha256 != ck.tokenizer.sha256:
        raise ValueError(f"{lm.path}: the LM was trained with another tokenizer than {ck.path}")
    items, skipped = load_windows(ck, utts)
    results = [UttResult(u, [AEDWindowResult() for _ in ws]) for u, ws in items]
    flat = sorted(((len(w), i, k, w) for i, (_, ws) in enumerate(items) for k, w in enumerate(ws)),
                  key=lambda x: x[0])
    dev = next(model.parameters()).device
    bar = tqdm(total=len(flat), desc="decoding windows", disable=not progress)
    start = 0
    while start < len(flat):
        end = start + 1  # windows sorted by length: the last of a batch is its longest
        while end < len(flat) and (end - start + 1) * flat[end][0] <= batch_frames:
            end += 1
        chunk = flat[start:end]
        t = max(c[0] for c in chunk)
        x = torch.zeros(len(chunk), t, chunk[0][3].shape[1])
        for r, c in enumerate(chunk):
            x[r, : c[0]] = torch.from_numpy(c[3])
        logps, lengths, hidden = model(x.to(dev), torch.tensor([c[0] for c in chunk], device=dev), with_hidden=True)
        wins = [results[c[1]].windows[c[2]] for c in chunk]
        for j, (lp, h) in enumerate(zip(logps, hidden)):
            for r, wr in enumerate(wins):
                v = lp[r, : lengths[r]].float().cpu().numpy()
                wr.greedy.append(ck.tokenizer.decode(greedy_ctc(v)))
                wr.measures["entropy"].append(frame_entropy(v))
                wr.measures["nonblank_entropy"].append(nonblank_entropy(v))
            nbests = model.beam_search(j, h, lengths, beam, length_norm)
            for wr, nb in zip(wins, nbests):
                wr.beam.append(ck.tokenizer.decode(nb[0].tokens))
                wr.measures["posterior"].append(sentence_posterior(nb))
            if lm is not None:
                lm_logps = iter(lm.model.score([hyp.tokens for nb in nbests for hyp in nb]))
                for wr, nb in zip(wins, nbests):
                    rescored = rescore(nb, [next(lm_logps) for _ in nb], lm_weight, length_norm)
                    wr.beam_lm.append(ck.tokenizer.decode(rescored[0].tokens))
                    wr.measures["posterior_lm"].append(sentence_posterior(rescored))
        bar.update(end - start)
        start = end
    bar.close()
    return results, skipped


def aed_texts(results: list[UttResult], j: int, kind: str = "beam") -> list[str]:
    """Per utterance, exit j's (0-based) windows joined: kind "greedy" (CTC), "beam" (attention) or "beam_lm"."""
    return [" ".join(getattr(w, kind)[j] for w in r.windows).strip() for r in results]


def aed_wer_table(results: list[UttResult], exit_layers: list[int], ctc: list[UttResult] | None = None,
                  ctc_layers: list[int] | None = None) -> str:
    """Markdown: WER per exit of an AED run (CTC greedy, attention beam, attention beam + LM when decoded), and
    with `ctc` (evaluate.run results of a CTC run with exits after `ctc_layers`, same utterances) that model's
    greedy and beam WER at the same layer."""
    refs = [r.utt.text for r in results]
    with_lm = bool(results) and all(w.beam_lm for r in results for w in r.windows)
    ctc_beam = ctc is not None and all(w.beam for r in ctc for w in r.windows)
    cols = ["AED: CTC greedy WER %", "AED: attention beam WER %"] + (["AED: attention + LM WER %"] if with_lm else [])
    if ctc is not None:
        cols += ["CTC model: greedy WER %"] + (["CTC model: beam WER %"] if ctc_beam else [])
    text = "| exit (layer) | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    for j, layer in enumerate(exit_layers):
        cells = [wer(refs, aed_texts(results, j, k)) for k in ("greedy", "beam", "beam_lm")[: 3 if with_lm else 2]]
        row = [f"{c:.1f}" for c in cells]
        if ctc is not None:
            kinds = ("greedy", "beam")[: 2 if ctc_beam else 1]
            if ctc_layers is not None and layer in ctc_layers:
                jj = ctc_layers.index(layer)
                row += [f"{wer([r.utt.text for r in ctc], aed_texts(ctc, jj, k)):.1f}" for k in kinds]
            else:
                row += ["-"] * len(kinds)
        text += f"| {j + 1} ({layer}) | " + " | ".join(row) + " |\n"
    return text


__all__ = ["EarlyExitConformerAED", "TransformerDecoder", "DecoderLayer", "Attention", "Hypothesis", "beam_search",
           "rescore", "sentence_posterior", "decoder_vocab", "sos_id", "eos_id", "output_classes", "decoder_io",
           "smoothed_ce", "AEDWindowResult", "evaluate_aed", "aed_texts", "aed_wer_table"]
