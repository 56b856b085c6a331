"""The `model` flash partition image: a bundle's device segments plus what the firmware needs to run them
(feature normalization, quantization, thresholds, golden vectors), so `make flash-model` replaces the model
without rebuilding the application. The firmware mmaps the partition and reads this layout in
firmware/main/model_image.c; firmware/README.md documents it field by field.

Layout, version 1 (little-endian; every offset counts from the image start):

  header        256 bytes: magic "EEASRMDL", version, sizes, CRC-32 of the rest, hashes, model shape,
                thresholds, feature/handoff quantization, arena, offsets of the blocks below, header CRC-32
  segment table 64 bytes per device segment: name, offset and size of its .tflite, arena, exit, quantization
                of its input/hidden/logits, whether its input is requantized from the previous hidden state
  norm          float32 mean[n_mels], std[n_mels]
  golden        SELF_TEST vectors: a PCM clip, its int8 features (docs/features.md reference), and per segment
                the int8 hidden state, int8 logits and exit measures the real TFLM interpreter produced
  segments      the .tflite files, each 16-byte aligned (TFLM reads flatbuffers in place)

CRC-32 is zlib's (docs/protocol.md). Building the golden vectors runs the segments in the tflite-micro wheel
(eeasr.device_program), the same runner the converter used.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eeasr.bundle import Bundle, QParams

MAGIC = b"EEASRMDL"
VERSION = 1
HEADER_BYTES = 256
SEGMENT_BYTES = 64
ALIGN = 16
GOLDEN_MAGIC = b"EEGV"
GOLDEN_VERSION = 1
MEASURES = ("entropy", "nonblank_entropy")   # ids 0 and 1, as docs/protocol.md's RESULT measure
NO_MEASURE = 255
# Allowed int8 differences on the device vs the x86 TFLM reference (ESP-NN kernels round a few
# intermediate values differently; differences accumulate over layers). Features: one LSB at float32 ties.
HIDDEN_TOL, LOGITS_TOL, FEATURE_TOL = 3, 3, 1

_HEAD = struct.Struct("<8sHHII16s32s16sIHHHHHBBBBBB16sfffifiIIIII")
_SEG = struct.Struct("<8sIIIBBBBfififiBBHI8x")
_GOLD = struct.Struct("<4sIIIIBBBBII")
_GOLD_SEG = struct.Struct("<IIff")
assert _SEG.size == SEGMENT_BYTES and _HEAD.size <= HEADER_BYTES - 4


class ModelImageError(ValueError):
    """A bundle that cannot go into the partition, or bytes that are not a valid image; the text says why."""


def _align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


def _enc_frames(n: int, subsampling: int) -> int:
    for _ in range(subsampling.bit_length() - 1):
        n = (n + 1) // 2
    return n


@dataclass(frozen=True)
class Layout:
    """Where everything goes for a bundle's first `k` segments; sizes known before anything is built."""
    segment_table: int
    norm: int
    golden: int
    golden_bytes: int
    segments: list[tuple[int, int]]      # (offset, bytes) per segment
    total: int


def golden_clip_samples(window: int, hop: int = 160, win: int = 400, limit: int = 19237) -> int:
    """PCM samples of the SELF_TEST clip: the testvectors speech-like clip, cut to fit one window."""
    return min(limit, win + hop * (window - 1))


def plan_layout(manifest: dict[str, Any], k: int | None = None) -> Layout:
    """Offsets and sizes of the image for the manifest's first `k` device segments (default: all)."""
    segs = manifest["device"]["segments"][:k]
    w, d = manifest["window"]["frames"], manifest["model"]["d_model"]
    v, sub = manifest["model"]["vocab_size"], manifest["window"]["subsampling"]
    n_mels = manifest["features"]["config"]["n_mels"]
    cfg = manifest["features"]["config"]
    n_samples = golden_clip_samples(w, cfg["hop_length"], cfg["win_length"])
    n_frames = 1 + (n_samples - cfg["win_length"]) // cfg["hop_length"]
    t_enc, t_valid = w // sub, _enc_frames(n_frames, sub)
    pos = HEADER_BYTES
    table = pos
    pos += SEGMENT_BYTES * len(segs)
    norm = _align(pos)
    pos = norm + 8 * n_mels
    golden = _align(pos)
    gbytes = _GOLD.size + _GOLD_SEG.size * len(segs)
    gbytes = _align(gbytes) + _align(2 * n_samples) + _align(n_frames * n_mels)
    gbytes += len(segs) * (_align(t_enc * d) + _align(t_valid * v))
    pos = golden + gbytes
    placed = []
    for s in segs:
        pos = _align(pos)
        placed.append((pos, int(s["bytes"])))
        pos += int(s["bytes"])
    return Layout(table, norm, golden, gbytes, placed, pos)


