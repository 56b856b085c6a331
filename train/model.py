"""Early-exit Conformer-CTC, built only from operations the ESP32-S3 runs well under TFLM.

Device-contract choices (DESIGN.md): Conv1d subsampling (two stride-2 convolutions, 4x), absolute sinusoidal
positions, SiLU/ReLU (no GELU), BatchNorm in the convolution module (folds into the depthwise convolution),
padded attention keys biased by a bounded -30 (never -1e9), padded frames zeroed before the depthwise
convolution. A window padded to W or to the batch's longest item gives the same valid outputs (up to
exp(-30) in attention), so training pads per batch and the device pads to W.

The encoder is a list of blocks; `exits[j]` reads the output of block `exit_layers[j] - 1`. Segment k of the
device program is the blocks between exit k-1 and exit k plus exit k's head (segment 1 also holds the front).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eeasr.train.config import ModelConfig

if TYPE_CHECKING:
    from eeasr.train.dataset import Batch


def subsampled_lengths(n_frames: Tensor, factor: int = 4) -> Tensor:
    """Valid encoder frames for n valid feature frames: each stride-2 conv (k=3, padding 1) gives ceil(n/2)."""
    n = n_frames
    for _ in range(int(math.log2(factor))):
        n = torch.div(n + 1, 2, rounding_mode="floor")
    return n


def valid_mask(lengths: Tensor, t: int) -> Tensor:
    """[B, T] bool, True on valid frames."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def sinusoid_positions(t: int, d: int) -> Tensor:
    pos = torch.arange(t, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(t, d)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class Front(nn.Module):
    """Conv1d subsampling 4x (ReLU) and absolute positions: features [B, T, 80] -> [B, T/4, d]."""

    def __init__(self, n_mels: int, d: int, factor: int = 4) -> None:
        super().__init__()
        if factor != 4:
            raise ValueError("the device contract fixes Conv1d subsampling at 4x (two stride-2 layers)")
        self.conv1 = nn.Conv1d(n_mels, d, 3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)
        self.d = d

    def forward(self, feats: Tensor, n_frames: Tensor) -> tuple[Tensor, Tensor]:
        x = feats.transpose(1, 2)
        x = x * valid_mask(n_frames, x.shape[-1])[:, None, :]
        x = F.relu(self.conv1(x))
        # Frames past the valid count are zeroed between layers, as the device does with its fixed window.
        x = x * valid_mask(subsampled_lengths(n_frames, 2), x.shape[-1])[:, None, :]
        x = F.relu(self.conv2(x)).transpose(1, 2)
        lengths = subsampled_lengths(n_frames, 4)
        x = x + sinusoid_positions(x.shape[1], self.d).to(x)
        return x, lengths


class FeedForward(nn.Module):
    def __init__(self, d: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, ff)
        self.down = nn.Linear(ff, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.down(self.drop(F.silu(self.up(self.norm(x))))))


class MultiHeadAttention(nn.Module):
    """Multi-head attention with a pre-LayerNorm on its queries; subclasses choose the keys and values."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.heads = heads
        self.drop = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)  # [N, L, d] -> [N, H, L, d/H]

    def keys_values(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values [N, H, T, d/H] of `src` [N, T, d] (the normalized queries' input, or a memory)."""
        return self._split(self.k(src)), self._split(self.v(src))

    def queries(self, h: Tensor) -> Tensor:
        """Queries [N, H, L, d/H] of normalized inputs `h` [N, L, d]."""
        return self._split(self.q(h))

    def attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """Output [N, L, d] of queries `q` over keys/values [N, H, T, d/H]; `mask` is added to (float) or selects
        (bool) the attention logits."""
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.drop.p if self.training else 0.0)
        return self.drop(self.out(y.transpose(1, 2).flatten(2)))

    def attend(self, h: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """Output for normalized queries' inputs `h` [N, L, d] over keys/values [N, H, T, d/H]."""
        return self.attention(self.queries(h), k, v, mask, causal)


class SelfAttention(MultiHeadAttention):
    def forward(self, x: Tensor, key_bias: Tensor) -> Tensor:
        h = self.norm(x)
        # Queries before keys and values: autograd sums h's gradient in that order, as trained models had it.
        q = self.queries(h)
        # key_bias [B, 1, 1, T]: 0 on valid keys, mask_bias on padded ones.
        return self.attention(q, *self.keys_values(h), key_bias)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm whose training statistics come from valid frames only (padding would bias them)."""

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x [B, C, T], mask [B, T]
        if not self.training:
            return super().forward(x)
        m = mask[:, None, :].to(x)
        n = m.sum().clamp(min=1.0)
        mean = (x * m).sum(dim=(0, 2)) / n
        var = (((x - mean[None, :, None]) * m) ** 2).sum(dim=(0, 2)) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean.to(self.running_mean), self.momentum)
            self.running_var.lerp_((var * n / (n - 1).clamp(min=1.0)).to(self.running_var), self.momentum)
        y = (x - mean[None, :, None]) / torch.sqrt(var[None, :, None] + self.eps)
        return y * self.weight[None, :, None] + self.bias[None, :, None]


class ConvModule(nn.Module):
    def __init__(self, d: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.pw1 = nn.Conv1d(d, 2 * d, 1)
        self.dw = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.bn = MaskedBatchNorm1d(d)
        self.pw2 = nn.Conv1d(d, d, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        y = F.glu(self.pw1(self.norm(x).transpose(1, 2)), dim=1)
        y = y * mask[:, None, :].to(y)  # padded frames must not leak into valid ones through the kernel
        y = F.silu(self.bn(self.dw(y), mask))
        return self.drop(self.pw2(y).transpose(1, 2))


class ConformerBlock(nn.Module):
    """Macaron FF/2 -> MHSA -> conv -> FF/2 -> LayerNorm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ff1 = FeedForward(cfg.d_model, cfg.ff_dim, cfg.dropout)
        self.attn = SelfAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.conv = ConvModule(cfg.d_model, cfg.conv_kernel, cfg.dropout)
        self.ff2 = FeedForward(cfg.d_model, cfg.ff_dim, cfg.dropout)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: Tensor, mask: Tensor, key_bias: Tensor) -> Tensor:
        x = x + 0.5 * self.ff1(x)
        x = x + self.attn(x, key_bias)
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ff2(x)
        return self.norm(x)


