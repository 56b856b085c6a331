"""Early-exit Conformer-AED (train/aed.py) and its rescoring LM (train/lm.py): the joint loss, the decoder's masks,
the beam search and its N-best posterior, and real training on tiny data through `fit`, `train_lm` and `eval-aed`."""

import csv
import dataclasses
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from eeasr.manifest import read_manifest, write_manifest
from eeasr.metrics import wer
from eeasr.train.aed import (EarlyExitConformerAED, Hypothesis, aed_texts, beam_search, decoder_io, decoder_vocab,
                             eos_id, evaluate_aed, rescore, sentence_posterior, sos_id)
from eeasr.train.checkpoint import load_checkpoint
from eeasr.train.cli import main as cli
from eeasr.train.config import config_from_dict, load_config
from eeasr.train.dataset import Batch
from eeasr.train.lm import LanguageModel, LMConfig, load_lm, load_lm_config, perplexity, train_lm
from eeasr.train.model import build_model, init_model_config, valid_mask
from eeasr.train.trainer import fit

V = 20  # CTC units of the hand-built models below (blank + 19)
TINY = {"encoder": "conformer-aed", "d_model": 64, "n_heads": 2, "ff_dim": 128, "n_layers": 4, "exits": [2, 4],
        "conv_kernel": 7, "dropout": 0.0, "aed": {"decoder_layers": 1, "decoder_heads": 2, "decoder_ff": 128}}


def _model(seed: int = 0) -> EarlyExitConformerAED:
    torch.manual_seed(seed)
    cfg = config_from_dict({"model": {**TINY, "d_model": 32, "ff_dim": 64, "conv_kernel": 5, "vocab_size": V,
                                      "aed": {**TINY["aed"], "decoder_layers": 2}}}).model
    return build_model(cfg).eval()


def _batch(targets: list[list[int]], frames: list[int]) -> Batch:
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(len(frames), max(frames), 80, generator=g)
    for i, n in enumerate(frames):
        feats[i, n:] = 0.0
    return Batch(feats, torch.tensor(frames), torch.tensor([t for ts in targets for t in ts]),
                 torch.tensor([len(ts) for ts in targets]), ["x"] * len(frames), ["id"] * len(frames))


def test_loss_is_03_ctc_plus_07_smoothed_ce_per_exit():
    m = _model()
    targets = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 3]]
    b = _batch(targets, [80, 57, 70])
    weights = [1.0, 0.5]
    terms = m.loss_terms(m, b.feats, b.n_frames, b, weights)
    assert list(terms) == m.loss_names() == ["exit1", "exit2"]

    logps, lengths, hidden = m(b.feats, b.n_frames, with_hidden=True)
    for j, (w, lp, h) in enumerate(zip(weights, logps, hidden)):
        ctc = torch.stack([F.ctc_loss(lp[i, : lengths[i]], torch.tensor(t), lengths[i], torch.tensor(len(t)),
                                      reduction="sum") / len(t) for i, t in enumerate(targets)]).mean()
        # CE by hand: torch's label smoothing over the classes a step may output (units 1..V-1 and eos).
        valid = [c for c in range(decoder_vocab(V)) if c not in (0, sos_id(V))]
        ces = []
        for i, t in enumerate(targets):
            inp = torch.tensor([[sos_id(V)] + t])
            logits = m.decoders[j](inp, h[i: i + 1, : lengths[i]], None)[0][:, valid]
            tgt = torch.tensor([valid.index(u) for u in t + [eos_id(V)]])
            ces.append(F.cross_entropy(logits, tgt, label_smoothing=0.1, reduction="none"))
        ce = torch.cat(ces).mean()  # averaged over all target units of the batch, eos included
        assert torch.allclose(terms[f"exit{j + 1}"], w * (0.3 * ctc + 0.7 * ce), atol=1e-5), j


