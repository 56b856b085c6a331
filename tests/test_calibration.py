"""Percentile calibration in the converter: clip_ranges narrows each activation range to the requested
percentiles of its values (checked by hand on a two-op function), `eeasr-convert` uses it by default and records
it in the manifest, `--calibration minmax` gives the min/max conversion, and the bundle caches (the host's
default bundle, `make flash`'s converted bundles) never serve a bundle converted with other options."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("torch")
pytest.importorskip("tflite_micro")
pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

from click.testing import CliRunner  # noqa: E402

from eeasr.bundle import load_bundle  # noqa: E402
from eeasr.convert.build import ConvertOptions, bundle_options  # noqa: E402
from eeasr.convert.calibration import DEFAULT_CLIP_PERCENTILE, clip_ranges  # noqa: E402
from eeasr.convert.cli import main as cli  # noqa: E402
from eeasr.convert.firmware_flash import cached_bundle  # noqa: E402
from eeasr.convert.random_model import write_random_model  # noqa: E402
from eeasr.convert.tf_model import calibrate, convert_full_integer, quantize_calibrated  # noqa: E402
from eeasr.host.bundle_cache import default_bundle, stale_reason  # noqa: E402
from eeasr.tflm import tflite_schema  # noqa: E402

N = 500   # values per example of the hand-checked function


def two_ops() -> tf.types.experimental.GenericFunction:
    """{"y": 2x + 1, "bias": 0 on the first n_frames positions, -30 after them} (a key-padding bias)."""
    def run(x: tf.Tensor, n: tf.Tensor) -> dict[str, tf.Tensor]:
        valid = tf.cast(tf.less(tf.constant(np.arange(N, dtype=np.int32)[None]), n), tf.float32)
        return {"y": x * 2.0 + 1.0, "bias": valid * 30.0 - 30.0}
    sig = [tf.TensorSpec((1, N), tf.float32, name="x"), tf.TensorSpec((1,), tf.int32, name="n_frames")]
    return tf.function(run, input_signature=sig, autograph=False)


def ranges(data: bytes, renames: dict[str, str] | None = None) -> dict[str, tuple]:
    """{tensor name (outputs by their dict key): (min, max) of a calibrated model, or (scale, zero point) of a
    quantized one}."""
    fb = tflite_schema()
    sub = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(data, 0)).subgraphs[0]
    out = {}
    for t in sub.tensors:
        q, name = t.quantization, t.name.decode()
        name = (renames or {}).get(name, name)
        if q is not None and q.min is not None and len(q.min) == 1:
            out[name] = (float(q.min[0]), float(q.max[0]))
        elif q is not None and q.scale is not None and len(q.scale) == 1:
            out[name] = (float(q.scale[0]), int(q.zeroPoint[0]))
    return out


def test_clip_ranges_narrow_to_the_requested_percentile() -> None:
    """x is a shuffle of -500..499 over two examples (1,000 values): at the 99th percentile each range keeps
    all but the 10 most extreme values at either end (ceil(1000 * 1%) = 10), so x -> [-491, 490] and
    y = 2x + 1 -> [-981, 981]. The bias is -30 at one position of the 1,000: clipped it would collapse to [0, 0]
    (TFLM crashes on that scale), so it keeps its min/max. At 100 a range is the min/max of the values: the
    calibrator's for x, y and the bias (it gives the 0/1 mask that is then multiplied by 30 [0, 30])."""
    fn = two_ops()
    x = np.random.default_rng(0).permutation(np.arange(-N, N)).astype(np.float32)
    reps = [[x[:N][None], np.array([N], np.int32)], [x[N:][None], np.array([N - 1], np.int32)]]
    calibrated, renames, io = calibrate(fn, reps)
    assert sorted(io) == ["bias", "n_frames", "x", "y"]
    minmax = ranges(calibrated, renames)
    assert minmax["x"] == (-500.0, 499.0) and minmax["y"] == (-999.0, 999.0)
    assert minmax["bias"] == pytest.approx((-30.0, 0.0), abs=1e-30)   # the calibrator's max: FLT_MIN

    clipped = ranges(clip_ranges(calibrated, reps, 99.0), renames)
    assert clipped["x"] == (-491.0, 490.0) and clipped["y"] == (-981.0, 981.0)
    assert clipped["bias"] == minmax["bias"]
    full = ranges(clip_ranges(calibrated, reps, 100.0), renames)
    for name in ("x", "y", "bias"):
        assert full[name] == pytest.approx(minmax[name], abs=1e-30), name
    for p in (100.0, 99.9):   # never wider
        for name, (lo, hi) in ranges(clip_ranges(calibrated, reps, p), renames).items():
            assert minmax[name][0] <= lo <= 0.0 <= hi <= minmax[name][1], name

    # Quantized: the int8 output scale spans the clipped range (255 steps), through the converter's one path.
    pct = ranges(convert_full_integer(fn, reps, clip_percentile=99.0))
    assert pct == ranges(quantize_calibrated(clip_ranges(calibrated, reps, 99.0), renames, io))
    assert pct["y"][0] == pytest.approx(1962 / 255, rel=1e-6) and pct["bias"][0] == pytest.approx(30 / 255, rel=1e-6)
    assert ranges(convert_full_integer(fn, reps, clip_percentile=None))["y"][0] == pytest.approx(1998 / 255, rel=1e-6)


