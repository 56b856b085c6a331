"""Converting an I3D model (train/i3d.py, I3DTransformer) into a gated bundle: one int8 TFLite segment per module,
run by eeasr/gated_program.py on the device, and the remaining layers as a gated server ONNX.

Segments (each rebuilt from convert/tf_model.py's TensorFlow pieces with the torch weights copied in; the test
keeps the TF copies equal to torch):
- `front`: Conv1d subsampling + positions, `feats` + `n_frames` -> `hidden` (the residual stream).
- the gate predictor, Linear + ReLU + Linear on `pooled` (the stream's mean over valid frames, taken on the
  device CPU, see eeasr/gated_program.py) -> `gate`, the margins logit(execute) - logit(skip) (the output
  layer's two rows subtracted, so p = sigmoid(margin)). Global: one segment `gate` on the front output with
  margins for every layer of the model. Local: `l{i}_gate` per device layer on that layer's input.
- `l{i}_mha`: x + MHA(LN(x)) with padded keys biased by mask_bias (`hidden_in` + `n_frames` -> `hidden`);
  `l{i}_ffn`: x + FFN(LN(x)) (`hidden_in` -> `hidden`). A skipped module leaves the stream as it is; each
  module's input is the stream requantized to its own input QParams when they differ.
- `head`: the shared CTC head (LayerNorm + Linear) at the device's last layer, `hidden_in` -> `logits`.

EXITS (`--exits K`) keeps its meaning: the device runs the layers up to the model's K-th exit (I3D's exits are
the InterCTC layers and the last layer: cfg.exits), with the head there as its one exit; the server runs the
rest. Calibration (segment k on the chain's TFLM outputs, as convert/segments.py): two chains over the
calibration windows, both through eeasr/gated_program.py's step functions: A with the gates the int8
predictor opens at the bundle's beta (what the device will run), B with every module open (beta = 0, so a
lower beta at run time stays in range); each module is calibrated on both chains' inputs.

Server: the layers after the device's as ONNX with the gates applied as the float model does: a global
predictor's gates for those layers come from the device (the HANDOFF's module mask carries them, input
`gates` [B, L, 2]); a local predictor's are computed on the server by its own predictors at input `beta`
[1]. Every module is computed and multiplied by its 0/1 gate (exactly x when closed): the server is not the
constrained side. Output `gates_used` [B, L, 2] says which ran.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from eeasr.bundle import Bundle, dequantize, quantize, sha256_bytes, sha256_file
from eeasr.convert.calibration import DEFAULT_CLIP_PERCENTILE, calibration_entry
from eeasr.convert.cost import SegmentCost, segment_cost
from eeasr.convert.esp_ops import OpUse, check_ops
from eeasr.convert.segments import (AgreementError, CalibrationSet, cosine, eval_windows, load_calibration,
                                    load_quantized, op_table, tensor_io)
from eeasr.convert.tf_model import (N_MELS, DenseW, FrontW, LayerNormW, _dense, _ln, _np, convert_full_integer,
                                    dense, feed_forward, frame_mask, front, front_weights, layer_norm,
                                    self_attention)
from eeasr.convert.tflm import op_uses
from eeasr.device_program import INPUT_COUNT, INPUT_FEATS, INPUT_HIDDEN, OUTPUT_HIDDEN, OUTPUT_LOGITS, encoder_frames
from eeasr.exits import log_softmax
from eeasr.gated_program import (FFN, INPUT_POOLED, MHA, OUTPUT_GATE, GatedProgram, Stream, decide, pool_valid,
                                 run_front, run_module, run_predictor, server_gate_input)

from eeasr.server_model import SERVER_INPUT_BETA, SERVER_INPUT_GATES, SERVER_OUTPUT_GATES
from eeasr.tflm import TFLMSegment

Log = Callable[[str], None]
OPSET = 17


# ------------------------------------------------------------------------------------------------ weights

@dataclass
class AttnW:
    """The fields tf_model.self_attention reads (1/sqrt(d_head) folded into q, as for the Conformer)."""
    attn_norm: LayerNormW
    q: DenseW
    k: DenseW
    v: DenseW
    out: DenseW


def attn_weights(attn: Any) -> AttnW:
    """From train.model.SelfAttention."""
    d_head = attn.q.in_features // attn.heads
    return AttnW(_ln(attn.norm), _dense(attn.q, 1.0 / math.sqrt(d_head)), _dense(attn.k), _dense(attn.v),
                 _dense(attn.out))


def gate_weights(gp: Any) -> tuple[DenseW, DenseW]:
    """From train.i3d.GatePredictor: the hidden layer, and the output layer as margins: row 2g+1 (execute) minus
    row 2g (skip) of gate g, so the segment emits logit differences, one per gate."""
    w, b = _np(gp.out.weight), _np(gp.out.bias)
    return _dense(gp.hidden), DenseW((w[1::2] - w[0::2]).T.copy(), (b[1::2] - b[0::2]).copy())


# ------------------------------------------------------------------------------------------ TF module segments

@dataclass
class TFModule:
    """One segment as a tf.function with a fixed input signature; `fn(*inputs)` returns {output name: tensor}."""
    name: str
    role: str                       # front | predictor | mha | ffn | head
    layer: int                      # 1-based layer (0: front and a global predictor)
    inputs: list[tf.TensorSpec]
    build: Callable[..., dict[str, tf.Tensor]] = field(repr=False)
    fn: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.fn = tf.function(self.build, input_signature=self.inputs, autograph=False)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def __call__(self, *args: np.ndarray) -> dict[str, np.ndarray]:
        xs = [tf.constant(a, s.dtype) for a, s in zip(args, self.inputs)]
        return {k: v.numpy() for k, v in self.fn(*xs).items()}


def _hidden_spec(window: int, d: int) -> tf.TensorSpec:
    return tf.TensorSpec((1, window // 4, d), tf.float32, name=INPUT_HIDDEN)


def _count_spec() -> tf.TensorSpec:
    return tf.TensorSpec((1,), tf.int32, name=INPUT_COUNT)


def front_module(w: FrontW, window: int, d: int) -> TFModule:
    def run(x: tf.Tensor, n: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_HIDDEN: tf.reshape(front(x, n, w, window), (1, window // 4, d))}
    return TFModule("front", "front", 0, [tf.TensorSpec((1, window, N_MELS), tf.float32, name=INPUT_FEATS),
                                          _count_spec()], run)


def mha_module(layer: int, w: AttnW, window: int, d: int, heads: int, mask_bias: float) -> TFModule:
    t = window // 4

    def run(x: tf.Tensor, n: tf.Tensor) -> dict[str, tf.Tensor]:
        h = tf.reshape(x, (t, d))
        key_bias = tf.reshape(frame_mask(n, t, 4) * -mask_bias + mask_bias, (1, 1, t))
        return {OUTPUT_HIDDEN: tf.reshape(h + self_attention(h, key_bias, w, heads), (1, t, d))}
    return TFModule(f"l{layer}_mha", "mha", layer, [_hidden_spec(window, d), _count_spec()], run)


def ffn_module(layer: int, norm: LayerNormW, up: DenseW, down: DenseW, window: int, d: int) -> TFModule:
    t = window // 4

    def run(x: tf.Tensor) -> dict[str, tf.Tensor]:
        h = tf.reshape(x, (t, d))
        return {OUTPUT_HIDDEN: tf.reshape(h + feed_forward(h, norm, up, down), (1, t, d))}
    return TFModule(f"l{layer}_ffn", "ffn", layer, [_hidden_spec(window, d)], run)


def predictor_module(name: str, layer: int, hidden: DenseW, margins: DenseW, d: int) -> TFModule:
    def run(p: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_GATE: dense(tf.nn.relu(dense(p, hidden)), margins)}
    return TFModule(name, "predictor", layer, [tf.TensorSpec((1, d), tf.float32, name=INPUT_POOLED)], run)


def head_module(layer: int, norm: LayerNormW, proj: DenseW, window: int, d: int) -> TFModule:
    t, v = window // 4, proj.w.shape[1]

    def run(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_LOGITS: tf.reshape(dense(layer_norm(tf.reshape(x, (t, d)), norm), proj), (1, t, v))}
    return TFModule("head", "head", layer, [_hidden_spec(window, d)], run)


def tf_modules(model: Any, window: int, device_layers: int) -> dict[str, TFModule]:
    """Every segment of the device program for the first `device_layers` layers, by name, in program order."""
    cfg = model.cfg
    d, glob = cfg.d_model, cfg.i3d.predictor == "global"
    mods = [front_module(front_weights(model.front), window, d)]
    if glob:
        mods.append(predictor_module("gate", 0, *gate_weights(model.gate_predictors[0]), d))
    for i, layer in enumerate(model.layers[:device_layers]):
        n = i + 1
        if not glob:
            mods.append(predictor_module(f"l{n}_gate", n, *gate_weights(model.gate_predictors[i]), d))
        mods.append(mha_module(n, attn_weights(layer.attn), window, d, cfg.n_heads, float(cfg.mask_bias)))
        f = layer.ffn
        mods.append(ffn_module(n, _ln(f.norm), _dense(f.up), _dense(f.down), window, d))
    head = model.exits[0]   # one CTC head shared by every exit (InterCTC)
    mods.append(head_module(device_layers, _ln(head.norm), _dense(head.proj), window, d))
    return {m.name: m for m in mods}


# --------------------------------------------------------------------------------------------- int8 segments

@dataclass
class ModuleSegment:
    mod: TFModule
    tflite: bytes
    tflm: TFLMSegment
    arena_min: int
    arena: int
    ops: list[OpUse]
    convert_s: float
    cost: SegmentCost | None = None
    clip_percentile: float | None = None   # activation ranges clipped at this percentile; None: min/max

    @property
    def name(self) -> str:
        return self.mod.name

    def io(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return tensor_io(self.tflm)

    def op_table(self) -> list[list[str]]:
        return op_table(self.ops)


def build_segment(mod: TFModule, reps: list[list[np.ndarray]],
                  clip_percentile: float | None = DEFAULT_CLIP_PERCENTILE) -> ModuleSegment:
    """Convert to int8 (`reps`: representative input lists in the order of mod.inputs; activation ranges
    clipped at `clip_percentile`, None: min/max), check the ops against esp-tflite-micro, load in TFLM with
    the smallest arena (+ margin)."""
    t0 = time.perf_counter()
    data = convert_full_integer(mod.fn, reps, "int8", clip_percentile)
    uses = op_uses(data)
    check_ops(uses, f"{mod.name} ({mod.role}, layer {mod.layer})")
    seg, arena_min, arena = load_quantized(data, mod.name)
    return ModuleSegment(mod, data, seg, arena_min, arena, uses, time.perf_counter() - t0,
                         clip_percentile=clip_percentile)


# ------------------------------------------------------------------------------------------- float reference

@dataclass
class FloatPass:
    """The float model on one UNPADDED window. margins/probs/gates: [layers decided, 2] (every layer of the model
    for a global predictor, the layers run for a local one); hidden[i]: [T, d] after layer i + 1; logits /
    logps: {exit layer: [T, V]} for the exits among the layers run."""
    front: np.ndarray
    margins: np.ndarray
    probs: np.ndarray
    gates: np.ndarray
    hidden: list[np.ndarray]
    logits: dict[int, np.ndarray]
    logps: dict[int, np.ndarray]


def float_pass(model: Any, feats: np.ndarray, beta: float, upto: int | None = None,
               gates: np.ndarray | None = None) -> FloatPass:
    """I3DTransformer.gated at inference (binary gates p > beta, closed modules skipped), one window of features
    [T, 80] without padding, keeping what the converter compares: `gates` [upto, 2] forces the decisions."""
    import torch
    import torch.nn.functional as F

    from eeasr.train.i3d import key_bias
    from eeasr.train.model import valid_mask

    cfg = model.cfg
    upto = cfg.n_layers if upto is None else upto
    glob = cfg.i3d.predictor == "global"
    with torch.no_grad():
        f = torch.from_numpy(np.ascontiguousarray(feats, np.float32))[None]
        x, lengths = model.front(f, torch.tensor([feats.shape[0]]))
        t = x.shape[1]
        mask, bias = valid_mask(lengths, t), key_bias(lengths, t, cfg.mask_bias).to(x)
        front_out = x[0].numpy().copy()
        all_logits = model.gate_predictors[0](x, mask).view(cfg.n_layers, 2, 2) if glob else None
        logits_used, used, hidden, logits, logps = [], [], [], {}, {}
        for i, layer in enumerate(model.layers[:upto]):
            lg = all_logits[i] if glob else model.gate_predictors[i](x, mask)[0]
            logits_used.append(lg)
            g = lg.softmax(-1)[..., 1] > beta if gates is None else torch.as_tensor(np.asarray(gates[i], bool))
            if g[MHA]:
                x = x + layer.attn(x, bias)
            if g[FFN]:
                x = x + layer.ffn(x)
            used.append(g.numpy().copy())
            hidden.append(x[0].numpy().copy())
            if i + 1 in model.exit_layers:
                z = model.exits[model.exit_layers.index(i + 1)](x)
                logits[i + 1] = z[0].numpy().copy()
                logps[i + 1] = F.log_softmax(z, dim=-1)[0].numpy().copy()
        lg_all = all_logits if glob else torch.stack(logits_used)
        margins = (lg_all[..., 1] - lg_all[..., 0]).numpy().astype(np.float64)
        probs = lg_all.softmax(-1)[..., 1].numpy().astype(np.float64)
    return FloatPass(front_out, margins, probs, np.array(used, bool).reshape(-1, 2), hidden, logits, logps)


# ------------------------------------------------------------------------------------------ calibration chain

def _program_dict(cfg: Any, names: list[str], k: int, device_layers: int, beta: float) -> dict[str, Any]:
    glob = cfg.i3d.predictor == "global"
    return {
        "kind": "gated", "front": "front",
        "predictor": {"kind": cfg.i3d.predictor, "hidden": cfg.i3d.hidden,
                      "segments": ["gate"] if glob else [f"l{i}_gate" for i in range(1, device_layers + 1)],
                      "input": INPUT_POOLED, "output": OUTPUT_GATE,
                      "pooling": "on the device CPU: mean of the int8 stream over the valid encoder frames, int32 sum "
                                 "then (sum / t - zero_point) * scale in float32, quantized to the segment's input",
                      "gates": "gate 2 * (layer - 1) + m, m = 0 attention, 1 feed-forward; margin = logit(execute) - "
                               "logit(skip)",
                      "decision": "a module runs iff its margin > log(beta / (1 - beta)), i.e. p(execute) > beta"},
        "layers": [{"layer": i, "mha": f"l{i}_mha", "ffn": f"l{i}_ffn"} for i in range(1, device_layers + 1)],
        "head": {"segment": "head", "exit": k, "layer": device_layers},
        "beta": float(beta), "n_layers": int(cfg.n_layers),
        "module_mask": 2 * (cfg.n_layers if glob else device_layers),
        "stream": "each segment's hidden_in takes the residual stream requantized (eeasr.bundle.requantize) from the "
                  "QParams of the segment that wrote it last, when they differ; a closed gate leaves it unchanged",
        "after_last_step": "head, then handoff of the stream requantized to the head's input",
        "segment_order": names,
    }


def pooled_reps(chains: list[list[Stream]], t_enc: list[int], rep: list[int]) -> list[list[np.ndarray]]:
    """A predictor's representative inputs: each window's stream pooled over its valid frames, and over its
    first ceil(t / 4) and first frame, so the input range also covers the short last windows of utterances
    (a mean over few frames strays further than one over many: out of range it would clip)."""
    return [[pool_valid(c[i], t)] for c in chains for i in rep
            for t in sorted({t_enc[i], -(-t_enc[i] // 4), 1}, reverse=True)]


def build_gated_segments(model: Any, calib: CalibrationSet, window: int, device_layers: int, beta: float,
                         n_reps: int, log: Log, clip_percentile: float | None = DEFAULT_CLIP_PERCENTILE
                         ) -> tuple[dict[str, ModuleSegment], list[Stream], list[np.ndarray], list[np.ndarray]]:
    """The calibration chains (module docstring). Returns the segments by name in program order, and per
    calibration window chain A's final stream, its module mask (as the device sends it) and its head logits."""
    cfg = model.cfg
    mods = tf_modules(model, window, device_layers)
    n_win = len(calib)
    rep = list(range(min(n_reps, n_win)))
    counts = [int(n) for n in calib.n_frames]
    t_enc = [encoder_frames(n) for n in counts]
    segs: dict[str, ModuleSegment] = {}

    def make(name: str, reps: list[list[np.ndarray]]) -> ModuleSegment:
        seg = build_segment(mods[name], reps, clip_percentile)
        segs[name] = seg
        log(f"{name}: converted ({len(seg.tflite):,} B, arena {seg.arena_min:,} B) in {seg.convert_s:.1f} s")
        return seg

    def count(i: int) -> np.ndarray:
        return np.array([counts[i]], np.int32)

    fr = make("front", [[calib.feats[i][None], count(i)] for i in rep])
    chain_a = [run_front(fr.tflm, quantize(calib.feats[i][None], fr.tflm.inputs[INPUT_FEATS].qparams), counts[i])[0]
               for i in range(n_win)]
    chain_b = list(chain_a)
    margins: list[list[np.ndarray]] = [[] for _ in range(n_win)]
    if cfg.i3d.predictor == "global":
        gp = make("gate", pooled_reps([chain_a], t_enc, rep))
        for i in range(n_win):
            margins[i] = list(run_predictor(gp.tflm, chain_a[i], t_enc[i])[0].reshape(cfg.n_layers, 2))
    for li in range(device_layers):
        n = li + 1
        if cfg.i3d.predictor == "local":
            gp = make(f"l{n}_gate", pooled_reps([chain_a, chain_b], t_enc, rep))
            for i in range(n_win):
                margins[i].append(run_predictor(gp.tflm, chain_a[i], t_enc[i])[0])
        for m, name in ((MHA, f"l{n}_mha"), (FFN, f"l{n}_ffn")):
            with_count = INPUT_COUNT in mods[name].input_names
            seg = make(name, [[c[i].real()] + ([count(i)] if with_count else []) for c in (chain_a, chain_b)
                              for i in rep])
            for i in range(n_win):
                if decide(margins[i][li], beta)[m]:
                    chain_a[i] = run_module(seg.tflm, chain_a[i], counts[i])[0]
                chain_b[i] = run_module(seg.tflm, chain_b[i], counts[i])[0]
    head = make("head", [[c[i].real()] for c in (chain_a, chain_b) for i in rep])
    hq = head.tflm.inputs[INPUT_HIDDEN].qparams
    logits, masks = [], []
    for i in range(n_win):
        _, step = run_module(head.tflm, Stream(chain_a[i].to(hq), hq), counts[i])
        logits.append(step.real(OUTPUT_LOGITS)[0, :t_enc[i]])
        dec = decide(np.array(margins[i]).reshape(-1, 2), beta)
        masks.append(dec)
    return segs, chain_a, masks, logits


