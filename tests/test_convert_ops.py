"""The converter's checks on single TFLite models: the esp-tflite-micro op table refuses what the device cannot
run (int8 and int16 kernels), corrupt .tflite bytes never reach TFLM, the arena is measured, the cost model
counts what the graph computes, and thresholds are calibrated as specified."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tflite_micro")

from eeasr.convert.esp_ops import (ESP_TFLITE_MICRO_VERSION, SUPPORTED, OpUse, UnsupportedOpError,  # noqa: E402
                                   check_ops, kernel_for)
from eeasr.convert.tf_model import set_full_integer  # noqa: E402
from eeasr.convert.tflm import op_uses  # noqa: E402
from eeasr.tflm import CorruptModelError, TFLMSegment, smallest_arena, verify_tflite  # noqa: E402


def tiny_tflite(body, activations: str = "int8", n: int = 16) -> bytes:  # noqa: ANN001
    """A one-input model `body(x)` converted full-integer with named input `x` and output `y`."""
    @tf.function(input_signature=[tf.TensorSpec((1, n), tf.float32, name="x")], autograph=False)
    def f(x):  # noqa: ANN001, ANN202
        return {"y": body(x)}

    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()])
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    conv.representative_dataset = lambda: ([rng.standard_normal((1, n)).astype(np.float32)] for _ in range(8))
    set_full_integer(conv, activations)
    return conv.convert()


W16 = np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def dense_relu() -> bytes:
    return tiny_tflite(lambda x: tf.nn.relu(tf.matmul(x, tf.constant(W16))))


def test_supported_model_passes_and_runs(dense_relu: bytes) -> None:
    uses = op_uses(dense_relu)
    assert [(u.op, u.in_dtype, u.out_dtype) for u in uses][0] == ("FULLY_CONNECTED", "INT8", "INT8")
    check_ops(uses, "tiny")
    assert kernel_for(uses[0]) == "esp-nn"
    arena = smallest_arena(dense_relu)
    seg = TFLMSegment(dense_relu, arena, "tiny")
    assert 0 < arena < 64 * 1024 and seg.arena == arena
    (y,) = seg.run({"x": np.ones((1, 16), np.int8)}).values()
    assert y.dtype == np.int8 and y.shape == (1, 16)


def test_op_missing_from_the_table_is_refused_naming_op_and_layer() -> None:
    data = tiny_tflite(lambda x: tf.nn.gelu(tf.matmul(x, tf.constant(W16))))
    uses = op_uses(data)
    gelu = [u for u in uses if u.op == "GELU"]
    assert gelu, uses
    with pytest.raises(UnsupportedOpError) as e:
        check_ops(uses, "seg9 (test)")
    msg = str(e.value)
    assert f"segment seg9 (test): 1 op(s) not implemented by esp-tflite-micro {ESP_TFLITE_MICRO_VERSION}" in msg
    assert f"op #{gelu[0].index} GELU INT8->INT8 (layer {gelu[0].layer!r})" in msg


def test_int16_option_checks_int16_kernels() -> None:
    """A LayerNorm-style rsqrt in 16x8 quantization: esp-tflite-micro's RSQRT refuses int16 in Prepare."""
    def rms_norm(x):  # noqa: ANN001, ANN202
        return x * tf.math.rsqrt(tf.reduce_mean(x * x, axis=-1, keepdims=True) + 1e-5)

    data = tiny_tflite(rms_norm, "int16")
    uses = op_uses(data)
    assert any(u.op == "RSQRT" and u.in_dtype == "INT16" for u in uses), uses
    with pytest.raises(UnsupportedOpError, match=r"RSQRT INT16->INT16"):
        check_ops(uses, "int16 segment")
    # int16 versions of the ESP-NN ops run the reference kernels
    assert SUPPORTED[("FULLY_CONNECTED", "INT16", "INT16")] == "reference"
    assert kernel_for(OpUse(0, "ADD", "INT8", "INT8", "a", broadcast=True)) == "reference"
    assert kernel_for(OpUse(0, "ADD", "INT8", "INT8", "a", broadcast=False)) == "esp-nn"


