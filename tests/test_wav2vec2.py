"""Wav2Vec2-CTC with early exits (train/wav2vec2.py) on a tiny randomly initialized Wav2Vec2: exits and heads,
frozen feature extractor, lengths and padding, grapheme units, loading a local pretrained directory, and a real
(short) fine-tuning run through `trainer.fit`. No pretrained weights are reachable here, so none are used."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Model  # noqa: E402

from eeasr.manifest import read_manifest, write_manifest  # noqa: E402
from eeasr.text import normalize_text  # noqa: E402
from eeasr.train.cli import main as train_cli  # noqa: E402
from eeasr.train.config import ModelConfig, config_from_dict, load_config  # noqa: E402
from eeasr.train.model import ENCODERS, build_model  # noqa: E402
from eeasr.train.trainer import fit  # noqa: E402
from eeasr.train.wav2vec2 import (GRAPHEMES, GraphemeTokenizer, PretrainedNotFound, Wav2Vec2CTC,  # noqa: E402
                                  load_run, wer_per_exit)


def tiny_config(norm: str = "group") -> Wav2Vec2Config:
    """4 layers of width 32, 2 heads; three convolutions striding 320 samples (50 frames/s, as wav2vec2-base)."""
    return Wav2Vec2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                          conv_dim=(16, 32, 32), conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8),
                          feat_extract_norm=norm, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                          hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                          final_dropout=0.0, mask_time_prob=0.0, vocab_size=32)


def model_cfg(exits: tuple[int, ...] = (2, 4), pretrained: str = "", freeze: bool = True) -> ModelConfig:
    w2v = {"pretrained": pretrained, "freeze_feature_extractor": freeze}
    return config_from_dict({"model": {"encoder": "wav2vec2", "exits": list(exits), "vocab_size": len(GRAPHEMES),
                                       "wav2vec2": w2v}}).model


def tiny_model(norm: str = "group", **kw) -> Wav2Vec2CTC:  # noqa: ANN003
    torch.manual_seed(0)
    return Wav2Vec2CTC(model_cfg(**kw), hf_config=tiny_config(norm))


def conv_lengths(n: int) -> int:
    for k, s in zip((10, 8, 8), (5, 8, 8)):
        n = (n - k) // s + 1
    return n


def test_grapheme_tokenizer_has_32_units_and_round_trips():
    tok = GraphemeTokenizer()
    assert tok.vocab_size == len(GRAPHEMES) == len(set(GRAPHEMES)) == 32 and tok.blank_id == 0
    # The official recipe's order (facebook/wav2vec2-base-960h vocab.json, lowercased): "|" 4, e 5, ..., z 31.
    assert (GRAPHEMES[4], GRAPHEMES[5], GRAPHEMES[27], GRAPHEMES[31]) == ("|", "e", "'", "z")
    assert sorted(u for u in GRAPHEMES if len(u) == 1 and u != "|") == sorted("abcdefghijklmnopqrstuvwxyz'")
    assert tok.encode("It's 5 o'clock!") == [GRAPHEMES.index(c) if c != " " else 4 for c in "it's five o'clock"]
    for text in ("Dr. Smith paid $3.50 on 3/14/2015", "  Don't   STOP  ", "a", ""):
        assert tok.decode(tok.encode(text)) == normalize_text(text)
    # Blanks, <s>, </s> and <unk> are skipped and boundaries collapse, so a collapsed CTC path decodes as is.
    assert tok.decode([0, 4, 1, GRAPHEMES.index("h"), 0, GRAPHEMES.index("i"), 4, 4, 3, 2, GRAPHEMES.index("a"), 4]) \
        == "hi a"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([32])


def test_exits_after_layers_2_and_4_each_with_its_own_head():
    model = tiny_model().eval()
    assert ENCODERS["wav2vec2"] is Wav2Vec2CTC
    assert len(model.exits) == 2 and model.exits[0] is not model.exits[1]
    assert model.exits[0].weight.data_ptr() != model.exits[1].weight.data_ptr()
    wave, n = torch.randn(2, 16000), torch.tensor([16000, 12000])
    with torch.no_grad():
        logps, lengths = model(wave, n)
        first, _ = model(wave, n, upto=1)
    assert len(logps) == 2 and len(first) == 1 and torch.equal(first[0], logps[0])
    for lp in logps:
        assert lp.shape == (2, conv_lengths(16000), 32)
        assert torch.allclose(lp.exp().sum(-1), torch.ones(2, lp.shape[1]), atol=1e-5)
    # Exit 1 reads layer 2: changing layer 3 changes exit 2 only; changing layer 2 changes both.
    def perturbed(layer: int) -> list[torch.Tensor]:
        w = model.w2v.encoder.layers[layer].feed_forward.output_dense.weight
        w.add_(torch.randn_like(w))
        return model(wave, n)[0]

    with torch.no_grad():
        after3 = perturbed(2)   # the third layer (0-based 2)
        after2 = perturbed(1)   # then the second as well
    assert torch.equal(after3[0], logps[0]) and not torch.allclose(after3[1], logps[1])
    assert not torch.allclose(after2[0], logps[0])
    # Layers past the last exit are not kept.
    assert len(tiny_model(exits=(2,)).w2v.encoder.layers) == 2
    with pytest.raises(ValueError, match="exits"):
        tiny_model(exits=(2, 6))


def test_feature_extractor_is_frozen_and_the_transformer_trains():
    def grads(model: Wav2Vec2CTC) -> tuple[list, list]:
        logps, lengths = model(torch.randn(2, 8000), torch.tensor([8000, 6000]))
        sum(lp[0, : lengths[0]].mean() for lp in logps).backward()
        return ([p.grad for p in model.w2v.feature_extractor.parameters()],
                [p.grad for p in [*model.w2v.encoder.parameters(), *model.exits.parameters()]])

    model = tiny_model()
    conv, rest = grads(model)
    assert all(not p.requires_grad for p in model.w2v.feature_extractor.parameters())
    assert all(g is None for g in conv)
    assert all(g is not None and g.abs().sum() > 0 for g in rest)
    conv, _ = grads(tiny_model(freeze=False))
    assert all(g is not None for g in conv)


def test_output_lengths_follow_the_valid_samples():
    model = tiny_model().eval()
    n = torch.tensor([16000, 12345, 4000])
    wave = torch.randn(3, 16000) * (torch.arange(16000)[None] < n[:, None])
    with torch.no_grad():
        logps, lengths = model(wave, n)
        alone = [model(wave[i: i + 1, : n[i]], n[i: i + 1])[0][0].shape[1] for i in range(3)]
    assert lengths.tolist() == [conv_lengths(int(x)) for x in n] == alone


def test_padding_leaves_the_valid_outputs_unchanged():
    """With a layer-norm feature extractor (large/lv60 checkpoints) every valid output frame sees only valid samples
    through the convolutions, padded frames are zeroed before the positional convolution and masked out of
    attention, so padding changes valid log-probabilities by float rounding only (bound 1e-4; measured ~1e-6).
    The group-norm extractor of wav2vec2-base normalizes its first convolution over the padded length, so there
    padding does move the outputs, and evaluation decodes such models one utterance at a time."""
    wave = torch.randn(1, 9000)
    padded = torch.cat([wave, torch.zeros(1, 7000)], 1)
    for norm, invariant in (("layer", True), ("group", False)):
        model = tiny_model(norm).eval()
        assert model.padding_invariant is invariant and model.eval_batch_samples(10**6) == (10**6 if invariant else 1)
        with torch.no_grad():
            alone, la = model(wave, torch.tensor([9000]))
            batch, lb = model(torch.cat([padded, torch.randn(1, 16000)]), torch.tensor([9000, 16000]))
        assert la[0] == lb[0]
        diff = max(float((a[0] - b[0, : la[0]]).abs().max()) for a, b in zip(alone, batch))
        assert (diff < 1e-4) is invariant, (norm, diff)


def test_a_local_pretrained_directory_loads_and_a_missing_one_is_a_one_line_error(tmp_path: Path):
    torch.manual_seed(1)
    Wav2Vec2Model(tiny_config()).save_pretrained(tmp_path / "base")
    saved = Wav2Vec2Model.from_pretrained(tmp_path / "base")
    model = build_model(model_cfg(pretrained=str(tmp_path / "base")))
    assert isinstance(model, Wav2Vec2CTC)
    for k, v in saved.state_dict().items():
        assert torch.equal(model.w2v.state_dict()[k], v), k

    # A Wav2Vec2ForCTC with the official vocab.json (as the paper's start, wav2vec2-base-960h): each exit head
    # starts as its own copy of the CTC output layer.
    ctc = Wav2Vec2ForCTC(tiny_config())
    ctc.save_pretrained(tmp_path / "ctc")
    vocab = {("<pad>" if i == 0 else u.upper()): i for i, u in enumerate(GRAPHEMES)}
    (tmp_path / "ctc" / "vocab.json").write_text(json.dumps(vocab))
    model = build_model(model_cfg(pretrained=str(tmp_path / "ctc")))
    for head in model.exits:
        assert torch.equal(head.weight, ctc.lm_head.weight) and head.weight is not ctc.lm_head.weight
    assert model.exits[0].weight.data_ptr() != model.exits[1].weight.data_ptr()

    # No directory: a random encoder with the transformer of the recipe's shape and the wav2vec2-base convolutions.
    cfg = model_cfg()
    cfg.d_model, cfg.n_heads, cfg.ff_dim, cfg.n_layers = 32, 2, 64, 4
    model = build_model(cfg)
    assert (model.hf_config.hidden_size, len(model.w2v.encoder.layers), model.hf_config.conv_stride) == \
        (32, 4, (5, 2, 2, 2, 2, 2, 2))

    (tmp_path / "hubert").mkdir()
    (tmp_path / "hubert" / "config.json").write_text('{"model_type": "hubert"}')
    for bad, why in ((tmp_path / "missing", "does not exist"), (tmp_path / "hubert", "not a wav2vec2"),
                     (tmp_path, "has no config.json")):
        with pytest.raises(PretrainedNotFound, match=why) as err:
            build_model(model_cfg(pretrained=str(bad)))
        assert "\n" not in str(err.value) and "config.json" in str(err.value)
    # `eeasr-train fit` on the recipe says it in one line, before looking for the corpus or loading anything.
    recipe = Path(__file__).resolve().parent.parent / "configs" / "wav2vec2.yaml"
    assert load_config(recipe).model.exits == [2, 4, 6, 8, 10, 12]
    result = CliRunner().invoke(train_cli, ["fit", "--config", str(recipe), "--out", str(tmp_path / "run"),
                                            "--set", f"model.wav2vec2.pretrained={tmp_path / 'missing'}",
                                            "--set", f"data.corpus={tmp_path / 'no-corpus'}"])
    assert result.exit_code == 1 and not isinstance(result.exception, PretrainedNotFound)
    assert result.output.startswith("Error: model.wav2vec2.pretrained:") and result.output.count("\n") == 1


@pytest.fixture(scope="module")
def three(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three shortest training utterances (1.2-1.3 s), and the same audio again as dev."""
    utts = sorted((u for u in read_manifest(tiny_corpus / "manifest.jsonl") if u.split == "train"),
                  key=lambda u: u.duration)[:3]
    dev = [type(u)(**{**u.__dict__, "id": u.id + "-dev", "split": "dev"}) for u in utts]
    out = tmp_path_factory.mktemp("three") / "manifest.jsonl"
    write_manifest(out, utts + dev)
    return out


