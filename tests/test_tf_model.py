"""The plain-TensorFlow segment (convert/tf_model.py) equals the torch model, and converts to a TFLM segment
whose tensors carry the contract's names."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

from eeasr.convert.tf_model import (  # noqa: E402
    INPUT_COUNT, INPUT_FEATS, INPUT_HIDDEN, OUTPUT_HIDDEN, OUTPUT_LOGITS, convert_int8, op_dtypes,
    torch_to_tf_segment)
from eeasr.tflm import tensor_names  # noqa: E402
from eeasr.train.config import ModelConfig  # noqa: E402
from eeasr.train.model import EarlyExitConformer, subsampled_lengths  # noqa: E402

W = 64
TOL = 1e-4


@pytest.fixture(scope="module")
def model() -> EarlyExitConformer:
    torch.manual_seed(0)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    cfg = ModelConfig(d_model=64, n_heads=2, ff_dim=128, n_layers=2, exits=[2], vocab_size=37)
    m = EarlyExitConformer(cfg)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the folding is tested
        for block in m.blocks:
            bn = block.conv.bn
            bn.running_mean.normal_(0.0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
    return m.eval()


def torch_reference(m: EarlyExitConformer, feats: torch.Tensor, upto_block: int) -> list[torch.Tensor]:
    """Hidden state after each block < upto_block, torch on the UNPADDED features (no padding anywhere)."""
    n = torch.tensor([feats.shape[1]])
    with torch.no_grad():
        x, lengths = m.front(feats, n)
        mask = torch.ones(1, x.shape[1], dtype=torch.bool)
        bias = m.key_bias(lengths, x.shape[1])
        hidden = []
        for block in m.blocks[:upto_block]:
            x = block(x, mask, bias)
            hidden.append(x)
    return hidden


def padded(x: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """x [1, t, c] in a window of `length` frames; the padding is garbage the masks must ignore."""
    out = rng.normal(0.0, 3.0, (1, length, x.shape[2])).astype(np.float32)
    out[:, : x.shape[1]] = x
    return out


@pytest.mark.parametrize("n_valid", [W // 4, W // 2, W, W - 3])
def test_front_segment_equals_torch(model: EarlyExitConformer, n_valid: int) -> None:
    rng = np.random.default_rng(n_valid)
    feats = rng.standard_normal((1, n_valid, 80)).astype(np.float32)
    hidden = torch_reference(model, torch.from_numpy(feats), 2)
    with torch.no_grad():
        logprobs, lengths = model(torch.from_numpy(feats), torch.tensor([n_valid]))
    t = int(subsampled_lengths(torch.tensor(n_valid)))
    assert int(lengths[0]) == t == hidden[-1].shape[1]

    seg = torch_to_tf_segment(model, 0, 2, True, True, W)
    out = seg(padded(feats, W, rng), n_valid)
    assert out[OUTPUT_HIDDEN].shape == (1, W // 4, 64) and out[OUTPUT_LOGITS].shape == (1, W // 4, 37)
    h_diff = np.abs(out[OUTPUT_HIDDEN][0, :t] - hidden[-1][0].numpy()).max()
    logits = model.exits[0](hidden[-1])[0].detach().numpy()
    l_diff = np.abs(out[OUTPUT_LOGITS][0, :t] - logits).max()
    assert h_diff < TOL and l_diff < TOL, (h_diff, l_diff)
    # The device's float log-softmax over the int8 head gives the model's exit output.
    lsm = tf.nn.log_softmax(out[OUTPUT_LOGITS][0, :t]).numpy()
    assert np.abs(lsm - logprobs[0][0].numpy()).max() < TOL


@pytest.mark.parametrize("n_valid", [W // 4, W // 2, W])
def test_later_segment_equals_torch(model: EarlyExitConformer, n_valid: int) -> None:
    """Blocks [1, 2) + exit, fed the previous segment's hidden state (padded with garbage) and the same count."""
    rng = np.random.default_rng(100 + n_valid)
    feats = rng.standard_normal((1, n_valid, 80)).astype(np.float32)
    h1, h2 = torch_reference(model, torch.from_numpy(feats), 2)
    seg = torch_to_tf_segment(model, 1, 2, False, True, W)
    assert seg.input_names == [INPUT_HIDDEN, INPUT_COUNT]
    out = seg(padded(h1.numpy(), W // 4, rng), n_valid)
    t = h2.shape[1]
    logits = model.exits[0](h2)[0].detach().numpy()
    assert np.abs(out[OUTPUT_HIDDEN][0, :t] - h2[0].numpy()).max() < TOL
    assert np.abs(out[OUTPUT_LOGITS][0, :t] - logits).max() < TOL


def test_segment_without_exit(model: EarlyExitConformer) -> None:
    rng = np.random.default_rng(7)
    feats = rng.standard_normal((1, W // 2, 80)).astype(np.float32)
    (h1,) = torch_reference(model, torch.from_numpy(feats), 1)
    seg = torch_to_tf_segment(model, 0, 1, True, False, W)
    out = seg(padded(feats, W, rng), W // 2)
    assert set(out) == {OUTPUT_HIDDEN}
    assert np.abs(out[OUTPUT_HIDDEN][0, : h1.shape[1]] - h1[0].numpy()).max() < TOL


def test_bad_segments_are_refused(model: EarlyExitConformer) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        torch_to_tf_segment(model, 0, 2, True, True, 62)
    with pytest.raises(ValueError, match="no exit after layer 1"):
        torch_to_tf_segment(model, 0, 1, True, True, W)
    with pytest.raises(ValueError, match="front"):
        torch_to_tf_segment(model, 1, 2, True, True, W)


def test_int8_segment_runs_in_tflm_by_name(model: EarlyExitConformer) -> None:
    """Full-int8 conversion: contract names on the tensors, only int8 compute ops, the real TFLM runs it."""
    runtime = pytest.importorskip("tflite_micro.python.tflite_micro.runtime")
    rng = np.random.default_rng(3)
    seg = torch_to_tf_segment(model, 0, 2, True, True, W)
    reps = []
    for n in rng.integers(W // 8, W + 1, 16).tolist():
        x = rng.standard_normal((1, W, 80)).astype(np.float32)
        x[:, n:] = 0.0
        reps.append((x, n))
    tflite = convert_int8(seg, reps)
    ins, outs = tensor_names(tflite)
    assert sorted(ins) == sorted([INPUT_FEATS, INPUT_COUNT]) and sorted(outs) == sorted([OUTPUT_HIDDEN,
                                                                                          OUTPUT_LOGITS])
    float_ops = {op for op, dt in op_dtypes(tflite) if "FLOAT32" in dt}
    assert float_ops <= {"CAST", "QUANTIZE"}, float_ops  # only the [T, 1] mask vectors pass through float

    interp = runtime.Interpreter.from_bytes(tflite, arena_size=1 << 20)
    n = W // 2
    x = rng.standard_normal((1, W, 80)).astype(np.float32)
    x[:, n:] = 0.0
    q = interp.get_input_details(ins.index(INPUT_FEATS))["quantization_parameters"]
    xq = np.clip(np.round(x / q["scales"][0]) + q["zero_points"][0], -128, 127).astype(np.int8)
    interp.set_input(xq, ins.index(INPUT_FEATS))
    interp.set_input(np.array([n], np.int32), ins.index(INPUT_COUNT))
    interp.invoke()
    i = outs.index(OUTPUT_HIDDEN)
    dq = interp.get_output_details(i)["quantization_parameters"]
    got = (interp.get_output(i).astype(np.float32) - dq["zero_points"][0]) * dq["scales"][0]
    ref = seg(x, n)[OUTPUT_HIDDEN]
    t = n // 4
    a, b = got[0, :t].ravel(), ref[0, :t].ravel()
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99
