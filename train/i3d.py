"""Transformer-CTC encoders for the I3D study (paper 2): the static Transformer and I3D's input-dependent depth.

Both stack pre-LN Transformer layers (Eq. 1-2) on the device-contract `Front` (4x Conv1d, sinusoid positions),
with padded attention keys biased by cfg.mask_bias as in the Conformer of train/model.py: a window padded to W
or to the batch's longest item gives the same valid outputs. Every module an I3D gate controls is its own
nn.Module with its own LayerNorm (`SelfAttention`, `FeedForward` of train/model.py), so the converter can cut
one program per module, and the gate predictors are separate modules that pool over valid frames only.

- `TransformerCTC` ("transformer"): a CTC head after the last layer and after each layer in cfg.i3d.inter_ctc
  (InterCTC, Lee & Watanabe 2021). All exits share ONE head (LayerNorm + Linear), as InterCTC does: that is
  what lets iterative layer pruning (train/prune.py) drop layers without retraining. Loss: (1 - w) * CTC(last)
  + w * mean of the intermediate CTC losses, w = cfg.i3d.inter_ctc_weight (the InterCTC formulation).
  cfg.i3d.layerdrop = p > 0 drops whole layers in training (LayerDrop, Fan et al. 2020): each layer is the
  identity for an utterance with probability p, drawn per utterance. The layer is still computed and its output
  discarded (torch.where), which keeps the training graph free of data-dependent Python (torch.compile); no
  rescaling, so a pruned model sees the same kind of input its layers saw in training.
- `I3DTransformer` ("i3d"): the same layers, each attention and feed-forward module behind a gate (Eq. 3-4)
  from a local (one MLP per layer, on the layer input) or a global (one MLP on the encoder input) gate
  predictor (Sec. 2.3). Training: soft Gumbel-softmax gates (Eq. 8) and loss CTC + lambda * utility (Eq. 5-6).
  Inference: binary gates p(open) > beta (Eq. 10-11), and a closed module is not computed: in a batch it runs on
  the rows whose gate is open only (gathered, then added back), so every utterance gets exactly its own
  architecture and a batch costs the sum of its utterances' modules. `gated()` returns the gates it used.

The recipe's cfg.exits must list the exit layers (cfg.i3d.inter_ctc and the last layer): the trainer and the
evaluation read the exits from there. Per-exit weights (cfg.optim.exit_weights) do not apply to this family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eeasr.train.config import ModelConfig
from eeasr.train.model import ENCODERS, FeedForward, Front, Recognizer, SelfAttention, ctc_exit_loss, valid_mask

if TYPE_CHECKING:
    from eeasr.train.dataset import Batch

MHA, FFN = 0, 1                   # module index in the last axis of gates and probabilities


class TransformerLayer(nn.Module):
    """Pre-LN Transformer layer: Y = X + MHA(X) (Eq. 1), X' = Y + FFN(Y) (Eq. 2)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.ff_dim, cfg.dropout)

    def forward(self, x: Tensor, key_bias: Tensor) -> Tensor:
        x = x + self.attn(x, key_bias)
        return x + self.ffn(x)


class CTCHead(nn.Module):
    """LayerNorm + Linear to CTC logits (a pre-LN stack has no norm at its layers' outputs)."""

    def __init__(self, d: int, vocab: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.proj = nn.Linear(d, vocab)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.norm(x))


