"""What esp-tflite-micro implements: the (op, input dtype -> output dtype) pairs a device segment may use.

Pinned to **esp-tflite-micro 1.4.0**: espressif/esp-tflite-micro at commit
99f49e1498b0984f4db54d9bf3938aceb99ad422 (2026-08-14, `git describe`: v1.3.8-11-g99f49e1; `idf_component.yml`
says version "1.4.0" and depends on espressif/esp-nn >= 1.1.1), the ESP-IDF component the firmware uses.

How the table was made: by reading, at that commit, the type switches in each kernel's Prepare/Eval under
`tensorflow/lite/micro/kernels/` and the ESP-NN replacements under `tensorflow/lite/micro/kernels/esp_nn/`
(add, conv, depthwise_conv, fully_connected, mul, pooling, softmax), and the op registrations in
`tensorflow/lite/micro/micro_mutable_op_resolver.h` (the `Add...` method the firmware calls for each op).
Only the ops below were read; any op missing here is refused even where esp-tflite-micro might have a kernel
for it: read its kernel at the pinned commit before adding it. Facts worth knowing:
- ESP-NN accelerates int8 only; int16 activations always run the reference kernels.
- ESP-NN ADD and MUL are used only when neither input is broadcast (esp_nn/add.cc, esp_nn/mul.cc fall back
  to `BroadcastAdd4DSlow` / `BroadcastMul4DSlow`): `kernel_for` says so per op instance.
- ESP-NN FULLY_CONNECTED calls `esp_nn_fully_connected[_per_ch]_s8` once per row (batch): the weights stream
  once per encoder frame (convert/cost.py uses this).
- RSQRT accepts only float32 and int8 inputs in Prepare (`IsRsqrtSupportedType`, elementwise.cc), although its
  Eval has an int16 branch: an int16 LayerNorm decomposition is refused on the device.
- BATCH_MATMUL: int8 and int16, both inputs of one type, no int32 output; reference kernel only.
- CAST: from int8/int16/int32/uint32/float32/bool to int8/int16/int32/uint32/float32.
This table is the source of truth for the conversion check; the TFLM wheel (upstream TFLM) running a segment is
the second check (it proves the graph runs, not that esp-tflite-micro has the kernel).
"""

from __future__ import annotations

from dataclasses import dataclass

ESP_TFLITE_MICRO_VERSION = "1.4.0"
ESP_TFLITE_MICRO_COMMIT = "99f49e1498b0984f4db54d9bf3938aceb99ad422"
ESP_NN_VERSION = "1.2.3 (espressif/esp-nn d45b843, 2026-04-27)"

ESPNN = "esp-nn"
REF = "reference"

# (op, input dtype, output dtype) -> kernel. Input dtype is that of the op's first input.
SUPPORTED: dict[tuple[str, str, str], str] = {
    # ESP-NN int8 kernels (reference for int16), kernels/esp_nn/*.cc
    ("FULLY_CONNECTED", "INT8", "INT8"): ESPNN,
    ("FULLY_CONNECTED", "INT16", "INT16"): REF,
    ("CONV_2D", "INT8", "INT8"): ESPNN,
    ("CONV_2D", "INT16", "INT16"): REF,
    ("DEPTHWISE_CONV_2D", "INT8", "INT8"): ESPNN,
    ("DEPTHWISE_CONV_2D", "INT16", "INT16"): REF,
    ("ADD", "INT8", "INT8"): ESPNN,          # reference when broadcasting
    ("ADD", "INT16", "INT16"): REF,
    ("ADD", "INT32", "INT32"): REF,
    ("MUL", "INT8", "INT8"): ESPNN,          # reference when broadcasting
    ("MUL", "INT16", "INT16"): REF,
    ("MUL", "INT32", "INT32"): REF,
    ("SOFTMAX", "INT8", "INT8"): ESPNN,
    ("SOFTMAX", "INT8", "INT16"): REF,
    ("SOFTMAX", "INT16", "INT16"): REF,
    ("AVERAGE_POOL_2D", "INT8", "INT8"): ESPNN,
    ("MAX_POOL_2D", "INT8", "INT8"): ESPNN,
    # reference kernels, kernels/*.cc
    ("BATCH_MATMUL", "INT8", "INT8"): REF,
    ("BATCH_MATMUL", "INT16", "INT16"): REF,
    ("SUB", "INT8", "INT8"): REF,
    ("SUB", "INT16", "INT16"): REF,
    ("SUB", "INT32", "INT32"): REF,
    ("SQUARED_DIFFERENCE", "INT8", "INT8"): REF,
    ("SQUARED_DIFFERENCE", "INT16", "INT16"): REF,
    ("SQUARED_DIFFERENCE", "INT32", "INT32"): REF,
    ("RSQRT", "INT8", "INT8"): REF,          # not INT16: Prepare refuses it
    ("MEAN", "INT8", "INT8"): REF,
    ("MEAN", "INT16", "INT16"): REF,
    ("SUM", "INT8", "INT8"): REF,
    ("SUM", "INT16", "INT16"): REF,
    ("LOGISTIC", "INT8", "INT8"): REF,
    ("LOGISTIC", "INT16", "INT16"): REF,
    ("TANH", "INT8", "INT8"): REF,
    ("TANH", "INT16", "INT16"): REF,
    ("RELU", "INT8", "INT8"): REF,
    ("RELU", "INT16", "INT16"): REF,
    ("HARD_SWISH", "INT8", "INT8"): REF,
    ("TRANSPOSE", "INT8", "INT8"): REF,
    ("TRANSPOSE", "INT16", "INT16"): REF,
    ("PAD", "INT8", "INT8"): REF,
    ("PAD", "INT16", "INT16"): REF,
    ("CONCATENATION", "INT8", "INT8"): REF,
    ("CONCATENATION", "INT16", "INT16"): REF,
    ("STRIDED_SLICE", "INT8", "INT8"): REF,
    ("STRIDED_SLICE", "INT16", "INT16"): REF,
    ("LESS", "INT32", "BOOL"): REF,
    ("LESS", "INT8", "BOOL"): REF,
    ("LESS", "FLOAT32", "BOOL"): REF,
    ("QUANTIZE", "FLOAT32", "INT8"): REF,
    ("QUANTIZE", "FLOAT32", "INT16"): REF,
    ("QUANTIZE", "INT8", "INT8"): REF,
    ("QUANTIZE", "INT16", "INT8"): REF,
    ("QUANTIZE", "INT8", "INT16"): REF,
    ("QUANTIZE", "INT16", "INT16"): REF,
    ("QUANTIZE", "INT32", "INT8"): REF,
    ("QUANTIZE", "INT32", "INT16"): REF,
    ("DEQUANTIZE", "INT8", "FLOAT32"): REF,
    ("DEQUANTIZE", "INT16", "FLOAT32"): REF,
}
# RESHAPE copies bytes of any type (reshape_common.cc has no type switch).
for _t in ("INT8", "INT16", "INT32", "FLOAT32", "BOOL"):
    SUPPORTED[("RESHAPE", _t, _t)] = REF