def program_of(segs: dict[str, ModuleSegment], prog: dict[str, Any], subsampling: int = 4) -> GatedProgram:
    """The converted segments as the gated program a bundle of them describes."""
    return GatedProgram({n: s.tflm for n, s in segs.items()}, prog,
                        {n: (s.cost.macs if s.cost else 0) for n, s in segs.items()}, subsampling)


# ------------------------------------------------------------------------------------------------ agreement

def measure_gated_agreement(model: Any, program: GatedProgram, windows: list[tuple[int, np.ndarray]],
                            beta: float) -> dict[str, Any]:
    """TFLM int8 vs the float model on held-out windows, per T_valid: the hidden state at the device's last layer
    and the head's argmax with the FLOAT gates forced (quantization alone), and the gate decisions the int8
    program takes itself at `beta` vs the float model's (over the layers it decides)."""
    L = program.device_layers
    head_layer = program.stages[0].exit_layer
    acc: dict[int, dict[str, list]] = {}
    for t, feats in windows:
        fp = float_pass(model, feats, beta, upto=L)
        xq, n = program.quantize_features(feats)
        forced = program.run(xq, n, gates=fp.gates[:L])
        own = program.run(xq, n)
        a = acc.setdefault(t, {"hf": [], "hq": [], "lf": [], "lq": [], "gf": [], "gq": [], "pf": []})
        a["hf"].append(fp.hidden[L - 1])
        a["hq"].append(forced.hidden)
        a["lf"].append(fp.logits[head_layer])
        a["lq"].append(forced.exits[0].logits)
        k = min(len(fp.probs), len(own.gates))   # a local predictor decides the layers run only
        decided_f = fp.probs[:k] > beta
        a["gf"].append(decided_f.ravel())
        a["gq"].append(own.gates[:k].ravel())
        a["pf"].append(fp.probs[:k].ravel())
    out: dict[str, Any] = {}
    for t, a in sorted(acc.items()):
        hf, hq = np.concatenate(a["hf"]), np.concatenate(a["hq"])
        lf, lq = np.concatenate(a["lf"]), np.concatenate(a["lq"])
        gf, gq, pf = np.concatenate(a["gf"]), np.concatenate(a["gq"]), np.concatenate(a["pf"])
        differ = gf != gq
        out[str(t)] = {
            "hidden_cos": round(cosine(hf, hq), 6),
            "hidden_cos_min_frame": round(min(cosine(u, v) for u, v in zip(hf, hq)), 6),
            "argmax_agree": round(float(np.mean(lf.argmax(-1) == lq.argmax(-1))), 6),
            "gate_agree": round(float(np.mean(~differ)), 6), "gates": int(len(gf)),
            "gate_disagree_max_abs_p_minus_beta": round(float(np.abs(pf[differ] - beta).max()), 6) if differ.any()
            else None,
            "frames": int(len(hf)),
        }
    return out


