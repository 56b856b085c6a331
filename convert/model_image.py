"""The `model` flash partition image: a bundle's device segments plus what the firmware needs to run them
(feature normalization, quantization, thresholds, the device program, golden vectors), so `make flash-model`
replaces the model without rebuilding the application. The firmware mmaps the partition and reads this layout
in firmware/main/model_image.c; firmware/README.md documents it field by field.

Layout, version 2 (little-endian; every offset counts from the image start):

  header        256 bytes: magic "EEASRMDL", version, sizes, CRC-32 of the rest, hashes, model shape,
                thresholds, feature/handoff quantization, arena, offsets of the blocks below, the program
                (kind; for a gated program the predictor kind, model and device layers, module mask, beta),
                header CRC-32
  segment table 64 bytes per device segment, in program order: name, offset and size of its .tflite, arena,
                exit, role and layer, quantization of its input/output/logits, whether its input is
                requantized from the previous segment's hidden state (early-exit), whether it takes n_frames
  norm          float32 mean[n_mels], std[n_mels]
  golden        SELF_TEST vectors: a PCM clip, its int8 features (docs/features.md reference), and per segment
                the int8 output (hidden state, or a predictor's gate margins), int8 logits and exit measures
                the real TFLM interpreter produced (a gated program with every gate open)
  segments      the .tflite files, each 16-byte aligned (TFLM reads flatbuffers in place)

An early-exit program's table holds its first k segments (EXITS = k), each with its exit head. A gated (I3D)
program's holds all of its segments in the order it runs them: front, the global predictor, then per device
layer its local predictor, attention and feed-forward segments, then the head (eeasr/gated_program.py).

CRC-32 is zlib's (docs/protocol.md). Building the golden vectors runs the segments in the tflite-micro wheel
(eeasr.device_program, eeasr.gated_program), the same runners the converter used.
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
VERSION = 2
HEADER_BYTES = 256
SEGMENT_BYTES = 64
ALIGN = 16
GOLDEN_MAGIC = b"EEGV"
GOLDEN_VERSION = 1
MEASURES = ("entropy", "nonblank_entropy")   # ids 0 and 1, as docs/protocol.md's RESULT measure
NO_MEASURE = 255
PROGRAMS = ("early_exit", "gated")          # header program kind ids
PREDICTORS = ("global", "local")            # a gated program's gate predictor kind ids (255: early-exit)
# Segment table role ids: "segment" is an early-exit segment (blocks and their exit head); the rest are a gated
# program's (convert/i3d.py).
ROLES = ("segment", "front", "predictor", "mha", "ffn", "head")
NONE = 255
MAX_SEGMENTS = 40                           # firmware/main/model_image.h EEASR_IMG_MAX_SEGMENTS
# Allowed int8 differences on the device vs the x86 TFLM reference (ESP-NN kernels round a few
# intermediate values differently; differences accumulate over layers). Features: one LSB at float32 ties.
HIDDEN_TOL, LOGITS_TOL, FEATURE_TOL = 3, 3, 1

_HEAD = struct.Struct("<8sHHII16s32s16sIHHHHHBBBBBB16sfffifiIIIIIBBBBBB2xd")
_SEG = struct.Struct("<8sIIIBBBBfififiBBBBIBxH4x")
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
class ImageSegment:
    """One device segment as the image describes it (from its manifest entry and the program)."""
    entry: dict[str, Any] = field(repr=False)
    role: str                   # ROLES
    layer: int                  # gated: the layer it belongs to (0: front, global predictor); early-exit: 0
    exit: tuple[int, int]       # (exit index, exit layer) of its exit head; (0, 0) without one
    blocks: tuple[int, int]     # [first, last) layers it computes (early-exit; gated attention / feed-forward)
    input: str                  # feats | pooled | hidden_in
    output: str | None          # hidden | gate; None for a gated head (logits only)
    logits: bool
    n_gates: int                # a predictor's margins per window

    @property
    def name(self) -> str:
        return self.entry["name"]

    def output_elements(self, encoder_frames: int, d: int) -> int:
        return {"hidden": encoder_frames * d, "gate": self.n_gates, None: 0}[self.output]


def image_segments(manifest: dict[str, Any], k: int | None = None) -> list[ImageSegment]:
    """The segments the image of the manifest's program holds, in program order: an early-exit program's first
    `k` (default all); a gated program's all of them (`k` may only be the bundle's EXITS)."""
    dev = manifest["device"]
    prog = dev["program"]
    if prog["kind"] == "early_exit":
        return [ImageSegment(s, "segment", 0, (int(s["exit"]["index"]), int(s["exit"]["layer"])),
                             (int(s["blocks"][0]), int(s["blocks"][1])), "feats" if s["front"] else "hidden_in",
                             "hidden", True, 0) for s in dev["segments"][:k]]
    if prog["kind"] != "gated":
        raise ModelImageError(f"device program kind {prog['kind']!r}: the firmware runs {', '.join(PROGRAMS)}")
    if k is not None and k != int(dev["exits"]):
        raise ModelImageError(f"a gated program runs all of its segments: its image is the bundle's EXITS="
                              f"{dev['exits']}, not {k}")
    pred, head = prog["predictor"], prog["head"]
    order = [prog["front"], *(pred["segments"] if pred["kind"] == "global" else [])]
    for i, lay in enumerate(prog["layers"]):
        order += [*([pred["segments"][i]] if pred["kind"] == "local" else []), lay["mha"], lay["ffn"]]
    order.append(head["segment"])
    by_name = {s["name"]: s for s in dev["segments"]}
    out = []
    for name in order:
        s = by_name[name]
        role, layer = s["role"], int(s["layer"])
        if role not in ROLES[1:]:
            raise ModelImageError(f"segment {name} has role {role!r}; a gated program's are {ROLES[1:]}")
        out.append(ImageSegment(
            s, role, layer, (int(head["exit"]), int(head["layer"])) if role == "head" else (0, 0),
            (layer - 1, layer) if role in ("mha", "ffn") else (0, 0),
            {"front": "feats", "predictor": "pooled"}.get(role, "hidden_in"),
            {"predictor": "gate", "head": None}.get(role, "hidden"), role == "head",
            int(s["outputs"]["gate"]["shape"][-1]) if role == "predictor" else 0))
    return out


@dataclass(frozen=True)
class Layout:
    """Where everything goes for the image's segments; sizes known before anything is built."""
    segment_table: int
    norm: int
    golden: int
    golden_bytes: int
    segments: list[tuple[int, int]]      # (offset, bytes) per segment
    total: int


