"""The training loop every trainer shares (train/trainer.py `fit`, train/wav2vec2.py `fit_wav2vec2`, train/lm.py
`train_lm`): AdamW steps under a learning-rate schedule, a CSV log, resumable checkpoints, the final average.

Determinism: each step reseeds torch from (seed, step) (`step_seed`), so dropout and augmentation draws are fixed by
the step number and a run resumed from its latest checkpoint reaches exactly the state of one that never stopped.
The callers choose the batch order per epoch (from seed and epoch) and what one step computes.

Run-directory layout written here: checkpoints/step-NNNNNNN.pt ({"model", "optim", "step", "epoch", "in_epoch",
"elapsed"}), the newest `keep` kept; train_log.csv, one row per logged step and one per epoch.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def corpus_manifest(corpus: str) -> Path:
    """The manifest of a corpus directory (its manifest.jsonl) or a manifest file; raises when it is missing."""
    path = Path(corpus).expanduser()
    manifest = path / "manifest.jsonl" if path.is_dir() else path
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest} not found: build the corpus first (`make data`)")
    return manifest


def step_seed(seed: int, step: int) -> int:
    """The seed of every random draw of training step `step`."""
    return seed * 1_000_003 + step


def warmup_cosine(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to 5% of it at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


class CsvLog:
    """A CSV file of fixed columns (header written once); rows give any subset of them, extra keys are ignored."""

    def __init__(self, path: Path, fields: Sequence[str]) -> None:
        self.path = path
        self.fields = list(fields)
        if not path.exists():
            with path.open("w", newline="") as f:
                csv.writer(f).writerow(self.fields)

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self.fields])


@dataclass
class StepOut:
    """What one training step's forward gives the loop: the loss to minimize, its named terms (shown on the
    progress bar and logged as loss_<name>; none: the loss itself is shown) and the input frames it read (logged as
    frames_per_s; None: not logged)."""
    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    frames: float | None = None


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights of several checkpoints (integer buffers from the last)."""
    states = [torch.load(p, map_location="cpu", weights_only=False)["model"] for p in paths]
    avg = {}
    for k, v in states[-1].items():
        avg[k] = torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
    return avg


class TrainLoop:
    """Steps, epochs, checkpoints and the log of one run directory; `step`, `epoch`, `in_epoch` (batches of the
    current epoch done) and `elapsed` (training seconds) are its resumable state."""

    def __init__(self, out: Path, model: nn.Module, opt: torch.optim.Optimizer, log: CsvLog, *, seed: int,
                 total: int, lr: Callable[[int], float], grad_clip: float, keep: int, log_every: int,
                 save_every: int, desc: str = "training", progress: bool = True) -> None:
        self.model, self.opt, self.log = model, opt, log
        self.seed, self.total, self.lr, self.grad_clip, self.keep = seed, total, lr, grad_clip, keep
        self.log_every, self.save_every, self.desc, self.progress = log_every, save_every, desc, progress
        self.ckpts = out / "checkpoints"
        self.ckpts.mkdir(exist_ok=True)
        self.step, self.epoch, self.in_epoch, self.elapsed = 0, 0, 0, 0.0

    def checkpoints(self) -> list[Path]:
        return sorted(self.ckpts.glob("step-*.pt"))

    def resume(self, dev: torch.device) -> bool:
        """Load the latest checkpoint's model, optimizer and position, if there is one."""
        if not (files := self.checkpoints()):
            return False
        state = torch.load(files[-1], map_location=dev, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optim"])
        self.step, self.epoch, self.in_epoch, self.elapsed = (state["step"], state["epoch"], state["in_epoch"],
                                                              state["elapsed"])
        return True

    def save(self) -> None:
        torch.save({"model": self.model.state_dict(), "optim": self.opt.state_dict(), "step": self.step,
                    "epoch": self.epoch, "in_epoch": self.in_epoch, "elapsed": self.elapsed},
                   self.ckpts / f"step-{self.step:07d}.pt")
        for old in self.checkpoints()[: -self.keep]:
            old.unlink()  # keep what the final average needs

    def average(self, n: int) -> dict[str, torch.Tensor]:
        """The mean weights of the last `n` checkpoints."""
        return average_checkpoints(self.checkpoints()[-n:])

    def run(self, batches: Callable[[int], Sequence[np.ndarray]], forward: Callable[[np.ndarray, int], StepOut],
            end_epoch: Callable[[int], dict[str, str]], stop_after_steps: int | None = None) -> bool:
        """Train up to `total` steps: `batches(epoch)` orders an epoch's batches, `forward(batch, seed)` computes
        one step's loss after torch was seeded with `seed`, `end_epoch(epoch)` evaluates a finished epoch and gives
        its log columns. Returns False when `stop_after_steps` ended this invocation early (as an interruption
        would, leaving a resumable checkpoint), True once `total` steps are done."""
        params = [p for p in self.model.parameters() if p.requires_grad]  # frozen ones have no gradient
        bar = tqdm(total=self.total, initial=self.step, desc=self.desc, disable=not self.progress, unit="step")
        self.model.train()
        run_steps = 0
        while self.step < self.total:
            order = batches(self.epoch)
            while self.in_epoch < len(order) and self.step < self.total:
                t0 = time.time()
                seed = step_seed(self.seed, self.step)
                torch.manual_seed(seed)
                for g in self.opt.param_groups:
                    g["lr"] = self.lr(self.step)
                out = forward(order[self.in_epoch], seed)
                self.opt.zero_grad(set_to_none=True)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
                self.opt.step()
                self.step, self.in_epoch, run_steps = self.step + 1, self.in_epoch + 1, run_steps + 1
                dt = time.time() - t0
                self.elapsed += dt
                bar.update(1)
                bar.set_postfix_str(" ".join(f"{v.item():.2f}" for v in (out.terms or {"": out.loss}).values()))
                if self.step % self.log_every == 0:
                    row = {"step": self.step, "epoch": self.epoch, "lr": f"{self.lr(self.step):.2e}",
                           "loss": f"{out.loss.item():.4f}", "elapsed_s": round(self.elapsed),
                           **{f"loss_{k}": f"{v.item():.4f}" for k, v in out.terms.items()}}
                    if out.frames is not None:
                        row["frames_per_s"] = round(out.frames / dt)
                    self.log.write(row)
                if self.step % self.save_every == 0 or self.step == self.total:
                    self.save()
                if stop_after_steps is not None and run_steps >= stop_after_steps:
                    self.save()
                    bar.close()
                    return False
            if self.in_epoch >= len(order):
                self.epoch, self.in_epoch = self.epoch + 1, 0
                self.log.write({"step": self.step, "epoch": self.epoch, **end_epoch(self.epoch)})
                self.save()
        bar.close()
        return True
