"""I3D deployment (convert/i3d.py, eeasr/gated_program.py): a tiny random I3D model (global and local gate
predictors) converted by the real `eeasr-convert` path into a gated bundle of int8 module segments; the TF
copies equal torch; the int8 gate decisions agree with the float model's except within a stated distance of
beta; beta = 0 runs every module and beta = 1 none (counted TFLM invocations); a skipped module leaves the int8
stream as it was; the handoff's module mask survives Python and C framing; the simulated device and the server
carry a window through the split; the gated manifest validates and another model's bundle is refused."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")
pytest.importorskip("tflite_micro")
pytest.importorskip("onnxruntime")

from eeasr import protocol as P  # noqa: E402
from eeasr.bundle import BundleError, load_bundle, requantize  # noqa: E402
from eeasr.convert.build import ConvertOptions, convert_checkpoint  # noqa: E402
from eeasr.convert.i3d import float_pass, tf_modules  # noqa: E402
from eeasr.convert.random_model import write_random_model  # noqa: E402
from eeasr.device_program import DeviceProgram, encoder_frames  # noqa: E402
from eeasr.exits import greedy_ctc  # noqa: E402
from eeasr.gated_program import GatedProgram, gate_threshold, load_program  # noqa: E402
from eeasr.server_model import ServerModel  # noqa: E402
from eeasr.tflm import TFLMSegment  # noqa: E402
from eeasr.train.checkpoint import load_checkpoint  # noqa: E402

W = 64
N_LAYERS = 3
DEVICE_LAYERS = 2            # --exits 2: exits after layers [1, 2, 3], the device runs layers 1-2
# int8 vs float gate probability: measured worst |p_int8 - p_float| on these windows 0.009 (global predictor) and
# 0.037 (local: its later predictors see the int8 stream after the int8 modules). A decision may differ only
# for a gate whose float probability lies within P_TOL of beta.
P_TOL = 0.05


@pytest.fixture(scope="module", params=["global", "local"])
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp(f"i3d-{request.param}")
    write_random_model(d / "ckpt", d_model=32, n_heads=2, ff_dim=64, n_layers=N_LAYERS, exits=[1, 2, 3], vocab=32,
                       window=W, n_calibration=12, seed=1, encoder="i3d",
                       i3d={"predictor": request.param, "inter_ctc": [1, 2], "hidden": 16})
    # deployment mechanics are under test, not int8 quality: a low head argmax gate keeps the tiny random model's
    # conversion (percentile-clipped activation ranges) from failing on it; hidden-state cosine is still gated
    bundle = convert_checkpoint(d / "ckpt", d / "bundle",
                                ConvertOptions(exits=2, calibration_windows=8, min_agreement=0.5), log=lambda _: None)
    ck = load_checkpoint(d / "ckpt")
    z = np.load(d / "ckpt" / "calibration.npz")
    held_out = [z["feats"][i, :z["n_frames"][i]].astype(np.float32) for i in range(8, 12)]
    # and shorter windows cut from them (the last window of an utterance), down to one encoder frame
    held_out += [f[:n] for f, n in zip(held_out, (4, 9, 17, 30))]
    return {"kind": request.param, "dir": d, "bundle": bundle, "model": ck.model, "ck": ck, "windows": held_out}


def program(converted: dict, beta: float | None = None) -> GatedProgram:
    return GatedProgram.from_bundle(converted["bundle"], beta)


# ---- the TF rebuild equals torch ---------------------------------------------------------------------------

@pytest.mark.parametrize("n_valid", [W, W // 2 + 3, 9])
def test_tf_modules_equal_torch(converted: dict, n_valid: int) -> None:
    model = converted["model"]
    rng = np.random.default_rng(n_valid)
    feats = rng.standard_normal((n_valid, 80)).astype(np.float32)
    padded = rng.normal(0, 3, (1, W, 80)).astype(np.float32)   # garbage past n_valid: the masks must ignore it
    padded[0, :n_valid] = feats
    ref = float_pass(model, feats, 0.0)                          # beta 0: every module runs
    mods = tf_modules(model, W, N_LAYERS)
    t = encoder_frames(n_valid)
    n = np.array([n_valid], np.int32)
    h = mods["front"](padded, n)["hidden"]
    assert np.abs(h[0, :t] - ref.front).max() < 1e-4
    gate = "gate" if converted["kind"] == "global" else "l1_gate"
    z = mods[gate](ref.front.mean(0, keepdims=True))["gate"]
    assert np.abs(z.reshape(-1, 2) - ref.margins[: len(z.reshape(-1, 2))]).max() < 1e-4
    for layer in range(1, N_LAYERS + 1):
        h = mods[f"l{layer}_mha"](h, n)["hidden"]
        h = mods[f"l{layer}_ffn"](h)["hidden"]
        assert np.abs(h[0, :t] - ref.hidden[layer - 1]).max() < 1e-4, layer
    logits = mods["head"](h)["logits"]
    assert np.abs(logits[0, :t] - ref.logits[N_LAYERS]).max() < 1e-4


def test_float_reference_is_the_models_gated_inference(converted: dict) -> None:
    model = converted["model"]
    for feats in converted["windows"][:3]:
        for beta in (0.3, 0.5, 0.7):
            ref = float_pass(model, feats, beta)
            with torch.no_grad():
                out = model.gated(torch.from_numpy(feats)[None], torch.tensor([len(feats)]), beta=beta)
            assert np.array_equal(ref.gates, out.gates[0].numpy())
            assert np.abs(ref.logps[N_LAYERS] - out.logps[-1][0].numpy()).max() < 1e-5


# ---- the bundle -----------------------------------------------------------------------------------------------

def test_gated_manifest_validates(converted: dict) -> None:
    b = load_bundle(converted["dir"] / "bundle")
    m = b.manifest
    prog = m["device"]["program"]
    glob = converted["kind"] == "global"
    assert prog["kind"] == "gated" and prog["predictor"]["kind"] == converted["kind"]
    assert prog["layers"] == [{"layer": 1, "mha": "l1_mha", "ffn": "l1_ffn"}, {"layer": 2, "mha": "l2_mha",
                                                                              "ffn": "l2_ffn"}]
    assert prog["module_mask"] == (2 * N_LAYERS if glob else 2 * DEVICE_LAYERS)
    assert prog["head"] == {"segment": "head", "exit": 2, "layer": DEVICE_LAYERS}
    names = [s["name"] for s in b.segments]
    gates = ["gate"] if glob else ["l1_gate", "l2_gate"]
    assert sorted(names) == sorted(["front", "head", "l1_mha", "l1_ffn", "l2_mha", "l2_ffn", *gates])
    for s in b.segments:   # every segment costed, its arena measured under TFLM
        assert s["cost"]["macs"] > 0 and s["arena"]["bytes"] >= s["arena"]["min_bytes"] > 0
    assert [e["where"] for e in m["exits"]] == ["device", "server"] and m["server"]["after_layer"] == DEVICE_LAYERS
    assert max(m["server"]["check"]["vs_torch_max_abs_logp"].values()) < 2e-3
    for a in m["device"]["agreement"].values():
        assert a["hidden_cos"] >= 0.98


def test_broken_gated_manifests_and_other_bundles_are_refused(converted: dict, tmp_path: Path) -> None:
    src = converted["dir"] / "bundle"
    b = load_bundle(src)
    other = load_checkpoint(converted["dir"] / "ckpt").model_hash
    with pytest.raises(BundleError, match="bundle is for model"):
        load_bundle(src, model_hash="0" * len(other))
    with pytest.raises(BundleError, match="early-exit programs"):
        DeviceProgram.from_bundle(b)
    ee = copy.deepcopy(b.manifest)
    ee["device"]["program"] = {"kind": "early_exit", "steps": [{"segment": "front", "decision": {"type": "exit",
                                                                                                  "exit": 1}}]}
    with pytest.raises(BundleError, match="not 'gated'"):
        GatedProgram.from_bundle(type(b)(b.path, ee))
    for change, words in [
        (lambda p: p["layers"][1].update(mha="l9_mha"), "unknown segment"),
        (lambda p: p.update(module_mask=p["module_mask"] + 2), "module mask"),
        (lambda p: p.update(beta=1.5), "beta"),
        (lambda p: p["predictor"].update(kind="sideways"), "gate predictor"),
        (lambda p: p["layers"].reverse(), "not 1..K"),
    ]:
        d = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(src, d)
        m = json.loads((d / "manifest.json").read_text())
        change(m["device"]["program"])
        (d / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(BundleError, match=words):
            load_bundle(d)


FIRMWARE_MAIN = r"""
#include <stdio.h>
#include <string.h>
int main(void) {
  _Static_assert(EEASR_MODEL_PROGRAM == EEASR_MODEL_PROGRAM_GATED, "a gated program");
  _Static_assert(EEASR_MODEL_N_MELS == EEASR_N_MELS && EEASR_MODEL_SAMPLE_RATE == EEASR_SAMPLE_RATE,
                 "the model's features are not the C front end's");
  for (int k = 0; k < EEASR_N_SEGMENTS; k++) {
    const eeasr_segment_t *s = &eeasr_segments[k];
    unsigned long sum = 0;
    for (unsigned i = 0; i < s->model_len; i++) sum = sum * 31u + s->model[i];
    printf("%s %u %lu %d %s %d %.9g %d %.9g %d %d %u\n", s->name, s->model_len, sum, (int)((uintptr_t)s->model % 16),
           s->role, s->layer, s->in_scale, s->in_zero_point, s->out_scale, s->out_zero_point, s->takes_count,
           s->arena_bytes);
  }
  printf("%s %s %d %d %d %.9g %u %d\n", EEASR_MODEL_HASH, EEASR_BUNDLE_ID, EEASR_MODEL_PREDICTOR,
         EEASR_DEVICE_LAYERS, EEASR_MODULE_MASK_BITS, EEASR_MODEL_BETA, EEASR_ARENA_BYTES, EEASR_N_OPS);
  return 0;
}
"""


def test_firmware_sources_of_the_gated_bundle(converted: dict, tmp_path: Path) -> None:
    """`make flash` on a gated bundle: its generated header registers every op of every device segment (read
    from the .tflite files; no segment uses them all) and carries the bundle's hashes and program; the sources
    compile with -Werror beside eeasr_core's headers and hold every segment byte for byte with the manifest's
    quantization; and the build-prep step (the generated sources and the model image) accepts the bundle."""
    import re
    import subprocess

    from eeasr.convert.esp_ops import RESOLVER_METHOD
    from eeasr.convert.firmware_flash import write_generated
    from eeasr.convert.model_image import parse_image
    from eeasr.convert.tflm import op_uses

    b = converted["bundle"]
    fw = b.path / "firmware"
    header = (fw / "eeasr_model_config.h").read_text()
    ops = {s["name"]: {u.op for u in op_uses(b.segment_bytes(s["name"]))} for s in b.segments}
    union = set().union(*ops.values())
    assert all(o < union for o in ops.values())
    assert sorted(re.findall(r"\(resolver\)\.(\w+)\(\);", header)) == sorted(RESOLVER_METHOD[o] for o in union)
    assert f"#define EEASR_N_OPS {len(union)}\n" in header
    assert "firmware" not in b.manifest["device"]      # no stale "none: ..." note
    assert {f"firmware/eeasr_{s['name']}_model.c" for s in b.segments} <= set(b.manifest["files"])

    gen = write_generated(b, "devkitc-n16r8", tmp_path / "generated")
    assert (gen / "eeasr_model_config.h").read_text() == header
    assert parse_image((gen / "eeasr_model.bin").read_bytes()).bundle_id == b.bundle_id

    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed (make apt-deps installs build-essential)")
    core = Path(__file__).resolve().parent.parent / "firmware" / "components" / "eeasr_core" / "include"
    main_c = tmp_path / "main.c"
    main_c.write_text('#include <stdint.h>\n#include "eeasr_model_config.h"\n'
                      + "".join(f'#include "eeasr_core/{h.name}"\n' for h in sorted((core / "eeasr_core").glob("*.h")))
                      + FIRMWARE_MAIN)
    exe = tmp_path / "fw"
    run = subprocess.run([gcc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", str(fw), "-I", str(core), "-o",
                          str(exe), str(main_c), *map(str, sorted(fw.glob("*.c"))), "-lm"], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    lines = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()
    assert len(lines) == len(b.segments) + 1
    for line, s in zip(lines, b.segments):
        name, n, total, align, role, layer, in_scale, in_zp, out_scale, out_zp, count, arena = line.split()
        data = b.segment_bytes(s["name"])
        want = 0
        for byte in data:
            want = (want * 31 + byte) % (1 << 64)
        assert (name, int(n), int(total), int(align), role, int(layer)) == (s["name"], len(data), want, 0, s["role"],
                                                                            s["layer"])
        (inp,) = [v for k, v in s["inputs"].items() if k != "n_frames"]
        (out,) = s["outputs"].values()
        assert np.float32(float(in_scale)) == np.float32(inp["scale"]) and int(in_zp) == inp["zero_point"]
        assert np.float32(float(out_scale)) == np.float32(out["scale"]) and int(out_zp) == out["zero_point"]
        assert bool(int(count)) == ("n_frames" in s["inputs"]) and int(arena) == s["arena"]["bytes"]
    prog = b.manifest["device"]["program"]
    model_hash, bid, pred, layers, mask, beta, arena, n_ops = lines[-1].split()
    assert (model_hash, bid, int(pred), int(layers), int(mask)) == (
        b.model_hash, b.bundle_id, ["global", "local"].index(converted["kind"]), DEVICE_LAYERS, prog["module_mask"])
    assert np.float32(float(beta)) == np.float32(prog["beta"]) and int(n_ops) == len(union)
    assert int(arena) == max(s["arena"]["bytes"] for s in b.segments)


def test_other_families_are_refused_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from eeasr.convert.cli import main as cli

    write_random_model(tmp_path / "t", d_model=16, n_heads=2, ff_dim=32, n_layers=2, exits=[2], vocab=32, window=W,
                       n_calibration=4, encoder="transformer")
    with pytest.raises(ValueError, match=r"'transformer' models cannot be converted yet; eeasr-convert converts "
                                         r"conformer, conformer-aed, i3d") as e:
        convert_checkpoint(tmp_path / "t", tmp_path / "out", ConvertOptions(exits=1), log=lambda _: None)
    assert "\n" not in str(e.value)
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "t")])
    assert res.exit_code == 1 and "'transformer' models cannot be converted yet" in res.output


def _k_rows(text: str) -> dict[int, list[str]]:
    """The report's per-K table of a gated program: K -> its cells."""
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in text.splitlines() if ln.startswith("| ")]
    return {int(r[0].split()[0]): r for r in rows if r[0][0].isdigit() and "(" in r[0]}