def golden_clip_samples(window: int, hop: int = 160, win: int = 400, limit: int = 19237) -> int:
    """PCM samples of the SELF_TEST clip: the testvectors speech-like clip, cut to fit one window."""
    return min(limit, win + hop * (window - 1))


def _golden_shape(manifest: dict[str, Any]) -> tuple[int, int, int]:
    """(PCM samples, feature frames, valid encoder frames) of the SELF_TEST clip."""
    cfg = manifest["features"]["config"]
    n_samples = golden_clip_samples(manifest["window"]["frames"], cfg["hop_length"], cfg["win_length"])
    n_frames = 1 + (n_samples - cfg["win_length"]) // cfg["hop_length"]
    return n_samples, n_frames, _enc_frames(n_frames, manifest["window"]["subsampling"])


def plan_layout(manifest: dict[str, Any], k: int | None = None) -> Layout:
    """Offsets and sizes of the image of the manifest's program (an early-exit program's first `k` segments)."""
    segs = image_segments(manifest, k)
    w, d = manifest["window"]["frames"], manifest["model"]["d_model"]
    v, sub = manifest["model"]["vocab_size"], manifest["window"]["subsampling"]
    n_mels = manifest["features"]["config"]["n_mels"]
    n_samples, n_frames, t_valid = _golden_shape(manifest)
    t_enc = w // sub
    pos = HEADER_BYTES
    table = pos
    pos += SEGMENT_BYTES * len(segs)
    norm = _align(pos)
    pos = norm + 8 * n_mels
    golden = _align(pos)
    gbytes = _GOLD.size + _GOLD_SEG.size * len(segs)
    gbytes = _align(gbytes) + _align(2 * n_samples) + _align(n_frames * n_mels)
    gbytes += sum(_align(s.output_elements(t_enc, d)) + _align(t_valid * v if s.logits else 0) for s in segs)
    pos = golden + gbytes
    placed = []
    for s in segs:
        pos = _align(pos)
        placed.append((pos, int(s.entry["bytes"])))
        pos += int(s.entry["bytes"])
    return Layout(table, norm, golden, gbytes, placed, pos)