def test_decoder_is_causal():
    m = _model()
    b = _batch([[1]], [64])
    _, lengths, hidden = m(b.feats, b.n_frames, with_hidden=True)
    a = torch.tensor([[sos_id(V), 3, 4, 5, 6, 7]])
    c = a.clone()
    c[0, 4:] = torch.tensor([11, 12])  # change the last two inputs
    la, lc = (m.decoder_log_probs(1, x, hidden[1], lengths) for x in (a, c))
    assert torch.allclose(la[:, :4], lc[:, :4], atol=1e-6)
    assert not torch.allclose(la[:, 4:], lc[:, 4:], atol=1e-3)


def test_padded_encoder_frames_do_not_change_the_decoder():
    m = _model()
    b = _batch([[1], [1]], [48, 80])
    tokens = torch.tensor([[sos_id(V), 3, 4, 5]] * 2)
    _, lengths, hidden = m(b.feats, b.n_frames, with_hidden=True)
    alone = _batch([[1]], [48])
    _, l1, h1 = m(alone.feats, alone.n_frames, with_hidden=True)
    for j in range(2):
        # Padded in a batch with a longer utterance vs on its own (the encoder's padding rules, then the decoder's).
        assert torch.allclose(m.decoder_log_probs(j, tokens[:1], hidden[j][:1], lengths[:1]),
                              m.decoder_log_probs(j, tokens[:1], h1[j], l1), atol=1e-4)
        # Garbage in the padded frames of the memory changes nothing either.
        noisy = hidden[j].clone()
        noisy[0, lengths[0]:] = 1e3 * torch.randn_like(noisy[0, lengths[0]:])
        assert torch.allclose(m.decoder_log_probs(j, tokens, noisy, lengths),
                              m.decoder_log_probs(j, tokens, hidden[j], lengths), atol=1e-5)


@torch.no_grad()
def test_incremental_step_matches_the_full_decoder():
    m = _model()
    b = _batch([[1], [1]], [80, 52])
    _, lengths, hidden = m(b.feats, b.n_frames, with_hidden=True)
    tokens = torch.tensor([[sos_id(V), 3, 4, 5, 6], [sos_id(V), 7, 8, 9, 9]])
    full = m.decoder_log_probs(1, tokens, hidden[1], lengths)
    dec = m.decoders[1]
    cross, mask = dec.cross_keys_values(hidden[1]), valid_mask(lengths, hidden[1].shape[1])[:, None, None, :]
    caches = None
    for pos in range(tokens.shape[1]):
        lp, caches = dec.step(tokens[:, pos], pos, caches, cross, mask)
        assert torch.allclose(lp, full[:, pos], atol=1e-5), pos
    lm = LanguageModel(V, LMConfig(d_model=32, n_heads=2, ff_dim=64, n_layers=2)).eval()
    full, caches = lm(tokens), None
    for pos in range(tokens.shape[1]):
        lp, caches = lm.decoder.step(tokens[:, pos], pos, caches)
        assert torch.allclose(lp, full[:, pos], atol=1e-5), pos


def _bigram_step(table: torch.Tensor):
    """A decoder stand-in: next-unit log-probs depend on the last input only (rows of `table`)."""
    return lambda tokens, utts: table[tokens[:, -1]]


def test_beam_search_is_exact_when_the_beam_holds_every_sequence():
    # Units 1, 2; blank 0 and sos 3 never output; eos 4. At most 3 units: 1 + 2 + 4 + 8 = 15 sequences.
    g = torch.Generator().manual_seed(3)
    table = torch.randn(5, 5, generator=g)
    table[:, [0, 3]] = -math.inf
    table = table.log_softmax(-1)
    sos, eos = 3, 4

    def logp(seq: tuple[int, ...]) -> float:
        prev, total = sos, 0.0
        for u in (*seq, eos):
            total, prev = total + float(table[prev, u]), u
        return total

    every = [s for n in range(4) for s in itertools.product((1, 2), repeat=n)]
    for length_norm in (False, True):
        nbest = beam_search(_bigram_step(table), [3], sos, eos, beam=15, length_norm=length_norm)[0]
        assert sorted(tuple(h.tokens) for h in nbest) == sorted(every)
        for h in nbest:
            assert h.am == pytest.approx(logp(tuple(h.tokens)), abs=1e-5)
            assert h.score == pytest.approx(h.am / (len(h.tokens) + 1) if length_norm else h.am, abs=1e-6)
        assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)
    # Beam 1 is greedy decoding: the best next unit at every step, until eos (or eos forced at the limit).
    seq, prev = [], sos
    while len(seq) < 3 and int(table[prev].argmax()) != eos:
        prev = int(table[prev].argmax())
        seq.append(prev)
    assert beam_search(_bigram_step(table), [3], sos, eos, beam=1, length_norm=False)[0][0].tokens == seq