def _fit_cfg(manifest: Path, pretrained: Path, out: Path, steps: int) -> object:
    return config_from_dict({
        "out": str(out), "save_every_steps": 1000, "log_every_steps": 1,
        "model": {"encoder": "wav2vec2", "exits": [2, 4], "wav2vec2": {"pretrained": str(pretrained)}},
        "data": {"corpus": str(manifest), "max_batch_frames": 1000},
        "optim": {"lr": 3e-3, "warmup_steps": 10, "max_steps": steps, "average_last": 1},
    })


def test_a_tiny_model_fine_tunes_on_three_utterances(three: Path, tmp_path: Path):
    """The real loop through trainer.fit: waveforms from the manifest, the joint CTC loss of both exits, dev WER
    per epoch, averaged model.pt, reloaded by load_run and scored by wer_per_exit. (300 steps reach 0% WER at both
    exits; 150 keep the test short.)"""
    torch.manual_seed(0)
    Wav2Vec2Model(tiny_config()).save_pretrained(tmp_path / "pretrained")
    run = fit(_fit_cfg(three, tmp_path / "pretrained", tmp_path / "run", 150), progress=False)
    rows = [r for r in csv.DictReader((run / "train_log.csv").open()) if r["loss"]]
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert len(rows) == 150 and last < 0.3 * first, (first, last)
    model, _ = load_run(run)
    assert model.hf_config.hidden_size == 32 and model.cfg.d_model == 32  # the checkpoint's shape, recorded
    wers = wer_per_exit(model, [u for u in read_manifest(three) if u.split == "dev"])
    assert len(wers) == 2 and wers[1] < 100.0, wers


def test_an_interrupted_run_resumes_to_the_same_weights(three: Path, tmp_path: Path):
    """Resuming reloads model, optimizer and position, and the step seeds fix dropout and Hugging Face's numpy
    time masks (on here), so 2 + 2 steps give the weights of 4 uninterrupted ones."""
    config = tiny_config()
    config.mask_time_prob, config.mask_time_length, config.hidden_dropout = 0.5, 2, 0.1
    torch.manual_seed(0)
    Wav2Vec2Model(config).save_pretrained(tmp_path / "pretrained")
    a = fit(_fit_cfg(three, tmp_path / "pretrained", tmp_path / "a", 4), progress=False)
    fit(_fit_cfg(three, tmp_path / "pretrained", tmp_path / "b", 4), progress=False, stop_after_steps=2)
    b = fit(_fit_cfg(three, tmp_path / "pretrained", tmp_path / "b", 4), progress=False)
    sa = torch.load(a / "checkpoints" / "step-0000004.pt", weights_only=False)
    sb = torch.load(b / "checkpoints" / "step-0000004.pt", weights_only=False)
    assert (sa["step"], sa["epoch"]) == (sb["step"], sb["epoch"]) == (4, 4)
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
