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
    assert set(th["measures"]) == {"entropy", "nonblank_entropy"} and len(th["wer_per_exit"]) == 4
    assert set(m["model"]["checkpoint_files"]) >= {"model.pt", "calibration.npz"}
    assert all((bundle_dir / rel).is_file() for rel in m["files"])
    # the report command reads the bundle back
    res = CliRunner().invoke(cli, ["report", str(bundle_dir)])
    assert res.exit_code == 0, res.output
    assert "| 1 (1) | seg1 |" in res.output and "| 2 (2) | seg2 |" in res.output and "clock_hz" in res.output


def test_boundaries_agree_or_are_requantized(bundle_dir: Path) -> None:
    from eeasr.convert.tflm import TFLMSegment

    b = load_bundle(bundle_dir)
    (bd,) = b.boundaries
    assert bd["from"] == "seg1.hidden" and bd["to"] == "seg2.hidden_in"
    src, dst = QParams.from_dict(bd["from_q"]), QParams.from_dict(bd["to_q"])
    assert bd["requantize"] == (src != dst)
    # the recorded arena is the smallest TFLM accepts (16-byte steps)
    from eeasr.convert.tflm import TFLMError

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
    from eeasr.convert.server import ServerModel
    from eeasr.convert.tflm import TFLMSegment
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


def test_server_onnx_matches_torch(bundle_dir: Path, checkpoint: Path) -> None:
    from eeasr.convert.server import ServerModel, server_module
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


def test_agreement_gate_fails_with_a_clear_message(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    res = CliRunner().invoke(cli, [str(checkpoint), "--exits", "1", "--out", str(out), "--calibration-windows", "8",
                                   "--min-cosine", "1.01"])
    assert res.exit_code == 1
    assert "conversion failed: int8 segments under TFLM disagree with the float model" in res.output
    assert "seg1 at T_valid=16 feature frames: hidden-state cosine" in res.output
    assert "(required >= 1.01)" in res.output
    assert not out.exists() and not list(tmp_path.glob(".never*"))  # nothing half-written


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