def _hex_ascii(h: str, n: int, what: str) -> bytes:
    try:
        bytes.fromhex(h)
    except ValueError:
        raise ModelImageError(f"{what} {h!r} is not hexadecimal") from None
    return h.encode()[:n].ljust(n, b"\0")


def _check_int8(bundle: Bundle, segs: list[ImageSegment]) -> None:
    for s in segs:
        ends = {**s.entry["inputs"], **s.entry["outputs"]}
        for name in (s.input, s.output, "logits" if s.logits else None):
            dt = ends[name].get("dtype") if name else "int8"
            if dt != "int8":
                raise ModelImageError(f"{bundle.path}: segment {s.name} {name} is {dt}; the firmware runs int8 "
                                      f"segment ends only (convert without --int16 for the device segments)")


@dataclass
class Golden:
    pcm: np.ndarray                 # int16 [n_samples]
    feats_q: np.ndarray             # int8 [n_frames, n_mels]
    t_valid: int
    # int8 per segment: its output, the hidden state [W/4, d] (raw TFLM output, padded frames included) or a
    # predictor's gate margins [n_gates]; empty [0] for a gated head
    hidden_q: list[np.ndarray]
    logits_q: list[np.ndarray]      # int8 [t_valid, V] per segment with an exit head, else [0, V]
    measures: list[tuple[float, float]]  # (entropy, nonblank entropy) of its exit head; (0, 0) without one


def golden_vectors(bundle: Bundle, k: int | None = None) -> Golden:
    """Run the image's segments on the speech-like test clip in the real TFLM interpreter: an early-exit
    program's first `k`, a gated program's all of them (every gate open, so every segment has outputs)."""
    from eeasr.device_program import DeviceProgram
    from eeasr.exits import frame_entropy, nonblank_entropy
    from eeasr.features import FeatureConfig, NormStats, log_mel
    from eeasr.gated_program import GatedProgram
    from eeasr.testvectors import feature_cases

    m = bundle.manifest
    segs = image_segments(m, k)
    cfg = FeatureConfig.from_dict(m["features"]["config"])
    clip = next(c for c in feature_cases(cfg) if c.name == "speech_like_am").samples
    pcm = clip[:golden_clip_samples(bundle.window, cfg.hop_length, cfg.win_length, len(clip))]
    norm = NormStats.from_dict(m["features"]["norm"])
    gated = m["device"]["program"]["kind"] == "gated"
    try:
        program = GatedProgram.from_bundle(bundle) if gated else DeviceProgram.from_bundle(bundle, upto=len(segs))
    except ImportError as e:
        raise ModelImageError(f"golden vectors need the tflite-micro wheel ({e}); install the convert extra: "
                              f"pip install -e '.[convert]'") from None
    x_q, n = program.quantize_features(norm.apply(log_mel(pcm, cfg)))
    out = (program.run(x_q, n, gates=np.ones((program.device_layers, 2), bool)) if gated
           else program.run(x_q, n))
    steps = {s.stage: s for s in out.steps}
    exits = iter(out.exits)
    blank = int(m["model"].get("blank", 0))
    vocab = int(m["model"]["vocab_size"])
    hidden, logits, measures = [], [], []
    for s in segs:
        raw = steps[s.name].raw
        hidden.append(raw[s.output][0].copy() if s.output else np.zeros(0, np.int8))
        if s.logits:
            e = next(exits)
            lp = e.log_probs()
            logits.append(e.logits_q.copy())
            measures.append((frame_entropy(lp), nonblank_entropy(lp, blank)))
        else:
            logits.append(np.zeros((0, vocab), np.int8))
            measures.append((0.0, 0.0))
    return Golden(pcm.astype(np.int16), x_q[0, :n].copy(), out.encoder_frames, hidden, logits, measures)


def _qparams(entry: dict[str, Any], name: str | None) -> QParams:
    """An end's quantization; (0, 0) for an end the segment lacks."""
    return QParams.from_dict(entry[name]) if name else QParams(0.0, 0)


