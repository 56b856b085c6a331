"""A small Transformer language model on the corpus's training transcripts, for rescoring the AED's N-best
(paper 1, Sec. 3: "a transformer-based language model trained with the same tokenization is used to rescore").

Units are the AED's decoder ids (train/aed.py): the tokenizer's BPE units 1..V-1, sos = V, eos = V + 1; the model
is a TransformerDecoder without cross-attention. It learns from the train split's transcripts only (dev gives the
perplexity logged after each epoch; test text is never read).

Tokenizer: `tokenizer` names the AED run (or its tokenizer.model), copied into the LM run; left empty, one is
trained from the same train-split texts with `vocab` units, exactly as `eeasr-train fit` does, so it has the same
bytes as the tokenizer of an AED run on that corpus (the LM can train before or beside the AED). Rescoring checks
the two tokenizers' hashes.

Run directory: config.yaml (LMConfig), tokenizer.model, lm.pt ({"version", "state_dict", "meta"}), checkpoints/
(resumable states: the shared loop of train/loop.py, with AdamW, warm-up + cosine and per-step seeding),
train_log.csv.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from eeasr.manifest import iter_manifest
from eeasr.tokenizer import Tokenizer
from eeasr.train.aed import IGNORE, TransformerDecoder, decoder_io, eos_id, output_classes, smoothed_ce, sos_id
from eeasr.train.config import dataclass_from_dict
from eeasr.train.dataset import bucket_batches
from eeasr.train.loop import CsvLog, StepOut, TrainLoop, corpus_manifest, device, warmup_cosine

LM_VERSION = 1


@dataclass
class LMConfig:
    name: str = "lm"
    seed: int = 0
    out: str = "~/.cache/eeasr/runs/lm"
    corpus: str = "~/.cache/eeasr/corpus"   # corpus directory (manifest.jsonl) or a manifest file
    tokenizer: str = ""                     # AED run directory or tokenizer.model; "" = train one as `fit` does
    vocab: int = 256                        # BPE units when training the tokenizer (the AED recipe's data.vocab)
    d_model: int = 256
    n_heads: int = 4
    ff_dim: int = 1024
    n_layers: int = 4
    dropout: float = 0.1
    lr: float = 1e-3
    warmup_steps: int = 300
    weight_decay: float = 0.01
    grad_clip: float = 5.0
    epochs: int = 15
    max_steps: int = 0                      # stop after this many updates when > 0
    batch_tokens: int = 6000                # tokens per batch (padding included)
    save_every_steps: int = 500
    log_every_steps: int = 10


def load_lm_config(path: str | Path, overrides: dict[str, Any] | None = None) -> LMConfig:
    """Read an LM recipe (unknown keys are errors, as for training recipes); `overrides` maps keys to values."""
    data = {**(yaml.safe_load(Path(path).read_text()) or {}), **(overrides or {})}
    return dataclass_from_dict(LMConfig, data, str(path))


class LanguageModel(nn.Module):
    """Causal Transformer LM over the decoder ids of a tokenizer with `vocab_size` CTC units."""

    def __init__(self, vocab_size: int, cfg: LMConfig) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.sos, self.eos = sos_id(vocab_size), eos_id(vocab_size)
        self.decoder = TransformerDecoder(vocab_size, cfg.d_model, cfg.n_heads, cfg.ff_dim, cfg.n_layers, cfg.dropout,
                                          cross=False)
        self.register_buffer("classes", output_classes(vocab_size), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """Prefixes [N, L] (sos first) -> next-unit log-probabilities [N, L, V + 2]."""
        return self.decoder(tokens)

    def loss(self, seqs: list[list[int]]) -> tuple[Tensor, int]:
        """Mean NLL per unit (eos included) of the sequences, and the number of units scored."""
        inp, out = decoder_io(seqs, self.sos, self.eos)
        dev = self.classes.device
        out = out.to(dev)
        return smoothed_ce(self(inp.to(dev)), out, 0.0, self.classes), int((out != IGNORE).sum())

    @torch.no_grad()
    def score(self, seqs: list[list[int]], batch: int = 256) -> list[float]:
        """log P(units + eos) of each unit sequence (no sos/eos in `seqs`)."""
        out: list[float] = []
        dev = self.classes.device
        for i in range(0, len(seqs), batch):
            inp, tgt = decoder_io(seqs[i:i + batch], self.sos, self.eos)
            lp = self(inp.to(dev))
            tgt = tgt.to(dev)
            keep = tgt != IGNORE
            tok = lp.gather(2, tgt.clamp(min=0)[..., None])[..., 0]
            out += torch.where(keep, tok, 0.0).sum(1).tolist()  # padding gathers blank's -inf: drop it
        return out


@dataclass
class LMRun:
    path: Path
    cfg: LMConfig
    model: LanguageModel
    tokenizer: Tokenizer
    meta: dict


def load_lm(run: str | Path, device: str = "cpu") -> LMRun:
    """Load a trained LM run directory (lm.pt, config.yaml, tokenizer.model)."""
    run = Path(run).expanduser()
    missing = [n for n in ("config.yaml", "tokenizer.model", "lm.pt") if not (run / n).exists()]
    if missing:
        raise ValueError(f"{run}: not a trained LM (missing {', '.join(missing)}); train one with `eeasr-train lm`")
    blob = torch.load(run / "lm.pt", map_location=device, weights_only=True)
    if blob.get("version") != LM_VERSION:
        raise ValueError(f"{run}/lm.pt: version {blob.get('version')}, this eeasr reads {LM_VERSION}")
    tokenizer = Tokenizer.load(run / "tokenizer.model")
    if blob["meta"]["tokenizer_sha256"] != tokenizer.sha256:
        raise ValueError(f"{run}/tokenizer.model is not the tokenizer this LM was trained with (hash mismatch)")
    cfg = load_lm_config(run / "config.yaml")
    model = LanguageModel(tokenizer.vocab_size, cfg)
    model.load_state_dict(blob["state_dict"])
    return LMRun(run, cfg, model.to(device).eval(), tokenizer, blob["meta"])


def _tokenizer(cfg: LMConfig, manifest: Path, out: Path) -> Tokenizer:
    dst = out / "tokenizer.model"
    if not dst.exists():
        if cfg.tokenizer:
            src = Path(cfg.tokenizer).expanduser()
            shutil.copy(src / "tokenizer.model" if src.is_dir() else src, dst)
        else:
            Tokenizer.train([u.text for u in iter_manifest(manifest) if u.split == "train"], dst, vocab_size=cfg.vocab)
    return Tokenizer.load(dst)


@torch.no_grad()
def perplexity(model: LanguageModel, seqs: list[list[int]], batch: int = 256) -> float:
    """exp(mean NLL per unit, eos included) over `seqs`."""
    was = model.training
    model.eval()
    nll, n = 0.0, 0
    for i in range(0, len(seqs), batch):
        loss, k = model.loss(seqs[i:i + batch])
        nll, n = nll + float(loss) * k, n + k
    model.train(was)
    return math.exp(nll / max(1, n))


def train_lm(cfg: LMConfig, out: Path | None = None, progress: bool = True,
             stop_after_steps: int | None = None) -> Path:
    """Train (or resume) the LM run in `out`; returns the run directory with lm.pt.

    `stop_after_steps` ends this invocation early (as an interruption would), leaving a resumable checkpoint.
    """
    from tqdm import tqdm

    out = Path(out or cfg.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    manifest = corpus_manifest(cfg.corpus)
    tokenizer = _tokenizer(cfg, manifest, out)
    (out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    texts: dict[str, list[list[int]]] = {"train": [], "dev": []}
    for u in iter_manifest(manifest):
        if u.split in texts and (tokens := tokenizer.encode(u.text)):
            texts[u.split].append(tokens)
    train, dev_set = texts["train"], texts["dev"]
    lengths = np.array([len(s) + 1 for s in train])

    dev = device()
    torch.manual_seed(cfg.seed)
    model = LanguageModel(tokenizer.vocab_size, cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(bucket_batches(lengths, cfg.batch_tokens, cfg.seed, 0))
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    log = CsvLog(out / "train_log.csv", ["step", "epoch", "lr", "loss", "elapsed_s", "dev_ppl"])
    loop = TrainLoop(out, model, opt, log, seed=cfg.seed, total=total,
                     lr=lambda step: warmup_cosine(step, cfg.lr, cfg.warmup_steps, total), grad_clip=cfg.grad_clip,
                     keep=2, log_every=cfg.log_every_steps, save_every=cfg.save_every_steps, desc="training LM",
                     progress=progress)
    loop.resume(dev)

    def end_epoch(epoch: int) -> dict[str, str]:
        ppl = perplexity(model, dev_set) if dev_set else math.nan
        if progress:
            tqdm.write(f"epoch {epoch}: dev perplexity {ppl:.2f}")
        return {"dev_ppl": f"{ppl:.2f}"}

    if progress:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"LM: {n_params / 1e6:.2f} M parameters, {len(train)} training sentences ({int(lengths.sum())} units), "
              f"{steps_per_epoch} steps/epoch, {total} steps")
    # Dropout draws are fixed by the step (the loop seeds torch per step): resume is exact.
    if not loop.run(lambda epoch: bucket_batches(lengths, cfg.batch_tokens, cfg.seed, epoch),
                    lambda idx, seed: StepOut(model.loss([train[i] for i in idx])[0]), end_epoch, stop_after_steps):
        return out
    meta = {"tokenizer_sha256": tokenizer.sha256, "steps": loop.step, "epochs": loop.epoch,
            "train_seconds": round(loop.elapsed), "dev_ppl": perplexity(model, dev_set) if dev_set else None,
            "name": cfg.name}
    tmp = out / "lm.pt.tmp"
    torch.save({"version": LM_VERSION, "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                "meta": meta}, tmp)
    tmp.replace(out / "lm.pt")
    return out


__all__ = ["LMConfig", "load_lm_config", "LanguageModel", "LMRun", "load_lm", "train_lm", "perplexity"]