def test_report_on_an_i3d_checkpoint_and_on_its_bundle(converted: dict, tmp_path: Path) -> None:
    """`eeasr-convert report CHECKPOINT` converts every layer as module segments in memory and prices each (the
    table before converting); on the bundle it reads the manifest's costs. The two agree on the program they
    share, and a gated program's cost is not cumulative: beta 1 runs front, predictor(s) and head only."""
    from click.testing import CliRunner

    from eeasr.convert.cli import main as cli

    glob = converted["kind"] == "global"
    res = CliRunner().invoke(cli, ["report", str(converted["dir"] / "ckpt"), "--calibration-windows", "4",
                                   "--out", str(tmp_path / "ckpt.md")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    text = (tmp_path / "ckpt.md").read_text()
    assert f"every exit on the device ({converted['kind']} gate predictor)" in text
    gates = ["gate"] if glob else [f"l{i}_gate" for i in range(1, N_LAYERS + 1)]
    for name in ["front", *gates, *[f"l{i}_{m}" for i in range(1, N_LAYERS + 1) for m in ("mha", "ffn")], "head"]:
        assert f"| {name} |" in text, name
    k_rows = _k_rows(text)
    assert sorted(k_rows) == [1, 2, 3]           # one program per exit (after layers 1, 2, 3)
    n_segments = [int(k_rows[k][1]) for k in (1, 2, 3)]
    assert n_segments == ([5, 7, 9] if glob else [5, 8, 11])   # + 2 modules (and a local predictor) per layer
    every = [int(k_rows[k][4].replace(",", "")) for k in (1, 2, 3)]
    none = [int(k_rows[k][5].replace(",", "")) for k in (1, 2, 3)]
    assert every[0] < every[1] < every[2]
    # beta 1 runs no module: a global predictor's program costs the same at every K, a local one adds its predictor
    assert (none[0] == none[1] == none[2]) if glob else (none[0] < none[1] < none[2])
    modules = [e - n for e, n in zip(every, none)]
    assert modules == [modules[0], 2 * modules[0], 3 * modules[0]]    # equal layers: equal modules per layer
    res = CliRunner().invoke(cli, ["report", str(converted["dir"] / "bundle"), "--out", str(tmp_path / "b.md")])
    assert res.exit_code == 0, res.output
    b_rows = _k_rows((tmp_path / "b.md").read_text())
    assert list(b_rows) == [DEVICE_LAYERS]
    # the same segments of the same shapes as the checkpoint's program K = 2: the same MACs at beta 0 and 1
    got, want = b_rows[DEVICE_LAYERS], k_rows[DEVICE_LAYERS]
    assert got[1] == want[1] and got[4:6] == want[4:6]


# ---- gates: int8 vs float -------------------------------------------------------------------------------------

def _decisions(converted: dict, prog: GatedProgram, feats: np.ndarray, beta: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(float p, float decisions, int8 p, int8 decisions) for every gate the program decides, the int8 stream
    following the float decisions (a local predictor's later gates depend on the earlier ones)."""
    ref = float_pass(converted["model"], feats, beta)
    out = prog.run(*prog.quantize_features(feats), beta=beta, gates=ref.gates[:DEVICE_LAYERS])
    k = len(out.gates)
    return ref.probs[:k].ravel(), ref.gates[:k].ravel(), out.probs.ravel(), out.gates.ravel()


def test_int8_gates_agree_with_float_except_near_beta(converted: dict) -> None:
    prog = program(converted)
    windows = converted["windows"]
    model_beta = prog.beta
    # betas AT measured float probabilities: that gate of that window sits exactly on the threshold
    probe = float_pass(converted["model"], windows[0], model_beta).probs[:len(prog.run(
        *prog.quantize_features(windows[0])).gates)].ravel()
    betas = [model_beta, *probe.tolist()]
    worst_p, near, on_beta, disagree, total = 0.0, 0, 0, 0, 0
    for beta in betas:
        for feats in windows:
            pf, df, pq, dq = _decisions(converted, prog, feats, beta)
            worst_p = max(worst_p, float(np.abs(pq - pf).max()))
            assert np.array_equal(df, pf > beta)
            differ = df != dq
            assert np.all(np.abs(pf[differ] - beta) <= P_TOL), (beta, pf[differ], pq[differ])
            near += int((np.abs(pf - beta) <= P_TOL).sum())
            on_beta += int((pf == beta).sum())
            disagree += int(differ.sum())
            total += len(pf)
    assert worst_p < P_TOL, worst_p
    # the near-beta cases were really exercised: at least the first layer's gates of window 0 sit exactly on a
    # beta (a local predictor's later probabilities move with the earlier decisions, so they may not)
    assert on_beta >= 2 and near > on_beta
    assert disagree <= near
    print(f"{converted['kind']}: {total} gate decisions over {len(betas)} betas, {near} within {P_TOL} of beta, "
          f"{disagree} int8/float disagreements (all within it); worst |p_int8 - p_float| {worst_p:.4f}")


def test_global_gates_free_run_agree_too(converted: dict) -> None:
    if converted["kind"] != "global":
        pytest.skip("a local predictor's later gates depend on the earlier decisions (covered above)")
    prog = program(converted)
    for feats in converted["windows"]:
        ref = float_pass(converted["model"], feats, prog.beta)
        out = prog.run(*prog.quantize_features(feats))
        differ = out.gates != ref.gates
        assert np.all(np.abs(ref.probs[differ] - prog.beta) <= P_TOL)
        assert np.array_equal(out.ran, out.gates[:DEVICE_LAYERS])


# ---- beta extremes, skipping, cost -----------------------------------------------------------------------------

@pytest.fixture
def invocations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    """Every TFLM invocation (segment, copies of its inputs), in order."""
    calls: list[tuple[str, dict]] = []
    real = TFLMSegment.run

    def counted(self: TFLMSegment, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append((self.where.rsplit("/", 1)[-1].removesuffix(".tflite"), {k: np.copy(v) for k, v in
                                                                             inputs.items()}))
        return real(self, inputs)

    monkeypatch.setattr(TFLMSegment, "run", counted)
    return calls


def test_beta_zero_runs_every_module_and_one_none(converted: dict, invocations: list) -> None:
    glob = converted["kind"] == "global"
    predictors = 1 if glob else DEVICE_LAYERS
    modules = 2 * DEVICE_LAYERS
    b = converted["bundle"]
    macs = {s["name"]: s["cost"]["macs"] for s in b.segments}
    for beta, n_modules in ((0.0, modules), (1.0, 0)):
        prog = load_program(b, beta)          # the manifest's beta overridden, as `device-sim --beta`
        for feats in converted["windows"][:4]:
            invocations.clear()
            out = prog.run(*prog.quantize_features(feats))
            assert len(invocations) == 1 + predictors + n_modules + 1     # front, predictor(s), modules, head
            assert [n for n, _ in invocations] == out.invoked
            assert out.modules_run == n_modules and out.ran.all() == (beta == 0.0)
            assert out.macs == sum(macs[n] for n in out.invoked)
            assert sum(out.module_mask[:modules]) == n_modules
    full = sum(macs[n] for n in macs if n.endswith(("_mha", "_ffn")))
    prog0, prog1 = load_program(b, 0.0), load_program(b, 1.0)
    x = prog0.quantize_features(converted["windows"][0])
    assert prog0.run(*x).macs - prog1.run(*x).macs == full
    assert gate_threshold(0.0) == -np.inf and gate_threshold(1.0) == np.inf


def test_a_skipped_module_leaves_the_int8_stream_unchanged(converted: dict, invocations: list) -> None:
    prog = program(converted)
    feats = converted["windows"][1]
    x, n = prog.quantize_features(feats)
    seg = prog.segments

    def output(name: str, inputs: dict) -> tuple[np.ndarray, object]:
        return seg[name].run(inputs)["hidden"], seg[name].outputs["hidden"].qparams

    # l1_mha runs, l1_ffn and l2_mha are skipped, l2_ffn runs: l2_ffn sees l1_mha's output, moved only by the
    # requantization between the two segments' QParams
    invocations.clear()
    prog.run(x, n, gates=np.array([[True, False], [False, True]]))
    calls = dict(invocations)
    assert "l1_ffn" not in calls and "l2_mha" not in calls
    y, qp = output("l1_mha", calls["l1_mha"])
    assert np.array_equal(calls["l2_ffn"]["hidden_in"], requantize(y, qp, seg["l2_ffn"].inputs["hidden_in"].qparams))
    # every module skipped: the handoff is the front's output, requantized to the head's input
    invocations.clear()
    out = prog.run(x, n, gates=np.zeros((DEVICE_LAYERS, 2), bool))
    calls = dict(invocations)
    y, qp = output("front", calls["front"])
    want = requantize(y, qp, prog.handoff_qparams)
    assert np.array_equal(calls["head"]["hidden_in"], want)
    assert np.array_equal(out.hidden_q, want[0, :encoder_frames(n)])
    assert out.module_mask[:2 * DEVICE_LAYERS] == [False] * (2 * DEVICE_LAYERS)


# ---- the handoff's module mask on the wire ---------------------------------------------------------------------

def test_module_mask_round_trips_through_python_and_c_framing(converted: dict) -> None:
    from eeasr.host import ccore

    prog = program(converted)
    out = prog.run(*prog.quantize_features(converted["windows"][2]))
    q = out.hidden_qparams
    rng = np.random.default_rng(3)
    masks = [out.module_mask, [True], [False] * 8, [True, False] * 4 + [True], rng.random(255).round().astype(bool)
             .tolist()]
    for mask in masks:
        h = P.Handoff(5, 1, P.ResultFlag.FINAL, out.hidden_layer, "ab" * 8, q.scale, q.zero_point, out.hidden_q,
                      mask)
        wire = P.encode(h, 9)
        assert ccore.encode_message(h, 9) == wire
        assert len(h.pack()) == 26 + out.hidden_q.size + 1 + (len(mask) + 7) // 8
        for dec in (P.FrameDecoder(), ccore.FrameDecoder()):
            (frame,) = dec.feed(wire)
            assert frame.msg.modules == list(mask) and np.array_equal(frame.msg.hidden, out.hidden_q)
    # the layout: count, then bit i of byte i // 8, least significant first
    mask = [True, False, False, True, False, False, False, False, True]
    assert P.Handoff(0, 0, 0, 2, "00" * 8, 0.5, 0, np.zeros((0, 4), np.int8), mask).pack()[26:] == bytes([9, 9, 1])
    # an early-exit handoff has no trailer: byte for byte what it was
    assert len(P.Handoff(0, 0, 0, 2, "00" * 8, 0.5, 0, np.ones((3, 4), np.int8)).pack()) == 26 + 12
    too_many = P.Handoff(0, 0, 0, 2, "00" * 8, 0.5, 0, np.ones((3, 4), np.int8), [True] * 256)
    for enc in (P.encode, ccore.encode_message):
        with pytest.raises(P.ProtocolError, match="module mask of 256 modules exceeds 255"):
            enc(too_many, 0)


# ---- the split: simulated device -> handoff -> server ----------------------------------------------------------

def test_device_sim_hands_off_with_the_mask_and_the_server_continues(converted: dict) -> None:
    from aiohttp import web

    from eeasr.gated_program import server_gate_input
    from eeasr.host.device_sim import Device, python_core
    from eeasr.host.server import Suffix

    b = converted["bundle"]
    prog = load_program(b)
    dev = Device(b, prog, python_core(b, prog, threshold=-1.0))     # never confident: always hand off
    pcm = (np.random.default_rng(0).standard_normal(16000 * 2 // 5) * 3000).astype(np.int16)
    msgs = list(dev.handle(P.Frame(1, P.Audio(pcm, P.AudioFlag.UTT_START | P.AudioFlag.UTT_END))))
    handoffs = [m for m in msgs if isinstance(m, P.Handoff)]
    assert handoffs and all(len(h.modules) == b.manifest["device"]["program"]["module_mask"] for h in handoffs)
    assert dev.hello.exit_layers == [DEVICE_LAYERS]
    suffix = Suffix(b)
    h = handoffs[0]
    suffix.check(h)
    hidden = (h.hidden.astype(np.float32) - h.zero_point) * np.float32(h.scale)
    (got,) = suffix.run_batch([hidden], [h.modules])
    m = b.manifest
    gated = m["server"]["gated"]
    direct = ServerModel.from_bundle(b)(hidden[None], np.array([len(hidden)]), server_gate_input(
        gated["predictor"], DEVICE_LAYERS, N_LAYERS, [h.modules], gated["beta"]))
    assert got.tokens == greedy_ctc(direct["logp_exit3"][0])
    assert got.modules_run == int(direct["gates_used"].sum())
    if converted["kind"] == "global":   # the server applies the device predictor's gates of layer 3
        assert direct["gates_used"][0].astype(bool).ravel().tolist() == h.modules[2 * DEVICE_LAYERS:]
    with pytest.raises(web.HTTPBadRequest) as bad:      # no mask: an early-exit device's handoff
        suffix.check(P.Handoff(h.utt_id, h.window, h.flags, h.layer, h.model_hash, h.scale, h.zero_point, h.hidden))
    assert "module mask of 0 modules" in bad.value.text
    with pytest.raises(web.HTTPConflict) as other:      # another model's handoff
        suffix.check(P.Handoff(h.utt_id, h.window, h.flags, h.layer, "00" * 8, h.scale, h.zero_point, h.hidden,
                               h.modules))
    assert "this server runs model" in other.value.text
