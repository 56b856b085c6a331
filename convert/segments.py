"""Cutting the encoder at its exits, converting the device segments in a calibration chain, and measuring
their agreement with the float model.

Segment k of the device program holds blocks [exit_{k-1}, exit_k) and exit k's head; segment 1 also holds the
front. Calibration is a chain, as the device contract demands: segment 1 is calibrated on the model's shipped
calibration set (real dev features, normalized), loaded in the real TFLM interpreter and run on every
calibration window; segment k+1 is then calibrated on the dequantized TFLM outputs of segment k, and so on.
Each boundary's two ends (segment k's `hidden` output, segment k+1's `hidden_in` input) keep the scale and
zero point the converter chose for them; where they differ the device requantizes with
`eeasr.bundle.requantize` (= eeasr.features.requantize_int8). Everything here that runs the chain does it
through eeasr/device_program.py, the one implementation of the device program that the host runs too.

Agreement: windows cut from held-out calibration utterances at T_valid = W/4, W/2 and W valid feature frames
(no padding in the float reference: torch runs on exactly T_valid frames) go through the TFLM chain; per
segment, the hidden state's cosine with torch's over the valid encoder frames and the exit's argmax
agreement are measured and gated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eeasr.bundle import QParams, quantize
from eeasr.convert.calibration import DEFAULT_CLIP_PERCENTILE
from eeasr.convert.esp_ops import OpUse, check_ops, kernel_for
from eeasr.convert.tf_model import TFSegment, convert_int8, torch_to_tf_segment
from eeasr.convert.tflm import arena_with_margin, op_uses
from eeasr.device_program import (INPUT_COUNT, INPUT_FEATS, INPUT_HIDDEN, OUTPUT_HIDDEN, OUTPUT_LOGITS,
                                  DeviceProgram, Stage, StepOutput, run_stage, stage_input)
from eeasr.features import NormStats
from eeasr.tflm import TFLMSegment, smallest_arena


class AgreementError(RuntimeError):
    """int8 (TFLM) outputs agree with the float model less than the conversion requires."""


class Int16Error(RuntimeError):
    """A segment asked for int16 activations that cannot be built or run."""


# ------------------------------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class SegmentPlan:
    index: int           # 1-based position in the device program
    first_block: int     # blocks [first_block, last_block), 0-based
    last_block: int
    with_front: bool
    exit_index: int      # 1-based exit number (= index)
    exit_layer: int      # the exit's layer number (= last_block)

    @property
    def name(self) -> str:
        return f"seg{self.index}"

    @property
    def input_name(self) -> str:
        return INPUT_FEATS if self.with_front else INPUT_HIDDEN


def plan_segments(exit_layers: list[int], k: int) -> list[SegmentPlan]:
    """The first k exits as device segments."""
    if not 1 <= k <= len(exit_layers):
        raise ValueError(f"--exits {k}: the model has exits after layers {exit_layers}; choose 1..{len(exit_layers)}")
    plans, first = [], 0
    for j, layer in enumerate(exit_layers[:k]):
        plans.append(SegmentPlan(j + 1, first, layer, j == 0, j + 1, layer))
        first = layer
    return plans


# ---------------------------------------------------------------------------------------- calibration set

@dataclass
class CalibrationSet:
    """Normalized feature windows [N, W, 80] (zeros past each valid count), counts, texts and ids."""
    feats: np.ndarray
    n_frames: np.ndarray
    texts: list[str]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.n_frames)


def load_calibration(model_dir: Path, norm: NormStats, window: int) -> CalibrationSet:
    path = Path(model_dir) / "calibration.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: conversion calibrates on the set `eeasr-train export` ships "
                                f"with the model; export the run first (make model)")
    z = np.load(path, allow_pickle=False)
    raw, n = z["feats"].astype(np.float32), np.minimum(z["n_frames"].astype(np.int64), window)
    if raw.ndim != 3 or raw.shape[2] != len(norm.mean):
        raise ValueError(f"{path}: feats {raw.shape}, expected [N, W, {len(norm.mean)}]")
    feats = np.zeros((raw.shape[0], window, raw.shape[2]), np.float32)
    for i in range(raw.shape[0]):
        t = int(min(n[i], raw.shape[1]))
        feats[i, :t] = norm.apply(raw[i, :t])
        n[i] = t
    keep = n > 0
    texts = [str(t) for t in z["texts"]] if "texts" in z else [""] * len(n)
    ids = [str(t) for t in z["ids"]] if "ids" in z else [str(i) for i in range(len(n))]
    return CalibrationSet(feats[keep], n[keep].astype(np.int32), [t for t, k in zip(texts, keep) if k],
                          [t for t, k in zip(ids, keep) if k])


# ---------------------------------------------------------------------------------------- device segment

def tensor_io(tflm: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A TFLM segment's inputs and outputs as the manifest lists them (dtype, shape, scale and zero point)."""
    def desc(info: Any) -> dict[str, Any]:
        d: dict[str, Any] = {"dtype": info.dtype.lower(), "shape": list(info.shape)}
        if info.qparams is not None:
            d.update(scale=info.qparams.scale, zero_point=info.qparams.zero_point)
        return d
    return {n: desc(i) for n, i in tflm.inputs.items()}, {n: desc(i) for n, i in tflm.outputs.items()}


