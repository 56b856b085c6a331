"""Measure the device window W: flash, TFLM arena, MACs, handoff bandwidth per W and frame rate.

    .venv/bin/python bench/window_table.py                 # W in 200 400 600 800, writes docs/decisions/0002
    .venv/bin/python bench/window_table.py --windows 600 --no-write

For each W it builds segment 1 of the device program (Front + blocks 0-1 + exit head 1, d=144, 4 heads, ff 576,
kernel 15, vocab 257) from a randomly initialized `EarlyExitConformer` in eval mode, converts it full-integer
int8 (representative set: 32 standard-normal feature windows, random valid counts, zeros past the count), loads
it in the real TFLM interpreter (`tflite_micro` wheel) and finds the smallest arena by bisection. The 6x frame
rate is estimated analytically (and its arena by the 4x segment with the same number of encoder frames).
Results go between the markers of docs/decisions/0002-window-and-frame-rate.md (the decision prose is kept).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb  # noqa: E402

from eeasr.bundle import dequantize, quantize  # noqa: E402
from eeasr.convert.tf_model import (  # noqa: E402
    INPUT_COUNT, INPUT_FEATS, N_MELS, OUTPUT_HIDDEN, OUTPUT_LOGITS, convert_int8, op_dtypes, torch_to_tf_segment)
from eeasr.tflm import TFLMSegment, smallest_arena  # noqa: E402
from eeasr.train.config import ModelConfig  # noqa: E402
from eeasr.train.model import EarlyExitConformer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "decisions" / "0002-window-and-frame-rate.md"
BEGIN, END = "<!-- window_table:begin -->", "<!-- window_table:end -->"
FEATURE_RATE = 100  # feature frames per second (10 ms hop)
SEGMENT_BLOCKS = 2  # segment 1 = front + blocks [0, 2) + exit after layer 2


# ------------------------------------------------------------------------------------------ analytic cost

def enc_frames(window: int, factor: int) -> int:
    """Encoder frames: ceil(W/2) after the stride-2 layer, then ceil(./2) (4x) or ceil(./3) (6x)."""
    half = -(-window // 2)
    return -(-half // (factor // 2))


def front_macs(window: int, d: int, factor: int, n_mels: int = N_MELS) -> int:
    """conv1: k=3 stride 2, 80 -> d at W/2 frames; conv2 (4x): k=3 stride 2, d -> d at W/4;
    conv2 (6x, assumed): k=5 stride 3, d -> d at W/6 (a stride-3 layer needs k >= 3; ESPnet's 6x uses 5)."""
    t_half, t = -(-window // 2), enc_frames(window, factor)
    k2 = 3 if factor == 4 else 5
    return t_half * d * n_mels * 3 + t * d * d * k2


def block_macs(t: int, d: int, ff: int, kernel: int) -> dict[str, int]:
    """One Conformer block at T frames: two FF (T*d*ff*2 each), q/k/v/out (4 T d^2), scores and weighted
    values (2 T^2 d, all heads together), conv module pointwise 2d + d (3 T d^2) and depthwise (T d K)."""
    return {"ff": 2 * 2 * t * d * ff, "proj": 4 * t * d * d, "attn": 2 * t * t * d,
            "conv": 3 * t * d * d + t * d * kernel}


def segment_macs(window: int, cfg: ModelConfig, factor: int = 4, blocks: int = SEGMENT_BLOCKS) -> int:
    t = enc_frames(window, factor)
    per_block = sum(block_macs(t, cfg.d_model, cfg.ff_dim, cfg.conv_kernel).values())
    return front_macs(window, cfg.d_model, factor) + blocks * per_block + t * cfg.d_model * cfg.vocab_size


def graph_macs(tflite: bytes) -> int:
    """MACs counted from the converted graph's tensor shapes (cross-check of `segment_macs`)."""
    m = fb.Model.GetRootAsModel(tflite, 0)
    sub = m.Subgraphs(0)
    code = fb.BuiltinOperator
    total = 0
    for i in range(sub.OperatorsLength()):
        op = sub.Operators(i)
        oc = m.OperatorCodes(op.OpcodeIndex())
        kind = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        out = sub.Tensors(op.Outputs(0)).ShapeAsNumpy()
        n_out = int(np.prod(out))
        if kind == code.FULLY_CONNECTED:
            total += n_out * int(sub.Tensors(op.Inputs(1)).ShapeAsNumpy()[1])
        elif kind == code.CONV_2D:
            f = sub.Tensors(op.Inputs(1)).ShapeAsNumpy()  # [out, kh, kw, in]
            total += n_out * int(f[1] * f[2] * f[3])
        elif kind == code.DEPTHWISE_CONV_2D:
            f = sub.Tensors(op.Inputs(1)).ShapeAsNumpy()  # [1, kh, kw, out]
            total += n_out * int(f[1] * f[2])
        elif kind == code.BATCH_MATMUL:
            lhs = sub.Tensors(op.Inputs(0)).ShapeAsNumpy()
            total += n_out * int(lhs[-1])
    return total


# --------------------------------------------------------------------------------------------- measuring

def feature_window(rng: np.random.Generator, window: int, n_valid: int) -> np.ndarray:
    """Standard-normal features (the training set's global normalization), zeros past the valid count."""
    x = rng.standard_normal((1, window, N_MELS)).astype(np.float32)
    x[:, n_valid:] = 0.0
    return x


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


@dataclass
class Row:
    window: int
    frames: int
    flash: int
    arena: int
    arena_head: int
    arena_tail: int
    macs: int
    macs_graph: int
    convert_s: float
    invoke_s: float
    hidden_cos: float
    hidden_cos_min_frame: float
    logits_cos: float
    argmax_agree: float
    ops: list[tuple[str, str]]


def measure(model: EarlyExitConformer, window: int, n_reps: int, seed: int) -> Row:
    cfg = model.cfg
    rng = np.random.default_rng(seed + window)
    t0 = time.perf_counter()
    seg = torch_to_tf_segment(model, 0, SEGMENT_BLOCKS, True, True, window)
    reps = []
    for _ in range(n_reps):
        n = int(rng.integers(window // 8, window + 1))
        reps.append((feature_window(rng, window, n), n))
    tflite = convert_int8(seg, reps)
    convert_s = time.perf_counter() - t0

    arena = smallest_arena(tflite)
    dev = TFLMSegment(tflite, arena, f"segment 1 (W={window})")
    alloc = dev.allocations()
    x_q = dev.inputs[INPUT_FEATS].qparams

    # int8 (TFLM) vs float (the TF copy, which equals torch) on held-out windows, valid frames only.
    hid_f, hid_q, lg_f, lg_q, frame_cos, invoke = [], [], [], [], [], []
    for n in (window // 4, window // 2, 3 * window // 4, window, *rng.integers(window // 8, window + 1, 4)):
        n = int(n)
        x = feature_window(rng, window, n)
        ref = seg(x, n)
        t0 = time.perf_counter()
        raw = dev.run({INPUT_FEATS: quantize(x, x_q), INPUT_COUNT: np.array([n], np.int32)})
        invoke.append(time.perf_counter() - t0)
        got = {name: dequantize(v, dev.outputs[name].qparams) for name, v in raw.items()}
        t = -(-n // 4)
        hf, hq = ref[OUTPUT_HIDDEN][0, :t], got[OUTPUT_HIDDEN][0, :t]
        hid_f.append(hf), hid_q.append(hq)
        lg_f.append(ref[OUTPUT_LOGITS][0, :t]), lg_q.append(got[OUTPUT_LOGITS][0, :t])
        frame_cos.extend(cosine(a, b) for a, b in zip(hf, hq))
    lf, lq = np.concatenate(lg_f), np.concatenate(lg_q)
    return Row(window=window, frames=enc_frames(window, 4), flash=len(tflite), arena=arena,
               arena_head=alloc.get("head", -1), arena_tail=alloc.get("tail", -1),
               macs=segment_macs(window, cfg), macs_graph=graph_macs(tflite), convert_s=convert_s,
               invoke_s=float(np.median(invoke)), hidden_cos=cosine(np.concatenate(hid_f), np.concatenate(hid_q)),
               hidden_cos_min_frame=float(min(frame_cos)), logits_cos=cosine(lf, lq),
               argmax_agree=float(np.mean(lf.argmax(-1) == lq.argmax(-1))), ops=op_dtypes(tflite))


def proxy_arena(model: EarlyExitConformer, frames: int, seed: int) -> int:
    """Arena of the 4x segment with `frames` encoder frames: the 6x segment's blocks see the same tensors
    (its front peak, [W, 80] + [W/2, d], stays below the block peak at these sizes)."""
    window = 4 * frames
    rng = np.random.default_rng(seed + 7 * window)
    seg = torch_to_tf_segment(model, 0, SEGMENT_BLOCKS, True, True, window)
    reps = [(feature_window(rng, window, n), n) for n in rng.integers(window // 8, window + 1, 8).tolist()]
    return smallest_arena(convert_int8(seg, reps))


# ---------------------------------------------------------------------------------------------- report

def kb(n: int) -> str:
    return f"{n / 1024:.0f} KiB"


def markdown(rows: list[Row], six: list[tuple[int, int, int, int]], cfg: ModelConfig, command: str,
             tflm_version: str) -> str:
    d, h = cfg.d_model, cfg.n_heads
    out = [f"Measured by `{command}` (tflite-micro {tflm_version}, tensorflow {tf.__version__}, x86-64 host; "
           f"segment 1 = front + {SEGMENT_BLOCKS} blocks + exit, d={d}, heads={h}, ff={cfg.ff_dim}, "
           f"kernel={cfg.conv_kernel}, vocab={cfg.vocab_size}, random weights).", "",
           "### 4x (the contract: two stride-2 Conv1d, 25 encoder frames/s)", "",
           "| W frames (s) | T enc | flash (.tflite) | min arena (activations + persistent) | MACs / window "
           "| MACs / s audio | scores / head / block (T^2 B) | handoff int8 B/s | convert s | TFLM invoke s (x86) "
           "| hidden cos int8 vs float (min frame) | logits cos | argmax agree |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sec = r.window / FEATURE_RATE
        out.append(
            f"| {r.window} ({sec:g}) | {r.frames} | {r.flash:,} B ({r.flash / 2**20:.2f} MiB) "
            f"| {r.arena:,} B = {kb(r.arena)} ({kb(r.arena_head)} + {kb(r.arena_tail)}) "
            f"| {r.macs / 1e6:.1f} M{' (graph ' + f'{r.macs_graph / 1e6:.1f} M)' if r.macs_graph != r.macs else ''} "
            f"| {r.macs / sec / 1e6:.1f} M | {r.frames ** 2:,} ({h} heads: {h * r.frames ** 2:,}) "
            f"| {d * FEATURE_RATE // 4:,} | {r.convert_s:.1f} | {r.invoke_s:.3f} "
            f"| {r.hidden_cos:.4f} ({r.hidden_cos_min_frame:.3f}) | {r.logits_cos:.4f} | {r.argmax_agree:.3f} |")
    out += ["", "MACs (counted analytically, equal to the count from the converted graph's shapes):",
            "`MACs = W/2*d*80*3 + W/4*d*d*3` (front) `+ 2 * (4*T*d*ff + 7*T*d^2 + 2*T^2*d + T*d*K)` (blocks: two",
            "FF, q/k/v/out + pointwise 2d + d, scores + weighted values over all heads, depthwise) `+ T*d*V` (exit),",
            "T = W/4. LayerNorm, softmax, sigmoid and the masks are elementwise and not counted.", "",
            "### 6x (would need a stride-3 layer: not the contract; estimated, not built)", "",
            "| W frames (s) | T enc (6x) | MACs / window | vs 4x | attention (T^2) vs 4x | arena est. "
            "(4x segment with the same T, measured) | handoff int8 B/s |",
            "|---|---|---|---|---|---|---|"]
    by_w = {r.window: r for r in rows}
    for w, t6, macs6, arena6 in six:
        t4 = by_w[w].frames
        out.append(f"| {w} ({w / FEATURE_RATE:g}) | {t6} | {macs6 / 1e6:.1f} M | {macs6 / by_w[w].macs:.2f}x "
                   f"| {(t6 / t4) ** 2:.2f}x | {arena6:,} B = {kb(arena6)} | {d * FEATURE_RATE / 6:,.0f} |")
    out += ["", "6x front assumed as Conv1d k=3 stride 2 then k=5 stride 3: "
            "`W/2*d*80*3 + W/6*d*d*5`; blocks and exit as above with T = ceil(ceil(W/2)/3).", ""]
    ops = sorted({p for r in rows for p in r.ops})
    out += ["(op, dtype) pairs in every segment (TFLM accepted all of them): "
            + ", ".join(f"{o} {t}" for o, t in ops) + "."]
    if any(r.ops != rows[0].ops for r in rows):
        out.append("(The op set differs between windows.)")
    return "\n".join(out)


def write_doc(table: str) -> None:
    text = DOC.read_text() if DOC.exists() else (
        "# 0002 — Device window W and frame rate\n\n" + BEGIN + "\n" + END + "\n")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC} lacks the markers {BEGIN} / {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + BEGIN + "\n" + table + "\n" + END + tail)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, nargs="+", default=[200, 400, 600, 800])
    ap.add_argument("--reps", type=int, default=32, help="representative windows for calibration")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for TensorFlow and torch")
    ap.add_argument("--no-6x", dest="six", action="store_false", help="skip the 6x arena proxies")
    ap.add_argument("--no-write", dest="write", action="store_false", help=f"do not update {DOC.name}")
    args = ap.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join([".venv/bin/python bench/window_table.py", *given])

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = ModelConfig(vocab_size=257)
    model = EarlyExitConformer(cfg).eval()

    from importlib.metadata import version
    tflm_version = version("tflite-micro")
    rows = []
    for w in args.windows:
        r = measure(model, w, args.reps, args.seed)
        rows.append(r)
        print(f"W={w}: flash {r.flash} B, arena {r.arena} B (head {r.arena_head} tail {r.arena_tail}), "
              f"MACs {r.macs} (graph {r.macs_graph}), convert {r.convert_s:.1f} s, hidden cos {r.hidden_cos:.4f}",
              flush=True)
    six = []
    for w in args.windows:
        t6 = enc_frames(w, 6)
        arena6 = proxy_arena(model, t6, args.seed) if args.six else -1
        six.append((w, t6, segment_macs(w, cfg, factor=6), arena6))
    table = markdown(rows, six, cfg, command, tflm_version)
    print(table)
    if args.write:
        write_doc(table)
        print(f"\nwrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
