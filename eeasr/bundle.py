"""Reading and verifying a bundle: what `eeasr-convert` writes and what the host, the server and the simulated
device load (numpy and json only: no torch, no tensorflow).

A bundle is one directory:

  manifest.json        this module's schema (BUNDLE_FORMAT, BUNDLE_VERSION)
  segments/segK.tflite the device segments (int8 TFLite, run by TFLM)
  server/server.onnx   the layers after the last device exit (absent when every exit is on the device)
  server/decoder_*.onnx, server/lm.onnx   a Conformer-AED's attention decoder and LM (eeasr/aed_decode.py)
  firmware/            C arrays of the segments and a config header
  tokenizer.model      the model's tokenizer (the host decodes with it)

manifest.json (version 1), the parts a consumer reads:
- `format`, `version`: "eeasr-bundle", 1. Another version is refused (reconvert), never guessed at.
- `model`: `hash` (the checkpoint's model hash), `checkpoint_files` (sha256 of the checkpoint's files),
  `exit_layers` (all exits of the model), `d_model`, `vocab_size`.
- `bundle_id`: sha256 over the model hash, EXITS and the hashes of segments, server model and thresholds;
  the firmware header carries it, so a device and a bundle can be matched.
- `features`: the feature config (eeasr.features.FeatureConfig), its hash, and the normalization mean/std.
- `window`: `frames` (W), `encoder_frames` (W/4), `subsampling`, `mask_bias`.
- `device`: `exits` (EXITS = k), `segments` (name, file, sha256, blocks [first, last), front, exit, inputs and
  outputs by name with dtype, shape, scale and zero point, arena, op list, agreement, cost), `boundaries`
  (both ends of every segment-to-segment hidden state, with `requantize` when they differ), `handoff` (the
  int8 hidden state after the last device segment: its quantization, layer and size), and `program`.
- `program` describes what the device runs. Kind "early_exit": a list of steps, each running one segment and
  then taking one decision: {"segment": "seg1", "decision": {"type": "exit", "exit": 1}}; after the last step
  the device hands off. Kind "gated" (I3D, eeasr/gated_program.py): {"front": segment, "predictor": {"kind":
  "global" | "local", "segments": [one, or one per device layer], ...}, "layers": [{"layer": 1, "mha":
  segment, "ffn": segment}, ... the device's layers], "head": {"segment", "exit", "layer"}, "beta",
  "n_layers" (the model's), "module_mask" (modules in the HANDOFF mask)}: each module segment runs only when
  its gate is open. A consumer refuses kinds it does not know.
- `exits`: every exit of the model: index (1-based), layer, where ("device" or "server"), and its output name.
- `thresholds`: per exit measure (eeasr.exits), the threshold calibrated on TFLM outputs, with the target.
- `server`: file, sha256, the layer it starts after, input and output names (None when no layer is left).
  For a Conformer-AED, `server.decoder` (None otherwise): the last exit's attention decoder (`init` and `step`
  ONNX files, fed by the server model's `memory` output), its `sos`/`eos` ids and `vocab`, `beam`,
  `length_norm`, `max_len_ratio`, and `lm` (file and `weight`, or None); eeasr/aed_decode.py runs it.
- `files`: sha256 of every file in the bundle except manifest.json.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eeasr.features import dequantize_int8, quantize_int8, requantize_int8

BUNDLE_FORMAT = "eeasr-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
PROGRAM_KINDS = ("early_exit", "gated")
GATE_PREDICTORS = ("global", "local")


class BundleError(ValueError):
    """A bundle that is incomplete, corrupt, of another version or for another model."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class QParams:
    """Affine quantization of one tensor end: real = (q - zero_point) * scale."""
    scale: float
    zero_point: int
    dtype: str = "int8"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QParams:
        return cls(float(d["scale"]), int(d["zero_point"]), str(d.get("dtype", "int8")))

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "scale": self.scale, "zero_point": self.zero_point}


