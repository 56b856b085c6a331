"""Exporting a Conformer-AED's server side (paper 1, Sec. 3): device exits answer with their CTC heads, a handoff
is finished on the server by the LAST exit's attention decoder and, optionally, a Transformer LM.

The device segments of a "conformer-aed" checkpoint are the Conformer-CTC's (EarlyExitConformerAED is an
EarlyExitConformer: the same encoder and CTC heads; its decoders never run on the device), and so are the
remaining encoder layers (convert/server.py), which here also output `memory`, the last exit's encoder output.
This module adds, as ONNX checked against torch under onnxruntime:
- `server/decoder_init.onnx`, `server/decoder_step.onnx`: the last exit's decoder as an init graph (memory ->
  per-layer cross-attention keys/values) and a cached step graph (eeasr/aed_decode.py documents both; a step
  costs one position through the decoder, not the whole prefix again);
- `server/lm.onnx` with `--lm LMRUN`: the LM, every position's next-unit log-probabilities in one call (N-best
  rescoring).
The manifest records them under server.decoder with the sos/eos ids, the beam, the length normalization, the
length limit, the LM weight and the checks.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from eeasr.aed_decode import (INIT_INPUTS, INIT_OUTPUTS, LM_INPUTS, LM_OUTPUTS, STEP_INPUTS, STEP_OUTPUTS,
                              AttentionDecoder, DecoderModel, LMModel, decoder_io)
from eeasr.bundle import sha256_bytes
from eeasr.convert.server import OPSET, ServerCheckError
from eeasr.tokenizer import decoder_vocab, eos_id, sos_id

MAX_LEN_RATIO = 1.0  # at most one unit per valid encoder frame (CTC's own bound; train/aed.py's default)


def is_aed(model: Any) -> bool:
    """Whether a checkpoint's model has attention decoders (encoder "conformer-aed")."""
    from eeasr.train.aed import EarlyExitConformerAED

    return isinstance(model, EarlyExitConformerAED)


class DecoderInit(nn.Module):
    """memory [U, T, d] -> cross_kv [U, layers, 2, H, T, d/H] (TransformerDecoder.cross_keys_values, stacked)."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, memory: Tensor) -> Tensor:
        return torch.stack([torch.stack(kv, 1) for kv in self.decoder.cross_keys_values(memory)], 1)


class DecoderStep(nn.Module):
    """TransformerDecoder.step with its caches as stacked tensors and the position as a tensor (the sinusoid
    computed in the graph, as train.model.sinusoid_positions: sin on even, cos on odd channels)."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        d = decoder.d
        self.register_buffer("div", torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d)))

    def forward(self, tokens: Tensor, position: Tensor, self_kv: Tensor, cross_kv: Tensor,
                lengths: Tensor) -> tuple[Tensor, Tensor]:
        n, u, frames = tokens.shape[0], cross_kv.shape[0], cross_kv.shape[4]
        mask = (torch.arange(frames)[None, :] < lengths[:, None])[:, None, None, :]
        angle = position.float() * self.div
        pe = torch.stack([torch.sin(angle), torch.cos(angle)], -1).reshape(1, 1, -1)
        x = self.decoder.embed(tokens[:, None]) + pe
        new = []
        for i, layer in enumerate(self.decoder.layers):
            x, (k, v) = layer.step(x, (self_kv[:, i, 0], self_kv[:, i, 1]), (cross_kv[:, i, 0], cross_kv[:, i, 1]),
                                   mask, n // u)
            new.append(torch.stack([k, v], 1))
        return self.decoder.log_probs(x)[:, 0], torch.stack(new, 1)


def _export(module: nn.Module, args: tuple, inputs: tuple[str, ...], outputs: tuple[str, ...],
            dynamic: dict[str, dict[int, str]]) -> bytes:
    f = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, f, dynamo=False, input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True)
    return f.getvalue()


