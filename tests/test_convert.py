"""`eeasr-convert` end to end on a tiny random checkpoint: the bundle is written and reloaded, its segments run
under the real TFLM interpreter from the manifest alone, boundaries agree or are requantized, the server ONNX
matches torch under onnxruntime, the firmware sources compile, and the gates and the loader refuse what they
must with a clear message."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")
pytest.importorskip("tflite_micro")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from eeasr.bundle import BundleError, QParams, dequantize, load_bundle, quantize, requantize  # noqa: E402
from eeasr.convert.cli import main as cli  # noqa: E402
from eeasr.convert.random_model import write_random_model  # noqa: E402

W = 64
EXITS = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ckpt")
    write_random_model(d, d_model=32, n_heads=2, ff_dim=64, n_layers=4, exits=EXITS, conv_kernel=5, vocab=32,
                       window=W, n_calibration=12, seed=1)
    return d


@pytest.fixture(scope="module")
def bundle_dir(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "exits2"
    res = CliRunner().invoke(cli, [str(checkpoint), "--exits", "2", "--out", str(out), "--calibration-windows", "8"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out


def test_bundle_written_and_reloaded(bundle_dir: Path, checkpoint: Path) -> None:
    from eeasr.train.checkpoint import load_checkpoint

    b = load_bundle(bundle_dir)
    m = b.manifest
    assert m["format"] == "eeasr-bundle" and m["version"] == 1
    assert b.model_hash == load_checkpoint(checkpoint).model_hash
    assert [s["name"] for s in b.segments] == ["seg1", "seg2"] and b.device_exits == 2
    assert [s["exit"]["layer"] for s in b.segments] == [1, 2]
    assert [e["where"] for e in m["exits"]] == ["device", "device", "server", "server"]
    assert m["device"]["program"]["kind"] == "early_exit"
    assert [st["segment"] for st in m["device"]["program"]["steps"]] == ["seg1", "seg2"]
    for s in b.segments:
        assert (bundle_dir / s["file"]).stat().st_size == s["bytes"]
        assert s["arena"]["bytes"] >= s["arena"]["min_bytes"] > 0 and s["arena"]["bytes"] % 16 == 0
        assert set(s["agreement"]) == {str(W // 4), str(W // 2), str(W)}  # T_valid = W/4, W/2, W
        c = s["cost"]
        assert c["flash_bytes"] == s["bytes"] and c["macs"] > 0 and c["weight_bytes_per_frame"] > 0
        assert set(c["latency_s"]) == {"esp-nn/flash", "esp-nn/psram", "reference/flash", "reference/psram"}
        assert all(row[2] in ("esp-nn", "reference") for row in s["ops"])
    assert all(v["note"] for v in m["device"]["cost_assumptions"].values())
    th = m["thresholds"]
    assert set(th["measures"]) == {"entropy", "nonblank_entropy"} and len(th["wer_per_exit"]) == 3
    assert th["device_exits"] == 2 and th["answering_exit_layers"] == [1, 2, 4]   # device exits, then the last
    assert set(m["model"]["checkpoint_files"]) >= {"model.pt", "calibration.npz"}
    assert all((bundle_dir / rel).is_file() for rel in m["files"])
    # the report command reads the bundle back
    res = CliRunner().invoke(cli, ["report", str(bundle_dir)])
    assert res.exit_code == 0, res.output
    assert "| 1 (1) | seg1 |" in res.output and "| 2 (2) | seg2 |" in res.output and "clock_hz" in res.output


def test_boundaries_agree_or_are_requantized(bundle_dir: Path) -> None:
    from eeasr.tflm import TFLMSegment

    b = load_bundle(bundle_dir)
    (bd,) = b.boundaries
    assert bd["from"] == "seg1.hidden" and bd["to"] == "seg2.hidden_in"
    src, dst = QParams.from_dict(bd["from_q"]), QParams.from_dict(bd["to_q"])
    assert bd["requantize"] == (src != dst)
    # the recorded arena is the smallest TFLM accepts (16-byte steps)
    from eeasr.tflm import TFLMError

    for s in b.segments:
        a = s["arena"]
        if a["min_bytes"] > a["allocations"]["tail"] + 4096 + 16:  # probes stay above the persistent part
            with pytest.raises(TFLMError, match="allocate"):
                TFLMSegment(b.segment_bytes(s["name"]), a["min_bytes"] - 16, s["name"])
    # the manifest's numbers are those of the .tflite files
    seg1 = TFLMSegment(b.segment_bytes("seg1"), where="seg1")
    seg2 = TFLMSegment(b.segment_bytes("seg2"), where="seg2")
    assert seg1.outputs["hidden"].qparams == src and seg2.inputs["hidden_in"].qparams == dst
    assert b.handoff_qparams() == seg2.outputs["hidden"].qparams
    if bd["requantize"]:  # the firmware's table is exactly eeasr.bundle.requantize
        from eeasr.convert.csource import requant_table

        q = np.arange(-128, 128).astype(np.int8)
        assert np.array_equal(requant_table(src, dst), requantize(q, src, dst))
        text = (bundle_dir / "firmware" / "eeasr_model_config.c").read_text()
        assert "eeasr_requant_seg2[256] = {" + ", ".join(map(str, requantize(q, src, dst))) + "}" in text


def test_simulated_device_and_server_from_the_bundle_alone(bundle_dir: Path, checkpoint: Path) -> None:
    """Features -> int8 (manifest qparams) -> TFLM seg1 -> requantize -> TFLM seg2 -> dequantized handoff ->
    server ONNX: every exit agrees with the float torch model."""
    from eeasr.server_model import ServerModel
    from eeasr.tflm import TFLMSegment
    from eeasr.train.checkpoint import load_checkpoint

    b = load_bundle(bundle_dir)
    ck = load_checkpoint(checkpoint)
    segs = {s["name"]: TFLMSegment(b.segment_bytes(s["name"]), s["arena"]["bytes"], s["name"]) for s in b.segments}
    server = ServerModel((bundle_dir / b.manifest["server"]["file"]).read_bytes())
    rng = np.random.default_rng(5)
    agree, total = np.zeros(4), 0
    for n in (W // 4, W // 2, W, 37):
        feats = rng.standard_normal((n, 80)).astype(np.float32)
        x = np.zeros((1, W, 80), np.float32)
        x[0, :n] = feats
        q = quantize(x, b.input_qparams("seg1", "feats"))
        o1 = segs["seg1"].run({"feats": q, "n_frames": np.array([n], np.int32)})
        bd = b.boundaries[0]
        h_in = requantize(o1["hidden"], QParams.from_dict(bd["from_q"]), QParams.from_dict(bd["to_q"]))
        o2 = segs["seg2"].run({"hidden_in": h_in, "n_frames": np.array([n], np.int32)})
        t = -(-n // 4)
        handoff = dequantize(o2["hidden"], b.handoff_qparams())[:, :t]
        srv = server(handoff, np.array([t]))
        with torch.no_grad():
            ref, _ = ck.model(torch.from_numpy(feats)[None], torch.tensor([n]))
        got = [dequantize(o1["logits"], b.output_qparams("seg1", "logits"))[0, :t],
               dequantize(o2["logits"], b.output_qparams("seg2", "logits"))[0, :t],
               srv["logp_exit3"][0], srv["logp_exit4"][0]]
        for j in range(4):
            agree[j] += (got[j].argmax(-1) == ref[j][0].numpy().argmax(-1)).sum()
        total += t
    assert (agree / total).min() >= 0.8, agree / total


def test_device_program_is_the_chain_the_bundle_describes(bundle_dir: Path) -> None:
    """eeasr.device_program on the bundle alone equals the chain written out by hand (features quantized with
    seg1's input, TFLM by name, requantize at the boundary), bit for bit; stop/upto end it early; the server
    model loads from the bundle and takes the handoff."""
    from dataclasses import replace

    from eeasr.device_program import DeviceProgram, encoder_frames, stage_input
    from eeasr.exits import log_softmax
    from eeasr.server_model import ServerModel
    from eeasr.tflm import TFLMSegment

    b = load_bundle(bundle_dir)
    program = DeviceProgram.from_bundle(b)
    assert [s.name for s in program.stages] == ["seg1", "seg2"] and program.window == W
    assert program.feats_qparams == b.input_qparams("seg1", "feats")
    assert [s.segment.arena for s in program.stages] == [s["arena"]["bytes"] for s in b.segments]
    segs = {s["name"]: TFLMSegment(b.segment_bytes(s["name"]), s["arena"]["bytes"], s["name"]) for s in b.segments}
    bd = b.boundaries[0]
    src, dst = QParams.from_dict(bd["from_q"]), QParams.from_dict(bd["to_q"])
    server = ServerModel.from_bundle(b)
    rng = np.random.default_rng(7)
    for n in (1, W // 4, 37, W):
        feats = rng.standard_normal((n, 80)).astype(np.float32)
        x_q, n_valid = program.quantize_features(feats)
        x = np.zeros((1, W, 80), np.float32)
        x[0, :n] = feats
        assert n_valid == n and np.array_equal(x_q, quantize(x, b.input_qparams("seg1", "feats")))
        o1 = segs["seg1"].run({"feats": x_q, "n_frames": np.array([n], np.int32)})
        o2 = segs["seg2"].run({"hidden_in": requantize(o1["hidden"], src, dst), "n_frames": np.array([n], np.int32)})
        out = program.run(x_q, n)
        t = encoder_frames(n)
        assert out.encoder_frames == t == -(-n // 4) and [e.index for e in out.exits] == [1, 2]
        for e, o, name in zip(out.exits, (o1, o2), ("seg1", "seg2")):
            assert e.logits_q.dtype == np.int8 and np.array_equal(e.logits_q, o["logits"][0, :t])
            assert e.qparams == b.output_qparams(name, "logits")
            assert np.array_equal(e.logits, dequantize(o["logits"][0, :t], e.qparams))
            assert np.allclose(np.exp(e.log_probs()).sum(-1), 1, atol=1e-5)
            assert np.array_equal(e.log_probs(), log_softmax(e.logits))
        assert np.array_equal(out.hidden_q, o2["hidden"][0, :t]) and out.hidden_qparams == b.handoff_qparams()
        assert out.hidden_layer == 2 and out.hidden.shape == (t, 32)
        srv = server(out.hidden[None], np.array([t]))
        assert sorted(srv) == ["logp_exit3", "logp_exit4"] and srv["logp_exit3"].shape[:2] == (1, t)
    # the device's exit decision ends the program; so does upto
    early = program.run(x_q, n, stop=lambda e: e.index == 1)
    assert early.stopped_at == 1 and len(early.steps) == 1 and np.array_equal(early.hidden_q, o1["hidden"][0, :t])
    assert program.run(x_q, n, upto=1).stopped_at == 1
    # a boundary whose ends differ goes through eeasr.bundle.requantize, the device's function
    other = replace(program.stages[1], requant_from=QParams(src.scale * 1.7, src.zero_point + 3))
    raw = rng.integers(-128, 128, (1, W // 4, 32)).astype(np.int8)
    assert other.requantizes
    assert np.array_equal(stage_input(other, raw), requantize(raw, other.requant_from, dst))
    with pytest.raises(ValueError, match="expected"):
        program.quantize_features(np.zeros((W + 1, 80), np.float32))


def test_device_program_refuses_a_manifest_its_segments_contradict(bundle_dir: Path, tmp_path: Path) -> None:
    from eeasr.device_program import DeviceProgram

    other = tmp_path / "copy"
    shutil.copytree(bundle_dir, other)
    m = json.loads((other / "manifest.json").read_text())
    m["device"]["segments"][1]["inputs"]["hidden_in"]["scale"] *= 2  # manifest.json is not in its own hash list
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"seg2.tflite: input hidden_in is quantized .* in the file but .* in the "
                                          r"manifest; reconvert"):
        DeviceProgram.from_bundle(load_bundle(other))


def test_corrupt_segment_in_a_bundle_is_a_clear_error(bundle_dir: Path, tmp_path: Path) -> None:
    """A damaged .tflite: the bundle's hashes refuse it; loaded without them, the runner refuses it before TFLM
    (in this process: no crash)."""
    from eeasr.device_program import DeviceProgram
    from eeasr.tflm import CorruptModelError

    other = tmp_path / "copy"
    shutil.copytree(bundle_dir, other)
    seg = other / "segments" / "seg2.tflite"
    seg.write_bytes(seg.read_bytes()[:-40])
    with pytest.raises(BundleError, match="seg2.tflite has sha256"):
        DeviceProgram.from_bundle(load_bundle(other))
    with pytest.raises(CorruptModelError, match=r"segments/seg2.tflite: corrupt TFLite flatbuffer"):
        DeviceProgram.from_bundle(load_bundle(other, verify_files=False))


def test_refused_op_fails_the_conversion_naming_op_and_layer(checkpoint: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An (op, dtype) pair missing from the esp-tflite-micro table fails `eeasr-convert`, naming op and layer."""
    from eeasr.convert import esp_ops

    monkeypatch.delitem(esp_ops.SUPPORTED, ("BATCH_MATMUL", "INT8", "INT8"))
    out = tmp_path / "never"
    res = CliRunner().invoke(cli, [str(checkpoint), "--exits", "1", "--out", str(out), "--calibration-windows", "4"])
    assert res.exit_code == 1, res.output
    assert ("conversion failed: segment seg1 (blocks 1-1, exit 1, int8 activations): " in res.output
            and f"not implemented by esp-tflite-micro {esp_ops.ESP_TFLITE_MICRO_VERSION}" in res.output), res.output
    assert "BATCH_MATMUL INT8->INT8 (layer '" in res.output
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_server_onnx_matches_torch(bundle_dir: Path, checkpoint: Path) -> None:
    from eeasr.convert.server import server_module
    from eeasr.server_model import ServerModel
    from eeasr.train.checkpoint import load_checkpoint

    b = load_bundle(bundle_dir)
    assert max(b.manifest["server"]["check"]["vs_torch_max_abs_logp"].values()) < 2e-3
    ck = load_checkpoint(checkpoint)
    part = server_module(ck.model, 2)
    server = ServerModel((bundle_dir / "server" / "server.onnx").read_bytes())
    h = torch.randn(3, 11, 32)
    lengths = torch.tensor([11, 6, 1])
    with torch.no_grad():
        ref = part(h, lengths)
    got = server(h.numpy(), lengths.numpy())
    for j, r in zip((3, 4), ref):
        for i, n in enumerate(lengths.tolist()):
            assert np.abs(got[f"logp_exit{j}"][i, :n] - r[i, :n].numpy()).max() < 1e-4


def test_firmware_sources_compile_and_hold_the_segments(bundle_dir: Path, tmp_path: Path) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc")
    b = load_bundle(bundle_dir)
    fw = bundle_dir / "firmware"
    main_c = tmp_path / "main.c"
    main_c.write_text(r'''
#include <stdio.h>
#include <stdint.h>
#include "eeasr_model_config.h"
int main(void) {
  for (int k = 0; k < EEASR_DEVICE_EXITS; k++) {
    const eeasr_segment_t *s = &eeasr_segments[k];
    unsigned long sum = 0;
    for (unsigned i = 0; i < s->model_len; i++) sum = sum * 31u + s->model[i];
    printf("%s %u %lu %d %d %.9g %d %d\n", s->name, s->model_len, sum, (int)((uintptr_t)s->model % 16),
           s->exit_layer, s->in_scale, s->in_zero_point, s->requant_from_prev != 0);
  }
  printf("%s %s %d %u\n", EEASR_MODEL_HASH, EEASR_BUNDLE_ID, EEASR_WINDOW_FRAMES, EEASR_ARENA_BYTES);
  return 0;
}
''')
    exe = tmp_path / "fw"
    srcs = [str(main_c), *map(str, sorted(fw.glob("*.c")))]
    subprocess.run([gcc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", str(fw), "-o", str(exe), *srcs, "-lm"],
                   check=True, capture_output=True, text=True)
    lines = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()
    for line, s in zip(lines, b.segments):
        name, n, total, align, layer, scale, zp, rq = line.split()
        data = (bundle_dir / s["file"]).read_bytes()
        want = 0
        for byte in data:
            want = (want * 31 + byte) % (1 << 64)
        assert (name, int(n), int(total), int(align), int(layer)) == (s["name"], len(data), want, 0, s["exit"]["layer"])
        inp = s["inputs"]["feats" if s["front"] else "hidden_in"]
        assert np.float32(float(scale)) == np.float32(inp["scale"]) and int(zp) == inp["zero_point"]
    model_hash, bid, window, arena = lines[-1].split()
    assert (model_hash, bid, int(window)) == (b.model_hash, b.bundle_id, W)
    assert int(arena) == max(s["arena"]["bytes"] for s in b.segments)


def test_bundle_mismatch_and_corruption_are_refused(bundle_dir: Path, tmp_path: Path) -> None:
    b = load_bundle(bundle_dir)
    with pytest.raises(BundleError, match=f"bundle is for model {b.model_hash}, expected model 0123456789abcdef"):
        load_bundle(bundle_dir, model_hash="0123456789abcdef")
    with pytest.raises(BundleError, match="bundle id .* differs"):
        load_bundle(bundle_dir, model_hash=b.model_hash, bundle_id="f" * 32)
    load_bundle(bundle_dir, model_hash=b.model_hash, bundle_id=b.bundle_id)

    other = tmp_path / "copy"
    shutil.copytree(bundle_dir, other)
    m = json.loads((other / "manifest.json").read_text())
    m["version"] = 99
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="bundle version 99, this eeasr reads version 1; reconvert"):
        load_bundle(other)

    shutil.rmtree(other)
    shutil.copytree(bundle_dir, other)
    seg = other / "segments" / "seg1.tflite"
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the weights: structurally valid, numerically wrong
    seg.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"segments/seg1.tflite has sha256 .* changed or corrupted"):
        load_bundle(other)
    seg.unlink()
    with pytest.raises(BundleError, match="segments/seg1.tflite is missing"):
        load_bundle(other)
    res = CliRunner().invoke(cli, ["report", str(other)])
    assert res.exit_code != 0 and "seg1.tflite is missing" in res.output


