"""The device program on one window, in Python over the real TFLM interpreter: what the ESP32-S3 runs.

One implementation, used by the converter (calibration chain, agreement, thresholds), by benchmarks and by
the host's simulated device. It imports neither torch nor tensorflow (TFLM only when a segment is loaded).

A window of W normalized feature frames (the first `n_frames` valid, zeros past them) is quantized with the
first segment's input scale and zero point (eeasr.bundle.quantize, the contract's rounding). Then, step by
step, each segment runs on its int8 input and the valid-frame count; after it, its exit's int8 logits are
available, and its int8 hidden state goes to the next segment: requantized (eeasr.bundle.requantize) when
the boundary's two ends differ. Every tensor is looked up by name, never by position. After the last step
the hidden state is the handoff: [T_valid, d] int8 with its QParams.

    from eeasr.bundle import load_bundle
    from eeasr.device_program import DeviceProgram

    program = DeviceProgram.from_bundle(load_bundle("bundles/exits2"))
    x_q, n = program.quantize_features(norm.apply(log_mel(pcm)))   # int8 [1, W, 80], valid frames
    out = program.run(x_q, n)                                      # every device exit
    out.exits[0].logits_q, out.exits[0].logits                     # int8 / dequantized [T_valid, V]
    out.hidden_q, out.hidden_qparams                               # the handoff
    program.run(x_q, n, stop=lambda e: frame_entropy(e.log_probs()) <= 0.01)   # exit early
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from eeasr.bundle import Bundle, BundleError, QParams, dequantize, quantize, requantize
from eeasr.exits import log_softmax

if TYPE_CHECKING:  # the runner is imported where a program is built, so importing this module stays light
    from eeasr.tflm import TFLMSegment

# Tensor names of every device segment (the device contract: outputs are found by name).
INPUT_FEATS = "feats"        # first segment: int8 [1, W, n_mels] normalized features
INPUT_HIDDEN = "hidden_in"   # later segments: int8 [1, W/4, d], the previous hidden state
INPUT_COUNT = "n_frames"     # int32 [1]: valid FEATURE frames of the window
OUTPUT_HIDDEN = "hidden"     # int8 [1, W/4, d] after the segment's last block
OUTPUT_LOGITS = "logits"     # int8 [1, W/4, V] of the segment's exit head


def encoder_frames(n_frames: int, subsampling: int = 4) -> int:
    """Valid encoder frames for `n_frames` valid feature frames: each stride-2 convolution gives ceil(n/2)."""
    n = int(n_frames)
    for _ in range(int(subsampling).bit_length() - 1):
        n = (n + 1) // 2
    return n


@dataclass(frozen=True)
class Stage:
    """One step of the program: a loaded segment, the exit it ends with, and the quantization of the
    hidden state it receives (`requant_from`: the previous segment's `hidden` output; None for the first)."""
    name: str
    exit_index: int                  # 1-based exit number of the model
    exit_layer: int
    segment: TFLMSegment
    requant_from: QParams | None = None

    @property
    def input_name(self) -> str:
        return INPUT_FEATS if self.requant_from is None else INPUT_HIDDEN

    @property
    def in_qparams(self) -> QParams:
        return self.segment.inputs[self.input_name].qparams

    @property
    def requantizes(self) -> bool:
        return self.requant_from is not None and self.requant_from != self.in_qparams

    def out_qparams(self, name: str = OUTPUT_HIDDEN) -> QParams:
        return self.segment.outputs[name].qparams


@dataclass
class StepOutput:
    """A segment's raw TFLM outputs by name (batch of one, padded frames included) and their QParams."""
    stage: str
    exit_index: int
    exit_layer: int
    raw: dict[str, np.ndarray]
    qparams: dict[str, QParams]

    def real(self, name: str) -> np.ndarray:
        """Output `name` dequantized (float32), same shape as the raw tensor."""
        return dequantize(self.raw[name], self.qparams[name])


@dataclass
class ExitOutput:
    """One device exit on one window, valid encoder frames only."""
    index: int
    layer: int
    logits_q: np.ndarray   # int8 [T_valid, V], what the exit head emits
    qparams: QParams

    @property
    def logits(self) -> np.ndarray:
        """Dequantized logits, float32 [T_valid, V]."""
        return dequantize(self.logits_q, self.qparams)

    def log_probs(self) -> np.ndarray:
        """Log-softmax in float32, as the device computes it."""
        return log_softmax(self.logits)


@dataclass
class WindowOutput:
    """What the device program produced for one window: the exits it ran (in order) and the int8 hidden
    state after the last segment it ran (the handoff when it ran them all)."""
    n_frames: int
    encoder_frames: int
    exits: list[ExitOutput]
    hidden_q: np.ndarray        # int8 [T_valid, d]
    hidden_qparams: QParams
    hidden_layer: int
    steps: list[StepOutput] = field(default_factory=list)
    module_mask: list[bool] = field(default_factory=list)   # the HANDOFF's module mask: empty here (gated programs)

    @property
    def hidden(self) -> np.ndarray:
        """The hidden state dequantized (what the server model takes), float32 [T_valid, d]."""
        return dequantize(self.hidden_q, self.hidden_qparams)

    @property
    def stopped_at(self) -> int:
        """The exit number of the last step run."""
        return self.exits[-1].index


def stage_input(stage: Stage, prev_hidden_q: np.ndarray) -> np.ndarray:
    """The previous segment's raw `hidden` output as this segment's input: requantized where the boundary's
    ends differ (the one tested function, eeasr.bundle.requantize), else unchanged."""
    if stage.requant_from is None:
        raise ValueError(f"{stage.name} is a first segment; it takes features (quantize_features)")
    return requantize(prev_hidden_q, stage.requant_from, stage.in_qparams)


def run_stage(stage: Stage, x_q: np.ndarray, n_frames: int) -> StepOutput:
    """Run one segment on its quantized input (features or hidden state) and the valid FEATURE frame count."""
    seg = stage.segment
    raw = seg.run({stage.input_name: x_q, INPUT_COUNT: np.array([n_frames], np.int32)})
    return StepOutput(stage.name, stage.exit_index, stage.exit_layer, raw,
                      {n: seg.outputs[n].qparams for n in raw if seg.outputs[n].qparams is not None})


def quantize_window(feats: np.ndarray, window: int, n_mels: int, qp: QParams) -> tuple[np.ndarray, int]:
    """Normalized features [T, n_mels] (T <= window) -> (int8 [1, window, n_mels], T): zeros past T, then
    quantized with the first segment's input parameters `qp`, as the device does."""
    feats = np.asarray(feats, np.float32)
    if feats.ndim != 2 or feats.shape[1] != n_mels or not 0 < len(feats) <= window:
        raise ValueError(f"features {feats.shape}: expected [1..{window}, {n_mels}]")
    x = np.zeros((1, window, n_mels), np.float32)
    x[0, : len(feats)] = feats
    return quantize(x, qp), len(feats)


def load_segment(bundle: Bundle, entry: dict) -> TFLMSegment:
    """A bundle segment loaded in TFLM, its tensors checked against the manifest (names, quantization)."""
    from eeasr.tflm import TFLMSegment

    where = f"{bundle.path}/{entry['file']}"
    seg = TFLMSegment(bundle.segment_bytes(entry["name"]), int(entry["arena"]["bytes"]), where)
    for kind, table, got in (("input", entry["inputs"], seg.inputs), ("output", entry["outputs"], seg.outputs)):
        if set(table) != set(got):
            raise BundleError(f"{where}: the manifest lists {kind}s {sorted(table)}, the file has {sorted(got)}")
        for name, d in table.items():
            if "scale" in d and QParams.from_dict(d) != got[name].qparams:
                raise BundleError(f"{where}: {kind} {name} is quantized {got[name].qparams} in the file "
                                  f"but {QParams.from_dict(d)} in the manifest; reconvert the bundle")
    return seg


class DeviceProgram:
    """The device's segments in program order; `run` executes them on one window."""

    def __init__(self, stages: Sequence[Stage], subsampling: int = 4) -> None:
        if not stages:
            raise ValueError("a device program needs at least one segment")
        first = stages[0].segment.inputs.get(INPUT_FEATS)
        if stages[0].requant_from is not None or first is None:
            raise ValueError(f"{stages[0].name}: the first segment must take {INPUT_FEATS!r}")
        for s in stages[1:]:
            if s.requant_from is None or INPUT_HIDDEN not in s.segment.inputs:
                raise ValueError(f"{s.name}: a later segment must take {INPUT_HIDDEN!r} with the previous "
                                 f"segment's quantization")
        self.stages = list(stages)
        self.subsampling = subsampling
        self.window = int(first.shape[1])
        self.n_mels = int(first.shape[2])

    @classmethod
    def from_bundle(cls, bundle: Bundle, upto: int | None = None) -> DeviceProgram:
        """Load the bundle's segments in TFLM (each with the manifest's arena), in the order of the program's
        steps, with the manifest's boundaries. Raises BundleError when the manifest's quantization parameters
        are not those of the .tflite files, or the program is not one this runner executes."""
        m = bundle.manifest
        dev = m["device"]
        if dev["program"]["kind"] != "early_exit":
            raise BundleError(f"{bundle.path}: device program kind {dev['program']['kind']!r}; this runner executes "
                              f"early-exit programs (gated programs: eeasr.gated_program)")
        by_name = {s["name"]: s for s in dev["segments"]}
        steps = dev["program"]["steps"]
        for st in steps:
            if st.get("decision", {}).get("type") != "exit":
                raise BundleError(f"{bundle.path}: program step {st} is not an exit decision; this runner executes "
                                  f"early-exit programs only")
        bounds = {b["to"]: b for b in dev["boundaries"]}
        stages: list[Stage] = []
        for st in steps[:upto]:
            entry = by_name[st["segment"]]
            seg = load_segment(bundle, entry)
            prev = None
            if stages:
                b = bounds.get(f"{entry['name']}.{INPUT_HIDDEN}")
                if b is None or b["from"] != f"{stages[-1].name}.{OUTPUT_HIDDEN}":
                    raise BundleError(f"{bundle.path}: no boundary from {stages[-1].name}.{OUTPUT_HIDDEN} to "
                                      f"{entry['name']}.{INPUT_HIDDEN} in the manifest")
                prev = QParams.from_dict(b["from_q"])
                if prev != stages[-1].out_qparams() or QParams.from_dict(b["to_q"]) != seg.inputs[INPUT_HIDDEN].qparams:
                    raise BundleError(f"{bundle.path}: boundary {b['from']} -> {b['to']} does not match the "
                                      f"segments' quantization; reconvert the bundle")
            stages.append(Stage(entry["name"], int(entry["exit"]["index"]), int(entry["exit"]["layer"]), seg, prev))
        program = cls(stages, int(m["window"].get("subsampling", 4)))
        if program.window != bundle.window:
            raise BundleError(f"{bundle.path}: segments take {program.window} frames, the manifest's window is "
                              f"{bundle.window}")
        return program

    @property
    def feats_qparams(self) -> QParams:
        return self.stages[0].in_qparams

    def quantize_features(self, feats: np.ndarray) -> tuple[np.ndarray, int]:
        """Normalized features [T, n_mels] (T <= W) -> (int8 [1, W, n_mels], T): zeros past T, then quantized
        with the first segment's input parameters, as the device does."""
        return quantize_window(feats, self.window, self.n_mels, self.feats_qparams)

    def run(self, feats_q: np.ndarray, n_frames: int, upto: int | None = None,
            stop: Callable[[ExitOutput], bool] | None = None) -> WindowOutput:
        """Run the program on one window: int8 features [1, W, n_mels] (or [W, n_mels]) with `n_frames` valid.
        Runs segments 1..`upto` (default all); after each, `stop(exit)` may end the program early (the
        device's exit decision). Returns the exits run and the last hidden state, valid frames only."""
        if not 0 < n_frames <= self.window:
            raise ValueError(f"n_frames {n_frames} outside 1..{self.window}")
        x = np.asarray(feats_q).reshape(1, self.window, self.n_mels)
        t = encoder_frames(n_frames, self.subsampling)
        steps: list[StepOutput] = []
        exits: list[ExitOutput] = []
        for stage in self.stages[:upto]:
            xin = x if not steps else stage_input(stage, steps[-1].raw[OUTPUT_HIDDEN])
            step = run_stage(stage, xin, n_frames)
            steps.append(step)
            exits.append(ExitOutput(stage.exit_index, stage.exit_layer, step.raw[OUTPUT_LOGITS][0, :t],
                                    step.qparams[OUTPUT_LOGITS]))
            if stop is not None and stop(exits[-1]):
                break
        last = steps[-1]
        return WindowOutput(n_frames, t, exits, last.raw[OUTPUT_HIDDEN][0, :t], last.qparams[OUTPUT_HIDDEN],
                            last.exit_layer, steps)


__all__ = ["DeviceProgram", "Stage", "StepOutput", "ExitOutput", "WindowOutput", "stage_input", "run_stage",
           "encoder_frames", "INPUT_FEATS", "INPUT_HIDDEN", "INPUT_COUNT", "OUTPUT_HIDDEN", "OUTPUT_LOGITS"]
