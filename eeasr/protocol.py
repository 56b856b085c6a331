"""The wire protocol between device (or simulated device), host and server: docs/protocol.md is the spec.

A frame is `header | payload | crc32`, COBS-encoded and terminated by one 0x00 byte, so a receiver that
joins mid-stream or meets garbage resynchronizes at the next delimiter. `encode` builds a frame from a
message; `FrameDecoder.feed` takes bytes as they arrive and returns messages and `FrameError`s (garbage is
reported with its reason, never raised, never fatal). The server takes the same frames (without COBS) as
HTTP bodies, so a handoff travels upward byte for byte as the device wrote it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, Union

import numpy as np
from cobs import cobs

VERSION = 1
HEADER = struct.Struct("<BBHH")          # version, type, seq, payload length
CRC = struct.Struct("<I")
MAX_PAYLOAD = 49152                      # 48 KiB: a 150 x 256 int8 handoff fits; device RX buffers stay small
MAX_FRAME = HEADER.size + MAX_PAYLOAD + CRC.size
MAX_ENCODED = MAX_FRAME + MAX_FRAME // 254 + 2   # COBS overhead + delimiter
MAX_AUDIO_SAMPLES = 4096
MAX_TOKENS = 1024
MAX_TEXT = 4096
MAX_MODULES = 255                        # a HANDOFF module mask counts its modules in one byte
BAD_MODULE_MASK = "handoff: bad module mask (a count of 1 to 255 modules, then ceil(count / 8) bytes, unused bits 0)"


class MsgType(IntEnum):
    HELLO = 0x01
    AUDIO = 0x02
    RESULT = 0x03
    HANDOFF = 0x04
    ERROR = 0x05
    ACK = 0x06
    COMMAND = 0x07
    INFO = 0x08


class AudioFlag(IntEnum):
    UTT_START = 0x01     # host-segmented audio: an utterance starts with this frame (bypasses the endpointer)
    UTT_END = 0x02       # host-segmented audio: the utterance ends after this frame's samples
    STREAM_END = 0x04    # no more audio: flush whatever is buffered


class ResultFlag(IntEnum):
    FINAL = 0x01         # the last window of the utterance
    HANDED_OFF = 0x02    # the device's best local answer; a HANDOFF for the same window follows
    SERVER = 0x04        # computed by the server from a handoff
    NO_SPEECH = 0x08     # the utterance held no speech (an empty final result, so nothing goes missing)
    LOCAL_FALLBACK = 0x10  # the server could not be reached: this is the device's answer, kept


class Measure(IntEnum):
    FRAME_ENTROPY = 0
    NONBLANK_ENTROPY = 1
    NBEST_POSTERIOR = 2


class Command(IntEnum):
    HELLO = 1            # reply: HELLO
    SELF_TEST = 2        # reply: INFO with the golden-vector results
    PROFILE = 3          # reply: INFO with cycles per segment and heap high-water marks
    RESET = 4            # drop buffered audio and the current utterance; reply: ACK


class ErrorCode(IntEnum):
    BAD_FRAME = 1
    VERSION = 2
    MODEL_MISMATCH = 3
    TOO_LARGE = 4
    OVERFLOW = 5
    INTERNAL = 6
    UNAUTHORIZED = 7
    UNAVAILABLE = 8


class ProtocolError(ValueError):
    """A message that cannot be encoded or a frame that cannot be decoded; the text says why in one line."""


def _hash8(h: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(h)
    except ValueError:
        raise ProtocolError(f"{what} must be 16 hex digits, got {h!r}") from None
    if len(raw) != 8:
        raise ProtocolError(f"{what} must be 16 hex digits, got {h!r}")
    return raw


def encode_utf8(s: str, what: str) -> bytes:
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"{what} cannot be encoded as UTF-8 (lone surrogate?)") from None


def _text(b: bytes, what: str) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not valid UTF-8") from None


@dataclass
class Hello:
    """Device -> host: what the device runs, so the host and server can refuse a mismatch."""
    TYPE: ClassVar[MsgType] = MsgType.HELLO
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<8s8s8sIHBHHB")
    model_hash: str
    bundle_id: str
    feature_hash: str
    sample_rate: int
    window: int                       # W feature frames
    subsampling: int
    d_model: int
    vocab: int
    exit_layers: list[int]            # the device's exits, in order
    firmware: str = ""

    def pack(self) -> bytes:
        if not 0 < len(self.exit_layers) <= 32:
            raise ProtocolError("hello: 1 to 32 exit layers")
        fw = encode_utf8(self.firmware, "hello firmware")[:255]
        return (self.LAYOUT.pack(_hash8(self.model_hash, "model hash"), _hash8(self.bundle_id, "bundle id"),
                                 _hash8(self.feature_hash, "feature hash"), self.sample_rate, self.window,
                                 self.subsampling, self.d_model, self.vocab, len(self.exit_layers))
                + bytes(self.exit_layers) + bytes([len(fw)]) + fw)

    @classmethod
    def unpack(cls, p: bytes) -> Hello:
        n0 = cls.LAYOUT.size
        if len(p) < n0:
            raise ProtocolError(f"hello: payload of {len(p)} bytes is shorter than {n0}")
        mh, bid, fh, sr, w, sub, d, v, ne = cls.LAYOUT.unpack_from(p)
        if len(p) < n0 + ne + 1:
            raise ProtocolError("hello: truncated exit list")
        nf = p[n0 + ne]
        if len(p) != n0 + ne + 1 + nf:
            raise ProtocolError("hello: payload length does not match its firmware string")
        return cls(mh.hex(), bid.hex(), fh.hex(), sr, w, sub, d, v, list(p[n0:n0 + ne]),
                   _text(p[n0 + ne + 1:], "hello firmware"))


@dataclass
class Audio:
    """Host -> device: int16 PCM at the contract's 16 kHz."""
    TYPE: ClassVar[MsgType] = MsgType.AUDIO
    samples: np.ndarray
    flags: int = 0

    def pack(self) -> bytes:
        s = np.asarray(self.samples)
        if s.dtype != np.int16 or s.ndim != 1:
            raise ProtocolError("audio: samples must be a 1-D int16 array")
        if len(s) > MAX_AUDIO_SAMPLES:
            raise ProtocolError(f"audio: {len(s)} samples exceed {MAX_AUDIO_SAMPLES} per frame")
        return bytes([self.flags, 0]) + s.astype("<i2").tobytes()

    @classmethod
    def unpack(cls, p: bytes) -> Audio:
        if len(p) < 2 or len(p) % 2:
            raise ProtocolError("audio: payload must be 2 flag bytes + int16 samples")
        if (len(p) - 2) // 2 > MAX_AUDIO_SAMPLES:
            raise ProtocolError(f"audio: more than {MAX_AUDIO_SAMPLES} samples")
        return cls(np.frombuffer(p[2:], dtype="<i2").astype(np.int16), p[0])


