"""Training data from the feature cache: normalized features, tokens, length-bucketed batches, SpecAugment.

Batch order is a pure function of (seed, epoch), and every random draw inside a step comes from a generator
seeded by the step number, so a run resumed from a checkpoint continues exactly as one that never stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from eeasr.features import NormStats
from eeasr.tokenizer import Tokenizer
from eeasr.train.config import DataConfig
from eeasr.train.data.cache import FeatureSet


@dataclass
class Batch:
    feats: Tensor        # [B, T, 80] float32, normalized, zero past each item's length
    n_frames: Tensor     # [B]
    targets: Tensor      # [sum U] token ids
    target_lengths: Tensor  # [B]
    texts: list[str]
    ids: list[str]


class Utterances:
    """Items of one split, normalized once and tokenized once."""

    def __init__(self, fs: FeatureSet, norm: NormStats, tokenizer: Tokenizer, window: int) -> None:
        keep = [i for i, f in enumerate(fs.feats) if 0 < len(f) <= window]
        self.dropped = len(fs.feats) - len(keep)  # longer than the device window: cannot be trained on as one
        self.feats = [norm.apply(fs.feats[i].astype(np.float32)) for i in keep]
        self.texts = [fs.texts[i] for i in keep]
        self.ids = [fs.ids[i] for i in keep]
        self.tokens = [tokenizer.encode(t) for t in self.texts]
        self.lengths = np.array([len(f) for f in self.feats])

    def __len__(self) -> int:
        return len(self.feats)

    def collate(self, idx: list[int]) -> Batch:
        t = int(self.lengths[idx].max())
        feats = torch.zeros(len(idx), t, self.feats[idx[0]].shape[1])
        for row, i in enumerate(idx):
            feats[row, : self.lengths[i]] = torch.from_numpy(self.feats[i])
        tokens = [self.tokens[i] for i in idx]
        return Batch(feats, torch.tensor(self.lengths[idx]), torch.tensor([x for tk in tokens for x in tk]),
                     torch.tensor([len(tk) for tk in tokens]), [self.texts[i] for i in idx],
                     [self.ids[i] for i in idx])


def bucket_batches(lengths: np.ndarray, max_frames: int, seed: int, epoch: int, shuffle: bool = True) -> list[list[int]]:
    """Batches of similar length whose padded size (items x longest) stays under max_frames."""
    rng = np.random.default_rng([seed, epoch])
    # Sort by length with random tie-breaking, cut into batches, then shuffle the batch order.
    order = np.lexsort((rng.random(len(lengths)) if shuffle else np.arange(len(lengths)), lengths))
    batches, cur, longest = [], [], 0
    for i in order:
        longest_next = max(longest, int(lengths[i]))
        if cur and longest_next * (len(cur) + 1) > max_frames:
            batches.append(cur)
            cur, longest_next = [], int(lengths[i])
        cur.append(int(i))
        longest = longest_next
    if cur:
        batches.append(cur)
    if shuffle:
        rng.shuffle(batches)
    return batches


def spec_augment(batch: Batch, cfg: DataConfig, gen: torch.Generator) -> Tensor:
    """Frequency and time masks (zero = the normalized mean), drawn from a per-step generator."""
    x = batch.feats.clone()
    b, _, f = x.shape
    for row in range(b):
        n = int(batch.n_frames[row])
        for _ in range(cfg.spec_freq_masks):
            w = int(torch.randint(0, cfg.spec_freq_width + 1, (1,), generator=gen))
            f0 = int(torch.randint(0, max(1, f - w), (1,), generator=gen))
            x[row, :n, f0:f0 + w] = 0.0
        max_w = max(1, int(cfg.spec_time_ratio * n))
        for _ in range(cfg.spec_time_masks):
            w = int(torch.randint(0, max_w + 1, (1,), generator=gen))
            t0 = int(torch.randint(0, max(1, n - w), (1,), generator=gen))
            x[row, t0:t0 + w] = 0.0
    return x