def ctc_exit_loss(logp: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
    """CTC loss of one exit: mean over the batch of per-utterance loss / target length (blank = 0)."""
    return F.ctc_loss(logp.float().transpose(0, 1), targets, lengths, target_lengths, blank=0,
                      reduction="mean", zero_infinity=True)


class Recognizer(nn.Module):
    """What training, evaluation and export need from every model family.

    `forward(feats, n_frames, upto)` gives the CTC log-probabilities of the exits (the first `upto` only) and the
    valid encoder frames; `exits` holds one CTC head per exit. `loss_terms` is the family's training objective as
    named terms (`loss_names`, summed by the trainer, shown per term in the progress bar and the log); `fwd` is the model's
    (possibly compiled) forward, `weights` the per-exit loss weights.
    """

    exits: nn.ModuleList
    # Fine-tuning from a trained run of a base family (TrainConfig.init): the families whose checkpoints can start
    # this one, and the state-dict prefixes this family adds to them (those start fresh). Empty: only its own.
    init_bases: tuple[str, ...] = ()
    fresh_prefixes: tuple[str, ...] = ()

    def load_base_state(self, state: dict[str, Tensor]) -> tuple[list[str], list[str]]:
        """Load a trained base model's weights (`init_bases`); the weights this family adds keep their fresh init.

        Returns (missing, unexpected) keys. Any missing key outside `fresh_prefixes` is an error (raised before
        anything is loaded); unexpected keys are ignored and reported."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        wrong = [k for k in missing if not k.startswith(self.fresh_prefixes)]
        if wrong:
            raise ValueError(f"the init model lacks {len(wrong)} weight(s) this family does not add, e.g. "
                             f"{', '.join(wrong[:4])}: it is not a {'/'.join(self.init_bases)} of this shape")
        unexpected = [k for k in state if k not in own]
        self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        return missing, unexpected

    def loss_names(self) -> list[str]:
        """The keys `loss_terms` returns, in order (the training log's columns)."""
        return [f"exit{j + 1}" for j in range(len(self.exits))]

    def loss_terms(self, fwd: Callable[..., tuple[list[Tensor], Tensor]], feats: Tensor, n_frames: Tensor,
                   batch: Batch, weights: list[float]) -> dict[str, Tensor]:
        logps, lengths = fwd(feats, n_frames)
        lengths = lengths.cpu()
        return {f"exit{j + 1}": w * ctc_exit_loss(lp, lengths, batch.targets, batch.target_lengths)
                for j, (w, lp) in enumerate(zip(weights, logps))}


class EarlyExitConformer(Recognizer):
    """Conformer-CTC with a linear CTC head after each layer in `cfg.exits` (a single exit = no-EE baseline)."""

    def __init__(self, cfg: ModelConfig, n_mels: int = 80) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set from the tokenizer")
        if not cfg.exits or sorted(cfg.exits) != cfg.exits or cfg.exits[-1] > cfg.n_layers or cfg.exits[0] < 1:
            raise ValueError(f"exits {cfg.exits} must be increasing layer numbers in 1..{cfg.n_layers}")
        self.cfg = cfg
        self.front = Front(n_mels, cfg.d_model, cfg.subsampling)
        # Layers past the last exit would never be used, so the encoder stops there.
        self.blocks = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.exits[-1]))
        self.exits = nn.ModuleList(nn.Linear(cfg.d_model, cfg.vocab_size) for _ in cfg.exits)

    def key_bias(self, lengths: Tensor, t: int) -> Tensor:
        bias = (~valid_mask(lengths, t)).to(torch.float32) * self.cfg.mask_bias
        return bias[:, None, None, :]

    def forward(self, feats: Tensor, n_frames: Tensor, upto: int | None = None) -> tuple[list[Tensor], Tensor]:
        """Log-probabilities [B, T', V] at each exit (the first `upto` exits only, if given) and valid T'."""
        x, lengths = self.front(feats, n_frames)
        mask = valid_mask(lengths, x.shape[1])
        bias = self.key_bias(lengths, x.shape[1]).to(x)
        outs = []
        n_exits = len(self.exits) if upto is None else upto
        exit_after = {layer - 1: j for j, layer in enumerate(self.cfg.exits[:n_exits])}
        for i, block in enumerate(self.blocks[: self.cfg.exits[n_exits - 1]]):
            x = block(x, mask, bias)
            if i in exit_after:
                outs.append(F.log_softmax(self.exits[exit_after[i]](x), dim=-1))
        return outs, lengths


