"""How closely the int8 device segments follow the float model, per candidate conversion: models/default at
EXITS=2 (device exits after layers 2 and 4, the server runs layers 5-12 on the handoff).

    nice -n 19 .venv/bin/python bench/segment_agreement.py                           # every candidate
    nice -n 19 .venv/bin/python bench/segment_agreement.py --only baseline,float-ln  # some of them
    nice -n 19 .venv/bin/python bench/segment_agreement.py --limit 100 --no-demo --only baseline,pct-99.99
    nice -n 19 .venv/bin/python bench/segment_agreement.py --limit 300 --only bounds # the float bounds, more data

Issue 5 asks that handed-off windows agree with the float model run on the same windows at >= 0.99 tokens
(1 - token edit distance / reference length, summed over windows). This benchmark measures that, and where
the loss comes from, on two sets of held-out windows: a fixed seeded subset of --limit test utterances
(bench/testset.py's rule) and the demo's clips (assets/demo: the inputs of tests/test_stream_e2e.py; every
window here, the test scores only the handed-off ones). Windows are cut as that test cuts them (log-mel, the
model's normalization, eeasr.windows). Per candidate conversion:
- the calibration chain of the converter (segment 1 on calibration windows, segment 2 on segment 1's TFLM
  outputs), with that candidate's calibration data and converter settings; each segment loaded by the real
  TFLM interpreter (its smallest arena measured), its ops checked against convert/esp_ops.py's table;
- each window through the device program (eeasr.device_program, TFLM) and the float torch model: the hidden
  state's cosine over valid frames and the exit's frame argmax agreement at each device exit (the last one's
  hidden state is the handoff), then the server's layers (convert/server.py's torch module, which the ONNX
  server model reproduces to 1e-5) on the dequantized handoff: frame argmax agreement and greedy tokens of the
  last exit vs the float model's;
- the same for the demo windows that device would hand off (no device exit's frame entropy passes the
  entropy threshold the converter calibrates on that chain, convert/thresholds.py): what the e2e test scores;
- device cost (convert/cost.py's roofline): flash of both segments, the larger arena, modelled seconds per
  window with ESP-NN kernels and weights in flash. FLOAT32 ops are priced as reference int8 kernels (their
  4-byte tensors are counted): a rough figure, not a measurement.
Candidates: (a) calibration: `baseline` is the converter with min/max ranges (--calibration minmax); then
all 48 calibration utterances, full windows cut from their joined stream (with the partial ones: full windows
alone leave the padding bias uncalibrated and crash TFLM), ranges clipped at activation percentiles instead of
min/max (convert/calibration.py; `pct-99.99` is the converter's default); (b) selective float ops (TFLite's
MLIR quantizer with denylisted ops: they stay float32 between DEQUANTIZE/QUANTIZE); (c) per-tensor instead of
per-channel weights, and the 16x8 scheme (int16 activations) through the MLIR quantizer. The `bounds` rows are not
conversions: the float torch model with only the contract's int8 features, only the int8 handoff, int8
per-channel weights (symmetric, what every TFLM conversion has) with and without int8 features; they bound
what any conversion that keeps int8 features and weights can reach.
Writes segment_agreement.md and segment_agreement.csv under --out.
"""

from __future__ import annotations

import copy
import csv
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from report import parser  # noqa: E402
from testset import seeded_subset, split_utterances  # noqa: E402

from eeasr.audio import load_audio  # noqa: E402
from eeasr.bundle import QParams, dequantize, quantize  # noqa: E402
from eeasr.device_program import OUTPUT_HIDDEN, OUTPUT_LOGITS, run_stage, stage_input  # noqa: E402
from eeasr.exits import greedy_ctc  # noqa: E402
from eeasr.features import log_mel  # noqa: E402
from eeasr.manifest import read_manifest  # noqa: E402
from eeasr.metrics import token_agreement  # noqa: E402
from eeasr.windows import frame_energy, window_spans  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXITS = 2
GROUPS = ("calibration", "float-ops", "other", "bounds")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ windows

@dataclass
class Window:
    """One held-out window: normalized features [T, 80] and the float model's answers on it."""
    feats: np.ndarray
    hidden: dict[int, np.ndarray]      # device exit layer -> float hidden state [T', d]
    argmax: dict[int, np.ndarray]      # device exit layer -> float exit argmax [T']
    last_argmax: np.ndarray            # the last exit's argmax [T']
    tokens: list[int]                  # the last exit's greedy CTC tokens


