"""The conversion, step by step: checkpoint -> bundle (what `eeasr-convert CHECKPOINT --exits K --out DIR` runs).

1. Device segments (convert/segments.py): cut at the exits, the first K converted to int8 TFLite in a
   calibration chain on the model's calibration set (activation ranges clipped at the 0.01 / 99.99
   percentiles by default, convert/calibration.py), each checked against the esp-tflite-micro op table
   (convert/esp_ops.py), loaded by the real TFLM interpreter, its smallest arena measured (eeasr/tflm.py);
   every run of the chain goes through eeasr/device_program.py, as the host's simulated device does.
2. Agreement: TFLM int8 vs the float model on unpadded windows at T_valid = W/4, W/2, W; below the thresholds
   the conversion fails.
3. Cost per segment (convert/cost.py).
4. Server model (convert/server.py): the remaining layers as ONNX, checked against torch under onnxruntime
   (eeasr/server_model.py, which the server runs); for a Conformer-AED also the last exit's attention decoder
   and, with --lm, a Transformer LM (convert/aed_server.py; the server decodes with eeasr/aed_decode.py).
5. Thresholds (convert/thresholds.py) on the TFLM outputs (and the server's on the TFLM handoff).
6. Firmware sources (convert/csource.py) and manifest.json (convert/bundle.py, eeasr/bundle.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from eeasr.bundle import Bundle, sha256_bytes, sha256_file
from eeasr.convert.calibration import DEFAULT_CLIP_PERCENTILE, calibration_entry, check_percentile

Log = Callable[[str], None]

DEFAULT_MIN_COSINE = 0.98
CONVERTIBLE = ("conformer", "conformer-aed", "i3d")   # model families (cfg.model.encoder) with a conversion
DEFAULT_MIN_AGREEMENT = 0.85


@dataclass
class ConvertOptions:
    exits: int
    min_cosine: float = DEFAULT_MIN_COSINE        # hidden-state cosine, TFLM int8 vs float, every segment and T
    min_agreement: float = DEFAULT_MIN_AGREEMENT  # exit argmax agreement, TFLM int8 vs float
    int16: frozenset[int] = field(default_factory=frozenset)  # segment numbers with int16 activations
    calibration_windows: int = 32                 # representative windows per segment
    clip_percentile: float | None = DEFAULT_CLIP_PERCENTILE  # int8 activation ranges at [100 - p, p]; None: min/max
    eval_windows_per_t: int = 2                   # agreement windows per T_valid
    target_wer: float | None = None               # threshold calibration target (default: last exit + 2)
    threads: int = 1
    beam: int = 10                                # Conformer-AED: the server decoder's attention beam
    lm: Path | None = None                        # Conformer-AED: an `eeasr-train lm` run rescoring the N-best
    lm_weight: float = 0.5                        # Conformer-AED: LM weight in the log-score am + w * lm

    def __post_init__(self) -> None:
        if self.clip_percentile is not None:
            check_percentile(self.clip_percentile)


def bundle_options(opts: ConvertOptions) -> dict[str, Any]:
    """The options that change a bundle's bytes: the manifest's `options` section. Bundle caches reuse a
    bundle only when its section equals the one they would convert with (a default that changes, such as
    the calibration, then reconverts instead of serving the old bundle)."""
    return {"exits": opts.exits, "int16": sorted(opts.int16), "calibration_windows": opts.calibration_windows,
            **calibration_entry(opts.clip_percentile), "target_wer": opts.target_wer, "beam": opts.beam,
            "lm": None if opts.lm is None else str(opts.lm), "lm_weight": opts.lm_weight}


def device_checks(opts: ConvertOptions, t_valid: list[int]) -> dict[str, Any]:
    """The manifest's device entries every family writes: op table, agreement gate, cost assumptions."""
    from eeasr.convert.cost import Assumptions
    from eeasr.convert.esp_ops import ESP_NN_VERSION, ESP_TFLITE_MICRO_COMMIT, ESP_TFLITE_MICRO_VERSION

    return {"op_table": {"esp_tflite_micro": ESP_TFLITE_MICRO_VERSION, "commit": ESP_TFLITE_MICRO_COMMIT,
                         "esp_nn": ESP_NN_VERSION},
            "agreement_gate": {"min_hidden_cosine": opts.min_cosine, "min_argmax_agreement": opts.min_agreement,
                               "t_valid": t_valid},
            "cost_assumptions": Assumptions().notes()}