@dataclass
class Result:
    """A decoded window: from the device (tokens) or the server (tokens and text)."""
    TYPE: ClassVar[MsgType] = MsgType.RESULT
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<IHBBBBfH")
    utt_id: int
    window: int
    flags: int
    exit_index: int                   # 1-based over the model's exits
    layer: int
    measure: int                      # Measure
    confidence: float                 # the measure's value (entropy: lower is surer; posterior: higher)
    tokens: list[int] = field(default_factory=list)
    text: str = ""

    def pack(self) -> bytes:
        if len(self.tokens) > MAX_TOKENS:
            raise ProtocolError(f"result: more than {MAX_TOKENS} tokens")
        t = encode_utf8(self.text, "result text")
        if len(t) > MAX_TEXT:
            raise ProtocolError(f"result: text longer than {MAX_TEXT} bytes")
        return (self.LAYOUT.pack(self.utt_id, self.window, self.flags, self.exit_index, self.layer, self.measure,
                                 self.confidence, len(self.tokens))
                + np.asarray(self.tokens, dtype="<u2").tobytes() + struct.pack("<H", len(t)) + t)

    @classmethod
    def unpack(cls, p: bytes) -> Result:
        n0 = cls.LAYOUT.size
        if len(p) < n0 + 2:
            raise ProtocolError(f"result: payload of {len(p)} bytes is too short")
        u, w, fl, ei, ly, me, conf, nt = cls.LAYOUT.unpack_from(p)
        end_tok = n0 + 2 * nt
        if nt > MAX_TOKENS or len(p) < end_tok + 2:
            raise ProtocolError("result: truncated token list")
        (nb,) = struct.unpack_from("<H", p, end_tok)
        if len(p) != end_tok + 2 + nb:
            raise ProtocolError("result: payload length does not match its text length")
        toks = np.frombuffer(p[n0:end_tok], dtype="<u2").tolist()
        return cls(u, w, fl, ei, ly, me, conf, toks, _text(p[end_tok + 2:], "result text"))


