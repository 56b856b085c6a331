"""Export a trained run as a self-contained model directory (what ships as models/default).

It holds what conversion and evaluation need on a fresh clone with no corpus: fp16 weights (model.pt),
config, tokenizer, normalization, feature config, a small calibration set of real dev features
(calibration.npz: int8 conversion's representative data), the results, and a model card.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from eeasr.audio import load_audio
from eeasr.features import log_mel
from eeasr.manifest import read_manifest
from eeasr.train.checkpoint import load_checkpoint, save_model
from eeasr.train.config import TrainConfig
from eeasr.train.data.sources import SOURCE_LICENCES

CALIBRATION_UTTERANCES = 48


def calibration_set(manifest: Path, n: int, window: int) -> dict[str, np.ndarray]:
    """Un-normalized log-mel features of `n` dev utterances spread over the dev voices, float16."""
    dev = [u for u in read_manifest(manifest) if u.split == "dev"]
    step = max(1, len(dev) // n)
    picked = dev[::step][:n]
    feats = [log_mel(load_audio(u.path))[:window] for u in picked]
    lengths = np.array([len(f) for f in feats], np.int32)
    packed = np.zeros((len(feats), window, feats[0].shape[1]), np.float16)
    for i, f in enumerate(feats):
        packed[i, : len(f)] = f
    return {"feats": packed, "n_frames": lengths, "texts": np.array([u.text for u in picked]),
            "ids": np.array([u.id for u in picked]), "sources": np.array([u.source for u in picked])}


def export(run: Path, out: Path, manifest: Path) -> str:
    """Write the model directory; returns its model hash."""
    ck = load_checkpoint(run)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "tokenizer.model", "norm.json", "features.json", "train_log.csv"):
        shutil.copy(run / name, out / name)
    np.savez_compressed(out / "calibration.npz", **calibration_set(manifest, CALIBRATION_UTTERANCES,
                                                                   ck.cfg.data.window))
    meta = {k: v for k, v in ck.meta.items() if k not in ("model_hash", "files")}
    model_hash = save_model(out, {k: v for k, v in ck.model.state_dict().items()},
                            {**meta, "exported_from": ck.model_hash}, half=True)
    corpus = manifest.parent / "corpus.json"
    card = model_card(ck.cfg, model_hash, sum(p.numel() for p in ck.model.parameters()),
                      json.loads(corpus.read_text()) if corpus.exists() else None, meta)
    (out / "MODEL_CARD.md").write_text(card)
    return model_hash


def model_card(cfg: TrainConfig, model_hash: str, params: int, corpus: dict | None, meta: dict) -> str:
    m = cfg.model
    data = ""
    if corpus:
        s = corpus["splits"]
        data = (f"Trained on {s['train']['hours']:.1f} h of synthetic speech ({s['train']['voices']} voices: "
                + ", ".join(f"{k} {v:.1f} h" for k, v in s["train"]["hours_per_family"].items())
                + f"), corpus plan {corpus['plan_hash']}, seed {corpus['config']['seed']}. Dev and test hold out whole "
                  "voices of every engine and the festival HTS family (docs/decisions/0001-corpus-splits.md).\n")
    licences = "\n".join(f"- {k}: {v}" for k, v in SOURCE_LICENCES.items())
    return f"""# Model card: eeasr `{cfg.name}` early-exit Conformer-CTC

- Model hash: `{model_hash}`; {params / 1e6:.2f} M parameters, fp16 weights; {meta.get('steps')} updates
  ({meta.get('epochs')} epochs, {meta.get('train_seconds', 0) / 3600:.1f} h on a 2-core CPU), last
  {meta.get('averaged')} checkpoints averaged.
- Architecture: {m.n_layers}-layer Conformer (d={m.d_model}, {m.n_heads} heads, FF {m.ff_dim}, conv kernel
  {m.conv_kernel}), Conv1d {m.subsampling}x subsampling, CTC exits after layers {', '.join(map(str, m.exits))}
  trained with the joint loss (Eq. 2 of the early-exit paper); {m.vocab_size - 1} BPE units + blank; 80
  log-mel features per the device contract (docs/features.md); device window {cfg.data.window / 100:.0f} s.

## Data
{data}
Voices: Debian espeak-ng (GPL-3.0+), flite (BSD-like), festival with festvox-kallpc16k, festvox-kdlpc16k and
festvox-us-slt-hts (free licences; see each Debian package's copyright file). Texts:
{licences}

## Intended use
A reference model for the eeasr toolchain: testing the edge-cloud split, the converter, the firmware and the
host end to end, and a starting point for fine-tuning on recorded speech (`eeasr-train finetune`).

## Known limits
- Trained on synthetic speech only: expect much higher error on real voices (see results.md: the real
  pocketsphinx-testdata clips) until it is fine-tuned on recordings.
- English only; the vocabulary of its text sources (fortunes, WordNet examples, the Bible, the Jargon File,
  commands, numbers and dates). Numbers are spoken and transcribed as words.
- Utterances up to 6 s per window; longer speech is cut at pauses into windows.
"""