def requantize(q: np.ndarray, src: QParams, dst: QParams) -> np.ndarray:
    """Move a tensor from one end of a boundary to the other: the one function the device uses
    (eeasr.features.requantize_int8 for int8 -> int8; the same rounding for int16 ends)."""
    if src == dst:
        return q
    if src.dtype == dst.dtype == "int8":
        return requantize_int8(q, src.scale, src.zero_point, dst.scale, dst.zero_point)
    real = dequantize(q, src)
    return quantize(real, dst)


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    if qp.dtype == "int8":
        return dequantize_int8(q, qp.scale, qp.zero_point)
    if qp.dtype == "int16":
        return (np.asarray(q).astype(np.int32) - qp.zero_point).astype(np.float32) * np.float32(qp.scale)
    raise BundleError(f"unknown quantized dtype {qp.dtype!r}")


def quantize(x: np.ndarray, qp: QParams) -> np.ndarray:
    if qp.dtype == "int8":
        return quantize_int8(x, qp.scale, qp.zero_point)
    if qp.dtype == "int16":
        y = np.clip(np.asarray(x, np.float32) / np.float32(qp.scale), -65536, 65536)
        whole = np.trunc(y)
        r = whole + np.sign(y) * (np.abs(y - whole) >= 0.5)
        return np.clip(r + qp.zero_point, -32768, 32767).astype(np.int16)
    raise BundleError(f"unknown quantized dtype {qp.dtype!r}")


@dataclass
class Bundle:
    """A verified bundle directory; `manifest` is the parsed manifest.json."""
    path: Path
    manifest: dict[str, Any]

    @property
    def model_hash(self) -> str:
        return self.manifest["model"]["hash"]

    @property
    def bundle_id(self) -> str:
        return self.manifest["bundle_id"]

    @property
    def device_exits(self) -> int:
        return int(self.manifest["device"]["exits"])

    @property
    def window(self) -> int:
        return int(self.manifest["window"]["frames"])

    @property
    def segments(self) -> list[dict[str, Any]]:
        return self.manifest["device"]["segments"]

    @property
    def boundaries(self) -> list[dict[str, Any]]:
        return self.manifest["device"]["boundaries"]

    @property
    def thresholds(self) -> dict[str, Any]:
        return self.manifest["thresholds"]

    def file(self, rel: str) -> Path:
        return self.path / rel

    def segment_bytes(self, name: str) -> bytes:
        seg = next((s for s in self.segments if s["name"] == name), None)
        if seg is None:
            raise BundleError(f"{self.path}: no segment {name!r}; it has {[s['name'] for s in self.segments]}")
        return (self.path / seg["file"]).read_bytes()

    def input_qparams(self, segment: str, name: str) -> QParams:
        seg = next(s for s in self.segments if s["name"] == segment)
        return QParams.from_dict(seg["inputs"][name])

    def output_qparams(self, segment: str, name: str) -> QParams:
        seg = next(s for s in self.segments if s["name"] == segment)
        return QParams.from_dict(seg["outputs"][name])

    def handoff_qparams(self) -> QParams:
        return QParams.from_dict(self.manifest["device"]["handoff"])


def _check_schema(m: dict[str, Any], where: str) -> None:
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{where}: not an eeasr bundle manifest (format {m.get('format')!r} "
                          f"if any, expected {BUNDLE_FORMAT!r})")
    if m.get("version") != BUNDLE_VERSION:
        raise BundleError(f"{where}: bundle version {m.get('version')!r}, this eeasr reads version "
                          f"{BUNDLE_VERSION}; reconvert the model with `eeasr-convert CHECKPOINT --exits K --out DIR`")
    for key in ("model", "bundle_id", "features", "window", "device", "exits", "thresholds", "files"):
        if key not in m:
            raise BundleError(f"{where}: manifest lacks {key!r}; the bundle is incomplete, reconvert it")
    dev = m["device"]
    kind = dev.get("program", {}).get("kind")
    if kind not in PROGRAM_KINDS:
        raise BundleError(f"{where}: device program kind {kind!r} is not one this eeasr runs ({PROGRAM_KINDS})")
    names = [s["name"] for s in dev["segments"]]
    if kind == "gated":
        _check_gated(dev["program"], names, where)
    for step in dev["program"].get("steps", []):
        if step["segment"] not in names:
            raise BundleError(f"{where}: program step runs unknown segment {step['segment']!r}")
    for b in dev["boundaries"]:
        src, dst = QParams.from_dict(b["from_q"]), QParams.from_dict(b["to_q"])
        if bool(b["requantize"]) != (src != dst):
            raise BundleError(f"{where}: boundary {b['from']} -> {b['to']} has quantization {src} -> {dst} but "
                              f"requantize={b['requantize']}")