class GatePredictor(nn.Module):
    """MLP with one hidden ReLU layer on the mean over valid frames: x [B, T, d], mask [B, T] -> gate logits
    [B, n_gates, 2] (index 1 = execute). Local: n_gates = 2 (this layer's MHA, FFN); global: 2N."""

    def __init__(self, d: int, hidden: int, n_gates: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(d, hidden)
        self.out = nn.Linear(hidden, 2 * n_gates)
        self.n_gates = n_gates

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        m = mask[:, :, None].to(x)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.out(F.relu(self.hidden(pooled))).view(x.shape[0], self.n_gates, 2)


def key_bias(lengths: Tensor, t: int, bias: float) -> Tensor:
    """[B, 1, 1, T]: 0 on valid keys, `bias` on padded ones."""
    return ((~valid_mask(lengths, t)).to(torch.float32) * bias)[:, None, None, :]


def exit_layers(cfg: ModelConfig) -> list[int]:
    """1-based layers with a CTC exit: the InterCTC layers, then the last layer."""
    inter = cfg.i3d.inter_ctc
    if sorted(set(inter)) != list(inter) or (inter and (inter[0] < 1 or inter[-1] >= cfg.n_layers)):
        raise ValueError(f"i3d.inter_ctc {inter} must be increasing layer numbers in 1..{cfg.n_layers - 1}")
    return list(inter) + [cfg.n_layers]


def module_macs(lengths: Tensor, cfg: ModelConfig) -> Tensor:
    """Multiply-accumulates of each module for T valid frames, [B, N, 2] (MHA, FFN): the attention
    projections 4 T d^2 plus scores and weighted sum 2 T^2 d; the feed-forward network 2 T d ff.
    LayerNorms, activations and the gate predictors are left out (small next to these)."""
    t = lengths.to(torch.float32)
    d = float(cfg.d_model)
    mha = 4 * t * d * d + 2 * t * t * d
    ffn = 2 * t * d * cfg.ff_dim
    return torch.stack([mha, ffn], dim=-1)[:, None, :].expand(-1, cfg.n_layers, 2)


def utility_loss(gates: Tensor, costs: Tensor | None = None) -> Tensor:
    """Eq. 6 averaged over the batch: the mean gate over the 2N modules of each utterance, gates [B, N, 2].
    With `costs` [B, N, 2] (footnote 1), each module weighs by its share of the utterance's total cost."""
    if costs is None:
        return gates.mean()
    return ((gates * costs).sum((1, 2)) / costs.sum((1, 2))).mean()


class TransformerCTC(Recognizer):
    """Pre-LN Transformer-CTC (the static baseline, with optional InterCTC and LayerDrop)."""

    def __init__(self, cfg: ModelConfig, n_mels: int = 80) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set from the tokenizer")
        self.exit_layers = exit_layers(cfg)
        if cfg.exits != self.exit_layers:
            raise ValueError(f"model.exits must be {self.exit_layers} (i3d.inter_ctc and the last layer), "
                             f"got {cfg.exits}")
        if not 0.0 <= cfg.i3d.layerdrop < 1.0:
            raise ValueError(f"i3d.layerdrop {cfg.i3d.layerdrop} must be in [0, 1)")
        self.cfg = cfg
        self.front = Front(n_mels, cfg.d_model, cfg.subsampling)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.n_layers))
        head = CTCHead(cfg.d_model, cfg.vocab_size)
        self.exits = nn.ModuleList(head for _ in self.exit_layers)  # one shared head (InterCTC)

    def _exits_upto(self, upto: int | None) -> dict[int, int]:
        """{0-based layer index: exit index} for the first `upto` exits."""
        n = len(self.exit_layers) if upto is None else upto
        return {layer - 1: j for j, layer in enumerate(self.exit_layers[:n])}

    def forward(self, feats: Tensor, n_frames: Tensor, upto: int | None = None) -> tuple[list[Tensor], Tensor]:
        """Log-probabilities [B, T', V] at each exit (the first `upto` only, if given) and valid T'."""
        x, lengths = self.front(feats, n_frames)
        bias = key_bias(lengths, x.shape[1], self.cfg.mask_bias).to(x)
        exit_at = self._exits_upto(upto)
        keep = None
        if self.training and self.cfg.i3d.layerdrop > 0:
            keep = torch.rand(x.shape[0], len(self.layers), device=x.device) >= self.cfg.i3d.layerdrop
        outs = []
        for i, layer in enumerate(self.layers[: max(exit_at) + 1]):
            y = layer(x, bias)
            x = y if keep is None else torch.where(keep[:, i, None, None], y, x)
            if i in exit_at:
                outs.append(F.log_softmax(self.exits[exit_at[i]](x), dim=-1))
        return outs, lengths

    def loss_names(self) -> list[str]:
        return ["ctc"] + (["inter_ctc"] if len(self.exit_layers) > 1 else [])

    def _ctc_terms(self, logps: list[Tensor], lengths: Tensor, batch: Batch) -> dict[str, Tensor]:
        losses = [ctc_exit_loss(lp, lengths.cpu(), batch.targets, batch.target_lengths) for lp in logps]
        if len(losses) == 1:
            return {"ctc": losses[0]}
        w = self.cfg.i3d.inter_ctc_weight
        return {"ctc": (1 - w) * losses[-1], "inter_ctc": w * torch.stack(losses[:-1]).mean()}

    def loss_terms(self, fwd: Callable[..., tuple], feats: Tensor, n_frames: Tensor, batch: Batch,
                   weights: list[float]) -> dict[str, Tensor]:
        _no_exit_weights(weights)
        logps, lengths = fwd(feats, n_frames)
        return self._ctc_terms(logps, lengths, batch)


def _no_exit_weights(weights: list[float]) -> None:
    if any(w != 1.0 for w in weights):
        raise ValueError("optim.exit_weights do not apply to the transformer/i3d family; "
                         "InterCTC is weighted by model.i3d.inter_ctc_weight")


@dataclass
class GatedOutput:
    """What an I3D pass computed. probs and gates are [B, L, 2] for the L layers run (MHA, FFN): p(execute) and
    the gate used (binary at inference: the module ran for that utterance; soft samples in training)."""
    logps: list[Tensor]
    lengths: Tensor
    probs: Tensor
    gates: Tensor

    @property
    def modules_run(self) -> Tensor:
        """[B] attention + feed-forward modules executed per utterance."""
        return self.gates.sum((1, 2))

    @property
    def layers_run(self) -> Tensor:
        """[B] the paper's 'number of layers': executed modules / 2."""
        return self.modules_run.to(torch.float32) / 2