def load_windows(ck: Any, paths: list[Path], device_layers: list[int]) -> list[Window]:
    """Cut as tests/test_stream_e2e.py cuts (float_tokens): the float reference of the last exit runs on the
    zero-padded window with its valid count, the device exits' on exactly the valid frames."""
    import torch

    from eeasr.convert.segments import torch_float

    w = ck.cfg.data.window
    out = []
    for path in paths:
        logmel = log_mel(load_audio(path), ck.features)
        feats = ck.norm.apply(logmel).astype(np.float32)
        for start, end in window_spans(frame_energy(logmel), w):
            f = feats[start:end]
            x = torch.zeros(1, w, f.shape[1])
            x[0, : len(f)] = torch.from_numpy(f)
            with torch.no_grad():
                logps, lengths = ck.model(x, torch.tensor([len(f)]))
            last = logps[-1][0, : int(lengths[0])].numpy()
            ref = torch_float(ck.model, f, device_layers[-1])
            out.append(Window(f, {k: ref[k][0] for k in device_layers},
                              {k: ref[k][1].argmax(-1) for k in device_layers}, last.argmax(-1), greedy_ctc(last)))
    return out


# ------------------------------------------------------------------------------------------------ candidates

Convert = Callable[[Any, list[tuple[np.ndarray, int]]], bytes]


@dataclass
class Candidate:
    name: str
    group: str
    what: str
    convert: Convert | None = None                 # TFSegment, representative data -> .tflite
    calibration: str = "first32"                   # first32 | all48 | full
    bound: Callable[..., dict[str, Any]] | None = None   # for the `bounds` rows


def candidates() -> list[Candidate]:
    from eeasr.convert.tf_model import calibrate, convert_int8, quantize_calibrated, segment_reps

    def mlir(denylisted_ops: list[str] | None = None, activations: str = "int8", **kw: Any) -> Convert:
        """Min/max calibration, then TFLite's MLIR quantizer with `denylisted_ops` left float32."""
        def run(seg: Any, reps: list[tuple[np.ndarray, int]]) -> bytes:
            cal, names, io = calibrate(seg.fn, segment_reps(reps))
            return quantize_calibrated(cal, names, io, activations, denylisted_ops, **kw)
        return run

    def converter(clip_percentile: float | None) -> Convert:
        """The converter's own conversion (convert/tf_model.py) with min/max (None) or percentile ranges."""
        def run(seg: Any, reps: list[tuple[np.ndarray, int]]) -> bytes:
            return convert_int8(seg, reps, clip_percentile=clip_percentile)
        return run

    minmax = converter(None)

    ln = ["MEAN", "SQUARED_DIFFERENCE", "RSQRT"]
    weight_ops = ["FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D"]
    every = ["RESHAPE", "MUL", "PAD", "ADD", "SUB", *ln, "LOGISTIC", "TRANSPOSE", "BATCH_MATMUL", "SOFTMAX"]
    return [
        Candidate("baseline", "calibration", "`eeasr-convert --calibration minmax` (the converter before "
                  "percentile ranges became its default): min/max over the first 32 calibration windows (partial "
                  "windows, zero-padded)", minmax),
        Candidate("calib-all48", "calibration", "min/max over all 48 calibration utterances", minmax, "all48"),
        Candidate("calib-full", "calibration", "min/max over full windows cut from the 48 utterances joined, and "
                  "the first 32 (partial) windows: full windows alone leave the key-padding bias uncalibrated "
                  "(range [0, 0]) and TFLM crashes on the result", minmax, "full"),
        Candidate("pct-99.99", "calibration", "ranges clipped at the 0.01/99.99 activation percentiles: the "
                  "converter's default (`eeasr-convert --calibration percentile --clip-percentile 99.99`)",
                  converter(99.99)),
        Candidate("pct-99.9", "calibration", "ranges clipped at the 0.1/99.9 activation percentiles",
                  converter(99.9)),
        Candidate("mlir-same", "float-ops", "calibrate-only + MLIR quantizer, nothing denylisted (= baseline)",
                  mlir()),
        Candidate("float-ln", "float-ops", "LayerNorm statistics float32: " + ",".join(ln), mlir(ln)),
        Candidate("float-ln-residual", "float-ops", "LayerNorm and every elementwise op float32 (residual stream "
                  "included): " + ",".join([*ln, "SUB", "MUL", "ADD"]), mlir([*ln, "SUB", "MUL", "ADD"])),
        Candidate("float-attention", "float-ops", "attention scores and softmax float32: BATCH_MATMUL,SOFTMAX",
                  mlir(["BATCH_MATMUL", "SOFTMAX"])),
        Candidate("int8-weight-ops-only", "float-ops", "only " + ",".join(weight_ops) + " int8, the rest float32",
                  mlir(every)),
        Candidate("float-all", "float-ops", "every op float32: only the int8 features, handoff and logits remain",
                  mlir([*every, *weight_ops])),
        Candidate("per-tensor-weights", "other", "per-tensor instead of per-channel int8 weights",
                  mlir(disable_per_channel=True)),
        Candidate("int16-activations", "other", "16x8: int16 activations, int8 weights (MLIR quantizer), "
                  "RSQRT float32", mlir(["RSQRT"], "int16")),
        Candidate("bound-int8-features", "bounds", "float model; int8 features only (the contract's first step)",
                  bound=lambda **kw: kw | {"quant_feats": True}),
        Candidate("bound-int8-handoff", "bounds", "float model; int8 handoff only",
                  bound=lambda **kw: kw | {"quant_handoff": True}),
        Candidate("bound-int8-weights", "bounds", "float model with int8 per-channel weights (front, blocks 1-4)",
                  bound=lambda **kw: kw | {"quant_weights": True}),
        Candidate("bound-int8-weights-features", "bounds", "int8 per-channel weights and int8 features",
                  bound=lambda **kw: kw | {"quant_weights": True, "quant_feats": True}),
    ]