@torch.no_grad()
def test_beam_scores_and_sentence_posterior():
    m = _model()
    b = _batch([[1], [1]], [80, 52])
    _, lengths, hidden = m(b.feats, b.n_frames, with_hidden=True)
    nbests = m.beam_search(1, hidden[1], lengths, beam=4, max_len_ratio=0.3)
    for i, nb in enumerate(nbests):
        assert 1 <= len(nb) <= 4 and all(len(h.tokens) <= math.ceil(0.3 * int(lengths[i])) for h in nb)
        for h in nb:  # a hypothesis' score is its decoder log-probability, units and eos
            lp = m.decoder_log_probs(1, torch.tensor([[sos_id(V)] + h.tokens]), hidden[1][i: i + 1], lengths[i: i + 1])
            assert h.am == pytest.approx(float(lp[0].gather(1, torch.tensor([h.tokens + [eos_id(V)]]).T).sum()),
                                         abs=1e-4)
        s = [h.logp for h in nb]
        assert sentence_posterior(nb) == pytest.approx(math.exp(s[0]) / sum(math.exp(x) for x in s), rel=1e-9)
    # Eq. 6 by hand: scores -1, -2, -3 -> e^-1 / (e^-1 + e^-2 + e^-3) = 0.66524...
    hyps = [Hypothesis([k], -k, -k, -k) for k in (1.0, 2.0, 3.0)]
    assert sentence_posterior(hyps) == pytest.approx(0.6652409557748219)
    # The output need not have the highest log-score (length normalization, the LM): its own posterior is reported.
    assert sentence_posterior(hyps[::-1]) == pytest.approx(math.exp(-3) / (math.exp(-1) + math.exp(-2) + math.exp(-3)))
    assert sentence_posterior([]) == 0.0


def test_rescoring_reranks_by_am_plus_weighted_lm():
    nbest = [Hypothesis([1, 2], -2.0, -2.0, -2.0 / 3), Hypothesis([3], -2.5, -2.5, -2.5 / 2)]
    out = rescore(nbest, [-9.0, -1.0], 0.5)
    assert [h.tokens for h in out] == [[3], [1, 2]]
    assert (out[0].lm, out[0].logp, out[0].score) == (-1.0, -3.0, -1.5)
    assert rescore(nbest, [-9.0, -1.0], 0.0)[0].tokens == [1, 2]


def test_decoder_io():
    inp, out = decoder_io([[5, 6], [7]], sos=20, eos=21)
    assert inp.tolist() == [[20, 5, 6], [20, 7, 21]]
    assert out.tolist() == [[5, 6, 21], [7, 21, -100]]


def test_recipes_build():
    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "aed.yaml")
    cfg.model.vocab_size = 257
    m = build_model(cfg.model)
    assert isinstance(m, EarlyExitConformerAED) and len(m.decoders) == len(cfg.model.exits) == 6
    assert len(m.decoders[0].layers) == 4 and m.decoders[0].out.out_features == 257 + 2
    lm = load_lm_config(Path(__file__).resolve().parent.parent / "configs" / "lm.yaml")
    assert lm.vocab == cfg.data.vocab


