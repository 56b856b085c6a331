"""ctypes binding to the firmware's portable C core (firmware/components/eeasr_core), built natively.

The simulated device runs the same C code as the ESP32-S3: the streaming log-mel front end, normalization and
int8 quantization, requantization at segment boundaries, exit measures and greedy CTC, the wire protocol's
framing (`encode`, `FrameDecoder`) and the endpointer (`Endpointer`). A gated (I3D) program's pooling and gate
decisions (`pool_valid`, `gate_decide`) are bound too, for the tests that hold them against
eeasr/gated_program.py (the simulated device runs segments and program steps in Python for either program
kind). Every call hands whole arrays or byte strings to C (a chunk of audio, a window of logits, bytes from the
serial line), so per-frame and per-byte work never loops in Python.

The shared library is built on first use with `make -C firmware/native lib` (gcc), and rebuilt when a C
source is newer than it. numpy only: no torch, no tensorflow.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import struct
import subprocess
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np

from eeasr import protocol as P
from eeasr.endpoint import HOP, Event
from eeasr.features import FeatureConfig, NormStats

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "firmware" / "native"
CORE = ROOT / "firmware" / "components" / "eeasr_core"
LIBRARY = NATIVE / "build" / "libeeasr_core.so"

# The constants compiled into the C core (include/eeasr_core/features.h).
N_MELS = 80
HOP_LENGTH = 160
C_FEATURE_CONFIG = FeatureConfig()


class CCoreError(RuntimeError):
    """The C core could not be built or loaded."""


def _sources() -> list[Path]:
    return [*CORE.glob("src/*.c"), *CORE.glob("include/eeasr_core/*.h"), NATIVE / "Makefile"]


def build_library() -> Path:
    """Build libeeasr_core.so unless it is newer than every source; return its path."""
    sources = _sources()
    if not (NATIVE / "Makefile").exists() or not sources:
        raise CCoreError(f"{NATIVE} not found: the C core needs a source checkout of eeasr")
    if LIBRARY.exists() and LIBRARY.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        return LIBRARY
    for tool in ("make", "gcc"):
        if shutil.which(tool) is None:
            raise CCoreError(f"building {LIBRARY.name} needs {tool}: install build-essential "
                             "(sudo apt-get install build-essential)")
    proc = subprocess.run(["make", "-s", "-C", str(NATIVE), "lib"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CCoreError(f"make -C {NATIVE} lib failed:\n{proc.stdout}{proc.stderr}")
    return LIBRARY


def _array(dtype: type) -> type:
    return np.ctypeslib.ndpointer(dtype, flags="C_CONTIGUOUS")


_F32, _I8, _I16, _I32 = _array(np.float32), _array(np.int8), _array(np.int16), _array(np.int32)
_BYTES = _array(np.uint8)
_SIZE, _FLOAT, _INT32, _VOID = ctypes.c_size_t, ctypes.c_float, ctypes.c_int32, ctypes.c_void_p


class _Measures(ctypes.Structure):
    _fields_ = [("entropy", ctypes.c_float), ("nonblank_entropy", ctypes.c_float)]


# Mirrors of include/eeasr_core/protocol.h and endpoint.h (their sizes are checked against C's on load).
_U8, _U16, _U32 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32


class _Hello(ctypes.Structure):
    _fields_ = [("model_hash", _U8 * 8), ("bundle_id", _U8 * 8), ("feature_hash", _U8 * 8), ("sample_rate", _U32),
                ("window", _U16), ("subsampling", _U8), ("d_model", _U16), ("vocab", _U16), ("n_exits", _U8),
                ("exit_layers", _VOID), ("firmware_len", _SIZE), ("firmware", _VOID)]


class _Audio(ctypes.Structure):
    _fields_ = [("flags", _U8), ("n_samples", _SIZE), ("samples", _VOID)]


class _Result(ctypes.Structure):
    _fields_ = [("utt_id", _U32), ("window", _U16), ("flags", _U8), ("exit_index", _U8), ("layer", _U8),
                ("measure", _U8), ("confidence", _FLOAT), ("n_tokens", _SIZE), ("tokens", _VOID),
                ("text_len", _SIZE), ("text", _VOID)]


class _Handoff(ctypes.Structure):
    _fields_ = [("utt_id", _U32), ("window", _U16), ("flags", _U8), ("layer", _U8), ("model_hash", _U8 * 8),
                ("scale", _FLOAT), ("zero_point", ctypes.c_int8), ("t_valid", _U16), ("d", _U16), ("hidden", _VOID),
                ("n_modules", _U8), ("modules", _VOID)]


class _ErrorMsg(ctypes.Structure):
    _fields_ = [("code", _U16), ("message_len", _SIZE), ("message", _VOID)]


class _Ack(ctypes.Structure):
    _fields_ = [("seq", _U16), ("of", _U8), ("status", _U8)]


class _Command(ctypes.Structure):
    _fields_ = [("command", _U8)]


class _Info(ctypes.Structure):
    _fields_ = [("json_len", _SIZE), ("json", _VOID)]


class _Payload(ctypes.Union):
    _fields_ = [("hello", _Hello), ("audio", _Audio), ("result", _Result), ("handoff", _Handoff),
                ("error", _ErrorMsg), ("ack", _Ack), ("command", _Command), ("info", _Info)]


class _Message(ctypes.Structure):
    _fields_ = [("type", _U8), ("seq", _U16), ("u", _Payload)]


class _Decoder(ctypes.Structure):
    _fields_ = [("buf", _VOID), ("cap", _SIZE), ("len", _SIZE), ("dropped", _SIZE)]


class _Decoded(ctypes.Structure):
    _fields_ = [("reason", ctypes.c_int), ("n_bytes", _SIZE), ("raw", _VOID), ("raw_len", _SIZE), ("msg", _Message)]


class _EndpointerState(ctypes.Structure):
    _fields_ = [("floor", ctypes.c_double), ("partial", ctypes.c_int64), ("hop", ctypes.c_uint64), ("run", _U32),
                ("speech_hops", _U32), ("n_partial", _U32), ("in_speech", _INT32)]


class _EpEvent(ctypes.Structure):
    _fields_ = [("kind", _INT32), ("sample", ctypes.c_uint64)]


_MIRRORS = {"eeasr_message_size": _Message, "eeasr_decoder_size": _Decoder, "eeasr_decoded_size": _Decoded,
            "eeasr_endpointer_size": _EndpointerState}
_P_SIZE = ctypes.POINTER(_SIZE)


_SIGNATURES: dict[str, tuple[type | None, list[type]]] = {
    "eeasr_logmel_tables_size": (_SIZE, []),
    "eeasr_logmel_stream_size": (_SIZE, []),
    "eeasr_logmel_tables_init": (None, [_VOID]),
    "eeasr_logmel_tables_export": (None, [_VOID, _F32, _F32]),
    "eeasr_logmel_stream_init": (None, [_VOID, _VOID]),
    "eeasr_logmel_stream_reset": (None, [_VOID]),
    "eeasr_logmel_push": (_SIZE, [_VOID, _I16, _SIZE, _F32, _SIZE, ctypes.POINTER(_SIZE)]),
    "eeasr_normalize": (None, [_F32, _SIZE, _F32, _F32, _F32]),
    "eeasr_features_int8": (None, [_F32, _SIZE, _F32, _F32, _FLOAT, _INT32, _I8]),
    "eeasr_quantize_int8_array": (None, [_F32, _SIZE, _FLOAT, _INT32, _I8]),
    "eeasr_dequantize_int8_array": (None, [_I8, _SIZE, _FLOAT, _INT32, _F32]),
    "eeasr_requantize_table": (None, [_FLOAT, _INT32, _FLOAT, _INT32, _I8]),
    "eeasr_requantize_apply": (None, [_I8, _I8, _SIZE, _I8]),
    "eeasr_pool_valid": (None, [_I8, _SIZE, _SIZE, _FLOAT, _INT32, _F32]),
    "eeasr_pool_valid_int8": (None, [_I8, _SIZE, _SIZE, _FLOAT, _INT32, _FLOAT, _INT32, _I8]),
    "eeasr_gate_threshold": (ctypes.c_double, [ctypes.c_double]),
    "eeasr_gate_decide": (_SIZE, [_I8, _SIZE, _FLOAT, _INT32, ctypes.c_double, _BYTES]),
    "eeasr_log_softmax": (None, [_F32, _SIZE, _SIZE, _F32]),
    "eeasr_exit_measures_int8": (None, [_I8, _SIZE, _SIZE, _FLOAT, _INT32, _INT32, _F32, ctypes.POINTER(_Measures)]),
    "eeasr_exit_measures_logp": (None, [_F32, _SIZE, _SIZE, _INT32, ctypes.POINTER(_Measures)]),
    "eeasr_greedy_ctc_int8": (_SIZE, [_I8, _SIZE, _SIZE, _INT32, _I32]),
    "eeasr_greedy_ctc_logp": (_SIZE, [_F32, _SIZE, _SIZE, _INT32, _I32]),
    "eeasr_crc32": (_U32, [_U32, _VOID, _SIZE]),
    "eeasr_encode": (ctypes.c_int, [_U8, _U16, _VOID, _SIZE, _VOID, _SIZE, _P_SIZE]),
    "eeasr_frame_pack": (ctypes.c_int, [_U8, _U16, _VOID, _SIZE, _VOID, _SIZE, _P_SIZE]),
    "eeasr_frame_unpack": (ctypes.c_int, [_VOID, _SIZE, ctypes.POINTER(_Message)]),
    "eeasr_pack_message": (ctypes.c_int, [ctypes.POINTER(_Message), _VOID, _SIZE, _P_SIZE]),
    "eeasr_reason_str": (ctypes.c_char_p, [ctypes.c_int]),
    "eeasr_decoder_init": (None, [ctypes.POINTER(_Decoder), _VOID, _SIZE]),
    "eeasr_decoder_feed": (ctypes.c_int, [ctypes.POINTER(_Decoder), _VOID, _SIZE, _P_SIZE, ctypes.POINTER(_Decoded)]),
    "eeasr_endpointer_init": (None, [ctypes.POINTER(_EndpointerState)]),
    "eeasr_endpointer_step": (ctypes.c_int, [ctypes.POINTER(_EndpointerState), ctypes.c_int64,
                                             ctypes.POINTER(_EpEvent)]),
    "eeasr_endpointer_push": (_SIZE, [ctypes.POINTER(_EndpointerState), _I16, _SIZE, ctypes.POINTER(_EpEvent), _SIZE,
                                      _P_SIZE]),
    "eeasr_endpointer_flush": (ctypes.c_int, [ctypes.POINTER(_EndpointerState), ctypes.POINTER(_EpEvent)]),
    **{name: (_SIZE, []) for name in _MIRRORS},
}


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build_library()))
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    for name, mirror in _MIRRORS.items():
        if getattr(lib, name)() != ctypes.sizeof(mirror):
            raise CCoreError(f"{mirror.__name__} does not mirror its C struct ({name}() = {getattr(lib, name)()}, "
                             f"ctypes {ctypes.sizeof(mirror)}): update host/ccore.py with the header")
    return lib


@functools.cache
def _tables() -> ctypes.Array:
    """The front end's tables (window, twiddles, filterbank), built once and shared by every stream."""
    lib = _lib()
    buf = ctypes.create_string_buffer(lib.eeasr_logmel_tables_size())
    lib.eeasr_logmel_tables_init(buf)
    return buf