def _residual_on_rows(x: Tensor, open_rows: Tensor, branch: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """x + branch on the rows whose gate is open: `branch(x[idx], idx)` runs the module on those rows only, and
    is not called at all when every gate is closed."""
    idx = open_rows.nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    if idx.numel() == x.shape[0]:
        return x + branch(x, idx)
    return x.index_add(0, idx, branch(x[idx], idx))


class I3DTransformer(TransformerCTC):
    """I3D encoder: Transformer-CTC whose attention and feed-forward modules are gated per utterance.

    `beta` (from cfg.i3d.beta) is the inference threshold; set the attribute or pass `beta=` to `gated`.
    """

    init_bases = ("transformer",)           # fine-tuned from a trained Transformer; the gate predictors start fresh
    fresh_prefixes = ("gate_predictors.",)

    def __init__(self, cfg: ModelConfig, n_mels: int = 80) -> None:
        super().__init__(cfg, n_mels)
        g = cfg.i3d
        if g.layerdrop > 0:
            raise ValueError("i3d.layerdrop applies to the transformer baseline; I3D's gates drop modules themselves")
        if g.predictor == "local":
            self.gate_predictors = nn.ModuleList(GatePredictor(cfg.d_model, g.hidden, 2) for _ in self.layers)
        elif g.predictor == "global":
            self.gate_predictors = nn.ModuleList([GatePredictor(cfg.d_model, g.hidden, 2 * len(self.layers))])
        else:
            raise ValueError(f"i3d.predictor {g.predictor!r}: expected 'local' or 'global'")
        if g.tau <= 0:
            raise ValueError(f"i3d.tau {g.tau} must be positive")
        self.beta = g.beta

    def gated(self, feats: Tensor, n_frames: Tensor, upto: int | None = None, beta: float | None = None,
              soft: bool = False) -> GatedOutput:
        """One pass with soft Gumbel-softmax gates (`soft`, training) or binary gates p(open) > beta
        (default self.beta) that skip closed modules."""
        beta = self.beta if beta is None else beta
        x, lengths = self.front(feats, n_frames)
        mask = valid_mask(lengths, x.shape[1])
        bias = key_bias(lengths, x.shape[1], self.cfg.mask_bias).to(x)
        exit_at = self._exits_upto(upto)
        n_run = max(exit_at) + 1
        # Global: every gate from the encoder input (Eq. 12). Local: each layer's gates from its own input (Eq. 9),
        # which depends on the gates below.
        glob = self.cfg.i3d.predictor == "global"
        all_logits = self.gate_predictors[0](x, mask).view(x.shape[0], len(self.layers), 2, 2) if glob else None
        outs, probs, gates = [], [], []
        for i, layer in enumerate(self.layers[:n_run]):
            logits = all_logits[:, i] if all_logits is not None else self.gate_predictors[i](x, mask)
            p = logits.softmax(-1)[..., 1]
            if soft:
                g = F.gumbel_softmax(logits, tau=self.cfg.i3d.tau, dim=-1)[..., 1]
                x = x + g[:, MHA, None, None] * layer.attn(x, bias)
                x = x + g[:, FFN, None, None] * layer.ffn(x)
            else:
                g = p > beta
                x = _residual_on_rows(x, g[:, MHA], lambda h, idx: layer.attn(h, bias[idx]))
                x = _residual_on_rows(x, g[:, FFN], lambda h, idx: layer.ffn(h))
            probs.append(p)
            gates.append(g)
            if i in exit_at:
                outs.append(F.log_softmax(self.exits[exit_at[i]](x), dim=-1))
        return GatedOutput(outs, lengths, torch.stack(probs, 1), torch.stack(gates, 1))

    def forward(self, feats: Tensor, n_frames: Tensor, upto: int | None = None,
                return_gates: bool = False) -> tuple:
        """(log-probs per exit, valid T'), plus the gates [B, N, 2] when `return_gates`: soft samples in training,
        binary (module ran) at inference with threshold self.beta."""
        out = self.gated(feats, n_frames, upto, soft=self.training)
        if return_gates:
            return out.logps, out.lengths, out.gates
        return out.logps, out.lengths

    def loss_names(self) -> list[str]:
        return super().loss_names() + ["utility"]

    def loss_terms(self, fwd: Callable[..., tuple], feats: Tensor, n_frames: Tensor, batch: Batch,
                   weights: list[float]) -> dict[str, Tensor]:
        """CTC (InterCTC-mixed when configured) + lambda * utility (Eq. 5), the utility on the soft gates."""
        _no_exit_weights(weights)
        logps, lengths, gates = fwd(feats, n_frames, return_gates=True)
        terms = self._ctc_terms(logps, lengths, batch)
        costs = module_macs(lengths, self.cfg).to(gates) if self.cfg.i3d.cost_weighted else None
        terms["utility"] = self.cfg.i3d.lam * utility_loss(gates, costs)
        return terms


ENCODERS.update(transformer=TransformerCTC, i3d=I3DTransformer)  # the one registry (train/model.py)


__all__ = ["TransformerLayer", "CTCHead", "GatePredictor", "TransformerCTC", "I3DTransformer", "GatedOutput",
           "exit_layers", "module_macs", "utility_loss", "key_bias", "MHA", "FFN"]

