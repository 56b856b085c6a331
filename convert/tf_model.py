"""Plain-TensorFlow rebuild of early-exit Conformer segments for a fixed window (the device contract).

A *segment* is what the device runs between two exits: optionally the front (Conv1d subsampling 4x +
positions), blocks [first, last) and optionally the exit head after block `last - 1`. It is rebuilt here from
TensorFlow primitives that convert to int8 TFLite ops TensorFlow Lite Micro runs (FULLY_CONNECTED, CONV_2D,
DEPTHWISE_CONV_2D, BATCH_MATMUL, SOFTMAX, LOGISTIC, MEAN, SQUARED_DIFFERENCE, RSQRT, ADD/SUB/MUL, ...), with the
torch weights copied in (eval-mode BatchNorm folded into the depthwise convolution, the macaron 1/2 folded into
the feed-forward output layer, 1/sqrt(d_head) folded into the query projection).

Inputs (looked up by name in the .tflite, never by position):
- `feats` [1, W, 80] float (int8 after quantization) for a segment with the front, or
  `hidden_in` [1, W/4, d] for a later segment (the previous segment's `hidden`);
- `n_frames` [1] int32: the number of valid FEATURE frames in the window, the same number for every segment of
  the window. The graph derives its masks from it with constant iotas and one LESS each (TFLM runs LESS on
  int32 with broadcasting): feature frame t is valid iff t < n; after the first stride-2 convolution frame t is
  valid iff 2t < n (= t < ceil(n/2)); encoder frame t is valid iff 4t < n (= t < ceil(ceil(n/2)/2), what
  `train.model.subsampled_lengths` gives). One count per window, no divisions on the device.
Outputs: `hidden` [1, W/4, d] (every frame; only the first ceil(n/4) are meaningful) and `logits` [1, W/4, V]
(the exit head before log-softmax, which the device computes in float).

Padded keys get the bounded bias `mask_bias` (-30) before softmax; padded frames are zeroed before the
depthwise convolution and between the two front convolutions, as in train/model.py.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import tensorflow as tf

from eeasr.convert.calibration import DEFAULT_CLIP_PERCENTILE, Reps, clip_ranges
from eeasr.device_program import INPUT_COUNT, INPUT_FEATS, INPUT_HIDDEN, OUTPUT_HIDDEN, OUTPUT_LOGITS

N_MELS = 80
LN_EPS = 1e-5


# ----------------------------------------------------------------------------------------------- weights

def _np(t: Any) -> np.ndarray:
    """A torch tensor as a float32 numpy copy (convert imports torch only through the model it is given)."""
    return t.detach().cpu().float().numpy().copy()


@dataclass
class LayerNormW:
    gamma: np.ndarray
    beta: np.ndarray
    eps: float = LN_EPS


@dataclass
class DenseW:
    """y = x @ w + b with w [in, out] (torch Linear weight transposed)."""
    w: np.ndarray
    b: np.ndarray


@dataclass
class FrontW:
    conv1_w: np.ndarray  # [3, 1, 80, d] (HWIO, time as H)
    conv1_b: np.ndarray
    conv2_w: np.ndarray  # [3, 1, d, d]
    conv2_b: np.ndarray


@dataclass
class BlockW:
    ff1_norm: LayerNormW
    ff1_up: DenseW
    ff1_down: DenseW      # already x0.5 (macaron)
    attn_norm: LayerNormW
    q: DenseW             # already x1/sqrt(d_head)
    k: DenseW
    v: DenseW
    out: DenseW
    conv_norm: LayerNormW
    pw1_a: DenseW         # GLU value half
    pw1_b: DenseW         # GLU gate half
    dw_w: np.ndarray      # [K, 1, d, 1] depthwise, BatchNorm folded
    dw_b: np.ndarray
    pw2: DenseW
    ff2_norm: LayerNormW
    ff2_up: DenseW
    ff2_down: DenseW      # already x0.5
    norm: LayerNormW


def _ln(m: Any) -> LayerNormW:
    return LayerNormW(_np(m.weight), _np(m.bias), float(m.eps))


def _dense(m: Any, scale: float = 1.0) -> DenseW:
    return DenseW(_np(m.weight).T.copy() * scale, _np(m.bias) * scale)


def _conv1x1(w: np.ndarray, b: np.ndarray) -> DenseW:  # torch Conv1d weight [out, in, 1]
    return DenseW(w[:, :, 0].T.copy(), b.copy())


def front_weights(front: Any) -> FrontW:
    """From `train.model.Front`: Conv1d weight [out, in, k] -> HWIO [k, 1, in, out]."""
    def hwio(w: np.ndarray) -> np.ndarray:
        return np.transpose(w, (2, 1, 0))[:, None, :, :].copy()
    return FrontW(hwio(_np(front.conv1.weight)), _np(front.conv1.bias),
                  hwio(_np(front.conv2.weight)), _np(front.conv2.bias))


def block_weights(block: Any) -> BlockW:
    """From `train.model.ConformerBlock` in eval mode (BatchNorm running statistics are folded)."""
    d = block.attn.q.in_features
    d_head = d // block.attn.heads
    conv = block.conv
    pw1_w, pw1_b = _np(conv.pw1.weight), _np(conv.pw1.bias)
    bn = conv.bn
    bn_scale = _np(bn.weight) / np.sqrt(_np(bn.running_var) + bn.eps)
    dw = _np(conv.dw.weight)[:, 0, :]  # [d, K]
    dw_w = (dw * bn_scale[:, None]).T[:, None, :, None].copy()  # [K, 1, d, 1]
    dw_b = (_np(conv.dw.bias) - _np(bn.running_mean)) * bn_scale + _np(bn.bias)
    return BlockW(
        ff1_norm=_ln(block.ff1.norm), ff1_up=_dense(block.ff1.up), ff1_down=_dense(block.ff1.down, 0.5),
        attn_norm=_ln(block.attn.norm), q=_dense(block.attn.q, 1.0 / math.sqrt(d_head)),
        k=_dense(block.attn.k), v=_dense(block.attn.v), out=_dense(block.attn.out),
        conv_norm=_ln(conv.norm), pw1_a=_conv1x1(pw1_w[:d], pw1_b[:d]), pw1_b=_conv1x1(pw1_w[d:], pw1_b[d:]),
        dw_w=dw_w, dw_b=dw_b.astype(np.float32), pw2=_conv1x1(_np(conv.pw2.weight), _np(conv.pw2.bias)),
        ff2_norm=_ln(block.ff2.norm), ff2_up=_dense(block.ff2.up), ff2_down=_dense(block.ff2.down, 0.5),
        norm=_ln(block.norm),
    )


# --------------------------------------------------------------------------------------------- TF pieces

def sinusoid_positions(t: int, d: int) -> np.ndarray:
    """Same table as `train.model.sinusoid_positions` (float32 arithmetic, computed once in numpy)."""
    pos = np.arange(t, dtype=np.float32)[:, None]
    div = np.exp(np.arange(0, d, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / d)).astype(np.float32)
    pe = np.zeros((t, d), np.float32)
    pe[:, 0::2] = np.sin(pos * div)
    pe[:, 1::2] = np.cos(pos * div)
    return pe


def frame_mask(n_frames: tf.Tensor, length: int, stride: int) -> tf.Tensor:
    """[length, 1] float 1/0: frame t (at `stride` feature frames per frame) is valid iff stride*t < n_frames."""
    iota = tf.constant((np.arange(length, dtype=np.int32) * stride)[:, None])
    return tf.cast(tf.less(iota, n_frames), tf.float32)


def layer_norm(x: tf.Tensor, w: LayerNormW) -> tf.Tensor:
    """LayerNorm over the last axis from MEAN, SQUARED_DIFFERENCE, RSQRT, SUB, MUL, ADD (no LN op in TFLM)."""
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    var = tf.reduce_mean(tf.math.squared_difference(x, mean), axis=-1, keepdims=True)
    y = (x - mean) * tf.math.rsqrt(var + w.eps)
    return y * tf.constant(w.gamma) + tf.constant(w.beta)


def dense(x: tf.Tensor, w: DenseW) -> tf.Tensor:
    """[T, in] -> [T, out]: one FULLY_CONNECTED."""
    return tf.matmul(x, tf.constant(w.w)) + tf.constant(w.b)


def silu(x: tf.Tensor) -> tf.Tensor:
    return x * tf.sigmoid(x)


def front(feats: tf.Tensor, n_frames: tf.Tensor, w: FrontW, window: int) -> tf.Tensor:
    """feats [1, W, 80] -> [W/4, d]: masked input, two stride-2 k=3 padding-1 convolutions (ReLU), positions."""
    d = w.conv2_b.shape[0]
    x = tf.reshape(feats, (window, N_MELS)) * frame_mask(n_frames, window, 1)  # [W, 80]
    x = tf.reshape(x, (1, window, 1, N_MELS))
    x = tf.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0)))                        # torch padding=1 on both sides
    x = tf.nn.relu(tf.nn.conv2d(x, tf.constant(w.conv1_w), (1, 2, 1, 1), "VALID") + tf.constant(w.conv1_b))
    x = tf.reshape(x, (window // 2, d)) * frame_mask(n_frames, window // 2, 2)
    x = tf.pad(tf.reshape(x, (1, window // 2, 1, d)), ((0, 0), (1, 1), (0, 0), (0, 0)))
    x = tf.nn.relu(tf.nn.conv2d(x, tf.constant(w.conv2_w), (1, 2, 1, 1), "VALID") + tf.constant(w.conv2_b))
    x = tf.reshape(x, (window // 4, d))
    return x + tf.constant(sinusoid_positions(window // 4, d))


def feed_forward(x: tf.Tensor, norm: LayerNormW, up: DenseW, down: DenseW) -> tf.Tensor:
    """down(SiLU(up(LN(x)))). SiLU = x * sigmoid(x) keeps three [T, ff] int8 tensors alive at once: the arena
    peak of a block at d=144, ff=576. (Running it on slices of frames does not help under TFLM: the converter
    gives every slice its own copy of the weights.)"""
    return dense(silu(dense(layer_norm(x, norm), up)), down)


def self_attention(x: tf.Tensor, key_bias: tf.Tensor, w: BlockW, heads: int) -> tf.Tensor:
    """x [T, d], key_bias [1, 1, T] -> [T, d]. Heads via RESHAPE + TRANSPOSE, scores via BATCH_MATMUL."""
    t, d = x.shape
    dh = d // heads
    h = layer_norm(x, w.attn_norm)

    def split(y: tf.Tensor) -> tf.Tensor:  # [T, d] -> [H, T, dh]
        return tf.transpose(tf.reshape(y, (t, heads, dh)), (1, 0, 2))

    q, k = split(dense(h, w.q)), split(dense(h, w.k))
    # V goes in as [H, dh, T] so both products are BATCH_MATMUL with adj_y=True: with adj_y=False TFLM keeps a
    # transposed copy of the right operand in PERSISTENT arena memory (H*T*dh bytes per op, never reused).
    v_t = tf.transpose(tf.reshape(dense(h, w.v), (t, heads, dh)), (1, 2, 0))
    scores = tf.matmul(q, k, transpose_b=True) + key_bias                   # [H, T, T]; 1/sqrt(dh) is in q
    y = tf.matmul(tf.nn.softmax(scores, axis=-1), v_t, transpose_b=True)    # [H, T, dh]
    y = tf.reshape(tf.transpose(y, (1, 0, 2)), (t, d))
    return dense(y, w.out)


def conv_module(x: tf.Tensor, mask: tf.Tensor, w: BlockW) -> tf.Tensor:
    """x [T, d], mask [T, 1] -> [T, d]: LN, pointwise + GLU, zero padded frames, depthwise (BN folded), SiLU, pw."""
    t, d = x.shape
    y = layer_norm(x, w.conv_norm)
    y = dense(y, w.pw1_a) * tf.sigmoid(dense(y, w.pw1_b)) * mask
    y = tf.nn.depthwise_conv2d(tf.reshape(y, (1, t, 1, d)), tf.constant(w.dw_w), (1, 1, 1, 1), "SAME")
    y = silu(tf.reshape(y, (t, d)) + tf.constant(w.dw_b))
    return dense(y, w.pw2)


def conformer_block(x: tf.Tensor, mask: tf.Tensor, key_bias: tf.Tensor, w: BlockW, heads: int) -> tf.Tensor:
    x = x + feed_forward(x, w.ff1_norm, w.ff1_up, w.ff1_down)
    x = x + self_attention(x, key_bias, w, heads)
    x = x + conv_module(x, mask, w)
    x = x + feed_forward(x, w.ff2_norm, w.ff2_up, w.ff2_down)
    return layer_norm(x, w.norm)


# ------------------------------------------------------------------------------------------------ segment

@dataclass
class SegmentSpec:
    window: int                      # W feature frames (a multiple of 4)
    d_model: int
    n_heads: int
    vocab_size: int
    first_block: int
    last_block: int
    with_front: bool
    with_exit: bool
    mask_bias: float = -30.0

    @property
    def frames(self) -> int:
        return self.window // 4


@dataclass
class TFSegment:
    """A segment as a tf.function with a fixed input signature; `fn(x, n_frames)` returns
    {"hidden": [1, W/4, d], "logits": [1, W/4, V]} (logits only if spec.with_exit)."""
    spec: SegmentSpec
    front: FrontW | None
    blocks: list[BlockW]
    exit: DenseW | None
    fn: Callable[..., dict[str, tf.Tensor]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        s = self.spec
        in_name = INPUT_FEATS if s.with_front else INPUT_HIDDEN
        in_shape = (1, s.window, N_MELS) if s.with_front else (1, s.frames, s.d_model)

        def run(x: tf.Tensor, n_frames: tf.Tensor) -> dict[str, tf.Tensor]:
            if self.front is not None:
                h = front(x, n_frames, self.front, s.window)
            else:
                h = tf.reshape(x, (s.frames, s.d_model))
            mask = frame_mask(n_frames, s.frames, 4)                        # [T, 1]
            key_bias = tf.reshape(mask * -s.mask_bias + s.mask_bias, (1, 1, s.frames))
            for bw in self.blocks:
                h = conformer_block(h, mask, key_bias, bw, s.n_heads)
            out = {OUTPUT_HIDDEN: tf.reshape(h, (1, s.frames, s.d_model))}
            if self.exit is not None:
                out[OUTPUT_LOGITS] = tf.reshape(dense(h, self.exit), (1, s.frames, s.vocab_size))
            return out

        sig = [tf.TensorSpec(in_shape, tf.float32, name=in_name), tf.TensorSpec((1,), tf.int32, name=INPUT_COUNT)]
        self.fn = tf.function(run, input_signature=sig, autograph=False)

    @property
    def input_names(self) -> list[str]:
        return [INPUT_FEATS if self.spec.with_front else INPUT_HIDDEN, INPUT_COUNT]

    @property
    def output_names(self) -> list[str]:
        return [OUTPUT_HIDDEN, OUTPUT_LOGITS] if self.exit is not None else [OUTPUT_HIDDEN]

    def __call__(self, x: np.ndarray, n_frames: int) -> dict[str, np.ndarray]:
        out = self.fn(tf.constant(x, tf.float32), tf.constant([n_frames], tf.int32))
        return {k: v.numpy() for k, v in out.items()}


def torch_to_tf_segment(model: Any, first_block: int, last_block: int, with_front: bool, with_exit: bool,
                        window: int) -> TFSegment:
    """Copy blocks [first_block, last_block) of a `train.model.EarlyExitConformer` (eval-mode statistics) into a
    TF segment for a window of `window` feature frames; `with_exit` adds the exit head after block last_block-1
    (layer number `last_block` must be one of cfg.exits)."""
    cfg = model.cfg
    if window % 4 or window <= 0:
        raise ValueError(f"window {window} must be a positive multiple of 4 (two stride-2 convolutions)")
    if not 0 <= first_block < last_block <= len(model.blocks):
        raise ValueError(f"blocks [{first_block}, {last_block}) outside 0..{len(model.blocks)}")
    if with_front and first_block != 0:
        raise ValueError("the front belongs to the segment that starts at block 0")
    exit_w = None
    if with_exit:
        if last_block not in cfg.exits:
            raise ValueError(f"no exit after layer {last_block}; exits are {cfg.exits}")
        exit_w = _dense(model.exits[cfg.exits.index(last_block)])
    spec = SegmentSpec(window=window, d_model=cfg.d_model, n_heads=cfg.n_heads, vocab_size=cfg.vocab_size,
                       first_block=first_block, last_block=last_block, with_front=with_front, with_exit=with_exit,
                       mask_bias=float(cfg.mask_bias))
    return TFSegment(spec, front_weights(model.front) if with_front else None,
                     [block_weights(model.blocks[i]) for i in range(first_block, last_block)], exit_w)


# ------------------------------------------------------------------------------------------------ int8

def set_full_integer(conv: tf.lite.TFLiteConverter, activations: str = "int8") -> None:
    """Restrict a TFLite converter to full-integer kernels with integer inputs and outputs: int8 throughout
    (`activations="int8"`) or the 16x8 scheme (int8 weights, int16 activations, inputs and outputs)."""
    if activations == "int16":
        conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int16
    elif activations == "int8":
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int8
    else:
        raise ValueError(f"activations must be int8 or int16, got {activations!r}")


def full_integer_converter(fn: Any, reps: Reps, activations: str = "int8"
                           ) -> tuple[tf.lite.TFLiteConverter, dict[str, str], list[str]]:
    """A TFLiteConverter for the tf.function `fn` (fixed input signature) set up for full-integer conversion with
    `reps` as representative data; also the renames that give its outputs the names of fn's output dict keys,
    and the input and output names the converted model must carry."""
    concrete = fn.get_concrete_function()
    specs = list(fn.input_signature)
    data = [[np.asarray(a, s.dtype.as_numpy_dtype) for a, s in zip(r, specs)] for r in reps]
    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: iter(data)
    set_full_integer(conv, activations)
    # The converter keeps the input names (the TensorSpec names) but names outputs after the graph's Identity
    # ops; map them back through the concrete function (its outputs follow tf.nest order of the dict keys).
    keys = tf.nest.flatten({k: k for k in concrete.structured_outputs})
    renames = {o.name.split(":")[0]: k for o, k in zip(concrete.outputs, keys)}
    return conv, renames, [s.name for s in specs] + keys


def calibrate(fn: Any, reps: Reps) -> tuple[bytes, dict[str, str], list[str]]:
    """The float TFLite model of `fn` with the calibrator's min/max of every activation over `reps` (what the
    int8 converter quantizes from), its output renames and its input and output names."""
    conv, renames, io = full_integer_converter(fn, reps)
    conv._experimental_calibrate_only = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return conv.convert(), renames, io


def quantize_calibrated(calibrated: bytes, renames: dict[str, str], io: list[str], activations: str = "int8",
                        denylisted_ops: list[str] | None = None, disable_per_channel: bool = False) -> bytes:
    """TFLite's MLIR quantizer on a calibrated model (what TFLiteConverter.convert runs after calibration for
    int8), integer inputs and outputs, outputs renamed; `denylisted_ops` stay float32 (between DEQUANTIZE and
    QUANTIZE). The quantizer reports its errors on stderr only."""
    from tensorflow.compiler.mlir.lite import types_pb2
    from tensorflow.lite.python import convert as tfl_convert

    int16 = activations == "int16"
    dtype = tf.int16 if int16 else tf.int8
    q = tfl_convert.mlir_quantize(calibrated, disable_per_channel=disable_per_channel, fully_quantize=True,
                                  inference_type=types_pb2.QUANTIZED_INT16 if int16 else types_pb2.QUANTIZED_INT8,
                                  input_data_type=dtype, output_data_type=dtype, denylisted_ops=denylisted_ops)
    return rename_tensors(q, renames, io)


def convert_full_integer(fn: Any, reps: Reps, activations: str = "int8",
                         clip_percentile: float | None = DEFAULT_CLIP_PERCENTILE) -> bytes:
    """Full-integer TFLite of the tf.function `fn` (per-channel int8 weights; int8 activations, inputs and
    outputs, or int16 ones with `activations="int16"`; int32 inputs stay int32), outputs renamed to fn's output
    dict keys. Activation ranges: min/max over `reps` (clip_percentile None), or clipped at the
    [100 - p, p] percentiles (convert/calibration.py). int16 activations take min/max only: TensorFlow's 16x8
    path recalibrates on its own, and 256x finer steps leave little to gain from clipping."""
    if clip_percentile is not None:
        if activations != "int8":
            raise ValueError(f"{activations} activations take min/max ranges (clip_percentile None), not percentiles")
        calibrated, renames, io = calibrate(fn, reps)
        return quantize_calibrated(clip_ranges(calibrated, reps, clip_percentile), renames, io)
    conv, renames, io = full_integer_converter(fn, reps, activations)
    with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": int8 inputs get theirs
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")  # from calibration
        flat = conv.convert()
    return rename_tensors(flat, renames, io)


def segment_reps(representative: Iterable[tuple[np.ndarray, int]]) -> Reps:
    """A segment's (x, n_frames) pairs as representative input lists."""
    return [[np.asarray(x, np.float32), np.array([int(n)], np.int32)] for x, n in representative]