def tables() -> tuple[np.ndarray, np.ndarray]:
    """The C front end's Hann window [400] and mel filterbank [257, 80] as float32."""
    window = np.empty(C_FEATURE_CONFIG.win_length, np.float32)
    fbank = np.empty((C_FEATURE_CONFIG.n_freqs, N_MELS), np.float32)
    _lib().eeasr_logmel_tables_export(_tables(), window, fbank)
    return window, fbank


def _check_qparams(scale: float, zero_point: int) -> None:
    if not (np.isfinite(np.float32(scale)) and np.float32(scale) > 0):
        raise ValueError(f"scale must be positive and finite, got {scale}")
    if not -128 <= zero_point <= 127:
        raise ValueError(f"int8 zero point must be in [-128, 127], got {zero_point}")


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _int8(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q)
    if q.dtype != np.int8:
        raise TypeError(f"expected int8, got {q.dtype}")
    return np.ascontiguousarray(q)


def _frames(logmel: np.ndarray) -> np.ndarray:
    logmel = _f32(logmel)
    if logmel.ndim != 2 or logmel.shape[1] != N_MELS:
        raise ValueError(f"expected log-mel [T, {N_MELS}], got shape {logmel.shape}")
    return logmel


def normalize(logmel: np.ndarray, norm: NormStats) -> np.ndarray:
    """(logmel - mean) / std in float32, as NormStats.apply (bit for bit)."""
    logmel = _frames(logmel)
    out = np.empty_like(logmel)
    _lib().eeasr_normalize(logmel, logmel.shape[0], _f32(norm.mean), _f32(norm.std), out)
    return out