@dataclass
class Handoff:
    """Device -> host -> server: the int8 hidden state after the device's last segment, and for a gated (I3D)
    program the module mask: `modules[i]` is module i (layer i // 2 + 1, attention if i is even, feed-forward
    if odd) — on the device's layers, whether it ran; past them (a global gate predictor), the device
    predictor's decision, which the server applies. Empty for early-exit programs: no trailer on the wire."""
    TYPE: ClassVar[MsgType] = MsgType.HANDOFF
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<IHBB8sfbxHH")
    utt_id: int
    window: int
    flags: int                        # ResultFlag.FINAL when this is the utterance's last window
    layer: int                        # the encoder layer the state comes out of
    model_hash: str
    scale: float
    zero_point: int
    hidden: np.ndarray                # int8 [T_valid, d]
    modules: list[bool] = field(default_factory=list)

    def pack(self) -> bytes:
        h = np.asarray(self.hidden)
        if h.dtype != np.int8 or h.ndim != 2:
            raise ProtocolError("handoff: hidden must be a 2-D int8 array [T_valid, d]")
        if len(self.modules) > MAX_MODULES:
            raise ProtocolError(f"handoff: module mask of {len(self.modules)} modules exceeds {MAX_MODULES}")
        mask = module_mask_bytes(self.modules)
        if self.LAYOUT.size + h.size + len(mask) > MAX_PAYLOAD:
            raise ProtocolError(f"handoff: {h.shape[0]} x {h.shape[1]} exceeds the {MAX_PAYLOAD}-byte payload limit")
        return self.LAYOUT.pack(self.utt_id, self.window, self.flags, self.layer, _hash8(self.model_hash, "model hash"),
                                self.scale, self.zero_point, h.shape[0], h.shape[1]) + h.tobytes() + mask

    @classmethod
    def unpack(cls, p: bytes) -> Handoff:
        n0 = cls.LAYOUT.size
        if len(p) < n0:
            raise ProtocolError(f"handoff: payload of {len(p)} bytes is shorter than {n0}")
        u, w, fl, ly, mh, sc, zp, t, d = cls.LAYOUT.unpack_from(p)
        end = n0 + t * d
        if len(p) < end:
            raise ProtocolError(f"handoff: {len(p) - n0} state bytes for {t} x {d} frames")
        modules = parse_module_mask(p[end:])
        if not np.isfinite(sc) or sc <= 0:
            raise ProtocolError(f"handoff: scale {sc} is not a positive number")
        return cls(u, w, fl, ly, mh.hex(), sc, zp, np.frombuffer(p[n0:end], dtype=np.int8).reshape(t, d).copy(),
                   modules)


def module_mask_bytes(modules: list[bool]) -> bytes:
    """The HANDOFF trailer for `modules`: nothing for none, else u8 count + ceil(count / 8) bytes, bit i of the
    mask (byte i // 8, bit i % 8, least significant first) = modules[i], unused bits 0."""
    if not modules:
        return b""
    return bytes([len(modules)]) + np.packbits(np.asarray(modules, bool), bitorder="little").tobytes()


def parse_module_mask(trailer: bytes) -> list[bool]:
    """Inverse of module_mask_bytes; ProtocolError for a trailer that is not exactly one canonical mask."""
    if not trailer:
        return []
    n = trailer[0]
    if n == 0 or len(trailer) != 1 + (n + 7) // 8 or (n % 8 and trailer[-1] >> (n % 8)):
        raise ProtocolError(BAD_MODULE_MASK)
    return np.unpackbits(np.frombuffer(trailer[1:], np.uint8), count=n, bitorder="little").astype(bool).tolist()


@dataclass
class Error:
    TYPE: ClassVar[MsgType] = MsgType.ERROR
    code: int
    message: str

    def pack(self) -> bytes:
        return struct.pack("<H", self.code) + encode_utf8(self.message, "error message")[:MAX_TEXT]

    @classmethod
    def unpack(cls, p: bytes) -> Error:
        if len(p) < 2:
            raise ProtocolError("error: payload shorter than its code")
        return cls(struct.unpack_from("<H", p)[0], _text(p[2:], "error message"))


@dataclass
class Ack:
    """Receipt of frame `seq` of type `of` (audio flow control; commands)."""
    TYPE: ClassVar[MsgType] = MsgType.ACK
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<HBB")
    seq: int
    of: int
    status: int = 0

    def pack(self) -> bytes:
        return self.LAYOUT.pack(self.seq, self.of, self.status)

    @classmethod
    def unpack(cls, p: bytes) -> Ack:
        if len(p) != cls.LAYOUT.size:
            raise ProtocolError(f"ack: payload must be {cls.LAYOUT.size} bytes")
        return cls(*cls.LAYOUT.unpack(p))


