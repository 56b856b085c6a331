"""The gated (I3D) device program on one window, in Python over the real TFLM interpreter: what the device runs
for a bundle whose program kind is "gated" (convert/i3d.py writes them). numpy and TFLM only: no torch, no
tensorflow, nothing from train.

The model (train/i3d.py, I3DTransformer) is a pre-LN Transformer whose attention (MHA) and feed-forward (FFN)
modules each sit behind a gate: x <- x + module(x) when the gate is open, x unchanged when it is closed. Each
module is its own int8 segment (pre-LN + module + residual add), so a closed gate costs nothing and the int8
residual stream passes through untouched. One window:

1. `front` segment: int8 features + n_frames -> the int8 residual stream [1, W/4, d] (with its QParams).
2. Gate predictor: the masked mean of the stream over its valid encoder frames is taken on the device CPU in
   float (`pool_valid`: an exact int32 sum, one float32 division; int8 TFLM cannot divide by the data-dependent
   count with useful precision: 1/c for c = 1..150 in one per-tensor scale of 1/255 makes 1/150 1.7 steps,
   up to ~30% off, and esp-tflite-micro has no DIV), quantized to the predictor segment's input, and the
   segment (Linear + ReLU + Linear) emits int8 gate margins z = logit(execute) - logit(skip) = log(p / (1 - p)).
   A module runs iff z > log(beta / (1 - beta)), i.e. p > beta (Eq. 10-11), with beta = 0 running every module
   and beta = 1 none. Global predictor: one segment on the front output, margins for every layer of the model
   (Eq. 12). Local: one segment per layer on that layer's input (Eq. 9), run just before the layer.
3. Per device layer: the MHA segment, then the FFN segment, each only when its gate is open. A segment's
   `hidden_in` takes the stream requantized (eeasr.bundle.requantize, the one tested function) from the
   QParams of whichever segment wrote it last, when they differ; a skipped module leaves (q, QParams) as is.
4. `head` segment (LayerNorm + Linear, the model's shared CTC head) at the device's last layer: int8 logits
   -> the device's answer (log-softmax in float, the exit policy); the stream, requantized to the head's
   input QParams (fixed, in the manifest), is the handoff.

`run` returns which modules ran, the gate probabilities, every segment invoked and the device cost of the
window: the multiply-accumulates of the segments actually run (convert/cost.py's per-segment figures in the
manifest; the CPU pooling's T x d additions are not MACs and are left out).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from eeasr.bundle import Bundle, BundleError, QParams, dequantize, quantize, requantize
from eeasr.device_program import (INPUT_COUNT, INPUT_FEATS, INPUT_HIDDEN, OUTPUT_HIDDEN, OUTPUT_LOGITS, ExitOutput,
                                  Stage, StepOutput, WindowOutput, encoder_frames, load_segment,
                                  quantize_window)

if TYPE_CHECKING:
    from eeasr.tflm import TFLMSegment

INPUT_POOLED = "pooled"   # predictor segment: int8 [1, d], the stream's mean over valid encoder frames
OUTPUT_GATE = "gate"      # predictor segment: int8 [1, n_gates] margins, gate g = 2 * layer + module
MHA, FFN = 0, 1           # module index within a layer (and in the module mask: module i = 2 * (layer - 1) + m)


def gate_threshold(beta: float) -> float:
    """The margin a gate must exceed: log(beta / (1 - beta)); -inf at beta = 0 (every module runs), +inf at 1."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta {beta} outside [0, 1]")
    if beta == 0.0:
        return -math.inf
    if beta == 1.0:
        return math.inf
    return math.log(beta) - math.log1p(-beta)


def decide(margins: np.ndarray, beta: float) -> np.ndarray:
    """Binary gates from real-valued margins: z > log(beta / (1 - beta)), which is p = sigmoid(z) > beta."""
    return np.asarray(margins, np.float64) > gate_threshold(beta)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