def build_image(bundle: Bundle, k: int | None = None, golden: Golden | None = None) -> bytes:
    """The partition image of the bundle's device program (an early-exit program's first `k` segments)."""
    m = bundle.manifest
    segs = image_segments(m, k)
    n = len(segs)
    if n > MAX_SEGMENTS:
        raise ModelImageError(f"{bundle.path}: {n} device segments; the firmware holds at most {MAX_SEGMENTS}")
    _check_int8(bundle, segs)
    if len(m["model"]["exit_layers"]) > 16:
        raise ModelImageError(f"{bundle.path}: {len(m['model']['exit_layers'])} exits; the image holds at most 16")
    prog = m["device"]["program"]
    gated = prog["kind"] == "gated"
    lay = plan_layout(m, k)
    g = golden if golden is not None else golden_vectors(bundle, k)
    img = bytearray(lay.total)

    # segment table and segments
    prev_hidden: QParams | None = None
    for i, (s, (off, size)) in enumerate(zip(segs, lay.segments)):
        data = bundle.segment_bytes(s.name)
        if len(data) != size:
            raise ModelImageError(f"{bundle.path}: {s.entry['file']} has {len(data)} bytes, the manifest says {size}")
        img[off:off + size] = data
        inp = _qparams(s.entry["inputs"], s.input)
        out = _qparams(s.entry["outputs"], s.output)
        lg = _qparams(s.entry["outputs"], "logits" if s.logits else None)
        requant = not gated and prev_hidden is not None and prev_hidden != inp   # gated: decided at run time
        _SEG.pack_into(img, lay.segment_table + i * SEGMENT_BYTES, s.name.encode()[:8], off, size,
                       int(s.entry["arena"]["bytes"]), *s.exit, *s.blocks, inp.scale, inp.zero_point, out.scale,
                       out.zero_point, lg.scale, lg.zero_point, int(s.input == "feats"), int(requant),
                       ROLES.index(s.role), int("n_frames" in s.entry["inputs"]), zlib.crc32(data), s.layer,
                       s.n_gates)
        prev_hidden = out

    # normalization
    n_mels = m["features"]["config"]["n_mels"]
    norm = np.concatenate([np.asarray(m["features"]["norm"]["mean"], "<f4"),
                           np.asarray(m["features"]["norm"]["std"], "<f4")])
    if norm.size != 2 * n_mels:
        raise ModelImageError(f"{bundle.path}: normalization has {norm.size // 2} bins, the features {n_mels}")
    img[lay.norm:lay.norm + norm.nbytes] = norm.tobytes()

    # golden vectors (an absent output or logits block: offset 0)
    pos = _align(lay.golden + _GOLD.size + _GOLD_SEG.size * n)
    pcm_off = pos
    pos += _align(2 * len(g.pcm))
    feats_off = pos
    pos += _align(g.feats_q.size)
    img[pcm_off:pcm_off + 2 * len(g.pcm)] = g.pcm.astype("<i2").tobytes()
    img[feats_off:feats_off + g.feats_q.size] = g.feats_q.astype(np.int8).tobytes()
    _GOLD.pack_into(img, lay.golden, GOLDEN_MAGIC, GOLDEN_VERSION, len(g.pcm), len(g.feats_q), g.t_valid, HIDDEN_TOL,
                    LOGITS_TOL, FEATURE_TOL, n, pcm_off, feats_off)
    for i in range(n):
        offs = []
        for block in (g.hidden_q[i], g.logits_q[i]):
            raw = block.astype(np.int8).tobytes()
            offs.append(pos if raw else 0)
            img[pos:pos + len(raw)] = raw
            pos += _align(len(raw))
        _GOLD_SEG.pack_into(img, lay.golden + _GOLD.size + i * _GOLD_SEG.size, *offs, *g.measures[i])
    if pos != lay.golden + lay.golden_bytes:
        raise ModelImageError(f"golden block is {pos - lay.golden} bytes, planned {lay.golden_bytes}")

    # header
    th = m["thresholds"]["measures"]
    thr = [float(th[name]["threshold"]) if th.get(name) else math.nan for name in MEASURES]
    default = m["thresholds"].get("default_measure")
    feat_q = QParams.from_dict(segs[0].entry["inputs"]["feats"])
    k_dev = int(m["device"]["exits"]) if gated else n
    hand = QParams.from_dict(m["device"]["handoff"]) if k_dev == bundle.device_exits else \
        QParams.from_dict(segs[-1].entry["outputs"]["hidden"])
    layers = list(m["model"]["exit_layers"])
    cfg = m["features"]["config"]
    program = ((PROGRAMS.index("gated"), n, PREDICTORS.index(prog["predictor"]["kind"]), int(prog["n_layers"]),
                len(prog["layers"]), int(prog["module_mask"]), float(prog["beta"])) if gated
               else (PROGRAMS.index("early_exit"), n, NONE, 0, 0, 0, 0.0))
    _HEAD.pack_into(img, 0, MAGIC, VERSION, HEADER_BYTES, lay.total, 0, _hex_ascii(m["model"]["hash"], 16, "model hash"),
                    _hex_ascii(m["bundle_id"], 32, "bundle id"), _hex_ascii(m["features"]["hash"], 16, "feature hash"),
                    cfg["sample_rate"], m["window"]["frames"], m["window"]["encoder_frames"], m["model"]["d_model"],
                    m["model"]["vocab_size"], n_mels, m["window"]["subsampling"], len(layers), k_dev,
                    int(m["model"].get("blank", 0)), MEASURES.index(default) if default in MEASURES else NO_MEASURE,
                    segs[-1].exit[1], bytes(layers).ljust(16, b"\0"), thr[0], thr[1], feat_q.scale,
                    feat_q.zero_point, hand.scale, hand.zero_point, max(int(s.entry["arena"]["bytes"]) for s in segs),
                    lay.norm, lay.segment_table, lay.golden, lay.golden_bytes, *program)
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
    hidden_q: QParams               # its output's: the hidden state, or a predictor's gate margins
    logits_q: QParams
    front: bool
    requant: bool
    crc: int
    role: str                       # ROLES
    layer: int
    takes_count: bool               # it has the n_frames input
    n_gates: int


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
    program: str                    # PROGRAMS
    predictor: str | None           # a gated program's: "global" | "local"
    n_layers: int                   # gated: the model's layers, the device's, the HANDOFF module mask's count
    device_layers: int
    module_mask: int
    beta: float
    tflite: dict[str, bytes] = field(repr=False, default_factory=dict)


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ModelImageError(msg)