# ------------------------------------------------------------------------------------------------ the chain

@dataclass
class Chain:
    segments: list[Any] = field(default_factory=list)     # convert.segments.DeviceSegment
    unsupported: list[str] = field(default_factory=list)  # op/dtype pairs esp_ops.py's table lacks
    convert_s: float = 0.0


def calibration_windows(calib: Any, kind: str, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(feats [N, W, 80] zero past each count, counts [N]) for a candidate's calibration."""
    if kind == "first32":
        return calib.feats[:32], calib.n_frames[:32]
    if kind == "all48":
        return calib.feats, calib.n_frames
    stream = np.concatenate([calib.feats[i, : calib.n_frames[i]] for i in range(len(calib))])
    n = len(stream) // window
    return (np.concatenate([stream[: n * window].reshape(n, window, -1), calib.feats[:32]]),
            np.concatenate([np.full(n, window, np.int32), calib.n_frames[:32]]))


def build_chain(ck: Any, plans: list[Any], feats: np.ndarray, counts: np.ndarray, convert: Convert) -> Chain:
    """convert.segments.build_device_segments with a given conversion: segment k+1 is calibrated on segment
    k's TFLM outputs; ops outside the esp-tflite-micro table are recorded, not refused (the float candidates
    have them), and TFLM must still load and run every segment."""
    from eeasr.convert.esp_ops import kernel_for
    from eeasr.convert.segments import DeviceSegment
    from eeasr.convert.tf_model import torch_to_tf_segment
    from eeasr.convert.tflm import arena_with_margin, op_uses
    from eeasr.tflm import TFLMSegment, captured_stderr, smallest_arena

    window = ck.cfg.data.window
    chain = Chain()
    hidden: list[Any] = []
    for plan in plans:
        t = time.perf_counter()
        seg = torch_to_tf_segment(ck.model, plan.first_block, plan.last_block, plan.with_front, True, window)
        if plan.with_front:
            reps = [(feats[i][None], int(counts[i])) for i in range(len(counts))]
        else:
            reps = [(h.real(OUTPUT_HIDDEN), int(n)) for h, n in zip(hidden, counts)]
        failed: RuntimeError | None = None
        with captured_stderr() as lines:   # the MLIR quantizer reports its errors on stderr only
            try:
                data = convert(seg, reps)
            except RuntimeError as e:
                failed = e
        if failed is not None:
            why = [ln.split("error: ", 1)[1] for ln in lines if "error: " in ln] or [str(failed).strip()]
            raise RuntimeError(f"{plan.name}: {why[0]}") from None
        uses = op_uses(data)
        chain.unsupported += sorted({f"{u.op} {u.in_dtype}->{u.out_dtype}" for u in uses if kernel_for(u) is None}
                                    - set(chain.unsupported))
        arena_min = smallest_arena(data)
        tflm = TFLMSegment(data, arena_with_margin(arena_min), plan.name)
        ds = DeviceSegment(plan, seg, data, tflm, "int8", arena_min, arena_with_margin(arena_min), tflm.allocations(),
                           uses, time.perf_counter() - t)
        chain.convert_s += ds.convert_s
        stage = ds.stage(chain.segments[-1] if chain.segments else None)
        hidden = [run_stage(stage, quantize(feats[i][None], stage.in_qparams) if plan.with_front
                            else stage_input(stage, hidden[i].raw[OUTPUT_HIDDEN]), int(counts[i]))
                  for i in range(len(counts))]
        chain.segments.append(ds)
    return chain


# ------------------------------------------------------------------------------------------------ scoring

class Score:
    """Accumulates the agreement of one candidate on one set of windows."""

    def __init__(self, layers: list[int]) -> None:
        self.layers = layers
        self.h: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {k: [] for k in layers}
        self.same = {k: 0 for k in layers}
        self.frames = 0
        self.last_same = 0
        self.edits = 0.0
        self.tokens = 0

    def add(self, win: Window, hidden: dict[int, np.ndarray], argmax: dict[int, np.ndarray],
            last_logp: np.ndarray) -> None:
        for k in self.layers:
            if k in hidden:
                self.h[k].append((win.hidden[k], hidden[k]))
                self.same[k] += int((argmax[k] == win.argmax[k]).sum())
        self.frames += len(win.last_argmax)
        self.last_same += int((last_logp.argmax(-1) == win.last_argmax).sum())
        self.edits += (1 - token_agreement(win.tokens, greedy_ctc(last_logp))) * len(win.tokens)
        self.tokens += len(win.tokens)

    def row(self, prefix: str) -> dict[str, Any]:
        from eeasr.convert.segments import cosine

        out: dict[str, Any] = {}
        for k in self.layers:
            if self.h[k]:
                out[f"{prefix}cos_L{k}"] = round(cosine(np.concatenate([a for a, _ in self.h[k]]),
                                                        np.concatenate([b for _, b in self.h[k]])), 5)
                out[f"{prefix}argmax_L{k}"] = round(self.same[k] / self.frames, 4)
        out[f"{prefix}argmax_last"] = round(self.last_same / self.frames, 4)
        out[f"{prefix}token_agreement"] = round(1 - self.edits / max(1, self.tokens), 4)
        out[f"{prefix}token_edits"] = round(self.edits)
        out[f"{prefix}tokens"] = self.tokens
        return out


def server_logp(server: Any, hidden: np.ndarray) -> np.ndarray:
    """The last exit's log-probabilities of the server's layers on one handoff [T', d]."""
    import torch

    with torch.no_grad():
        return server(torch.from_numpy(np.ascontiguousarray(hidden, np.float32))[None],
                      torch.tensor([hidden.shape[0]]))[-1][0].numpy()


def score_chain(chain: Chain, windows: list[Window], server: Any, layers: list[int]) -> Score:
    from eeasr.convert.segments import device_program

    program = device_program(chain.segments)
    score = Score(layers)
    for win in windows:
        out = program.run(*program.quantize_features(win.feats))
        tv = out.encoder_frames
        hidden = {s.exit_layer: s.real(OUTPUT_HIDDEN)[0, :tv] for s in out.steps}
        argmax = {s.exit_layer: s.real(OUTPUT_LOGITS)[0, :tv].argmax(-1) for s in out.steps}
        score.add(win, hidden, argmax, server_logp(server, out.hidden))
    return score


def demo_handoffs(chain: Chain, ck: Any, calib: Any, server: Any, windows: list[Window]) -> list[Window]:
    """The windows the device would hand off: no device exit's frame entropy passes the entropy threshold
    that the converter calibrates (convert/thresholds.py) on this chain's TFLM outputs over the calibration
    set: what tests/test_stream_e2e.py scores."""
    from eeasr.convert.segments import device_program
    from eeasr.convert.thresholds import calibrate
    from eeasr.exits import frame_entropy

    program = device_program(chain.segments)
    n_exits = len(ck.cfg.model.exits)
    logps = []
    for i in range(len(calib)):
        out = program.run(*program.quantize_features(calib.feats[i, : calib.n_frames[i]]))
        row: list[Any] = [e.log_probs() for e in out.exits]
        logps.append(row + [None] * (n_exits - 1 - len(row)) + [server_logp(server, out.hidden)])
    th = calibrate(logps, calib.texts, ck.tokenizer.decode, ck.cfg.model.exits, len(chain.segments))
    threshold = th["measures"]["entropy"]["threshold"]
    kept = []
    for win in windows:
        out = program.run(*program.quantize_features(win.feats))
        if all(frame_entropy(e.log_probs()) > threshold for e in out.exits):
            kept.append(win)
    return kept


def weights_int8(model: Any, n_blocks: int) -> Any:
    """A copy whose front and first n_blocks blocks have symmetric per-output-channel int8 weights (as TFLite's
    per-channel quantization makes them; depthwise BatchNorm folding is left out)."""
    import torch

    m = copy.deepcopy(model)
    mods = [*m.front.modules(), *(x for b in m.blocks[:n_blocks] for x in b.modules())]
    with torch.no_grad():
        for mod in mods:
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv1d)):
                flat = mod.weight.reshape(mod.weight.shape[0], -1)
                s = flat.abs().amax(1).clamp_min(1e-12) / 127
                q = torch.round(flat / s[:, None]).clamp(-127, 127) * s[:, None]
                mod.weight.copy_(q.reshape(mod.weight.shape))
    return m