ENCODERS: dict[str, type[Recognizer]] = {"conformer": EarlyExitConformer}

# Families in their own modules add themselves to ENCODERS on import (they build on the blocks above).
import eeasr.train.i3d  # noqa: E402,F401  "transformer", "i3d"
import eeasr.train.aed  # noqa: E402,F401  "conformer-aed"
import eeasr.train.wav2vec2  # noqa: E402,F401  "wav2vec2" (imports transformers only when built)


def init_model_config(recipe: ModelConfig, init: ModelConfig) -> ModelConfig:
    """The model config of a run fine-tuned from a trained run (TrainConfig.init). A family that extends the init
    run's (its `init_bases`: I3D on a Transformer, Conformer-AED on a Conformer) keeps the recipe's family and
    settings and takes the init run's shape; any other recipe continues the init run's model as it is."""
    bases = ENCODERS[recipe.encoder].init_bases if recipe.encoder in ENCODERS else ()
    if not bases:
        return init
    if init.encoder not in bases + (recipe.encoder,):
        raise ValueError(f"a {recipe.encoder} run initializes from a {' or '.join(bases + (recipe.encoder,))} run, "
                         f"not {init.encoder!r}")
    return dataclasses.replace(recipe, d_model=init.d_model, n_heads=init.n_heads, ff_dim=init.ff_dim,
                               n_layers=init.n_layers, vocab_size=init.vocab_size, subsampling=init.subsampling,
                               conv_kernel=init.conv_kernel)


def build_model(cfg: ModelConfig, n_mels: int = 80) -> Recognizer:
    """The model family named by `cfg.encoder` (one registry, so recipes choose by a config key)."""
    encoders = ENCODERS
    if cfg.encoder not in encoders:
        raise ValueError(f"unknown encoder {cfg.encoder!r}; known: {', '.join(encoders)}")
    return encoders[cfg.encoder](cfg, n_mels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