for _src in ("INT8", "INT16", "INT32", "UINT32", "FLOAT32", "BOOL"):
    for _dst in ("INT8", "INT16", "INT32", "UINT32", "FLOAT32"):
        if _src != _dst:
            SUPPORTED[("CAST", _src, _dst)] = REF

# The MicroMutableOpResolver method that registers each op (micro_mutable_op_resolver.h at the pinned commit).
RESOLVER_METHOD: dict[str, str] = {
    "ADD": "AddAdd", "AVERAGE_POOL_2D": "AddAveragePool2D", "BATCH_MATMUL": "AddBatchMatMul", "CAST": "AddCast",
    "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEQUANTIZE": "AddDequantize", "FULLY_CONNECTED": "AddFullyConnected", "HARD_SWISH": "AddHardSwish",
    "LESS": "AddLess", "LOGISTIC": "AddLogistic", "MAX_POOL_2D": "AddMaxPool2D", "MEAN": "AddMean",
    "MUL": "AddMul", "PAD": "AddPad", "QUANTIZE": "AddQuantize", "RELU": "AddRelu", "RESHAPE": "AddReshape",
    "RSQRT": "AddRsqrt", "SOFTMAX": "AddSoftmax", "SQUARED_DIFFERENCE": "AddSquaredDifference",
    "STRIDED_SLICE": "AddStridedSlice", "SUB": "AddSub", "SUM": "AddSum", "TANH": "AddTanh",
    "TRANSPOSE": "AddTranspose",
}


@dataclass(frozen=True)
class OpUse:
    """One operator of a segment: its index, op name, dtypes, the name of its output tensor (the layer) and
    whether an elementwise op broadcasts one input."""
    index: int
    op: str
    in_dtype: str
    out_dtype: str
    layer: str
    broadcast: bool = False


class UnsupportedOpError(RuntimeError):
    """A segment uses an (op, dtype) pair that the pinned esp-tflite-micro does not implement."""


def kernel_for(use: OpUse) -> str | None:
    """"esp-nn", "reference" or None (not implemented by the pinned esp-tflite-micro)."""
    kernel = SUPPORTED.get((use.op, use.in_dtype, use.out_dtype))
    if kernel == ESPNN and use.op in ("ADD", "MUL") and use.broadcast:
        return REF
    return kernel


def check_ops(uses: list[OpUse], segment: str) -> None:
    """Raise UnsupportedOpError naming every unsupported op, its dtypes and the layer it computes."""
    bad = [u for u in uses if kernel_for(u) is None]
    if bad:
        lines = [f"  op #{u.index} {u.op} {u.in_dtype}->{u.out_dtype} (layer {u.layer!r})" for u in bad[:12]]
        more = f"\n  ... and {len(bad) - 12} more" if len(bad) > 12 else ""
        raise UnsupportedOpError(
            f"segment {segment}: {len(bad)} op(s) not implemented by esp-tflite-micro {ESP_TFLITE_MICRO_VERSION} "
            f"(commit {ESP_TFLITE_MICRO_COMMIT[:8]}):\n" + "\n".join(lines) + more
            + "\nchange the layer to ops the table in convert/esp_ops.py lists, or add the op there after "
              "reading its kernel at the pinned commit")


__all__ = ["ESP_TFLITE_MICRO_VERSION", "ESP_TFLITE_MICRO_COMMIT", "ESP_NN_VERSION", "SUPPORTED", "RESOLVER_METHOD",
           "OpUse", "UnsupportedOpError", "kernel_for", "check_ops", "ESPNN", "REF"]
