"""Deploying a Conformer-AED (issue 6): device exits answer with their CTC heads, the server finishes a handoff with
the last exit's attention decoder and an LM. The exported ONNX decoder and LM against torch, the numpy beam search
(eeasr/aed_decode.py) against train/aed.py's on the same model, and a bundle converted by the real `eeasr-convert`
answering handoffs through host/server.py's Suffix and the real `eeasr-host serve`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from eeasr.aed_decode import AttentionDecoder, DecoderModel, LMModel, rescore, sentence_posterior  # noqa: E402
from eeasr.bundle import Bundle, dequantize, load_bundle  # noqa: E402
from eeasr.convert.aed_server import export_decoder, export_lm  # noqa: E402
from eeasr.exits import frame_entropy, greedy_ctc  # noqa: E402
from eeasr.host.server import Suffix  # noqa: E402
from eeasr.protocol import Handoff, Measure, pack_frame  # noqa: E402
from eeasr.server_model import SERVER_OUTPUT_MEMORY, ServerModel, output_name  # noqa: E402
from eeasr.tokenizer import eos_id, sos_id  # noqa: E402
from eeasr.train.aed import EarlyExitConformerAED  # noqa: E402
from eeasr.train.config import config_from_dict  # noqa: E402
from eeasr.train.lm import LanguageModel, LMConfig, load_lm  # noqa: E402
from eeasr.train.model import build_model, valid_mask  # noqa: E402

V = 20  # CTC units of the in-test models (blank + 19); decoder ids add sos = 20 and eos = 21
TOKEN = "aed-test-token"


@pytest.fixture(scope="module")
def model() -> EarlyExitConformerAED:
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"encoder": "conformer-aed", "d_model": 32, "n_heads": 2, "ff_dim": 64,
                                      "n_layers": 4, "exits": [2, 4], "conv_kernel": 5, "dropout": 0.0,
                                      "vocab_size": V, "aed": {"decoder_layers": 2, "decoder_heads": 2,
                                                               "decoder_ff": 64}}}).model
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def encoded(model: EarlyExitConformerAED) -> tuple[torch.Tensor, torch.Tensor]:
    """The last exit's encoder output [3, T, d] for three windows of different valid lengths."""
    frames = [80, 52, 29]
    feats = torch.randn(3, max(frames), 80, generator=torch.Generator().manual_seed(1))
    for i, n in enumerate(frames):
        feats[i, n:] = 0.0
    with torch.no_grad():
        hidden, lengths = model.encode(feats, torch.tensor(frames))
    return hidden[-1], lengths


@pytest.fixture(scope="module")
def onnx_decoder(model: EarlyExitConformerAED) -> DecoderModel:
    return DecoderModel(*export_decoder(model.decoders[1]))


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    torch.manual_seed(2)
    return LanguageModel(V, LMConfig(d_model=32, n_heads=2, ff_dim=64, n_layers=2, dropout=0.0)).eval()


def test_onnx_decoder_step_equals_torch_decoder(model: EarlyExitConformerAED, encoded, onnx_decoder: DecoderModel):
    hidden, lengths = encoded
    u, group, steps = len(lengths), 4, 7
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(1, V, (u * group, steps), generator=g)
    tokens[:, 0] = sos_id(V)
    rows_mem, rows_len = hidden.repeat_interleave(group, 0), lengths.repeat_interleave(group)
    with torch.no_grad():  # the whole prefix at once, every row with its own copy of its utterance's memory
        ref = model.decoder_log_probs(1, tokens, rows_mem, rows_len).numpy()
    # Garbage in the padded frames: the ONNX decoder must mask them out as torch does.
    noisy = hidden.numpy().copy()
    for i, n in enumerate(lengths.tolist()):
        noisy[i, n:] = 1e3
    cross, kv = onnx_decoder.cross(noisy), onnx_decoder.empty_cache(u * group)
    for pos in range(steps):  # one position at a time, the group of rows per utterance sharing its memory
        lp, kv = onnx_decoder.run_step(tokens[:, pos].numpy(), pos, kv, cross, lengths.numpy())
        assert kv.shape == (u * group, 2, 2, 2, pos + 1, 16)
        assert np.array_equal(np.isinf(lp), np.isinf(ref[:, pos]))
        assert np.isinf(lp[:, [0, sos_id(V)]]).all()  # blank and sos are never predicted
        fin = np.isfinite(lp)
        assert np.abs(lp[fin] - ref[:, pos][fin]).max() < 1e-4, pos


