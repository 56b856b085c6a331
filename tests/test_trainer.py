"""The real trainer on tiny data: it can fit, and an interrupted run resumes to the identical state."""

from pathlib import Path

import pytest
import torch

from eeasr.manifest import read_manifest, write_manifest
from eeasr.metrics import wer
from eeasr.train.checkpoint import load_checkpoint
from eeasr.train.config import config_from_dict
from eeasr.train import evaluate
from eeasr.train.trainer import fit

TINY_MODEL = {"d_model": 64, "n_heads": 2, "ff_dim": 128, "n_layers": 4, "exits": [2, 4], "conv_kernel": 7,
              "dropout": 0.0}


@pytest.fixture(scope="module")
def handful(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six training utterances, and the same audio again as dev, so dev WER is the training-set WER."""
    utts = [u for u in read_manifest(tiny_corpus / "manifest.jsonl") if u.split == "train"][:6]
    dev = [type(u)(**{**u.__dict__, "id": u.id + "-dev", "split": "dev"}) for u in utts]
    out = tmp_path_factory.mktemp("handful")
    write_manifest(out / "manifest.jsonl", utts + dev)
    return out


def _cfg(corpus: Path, out: Path, steps: int, **optim) -> object:
    return config_from_dict({
        "out": str(out), "save_every_steps": 1000, "log_every_steps": 1,
        "model": TINY_MODEL,
        "data": {"corpus": str(corpus), "copies": 1, "vocab": 48, "max_batch_frames": 8000,
                 "spec_freq_masks": 0, "spec_time_masks": 0},
        "optim": {"lr": 3e-3, "warmup_steps": 10, "max_steps": steps, "average_last": 1, **optim},
    })


def test_tiny_model_overfits_a_handful_of_utterances(handful: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("EEASR_CACHE", str(tmp_path / "cache"))
    run = fit(_cfg(handful, tmp_path / "run", 300), compile_model=False, progress=False)
    ck = load_checkpoint(run)
    utts = [u for u in read_manifest(handful / "manifest.jsonl") if u.split == "dev"]
    # Decoded through the evaluation path: device front end, windows, greedy and beam search.
    results, skipped = evaluate.run(ck, utts, beam=4, progress=False)
    refs = [u.text for u in utts]
    assert not skipped
    assert wer(refs, evaluate.texts_at_exit(results, 1)) == 0.0, evaluate.texts_at_exit(results, 1)
    assert wer(refs, evaluate.texts_at_exit(results, 1, beam=True)) == 0.0
    # Exit selection: a threshold every window passes stops at exit 1, one none passes runs to the last.
    assert evaluate.select(results, "entropy", 1e9, [2, 4])[1] == 2.0
    assert evaluate.select(results, "entropy", -1.0, [2, 4]) == (evaluate.texts_at_exit(results, 1), 4.0)
    assert evaluate.select(results, "posterior", 2.0, [2, 4], beam=True)[1] == 4.0


def test_resume_reaches_the_state_of_an_uninterrupted_run(handful: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("EEASR_CACHE", str(tmp_path / "cache"))
    straight = fit(_cfg(handful, tmp_path / "a", 6), compile_model=False, progress=False)
    fit(_cfg(handful, tmp_path / "b", 6), compile_model=False, progress=False, stop_after_steps=3)
    assert max(p.name for p in (tmp_path / "b" / "checkpoints").glob("*.pt")) == "step-0000003.pt"
    resumed = fit(_cfg(handful, tmp_path / "b", 6), compile_model=False, progress=False)
    a = torch.load(straight / "checkpoints" / "step-0000006.pt", weights_only=False)
    b = torch.load(resumed / "checkpoints" / "step-0000006.pt", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for ka, kb in zip(a["optim"]["state"].values(), b["optim"]["state"].values()):
        assert all(torch.equal(ka[n], kb[n]) for n in ka)
    assert (a["step"], a["epoch"], a["in_epoch"]) == (b["step"], b["epoch"], b["in_epoch"])