def export_decoder(decoder: nn.Module) -> tuple[bytes, bytes]:
    """ONNX bytes of a TransformerDecoder's init and step graphs (eeasr/aed_decode.py), dynamic in utterances,
    rows, frames and steps."""
    layers, heads, d = len(decoder.layers), decoder.layers[0].cross_attn.heads, decoder.d
    init = _export(DecoderInit(decoder), (torch.zeros(2, 7, d),), INIT_INPUTS, INIT_OUTPUTS,
                   {"memory": {0: "utts", 1: "frames"}, "cross_kv": {0: "utts", 4: "frames"}})
    args = (torch.zeros(4, dtype=torch.long), torch.tensor(3), torch.zeros(4, layers, 2, heads, 3, d // heads),
            torch.zeros(2, layers, 2, heads, 7, d // heads), torch.tensor([7, 5]))
    step = _export(DecoderStep(decoder), args, STEP_INPUTS, STEP_OUTPUTS,
                   {"tokens": {0: "rows"}, "self_kv": {0: "rows", 4: "steps"}, "cross_kv": {0: "utts", 4: "frames"},
                    "lengths": {0: "utts"}, "logp": {0: "rows"}, "self_kv_out": {0: "rows", 4: "steps_out"}})
    return init, step


def export_lm(lm: nn.Module) -> bytes:
    """ONNX bytes of a train/lm.py LanguageModel: tokens [N, L] -> logp [N, L, V + 2]."""
    return _export(lm, (torch.full((2, 5), lm.sos),), LM_INPUTS, LM_OUTPUTS,
                   {"tokens": {0: "n", 1: "length"}, "logp": {0: "n", 1: "length"}})


def _max_diff(a: np.ndarray, b: np.ndarray, where: str) -> float:
    """Max abs difference of two log-probability arrays whose -inf entries (blank, sos) must coincide."""
    fin = np.isfinite(b)
    if not np.array_equal(np.isfinite(a), fin):
        raise ServerCheckError(f"{where}: ONNX and torch differ in which units are impossible (-inf)")
    return float(np.abs(a[fin] - b[fin]).max()) if fin.any() else 0.0


def check_decoder(model: Any, j: int, dec: DecoderModel, hidden: Tensor, lengths: Tensor,
                  seqs: list[list[int]], tol: float = 2e-3) -> float:
    """Teacher-force `seqs` (one per row of `hidden` [B, T, d], valid `lengths`) through exit j's (0-based) torch
    decoder and the ONNX init + step graphs; the max abs log-probability difference over every real position.
    Raises ServerCheckError beyond `tol`."""
    v = model.cfg.vocab_size
    inp, _ = decoder_io(seqs, sos_id(v), eos_id(v))
    with torch.no_grad():
        ref = model.decoder_log_probs(j, torch.from_numpy(inp), hidden, lengths).numpy()
    cross, kv = dec.cross(hidden.numpy()), dec.empty_cache(len(seqs))
    worst = 0.0
    for pos in range(inp.shape[1]):
        lp, kv = dec.run_step(inp[:, pos], pos, kv, cross, lengths.numpy())
        rows = [i for i, s in enumerate(seqs) if pos <= len(s)]
        worst = max(worst, _max_diff(lp[rows], ref[rows, pos], "decoder step"))
    if not worst <= tol:
        raise ServerCheckError(f"decoder ONNX differs from torch by {worst:.2e} (max abs log-probability over "
                               f"teacher-forced calibration texts; tolerance {tol:.0e})")
    return worst


def check_lm(lm: nn.Module, onnx_lm: LMModel, seqs: list[list[int]], tol: float = 2e-3) -> float:
    """The ONNX LM's log-probabilities vs torch's at every real position of `seqs`; raises beyond `tol`."""
    inp, tgt = decoder_io(seqs, lm.sos, lm.eos)
    with torch.no_grad():
        ref = lm(torch.from_numpy(inp)).numpy()
    got = onnx_lm.session.run(None, {"tokens": inp})[0]
    keep = tgt != -100
    worst = _max_diff(got[keep], ref[keep], "LM")
    if not worst <= tol:
        raise ServerCheckError(f"LM ONNX differs from torch by {worst:.2e} (max abs log-probability; tolerance "
                               f"{tol:.0e})")
    return worst


def _file(rel: str, data: bytes) -> dict[str, Any]:
    return {"file": rel, "sha256": sha256_bytes(data), "bytes": len(data)}


def build_decoder(ck: Any, feats: np.ndarray, n_frames: np.ndarray, texts: list[str], beam: int = 10,
                  lm_run: Path | None = None, lm_weight: float = 0.5, log: Any = print
                  ) -> tuple[dict[str, bytes], dict[str, Any], AttentionDecoder]:
    """Export and check the last exit's decoder (and the LM of `lm_run`) of AED checkpoint `ck`; `feats`
    [N, W, 80], `n_frames` [N] and `texts`: calibration windows and their transcripts for the checks. Returns the
    bundle files, the manifest's server.decoder entry, and the decoder as the server will run it."""
    model, cfg = ck.model, ck.cfg.model
    j, v = len(cfg.exits) - 1, cfg.vocab_size
    t0 = time.perf_counter()
    with torch.no_grad():
        hidden, lengths = model.encode(torch.from_numpy(np.ascontiguousarray(feats, np.float32)),
                                       torch.from_numpy(np.asarray(n_frames, np.int64)))
    hidden = hidden[-1]
    # Teacher-forcing texts: the calibration windows' transcripts (longer than a window's share at worst).
    seqs = [ck.tokenizer.encode(t)[: int(n)] for t, n in zip(texts, lengths)]
    init, step = export_decoder(model.decoders[j])
    decoder = DecoderModel(init, step, where="exported decoder")
    dec_diff = check_decoder(model, j, decoder, hidden, lengths, seqs)
    files = {"server/decoder_init.onnx": init, "server/decoder_step.onnx": step}
    lm_entry, onnx_lm = None, None
    if lm_run is not None:
        from eeasr.train.lm import load_lm

        lm = load_lm(lm_run)
        if lm.tokenizer.sha256 != ck.tokenizer.sha256:
            raise ValueError(f"{lm.path}: the LM was trained with another tokenizer than {ck.path}")
        lm_bytes = export_lm(lm.model)
        onnx_lm = LMModel(lm_bytes, v, where="exported LM")
        lm_diff = check_lm(lm.model, onnx_lm, seqs)
        files["server/lm.onnx"] = lm_bytes
        lm_entry = {**_file("server/lm.onnx", lm_bytes), "weight": lm_weight, "run": str(lm.path),
                    "d_model": lm.cfg.d_model, "layers": lm.cfg.n_layers, "dev_ppl": lm.meta.get("dev_ppl"),
                    "check": {"vs_torch_max_abs_logp": lm_diff, "runtime": "onnxruntime"}}
    attention = AttentionDecoder(decoder, v, beam, True, MAX_LEN_RATIO, onnx_lm, lm_weight)
    # The whole search on a few windows, ONNX + numpy vs torch: the same best hypothesis?
    few = slice(0, min(4, len(lengths)))
    ref = model.beam_search(j, hidden[few], lengths[few], beam, True, MAX_LEN_RATIO)
    got = AttentionDecoder(decoder, v, beam, True, MAX_LEN_RATIO).decode(hidden[few].numpy(), lengths[few].numpy())
    agree = float(np.mean([r[0].tokens == g.tokens for r, g in zip(ref, got)]))
    a = model.decoders[j]
    entry = {"exit": j + 1, "layer": cfg.exits[j], "input": "memory",
             "init": _file("server/decoder_init.onnx", init), "step": _file("server/decoder_step.onnx", step),
             "sos": sos_id(v), "eos": eos_id(v), "vocab": decoder_vocab(v), "layers": len(a.layers),
             "heads": a.layers[0].cross_attn.heads, "d_model": a.d, "beam": beam, "length_norm": True,
             "max_len_ratio": MAX_LEN_RATIO, "lm": lm_entry,
             "check": {"vs_torch_max_abs_logp": dec_diff, "runtime": "onnxruntime",
                       "beam_best_agree_vs_torch": agree, "beam_windows": len(ref)},
             "export_s": round(time.perf_counter() - t0, 2)}
    log(f"server decoder: exit {j + 1} (layer {cfg.exits[j]}) attention decoder as ONNX ({len(init):,} + "
        f"{len(step):,} B), vs torch max |d log p| {dec_diff:.1e}, beam best agrees on {agree:.0%} of {len(ref)}"
        + (f"; LM ({len(files['server/lm.onnx']):,} B, weight {lm_weight}) vs torch {lm_diff:.1e}" if lm_entry
           else "; no LM"))
    return files, entry, attention


__all__ = ["is_aed", "export_decoder", "export_lm", "check_decoder", "check_lm", "build_decoder", "DecoderInit",
           "DecoderStep", "MAX_LEN_RATIO"]