def features_int8(logmel: np.ndarray, norm: NormStats, scale: float, zero_point: int) -> np.ndarray:
    """quantize_int8(normalize(logmel, norm), scale, zero_point): the device's int8 input features."""
    _check_qparams(scale, zero_point)
    logmel = _frames(logmel)
    out = np.empty(logmel.shape, np.int8)
    _lib().eeasr_features_int8(logmel, logmel.shape[0], _f32(norm.mean), _f32(norm.std), scale, zero_point, out)
    return out


def quantize_int8(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """TFLite int8 quantization in C (eeasr.features.quantize_int8, bit for bit)."""
    _check_qparams(scale, zero_point)
    x = _f32(x)
    if np.isnan(x).any():
        raise ValueError("cannot quantize NaN")
    out = np.empty(x.shape, np.int8)
    _lib().eeasr_quantize_int8_array(x.reshape(-1), x.size, scale, zero_point, out.reshape(-1))
    return out


def dequantize_int8(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """float32 (q - zero_point) * scale."""
    _check_qparams(scale, zero_point)
    q = _int8(q)
    out = np.empty(q.shape, np.float32)
    _lib().eeasr_dequantize_int8_array(q.reshape(-1), q.size, scale, zero_point, out.reshape(-1))
    return out


def requantize_table(in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> np.ndarray:
    """The device's 256-entry table for one boundary, indexed by q as uint8."""
    _check_qparams(in_scale, in_zp)
    _check_qparams(out_scale, out_zp)
    table = np.empty(256, np.int8)
    _lib().eeasr_requantize_table(in_scale, in_zp, out_scale, out_zp, table)
    return table


def requantize_int8(q: np.ndarray, in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> np.ndarray:
    """int8 from one quantization to another (eeasr.features.requantize_int8, bit for bit)."""
    q = _int8(q)
    out = np.empty(q.shape, np.int8)
    _lib().eeasr_requantize_apply(requantize_table(in_scale, in_zp, out_scale, out_zp), q.reshape(-1), q.size,
                                  out.reshape(-1))
    return out


def _stream(stream: np.ndarray, t_valid: int) -> np.ndarray:
    stream = _int8(stream)
    if stream.ndim != 2 or stream.shape[1] == 0:
        raise ValueError(f"expected an int8 stream [T, d], got shape {stream.shape}")
    if not 0 < t_valid <= stream.shape[0]:
        raise ValueError(f"t_valid {t_valid} outside 1..{stream.shape[0]}")
    return stream


def pool_valid(stream: np.ndarray, t_valid: int, scale: float, zero_point: int) -> np.ndarray:
    """The gate predictor's pooling in C: float32 [d], the mean of the int8 stream [T, d] over its first t_valid
    frames (eeasr.gated_program.pool_valid, bit for bit)."""
    _check_qparams(scale, zero_point)
    stream = _stream(stream, t_valid)
    out = np.empty(stream.shape[1], np.float32)
    _lib().eeasr_pool_valid(stream, t_valid, stream.shape[1], scale, zero_point, out)
    return out


def pool_valid_int8(stream: np.ndarray, t_valid: int, scale: float, zero_point: int, out_scale: float,
                    out_zero_point: int) -> np.ndarray:
    """pool_valid quantized with the predictor segment's input parameters: its int8 input [d]."""
    _check_qparams(scale, zero_point)
    _check_qparams(out_scale, out_zero_point)
    stream = _stream(stream, t_valid)
    out = np.empty(stream.shape[1], np.int8)
    _lib().eeasr_pool_valid_int8(stream, t_valid, stream.shape[1], scale, zero_point, out_scale, out_zero_point, out)
    return out


def gate_threshold(beta: float) -> float:
    """log(beta / (1 - beta)) in C (eeasr.gated_program.gate_threshold, bit for bit)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta {beta} outside [0, 1]")
    return float(_lib().eeasr_gate_threshold(beta))


def gate_decide(margins: np.ndarray, scale: float, zero_point: int, beta: float) -> np.ndarray:
    """bool [n]: which gates open for int8 margins [n] at beta (eeasr.gated_program.decide of the dequantized
    margins)."""
    _check_qparams(scale, zero_point)
    margins = _int8(margins).reshape(-1)
    out = np.empty(margins.size, np.uint8)
    _lib().eeasr_gate_decide(margins, margins.size, scale, zero_point, gate_threshold(beta), out)
    return out.astype(bool)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis of [T, V] in float32 (eeasr.exits.log_softmax within float rounding)."""
    x = _f32(x)
    if x.ndim != 2:
        raise ValueError(f"expected [T, V], got shape {x.shape}")
    out = np.empty_like(x)
    _lib().eeasr_log_softmax(x, x.shape[0], x.shape[1], out)
    return out


@dataclass(frozen=True)
class ExitMeasures:
    """eeasr.exits.frame_entropy and nonblank_entropy of one exit's valid frames."""

    entropy: float
    nonblank_entropy: float


def _valid_rows(x: np.ndarray, t_valid: int | None) -> int:
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"expected [T, V] with V > 0, got shape {x.shape}")
    t = x.shape[0] if t_valid is None else t_valid
    if not 0 <= t <= x.shape[0]:
        raise ValueError(f"t_valid {t_valid} outside [0, {x.shape[0]}]")
    return t


def exit_measures(logits: np.ndarray, scale: float, zero_point: int, t_valid: int | None = None,
                  blank: int = 0) -> ExitMeasures:
    """Measures of an exit head's int8 logits [T, V] over the first t_valid frames (all by default), after a
    float32 log-softmax of the dequantized logits, as the device computes them."""
    _check_qparams(scale, zero_point)
    logits = _int8(logits)
    t = _valid_rows(logits, t_valid)
    out = _Measures()
    scratch = np.empty(logits.shape[1], np.float32)
    _lib().eeasr_exit_measures_int8(logits, t, logits.shape[1], scale, zero_point, blank, scratch, ctypes.byref(out))
    return ExitMeasures(float(out.entropy), float(out.nonblank_entropy))


def exit_measures_logp(logp: np.ndarray, t_valid: int | None = None, blank: int = 0) -> ExitMeasures:
    """Measures of log-probabilities [T, V] (float32) over the first t_valid frames."""
    logp = _f32(logp)
    t = _valid_rows(logp, t_valid)
    out = _Measures()
    _lib().eeasr_exit_measures_logp(logp, t, logp.shape[1], blank, ctypes.byref(out))
    return ExitMeasures(float(out.entropy), float(out.nonblank_entropy))


def greedy_ctc(x: np.ndarray, t_valid: int | None = None, blank: int = 0) -> list[int]:
    """Best path over the first t_valid frames of int8 logits or float log-probabilities [T, V], collapsed."""
    x = np.asarray(x)
    t = _valid_rows(x, t_valid)
    tokens = np.empty(max(t, 1), np.int32)
    if x.dtype == np.int8:
        n = _lib().eeasr_greedy_ctc_int8(np.ascontiguousarray(x), t, x.shape[1], blank, tokens)
    else:
        n = _lib().eeasr_greedy_ctc_logp(_f32(x), t, x.shape[1], blank, tokens)
    return tokens[:n].tolist()


class StreamingLogMel:
    """The C front end on an int16 stream fed in chunks of any size; frames equal one push of the whole.

    A drop-in for eeasr.features.StreamingLogMel (push / reset), plus the device's later steps when the
    model's normalization (and the first segment's input scale and zero point) are given.
    """

    def __init__(self, cfg: FeatureConfig = C_FEATURE_CONFIG, norm: NormStats | None = None,
                 scale: float | None = None, zero_point: int | None = None) -> None:
        if cfg.hash() != C_FEATURE_CONFIG.hash():
            raise ValueError(f"the C front end is compiled for feature config {C_FEATURE_CONFIG.hash()}, "
                             f"not {cfg.hash()}")
        if (scale is None) != (zero_point is None):
            raise ValueError("give scale and zero_point together")
        if scale is not None:
            _check_qparams(scale, zero_point)
        self.norm, self.scale, self.zero_point = norm, scale, zero_point
        lib = _lib()
        self._tables = _tables()  # the stream points into it: keep it alive
        self._state = ctypes.create_string_buffer(lib.eeasr_logmel_stream_size())
        lib.eeasr_logmel_stream_init(self._state, self._tables)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add int16 samples; return the log-mel frames [k, 80] float32 completed by them (k may be 0)."""
        chunk = np.asarray(chunk)
        if chunk.dtype != np.int16 or chunk.ndim != 1:
            raise TypeError(f"chunks must be 1-D int16, got {chunk.dtype} {chunk.shape}")
        chunk = np.ascontiguousarray(chunk)
        capacity = chunk.size // HOP_LENGTH + 1  # EEASR_LOGMEL_MAX_FRAMES: every sample is consumed
        out = np.empty((capacity, N_MELS), np.float32)
        n = _lib().eeasr_logmel_push(self._state, chunk, chunk.size, out, capacity, None)
        return out[:n]

    def push_normalized(self, chunk: np.ndarray) -> np.ndarray:
        """push, then (logmel - mean) / std."""
        if self.norm is None:
            raise ValueError("no normalization statistics given")
        return normalize(self.push(chunk), self.norm)

    def push_int8(self, chunk: np.ndarray) -> np.ndarray:
        """push, then the device's int8 features [k, 80] with the first segment's input quantization."""
        if self.norm is None or self.scale is None or self.zero_point is None:
            raise ValueError("int8 features need normalization statistics, scale and zero point")
        return features_int8(self.push(chunk), self.norm, self.scale, self.zero_point)

    def reset(self) -> None:
        """Forget buffered samples (start of a new utterance)."""
        _lib().eeasr_logmel_stream_reset(self._state)


# ---- framing: include/eeasr_core/protocol.h (docs/protocol.md) ------------------------------------------------

class Reason(IntEnum):
    """eeasr_reason: why C rejected a frame or could not pack a message (the header's order)."""
    OK = 0
    TOO_LONG = 1
    BAD_COBS = 2
    SHORT_FRAME = 3
    LENGTH_MISMATCH = 4
    BAD_CRC = 5
    BAD_VERSION = 6
    PAYLOAD_TOO_LARGE = 7
    UNKNOWN_TYPE = 8
    SHORT_PAYLOAD = 9
    BAD_PAYLOAD_SIZE = 10
    BAD_EXIT_LIST = 11
    BAD_FIRMWARE_LENGTH = 12
    BAD_AUDIO_LAYOUT = 13
    TOO_MANY_SAMPLES = 14
    BAD_TOKEN_LIST = 15
    BAD_TEXT_LENGTH = 16
    BAD_STATE_SIZE = 17
    BAD_SCALE = 18
    BAD_UTF8 = 19
    NO_ROOM = 20
    BAD_EXIT_COUNT = 21
    TOO_MANY_TOKENS = 22
    TEXT_TOO_LONG = 23
    BAD_MODULE_MASK = 24


def reason_str(reason: int) -> str:
    """The C core's fixed one-line text for a reason (what the firmware puts in an ERROR frame)."""
    return _lib().eeasr_reason_str(reason).decode()


def crc32(data: bytes, crc: int = 0) -> int:
    """The C CRC-32, as zlib.crc32(data, crc)."""
    buf = _bytes_arg(data)
    return _lib().eeasr_crc32(crc, ctypes.addressof(buf), len(data))


def _bytes_arg(data: bytes) -> ctypes.Array:
    """A C copy of data (its address stays valid while the array lives)."""
    return (ctypes.c_ubyte * len(data)).from_buffer_copy(data)


def _uint(value: int, bits: int, what: str) -> int:
    if not 0 <= value < 1 << bits:
        raise P.ProtocolError(f"{what} {value} does not fit {bits} bits")
    return value


def encode(msg_type: int, seq: int, payload: bytes) -> bytes:
    """COBS(header | payload | crc32) + 0x00 by the C core, as eeasr.protocol.encode (any type byte is framed)."""
    _uint(msg_type, 8, "message type")
    payload = bytes(payload)
    if len(payload) > P.MAX_PAYLOAD:
        raise P.ProtocolError(f"payload of {len(payload)} bytes exceeds {P.MAX_PAYLOAD}")
    out = ctypes.create_string_buffer(len(payload) + 10 + (len(payload) + 10) // 254 + 2)
    n = _SIZE()
    src = _bytes_arg(payload)
    reason = _lib().eeasr_encode(msg_type, seq & 0xFFFF, ctypes.addressof(src), len(payload), out, len(out),
                                 ctypes.byref(n))
    if reason != Reason.OK:
        raise CCoreError(f"eeasr_encode: {reason_str(reason)}")
    return out.raw[:n.value]


def pack_frame(msg_type: int, seq: int, payload: bytes) -> bytes:
    """header | payload | crc32 by the C core (the HTTP body form), as eeasr.protocol.pack_frame."""
    _uint(msg_type, 8, "message type")
    payload = bytes(payload)
    if len(payload) > P.MAX_PAYLOAD:
        raise P.ProtocolError(f"payload of {len(payload)} bytes exceeds {P.MAX_PAYLOAD}")
    out = ctypes.create_string_buffer(len(payload) + 10)
    n = _SIZE()
    src = _bytes_arg(payload)
    reason = _lib().eeasr_frame_pack(msg_type, seq & 0xFFFF, ctypes.addressof(src), len(payload), out, len(out),
                                     ctypes.byref(n))
    if reason != Reason.OK:
        raise CCoreError(f"eeasr_frame_pack: {reason_str(reason)}")
    return out.raw[:n.value]


def _hash8(h: str, what: str) -> ctypes.Array:
    try:
        raw = bytes.fromhex(h)
    except ValueError:
        raw = b""
    if len(raw) != 8:
        raise P.ProtocolError(f"{what} must be 16 hex digits, got {h!r}")
    return (_U8 * 8)(*raw)


def _float32(x: float) -> float:
    """x rounded to float32 as struct does it (an out-of-range value raises OverflowError like the reference)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _to_c(msg: P.Message, seq: int, keep: list) -> _Message:
    """The C view of a Python message; keep holds the buffers its pointers point into."""
    def ref(data: bytes) -> int:
        keep.append(_bytes_arg(data))
        return ctypes.addressof(keep[-1])

    m = _Message(type=msg.TYPE, seq=seq & 0xFFFF)
    if isinstance(msg, P.Hello):
        exits, fw = bytes(msg.exit_layers), P.encode_utf8(msg.firmware, "hello firmware")
        m.u.hello = _Hello(_hash8(msg.model_hash, "model hash"), _hash8(msg.bundle_id, "bundle id"),
                           _hash8(msg.feature_hash, "feature hash"), _uint(msg.sample_rate, 32, "sample rate"),
                           _uint(msg.window, 16, "window"), _uint(msg.subsampling, 8, "subsampling"),
                           _uint(msg.d_model, 16, "d_model"), _uint(msg.vocab, 16, "vocab"), min(len(exits), 255),
                           ref(exits), len(fw), ref(fw))
    elif isinstance(msg, P.Audio):
        s = np.asarray(msg.samples)
        if s.dtype != np.int16 or s.ndim != 1:
            raise P.ProtocolError("audio: samples must be a 1-D int16 array")
        m.u.audio = _Audio(_uint(msg.flags, 8, "audio flags"), len(s), ref(s.astype("<i2").tobytes()))
    elif isinstance(msg, P.Result):
        text = P.encode_utf8(msg.text, "result text")
        m.u.result = _Result(_uint(msg.utt_id, 32, "utt id"), _uint(msg.window, 16, "window"),
                             _uint(msg.flags, 8, "flags"), _uint(msg.exit_index, 8, "exit index"),
                             _uint(msg.layer, 8, "layer"), _uint(msg.measure, 8, "measure"), _float32(msg.confidence),
                             len(msg.tokens), ref(np.asarray(msg.tokens, dtype="<u2").tobytes()), len(text), ref(text))
    elif isinstance(msg, P.Handoff):
        h = np.asarray(msg.hidden)
        if h.dtype != np.int8 or h.ndim != 2:
            raise P.ProtocolError("handoff: hidden must be a 2-D int8 array [T_valid, d]")
        t, d = h.shape
        if t > 0xFFFF or d > 0xFFFF:
            raise P.ProtocolError(f"handoff: {t} x {d} exceeds the {P.MAX_PAYLOAD}-byte payload limit")
        if not -128 <= msg.zero_point <= 127:
            raise P.ProtocolError(f"handoff: zero point {msg.zero_point} is not int8")
        if len(msg.modules) > P.MAX_MODULES:
            raise P.ProtocolError(f"handoff: module mask of {len(msg.modules)} modules exceeds {P.MAX_MODULES}")
        bits = P.module_mask_bytes(msg.modules)[1:]
        m.u.handoff = _Handoff(_uint(msg.utt_id, 32, "utt id"), _uint(msg.window, 16, "window"),
                               _uint(msg.flags, 8, "flags"), _uint(msg.layer, 8, "layer"),
                               _hash8(msg.model_hash, "model hash"), _float32(msg.scale), msg.zero_point, t, d,
                               ref(np.ascontiguousarray(h).tobytes()), len(msg.modules), ref(bits))
    elif isinstance(msg, P.Error):
        text = P.encode_utf8(msg.message, "error message")
        m.u.error = _ErrorMsg(_uint(msg.code, 16, "error code"), len(text), ref(text))
    elif isinstance(msg, P.Ack):
        m.u.ack = _Ack(_uint(msg.seq, 16, "ack seq"), _uint(msg.of, 8, "ack type"), _uint(msg.status, 8, "ack status"))
    elif isinstance(msg, P.CommandMsg):
        m.u.command = _Command(_uint(msg.command, 8, "command"))
    elif isinstance(msg, P.Info):
        text = P.encode_utf8(msg.json, "info")
        m.u.info = _Info(len(text), ref(text))
    else:
        raise TypeError(f"not a protocol message: {type(msg).__name__}")
    return m


def _pack_error(msg: P.Message, reason: int) -> P.ProtocolError:
    """The reference's words for a message C would not pack."""
    if reason == Reason.TOO_MANY_SAMPLES:
        return P.ProtocolError(f"audio: {len(msg.samples)} samples exceed {P.MAX_AUDIO_SAMPLES} per frame")
    if reason == Reason.PAYLOAD_TOO_LARGE and isinstance(msg, P.Handoff):
        t, d = np.shape(msg.hidden)
        return P.ProtocolError(f"handoff: {t} x {d} exceeds the {P.MAX_PAYLOAD}-byte payload limit")
    return P.ProtocolError(reason_str(reason))


def pack_message(msg: P.Message) -> bytes:
    """A message's payload by the C core's pack functions (eeasr_pack_message), as msg.pack()."""
    keep: list = []
    m = _to_c(msg, 0, keep)
    out = ctypes.create_string_buffer(64 + sum(len(buf) for buf in keep))  # fixed fields + the variable parts
    n = _SIZE()
    reason = _lib().eeasr_pack_message(ctypes.byref(m), out, len(out), ctypes.byref(n))
    if reason != Reason.OK:
        raise _pack_error(msg, reason)
    return out.raw[:n.value]


def encode_message(msg: P.Message, seq: int) -> bytes:
    """eeasr.protocol.encode(msg, seq) with every byte made by the C core."""
    payload = pack_message(msg)
    if len(payload) > P.MAX_PAYLOAD:
        raise P.ProtocolError(f"{msg.TYPE.name.lower()}: payload of {len(payload)} bytes exceeds {P.MAX_PAYLOAD}")
    return encode(msg.TYPE, seq, payload)


def _string(ptr: int | None, n: int) -> bytes:
    return ctypes.string_at(ptr, n) if n else b""


def _from_c(m: _Message) -> P.Message:
    """The Python message of a frame C has validated (its text is valid UTF-8, its counts match)."""
    u, t = m.u, m.type
    if t == P.MsgType.HELLO:
        h = u.hello
        return P.Hello(bytes(h.model_hash).hex(), bytes(h.bundle_id).hex(), bytes(h.feature_hash).hex(),
                       h.sample_rate, h.window, h.subsampling, h.d_model, h.vocab,
                       list(_string(h.exit_layers, h.n_exits)), _string(h.firmware, h.firmware_len).decode())
    if t == P.MsgType.AUDIO:
        a = u.audio
        return P.Audio(np.frombuffer(_string(a.samples, 2 * a.n_samples), "<i2").astype(np.int16), a.flags)
    if t == P.MsgType.RESULT:
        r = u.result
        return P.Result(r.utt_id, r.window, r.flags, r.exit_index, r.layer, r.measure, r.confidence,
                        np.frombuffer(_string(r.tokens, 2 * r.n_tokens), "<u2").tolist(),
                        _string(r.text, r.text_len).decode())
    if t == P.MsgType.HANDOFF:
        h = u.handoff
        hidden = np.frombuffer(_string(h.hidden, h.t_valid * h.d), np.int8).reshape(h.t_valid, h.d).copy()
        mask = np.frombuffer(_string(h.modules, (h.n_modules + 7) // 8), np.uint8)
        modules = np.unpackbits(mask, count=h.n_modules, bitorder="little").astype(bool).tolist()
        return P.Handoff(h.utt_id, h.window, h.flags, h.layer, bytes(h.model_hash).hex(), h.scale, h.zero_point,
                         hidden, modules)
    if t == P.MsgType.ERROR:
        return P.Error(u.error.code, _string(u.error.message, u.error.message_len).decode())
    if t == P.MsgType.ACK:
        return P.Ack(u.ack.seq, u.ack.of, u.ack.status)
    if t == P.MsgType.COMMAND:
        return P.CommandMsg(u.command.command)
    return P.Info(_string(u.info.json, u.info.json_len).decode())


_UTF8_FIELD = {P.MsgType.HELLO: "hello firmware", P.MsgType.RESULT: "result text", P.MsgType.ERROR: "error message",
               P.MsgType.INFO: "info"}
_SHORT = {P.MsgType.HELLO: "hello: payload of {n} bytes is shorter than 36",
          P.MsgType.RESULT: "result: payload of {n} bytes is too short",
          P.MsgType.HANDOFF: "handoff: payload of {n} bytes is shorter than 26",
          P.MsgType.ERROR: "error: payload shorter than its code"}
_WRONG_SIZE = {P.MsgType.ACK: "ack: payload must be 4 bytes", P.MsgType.COMMAND: "command: payload must be 1 byte"}


def _reject_text(reason: int, raw: bytes, capacity: int) -> str:
    """The reference decoder's words for a rejection C decided, with the numbers read from the frame."""
    if reason == Reason.TOO_LONG:
        return f"frame longer than {capacity} bytes"
    if reason == Reason.BAD_COBS:
        return "bad COBS encoding: not enough input bytes for length code"  # the only COBS error between 0x00s
    if reason == Reason.SHORT_FRAME:
        return f"frame of {len(raw)} bytes is shorter than header + crc"
    version, mtype, _, n = P.HEADER.unpack_from(raw)
    p = raw[P.HEADER.size:-P.CRC.size]
    text = {
        Reason.LENGTH_MISMATCH: lambda: f"frame length {len(raw)} does not match its header ({n}-byte payload)",
        Reason.BAD_VERSION: lambda: f"protocol version {version}, this side speaks {P.VERSION}",
        Reason.PAYLOAD_TOO_LARGE: lambda: f"payload of {n} bytes exceeds {P.MAX_PAYLOAD}",
        Reason.UNKNOWN_TYPE: lambda: f"unknown message type 0x{mtype:02x}",
        Reason.SHORT_PAYLOAD: lambda: _SHORT[mtype].format(n=len(p)),
        Reason.BAD_PAYLOAD_SIZE: lambda: _WRONG_SIZE[mtype],
        Reason.BAD_STATE_SIZE: lambda: "handoff: {} state bytes for {} x {} frames".format(
            len(p) - P.Handoff.LAYOUT.size, *struct.unpack_from("<HH", p, 22)),
        Reason.BAD_SCALE: lambda: f"handoff: scale {struct.unpack_from('<f', p, 16)[0]} is not a positive number",
        Reason.BAD_UTF8: lambda: f"{_UTF8_FIELD[mtype]} is not valid UTF-8",
    }.get(reason)
    return text() if text else reason_str(reason)  # the rest are fixed sentences, the same in both


class FrameDecoder:
    """eeasr.protocol.FrameDecoder on the C decoder (eeasr_decoder_feed): every check is C's; Python only turns
    its verdicts into Frame / FrameError objects with the reference's words. `capacity` is the receive buffer
    (the longest encoded run kept): the protocol's MAX_ENCODED by default, less to model a device's."""

    def __init__(self, capacity: int = P.MAX_ENCODED) -> None:
        if capacity < 1:
            raise ValueError(f"decoder capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._buf = ctypes.create_string_buffer(capacity)
        self._state = _Decoder()
        _lib().eeasr_decoder_init(ctypes.byref(self._state), self._buf, capacity)

    def feed(self, data: bytes) -> list[P.Frame | P.FrameError]:
        data = bytes(data)
        src = _bytes_arg(data)
        base, at, used, ev = ctypes.addressof(src), 0, _SIZE(), _Decoded()
        out: list[P.Frame | P.FrameError] = []
        feed = _lib().eeasr_decoder_feed
        while at < len(data):
            if feed(ctypes.byref(self._state), base + at, len(data) - at, ctypes.byref(used), ctypes.byref(ev)):
                if ev.reason == Reason.OK:
                    out.append(P.Frame(ev.msg.seq, _from_c(ev.msg)))
                else:
                    raw = _string(ev.raw, ev.raw_len)
                    out.append(P.FrameError(_reject_text(ev.reason, raw, self.capacity), ev.n_bytes))
            at += used.value
        return out


def unpack_frame(raw: bytes) -> P.Frame:
    """eeasr.protocol.unpack_frame by the C core (eeasr_frame_unpack): the HTTP body form."""
    raw = bytes(raw)
    src = _bytes_arg(raw)
    m = _Message()
    reason = _lib().eeasr_frame_unpack(ctypes.addressof(src), len(raw), ctypes.byref(m))
    if reason != Reason.OK:
        raise P.ProtocolError(_reject_text(reason, raw, P.MAX_ENCODED))
    return P.Frame(m.seq, _from_c(m))


# ---- endpointing: include/eeasr_core/endpoint.h (docs/protocol.md, Endpointing) -------------------------------

def _event(e: _EpEvent) -> Event:
    return Event("start" if e.kind == 1 else "end", int(e.sample))


class Endpointer:
    """eeasr.endpoint.Endpointer on the C state machine: the same events (and floor, bit for bit) for any
    chunking of the same int16 stream."""

    def __init__(self) -> None:
        self._state = _EndpointerState()
        _lib().eeasr_endpointer_init(ctypes.byref(self._state))

    @property
    def floor(self) -> float:
        return self._state.floor

    @property
    def in_speech(self) -> bool:
        return bool(self._state.in_speech)

    def push(self, samples: np.ndarray) -> list[Event]:
        s = np.ascontiguousarray(np.asarray(samples, dtype=np.int16))
        if s.ndim != 1:
            raise ValueError(f"samples must be 1-D, got shape {s.shape}")
        capacity = s.size // HOP + 1  # EEASR_EP_MAX_EVENTS: every sample is consumed
        events = (_EpEvent * capacity)()
        k = _lib().eeasr_endpointer_push(ctypes.byref(self._state), s, s.size, events, capacity, None)
        return [_event(e) for e in events[:k]]

    def step(self, e: int) -> Event | None:
        """One hop of energy e (sum of squares of 160 samples)."""
        ev = _EpEvent()
        return _event(ev) if _lib().eeasr_endpointer_step(ctypes.byref(self._state), e, ctypes.byref(ev)) else None

    def flush(self) -> Event | None:
        """End of stream: close an open utterance at the last whole hop."""
        ev = _EpEvent()
        return _event(ev) if _lib().eeasr_endpointer_flush(ctypes.byref(self._state), ctypes.byref(ev)) else None
