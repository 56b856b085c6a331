"""The simulated device's answers to COMMAND SELF_TEST and PROFILE (INFO JSON, docs/protocol.md).

SELF_TEST: the device checks each of its seams against the Python reference on deterministic signals
(eeasr/testvectors.py): the feature front end (int8 frames and energies vs log_mel + normalization + the
contract's quantizer), the segments (two runs of every segment on the same window must agree bit for bit: a
TFLM arena that overlaps itself does not), the exit policy (measure and greedy tokens vs eeasr/exits.py), the
framing (bytes vs eeasr/protocol.py, both ways) and the endpointer (events and noise floor vs
eeasr/endpoint.py). With the Python seams every error is 0; with the firmware's C core (the default) the
float32 front end may put a value 1 LSB away where it lies within float rounding of a .5 rounding boundary,
and the float32 exit measure differs from the float64 reference by float rounding (MEASURE_TOL).

PROFILE: wall time per segment under TFLM on this host (a benchmark on a full window, and the windows run so
far), the bundle's arena sizes with TFLM's own allocation report, and the bundle's roofline estimate for the
ESP32-S3; all labelled as simulated: no figure here is an ESP32-S3 cycle count or heap mark.
"""

from __future__ import annotations

import json
import resource
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from eeasr import protocol as P
from eeasr.bundle import quantize
from eeasr.endpoint import Endpointer
from eeasr.exits import greedy_ctc
from eeasr.features import FeatureConfig, NormStats, log_mel
from eeasr.host.windows_stream import frame_energy
from eeasr.testvectors import feature_cases

if TYPE_CHECKING:
    from eeasr.host.device_sim import Device

FEATURE_TOL_LSB = 1          # a float32 C front end may round a value on a .5 boundary the other way
ENERGY_TOL = 1e-3            # mean log-mel, float32 vs the float64 reference
MEASURE_TOL = 1e-4           # relative, exit measure
CHUNK = 1000                 # samples per push: not a multiple of the hop, so streaming is exercised
BENCH_RUNS = 3


def _signals(cfg: FeatureConfig) -> dict[str, np.ndarray]:
    return {c.name: c.samples for c in feature_cases(cfg)}