def manifest_tail(exits: Any, thresholds: Any, server: Any, opts: ConvertOptions) -> dict[str, Any]:
    """The manifest's last sections, the same for every family: exits, thresholds, server, toolchain, options."""
    return {"exits": exits, "thresholds": thresholds, "server": server, "toolchain": _versions(),
            "options": bundle_options(opts)}


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("eeasr", "torch", "tensorflow-cpu", "tflite-micro", "ai-edge-litert", "onnx", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _setup_threads(n: int) -> None:
    import tensorflow as tf
    import torch

    torch.set_num_threads(n)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:  # already initialized in this process
        pass


def _segment_entry(seg: Any, cost: Any) -> dict[str, Any]:
    ins, outs = seg.io()
    p = seg.plan
    return {
        "name": seg.name, "file": f"segments/{seg.name}.tflite", "sha256": sha256_bytes(seg.tflite),
        "bytes": len(seg.tflite), "blocks": [p.first_block, p.last_block], "front": p.with_front,
        "exit": {"index": p.exit_index, "layer": p.exit_layer, "output": "logits"},
        "activations": seg.activations, **calibration_entry(seg.clip_percentile), "inputs": ins, "outputs": outs,
        "arena": {"min_bytes": seg.arena_min, "bytes": seg.arena, "measured_on": "tflite-micro wheel, x86-64",
                  "allocations": seg.allocations,
                  "margin": "bytes = min * 1.10 + 8 KiB, 16-byte aligned (ESP-NN scratch, 32-bit pointers)"},
        "ops": seg.op_table(), "agreement": seg.agreement, "cost": cost.to_dict(), "convert_s": round(seg.convert_s, 2),
    }


def build_segments(ck: Any, opts: ConvertOptions, log: Log, n_segments: int | None = None) -> tuple:
    """Steps 1-3 for the first `n_segments` exits (default opts.exits): segments, chain outputs, calibration
    set, costs."""
    from eeasr.convert.cost import segment_cost
    from eeasr.convert.segments import build_device_segments, load_calibration, plan_segments

    window = ck.cfg.data.window
    calib = load_calibration(ck.path, ck.norm, window)
    plans = plan_segments(ck.cfg.model.exits, n_segments or opts.exits)
    log(f"calibration set: {len(calib)} windows of {window} frames; {len(plans)} device segment(s) at exits "
        f"{[p.exit_layer for p in plans]}")
    segments, chains = build_device_segments(ck.model, plans, calib, window, opts.calibration_windows, opts.int16,
                                             progress=log, clip_percentile=opts.clip_percentile)
    costs = [segment_cost(s.tflite, s.arena, window) for s in segments]
    return segments, chains, calib, costs


def convert_checkpoint(checkpoint: Path, out: Path, opts: ConvertOptions, log: Log = print) -> Bundle:
    """Convert; raises AgreementError, UnsupportedOpError, ServerCheckError, TFLMError with what went wrong."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from eeasr.convert.bundle import bundle_id, model_sections, prepare_out, write_bundle
    from eeasr.convert.csource import write_firmware
    from eeasr.convert.segments import eval_windows, gate_agreement, measure_agreement
    from eeasr.device_program import OUTPUT_HIDDEN, OUTPUT_LOGITS
    from eeasr.train.checkpoint import load_checkpoint
    from eeasr.train.model import subsampled_lengths

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    prepare_out(Path(out))
    _setup_threads(opts.threads)
    ck = load_checkpoint(checkpoint)
    cfg = ck.cfg.model
    if cfg.encoder == "i3d":   # module segments and a gated program (convert/i3d.py)
        from eeasr.convert.i3d import convert_i3d
        return convert_i3d(ck, checkpoint, Path(out), opts, log, t_start)
    if cfg.encoder not in CONVERTIBLE:
        raise ValueError(f"{checkpoint}: {cfg.encoder!r} models cannot be converted yet; eeasr-convert converts "
                         f"{', '.join(CONVERTIBLE)}")
    window = ck.cfg.data.window
    k = opts.exits
    if not 1 <= k <= len(cfg.exits):
        raise ValueError(f"--exits {k}: the model has {len(cfg.exits)} exits (after layers {cfg.exits})")
    bad16 = sorted(i for i in opts.int16 if not 1 <= i <= k)
    if bad16:
        raise ValueError(f"--int16 {bad16}: segments are numbered 1..{k}")
    from eeasr.convert.aed_server import build_decoder, is_aed
    aed = is_aed(ck.model) and k < len(cfg.exits)  # an AED's server finishes with its last exit's decoder
    if opts.lm is not None and not aed:
        raise ValueError(f"--lm: only a conformer-aed model with exits left for the server rescores with an LM "
                         f"(this is {cfg.encoder!r} with {len(cfg.exits) - k} server exits)")

    # 1-3: device segments, agreement, cost
    t = time.perf_counter()
    segments, chains, calib, costs = build_segments(ck, opts, log)
    timings["segments"] = time.perf_counter() - t
    t = time.perf_counter()
    held_out = list(range(opts.calibration_windows, len(calib))) or list(range(len(calib)))
    windows = eval_windows(calib, held_out, window, opts.eval_windows_per_t)
    agreement = measure_agreement(ck.model, segments, windows, window)
    for seg in segments:
        seg.agreement = agreement[seg.name]
        worst = min(seg.agreement.values(), key=lambda m: m["hidden_cos"])
        log(f"{seg.name}: TFLM int8 vs float: hidden cosine >= {worst['hidden_cos']:.4f}, argmax agreement "
            f">= {min(m['argmax_agree'] for m in seg.agreement.values()):.3f} over T_valid "
            f"{', '.join(seg.agreement)}")
    gate_agreement(agreement, opts.min_cosine, opts.min_agreement)
    timings["agreement"] = time.perf_counter() - t

    # 4: server model on the remaining layers
    from eeasr.convert.server import check_against_torch, export_onnx, remaining_exits
    from eeasr.server_model import (SERVER_INPUT_HIDDEN, SERVER_INPUT_LENGTHS, SERVER_OUTPUT_MEMORY, ServerModel,
                                    output_name)
    t = time.perf_counter()
    server_files: dict[str, bytes] = {}
    server_entry: dict[str, Any] | None = None
    server = attention = None
    rest = remaining_exits(cfg.exits, k)
    if rest:
        onnx_bytes = export_onnx(ck.model, k, memory=aed)
        server = ServerModel(onnx_bytes)
        idx = np.arange(min(8, len(calib)))
        check = check_against_torch(ck.model, k, server, calib.feats[idx], calib.n_frames[idx])
        server_files["server/server.onnx"] = onnx_bytes
        server_entry = {"file": "server/server.onnx", "sha256": sha256_bytes(onnx_bytes), "format": "onnx",
                        "opset": 17, "after_layer": cfg.exits[k - 1],
                        "inputs": {SERVER_INPUT_HIDDEN: {"dtype": "float32", "shape": ["batch", "frames", cfg.d_model],
                                                         "note": "the dequantized device handoff"},
                                   SERVER_INPUT_LENGTHS: {"dtype": "int64", "shape": ["batch"],
                                                          "note": "valid encoder frames"}},
                        "outputs": {output_name(j): {"exit": j, "layer": layer, "dtype": "float32",
                                                     "kind": "log_probs"} for j, layer in rest},
                        "check": {"vs_torch_max_abs_logp": check, "runtime": "onnxruntime"}}
        log(f"server: ONNX for layers {cfg.exits[k - 1] + 1}-{cfg.exits[-1]} ({len(onnx_bytes):,} B), vs torch max "
            f"|d log p| {max(check.values()):.1e}")
    if aed:
        j, layer = rest[-1]
        server_entry["outputs"][SERVER_OUTPUT_MEMORY] = {"exit": j, "layer": layer, "dtype": "float32",
                                                         "kind": "hidden", "note": "the attention decoder's memory"}
        dec_files, server_entry["decoder"], attention = build_decoder(
            ck, calib.feats[idx], calib.n_frames[idx], [calib.texts[i] for i in idx], opts.beam, opts.lm,
            opts.lm_weight, log)
        server_files.update(dec_files)
    timings["server"] = time.perf_counter() - t

    # 5: thresholds on TFLM outputs (+ the server on the TFLM handoff)
    from eeasr.convert.thresholds import calibrate
    from eeasr.exits import log_softmax
    t = time.perf_counter()
    import torch
    enc_len = subsampled_lengths(torch.from_numpy(calib.n_frames.astype(np.int64))).numpy()
    logps: list[list[np.ndarray]] = []
    server_out = None
    if server is not None:
        hidden = np.concatenate([c[-1].real(OUTPUT_HIDDEN) for c in chains])
        server_out = server(hidden, enc_len)
    server_agree = []
    for i, c in enumerate(chains):
        tv = int(enc_len[i])
        row = [log_softmax(c[j].real(OUTPUT_LOGITS)[0, :tv]) for j in range(k)]
        if server_out is not None:
            row += [server_out[output_name(j)][i, :tv] for j, _ in rest]
        logps.append(row)
    if server_out is not None:  # server exits on the TFLM handoff vs the float model end to end
        with torch.no_grad():
            ref, _ = ck.model(torch.from_numpy(calib.feats), torch.from_numpy(calib.n_frames.astype(np.int64)))
        for j, _ in rest:
            a = np.concatenate([server_out[output_name(j)][i, :enc_len[i]] for i in range(len(calib))])
            b = np.concatenate([ref[j - 1][i, :enc_len[i]].numpy() for i in range(len(calib))])
            server_agree.append(round(float(np.mean(a.argmax(-1) == b.argmax(-1))), 4))
        server_entry["check"]["argmax_agree_on_tflm_handoff"] = dict(
            zip([output_name(j) for j, _ in rest], server_agree))
    server_texts = None
    if attention is not None:  # the server answers with the attention decoder: calibrate on its texts
        server_texts = [ck.tokenizer.decode(r.tokens) for r in attention.decode(server_out[SERVER_OUTPUT_MEMORY],
                                                                                enc_len)]
    thresholds = calibrate(logps, calib.texts, ck.tokenizer.decode, cfg.exits, k, opts.target_wer,
                           server_texts=server_texts)
    timings["thresholds"] = time.perf_counter() - t
    log(f"thresholds (target WER {thresholds['target_wer']:.1f}%): " + ", ".join(
        f"{m} {c['threshold']:.4g} (WER {c['wer']:.1f}%, avg layer {c['avg_exit_layer']:.2f})"
        for m, c in thresholds["measures"].items() if c))

    # 6: manifest, firmware sources, files
    last = segments[-1]
    boundaries = []
    for a, b in zip(segments, segments[1:]):
        src, dst = a.out_q(), b.in_q()
        boundaries.append({"from": f"{a.name}.hidden", "to": f"{b.name}.hidden_in", "from_q": src.to_dict(),
                           "to_q": dst.to_dict(), "requantize": src != dst})
    files = {f"segments/{s.name}.tflite": s.tflite for s in segments}
    files.update(server_files)
    files["tokenizer.model"] = (Path(ck.path) / "tokenizer.model").read_bytes()
    content_hashes = {rel: sha256_bytes(b) for rel, b in files.items()}
    exits = []
    for j, layer in enumerate(cfg.exits):
        if j < k:
            exits.append({"index": j + 1, "layer": layer, "where": "device", "segment": segments[j].name,
                          "output": "logits", "kind": "int8 logits; the device takes log-softmax in float"})
        else:
            exits.append({"index": j + 1, "layer": layer, "where": "server", "output": output_name(j + 1),
                          "kind": "log_probs"})
    ck_files = {n: sha256_file(Path(ck.path) / n) for n in ("model.pt", "config.yaml", "tokenizer.model", "norm.json",
                                                            "features.json", "calibration.npz")}
    manifest: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bundle_id": bundle_id(ck.model_hash, k, content_hashes, thresholds),
        **model_sections(ck, checkpoint, ck_files, content_hashes["tokenizer.model"], window),
        "device": {
            "exits": k, "target": "ESP32-S3, esp-tflite-micro",
            "segments": [_segment_entry(s, c) for s, c in zip(segments, costs)],
            "boundaries": boundaries,
            "handoff": {"from": f"{last.name}.hidden", "layer": last.plan.exit_layer, **last.out_q().to_dict(),
                        "shape": ["valid encoder frames", cfg.d_model]},
            "program": {"kind": "early_exit",
                        "steps": [{"segment": s.name, "decision": {"type": "exit", "exit": s.plan.exit_index}}
                                  for s in segments],
                        "after_last_step": "handoff"},
            **device_checks(opts, sorted({t for t, _ in windows})),
        },
        **manifest_tail(exits, thresholds, server_entry, opts),
    }
    tflite_by_name = {s.name: s.tflite for s in segments}

    def firmware(d: Path, m: dict[str, Any]) -> None:
        write_firmware(d, m, tflite_by_name)

    timings["total_before_write"] = time.perf_counter() - t_start
    manifest["timings_s"] = {k2: round(v, 2) for k2, v in timings.items()}
    bundle = write_bundle(Path(out), manifest, files, firmware)
    log(f"wrote {out} (bundle {bundle.bundle_id[:12]}, model {ck.model_hash}) in "
        f"{time.perf_counter() - t_start:.1f} s")
    return bundle


__all__ = ["ConvertOptions", "bundle_options", "convert_checkpoint", "build_segments", "DEFAULT_MIN_COSINE",
           "DEFAULT_MIN_AGREEMENT"]