def test_percentiles_outside_the_range_and_int16_are_refused() -> None:
    reps = [[np.zeros((1, N), np.float32), np.array([N], np.int32)]]
    with pytest.raises(ValueError, match="int16 activations take min/max"):
        convert_full_integer(two_ops(), reps, "int16", clip_percentile=99.9)
    for bad in (50.0, 100.5):
        with pytest.raises(ValueError, match=r"must be in \(50, 100\]"):
            ConvertOptions(exits=1, clip_percentile=bad)
    assert ConvertOptions(exits=1).clip_percentile == DEFAULT_CLIP_PERCENTILE == 99.99


# ------------------------------------------------------------------------------------------------ bundles

@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random model (d=32, 4 layers, exits after each, W=64) converted with EXITS=2 by `eeasr-convert` with
    every default (percentile ranges) and with `--calibration minmax`: the caches compare against the
    defaults, so conftest's bundles (--calibration-windows 8) cannot stand in for the first."""
    d = tmp_path_factory.mktemp("calibration")
    write_random_model(d / "ckpt", d_model=32, n_heads=2, ff_dim=64, n_layers=4, exits=[1, 2, 3, 4], conv_kernel=5,
                       vocab=32, window=64, n_calibration=12, seed=1)
    out = {"checkpoint": d / "ckpt"}
    for name, flags in (("percentile", []), ("minmax", ["--calibration", "minmax"])):
        res = CliRunner().invoke(cli, [str(d / "ckpt"), "--exits", "2", "--out", str(d / name), *flags])
        assert res.exit_code == 0, res.output + repr(res.exception)
        out[name] = d / name
    return out


def test_default_conversion_is_percentile_recorded_and_passed_the_gates(bundles: dict[str, Path]) -> None:
    pct, mm = load_bundle(bundles["percentile"]), load_bundle(bundles["minmax"])
    assert pct.manifest["options"] == bundle_options(ConvertOptions(exits=2))
    assert pct.manifest["options"]["calibration"] == "percentile"
    assert pct.manifest["options"]["clip_percentile"] == DEFAULT_CLIP_PERCENTILE
    assert mm.manifest["options"]["calibration"] == "minmax" and mm.manifest["options"]["clip_percentile"] is None
    assert [(s["calibration"], s["clip_percentile"]) for s in pct.segments] == [("percentile", 99.99)] * 2
    assert [(s["calibration"], s["clip_percentile"]) for s in mm.segments] == [("minmax", None)] * 2
    # The converter's own int8-vs-float gate passed, and the recorded agreement says so.
    gate = pct.manifest["device"]["agreement_gate"]
    for s in pct.segments:
        assert all(m["hidden_cos"] >= gate["min_hidden_cosine"] and m["argmax_agree"] >= gate["min_argmax_agreement"]
                   for m in s["agreement"].values())
    # Other bytes at the same size; segment 1 calibrates on the same windows both ways, so its percentile
    # ranges (features in, hidden state out) are no wider than min/max.
    assert [s["sha256"] for s in pct.segments] != [s["sha256"] for s in mm.segments]
    assert [s["bytes"] for s in pct.segments] == [s["bytes"] for s in mm.segments]
    assert pct.bundle_id != mm.bundle_id
    p1, m1 = pct.segments[0], mm.segments[0]
    assert p1["inputs"]["feats"]["scale"] < m1["inputs"]["feats"]["scale"]
    assert p1["outputs"]["hidden"]["scale"] <= m1["outputs"]["hidden"]["scale"]


def test_cli_calibration_flags() -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["convert", "--help"])
    assert res.exit_code == 0 and "--calibration [percentile|minmax]" in res.output
    assert "--clip-percentile" in res.output
    assert "0.913" in res.output   # the help says why percentile is the default
    res = runner.invoke(cli, [".", "--exits", "1", "--out", "x", "--calibration", "minmax", "--clip-percentile", "99"])
    assert res.exit_code == 2 and "--clip-percentile goes with --calibration percentile" in res.output
    res = runner.invoke(cli, [".", "--exits", "1", "--out", "x", "--clip-percentile", "40"])
    assert res.exit_code == 2 and "40" in res.output


def test_firmware_cache_serves_only_a_bundle_converted_with_the_default_options(bundles: dict[str, Path],
                                                                             tmp_path: Path) -> None:
    ckpt, cache = bundles["checkpoint"], tmp_path / "firmware"
    slot = cache / load_bundle(bundles["minmax"]).model_hash / "exits2" / "bundle"
    shutil.copytree(bundles["minmax"], slot)
    assert cached_bundle(ckpt, 2, cache) is None          # same model and EXITS, other calibration
    shutil.rmtree(slot)
    shutil.copytree(bundles["percentile"], slot)
    assert cached_bundle(ckpt, 2, cache) == slot
    assert cached_bundle(ckpt, 1, cache) is None


def test_host_default_bundle_serves_only_the_default_options(bundles: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EEASR_CACHE", str(tmp_path / "cache"))
    model_hash = load_bundle(bundles["percentile"]).model_hash
    slot = tmp_path / "cache" / "bundles" / f"{model_hash}-k2"
    assert stale_reason(slot, model_hash, 2) == "first use"
    shutil.copytree(bundles["minmax"], slot)
    assert "converted with other options" in stale_reason(slot, model_hash, 2)
    shutil.rmtree(slot)
    shutil.copytree(bundles["percentile"], slot)
    assert stale_reason(slot, model_hash, 2) is None
    said: list[str] = []
    assert default_bundle(said.append, bundles["checkpoint"], 2) == slot and said == []   # served, not converted