# ------------------------------------------------------------------------------------------------ server

def server_module(model: Any, first: int) -> Any:
    """Layers [first, n) of an I3DTransformer with their gates, and the exits after them (module docstring)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    cfg = model.cfg
    glob = cfg.i3d.predictor == "global"

    class GatedServerPart(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(model.layers[first:])
            self.predictors = None if glob else nn.ModuleList(model.gate_predictors[first:])
            self.head = model.exits[0]
            self.exit_after = [layer - 1 - first for layer in model.exit_layers if layer > first]
            self.mask_bias = float(cfg.mask_bias)

        def forward(self, hidden: torch.Tensor, lengths: torch.Tensor, gate_in: torch.Tensor
                    ) -> tuple[torch.Tensor, ...]:
            t = hidden.shape[1]
            mask = torch.arange(t, device=hidden.device)[None, :] < lengths[:, None]
            bias = ((~mask).to(hidden.dtype) * self.mask_bias)[:, None, None, :]
            x, outs, used = hidden, [], []
            for i, layer in enumerate(self.layers):
                if self.predictors is None:
                    g = gate_in[:, i]
                else:
                    g = (self.predictors[i](x, mask).softmax(-1)[..., 1] > gate_in).to(x.dtype)
                x = x + g[:, MHA, None, None] * layer.attn(x, bias)
                x = x + g[:, FFN, None, None] * layer.ffn(x)
                used.append(g)
                if i in self.exit_after:
                    outs.append(F.log_softmax(self.head(x), dim=-1))
            return (*outs, torch.stack(used, 1))

    return GatedServerPart().eval()


def export_gated_onnx(model: Any, first: int, exit_names: list[str]) -> bytes:
    """ONNX (TorchScript exporter, opset 17, dynamic batch and time) of the layers after `first`."""
    import torch

    from eeasr.server_model import SERVER_INPUT_HIDDEN, SERVER_INPUT_LENGTHS

    cfg = model.cfg
    glob = cfg.i3d.predictor == "global"
    module = server_module(model, first)
    x = torch.zeros(2, 8, cfg.d_model)
    lengths = torch.tensor([8, 5])
    gate_in = torch.ones(2, cfg.n_layers - first, 2) if glob else torch.tensor([0.5])
    gate_name = SERVER_INPUT_GATES if glob else SERVER_INPUT_BETA
    outs = [*exit_names, SERVER_OUTPUT_GATES]
    dyn = {SERVER_INPUT_HIDDEN: {0: "batch", 1: "frames"}, SERVER_INPUT_LENGTHS: {0: "batch"}}
    dyn.update({o: {0: "batch", 1: "frames"} for o in exit_names})
    dyn[SERVER_OUTPUT_GATES] = {0: "batch"}
    if glob:
        dyn[SERVER_INPUT_GATES] = {0: "batch"}
    f = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x, lengths, gate_in), f, dynamo=False,
                          input_names=[SERVER_INPUT_HIDDEN, SERVER_INPUT_LENGTHS, gate_name], output_names=outs,
                          dynamic_axes=dyn, opset_version=OPSET, do_constant_folding=True)
    return f.getvalue()


def check_server(model: Any, server: Any, feats: list[np.ndarray], beta: float, device_layers: int,
                 exits: list[tuple[int, int]], tol: float = 2e-3) -> dict[str, float]:
    """The float model's hidden state after the device's layers (float gates at `beta`), padded into one batch,
    through the ONNX; every remaining exit's log-probabilities vs the float model on valid frames."""
    from eeasr.convert.server import ServerCheckError
    from eeasr.server_model import output_name

    passes = [float_pass(model, f, beta) for f in feats]
    lengths = np.array([len(p.front) for p in passes], np.int64)
    x = np.zeros((len(passes), int(lengths.max()), model.cfg.d_model), np.float32)
    for r, p in enumerate(passes):
        x[r, :lengths[r]] = p.hidden[device_layers - 1]
    masks = [p.gates.ravel().tolist() for p in passes]
    got = server(x, lengths, server_gate_input(model.cfg.i3d.predictor, device_layers, model.cfg.n_layers, masks, beta))
    worst = {}
    for j, layer in exits:
        name = output_name(j)
        diff = max(float(np.abs(got[name][r, :lengths[r]] - p.logps[layer]).max()) for r, p in enumerate(passes))
        worst[name] = diff
        if not diff <= tol:
            raise ServerCheckError(f"gated server ONNX {name} differs from torch by {diff:.2e} (max abs "
                                   f"log-probability on valid frames; tolerance {tol:.0e})")
    ran = got[SERVER_OUTPUT_GATES].astype(bool)
    want = np.stack([p.gates[device_layers:] for p in passes])
    if not np.array_equal(ran, want):
        raise ServerCheckError(f"gated server ONNX ran modules {ran.astype(int).tolist()}, torch "
                               f"{want.astype(int).tolist()}")
    return worst


