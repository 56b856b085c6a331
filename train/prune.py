"""Iterative layer pruning without retraining: the static baseline the I3D paper calls "LayerDrop".

A Transformer trained with LayerDrop and InterCTC (configs/transformer-layerdrop.yaml) keeps working when
layers are removed, because its layers were trained to be skipped and every layer's output was trained to be
read by the one shared CTC head. Following Lee, Kang & Watanabe (2021, the paper's ref. [29]), the layer whose
removal hurts dev WER least is removed, one at a time, giving one static model per depth. Each step scores
every remaining layer's removal with greedy CTC on dev (the trainer's `evaluate_greedy`), so a path from N
layers costs N(N+1)/2 - 1 dev passes of shrinking models.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from eeasr.tokenizer import Tokenizer
from eeasr.train.checkpoint import Checkpoint, save_model
from eeasr.train.config import save_config
from eeasr.train.dataset import Utterances
from eeasr.train.i3d import TransformerCTC
from eeasr.train.trainer import evaluate_greedy


@dataclass
class PruneStep:
    n_layers: int
    kept: list[int]    # 1-based layers of the original model, bottom to top
    dev_wer: float     # greedy WER (%) of the model of these layers on the pruning set


def pruned(model: TransformerCTC, kept: Sequence[int]) -> TransformerCTC:
    """A static Transformer-CTC of the `kept` layers (1-based, in order) of `model`, reading its last CTC head
    (shared by all exits under InterCTC); no InterCTC heads, no LayerDrop. A copy: `model` is left unchanged."""
    if not kept or list(kept) != sorted(set(kept)) or kept[0] < 1 or kept[-1] > len(model.layers):
        raise ValueError(f"kept layers {list(kept)} must be increasing layer numbers in 1..{len(model.layers)}")
    cfg = dataclasses.replace(model.cfg, encoder="transformer", n_layers=len(kept), exits=[len(kept)],
                              i3d=dataclasses.replace(model.cfg.i3d, inter_ctc=[], layerdrop=0.0))
    out = TransformerCTC(cfg, n_mels=model.front.conv1.in_channels)
    out.front.load_state_dict(model.front.state_dict())
    for dst, src in zip(out.layers, kept):
        dst.load_state_dict(model.layers[src - 1].state_dict())
    out.exits[0].load_state_dict(model.exits[-1].state_dict())
    return out.to(next(model.parameters()).device).eval()


def _dev_wer(model: TransformerCTC, kept: list[int], dev: Utterances, tokenizer: Tokenizer, max_frames: int) -> float:
    return evaluate_greedy(pruned(model, kept), dev, tokenizer, max_frames, next(model.parameters()).device)[0]


def prune_path(model: TransformerCTC, dev: Utterances, tokenizer: Tokenizer, max_frames: int = 24000,
               min_layers: int = 1) -> list[PruneStep]:
    """From all layers down to `min_layers`: at each step, remove the layer whose removal gives the lowest dev
    WER (ties: the lowest such layer). The first step is the unpruned model."""
    kept = list(range(1, len(model.layers) + 1))
    path = [PruneStep(len(kept), kept, _dev_wer(model, kept, dev, tokenizer, max_frames))]
    while len(kept) > max(1, min_layers):
        trials = [[k for k in kept if k != r] for r in kept]
        scored = [(_dev_wer(model, t, dev, tokenizer, max_frames), t) for t in trials]
        best_wer, kept = min(scored, key=lambda s: s[0])
        path.append(PruneStep(len(kept), kept, best_wer))
    return path


def save_pruned(ck: Checkpoint, kept: Sequence[int], out: Path) -> Path:
    """Write the pruned model of `ck` as a complete checkpoint directory (what eval and convert take)."""
    if not isinstance(ck.model, TransformerCTC):
        raise ValueError(f"{ck.path}: pruning needs a transformer run, this one is {ck.cfg.model.encoder!r}")
    model = pruned(ck.model, kept)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.model", "norm.json", "features.json"):
        shutil.copy(ck.path / name, out / name)
    save_config(dataclasses.replace(ck.cfg, model=model.cfg, out=str(out)), out / "config.yaml")
    save_model(out, {k: v.detach().cpu() for k, v in model.state_dict().items()},
               {"pruned_from": ck.model_hash, "kept_layers": list(kept), "name": f"{ck.cfg.name}-pruned{len(kept)}"})
    return out


__all__ = ["PruneStep", "pruned", "prune_path", "save_pruned"]