@dataclass
class CommandMsg:
    TYPE: ClassVar[MsgType] = MsgType.COMMAND
    command: int

    def pack(self) -> bytes:
        return bytes([self.command])

    @classmethod
    def unpack(cls, p: bytes) -> CommandMsg:
        if len(p) != 1:
            raise ProtocolError("command: payload must be 1 byte")
        return cls(p[0])


@dataclass
class Info:
    """Device -> host: UTF-8 JSON (self-test results, profiler figures); extensible without a version bump."""
    TYPE: ClassVar[MsgType] = MsgType.INFO
    json: str

    def pack(self) -> bytes:
        return encode_utf8(self.json, "info")

    @classmethod
    def unpack(cls, p: bytes) -> Info:
        return cls(_text(p, "info"))


Message = Union[Hello, Audio, Result, Handoff, Error, Ack, CommandMsg, Info]
_TYPES: dict[int, type] = {c.TYPE: c for c in (Hello, Audio, Result, Handoff, Error, Ack, CommandMsg, Info)}


@dataclass
class Frame:
    seq: int
    msg: Message


@dataclass
class FrameError:
    """Bytes that were not a valid frame, with the reason; the decoder has already moved past them."""
    reason: str
    n_bytes: int


def pack_frame(msg: Message, seq: int) -> bytes:
    """header | payload | crc32, without COBS: the HTTP body form."""
    payload = msg.pack()
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"{msg.TYPE.name.lower()}: payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = HEADER.pack(VERSION, msg.TYPE, seq & 0xFFFF, len(payload)) + payload
    return body + CRC.pack(zlib.crc32(body))


def unpack_frame(raw: bytes) -> Frame:
    """The inverse of `pack_frame`; raises ProtocolError with the reason."""
    if len(raw) < HEADER.size + CRC.size:
        raise ProtocolError(f"frame of {len(raw)} bytes is shorter than header + crc")
    version, mtype, seq, n = HEADER.unpack_from(raw)
    if len(raw) != HEADER.size + n + CRC.size:
        raise ProtocolError(f"frame length {len(raw)} does not match its header ({n}-byte payload)")
    (crc,) = CRC.unpack_from(raw, len(raw) - CRC.size)
    if crc != zlib.crc32(raw[:-CRC.size]):
        raise ProtocolError("crc mismatch")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version}, this side speaks {VERSION}")
    if n > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {n} bytes exceeds {MAX_PAYLOAD}")
    cls = _TYPES.get(mtype)
    if cls is None:
        raise ProtocolError(f"unknown message type 0x{mtype:02x}")
    return Frame(seq, cls.unpack(raw[HEADER.size:HEADER.size + n]))


def encode(msg: Message, seq: int) -> bytes:
    """A message as it goes on a byte stream: COBS(header | payload | crc32) + 0x00."""
    return cobs.encode(pack_frame(msg, seq)) + b"\x00"


class FrameDecoder:
    """Incremental decoder for a byte stream; bounded memory (MAX_ENCODED bytes)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._overflow = 0     # bytes dropped from an over-long run, reported at its delimiter

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        out: list[Frame | FrameError] = []
        data = bytes(data)
        start = 0
        while True:
            i = data.find(b"\x00", start)
            if i < 0:
                self._take(data[start:])
                return out
            self._take(data[start:i])
            out.extend(self._finish())
            start = i + 1

    def _take(self, part: bytes) -> None:
        room = MAX_ENCODED - len(self._buf)
        if self._overflow or len(part) > room:
            self._overflow += len(self._buf) + len(part)
            self._buf.clear()
        else:
            self._buf += part

    def _finish(self) -> list[Frame | FrameError]:
        enc, dropped = bytes(self._buf), self._overflow
        self._buf.clear()
        self._overflow = 0
        if dropped:
            return [FrameError(f"frame longer than {MAX_ENCODED} bytes", dropped)]
        if not enc:
            return []          # back-to-back delimiters: idle line, not an error
        try:
            return [unpack_frame(cobs.decode(enc))]
        except cobs.DecodeError as e:
            return [FrameError(f"bad COBS encoding: {e}", len(enc) + 1)]
        except ProtocolError as e:
            return [FrameError(str(e), len(enc) + 1)]