@pytest.mark.parametrize("length_norm", [True, False])
def test_numpy_beam_search_equals_torch(model: EarlyExitConformerAED, encoded, onnx_decoder: DecoderModel,
                                        length_norm: bool):
    hidden, lengths = encoded  # 20, 13 and 8 valid frames: at ratio 0.6 the utterances stop at different steps
    ref = model.beam_search(1, hidden, lengths, beam=4, length_norm=length_norm, max_len_ratio=0.6)
    got = onnx_decoder.nbest(hidden.numpy(), lengths.numpy(), sos_id(V), eos_id(V), beam=4,
                             length_norm=length_norm, max_len_ratio=0.6)
    assert len(got) == len(ref) == 3
    for r, n in zip(ref, got):
        assert [h.tokens for h in n] == [h.tokens for h in r] and len(n) == 4
        assert np.allclose([h.am for h in n], [h.am for h in r], atol=1e-4)
        assert np.allclose([h.score for h in n], [h.score for h in r], atol=1e-4)
    assert len({len(nb[0].tokens) for nb in got}) > 1  # different lengths: the batch shrank during the search


def test_lm_scores_and_rescoring_equal_torch(model: EarlyExitConformerAED, encoded, onnx_decoder: DecoderModel,
                                             lm: LanguageModel):
    onnx_lm = LMModel(export_lm(lm), V)
    g = np.random.default_rng(4)
    seqs = [g.integers(1, V, n).tolist() for n in (0, 1, 5, 12, 3)]
    assert np.allclose(onnx_lm.score(seqs), lm.score(seqs), atol=1e-4)

    hidden, lengths = encoded
    decoder = AttentionDecoder(onnx_decoder, V, beam=4, max_len_ratio=0.6, lm=onnx_lm, lm_weight=0.7)
    assert decoder.name == "attention+lm"
    got = decoder.decode(hidden.numpy(), lengths.numpy())
    for nb, ans in zip(model.beam_search(1, hidden, lengths, beam=4, max_len_ratio=0.6), got):
        want = rescore(nb, lm.score([h.tokens for h in nb]), 0.7)  # the torch pipeline of train/aed.py
        assert [h.tokens for h in ans.nbest] == [h.tokens for h in want] and ans.tokens == want[0].tokens
        assert np.allclose([h.lm for h in ans.nbest], [h.lm for h in want], atol=1e-4)
        assert ans.posterior == pytest.approx(sentence_posterior(want), rel=1e-3)
        assert 0.0 < ans.posterior <= 1.0


# --- a converted bundle on the server ------------------------------------------------------------------------------

def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


@pytest.fixture(scope="module")
def aed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A random Conformer-AED model directory (as `eeasr-train export` lays one out) and an LM trained briefly by
    `train_lm` on the model's calibration sentences with its tokenizer."""
    from eeasr.convert.random_model import SENTENCES, write_random_model
    from eeasr.manifest import Utterance, write_manifest
    from eeasr.train.lm import train_lm

    tmp = tmp_path_factory.mktemp("aed-deploy")
    write_random_model(tmp / "aed", d_model=32, n_heads=2, ff_dim=64, n_layers=4, exits=[1, 2, 3, 4], conv_kernel=5,
                       vocab=32, window=64, n_calibration=12, seed=1, encoder="conformer-aed",
                       aed={"decoder_layers": 2, "decoder_heads": 2, "decoder_ff": 64})
    # The LM reads transcripts only: a text manifest (no audio) of the training split.
    write_manifest(tmp / "texts.jsonl", [Utterance(f"s{i}", tmp / f"s{i}.wav", s, 1.0, "text", "text", "train")
                                         for i, s in enumerate(SENTENCES)])
    lm_run = train_lm(LMConfig(out=str(tmp / "lm"), corpus=str(tmp / "texts.jsonl"), tokenizer=str(tmp / "aed"),
                               d_model=32, n_heads=2, ff_dim=64, n_layers=1, dropout=0.0, lr=1e-2, warmup_steps=5,
                               max_steps=40, batch_tokens=400), progress=False)
    return tmp / "aed", lm_run