def test_aed_fine_tunes_a_trained_conformer_ctc_with_fresh_decoders():
    """configs/aed.yaml starts from the trained default Conformer-CTC: encoder and CTC heads load, decoders stay
    fresh, and until training moves them the CTC exits are the Conformer's."""
    aed = _model()
    torch.manual_seed(3)
    base_cfg = config_from_dict({"model": {**TINY, "encoder": "conformer", "d_model": 32, "ff_dim": 64,
                                           "conv_kernel": 5, "vocab_size": V}}).model
    base = build_model(base_cfg).eval()
    assert init_model_config(aed.cfg, base_cfg) == dataclasses.replace(aed.cfg, vocab_size=V)
    fresh = {k: v.clone() for k, v in aed.state_dict().items() if k.startswith("decoders.")}
    missing, unexpected = aed.load_base_state(base.state_dict())
    assert sorted(missing) == sorted(fresh) and fresh and unexpected == []
    assert all(torch.equal(v, fresh[k] if k in fresh else base.state_dict()[k]) for k, v in aed.state_dict().items())
    b = _batch([[1, 2]], [40])
    with torch.no_grad():
        for a, c in zip(aed(b.feats, b.n_frames)[0], base(b.feats, b.n_frames)[0]):
            assert torch.equal(a, c)
    with pytest.raises(ValueError, match="blocks.1"):  # an encoder weight missing is an error, nothing loaded
        aed.load_base_state({k: v for k, v in base.state_dict().items() if not k.startswith("blocks.1.")})
    with pytest.raises(ValueError, match="transformer"):
        init_model_config(aed.cfg, dataclasses.replace(base_cfg, encoder="transformer"))


# --- real training on a handful of utterances -------------------------------------------------------------------