def _hex_ascii(h: str, n: int, what: str) -> bytes:
    try:
        bytes.fromhex(h)
    except ValueError:
        raise ModelImageError(f"{what} {h!r} is not hexadecimal") from None
    return h.encode()[:n].ljust(n, b"\0")


def _check_int8(bundle: Bundle, k: int) -> None:
    for s in bundle.segments[:k]:
        ends = {**s["inputs"], **s["outputs"]}
        for name in ("hidden", "logits", "feats" if s["front"] else "hidden_in"):
            dt = ends[name].get("dtype")
            if dt != "int8":
                raise ModelImageError(f"{bundle.path}: segment {s['name']} {name} is {dt}; the firmware runs int8 "
                                      f"segment ends only (convert without --int16 for the device segments)")


@dataclass
class Golden:
    pcm: np.ndarray                 # int16 [n_samples]
    feats_q: np.ndarray             # int8 [n_frames, n_mels]
    t_valid: int
    hidden_q: list[np.ndarray]      # int8 [W/4, d] per segment (raw TFLM output, padded frames included)
    logits_q: list[np.ndarray]      # int8 [t_valid, V] per segment
    measures: list[tuple[float, float]]  # (entropy, nonblank entropy) per segment


def golden_vectors(bundle: Bundle, k: int) -> Golden:
    """Run the bundle's first `k` segments on the speech-like test clip in the real TFLM interpreter."""
    from eeasr.device_program import OUTPUT_HIDDEN, DeviceProgram
    from eeasr.exits import frame_entropy, nonblank_entropy
    from eeasr.features import FeatureConfig, NormStats, log_mel
    from eeasr.testvectors import feature_cases

    m = bundle.manifest
    cfg = FeatureConfig.from_dict(m["features"]["config"])
    clip = next(c for c in feature_cases(cfg) if c.name == "speech_like_am").samples
    pcm = clip[:golden_clip_samples(bundle.window, cfg.hop_length, cfg.win_length, len(clip))]
    norm = NormStats.from_dict(m["features"]["norm"])
    try:
        program = DeviceProgram.from_bundle(bundle, upto=k)
    except ImportError as e:
        raise ModelImageError(f"golden vectors need the tflite-micro wheel ({e}); install the convert extra: "
                              f"pip install -e '.[convert]'") from None
    x_q, n = program.quantize_features(norm.apply(log_mel(pcm, cfg)))
    out = program.run(x_q, n)
    blank = int(m["model"].get("blank", 0))
    measures = []
    for e in out.exits:
        lp = e.log_probs()
        measures.append((frame_entropy(lp), nonblank_entropy(lp, blank)))
    return Golden(pcm.astype(np.int16), x_q[0, :n].copy(), out.encoder_frames,
                  [s.raw[OUTPUT_HIDDEN][0].copy() for s in out.steps], [e.logits_q.copy() for e in out.exits],
                  measures)


