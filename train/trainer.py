"""Early-exit CTC training: joint loss over exits (paper 1, Eq. 2), resumable, logged, averaged at the end.

Determinism: batch order depends on (seed, epoch); each step reseeds torch from (seed, step), so dropout and
SpecAugment draws are fixed by the step number. A run resumed from a checkpoint therefore reaches exactly the
state of a run that never stopped (tests/test_trainer.py).

Speed on CPU: the model is compiled once per padded length bucket (multiples of `BUCKET` frames, at most the
device window), with the batch dimension dynamic, which runs ~2.7x faster than eager on this machine.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from eeasr.exits import greedy_ctc
from eeasr.features import FeatureConfig, NormStats
from eeasr.manifest import iter_manifest
from eeasr.metrics import wer
from eeasr.paths import default_cache_dir
from eeasr.tokenizer import Tokenizer
from eeasr.train.checkpoint import load_checkpoint, save_model
from eeasr.train.config import TrainConfig, load_config, save_config
from eeasr.train.data.cache import CacheConfig, build_cache, load_split
from eeasr.train.dataset import Batch, Utterances, bucket_batches, spec_augment
from eeasr.train.loop import CsvLog, StepOut, TrainLoop, corpus_manifest, device, warmup_cosine
from eeasr.train.model import build_model, count_parameters, init_model_config

BUCKET = 100  # padded lengths are rounded up to a multiple of this (few shapes to compile)


def prepare_run(cfg: TrainConfig, out: Path) -> tuple[Path, Tokenizer]:
    """Feature cache, tokenizer and normalization for a run directory (reused when present)."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = corpus_manifest(cfg.data.corpus)
    cache = build_cache(manifest, default_cache_dir() / "features", cfg=CacheConfig(copies=cfg.data.copies))
    if cfg.init:
        # Fine-tuning keeps the starting model's units and feature scaling; its shape comes with it.
        init = Path(cfg.init).expanduser()
        for name in ("tokenizer.model", "norm.json"):
            if not (out / name).exists():
                shutil.copy(init / name, out / name)
        # A family extending the init run's (I3D, Conformer-AED) keeps its own settings and takes the init's shape.
        cfg.model = init_model_config(cfg.model, load_config(init / "config.yaml").model)
    if not (out / "tokenizer.model").exists():
        texts = [u.text for u in iter_manifest(manifest) if u.split == "train"]
        Tokenizer.train(texts, out / "tokenizer.model", vocab_size=cfg.data.vocab)
    if not (out / "norm.json").exists():
        shutil.copy(cache / "norm.json", out / "norm.json")
    index = json.loads((cache / "index.json").read_text())
    (out / "features.json").write_text(json.dumps(FeatureConfig.from_dict(index["features"]).to_dict()))
    return cache, Tokenizer.load(out / "tokenizer.model")


def lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    return warmup_cosine(step, cfg.optim.lr, cfg.optim.warmup_steps, total)


def _pad_to_bucket(batch: Batch, window: int) -> Batch:
    t = min(window, int(math.ceil(batch.feats.shape[1] / BUCKET) * BUCKET))
    if t > batch.feats.shape[1]:
        batch.feats = F.pad(batch.feats, (0, 0, 0, t - batch.feats.shape[1]))
    return batch


@torch.no_grad()
def evaluate_greedy(model: torch.nn.Module, data: Utterances, tokenizer: Tokenizer, max_frames: int,
                    dev: torch.device) -> list[float]:
    """Greedy-CTC WER (%) at every exit on valid frames only."""
    model.eval()
    hyps: list[list[str]] = [[] for _ in model.exits]
    refs: list[str] = []
    for idx in bucket_batches(data.lengths, max_frames, seed=0, epoch=0, shuffle=False):
        b = data.collate(idx)
        logps, lengths = model(b.feats.to(dev), b.n_frames.to(dev))
        for j, lp in enumerate(logps):
            lp = lp.float().cpu().numpy()
            hyps[j] += [tokenizer.decode(greedy_ctc(lp[i, : lengths[i]])) for i in range(len(idx))]
        refs += b.texts
    model.train()
    return [wer(refs, h) for h in hyps]


def train_log(path: Path, terms: list[str], n_exits: int) -> CsvLog:
    """train_log.csv: one row per logged step (total and each loss term) and per epoch (dev WER per exit)."""
    return CsvLog(path, ["step", "epoch", "lr", "loss"] + [f"loss_{t}" for t in terms] + ["frames_per_s", "elapsed_s"]
                  + [f"dev_wer_exit{j + 1}" for j in range(n_exits)])