def op_table(ops: list[OpUse]) -> list[list[str]]:
    """Distinct (op, dtypes, kernel) rows: what the firmware registers and which kernels it gets."""
    rows = sorted({(u.op, f"{u.in_dtype}->{u.out_dtype}" if u.in_dtype != u.out_dtype else u.in_dtype,
                    kernel_for(u) or "-") for u in ops})
    return [list(r) for r in rows]


@dataclass
class DeviceSegment:
    plan: SegmentPlan
    tf: TFSegment
    tflite: bytes
    tflm: TFLMSegment
    activations: str
    arena_min: int
    arena: int
    allocations: dict[str, int]
    ops: list[OpUse]
    convert_s: float = 0.0
    agreement: dict[str, Any] = field(default_factory=dict)
    clip_percentile: float | None = None   # activation ranges clipped at this percentile; None: min/max

    @property
    def name(self) -> str:
        return self.plan.name

    def in_q(self) -> QParams:
        return self.tflm.inputs[self.plan.input_name].qparams

    def out_q(self, name: str = OUTPUT_HIDDEN) -> QParams:
        return self.tflm.outputs[name].qparams

    def io(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return tensor_io(self.tflm)

    def stage(self, prev: DeviceSegment | None = None) -> Stage:
        """This segment as a step of the device program, after `prev` (None for the first)."""
        return Stage(self.name, self.plan.exit_index, self.plan.exit_layer, self.tflm,
                     prev.out_q() if prev is not None else None)

    def op_table(self) -> list[list[str]]:
        return op_table(self.ops)


def load_quantized(data: bytes, name: str) -> tuple[TFLMSegment, int, int]:
    """A converted segment in TFLM with its smallest arena plus margin: (segment, smallest arena, arena).
    Every tensor but the valid-frame count must be quantized (a float tensor is a conversion error)."""
    arena_min = smallest_arena(data)
    arena = arena_with_margin(arena_min)
    tflm = TFLMSegment(data, arena, where=name)
    for tname, info in {**tflm.inputs, **tflm.outputs}.items():
        if tname != INPUT_COUNT and info.qparams is None:
            raise RuntimeError(f"{name}: tensor {tname} is {info.dtype}, not quantized")
    return tflm, arena_min, arena


def convert_segment(model: Any, plan: SegmentPlan, window: int, reps: list[tuple[np.ndarray, int]],
                    activations: str = "int8", clip_percentile: float | None = DEFAULT_CLIP_PERCENTILE
                    ) -> DeviceSegment:
    """Rebuild in TF, convert with `reps` as representative data (int8 activation ranges clipped at
    `clip_percentile`, None: min/max; int16 ones always min/max), check ops against esp-tflite-micro, load in
    TFLM and measure the smallest arena."""
    import time

    t0 = time.perf_counter()
    seg = torch_to_tf_segment(model, plan.first_block, plan.last_block, plan.with_front, True, window)
    pct = clip_percentile if activations == "int8" else None   # 16x8 conversion takes min/max only
    try:
        data = convert_int8(seg, reps, activations, pct)
    except RuntimeError as e:
        if activations == "int16" and "n_frames" in str(e):
            raise Int16Error(
                f"{plan.name}: int16 activations cannot be built for this graph: TensorFlow's 16x8 quantizer does "
                f"not calibrate the int32 `n_frames` input that the masks are computed from ({str(e).splitlines()[-1]}"
                f"); and esp-tflite-micro has no int16 RSQRT, which the LayerNorm decomposition needs. Convert "
                f"this segment in int8") from None
        raise
    uses = op_uses(data)
    check_ops(uses, f"{plan.name} (blocks {plan.first_block + 1}-{plan.last_block}, exit {plan.exit_index}, "
                    f"{activations} activations)")
    tflm, arena_min, arena = load_quantized(data, plan.name)
    return DeviceSegment(plan, seg, data, tflm, activations, arena_min, arena, tflm.allocations(), uses,
                         time.perf_counter() - t0, clip_percentile=pct)


def device_program(segments: list[DeviceSegment], subsampling: int = 4) -> DeviceProgram:
    """The converted segments as the device program (eeasr.device_program) that a bundle of them describes."""
    return DeviceProgram([s.stage(p) for p, s in zip([None, *segments[:-1]], segments)], subsampling)


def build_device_segments(model: Any, plans: list[SegmentPlan], calib: CalibrationSet, window: int,
                          n_reps: int = 32, int16: frozenset[int] = frozenset(), progress: Any = None,
                          clip_percentile: float | None = DEFAULT_CLIP_PERCENTILE
                          ) -> tuple[list[DeviceSegment], list[list[StepOutput]]]:
    """The calibration chain. Returns the segments and, per calibration window, the TFLM output of every
    segment (reused for threshold calibration). Segment-major, since segment k+1 is calibrated on segment
    k's outputs; each step is eeasr.device_program's, so the chain is exactly what the device runs."""
    rep_idx = list(range(min(n_reps, len(calib))))
    segments: list[DeviceSegment] = []
    chains: list[list[StepOutput]] = [[] for _ in range(len(calib))]
    for plan in plans:
        if plan.with_front:
            reps = [(calib.feats[i][None], int(calib.n_frames[i])) for i in rep_idx]
        else:
            reps = [(chains[i][-1].real(OUTPUT_HIDDEN), int(calib.n_frames[i])) for i in rep_idx]
        act = "int16" if plan.index in int16 else "int8"
        seg = convert_segment(model, plan, window, reps, act, clip_percentile)
        if progress:
            ranges = "min/max" if seg.clip_percentile is None else f"percentile {seg.clip_percentile:g}"
            progress(f"{plan.name}: converted ({act}, {ranges} ranges, {len(seg.tflite):,} B, arena "
                     f"{seg.arena_min:,} B) in {seg.convert_s:.1f} s; running TFLM on {len(calib)} calibration "
                     f"windows")
        stage = seg.stage(segments[-1] if segments else None)
        for i in range(len(calib)):
            if plan.with_front:  # calibration windows are zero past their valid frames, as the device pads
                xin = quantize(calib.feats[i][None], stage.in_qparams)
            else:
                xin = stage_input(stage, chains[i][-1].raw[OUTPUT_HIDDEN])
            chains[i].append(run_stage(stage, xin, int(calib.n_frames[i])))
        segments.append(seg)
    return segments, chains


# ------------------------------------------------------------------------------------------------ agreement

def torch_float(model: Any, feats: np.ndarray, upto_layer: int) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
    """The float model on UNPADDED features [T, 80]: {layer: (hidden [T', d], exit logits [T', V] or None)}
    for every exit layer <= upto_layer."""
    import torch

    layers = model.cfg.exits
    out = {}
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(feats, np.float32))[None]
        h, lengths = model.front(x, torch.tensor([feats.shape[0]]))
        mask = torch.ones(1, h.shape[1], dtype=torch.bool)
        bias = model.key_bias(lengths, h.shape[1])
        for i, block in enumerate(model.blocks[:upto_layer]):
            h = block(h, mask, bias)
            if i + 1 in layers:
                out[i + 1] = (h[0].numpy().copy(), model.exits[layers.index(i + 1)](h)[0].numpy().copy())
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def eval_windows(calib: CalibrationSet, held_out: list[int], window: int, per_t: int = 2
                 ) -> list[tuple[int, np.ndarray]]:
    """(T_valid, features [T_valid, 80]) for T_valid in W/4, W/2, W: consecutive frames of the held-out
    utterances joined into one stream (repeated when it is shorter than needed)."""
    stream = np.concatenate([calib.feats[i, : calib.n_frames[i]] for i in held_out])
    out = []
    for t in (window // 4, window // 2, window):
        need = t * per_t
        s = np.concatenate([stream] * math.ceil(need / len(stream))) if len(stream) < need else stream
        step = max(1, (len(s) - t) // max(1, per_t - 1)) if per_t > 1 else 0
        for j in range(per_t):
            start = min(j * step, len(s) - t)
            out.append((t, s[start:start + t]))
    return out


def measure_agreement(model: Any, segments: list[DeviceSegment], windows: list[tuple[int, np.ndarray]],
                      window: int) -> dict[str, dict[str, dict[str, float]]]:
    """{segment name: {str(T_valid): {hidden_cos, hidden_cos_min_frame, logits_cos, argmax_agree}}}."""
    acc: dict[str, dict[int, dict[str, list]]] = {s.name: {} for s in segments}
    last_layer = segments[-1].plan.last_block
    program = device_program(segments, model.cfg.subsampling)
    for t, feats in windows:
        ref = torch_float(model, feats, last_layer)
        out = program.run(*program.quantize_features(feats))
        for k, seg in enumerate(segments):
            h_ref, l_ref = ref[seg.plan.exit_layer]
            tv = h_ref.shape[0]
            h_q = out.steps[k].real(OUTPUT_HIDDEN)[0, :tv]
            l_q = out.steps[k].real(OUTPUT_LOGITS)[0, :tv]
            a = acc[seg.name].setdefault(t, {"hf": [], "hq": [], "lf": [], "lq": []})
            a["hf"].append(h_ref), a["hq"].append(h_q), a["lf"].append(l_ref), a["lq"].append(l_q)
    result: dict[str, dict[str, dict[str, float]]] = {}
    for name, by_t in acc.items():
        result[name] = {}
        for t, a in sorted(by_t.items()):
            hf, hq = np.concatenate(a["hf"]), np.concatenate(a["hq"])
            lf, lq = np.concatenate(a["lf"]), np.concatenate(a["lq"])
            result[name][str(t)] = {
                "hidden_cos": round(cosine(hf, hq), 6),
                "hidden_cos_min_frame": round(min(cosine(u, v) for u, v in zip(hf, hq)), 6),
                "logits_cos": round(cosine(lf, lq), 6),
                "argmax_agree": round(float(np.mean(lf.argmax(-1) == lq.argmax(-1))), 6),
                "frames": int(len(hf)),
            }
    return result


def gate_agreement(agreement: dict[str, dict[str, dict[str, float]]], min_cosine: float,
                   min_argmax: float) -> None:
    """Raise AgreementError listing every segment and T_valid below either threshold."""
    bad = []
    for name, by_t in agreement.items():
        for t, m in by_t.items():
            if m["hidden_cos"] < min_cosine or m["argmax_agree"] < min_argmax:
                bad.append(f"  {name} at T_valid={t} feature frames: hidden-state cosine {m['hidden_cos']:.4f} "
                           f"(required >= {min_cosine}), exit argmax agreement {m['argmax_agree']:.3f} "
                           f"(required >= {min_argmax})")
    if bad:
        raise AgreementError(
            "int8 segments under TFLM disagree with the float model:\n" + "\n".join(bad)
            + "\nmore or better calibration data, int16 activations for that segment (--int16 K) or fewer "
              "device exits may help; --min-cosine / --min-agreement set the thresholds")


__all__ = ["SegmentPlan", "plan_segments", "CalibrationSet", "load_calibration", "DeviceSegment",
           "convert_segment", "device_program", "build_device_segments", "torch_float", "cosine",
           "eval_windows", "measure_agreement", "gate_agreement", "AgreementError", "Int16Error"]