def _reference_features(dev: Device, pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = dev.bundle.manifest["features"]
    lm = log_mel(pcm, FeatureConfig.from_dict(f["config"]))
    return quantize(NormStats.from_dict(f["norm"]).apply(lm), dev.program.feats_qparams), frame_energy(lm)


def _check(name: str, ok: bool, max_error: float, unit: str, detail: str) -> dict[str, Any]:
    return {"name": name, "pass": bool(ok), "max_error": float(max_error), "unit": unit, "detail": detail}


def _features_check(dev: Device, signals: dict[str, np.ndarray]) -> dict[str, Any]:
    worst_q, worst_e, mismatched, frames = 0, 0.0, 0, 0
    for pcm in signals.values():
        front = dev.core.features()
        parts = [front.push(pcm[i:i + CHUNK]) for i in range(0, len(pcm), CHUNK)]
        q = np.concatenate([p[0] for p in parts])
        e = np.concatenate([p[1] for p in parts])
        ref_q, ref_e = _reference_features(dev, pcm)
        if q.shape != ref_q.shape:
            return _check("features", False, float("inf"), "int8 LSB",
                          f"{len(q)} frames from {len(pcm)} samples, the reference has {len(ref_q)}")
        if len(q):
            d = np.abs(q.astype(np.int32) - ref_q.astype(np.int32))
            worst_q = max(worst_q, int(d.max()))
            mismatched += int((d > 0).sum())
            worst_e = max(worst_e, float(np.abs(np.asarray(e, np.float64) - ref_e).max()))
        frames += len(q)
    ok = worst_q <= FEATURE_TOL_LSB and worst_e <= ENERGY_TOL
    return _check("features", ok, worst_q, "int8 LSB",
                  f"{len(signals)} signals, {frames} frames streamed in {CHUNK}-sample chunks vs log_mel + norm + "
                  f"quantizer: {mismatched} values differ, energy max error {worst_e:.2g}")


def _test_window(dev: Device, signals: dict[str, np.ndarray]) -> tuple[np.ndarray, int]:
    q, _ = _reference_features(dev, signals["speech_like_am"])
    n = min(len(q), dev.program.window)
    return dev.window_input(q[:n]), n


def _segments_check(dev: Device, x: np.ndarray, n: int) -> dict[str, Any]:
    a = dev.program.run(x, n)
    b = dev.program.run(x, n)
    diff = max(int(np.abs(sa.raw[k].astype(np.int32) - sb.raw[k].astype(np.int32)).max())
               for sa, sb in zip(a.steps, b.steps) for k in sa.raw)
    shape_ok = a.hidden_q.shape == (a.encoder_frames, dev.hello.d_model)
    names = ", ".join(s.stage for s in a.steps)
    return _check("segments", diff == 0 and shape_ok, diff, "int8 LSB",
                  f"{names} run twice on a {n}-frame window: outputs {'equal' if diff == 0 else 'differ'}; handoff "
                  f"{a.hidden_q.shape[0]} x {a.hidden_q.shape[1]}" + ("" if shape_ok else " (expected "
                                                                         f"{a.encoder_frames} x {dev.hello.d_model})"))


def _policy_check(dev: Device, x: np.ndarray, n: int) -> dict[str, Any]:
    from eeasr.host.device_sim import MEASURE_FN

    out = dev.program.run(x, n)
    fn = MEASURE_FN[dev.core.policy.measure]
    worst, tokens_ok = 0.0, True
    for e in out.exits:
        d = dev.core.policy.decide(e)
        ref = fn(e.log_probs())
        worst = max(worst, abs(d.value - ref) / max(abs(ref), 1e-12))
        tokens_ok &= d.tokens == greedy_ctc(e.log_probs())
    return _check("exit policy", worst <= MEASURE_TOL and tokens_ok, worst, "relative",
                  f"{dev.core.policy.measure.name.lower()} and greedy CTC at {len(out.exits)} exit(s) vs eeasr.exits: "
                  f"tokens {'equal' if tokens_ok else 'differ'}")


def _framing_check(dev: Device, x: np.ndarray, n: int) -> dict[str, Any]:
    out = dev.program.run(x, n)
    qp = out.hidden_qparams
    msgs: list[P.Message] = [dev.hello, P.Result(7, 1, P.ResultFlag.FINAL, 1, 2, 0, 0.25, [3, 1, 4]),
                             P.Handoff(7, 1, 0, out.hidden_layer, dev.hello.model_hash, qp.scale, qp.zero_point,
                                       np.ascontiguousarray(out.hidden_q), out.module_mask),
                             P.Error(P.ErrorCode.BAD_FRAME, "crc mismatch"), P.Ack(5, P.MsgType.AUDIO)]
    framing = dev.core.framing
    bad = 0
    for seq, m in enumerate(msgs):
        ours, ref = framing.encode(m, seq), P.encode(m, seq)
        bad += ours != ref
        got = framing.decoder().feed(ref)
        bad += not (len(got) == 1 and isinstance(got[0], P.Frame) and P.encode(got[0].msg, seq) == ref)
    return _check("framing", bad == 0, bad, "messages", f"{len(msgs)} messages encoded and decoded vs eeasr.protocol")


def _endpointer_check(dev: Device, signals: dict[str, np.ndarray]) -> dict[str, Any]:
    quiet = signals["near_silent_lsb"]
    # two utterances, the second still open at the end of the stream (closed by flush)
    stream = np.concatenate([quiet, quiet, signals["speech_like_am"], quiet, quiet, signals["loud_chirp_tones"]])
    ep, ref = dev.core.endpointer(), Endpointer()
    got = [e for i in range(0, len(stream), CHUNK) for e in ep.push(stream[i:i + CHUNK])] + [ep.flush()]
    want = ref.push(stream) + [ref.flush()]
    same = [(e.kind, e.sample) for e in got if e] == [(e.kind, e.sample) for e in want if e]
    floor_error = abs(ep.floor - ref.floor)
    return _check("endpointer", same and floor_error == 0, floor_error, "noise floor",
                  f"{len(stream)} samples in {CHUNK}-sample chunks vs eeasr.endpoint: {sum(1 for e in want if e)} "
                  f"events {'equal' if same else 'differ'}")


def self_test(dev: Device) -> str:
    """INFO JSON: per check pass/fail and max error."""
    t = time.perf_counter()
    signals = _signals(FeatureConfig.from_dict(dev.bundle.manifest["features"]["config"]))
    x, n = _test_window(dev, signals)
    checks = [_features_check(dev, signals), _segments_check(dev, x, n), _policy_check(dev, x, n),
              _framing_check(dev, x, n), _endpointer_check(dev, signals)]
    return json.dumps({"report": "self_test", "simulated": True, "firmware": dev.hello.firmware,
                       "pass": all(c["pass"] for c in checks),
                       "golden_vectors": "none in the bundle: each seam checked against the Python reference on "
                                         "deterministic signals",
                       "checks": checks, "wall_s": round(time.perf_counter() - t, 3)})


def profile(dev: Device) -> str:
    """INFO JSON: per segment wall time on this host and arena sizes, labelled as simulated."""
    signals = _signals(FeatureConfig.from_dict(dev.bundle.manifest["features"]["config"]))
    pcm = signals["speech_like_am"]
    front = dev.core.features()
    t = time.perf_counter()
    q, _ = front.push(pcm)
    feat_s = time.perf_counter() - t
    w = dev.program.window
    x = dev.window_input(np.resize(q, (w, q.shape[1])))   # a full window: the most a segment ever does
    runs: list[list[float]] = []     # [run][segment] seconds: the time between the program's exit callbacks
    for _ in range(BENCH_RUNS):
        runs.append([])
        t = time.perf_counter()

        def stop(_: Any) -> bool:
            nonlocal t
            runs[-1].append(time.perf_counter() - t)
            t = time.perf_counter()
            return False

        dev.program.run(x, w, stop=stop)
    bench = dict(zip((s.name for s in dev.program.stages), np.median(np.array(runs), axis=0)))
    by_name = {s["name"]: s for s in dev.bundle.segments}
    segments = []
    for st in dev.program.stages:
        entry, live = by_name[st.name], dev.times[st.name]
        segments.append({
            "name": st.name, "exit_index": st.exit_index, "exit_layer": st.exit_layer,
            "wall_ms_full_window": round(1e3 * float(bench[st.name]), 3),
            "live_windows": live.runs,
            "live_wall_ms_mean": round(1e3 * live.total_s / live.runs, 3) if live.runs else None,
            "live_wall_ms_max": round(1e3 * live.max_s, 3) if live.runs else None,
            "arena_bytes": int(entry["arena"]["bytes"]), "arena_min_bytes": int(entry["arena"]["min_bytes"]),
            "tflm_allocated_bytes": st.segment.allocations().get("total"),
            "flash_bytes": int(entry["bytes"]),
            "esp32s3_roofline_ms": {k: round(1e3 * v, 1) for k, v in entry["cost"]["latency_s"].items()},
        })
    sr = dev.hello.sample_rate
    return json.dumps({
        "report": "profile", "simulated": True, "firmware": dev.hello.firmware,
        "note": "SIMULATED: wall time of the TFLM interpreter (tflite-micro wheel) on this host, not ESP32-S3 "
                "cycles; arena sizes are the bundle's (measured under TFLM on x86-64); esp32s3_roofline_ms is the "
                "converter's estimate per window, not a measurement",
        "window_frames": w, "benchmark_runs": BENCH_RUNS, "segments": segments,
        "features_ms_per_s_audio": round(1e3 * feat_s / (len(pcm) / sr), 3),
        "heap": [{"type": "host process peak RSS (not device memory)",
                  "bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}],
        "windows_run": dev.windows_run,
    })


__all__ = ["self_test", "profile"]