def convert_int8(segment: TFSegment, representative: Iterable[tuple[np.ndarray, int]], activations: str = "int8",
                 clip_percentile: float | None = DEFAULT_CLIP_PERCENTILE) -> bytes:
    """A segment as full-integer TFLite (convert_full_integer): `representative` yields (x, n_frames) pairs;
    input and output names are the contract's."""
    return convert_full_integer(segment.fn, segment_reps(representative), activations, clip_percentile)


def rename_tensors(tflite: bytes, renames: dict[str, str], expect_io: list[str]) -> bytes:
    """Rename tensors of subgraph 0 (old name -> new name) and check that its inputs and outputs then carry
    exactly the names `expect_io` (the device looks them up by name, never by position)."""
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(tflite, 0))
    sub = model.subgraphs[0]
    for t in sub.tensors:
        name = t.name.decode()
        if name in renames:
            t.name = renames[name].encode()
    io = sorted(sub.tensors[i].name.decode() for i in list(sub.inputs) + list(sub.outputs))
    if io != sorted(expect_io):
        raise RuntimeError(f"converted segment has inputs/outputs {io}, expected {sorted(expect_io)}")
    builder = flatbuffers.Builder(len(tflite) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def op_dtypes(tflite: bytes) -> list[tuple[str, str]]:
    """Sorted distinct (op name, dtype of its first input / output) pairs of subgraph 0."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    m = fb.Model.GetRootAsModel(tflite, 0)
    sub = m.Subgraphs(0)
    op_names = {v: k for k, v in fb.BuiltinOperator.__dict__.items() if not k.startswith("_")}
    type_names = {v: k for k, v in fb.TensorType.__dict__.items() if not k.startswith("_")}
    pairs = set()
    for i in range(sub.OperatorsLength()):
        op = sub.Operators(i)
        code = m.OperatorCodes(op.OpcodeIndex())
        name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        tin = type_names[sub.Tensors(op.Inputs(0)).Type()] if op.InputsLength() and op.Inputs(0) >= 0 else "-"
        tout = type_names[sub.Tensors(op.Outputs(0)).Type()]
        pairs.add((name, tin if tin == tout else f"{tin}->{tout}"))
    return sorted(pairs)


__all__ = ["SegmentSpec", "TFSegment", "torch_to_tf_segment", "convert_int8", "convert_full_integer",
           "full_integer_converter", "calibrate", "quantize_calibrated", "segment_reps", "set_full_integer",
           "rename_tensors", "op_dtypes", "front_weights", "block_weights", "sinusoid_positions", "layer_norm",
           "frame_mask", "conformer_block", "front", "INPUT_FEATS", "INPUT_HIDDEN", "INPUT_COUNT", "OUTPUT_HIDDEN",
           "OUTPUT_LOGITS"]