@dataclass
class Stream:
    """The int8 residual stream [1, W/4, d] and the QParams it is quantized with."""
    q: np.ndarray
    qparams: QParams

    def real(self) -> np.ndarray:
        return dequantize(self.q, self.qparams)

    def to(self, dst: QParams) -> np.ndarray:
        """The stream quantized with `dst` (requantized only when the QParams differ)."""
        return requantize(self.q, self.qparams, dst)


def pool_valid(stream: Stream, t_valid: int) -> np.ndarray:
    """The stream's mean over its first `t_valid` frames, float32 [1, d], as the device computes it: the int8
    values summed exactly in int32, then (sum / t - zero_point) * scale in float32."""
    if not 0 < t_valid <= stream.q.shape[1]:
        raise ValueError(f"t_valid {t_valid} outside 1..{stream.q.shape[1]}")
    s = stream.q[0, :t_valid].astype(np.int32).sum(axis=0).astype(np.float32)
    qp = stream.qparams
    return ((s / np.float32(t_valid) - np.float32(qp.zero_point)) * np.float32(qp.scale))[None].astype(np.float32)


def run_module(seg: TFLMSegment, stream: Stream, n_frames: int, name: str = "") -> tuple[Stream, StepOutput]:
    """One module segment (or the head) on the stream: requantized to its `hidden_in`, with `n_frames` when the
    segment takes it (attention masks padded keys; the feed-forward network and the head are per frame)."""
    inputs: dict[str, np.ndarray] = {INPUT_HIDDEN: stream.to(seg.inputs[INPUT_HIDDEN].qparams)}
    if INPUT_COUNT in seg.inputs:
        inputs[INPUT_COUNT] = np.array([n_frames], np.int32)
    raw = seg.run(inputs)
    step = StepOutput(name, 0, 0, raw, {k: seg.outputs[k].qparams for k in raw if seg.outputs[k].qparams})
    out = Stream(raw[OUTPUT_HIDDEN], seg.outputs[OUTPUT_HIDDEN].qparams) if OUTPUT_HIDDEN in raw else stream
    return out, step


def run_predictor(seg: TFLMSegment, stream: Stream, t_valid: int, name: str = "") -> tuple[np.ndarray, StepOutput]:
    """Pool the stream on the CPU, run the predictor segment: real-valued gate margins [n_gates] and the step."""
    x = quantize(pool_valid(stream, t_valid), seg.inputs[INPUT_POOLED].qparams)
    raw = seg.run({INPUT_POOLED: x})
    qp = seg.outputs[OUTPUT_GATE].qparams
    return dequantize(raw[OUTPUT_GATE][0], qp), StepOutput(name, 0, 0, raw, {OUTPUT_GATE: qp})


def run_front(seg: TFLMSegment, feats_q: np.ndarray, n_frames: int, name: str = "") -> tuple[Stream, StepOutput]:
    raw = seg.run({INPUT_FEATS: feats_q, INPUT_COUNT: np.array([n_frames], np.int32)})
    qp = seg.outputs[OUTPUT_HIDDEN].qparams
    return Stream(raw[OUTPUT_HIDDEN], qp), StepOutput(name, 0, 0, raw, {OUTPUT_HIDDEN: qp})


@dataclass
class GatedLayer:
    layer: int                 # 1-based
    mha: str                   # segment names
    ffn: str
    predictor: str | None      # local gate predictor of this layer (None: the global one decides)


@dataclass
class GatedWindowOutput(WindowOutput):
    """WindowOutput (the head as the one device exit, the handoff) plus what the gates did.
    probs / gates: [layers decided, 2] p(execute) and the decision (the model's every layer for a global
    predictor, the device's layers for a local one); ran: [device layers, 2] which modules ran; invoked: the
    segments run, in order; macs: their multiply-accumulates."""
    probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    gates: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), bool))
    ran: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), bool))
    invoked: list[str] = field(default_factory=list)
    macs: int = 0

    @property
    def modules_run(self) -> int:
        return int(self.ran.sum())