@pytest.fixture(scope="module")
def aed_bundle(aed_run: tuple[Path, Path]) -> Bundle:
    ckpt, lm_run = aed_run
    out = ckpt.parent / "bundle"
    done = _run([str(Path(sys.executable).parent / "eeasr-convert"), str(ckpt), "--exits", "2", "--out", str(out),
                 "--calibration-windows", "8", "--beam", "4", "--lm", str(lm_run), "--lm-weight", "0.4"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "server decoder: exit 4 (layer 4) attention decoder" in done.stderr
    return load_bundle(out)


def _handoff(b: Bundle, t: int, seed: int) -> Handoff:
    q = b.handoff_qparams()
    hidden = np.random.default_rng(seed).integers(-128, 128, (t, b.manifest["model"]["d_model"]), dtype=np.int8)
    return Handoff(seed, 0, 0, b.manifest["device"]["handoff"]["layer"], b.model_hash[:16], q.scale, q.zero_point,
                   hidden)


def _torch_answer(ckpt: Path, lm_run: Path, b: Bundle, hidden: np.ndarray) -> tuple[list[int], float]:
    """What the trained-side code answers for a dequantized handoff [t, d]: torch layers after the handoff,
    train/aed.py's beam search with the last exit's decoder, the N-best rescored by the torch LM."""
    from eeasr.train.checkpoint import load_checkpoint

    m = load_checkpoint(ckpt).model
    dec = b.manifest["server"]["decoder"]
    x, lens = torch.from_numpy(hidden[None]), torch.tensor([len(hidden)])
    mask, bias = valid_mask(lens, len(hidden)), m.key_bias(lens, len(hidden)).to(x)
    with torch.no_grad():
        for block in m.blocks[b.manifest["server"]["after_layer"]: m.cfg.exits[-1]]:
            x = block(x, mask, bias)
    (nb,) = m.beam_search(len(m.cfg.exits) - 1, x, lens, dec["beam"])
    best = rescore(nb, load_lm(lm_run).model.score([h.tokens for h in nb]), dec["lm"]["weight"])
    return best[0].tokens, sentence_posterior(best)


def test_aed_bundle_records_the_decoder_and_lm(aed_bundle: Bundle):
    m = aed_bundle.manifest
    server, dec = m["server"], m["server"]["decoder"]
    v = m["tokenizer"]["vocab_size"]
    assert (dec["exit"], dec["layer"], dec["sos"], dec["eos"], dec["vocab"]) == (4, 4, v, v + 1, v + 2)
    assert (dec["beam"], dec["length_norm"], dec["lm"]["weight"]) == (4, True, 0.4)
    assert server["outputs"][SERVER_OUTPUT_MEMORY]["kind"] == "hidden"
    for entry in (dec["init"], dec["step"], dec["lm"]):
        assert m["files"][entry["file"]] == entry["sha256"]
    assert dec["check"]["vs_torch_max_abs_logp"] < 2e-3 and dec["lm"]["check"]["vs_torch_max_abs_logp"] < 2e-3
    assert dec["check"]["beam_best_agree_vs_torch"] == 1.0
    # The device side is the Conformer-CTC's: segments with CTC exits only.
    assert [s["exit"]["layer"] for s in m["device"]["segments"]] == [1, 2]


def test_handoff_is_answered_by_the_attention_decoder(aed_run: tuple[Path, Path], aed_bundle: Bundle):
    suffix = Suffix(aed_bundle)
    assert suffix.decoder_name == suffix.health()["decoder"] == "attention+lm"
    q = aed_bundle.handoff_qparams()
    hiddens = [dequantize(_handoff(aed_bundle, t, seed=i).hidden, q) for i, t in enumerate([16, 5, 0, 11])]
    batched = suffix.run_batch(hiddens)
    for h, d in zip(hiddens, batched):
        assert d.decoder == "attention+lm" and d.measure == Measure.NBEST_POSTERIOR
        if not len(h):
            assert (d.tokens, d.text, d.confidence) == ([], "", 1.0)
            continue
        tokens, posterior = _torch_answer(*aed_run, aed_bundle, h)
        assert d.tokens == tokens and d.text == suffix.tokenizer.decode(tokens)
        assert d.confidence == pytest.approx(posterior, rel=1e-3)
        (alone,) = suffix.run_batch([h])  # the batch does not change the answer
        assert alone.tokens == d.tokens and alone.confidence == pytest.approx(d.confidence, rel=1e-4)
    assert all(d.tokens for d, h in zip(batched, hiddens) if len(h))
    assert any(d.tokens != greedy_ctc(d.logp) for d in batched)  # not the CTC head's answer
    # The same through the real server, over HTTP.
    from eeasr.host.server_client import start_local_server

    with start_local_server(aed_bundle.path, TOKEN) as server, server.client(timeout=30) as client:
        assert client.health()["decoder"] == "attention+lm"
        h = _handoff(aed_bundle, 16, seed=0)
        got = client.handoff(pack_frame(h, seq=1))
        assert (got["decoder"], got["measure"], got["exit"]) == ("attention+lm", int(Measure.NBEST_POSTERIOR), 4)
        assert got["tokens"] == batched[0].tokens and got["text"] == batched[0].text


def test_ctc_bundle_keeps_greedy_ctc(small_bundle: Path):
    b = load_bundle(small_bundle)
    assert b.manifest["server"].get("decoder") is None
    assert AttentionDecoder.from_bundle(b) is None and SERVER_OUTPUT_MEMORY not in b.manifest["server"]["outputs"]
    suffix = Suffix(b)
    assert suffix.decoder_name == suffix.health()["decoder"] == "ctc"
    h = dequantize(_handoff(b, 12, seed=5).hidden, b.handoff_qparams())
    (d,) = suffix.run_batch([h])
    last = b.manifest["exits"][-1]["index"]
    logp = ServerModel.from_bundle(b)(h[None], np.array([len(h)]))[output_name(last)][0]
    assert (d.decoder, d.measure) == ("ctc", Measure.FRAME_ENTROPY)
    assert d.tokens == greedy_ctc(logp) and d.confidence == pytest.approx(frame_entropy(logp), rel=1e-5)


def test_the_stream_shows_and_logs_which_decoder_answered(aed_bundle: Bundle):
    """`eeasr-host stream`'s session: a handed-off window goes through the real uplink to the real server; the
    live line and the JSONL log say the server answered with the attention decoder and the LM."""
    import io
    import json
    import time

    from eeasr.host.live import LiveView
    from eeasr.host.server_client import start_local_server
    from eeasr.host.session import Session
    from eeasr.host.uplink import Uplink
    from eeasr.protocol import Result, ResultFlag

    screen, log = io.StringIO(), io.StringIO()
    session = Session(aed_bundle, LiveView(out=screen, tty=False), log, {})
    h = _handoff(aed_bundle, 16, seed=0)
    with start_local_server(aed_bundle.path, TOKEN) as server, server.client(timeout=60) as client:
        session.uplink = Uplink(client)
        u = session.new_utt()
        session.on_device(Result(h.utt_id, 0, ResultFlag.FINAL | ResultFlag.HANDED_OFF, 2, 2, Measure.FRAME_ENTROPY,
                                 3.0, [5]), u)
        session.on_device(h, u)
        deadline = time.monotonic() + 120
        while not u.answered and time.monotonic() < deadline:
            session.drain_outcomes()
            time.sleep(0.05)
        session.finish()
    assert u.answered and u.ended_on == "server"
    assert "utt 0 win 0  server exit 4 (layer 4, attention+lm)  conf " in screen.getvalue()
    records = [json.loads(x) for x in log.getvalue().splitlines()]
    assert [(r["source"], r["status"], r["decoder"]) for r in records] == [("device", "handed_off", "ctc"),
                                                                         ("server", "server", "attention+lm")]


def test_aed_server_cost_bench(aed_bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """bench/aed_server_cost.py on two demo utterances: every decoder the bundle has, timed per window, with
    its tokens and WER."""
    import csv
    import importlib.util

    bench_dir = Path(__file__).parent.parent / "bench"
    monkeypatch.syspath_prepend(str(bench_dir))       # as when run as a script: its sibling modules import
    spec = importlib.util.spec_from_file_location("aed_server_cost", bench_dir / "aed_server_cost.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    demo = Path(__file__).parent.parent / "assets" / "demo" / "manifest.jsonl"
    rows = bench.main(["--bundle", str(aed_bundle.path), "--manifest", str(demo), "--n", "2", "--out",
                       str(tmp_path), "--no-progress"])
    assert [r["decoder"] for r in rows] == ["ctc", "attention", "attention+lm"]
    assert len({r["windows"] for r in rows}) == 1 and rows[0]["windows"] > 0
    assert len({(r["encoder_p50_ms"], r["encoder_p95_ms"]) for r in rows}) == 1   # one encoder pass, shared
    for r in rows:
        assert 0 <= r["decode_p50_ms"] <= r["decode_p95_ms"] and r["total_p50_ms"] >= r["decode_p50_ms"]
        assert r["tokens_per_window"] >= 0 and r["wer"] is not None
    ctc, att, _ = rows
    assert att["decode_p50_ms"] > ctc["decode_p50_ms"]      # a beam search against one argmax per frame
    assert [r["decoder"] for r in csv.DictReader((tmp_path / "aed_server_cost.csv").open())] == [
        "ctc", "attention", "attention+lm"]
    text = (tmp_path / "aed_server_cost.md").read_text()
    assert "| attention+lm | " in text and "2 of the 11 test utterances" in text