# ------------------------------------------------------------------------------------------------ the bundle

def _segment_entry(seg: ModuleSegment) -> dict[str, Any]:
    ins, outs = seg.io()
    return {
        "name": seg.name, "file": f"segments/{seg.name}.tflite", "sha256": sha256_bytes(seg.tflite),
        "bytes": len(seg.tflite), "role": seg.mod.role, "layer": seg.mod.layer, "activations": "int8",
        **calibration_entry(seg.clip_percentile), "inputs": ins, "outputs": outs,
        "arena": {"min_bytes": seg.arena_min, "bytes": seg.arena, "measured_on": "tflite-micro wheel, x86-64",
                  "allocations": seg.tflm.allocations(),
                  "margin": "bytes = min * 1.10 + 8 KiB, 16-byte aligned (ESP-NN scratch, 32-bit pointers)"},
        "ops": seg.op_table(), "cost": seg.cost.to_dict() if seg.cost else None, "convert_s": round(seg.convert_s, 2),
    }


def convert_i3d(ck: Any, checkpoint: Path, out: Path, opts: Any, log: Log = print,
                t_start: float | None = None) -> Bundle:
    """`eeasr-convert CHECKPOINT --exits K` for an I3D checkpoint (ck: a loaded eeasr.train.checkpoint); raises
    AgreementError, UnsupportedOpError, ServerCheckError, TFLMError, ValueError with what went wrong."""
    from eeasr.convert.build import device_checks, manifest_tail
    from eeasr.convert.bundle import bundle_id, model_sections, write_bundle
    from eeasr.convert.csource import write_firmware
    from eeasr.convert.thresholds import calibrate
    from eeasr.server_model import SERVER_INPUT_HIDDEN, SERVER_INPUT_LENGTHS, ServerModel, output_name

    t_start = time.perf_counter() if t_start is None else t_start
    timings: dict[str, float] = {}
    model, cfg = ck.model, ck.cfg.model
    window, k = ck.cfg.data.window, opts.exits
    if not 1 <= k <= len(cfg.exits):
        raise ValueError(f"--exits {k}: the model has {len(cfg.exits)} exits (after layers {cfg.exits})")
    if opts.int16:
        raise ValueError("--int16: I3D module segments convert in int8 only")
    if getattr(opts, "lm", None) is not None:
        raise ValueError("--lm: only a conformer-aed model rescores with an LM (this is an i3d model)")
    L, beta = cfg.exits[k - 1], float(cfg.i3d.beta)
    calib = load_calibration(ck.path, ck.norm, window)
    log(f"I3D ({cfg.i3d.predictor} gate predictor, beta {beta}): device layers 1-{L} (exit {k}) as module segments, "
        f"calibration set {len(calib)} windows of {window} frames")

    t = time.perf_counter()
    segs, chain, masks, head_logits = build_gated_segments(model, calib, window, L, beta, opts.calibration_windows,
                                                           log, opts.clip_percentile)
    for s in segs.values():
        s.cost = segment_cost(s.tflite, s.arena, window)
    timings["segments"] = time.perf_counter() - t
    prog = _program_dict(cfg, list(segs), k, L, beta)
    program = program_of(segs, prog, cfg.subsampling)

    t = time.perf_counter()
    held_out = list(range(opts.calibration_windows, len(calib))) or list(range(len(calib)))
    windows = eval_windows(calib, held_out, window, opts.eval_windows_per_t)
    agreement = measure_gated_agreement(model, program, windows, beta)
    bad = [f"  T_valid={tv}: hidden-state cosine {a['hidden_cos']:.4f} (required >= {opts.min_cosine}), head argmax "
           f"agreement {a['argmax_agree']:.3f} (required >= {opts.min_agreement})" for tv, a in agreement.items()
           if a["hidden_cos"] < opts.min_cosine or a["argmax_agree"] < opts.min_agreement]
    log("TFLM int8 vs float (float gates forced): " + "; ".join(
        f"T {tv}: cos {a['hidden_cos']:.4f}, argmax {a['argmax_agree']:.3f}, gates agree {a['gate_agree']:.3f}"
        for tv, a in agreement.items()))
    if bad:
        raise AgreementError("int8 module segments under TFLM disagree with the float model:\n" + "\n".join(bad)
                             + "\nmore or better calibration data or fewer device exits may help; --min-cosine / "
                               "--min-agreement set the thresholds")
    timings["agreement"] = time.perf_counter() - t

    t = time.perf_counter()
    rest = [(j + 1, layer) for j, layer in enumerate(cfg.exits) if j >= k]
    server, server_entry, files = None, None, {}
    idx = list(range(min(8, len(calib))))
    if rest:
        names = [output_name(j) for j, _ in rest]
        onnx_bytes = export_gated_onnx(model, L, names)
        server = ServerModel(onnx_bytes)
        check = check_server(model, server, [calib.feats[i, :calib.n_frames[i]] for i in idx], beta, L, rest)
        files["server/server.onnx"] = onnx_bytes
        glob = cfg.i3d.predictor == "global"
        gate_in = ({SERVER_INPUT_GATES: {"dtype": "float32", "shape": ["batch", cfg.n_layers - L, 2],
                                         "note": "1/0 per server module, from the handoff's module mask"}} if glob
                   else {SERVER_INPUT_BETA: {"dtype": "float32", "shape": [1],
                                             "note": "the server's gate threshold (its own local predictors)"}})
        server_entry = {
            "file": "server/server.onnx", "sha256": sha256_bytes(onnx_bytes), "format": "onnx", "opset": OPSET,
            "after_layer": L, "gated": {"predictor": cfg.i3d.predictor, "beta": beta, "n_layers": cfg.n_layers},
            "inputs": {SERVER_INPUT_HIDDEN: {"dtype": "float32", "shape": ["batch", "frames", cfg.d_model],
                                             "note": "the dequantized device handoff"},
                       SERVER_INPUT_LENGTHS: {"dtype": "int64", "shape": ["batch"], "note": "valid encoder frames"},
                       **gate_in},
            "outputs": {**{output_name(j): {"exit": j, "layer": layer, "dtype": "float32", "kind": "log_probs"}
                           for j, layer in rest},
                        SERVER_OUTPUT_GATES: {"dtype": "float32", "kind": "gates",
                                              "shape": ["batch", cfg.n_layers - L, 2]}},
            "check": {"vs_torch_max_abs_logp": check, "runtime": "onnxruntime"}}
        log(f"server: gated ONNX for layers {L + 1}-{cfg.n_layers} ({len(onnx_bytes):,} B), vs torch max |d log p| "
            f"{max(check.values()):.1e}")
    timings["server"] = time.perf_counter() - t

    t = time.perf_counter()
    logps = [[log_softmax(lg)] for lg in head_logits]
    if server is not None:
        hq = program.handoff_qparams
        lengths = np.array([encoder_frames(int(n)) for n in calib.n_frames], np.int64)
        x = dequantize(np.concatenate([s.to(hq) for s in chain]), hq)
        mask_lists = [m.ravel().tolist() for m in masks]
        sout = server(x, lengths, server_gate_input(cfg.i3d.predictor, L, cfg.n_layers, mask_lists, beta))
        for i, row in enumerate(logps):
            row += [sout[output_name(j)][i, :lengths[i]] for j, _ in rest]
    thresholds = calibrate(logps, calib.texts, ck.tokenizer.decode, [L] + [layer for _, layer in rest], 1,
                           opts.target_wer)
    timings["thresholds"] = time.perf_counter() - t

    files.update({f"segments/{n}.tflite": s.tflite for n, s in segs.items()})
    files["tokenizer.model"] = (Path(ck.path) / "tokenizer.model").read_bytes()
    content = {rel: sha256_bytes(b) for rel, b in files.items()}
    head_q = program.handoff_qparams
    exits = [{"index": k, "layer": L, "where": "device", "segment": "head", "output": OUTPUT_LOGITS,
              "kind": "int8 logits; the device takes log-softmax in float"}]
    exits += [{"index": j, "layer": layer, "where": "server", "output": output_name(j), "kind": "log_probs"}
              for j, layer in rest]
    ck_files = {n: sha256_file(Path(ck.path) / n) for n in ("model.pt", "config.yaml", "tokenizer.model", "norm.json",
                                                            "features.json", "calibration.npz")}
    manifest: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bundle_id": bundle_id(ck.model_hash, k, content, {"thresholds": thresholds, "program": prog}),
        **model_sections(ck, checkpoint, ck_files, content["tokenizer.model"], window),
        "device": {
            "exits": k, "layers": L, "target": "ESP32-S3, esp-tflite-micro",
            "segments": [_segment_entry(s) for s in segs.values()],
            "boundaries": [],   # gated: the stream is requantized at run time from whichever segment wrote it
            "handoff": {"from": "head.hidden_in", "layer": L, **head_q.to_dict(),
                        "shape": ["valid encoder frames", cfg.d_model]},
            "program": prog,
            "agreement": agreement,
            **device_checks(opts, sorted({tv for tv, _ in windows})),
        },
        **manifest_tail(exits, thresholds, server_entry, opts),
    }
    manifest["device"]["agreement_gate"]["gates"] = "float gates forced"
    manifest["model"]["i3d"] = {"predictor": cfg.i3d.predictor, "hidden": cfg.i3d.hidden, "beta": beta}
    timings["total_before_write"] = time.perf_counter() - t_start
    manifest["timings_s"] = {n: round(v, 2) for n, v in timings.items()}
    tflite = {n: s.tflite for n, s in segs.items()}
    bundle = write_bundle(Path(out), manifest, files, lambda d, m: write_firmware(d, m, tflite))
    log(f"wrote {out} (bundle {bundle.bundle_id[:12]}, model {ck.model_hash}, {len(segs)} segments) in "
        f"{time.perf_counter() - t_start:.1f} s")
    return bundle


__all__ = ["convert_i3d", "tf_modules", "TFModule", "build_segment", "ModuleSegment", "float_pass",
           "FloatPass", "build_gated_segments", "program_of", "measure_gated_agreement", "server_module",
           "export_gated_onnx", "check_server", "attn_weights", "gate_weights"]