def _check_gated(prog: dict[str, Any], names: list[str], where: str) -> None:
    """A gated (I3D) program: the segments it names exist, one predictor per layer for a local predictor, beta in
    [0, 1], and a module mask that covers the device's layers (and every layer for a global predictor)."""
    pred = prog["predictor"]
    if pred["kind"] not in GATE_PREDICTORS:
        raise BundleError(f"{where}: gate predictor {pred['kind']!r}, expected one of {GATE_PREDICTORS}")
    layers = prog["layers"]
    if not layers or [e["layer"] for e in layers] != list(range(1, len(layers) + 1)):
        raise BundleError(f"{where}: gated program layers {[e.get('layer') for e in layers]} are not 1..K")
    if len(pred["segments"]) != (1 if pred["kind"] == "global" else len(layers)):
        raise BundleError(f"{where}: a {pred['kind']} gate predictor with {len(pred['segments'])} segment(s) for "
                          f"{len(layers)} layer(s)")
    used = [prog["front"], prog["head"]["segment"], *pred["segments"], *(e[m] for e in layers for m in ("mha", "ffn"))]
    unknown = [n for n in used if n not in names]
    if unknown:
        raise BundleError(f"{where}: gated program runs unknown segment(s) {unknown}")
    if not 0.0 <= float(prog["beta"]) <= 1.0:
        raise BundleError(f"{where}: gate threshold beta {prog['beta']} outside [0, 1]")
    n_model = int(prog["n_layers"])
    want = 2 * (n_model if pred["kind"] == "global" else len(layers))
    if int(prog["module_mask"]) != want or len(layers) > n_model:
        raise BundleError(f"{where}: module mask of {prog['module_mask']} modules for a {pred['kind']} predictor, "
                          f"{len(layers)} device layer(s) of {n_model}; expected {want}")


def load_bundle(path: str | Path, model_hash: str | None = None, bundle_id: str | None = None,
                verify_files: bool = True) -> Bundle:
    """Read and verify a bundle directory. Raises BundleError naming what is wrong: a missing or changed file
    (sha256 differs from the manifest), another bundle version, or a model hash / bundle id other than the
    one expected (e.g. the one a device reports)."""
    path = Path(path).expanduser()
    mpath = path / MANIFEST
    if not mpath.exists():
        raise BundleError(f"{path}: no {MANIFEST}; not a bundle (write one with `eeasr-convert`)")
    try:
        m = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath}: not valid JSON ({e}); the bundle is corrupt, reconvert it") from None
    try:
        _check_schema(m, str(mpath))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(f"{mpath}: malformed manifest ({type(e).__name__}: {e}); reconvert the bundle") from None
    for rel in m["files"]:
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise BundleError(f"{mpath}: file entry {rel!r} points outside the bundle")
    if model_hash is not None and m["model"]["hash"] != model_hash:
        raise BundleError(f"{path}: bundle is for model {m['model']['hash']}, expected model {model_hash}; "
                          f"convert that model or load the matching bundle")
    if bundle_id is not None and m["bundle_id"] != bundle_id:
        raise BundleError(f"{path}: bundle id {m['bundle_id'][:16]} differs from the expected {bundle_id[:16]} "
                          f"(same model, other conversion: EXITS, thresholds or segments differ); "
                          f"flash or load the same bundle on both sides")
    if verify_files:
        for rel, digest in m["files"].items():
            f = path / rel
            if not f.is_file():
                raise BundleError(f"{path}: {rel} is missing; the bundle is incomplete, reconvert it")
            got = sha256_file(f)
            if got != digest:
                raise BundleError(f"{path}: {rel} has sha256 {got[:16]}..., the manifest says {digest[:16]}...: "
                                  f"the file was changed or corrupted; reconvert or restore the bundle")
    return Bundle(path, m)


__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "MANIFEST", "BundleError", "Bundle", "QParams", "load_bundle",
           "requantize", "quantize", "dequantize", "sha256_file", "sha256_bytes"]