def score_bound(ck: Any, windows: list[Window], server: Any, layers: list[int], feats_q: QParams, handoff_q: QParams,
                quant_feats: bool = False, quant_handoff: bool = False, quant_weights: bool = False) -> Score:
    """The float torch model with only the named int8 steps (quantization parameters: the baseline's)."""
    import torch

    from eeasr.convert.segments import torch_float

    model = weights_int8(ck.model, layers[-1]) if quant_weights else ck.model
    score = Score(layers)
    for win in windows:
        f = dequantize(quantize(win.feats, feats_q), feats_q) if quant_feats else win.feats
        with torch.no_grad():
            ref = torch_float(model, f, layers[-1])
        h = ref[layers[-1]][0]
        h = dequantize(quantize(h, handoff_q), handoff_q) if quant_handoff else h
        score.add(win, {k: ref[k][0] for k in layers}, {k: ref[k][1].argmax(-1) for k in layers},
                  server_logp(server, h))
    return score


def chain_cost(chain: Chain, window: int) -> dict[str, Any]:
    from eeasr.convert.cost import segment_cost

    costs = [segment_cost(s.tflite, s.arena, window) for s in chain.segments]
    return {"flash_bytes": sum(c.flash_bytes for c in costs), "arena_bytes": max(c.arena_bytes for c in costs),
            "modelled_s_per_window": round(sum(c.latency_s["esp-nn/flash"] for c in costs), 3),
            "modelled_s_reference_kernels": round(sum(c.latency_s["reference/flash"] for c in costs), 3)}


