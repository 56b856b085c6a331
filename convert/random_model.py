"""A randomly initialised model directory, laid out like `eeasr-train export` writes one (config.yaml,
tokenizer.model, norm.json, features.json, model.pt, calibration.npz): for the converter's tests and for
measuring conversion cost without a trained model. Its calibration features are standard-normal (the
normalization is the identity), its texts a few fixed sentences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SENTENCES = [
    "turn on the light in the kitchen", "what time is it now", "set a timer for ten minutes",
    "play some music please", "stop the music", "how is the weather today", "open the door",
    "call my mother on the phone", "read me the news", "turn the volume down a little",
    "remind me to buy milk tomorrow", "switch off all the lights", "what is the temperature outside",
    "start the washing machine", "close the window in the bedroom", "good morning how are you",
]


def write_random_model(out: Path, *, d_model: int = 144, n_heads: int = 4, ff_dim: int = 576, n_layers: int = 12,
                       exits: list[int] | None = None, conv_kernel: int = 15, vocab: int = 64, window: int = 600,
                       n_calibration: int = 48, seed: int = 0, encoder: str = "conformer",
                       aed: dict | None = None, i3d: dict | None = None) -> str:
    """Write the directory; returns its model hash. `encoder` names the model family (train/model.py ENCODERS),
    `aed` the AEDConfig fields of a "conformer-aed", `i3d` the I3DConfig fields of an "i3d" (its gate
    predictors' output layers are scaled up so the gate probabilities spread over (0, 1), as a trained
    model's do, instead of all sitting near 0.5)."""
    import torch

    from eeasr.features import FeatureConfig, NormStats
    from eeasr.tokenizer import Tokenizer
    from eeasr.train.checkpoint import save_model
    from eeasr.train.config import AEDConfig, DataConfig, I3DConfig, ModelConfig, TrainConfig, save_config
    from eeasr.train.model import build_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.train(SENTENCES * 4, out / "tokenizer.model", vocab_size=vocab)
    exits = exits if exits is not None else list(range(2, n_layers + 1, 2))
    mcfg = ModelConfig(d_model=d_model, n_heads=n_heads, ff_dim=ff_dim, n_layers=n_layers, conv_kernel=conv_kernel,
                       exits=exits, dropout=0.0, vocab_size=tok.vocab_size, encoder=encoder,
                       aed=AEDConfig(**(aed or {})), i3d=I3DConfig(**(i3d or {})))
    cfg = TrainConfig(name="random", model=mcfg, data=DataConfig(window=window, vocab=vocab))
    save_config(cfg, out / "config.yaml")
    feats = FeatureConfig()
    import json
    (out / "features.json").write_text(json.dumps(feats.to_dict()))
    NormStats(mean=np.zeros(feats.n_mels), std=np.ones(feats.n_mels)).save(out / "norm.json")
    torch.manual_seed(seed)
    model = build_model(mcfg).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained model has
        g = torch.Generator().manual_seed(seed)
        for gp in getattr(model, "gate_predictors", []):
            gp.out.weight.mul_(8.0)
        for block in getattr(model, "blocks", []):
            bn = block.conv.bn
            bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g) * 0.3)
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) * 1.5 + 0.5)
    model_hash = save_model(out, model.state_dict(), {"steps": 0, "note": "random weights"}, half=True)
    rng = np.random.default_rng(seed)
    n = rng.integers(window // 4, window + 1, n_calibration).astype(np.int32)
    packed = np.zeros((n_calibration, window, feats.n_mels), np.float16)
    for i, t in enumerate(n):
        packed[i, :t] = rng.standard_normal((t, feats.n_mels))
    texts = np.array([SENTENCES[i % len(SENTENCES)] for i in range(n_calibration)])
    np.savez_compressed(out / "calibration.npz", feats=packed, n_frames=n, texts=texts,
                        ids=np.array([f"random-{i:03d}" for i in range(n_calibration)]),
                        sources=np.array(["random"] * n_calibration))
    return model_hash


__all__ = ["write_random_model", "SENTENCES"]