@pytest.mark.parametrize("gate", ["--min-cosine", "--min-agreement"])
def test_agreement_gate_fails_with_a_clear_message(checkpoint: Path, tmp_path: Path, gate: str) -> None:
    out = tmp_path / "never"
    res = CliRunner().invoke(cli, [str(checkpoint), "--exits", "1", "--out", str(out), "--calibration-windows", "8",
                                   gate, "1.01"])
    assert res.exit_code == 1
    assert "conversion failed: int8 segments under TFLM disagree with the float model" in res.output
    what = "hidden-state cosine" if gate == "--min-cosine" else "exit argmax agreement"
    for t in (W // 4, W // 2, W):  # every T_valid is measured and named
        assert f"seg1 at T_valid={t} feature frames: hidden-state cosine" in res.output
    assert f"{what} " in res.output and "(required >= 1.01)" in res.output
    assert not out.exists() and not list(tmp_path.glob(".never*"))  # nothing half-written


def test_agreement_gate_passes_what_meets_the_thresholds() -> None:
    from eeasr.convert.segments import AgreementError, gate_agreement

    m = {"seg1": {"150": {"hidden_cos": 0.99, "argmax_agree": 0.9}},
         "seg2": {"150": {"hidden_cos": 0.99, "argmax_agree": 0.84}, "600": {"hidden_cos": 0.97, "argmax_agree": 0.9}}}
    gate_agreement({"seg1": m["seg1"]}, 0.98, 0.85)
    with pytest.raises(AgreementError) as e:
        gate_agreement(m, 0.98, 0.85)
    lines = [ln for ln in str(e.value).splitlines() if ln.startswith("  ")]
    assert len(lines) == 2 and "seg2 at T_valid=150" in lines[0] and "seg2 at T_valid=600" in lines[1]


def test_cli_arguments() -> None:
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0 and "report" in res.output and "convert" in res.output
    res = CliRunner().invoke(cli, ["convert", "--help"])
    assert res.exit_code == 0 and "--exits" in res.output and "--int16" in res.output


def test_bundle_reader_needs_no_torch_or_tensorflow() -> None:
    code = ("import sys, eeasr.bundle\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow', 'tflite_micro')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_int8_wer_bench_runs_on_a_bundle_with_every_exit(checkpoint: Path, bundle_dir: Path, tiny_corpus: Path,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/int8_wer.py end to end on the tiny corpus: int8 (TFLM, device program) and float WER per exit."""
    import csv
    import importlib.util

    bench_dir = Path(__file__).parent.parent / "bench"
    monkeypatch.syspath_prepend(str(bench_dir))       # as when run as a script: its sibling modules import
    spec = importlib.util.spec_from_file_location("int8_wer", bench_dir / "int8_wer.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "int8_wer", bench)  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    args = ["--model", str(checkpoint), "--manifest", str(tiny_corpus / "manifest.jsonl"), "--limit", "3",
            "--no-progress"]
    with pytest.raises(SystemExit, match="EXITS=2, this benchmark needs every exit on the device"):
        bench.main([*args, "--bundle", str(bundle_dir), "--out", str(tmp_path / "never")])
    every = tmp_path / "exits4"
    res = CliRunner().invoke(cli, [str(checkpoint), "--exits", "4", "--out", str(every), "--calibration-windows", "8"])
    assert res.exit_code == 0, res.output
    bench.main([*args, "--bundle", str(every), "--out", str(tmp_path / "out")])
    rows = list(csv.DictReader((tmp_path / "out" / "int8_wer.csv").open()))
    assert [(r["exit"], r["layer"]) for r in rows] == [("1", "1"), ("2", "2"), ("3", "3"), ("4", "4")]
    assert all(0.0 <= float(r["frame_argmax_agreement"]) <= 1.0 for r in rows)
    text = (tmp_path / "out" / "int8_wer.md").read_text()
    assert "a fixed subset of 3 of the" in text and "| 4 (4) |" in text
    assert (tmp_path / "out" / "int8_wer.png").stat().st_size > 0
    hyps = list(csv.reader((tmp_path / "out" / "int8_wer_hyps.csv").open()))
    assert len(hyps) == 4 and hyps[0][3:5] == ["float_exit1", "int8_exit1"]