def _key_groups(keys: list[str]) -> str:
    """State-dict keys summarized by their first two components, e.g. 'gate_predictors.0 (4)'."""
    groups: dict[str, int] = {}
    for k in keys:
        g = ".".join(k.split(".")[:2])
        groups[g] = groups.get(g, 0) + 1
    return ", ".join(f"{g} ({n})" for g, n in groups.items()) or "none"


def fit(cfg: TrainConfig, out: Path | None = None, compile_model: bool | None = None, progress: bool = True,
        stop_after_steps: int | None = None) -> Path:
    """Train (or resume) the run in `out`; returns the run directory with the averaged model.pt.

    `stop_after_steps` ends this invocation early (as an interruption would), leaving a resumable checkpoint.
    """
    if cfg.model.encoder == "wav2vec2":  # waveform input, grapheme units: its own loop (train/wav2vec2.py)
        from eeasr.train.wav2vec2 import fit_wav2vec2

        return fit_wav2vec2(cfg, out, progress=progress, stop_after_steps=stop_after_steps)
    out = Path(out or cfg.out).expanduser()
    cache, tokenizer = prepare_run(cfg, out)
    cfg.model.vocab_size = tokenizer.vocab_size
    save_config(cfg, out / "config.yaml")
    dev = device()
    norm = NormStats.load(out / "norm.json")
    train = Utterances(load_split(cache, "train", cfg.data.copies), norm, tokenizer, cfg.data.window)
    dev_set = Utterances(load_split(cache, "dev"), norm, tokenizer, cfg.data.window)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    weights = cfg.optim.exit_weights or [1.0] * len(cfg.model.exits)
    steps_per_epoch = len(bucket_batches(train.lengths, cfg.data.max_batch_frames, cfg.seed, 0))
    total = cfg.optim.max_steps or cfg.optim.epochs * steps_per_epoch

    loop = TrainLoop(out, model, opt, train_log(out / "train_log.csv", model.loss_names(), len(weights)),
                     seed=cfg.seed, total=total, lr=lambda step: lr_at(step, cfg, total), grad_clip=cfg.optim.grad_clip,
                     keep=max(2, cfg.optim.average_last), log_every=cfg.log_every_steps,
                     save_every=cfg.save_every_steps, progress=progress)
    if cfg.init and not loop.checkpoints():
        init_state = load_checkpoint(cfg.init).model.state_dict()
        if model.init_bases:
            fresh, unused = model.load_base_state(init_state)  # what the family adds to its base starts fresh
            if progress:
                print(f"initialized from {cfg.init}; newly initialized: {_key_groups(fresh)}; "
                      f"unused: {_key_groups(unused)}")
        else:
            model.load_state_dict(init_state)
    loop.resume(dev)
    use_compile = (dev.type == "cpu") if compile_model is None else compile_model
    fwd = torch.compile(model, dynamic=False) if use_compile else model

    def forward(idx: np.ndarray, seed: int) -> StepOut:
        b = _pad_to_bucket(train.collate(idx), cfg.data.window)
        feats = spec_augment(b, cfg.data, torch.Generator().manual_seed(seed)).to(dev)
        n = b.n_frames.to(dev)
        if use_compile:
            torch._dynamo.mark_dynamic(feats, 0)
            torch._dynamo.mark_dynamic(n, 0)
        terms = model.loss_terms(fwd, feats, n, b, weights)
        return StepOut(sum(terms.values()), terms, int(n.sum()))

    def end_epoch(epoch: int) -> dict[str, str]:
        wers = evaluate_greedy(model, dev_set, tokenizer, cfg.data.max_batch_frames, dev)
        tqdm.write(f"epoch {epoch}: dev WER per exit " + " ".join(f"{w:.1f}" for w in wers))
        return {f"dev_wer_exit{j + 1}": f"{w:.2f}" for j, w in enumerate(wers)}

    if progress:
        print(f"{count_parameters(model) / 1e6:.2f} M parameters, {len(train)} training items "
              f"({train.dropped} longer than the window dropped), {steps_per_epoch} steps/epoch, {total} steps")
    if not loop.run(lambda epoch: bucket_batches(train.lengths, cfg.data.max_batch_frames, cfg.seed, epoch),
                    forward, end_epoch, stop_after_steps):
        return out
    save_model(out, loop.average(cfg.optim.average_last),
               {"steps": loop.step, "epochs": loop.epoch, "train_seconds": round(loop.elapsed),
                "averaged": cfg.optim.average_last, "name": cfg.name})
    return out