# ------------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "default",
                    help="model directory (default: models/default)")
    ap.add_argument("--manifest", type=Path, default=None,
                    help="corpus manifest (default: ~/.cache/eeasr/corpus/manifest.jsonl)")
    ap.add_argument("--limit", type=int, default=60, metavar="N",
                    help="held-out test utterances, a fixed seeded subset (default: %(default)d)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the subset (default: 0)")
    ap.add_argument("--no-demo", dest="demo", action="store_false", help="skip the demo clips (assets/demo)")
    ap.add_argument("--only", default="", metavar="NAMES",
                    help="comma-separated candidate names or groups (" + ", ".join(GROUPS) + "); default: all")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch and TF (default: 1)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="output directory (default: bench/out)")
    args = ap.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["nice -n 19 .venv/bin/python bench/segment_agreement.py", *given])

    import tensorflow as tf
    import torch

    from eeasr.convert.segments import load_calibration, plan_segments
    from eeasr.convert.server import server_module
    from eeasr.train.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    t_start = time.perf_counter()
    ck = load_checkpoint(args.model)
    window = ck.cfg.data.window
    plans = plan_segments(ck.cfg.model.exits, EXITS)
    layers = [p.exit_layer for p in plans]
    server = server_module(ck.model, layers[-1])
    calib = load_calibration(ck.path, ck.norm, window)
    wanted = {s for s in args.only.split(",") if s}
    todo = [c for c in candidates() if not wanted or c.name in wanted or c.group in wanted]
    if not todo:
        raise SystemExit(f"--only {args.only}: no such candidate or group")

    test_utts = seeded_subset(split_utterances(args.manifest), args.limit, args.seed)
    sets = {"test": load_windows(ck, [u.path for u in test_utts], layers)}
    if args.demo:
        demo = [u.path for u in read_manifest(ROOT / "assets" / "demo" / "manifest.jsonl") if u.path.exists()]
        sets["demo"] = load_windows(ck, demo, layers)
    log(", ".join(f"{k}: {len(v)} windows, {sum(len(w.tokens) for w in v)} float tokens" for k, v in sets.items()))

    rows: list[dict[str, Any]] = []
    baseline: Chain | None = None
    for cand in todo:
        t = time.perf_counter()
        row: dict[str, Any] = {"candidate": cand.name, "group": cand.group, "what": cand.what}
        if cand.bound is not None:
            if baseline is None:   # the bounds use the converter's feature and handoff quantization
                first = candidates()[0]
                baseline = build_chain(ck, plans, *calibration_windows(calib, first.calibration, window), first.convert)
            q = {"feats_q": baseline.segments[0].in_q(), "handoff_q": baseline.segments[-1].out_q()}
            for name, wins in sets.items():
                row.update(score_bound(ck, wins, server, layers, **cand.bound(**q)).row(f"{name}_"))
        else:
            try:
                chain = build_chain(ck, plans, *calibration_windows(calib, cand.calibration, window), cand.convert)
            except Exception as e:  # noqa: BLE001 - a candidate that does not convert is a result
                row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
                log(f"{cand.name}: does not convert: {row['error']}")
                rows.append(row)
                continue
            if cand.name == "baseline":
                baseline = chain
            for name, wins in sets.items():
                row.update(score_chain(chain, wins, server, layers).row(f"{name}_"))
            if "demo" in sets:
                handed = demo_handoffs(chain, ck, calib, server, sets["demo"])
                row.update({k.replace("demo_", "demo_handoff_"): v for k, v in
                            score_chain(chain, handed, server, layers).row("demo_").items()
                            if k.startswith("demo_token")})
            row.update(chain_cost(chain, window))
            row["convert_s"] = round(chain.convert_s, 1)
            row["not_in_esp_op_table"] = "; ".join(chain.unsupported)
        rows.append(row)
        log(f"{cand.name} ({time.perf_counter() - t:.0f} s): " + ", ".join(
            f"{k}={v}" for k, v in row.items() if k.endswith(("token_agreement", "argmax_last", f"cos_L{layers[-1]}"))))

    from importlib.metadata import version

    sizes = ", ".join(f"{k} {len(v)} windows / {sum(len(w.tokens) for w in v)} tokens" for k, v in sets.items())
    head = (f"Agreement with the float model of the int8 device segments (EXITS={EXITS}: exits after layers "
            f"{', '.join(map(str, layers))} on the device, the server's layers on the handoff), per candidate "
            f"conversion. Model {ck.model_hash}; held-out windows: {args.limit} test utterances (seed {args.seed}) "
            f"and the demo clips ({sizes}); tensorflow {version('tensorflow-cpu')}, tflite-micro "
            f"{version('tflite-micro')}. Token agreement: 1 - token edit distance / float tokens (greedy CTC, last "
            f"exit, server on the dequantized handoff). Cost: both segments, ESP-NN kernels, weights in flash "
            f"(convert/cost.py's roofline). Took {(time.perf_counter() - t_start) / 60:.1f} min.\n\n`{command}`\n\n")
    cols = ["candidate", "test_cos_L%d" % layers[0], "test_argmax_L%d" % layers[0], "test_cos_L%d" % layers[-1],
            "test_argmax_L%d" % layers[-1], "test_argmax_last", "test_token_agreement", "demo_token_agreement",
            "demo_handoff_token_agreement",
            "flash_bytes", "arena_bytes", "modelled_s_per_window", "not_in_esp_op_table"]
    titles = ["candidate", f"cos L{layers[0]}", f"argmax L{layers[0]}", f"cos L{layers[-1]} (handoff)",
              f"argmax L{layers[-1]}", "argmax last exit", "tokens (test)", "tokens (demo)",
              "tokens (demo, handed off)", "flash B", "arena B",
              "s / window", "ops outside the esp-tflite-micro table"]
    table = "| " + " | ".join(titles) + " |\n|" + "---|" * len(titles) + "\n"
    for r in rows:
        cells = [f"{v:,}" if isinstance(v, int) else str(v) for v in (r.get(c, "") for c in cols)]
        if "error" in r:
            cells = [r["candidate"], f"does not convert: {r['error']}"] + [""] * (len(cols) - 2)
        table += "| " + " | ".join(cells) + " |\n"
    notes = "\n".join(f"- {r['candidate']}: {r['what']}" for r in rows)
    text = head + table + "\n" + notes + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "segment_agreement.md").write_text(text)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(args.out / "segment_agreement.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    log(f"wrote {args.out}/segment_agreement.md, segment_agreement.csv")


if __name__ == "__main__":
    main()