class GatedProgram:
    """The loaded segments of a gated bundle and the program that runs them; `run` executes one window."""

    def __init__(self, segments: dict[str, TFLMSegment], program: dict[str, Any], macs: dict[str, int],
                 subsampling: int = 4, beta: float | None = None) -> None:
        self.segments = segments
        self.program = program
        self.macs = macs
        self.subsampling = subsampling
        self.front = program["front"]
        self.predictor_kind = program["predictor"]["kind"]
        preds = program["predictor"]["segments"]
        self.layers = [GatedLayer(int(e["layer"]), e["mha"], e["ffn"],
                                  preds[i] if self.predictor_kind == "local" else None)
                       for i, e in enumerate(program["layers"])]
        self.global_predictor = preds[0] if self.predictor_kind == "global" else None
        self.n_layers_model = int(program["n_layers"])
        self.head = program["head"]["segment"]
        self.beta = float(program["beta"]) if beta is None else float(beta)
        gate_threshold(self.beta)
        first = segments[self.front].inputs[INPUT_FEATS]
        self.window = int(first.shape[1])
        self.n_mels = int(first.shape[2])
        head = segments[self.head]
        # The device-program interface the simulated device uses: one exit, the head at the last device layer.
        self.stages = [Stage(self.head, int(program["head"]["exit"]), int(program["head"]["layer"]), head,
                             head.inputs[INPUT_HIDDEN].qparams)]

    @classmethod
    def from_bundle(cls, bundle: Bundle, beta: float | None = None) -> GatedProgram:
        """Load every segment the bundle's gated program names, each with its manifest arena; BundleError when
        the program is of another kind or a file's quantization is not the manifest's. `beta` overrides the
        manifest's threshold."""
        m = bundle.manifest
        prog = m["device"]["program"]
        if prog["kind"] != "gated":
            raise BundleError(f"{bundle.path}: device program kind {prog['kind']!r}, not 'gated' (an early-exit "
                              f"bundle runs with eeasr.device_program)")
        segs: dict[str, TFLMSegment] = {}
        macs: dict[str, int] = {}
        for entry in bundle.segments:
            segs[entry["name"]] = load_segment(bundle, entry)
            macs[entry["name"]] = int(entry["cost"]["macs"])
        program = cls(segs, prog, macs, int(m["window"].get("subsampling", 4)), beta)
        if program.window != bundle.window:
            raise BundleError(f"{bundle.path}: segments take {program.window} frames, the manifest's window is "
                              f"{bundle.window}")
        if program.handoff_qparams != bundle.handoff_qparams():
            raise BundleError(f"{bundle.path}: the handoff is quantized {bundle.handoff_qparams()} in the manifest, "
                              f"the head takes {program.handoff_qparams}; reconvert the bundle")
        return program

    @property
    def feats_qparams(self) -> QParams:
        return self.segments[self.front].inputs[INPUT_FEATS].qparams

    @property
    def handoff_qparams(self) -> QParams:
        return self.segments[self.head].inputs[INPUT_HIDDEN].qparams

    @property
    def device_layers(self) -> int:
        return len(self.layers)

    def quantize_features(self, feats: np.ndarray) -> tuple[np.ndarray, int]:
        """Normalized features [T, n_mels] (T <= W) -> (int8 [1, W, n_mels], T), zeros past T, as the device."""
        return quantize_window(feats, self.window, self.n_mels, self.feats_qparams)

    def run(self, feats_q: np.ndarray, n_frames: int, stop: Callable[[ExitOutput], bool] | None = None,
            beta: float | None = None, gates: np.ndarray | None = None) -> GatedWindowOutput:
        """Run the program on one window: int8 features [1, W, n_mels] with `n_frames` valid. Modules run when
        their gate is open at `beta` (default the program's); `gates` [device layers, 2] bool forces the
        decisions instead (the predictor still runs). `stop(exit)` sees the head's exit (the exit policy)."""
        if not 0 < n_frames <= self.window:
            raise ValueError(f"n_frames {n_frames} outside 1..{self.window}")
        beta = self.beta if beta is None else beta
        t = encoder_frames(n_frames, self.subsampling)
        x = np.asarray(feats_q).reshape(1, self.window, self.n_mels)
        stream, step = run_front(self.segments[self.front], x, n_frames, self.front)
        steps = [step]
        margins: list[np.ndarray] = []
        if self.global_predictor is not None:
            z, step = run_predictor(self.segments[self.global_predictor], stream, t, self.global_predictor)
            margins = list(z.reshape(self.n_layers_model, 2))
            steps.append(step)
        ran = np.zeros((self.device_layers, 2), bool)
        for i, lay in enumerate(self.layers):
            if lay.predictor is not None:
                z, step = run_predictor(self.segments[lay.predictor], stream, t, lay.predictor)
                margins.append(z.reshape(2))
                steps.append(step)
            want = decide(margins[i], beta) if gates is None else np.asarray(gates[i], bool)
            for m, name in ((MHA, lay.mha), (FFN, lay.ffn)):
                if want[m]:
                    stream, step = run_module(self.segments[name], stream, n_frames, name)
                    steps.append(step)
                    ran[i, m] = True
        hidden_in = stream.to(self.handoff_qparams)
        head_seg = self.segments[self.head]
        _, step = run_module(head_seg, Stream(hidden_in, self.handoff_qparams), n_frames, self.head)
        steps.append(step)
        head = self.stages[0]
        exit_ = ExitOutput(head.exit_index, head.exit_layer, step.raw[OUTPUT_LOGITS][0, :t],
                           step.qparams[OUTPUT_LOGITS])
        if stop is not None:
            stop(exit_)
        z_all = np.array(margins, np.float64).reshape(-1, 2)
        decided = decide(z_all, beta)
        mask = ran.ravel().tolist()
        if self.global_predictor is not None:   # the server applies the device predictor's later gates
            mask += decided[self.device_layers:].ravel().tolist()
        invoked = [s.stage for s in steps]
        return GatedWindowOutput(n_frames, t, [exit_], hidden_in[0, :t], self.handoff_qparams, head.exit_layer,
                                 steps, mask, probs=sigmoid(z_all), gates=decided, ran=ran, invoked=invoked,
                                 macs=sum(self.macs[n] for n in invoked))


