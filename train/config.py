"""Typed training recipes: a YAML file read into nested dataclasses (unknown keys are errors, not surprises)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class I3DConfig:
    """I3D dynamic depth (paper 2): gates on every attention and feed-forward module (train/i3d.py)."""
    predictor: str = "local"           # "local" (one MLP per layer) or "global" (one MLP on the encoder input)
    hidden: int = 32                   # gate-predictor MLP hidden units
    tau: float = 1.0                   # Gumbel-softmax temperature during training
    lam: float = 0.0                   # utility-loss weight lambda (Eq. 6)
    cost_weighted: bool = False        # weight modules by their compute cost in the utility loss (footnote 1)
    beta: float = 0.5                  # binary-gate threshold at inference (changeable without retraining)
    inter_ctc: list[int] = field(default_factory=list)  # layers with an InterCTC loss (the InterCTC variant)
    inter_ctc_weight: float = 0.3      # w: loss = (1 - w) CTC(last) + w * mean InterCTC (Lee & Watanabe 2021)
    layerdrop: float = 0.0             # LayerDrop probability per layer (the pruned baseline, paper ref. [29])


@dataclass
class AEDConfig:
    """Early-exit Conformer-AED (paper 1, Eq. 4): a CTC head and an attention decoder per exit (train/aed.py)."""
    decoder_layers: int = 4
    decoder_heads: int = 4
    decoder_ff: int = 576
    ctc_weight: float = 0.3            # loss per exit = ctc_weight * CTC + (1 - ctc_weight) * CE
    label_smoothing: float = 0.1


@dataclass
class Wav2Vec2Config:
    """Wav2Vec2-CTC with early exits (paper 1's third model, train/wav2vec2.py)."""
    pretrained: str = ""               # local directory of a Hugging Face Wav2Vec2 model ("" = random init)
    freeze_feature_extractor: bool = True


@dataclass
class ModelConfig:
    encoder: str = "conformer"         # the model family (train/model.py registry)
    d_model: int = 144
    n_heads: int = 4
    ff_dim: int = 576
    n_layers: int = 12
    conv_kernel: int = 15
    exits: list[int] = field(default_factory=lambda: [2, 4, 6, 8, 10, 12])  # 1-based layer after which an exit sits
    subsampling: int = 4               # 4: two stride-2 Conv1d (the device contract)
    dropout: float = 0.1
    mask_bias: float = -30.0           # added to attention scores of padded keys; int8 can still represent it
    vocab_size: int = 0                # filled from the tokenizer
    i3d: I3DConfig = field(default_factory=I3DConfig)
    aed: AEDConfig = field(default_factory=AEDConfig)
    wav2vec2: Wav2Vec2Config = field(default_factory=Wav2Vec2Config)


@dataclass
class DataConfig:
    corpus: str = "~/.cache/eeasr/corpus"   # corpus directory (manifest.jsonl)
    copies: int = 2                         # feature-cache versions per training utterance
    window: int = 600                       # device window W in feature frames (docs/decisions/0002)
    vocab: int = 256                        # BPE units
    max_batch_frames: int = 24000           # feature frames per batch (padding included)
    spec_freq_masks: int = 2
    spec_freq_width: int = 15
    spec_time_masks: int = 2
    spec_time_ratio: float = 0.05           # each time mask covers at most this share of the utterance


@dataclass
class OptimConfig:
    lr: float = 2e-3
    warmup_steps: int = 1000
    weight_decay: float = 1e-3
    grad_clip: float = 5.0
    epochs: int = 4
    max_steps: int = 0                      # stop after this many updates when > 0 (baselines match updates)
    average_last: int = 3                   # checkpoints averaged into the final model
    exit_weights: list[float] = field(default_factory=list)  # per-exit loss weights; empty = all 1 (Eq. 2)


@dataclass
class TrainConfig:
    name: str = "default"
    seed: int = 0
    out: str = "runs/default"
    init: str = ""                          # checkpoint to start from (fine-tuning): its tokenizer, norm, model shape
    save_every_steps: int = 500             # a resumable checkpoint between epochs as well
    log_every_steps: int = 10
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def dataclass_from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """A (nested) config dataclass from a mapping; unknown keys and non-mappings are errors naming `where`."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = dataclass_from_dict(hint, value, f"{where}.{key}")
        elif hint is float and isinstance(value, int):
            kwargs[key] = float(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML recipe; `overrides` maps dotted keys (e.g. "optim.max_steps") to values."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config_from_dict(data, str(path))


def config_from_dict(data: dict[str, Any], where: str = "config") -> TrainConfig:
    return dataclass_from_dict(TrainConfig, data, where)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = ["I3DConfig", "AEDConfig", "Wav2Vec2Config", "ModelConfig", "DataConfig", "OptimConfig", "TrainConfig",
           "dataclass_from_dict", "load_config", "config_from_dict", "save_config"]