def build_image(bundle: Bundle, k: int | None = None, golden: Golden | None = None) -> bytes:
    """The partition image for the bundle's first `k` device segments (default: all of them)."""
    m = bundle.manifest
    segs = bundle.segments[:k]
    k = len(segs)
    _check_int8(bundle, k)
    if len(m["model"]["exit_layers"]) > 16:
        raise ModelImageError(f"{bundle.path}: {len(m['model']['exit_layers'])} exits; the image holds at most 16")
    lay = plan_layout(m, k)
    g = golden if golden is not None else golden_vectors(bundle, k)
    img = bytearray(lay.total)

    # segment table and segments
    prev_hidden: QParams | None = None
    for i, (s, (off, size)) in enumerate(zip(segs, lay.segments)):
        data = bundle.segment_bytes(s["name"])
        if len(data) != size:
            raise ModelImageError(f"{bundle.path}: {s['file']} has {len(data)} bytes, the manifest says {size}")
        img[off:off + size] = data
        inp = QParams.from_dict(s["inputs"]["feats" if s["front"] else "hidden_in"])
        hid, lg = QParams.from_dict(s["outputs"]["hidden"]), QParams.from_dict(s["outputs"]["logits"])
        requant = prev_hidden is not None and prev_hidden != inp
        _SEG.pack_into(img, lay.segment_table + i * SEGMENT_BYTES, s["name"].encode()[:8], off, size,
                       int(s["arena"]["bytes"]), s["exit"]["index"], s["exit"]["layer"], s["blocks"][0],
                       s["blocks"][1], inp.scale, inp.zero_point, hid.scale, hid.zero_point, lg.scale, lg.zero_point,
                       int(bool(s["front"])), int(requant), 0, zlib.crc32(data))
        prev_hidden = hid

    # normalization
    n_mels = m["features"]["config"]["n_mels"]
    norm = np.concatenate([np.asarray(m["features"]["norm"]["mean"], "<f4"),
                           np.asarray(m["features"]["norm"]["std"], "<f4")])
    if norm.size != 2 * n_mels:
        raise ModelImageError(f"{bundle.path}: normalization has {norm.size // 2} bins, the features {n_mels}")
    img[lay.norm:lay.norm + norm.nbytes] = norm.tobytes()

    # golden vectors
    pos = _align(lay.golden + _GOLD.size + _GOLD_SEG.size * k)
    pcm_off = pos
    pos += _align(2 * len(g.pcm))
    feats_off = pos
    pos += _align(g.feats_q.size)
    img[pcm_off:pcm_off + 2 * len(g.pcm)] = g.pcm.astype("<i2").tobytes()
    img[feats_off:feats_off + g.feats_q.size] = g.feats_q.astype(np.int8).tobytes()
    _GOLD.pack_into(img, lay.golden, GOLDEN_MAGIC, GOLDEN_VERSION, len(g.pcm), len(g.feats_q), g.t_valid, HIDDEN_TOL,
                    LOGITS_TOL, FEATURE_TOL, k, pcm_off, feats_off)
    for i in range(k):
        h, lg = g.hidden_q[i].astype(np.int8).tobytes(), g.logits_q[i].astype(np.int8).tobytes()
        h_off = pos
        pos += _align(len(h))
        l_off = pos
        pos += _align(len(lg))
        img[h_off:h_off + len(h)] = h
        img[l_off:l_off + len(lg)] = lg
        _GOLD_SEG.pack_into(img, lay.golden + _GOLD.size + i * _GOLD_SEG.size, h_off, l_off, *g.measures[i])
    if pos != lay.golden + lay.golden_bytes:
        raise ModelImageError(f"golden block is {pos - lay.golden} bytes, planned {lay.golden_bytes}")

    # header
    th = m["thresholds"]["measures"]
    thr = [float(th[name]["threshold"]) if th.get(name) else math.nan for name in MEASURES]
    default = m["thresholds"].get("default_measure")
    feat_q = QParams.from_dict(segs[0]["inputs"]["feats"])
    hand = QParams.from_dict(m["device"]["handoff"]) if k == bundle.device_exits else \
        QParams.from_dict(segs[-1]["outputs"]["hidden"])
    layers = list(m["model"]["exit_layers"])
    cfg = m["features"]["config"]
    _HEAD.pack_into(img, 0, MAGIC, VERSION, HEADER_BYTES, lay.total, 0, _hex_ascii(m["model"]["hash"], 16, "model hash"),
                    _hex_ascii(m["bundle_id"], 32, "bundle id"), _hex_ascii(m["features"]["hash"], 16, "feature hash"),
                    cfg["sample_rate"], m["window"]["frames"], m["window"]["encoder_frames"], m["model"]["d_model"],
                    m["model"]["vocab_size"], n_mels, m["window"]["subsampling"], len(layers), k,
                    int(m["model"].get("blank", 0)), MEASURES.index(default) if default in MEASURES else NO_MEASURE,
                    segs[-1]["exit"]["layer"], bytes(layers).ljust(16, b"\0"), thr[0], thr[1], feat_q.scale,
                    feat_q.zero_point, hand.scale, hand.zero_point, max(int(s["arena"]["bytes"]) for s in segs), lay.norm, lay.segment_table,
                    lay.golden, lay.golden_bytes)
    struct.pack_into("<I", img, 16, zlib.crc32(bytes(img[HEADER_BYTES:])))
    struct.pack_into("<I", img, HEADER_BYTES - 4, zlib.crc32(bytes(img[:HEADER_BYTES - 4])))
    return bytes(img)


@dataclass
class SegmentEntry:
    name: str
    offset: int
    size: int
    arena: int
    exit_index: int
    exit_layer: int
    blocks: tuple[int, int]
    in_q: QParams
    hidden_q: QParams
    logits_q: QParams
    front: bool
    requant: bool
    crc: int


@dataclass
class ModelImage:
    """A parsed image (what the firmware reads at boot)."""
    version: int
    size: int
    model_hash: str
    bundle_id: str
    feature_hash: str
    sample_rate: int
    window: int
    encoder_frames: int
    d_model: int
    vocab: int
    n_mels: int
    subsampling: int
    exit_layers: list[int]
    device_exits: int
    blank: int
    default_measure: int
    handoff_layer: int
    thresholds: tuple[float, float]
    feature_q: QParams
    handoff_q: QParams
    arena: int
    segments: list[SegmentEntry]
    norm_mean: np.ndarray
    norm_std: np.ndarray
    golden: Golden
    tflite: dict[str, bytes] = field(repr=False, default_factory=dict)


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ModelImageError(msg)


