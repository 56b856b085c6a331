"""bench/gated_cost.py end to end on a tiny random I3D model (global gate predictor, 3 layers, exits after
layers 1-3) converted by the real converter with EXITS=2: layers 1-2 on the device, layer 3 on the server.
The table's invariants: beta 0 runs every device module and beta 1 none, the device's MACs never grow with
beta and differ between the two extremes by exactly the modules' MACs, and every handoff reaches the server
with the device predictor's decisions for the server's layer (all open at beta 0, all closed at beta 1)."""

from __future__ import annotations

import csv
import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")
pytest.importorskip("tflite_micro")
pytest.importorskip("onnxruntime")

from eeasr.bundle import Bundle  # noqa: E402
from eeasr.convert.build import ConvertOptions, convert_checkpoint  # noqa: E402
from eeasr.convert.random_model import write_random_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "assets" / "demo" / "manifest.jsonl"
DEVICE_LAYERS, SERVER_LAYERS = 2, 1


@pytest.fixture(scope="module")
def gated_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("i3d-bench")
    write_random_model(d / "ckpt", d_model=32, n_heads=2, ff_dim=64, n_layers=DEVICE_LAYERS + SERVER_LAYERS,
                       exits=[1, 2, 3], vocab=32, window=64, n_calibration=12, seed=1, encoder="i3d",
                       i3d={"predictor": "global", "inter_ctc": [1, 2], "hidden": 16})
    # a random model's head has small margins: its argmax agreement is tests/test_i3d_deploy.py's subject, not this
    return convert_checkpoint(d / "ckpt", d / "bundle", ConvertOptions(exits=2, calibration_windows=8,
                                                                       min_agreement=0.5), log=lambda _: None)


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    bench_dir = REPO / "bench"
    monkeypatch.syspath_prepend(str(bench_dir))       # as when run as a script: its sibling modules import
    spec = importlib.util.spec_from_file_location("gated_cost", bench_dir / "gated_cost.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gated_cost", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_gated_cost_table_invariants(gated_bundle: Bundle, bench, tmp_path: Path) -> None:  # noqa: ANN001
    # --threshold -1: the device is never sure, so every window that runs goes to the server
    rows = bench.main(["--bundle", str(gated_bundle.path), "--manifest", str(DEMO), "--n", "2", "--betas",
                       "0,0.5,1", "--threshold", "-1", "--out", str(tmp_path), "--no-progress"])
    assert [r["beta"] for r in rows] == [0.0, 0.5, 1.0]
    every, half, none = rows
    assert every["device_modules"] == every["device_modules_of"] == 2 * DEVICE_LAYERS
    assert none["device_modules"] == 0.0
    macs = [r["device_macs"] for r in rows]
    assert macs == sorted(macs, reverse=True)
    modules = sum(s["cost"]["macs"] for s in gated_bundle.segments if s["role"] in ("mha", "ffn"))
    assert every["device_macs"] - none["device_macs"] == modules
    assert every["modelled_s"] > none["modelled_s"] > 0 and all(r["tflm_ms"] > 0 for r in rows)
    for r in rows:
        assert r["windows"] > 0 and r["on_device"] < 1.0      # only windows too short to run stay on the device
        assert r["handoff_bytes"] > 32 and r["up_bytes_per_s"] > 0 and r["wer"] is not None
    # a global predictor decides the server's layer too: the handoff's module mask carries it
    assert every["server_modules"] == 2 * SERVER_LAYERS and none["server_modules"] == 0
    assert 0 <= half["server_modules"] <= 2 * SERVER_LAYERS
    assert [r["beta"] for r in csv.DictReader((tmp_path / "gated_cost.csv").open())] == ["0.0", "0.5", "1.0"]
    text = (tmp_path / "gated_cost.md").read_text()
    assert "2 of the 11 test utterances" in text and "device layers 1-2, server layer 3" in text
    assert f"| 0 | {2 * DEVICE_LAYERS:.2f} of {2 * DEVICE_LAYERS} |" in text
    assert (tmp_path / "gated_cost.png").stat().st_size > 0