def _check_gated(im: ModelImage) -> None:
    """A gated program's table, as the firmware checks it: front, the global predictor, per layer [its local
    predictor,] attention, feed-forward, then the head with the device's exit at its last layer."""
    glob = im.predictor == "global"
    n_l = im.device_layers
    _need(0 < n_l <= im.n_layers and im.module_mask == 2 * (im.n_layers if glob else n_l) and im.handoff_layer == n_l
          and 0.0 <= im.beta <= 1.0, f"gated program: {n_l} device layers of {im.n_layers}, module mask of "
                                     f"{im.module_mask}, handoff after layer {im.handoff_layer}, beta {im.beta}")
    want = [("front", 0), *([("predictor", 0)] if glob else [])]
    for layer in range(1, n_l + 1):
        want += [*([] if glob else [("predictor", layer)]), ("mha", layer), ("ffn", layer)]
    want.append(("head", n_l))
    got = [(s.role, s.layer) for s in im.segments]
    _need(got == want, f"gated program: segment table {got} is not the program order {want}")
    for s in im.segments:
        gates = (2 * im.n_layers if glob else 2) if s.role == "predictor" else 0
        exit_ = (im.device_exits, n_l) if s.role == "head" else (0, 0)
        _need(s.n_gates == gates and (s.exit_index, s.exit_layer) == exit_ and not s.requant and
              s.front == (s.role == "front") and (s.hidden_q.scale > 0) == (s.role != "head") and
              (s.logits_q.scale > 0) == (s.role == "head") and s.in_q.scale > 0,
              f"gated program: segment {s.name} table entry is inconsistent")


