"""I3D and its Transformer baselines (train/i3d.py, train/prune.py): gates, utility loss, real skipping,
initialization from a Transformer, masking, LayerDrop pruning, recipes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eeasr.features import NormStats
from eeasr.tokenizer import Tokenizer
from eeasr.train.config import I3DConfig, ModelConfig, config_from_dict, load_config
from eeasr.train.data.cache import FeatureSet
from eeasr.train.dataset import Batch, Utterances
from eeasr.train.i3d import (FFN, MHA, I3DTransformer, TransformerCTC, module_macs,
                             utility_loss)
from eeasr.train.model import ENCODERS, build_model, init_model_config
from eeasr.train.prune import prune_path, pruned
from eeasr.train.trainer import evaluate_greedy

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
VOCAB = 24


def _cfg(encoder: str = "i3d", n_layers: int = 3, inter: tuple[int, ...] = (), **i3d: object) -> ModelConfig:
    return ModelConfig(encoder=encoder, d_model=32, n_heads=2, ff_dim=64, n_layers=n_layers,
                       exits=[*inter, n_layers], dropout=0.0, vocab_size=VOCAB,
                       i3d=I3DConfig(inter_ctc=list(inter), **i3d))


def _inputs(lengths: tuple[int, ...] = (80, 61, 33), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = torch.tensor(lengths)
    feats = torch.randn(len(lengths), max(lengths), 80, generator=g)
    return feats * (torch.arange(max(lengths))[None, :, None] < n[:, None, None]), n


def _batch(feats: torch.Tensor, n: torch.Tensor) -> Batch:
    tl = torch.full((len(n),), 3)
    return Batch(feats, n, torch.randint(1, VOCAB, (int(tl.sum()),), generator=torch.Generator().manual_seed(1)), tl,
                 [""] * len(n), [str(i) for i in range(len(n))])


def test_families_are_registered_in_the_one_registry():
    assert ENCODERS["transformer"] is TransformerCTC and ENCODERS["i3d"] is I3DTransformer
    assert isinstance(build_model(_cfg(predictor="global")), I3DTransformer)


@pytest.mark.parametrize("predictor", ["local", "global"])
def test_beta_0_runs_every_module_and_beta_1_none(predictor: str):
    torch.manual_seed(0)
    m = I3DTransformer(_cfg(predictor=predictor)).eval()
    feats, n = _inputs()
    with torch.no_grad():
        every = m.gated(feats, n, beta=0.0)
        none = m.gated(feats, n, beta=1.0)
        x, lengths = m.front(feats, n)
        head_only = F.log_softmax(m.exits[-1](x), dim=-1)
    assert every.gates.shape == (3, 3, 2) and every.gates.all()
    assert every.modules_run.tolist() == [6, 6, 6] and every.layers_run.tolist() == [3.0, 3.0, 3.0]
    assert none.modules_run.tolist() == [0, 0, 0] and not none.gates.any()
    # Nothing ran: the exit reads the front's output.
    assert torch.equal(none.logps[-1], head_only) and torch.equal(none.lengths, lengths)
    assert ((every.probs > 0) & (every.probs < 1)).all()


def test_utility_loss_is_eq6_and_its_cost_weighted_variant():
    gates = torch.tensor([[[1.0, 0.0], [0.5, 1.0]],    # (MHA, FFN) of 2 layers: Eq. 6 = 2.5 / 4
                          [[0.0, 0.0], [0.0, 1.0]]])   # 1 / 4
    assert utility_loss(gates).item() == pytest.approx((2.5 / 4 + 1 / 4) / 2)
    cfg = ModelConfig(d_model=4, ff_dim=8, n_layers=2)
    costs = module_macs(torch.tensor([3, 5]), cfg)
    # T=3: MHA 4*3*16 + 2*9*4 = 264, FFN 2*3*4*8 = 192; T=5: MHA 320 + 200 = 520, FFN 320.
    assert costs.tolist() == [[[264, 192], [264, 192]], [[520, 320], [520, 320]]]
    expected = ((264 + 0.5 * 264 + 192) / (2 * 264 + 2 * 192) + 320 / (2 * 520 + 2 * 320)) / 2
    assert utility_loss(gates, costs).item() == pytest.approx(expected)
    # Equal costs reduce to Eq. 6.
    assert utility_loss(gates, torch.ones_like(gates)).item() == pytest.approx(utility_loss(gates).item())


@pytest.mark.parametrize("cost_weighted", [False, True])
def test_loss_terms_add_lambda_times_the_utility_of_the_soft_gates(cost_weighted: bool):
    torch.manual_seed(0)
    m = I3DTransformer(_cfg(inter=(1,), lam=0.7, cost_weighted=cost_weighted)).train()
    feats, n = _inputs()
    seen = []

    def fwd(*args, **kwargs):
        seen.append(m(*args, **kwargs))
        return seen[-1]

    terms = m.loss_terms(fwd, feats, n, _batch(feats, n), [1.0, 1.0])
    assert list(terms) == m.loss_names() == ["ctc", "inter_ctc", "utility"]
    logps, lengths, gates = seen[0]
    assert ((gates > 0) & (gates < 1)).all() and gates.shape == (3, 3, 2)  # soft Gumbel-softmax samples
    costs = module_macs(lengths, m.cfg) if cost_weighted else None
    assert terms["utility"].item() == pytest.approx(0.7 * utility_loss(gates, costs).item())


@pytest.mark.parametrize("predictor", ["local", "global"])
def test_gradients_reach_the_gate_predictors_through_the_gumbel_gates(predictor: str):
    torch.manual_seed(0)
    # lam = 0: the only path from the loss to the predictors is through the gates in Eq. 3-4.
    m = I3DTransformer(_cfg(predictor=predictor, lam=0.0)).train()
    feats, n = _inputs()
    terms = m.loss_terms(m, feats, n, _batch(feats, n), [1.0])
    sum(terms.values()).backward()
    for name, p in m.gate_predictors.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_i3d_initializes_from_a_transformer_with_fresh_gate_predictors():
    torch.manual_seed(0)
    t = TransformerCTC(_cfg("transformer")).eval()
    recipe = ModelConfig(encoder="i3d", d_model=16, n_heads=4, ff_dim=16, n_layers=7, exits=[3], vocab_size=0,
                         dropout=0.0, i3d=I3DConfig(predictor="global", lam=0.3))
    cfg = init_model_config(recipe, t.cfg)
    assert (cfg.encoder, cfg.d_model, cfg.n_heads, cfg.ff_dim, cfg.n_layers, cfg.vocab_size) == \
        ("i3d", 32, 2, 64, 3, VOCAB)
    assert cfg.i3d == recipe.i3d
    i3d = I3DTransformer(cfg).eval()
    fresh = {k: v.clone() for k, v in i3d.state_dict().items() if k.startswith("gate_predictors.")}
    missing, unexpected = i3d.load_base_state(t.state_dict())
    assert sorted(missing) == sorted(fresh) and fresh and unexpected == []
    for k, v in i3d.state_dict().items():
        assert torch.equal(v, fresh[k] if k in fresh else t.state_dict()[k]), k
    # Every gate open, I3D is the Transformer it came from.
    feats, n = _inputs()
    with torch.no_grad():
        assert torch.allclose(i3d.gated(feats, n, beta=0.0).logps[-1], t(feats, n)[0][-1], atol=1e-6)
    # Anything but gate predictors missing is an error, raised before anything is loaded.
    partial = {k: v * 0 for k, v in t.state_dict().items() if not k.startswith("layers.1.ffn")}
    with pytest.raises(ValueError, match="layers.1.ffn"):
        i3d.load_base_state(partial)
    assert torch.equal(i3d.layers[0].attn.q.weight, t.layers[0].attn.q.weight)
    with pytest.raises(ValueError, match="conformer"):
        init_model_config(recipe, ModelConfig())


def test_closed_modules_are_not_called_and_rows_match_single_utterances():
    torch.manual_seed(0)
    m = I3DTransformer(_cfg(predictor="global", n_layers=4)).eval()
    feats, n = _inputs((80, 70, 61, 45, 33))
    rows: dict[tuple[int, int], list[int]] = {}
    for i, layer in enumerate(m.layers):
        for k, mod in ((MHA, layer.attn), (FFN, layer.ffn)):
            mod.register_forward_hook(lambda _m, args, _o, key=(i, k): rows.setdefault(key, []).append(len(args[0])))
    with torch.no_grad():
        beta = float(m.gated(feats, n, beta=0.0).probs.median())  # some rows open, some closed
        rows.clear()
        out = m.gated(feats, n, beta=beta)
    assert 0 < out.modules_run.sum() < out.gates.numel()
    for i in range(4):
        for k in (MHA, FFN):
            opened = int(out.gates[:, i, k].sum())
            assert rows.get((i, k), []) == ([opened] if opened else []), (i, k)
    assert sum(sum(v) for v in rows.values()) == int(out.modules_run.sum())
    # Running only the open rows of a batch gives each utterance what it gets alone.
    with torch.no_grad():
        for r in range(len(n)):
            alone = m.gated(feats[r:r + 1, : n[r]], n[r:r + 1], beta=beta)
            assert torch.equal(alone.gates[0], out.gates[r])
            t = int(out.lengths[r])
            assert torch.allclose(alone.logps[-1][0, :t], out.logps[-1][r, :t], atol=1e-5)


def test_local_predictors_steer_which_modules_run():
    m = I3DTransformer(_cfg(predictor="local")).eval()
    for gp in m.gate_predictors:  # p(execute) = sigmoid(4) for every MHA, sigmoid(-4) for every FFN
        torch.nn.init.zeros_(gp.out.weight)
        gp.out.bias.data = torch.tensor([0.0, 4.0, 0.0, -4.0])
    calls = {"attn": 0, "ffn": 0}
    for layer in m.layers:
        layer.attn.register_forward_hook(lambda *_: calls.__setitem__("attn", calls["attn"] + 1))
        layer.ffn.register_forward_hook(lambda *_: calls.__setitem__("ffn", calls["ffn"] + 1))
    feats, n = _inputs()
    with torch.no_grad():
        out = m(feats, n, return_gates=True)  # eval forward: binary gates at the model's beta (0.5)
    assert calls == {"attn": 3, "ffn": 0}
    assert out[2][..., MHA].all() and not out[2][..., FFN].any()
    assert torch.allclose(m.gated(feats, n).probs[..., MHA], torch.sigmoid(torch.tensor(4.0)))


@pytest.mark.parametrize("cfg", [_cfg("transformer", inter=(1, 2)), _cfg(predictor="local"),
                                 _cfg(predictor="global")], ids=["transformer", "i3d-local", "i3d-global"])
def test_padding_the_window_keeps_the_valid_outputs(cfg: ModelConfig):
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    feats, n = _inputs((57,))
    padded = torch.cat([feats, 10 * torch.randn(1, 43, 80)], dim=1)  # loud garbage past the valid frames
    kwargs = {"return_gates": True} if cfg.encoder == "i3d" else {}
    with torch.no_grad():
        a, b = m(feats, n, **kwargs), m(padded, n, **kwargs)
    t = int(a[1][0])
    assert len(a[0]) == len(cfg.exits)
    for la, lb in zip(a[0], b[0]):
        assert torch.allclose(la[0, :t], lb[0, :t], atol=1e-4)
    if cfg.encoder == "i3d":
        assert torch.equal(a[2], b[2])
        assert torch.allclose(m.gated(feats, n).probs, m.gated(padded, n).probs, atol=1e-6)


def test_layerdrop_drops_whole_layers_per_utterance_in_training_only():
    torch.manual_seed(0)
    m = TransformerCTC(_cfg("transformer", n_layers=4, layerdrop=0.5))
    feats, n = _inputs()
    with torch.no_grad():
        m.eval()
        full = m(feats, n)[0][-1]
        m.train()
        dropped = [m(feats, n)[0][-1] for _ in range(4)]
    assert not all(torch.allclose(d, full) for d in dropped)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(feats, n)[0][-1], full)
    # With every layer kept, a pruned copy is the same model.
    with torch.no_grad():
        assert torch.allclose(pruned(m, [1, 2, 3, 4])(feats, n)[0][0], full, atol=1e-6)


@pytest.fixture(scope="module")
def memorized(tmp_path_factory: pytest.TempPathFactory) -> tuple[TransformerCTC, Utterances, Tokenizer]:
    """A 4-layer LayerDrop + InterCTC Transformer that has half-memorized six random-feature 'utterances'."""
    texts = ["a cat sat", "dogs run", "big red hat", "go home now", "sun is up", "we ate"]
    tok = Tokenizer.train(texts * 4, tmp_path_factory.mktemp("tok") / "t.model", vocab_size=30)
    rng = np.random.default_rng(0)
    fs = FeatureSet([rng.standard_normal((int(rng.integers(90, 140)), 80)).astype(np.float16) for _ in texts],
                    [f"u{i}" for i in range(len(texts))], texts, [0] * len(texts))
    data = Utterances(fs, NormStats(np.zeros(80), np.ones(80)), tok, window=600)
    cfg = dataclasses.replace(_cfg("transformer", n_layers=4, inter=(2,), layerdrop=0.2),
                              vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = TransformerCTC(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = data.collate(list(range(len(texts))))
    model.train()
    for _ in range(80):  # half-learned: removing different layers costs differently
        loss = sum(model.loss_terms(model, batch.feats, batch.n_frames, batch, [1.0] * 2).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), data, tok


def test_iterative_pruning_removes_the_least_harmful_layer_each_step(memorized):
    model, data, tok = memorized
    path = prune_path(model, data, tok, max_frames=4000)
    assert [s.n_layers for s in path] == [4, 3, 2, 1]
    assert path[0].kept == [1, 2, 3, 4] and path[0].dev_wer < 50.0  # the full model has learned its data
    assert path[0].dev_wer == evaluate_greedy(model, data, tok, 4000, torch.device("cpu"))[-1]
    distinct = False
    for prev, step in zip(path, path[1:]):
        assert set(step.kept) < set(prev.kept) and step.kept == sorted(step.kept)
        # Greedy: no other single removal does better on the pruning set.
        others = [evaluate_greedy(pruned(model, [k for k in prev.kept if k != r]), data, tok, 4000,
                                  torch.device("cpu"))[0] for r in prev.kept]
        assert step.dev_wer == min(others)
        distinct |= len(set(others)) > 1
    assert distinct, "every removal scored the same: the check above decided nothing"
    model.eval()  # evaluate_greedy leaves the model it scores in training mode


def test_recipes_load_and_build():
    built = {}
    for name in ("transformer", "transformer-L4", "transformer-L8", "transformer-layerdrop", "i3d-lgp", "i3d-ggp",
                 "i3d-ggp-ictc"):
        cfg = load_config(CONFIGS / f"{name}.yaml")
        cfg.model.vocab_size = 257
        if cfg.model.encoder == "i3d":  # the shape comes from the Transformer run it starts from
            init = cfg.init.rsplit("/", 1)[1]
            assert init in ("transformer", "transformer-layerdrop")
            base = load_config(CONFIGS / f"{init}.yaml").model
            cfg.model = init_model_config(cfg.model, dataclasses.replace(base, vocab_size=257))
        built[name] = build_model(cfg.model)
    assert type(built["transformer"]) is TransformerCTC and len(built["transformer"].layers) == 12
    assert [len(built[f"transformer-L{n}"].layers) for n in (4, 8)] == [4, 8]
    assert built["transformer-layerdrop"].cfg.i3d.inter_ctc == [3, 6, 9]
    assert built["transformer-layerdrop"].cfg.i3d.layerdrop > 0
    assert built["i3d-lgp"].cfg.i3d.predictor == "local" and len(built["i3d-lgp"].gate_predictors) == 12
    assert built["i3d-ggp"].cfg.i3d.predictor == "global" and len(built["i3d-ggp"].gate_predictors) == 1
    # The i3d models hold the Transformer's weights plus the gate predictors, nothing else.
    assert built["i3d-ggp-ictc"].exit_layers == [3, 6, 9, 12]
    for name, base in (("i3d-lgp", "transformer"), ("i3d-ggp", "transformer"),
                       ("i3d-ggp-ictc", "transformer-layerdrop")):
        t_keys = set(built[base].state_dict())
        extra = set(built[name].state_dict()) - t_keys
        assert set(built[name].state_dict()) >= t_keys and all(k.startswith("gate_predictors.") for k in extra)


TINY = {"d_model": 32, "n_heads": 2, "ff_dim": 64, "n_layers": 3, "dropout": 0.0}


def _recipe(corpus: Path, out: Path, model: dict, **top: object):  # noqa: ANN202
    return config_from_dict({
        "out": str(out), "save_every_steps": 1000, "log_every_steps": 1, "model": model, **top,
        "data": {"corpus": str(corpus), "copies": 1, "vocab": 48, "max_batch_frames": 8000,
                 "spec_freq_masks": 0, "spec_time_masks": 0},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "max_steps": 3, "average_last": 1},
    })


@pytest.mark.slow
def test_an_i3d_run_fine_tunes_a_transformer_run(tiny_corpus: Path, tmp_path: Path, monkeypatch):
    """The real trainer: a Transformer run, an I3D run initialized from it, and the CLI's sweep and pruning."""
    from click.testing import CliRunner

    from eeasr.manifest import read_manifest, write_manifest
    from eeasr.train.checkpoint import load_checkpoint
    from eeasr.train.cli import main
    from eeasr.train.trainer import fit

    monkeypatch.setenv("EEASR_CACHE", str(tmp_path / "cache"))
    utts = [u for u in read_manifest(tiny_corpus / "manifest.jsonl") if u.split == "train"][:4]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_manifest(corpus / "manifest.jsonl", utts + [dataclasses.replace(u, id=f"{u.id}-{s}", split=s)
                                                      for s in ("dev", "test") for u in utts])
    base = fit(_recipe(corpus, tmp_path / "transformer", {**TINY, "encoder": "transformer", "exits": [1, 3],
                                                           "i3d": {"inter_ctc": [1]}}),
               compile_model=False, progress=False)
    # The recipe's own shape is overridden by the init run's; its family and gate settings are kept.
    run = fit(_recipe(corpus, tmp_path / "i3d", {"encoder": "i3d", "d_model": 8, "n_layers": 5, "exits": [1, 3],
                                                 "i3d": {"predictor": "global", "lam": 0.5, "inter_ctc": [1]}},
                      init=str(base)), compile_model=False, progress=False)
    ck, t = load_checkpoint(run), load_checkpoint(base)
    assert isinstance(ck.model, I3DTransformer) and ck.cfg.model.d_model == 32 and ck.cfg.model.n_layers == 3
    assert ck.cfg.model.i3d.lam == 0.5 and ck.tokenizer.sha256 == t.tokenizer.sha256
    header = (run / "train_log.csv").read_text().splitlines()[0].split(",")
    assert {"loss_ctc", "loss_inter_ctc", "loss_utility"} <= set(header)

    cli = CliRunner()
    res = cli.invoke(main, ["i3d-sweep", str(run), "--betas", "0,1", "--split", "dev", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "s" / "sweep.csv").read_text().splitlines()
    assert rows[0] == "beta,wer,avg_layers,avg_mha,avg_ffn"
    assert rows[1].startswith("0.0,") and rows[1].split(",")[2:] == ["3.000", "3.000", "3.000"]
    assert rows[2].startswith("1.0,") and rows[2].split(",")[2:] == ["0.000", "0.000", "0.000"]
    assert len((tmp_path / "s" / "utts.csv").read_text().splitlines()) == 1 + len(utts)
    for name in ("sweep.png", "gates.png", "lengths.png", "gates.csv"):
        assert (tmp_path / "s" / name).stat().st_size > 0

    res = cli.invoke(main, ["prune", str(base), "--save-models", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "p" / "prune.csv").read_text().splitlines()
    assert lines[0] == "n_layers,kept,dev_wer,test_wer" and [r.split(",")[0] for r in lines[1:]] == ["3", "2", "1"]
    one = load_checkpoint(tmp_path / "p" / "L1")
    assert one.cfg.model.n_layers == 1 and one.cfg.model.exits == [1] and one.meta["kept_layers"] == \
        [int(k) for k in lines[-1].split(",")[1].split()]

    # One plot of all three: the sweep's points, the pruning path and the Transformer scored as a static point.
    res = cli.invoke(main, ["i3d-compare", "--sweep", f"I3D={tmp_path / 's' / 'sweep.csv'}", "--pruned",
                            str(tmp_path / "p" / "prune.csv"), "--static", str(base), "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    rows = [r.split(",") for r in (tmp_path / "c" / "compare.csv").read_text().splitlines()]
    assert rows[0] == ["model", "point", "avg_layers", "wer"]
    assert [r[0] for r in rows[1:]] == ["I3D"] * 2 + ["pruned (LayerDrop + InterCTC)"] * 3 + ["standard Transformer"]
    # All 3 layers kept is the Transformer itself (InterCTC shares the last head): the same test WER both ways.
    assert rows[-1][2:] == ["3.00", lines[1].split(",")[3]]
    assert (tmp_path / "c" / "compare.png").stat().st_size > 0 and "| I3D | beta 0.0 |" in res.output
