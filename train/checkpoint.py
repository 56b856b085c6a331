"""The checkpoint directory: everything a later stage needs to use a trained model, and nothing else.

  config.yaml      the full TrainConfig (model config with vocab_size filled in)
  tokenizer.model  sentencepiece model (CTC blank = 0, eeasr.tokenizer)
  norm.json        global feature normalization (eeasr.features.NormStats)
  features.json    the front-end config (eeasr.features.FeatureConfig)
  model.pt         {"version", "state_dict", "meta"}: final (averaged) weights and the hashes of the files above
  train_log.csv    one row per logged step; checkpoints/ holds resumable training states
A mismatch between model.pt's recorded hashes and the files beside it is an error, never silently used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from eeasr.features import FeatureConfig, NormStats
from eeasr.tokenizer import Tokenizer
from eeasr.train.config import TrainConfig, load_config
from eeasr.train.model import build_model

CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    path: Path
    cfg: TrainConfig
    model: nn.Module
    tokenizer: Tokenizer
    norm: NormStats
    features: FeatureConfig
    meta: dict

    @property
    def model_hash(self) -> str:
        return self.meta["model_hash"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def side_hashes(run: Path) -> dict[str, str]:
    """Hashes of the files a model depends on (tokenizer, normalization, feature config)."""
    return {name: _sha(run / name) for name in ("tokenizer.model", "norm.json", "features.json")}


def weights_hash(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def save_model(run: Path, state_dict: dict[str, torch.Tensor], meta: dict, half: bool = False) -> str:
    """Write model.pt (fp16 weights when `half`, to keep a bundled model small); returns the model hash."""
    sd = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in state_dict.items()}
    model_hash = weights_hash(sd)
    full = {**meta, "model_hash": model_hash, "files": side_hashes(run)}
    tmp = run / "model.pt.tmp"
    torch.save({"version": CHECKPOINT_VERSION, "state_dict": sd, "meta": full}, tmp)
    tmp.replace(run / "model.pt")
    return model_hash


def load_checkpoint(run: str | Path, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint directory; raises ValueError with what to do when it is incomplete or inconsistent."""
    run = Path(run).expanduser()
    missing = [n for n in ("config.yaml", "tokenizer.model", "norm.json", "features.json", "model.pt")
               if not (run / n).exists()]
    if missing:
        raise ValueError(f"{run}: not a complete checkpoint (missing {', '.join(missing)}); "
                         f"train one with `eeasr-train fit` or use models/default")
    blob = torch.load(run / "model.pt", map_location=device, weights_only=True)
    if blob.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{run}/model.pt: checkpoint version {blob.get('version')}, this eeasr reads "
                         f"{CHECKPOINT_VERSION}")
    meta = blob["meta"]
    for name, digest in side_hashes(run).items():
        if meta["files"].get(name) != digest:
            raise ValueError(f"{run}/{name} is not the file this model was trained with (hash mismatch); "
                             f"restore it from the same run")
    cfg = load_config(run / "config.yaml")
    model = build_model(cfg.model)
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    model.to(device).eval()
    features = FeatureConfig.from_dict(json.loads((run / "features.json").read_text()))
    return Checkpoint(run, cfg, model, Tokenizer.load(run / "tokenizer.model"), NormStats.load(run / "norm.json"),
                      features, meta)