def server_gates(modules: list[bool], after_layer: int, n_layers: int) -> np.ndarray:
    """float32 [n_layers - after_layer, 2] 1/0 gates of the server's layers from a HANDOFF module mask that covers
    every layer (a global predictor's); ValueError when it does not."""
    if len(modules) != 2 * n_layers:
        raise ValueError(f"module mask of {len(modules)} modules; a global gate predictor's covers all "
                         f"{2 * n_layers} modules of the model")
    return np.asarray(modules[2 * after_layer:], np.float32).reshape(-1, 2)


def server_gate_input(predictor: str, after_layer: int, n_layers: int, masks: list[list[bool]],
                      beta: float) -> dict[str, np.ndarray]:
    """The gated server model's gate input for a batch of handoffs: a global predictor's gates of the server's
    layers from their module masks, or the threshold a local predictor's server layers use."""
    from eeasr.server_model import SERVER_INPUT_BETA, SERVER_INPUT_GATES

    if predictor == "global":
        return {SERVER_INPUT_GATES: np.stack([server_gates(m, after_layer, n_layers) for m in masks])}
    return {SERVER_INPUT_BETA: np.array([beta], np.float32)}


def load_program(bundle: Bundle, beta: float | None = None) -> Any:
    """The bundle's device program by its kind: eeasr.device_program.DeviceProgram for "early_exit",
    GatedProgram for "gated" (`beta` overrides its threshold; it applies to gated programs only)."""
    kind = bundle.manifest["device"]["program"]["kind"]
    if kind == "gated":
        return GatedProgram.from_bundle(bundle, beta)
    if beta is not None:
        raise ValueError(f"--beta applies to gated (I3D) bundles; {bundle.path} runs an {kind} program")
    from eeasr.device_program import DeviceProgram
    return DeviceProgram.from_bundle(bundle)


__all__ = ["GatedProgram", "GatedWindowOutput", "GatedLayer", "Stream", "pool_valid", "run_module", "run_predictor",
           "run_front", "decide", "gate_threshold", "sigmoid", "server_gates", "server_gate_input", "load_program",
           "INPUT_POOLED", "OUTPUT_GATE", "MHA", "FFN"]