def test_int16_segment_reports_why_it_cannot_be_built() -> None:
    torch = pytest.importorskip("torch")
    from eeasr.convert.segments import Int16Error, SegmentPlan, convert_segment
    from eeasr.train.config import ModelConfig
    from eeasr.train.model import EarlyExitConformer

    torch.manual_seed(0)
    model = EarlyExitConformer(ModelConfig(d_model=16, n_heads=2, ff_dim=32, n_layers=1, exits=[1], conv_kernel=3,
                                           vocab_size=8)).eval()
    reps = [(np.random.default_rng(i).standard_normal((1, 16, 80)).astype(np.float32), 16) for i in range(2)]
    with pytest.raises(Int16Error, match="n_frames.*RSQRT"):
        convert_segment(model, SegmentPlan(1, 0, 1, True, 1, 1), 16, reps, "int16")


@pytest.mark.parametrize("litert", [True, False], ids=["litert-verifier", "host-install"])
@pytest.mark.parametrize("damage", ["truncate", "tail", "garble", "identifier", "empty"])
def test_corrupt_tflite_is_refused_before_tflm(dense_relu: bytes, damage: str, litert: bool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With LiteRT's verifier (the converter) and without it (a host install has only tflite-micro)."""
    if not litert:
        monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import raises ImportError
    data = bytearray(dense_relu)
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "tail":
        data = data[:-8]
    elif damage == "garble":
        data[64:400] = bytes(range(256)) + bytes(80)
    elif damage == "identifier":
        data[4:8] = b"XXXX"
    else:
        data = bytearray()
    with pytest.raises(CorruptModelError, match="seg1.tflite"):
        verify_tflite(bytes(data), "seg1.tflite")
    with pytest.raises(CorruptModelError):
        TFLMSegment(bytes(data), 1 << 16, "seg1.tflite")


def test_cost_counts_the_graph(dense_relu: bytes) -> None:
    from eeasr.convert.cost import Assumptions, op_costs, segment_cost

    ops = op_costs(dense_relu)
    fc = next(o for o in ops if o.op == "FULLY_CONNECTED")
    assert fc.macs == 16 * 16 and fc.kernel == "esp-nn" and fc.weight_bytes >= 16 * 16
    c = segment_cost(dense_relu, 4096, 16)
    a = Assumptions()
    assert c.macs == 256
    assert c.latency_s["reference/flash"] > c.latency_s["esp-nn/flash"] > 0
    assert set(a.notes()) == {f for f in a.__dataclass_fields__} and all(v["note"] for v in a.notes().values())


def test_threshold_calibration_prefers_early_confident_exits() -> None:
    from eeasr.convert.thresholds import calibrate

    v = 5
    sharp = np.full((4, v), -20.0)
    sharp[:, 2] = 0.0
    flat = np.log(np.full((4, v), 1.0 / v))
    # utterance 0: exit 1 confident and right; utterance 1: exit 1 unsure (and wrong), exit 2 right
    logps = [[sharp, sharp], [flat, sharp]]

    def decode(ids):  # noqa: ANN001, ANN202
        return " ".join("two" if i == 2 else "x" for i in ids)

    res = calibrate(logps, ["two", "two"], decode, [2, 4], target_wer=0.0)
    for m in ("entropy", "nonblank_entropy"):
        assert res["measures"][m]["wer"] == 0.0 and res["measures"][m]["avg_exit_layer"] == 3.0
    assert res["wer_per_exit"] == [50.0, 0.0] and res["default_measure"] in ("entropy", "nonblank_entropy")


def test_calibration_follows_the_split_policy_device_exits_then_the_last_exit() -> None:
    """EXITS = 1 of 3: the server's intermediate exit 2 never answers, so calibration must not count on it."""
    from eeasr.convert.thresholds import calibrate

    v = 5
    right = np.full((4, v), -20.0)
    right[:, 2] = 0.0
    wrong = np.full((4, v), -20.0)
    wrong[:, 3] = 0.0
    flat = np.log(np.full((4, v), 1.0 / v))

    def decode(ids):  # noqa: ANN001, ANN202
        return " ".join("two" if i == 2 else "x" for i in ids)

    # utterance 0: exit 1 sure and right; utterance 1: exit 1 unsure (empty), exits 2 and 3 right
    logps = [[right, right, wrong], [flat, right, right]]
    res = calibrate(logps, ["two", "two"], decode, [2, 4, 6], device_exits=1, target_wer=0.0)
    assert res["answering_exit_layers"] == [2, 6] and res["wer_per_exit"] == [50.0, 50.0]
    best = res["measures"]["entropy"]
    assert best["avg_exit_layer"] == 4.0 and best["wer"] == 0.0   # utterance 1 falls to layer 6, never 4