def parse_image(data: bytes) -> ModelImage:
    """Parse and verify an image the way the firmware does (magic, version, both CRCs, every bound)."""
    _need(len(data) >= HEADER_BYTES, f"image of {len(data)} bytes is shorter than its {HEADER_BYTES}-byte header")
    h = _HEAD.unpack_from(data)
    (magic, version, hbytes, total, crc, mhash, bid, fhash, sr, w, t_enc, d, v, n_mels, sub, n_exits, k, blank,
     measure, hlayer, layers, th0, th1, fscale, fzp, hscale, hzp, arena, norm_off, table_off, gold_off, gold_bytes) = h
    _need(magic == MAGIC, f"bad magic {magic!r}: not an eeasr model image (expected {MAGIC!r})")
    _need(version == VERSION, f"model image version {version}; this reader takes version {VERSION}: rebuild it")
    _need(hbytes == HEADER_BYTES, f"header size {hbytes}, expected {HEADER_BYTES}")
    (hcrc,) = struct.unpack_from("<I", data, HEADER_BYTES - 4)
    _need(hcrc == zlib.crc32(data[:HEADER_BYTES - 4]), "header CRC-32 mismatch: the image is corrupt")
    _need(total <= len(data), f"image says {total} bytes but only {len(data)} are present (truncated)")
    _need(crc == zlib.crc32(data[HEADER_BYTES:total]), "payload CRC-32 mismatch: the image is corrupt")
    _need(0 < k <= n_exits <= 16, f"device exits {k} of {n_exits} out of range")
    _need(table_off + k * SEGMENT_BYTES <= total and norm_off + 8 * n_mels <= total and
          gold_off + gold_bytes <= total, "a block lies past the end of the image")
    segs, tfl = [], {}
    for i in range(k):
        base = table_off + i * SEGMENT_BYTES
        (name, off, size, sarena, ei, el, b0, b1, isc, izp, hsc, hzp_s, lsc, lzp, front, requant, _,
         scrc) = _SEG.unpack_from(data, base)
        _need(off % ALIGN == 0 and off + size <= total, f"segment {i + 1} at {off}+{size} is misaligned or out of bounds")
        blob = bytes(data[off:off + size])
        _need(zlib.crc32(blob) == scrc, f"segment {i + 1} CRC-32 mismatch")
        nm = name.rstrip(b"\0").decode()
        tfl[nm] = blob
        segs.append(SegmentEntry(nm, off, size, sarena, ei, el, (b0, b1), QParams(isc, izp), QParams(hsc, hzp_s),
                                 QParams(lsc, lzp), bool(front), bool(requant), scrc))
    norm = np.frombuffer(data, "<f4", 2 * n_mels, norm_off).astype(np.float32)
    gm, gv, ns, nf, tv, _, _, _, gk, pcm_off, feats_off = _GOLD.unpack_from(data, gold_off)
    _need(gm == GOLDEN_MAGIC and gv == GOLDEN_VERSION and gk == k, "golden block header is invalid")
    hid, lgs, meas = [], [], []
    for i in range(k):
        h_off, l_off, e0, e1 = _GOLD_SEG.unpack_from(data, gold_off + _GOLD.size + i * _GOLD_SEG.size)
        hid.append(np.frombuffer(data, np.int8, t_enc * d, h_off).reshape(t_enc, d).copy())
        lgs.append(np.frombuffer(data, np.int8, tv * v, l_off).reshape(tv, v).copy())
        meas.append((e0, e1))
    golden = Golden(np.frombuffer(data, "<i2", ns, pcm_off).astype(np.int16),
                    np.frombuffer(data, np.int8, nf * n_mels, feats_off).reshape(nf, n_mels).copy(), tv, hid, lgs, meas)
    return ModelImage(version, total, mhash.decode(), bid.decode(), fhash.decode(), sr, w, t_enc, d, v, n_mels, sub,
                      list(layers[:n_exits]), k, blank, measure, hlayer, (th0, th1), QParams(fscale, fzp),
                      QParams(hscale, hzp), arena, segs, norm[:n_mels], norm[n_mels:], golden, tfl)


__all__ = ["MAGIC", "VERSION", "HEADER_BYTES", "SEGMENT_BYTES", "ModelImageError", "Layout", "plan_layout",
           "Golden", "golden_vectors", "build_image", "ModelImage", "SegmentEntry", "parse_image",
           "golden_clip_samples"]