def parse_image(data: bytes) -> ModelImage:
    """Parse and verify an image the way the firmware does (magic, version, both CRCs, every bound, the program)."""
    _need(len(data) >= HEADER_BYTES, f"image of {len(data)} bytes is shorter than its {HEADER_BYTES}-byte header")
    h = _HEAD.unpack_from(data)
    (magic, version, hbytes, total, crc, mhash, bid, fhash, sr, w, t_enc, d, v, n_mels, sub, n_exits, k, blank,
     measure, hlayer, layers, th0, th1, fscale, fzp, hscale, hzp, arena, norm_off, table_off, gold_off, gold_bytes,
     kind, n_seg, pkind, n_layers, dev_layers, n_modules, beta) = h
    _need(magic == MAGIC, f"bad magic {magic!r}: not an eeasr model image (expected {MAGIC!r})")
    _need(version == VERSION, f"model image version {version}; this reader takes version {VERSION}: rebuild it")
    _need(hbytes == HEADER_BYTES, f"header size {hbytes}, expected {HEADER_BYTES}")
    (hcrc,) = struct.unpack_from("<I", data, HEADER_BYTES - 4)
    _need(hcrc == zlib.crc32(data[:HEADER_BYTES - 4]), "header CRC-32 mismatch: the image is corrupt")
    _need(total <= len(data), f"image says {total} bytes but only {len(data)} are present (truncated)")
    _need(crc == zlib.crc32(data[HEADER_BYTES:total]), "payload CRC-32 mismatch: the image is corrupt")
    _need(0 < k <= n_exits <= 16, f"device exits {k} of {n_exits} out of range")
    _need(kind < len(PROGRAMS), f"unknown device program kind {kind}")
    gated = PROGRAMS[kind] == "gated"
    _need(0 < n_seg <= MAX_SEGMENTS and (gated or n_seg == k), f"{n_seg} segments for {k} device exits")
    _need(pkind < len(PREDICTORS) if gated else pkind == NONE, f"unknown gate predictor kind {pkind}")
    _need(table_off + n_seg * SEGMENT_BYTES <= total and norm_off + 8 * n_mels <= total and
          gold_off + gold_bytes <= total, "a block lies past the end of the image")
    segs, tfl = [], {}
    for i in range(n_seg):
        base = table_off + i * SEGMENT_BYTES
        (name, off, size, sarena, ei, el, b0, b1, isc, izp, hsc, hzp_s, lsc, lzp, front, requant, role, counts, scrc,
         layer, gates) = _SEG.unpack_from(data, base)
        _need(off % ALIGN == 0 and off + size <= total, f"segment {i + 1} at {off}+{size} is misaligned or out of bounds")
        _need(role < len(ROLES) and (role != 0) == gated, f"segment {i + 1} has role {role} in a {PROGRAMS[kind]} "
                                                          f"program")
        blob = bytes(data[off:off + size])
        _need(zlib.crc32(blob) == scrc, f"segment {i + 1} CRC-32 mismatch")
        nm = name.rstrip(b"\0").decode()
        tfl[nm] = blob
        segs.append(SegmentEntry(nm, off, size, sarena, ei, el, (b0, b1), QParams(isc, izp), QParams(hsc, hzp_s),
                                 QParams(lsc, lzp), bool(front), bool(requant), scrc, ROLES[role], layer, bool(counts),
                                 gates))
    norm = np.frombuffer(data, "<f4", 2 * n_mels, norm_off).astype(np.float32)
    gm, gv, ns, nf, tv, _, _, _, gk, pcm_off, feats_off = _GOLD.unpack_from(data, gold_off)
    _need(gm == GOLDEN_MAGIC and gv == GOLDEN_VERSION and gk == n_seg, "golden block header is invalid")
    hid, lgs, meas = [], [], []
    for i, s in enumerate(segs):
        h_off, l_off, e0, e1 = _GOLD_SEG.unpack_from(data, gold_off + _GOLD.size + i * _GOLD_SEG.size)
        shape = {"predictor": (s.n_gates,), "head": (0,)}.get(s.role, (t_enc, d))
        rows = tv if s.role in ("segment", "head") else 0
        hid.append(np.frombuffer(data, np.int8, int(np.prod(shape)), h_off).reshape(shape).copy())
        lgs.append(np.frombuffer(data, np.int8, rows * v, l_off).reshape(rows, v).copy())
        meas.append((e0, e1))
    golden = Golden(np.frombuffer(data, "<i2", ns, pcm_off).astype(np.int16),
                    np.frombuffer(data, np.int8, nf * n_mels, feats_off).reshape(nf, n_mels).copy(), tv, hid, lgs, meas)
    im = ModelImage(version, total, mhash.decode(), bid.decode(), fhash.decode(), sr, w, t_enc, d, v, n_mels, sub,
                    list(layers[:n_exits]), k, blank, measure, hlayer, (th0, th1), QParams(fscale, fzp),
                    QParams(hscale, hzp), arena, segs, norm[:n_mels], norm[n_mels:], golden, PROGRAMS[kind],
                    PREDICTORS[pkind] if gated else None, n_layers, dev_layers, n_modules, beta, tfl)
    if gated:
        _check_gated(im)
    return im


__all__ = ["MAGIC", "VERSION", "HEADER_BYTES", "SEGMENT_BYTES", "ModelImageError", "Layout", "plan_layout",
           "Golden", "golden_vectors", "build_image", "ModelImage", "SegmentEntry", "parse_image",
           "golden_clip_samples", "ImageSegment", "image_segments", "PROGRAMS", "PREDICTORS", "ROLES", "MAX_SEGMENTS"]