@pytest.fixture(scope="module")
def handful(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six training utterances (scored as they are: the split is "train"), and one of them again as the dev split
    (the trainer scores dev after every epoch, here every step: one is enough)."""
    utts = [u for u in read_manifest(tiny_corpus / "manifest.jsonl") if u.split == "train"][:6]
    dev = [type(u)(**{**u.__dict__, "id": u.id + "-dev", "split": "dev"}) for u in utts[:1]]
    out = tmp_path_factory.mktemp("handful-aed")
    write_manifest(out / "manifest.jsonl", utts + dev)
    return out


@pytest.fixture(scope="module")
def runs(handful: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny AED trained by `fit` and a tiny LM trained by `train_lm` on the handful (tokenizer trained by each)."""
    tmp = tmp_path_factory.mktemp("aed-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EEASR_CACHE", str(tmp / "cache"))
        cfg = config_from_dict({
            "out": str(tmp / "aed"), "save_every_steps": 1000, "log_every_steps": 10, "model": TINY,
            "data": {"corpus": str(handful), "copies": 1, "vocab": 48, "max_batch_frames": 8000,
                     "spec_freq_masks": 0, "spec_time_masks": 0},
            "optim": {"lr": 5e-3, "warmup_steps": 10, "max_steps": 120, "average_last": 1}})
        aed = fit(cfg, compile_model=False, progress=False)
    lm = train_lm(LMConfig(out=str(tmp / "lm"), corpus=str(handful), vocab=48, d_model=32, n_heads=2, ff_dim=64,
                           n_layers=1, dropout=0.0, lr=1e-2, warmup_steps=5, max_steps=80, batch_tokens=400),
                  progress=False)
    return aed, lm


def test_tiny_aed_overfits_and_decodes_through_eval_aed(runs: tuple[Path, Path], handful: Path, tmp_path: Path):
    aed, lm_run = runs
    ck = load_checkpoint(aed)
    assert isinstance(ck.model, EarlyExitConformerAED)
    lm = load_lm(lm_run)
    # Trained separately from the same texts and vocab, the LM's tokenizer is the AED run's, byte for byte.
    assert lm.tokenizer.sha256 == ck.tokenizer.sha256
    utts = [u for u in read_manifest(handful / "manifest.jsonl") if u.split == "train"]
    results, skipped = evaluate_aed(ck, utts, beam=4, lm=lm, lm_weight=0.3, progress=False)
    refs = [u.text for u in utts]
    assert not skipped
    assert wer(refs, aed_texts(results, 1, "beam")) == 0.0, aed_texts(results, 1, "beam")
    assert wer(refs, aed_texts(results, 1, "beam_lm")) == 0.0
    for w in (w for r in results for w in r.windows):
        assert len(w.greedy) == len(w.beam) == len(w.beam_lm) == 2
        assert all(0.0 < p <= 1.0 for p in w.measures["posterior"] + w.measures["posterior_lm"])

    out = tmp_path / "aed.md"
    res = CliRunner().invoke(cli, ["eval-aed", str(aed), "--lm", str(lm_run), "--ctc", str(aed), "--split", "train",
                                   "--manifest", str(handful / "manifest.jsonl"), "--beam", "4", "--out", str(out),
                                   "--sweep", str(tmp_path / "sweep")])
    assert res.exit_code == 0, res.output
    table = out.read_text()
    assert "attention + LM WER %" in table and "CTC model: beam WER %" in table
    rows = [line for line in table.splitlines() if line.startswith("| 1 (2)") or line.startswith("| 2 (4)")]
    assert len(rows) == 2 and rows[1].split("|")[3].strip() == "0.0"
    # Exit selection by the attention N-best posterior: at the lowest observed value every window answers at exit 1,
    # with that exit's attention beam text.
    sweep = list(csv.DictReader((tmp_path / "sweep" / "sweep.csv").open()))
    post = [r for r in sweep if r["measure"] == "posterior"]
    assert {r["measure"] for r in sweep} == {"entropy", "nonblank_entropy", "posterior"} and post
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 0
    lowest = min(post, key=lambda r: float(r["threshold"]))
    assert float(lowest["avg_exit_layer"]) == 2.0
    assert float(lowest["wer"]) == pytest.approx(wer(refs, aed_texts(results, 0, "beam")))


def test_lm_trains_down_and_rescoring_prefers_what_it_learned(runs: tuple[Path, Path], handful: Path):
    _, lm_run = runs
    lm = load_lm(lm_run)
    texts = [u.text for u in read_manifest(handful / "manifest.jsonl") if u.split == "train"]
    seqs = [lm.tokenizer.encode(t) for t in texts]
    torch.manual_seed(0)
    assert perplexity(lm.model, seqs) < 0.2 * perplexity(LanguageModel(lm.tokenizer.vocab_size, lm.cfg).eval(), seqs)
    losses = [float(r["loss"]) for r in csv.DictReader((lm_run / "train_log.csv").open()) if r["loss"]]
    assert losses[-1] < 0.5 * losses[0]
    # A training sentence vs the same words in reverse order: the AM slightly prefers the reversed one.
    words = texts[0].split()
    right, wrong = seqs[0], lm.tokenizer.encode(" ".join(reversed(words)))
    nbest = [Hypothesis(wrong, -5.0, -5.0, -5.0 / (len(wrong) + 1)),
             Hypothesis(right, -5.5, -5.5, -5.5 / (len(right) + 1))]
    assert rescore(nbest, [0.0, 0.0], lm_weight=0.5)[0].tokens == wrong
    lm_right, lm_wrong = lm.model.score([right, wrong])
    assert lm_right > lm_wrong + 2.0
    out = rescore(nbest, [lm_wrong, lm_right], lm_weight=0.5)
    assert out[0].tokens == right
    assert lm.tokenizer.decode(out[0].tokens) == texts[0]


def test_lm_resumes_to_the_state_of_an_uninterrupted_run(handful: Path, tmp_path: Path):
    cfg = LMConfig(corpus=str(handful), vocab=48, d_model=32, n_heads=2, ff_dim=64, n_layers=1, dropout=0.1,
                   warmup_steps=2, max_steps=7, batch_tokens=60, log_every_steps=1)
    straight = train_lm(cfg, tmp_path / "a", progress=False)
    train_lm(cfg, tmp_path / "b", progress=False, stop_after_steps=4)
    resumed = train_lm(cfg, tmp_path / "b", progress=False)
    a, b = (torch.load(r / "lm.pt", weights_only=True) for r in (straight, resumed))
    assert a["meta"]["epochs"] == 1 and a["meta"]["steps"] == 7  # stopped inside epoch 0, resumed across its end
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
