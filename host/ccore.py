"""ctypes binding to the firmware's portable C core (firmware/components/eeasr_core), built natively.

The simulated device runs the same C code as the ESP32-S3: the streaming log-mel front end, normalization and
int8 quantization, requantization at segment boundaries, exit measures and greedy CTC. Every call hands whole
arrays to C (a chunk of audio, a window of logits), so per-frame work never loops in Python.

The shared library is built on first use with `make -C firmware/native lib` (gcc), and rebuilt when a C
source is newer than it. numpy only: no torch, no tensorflow.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
_SIZE, _FLOAT, _INT32, _VOID = ctypes.c_size_t, ctypes.c_float, ctypes.c_int32, ctypes.c_void_p


class _Measures(ctypes.Structure):
    _fields_ = [("entropy", ctypes.c_float), ("nonblank_entropy", ctypes.c_float)]


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
    "eeasr_log_softmax": (None, [_F32, _SIZE, _SIZE, _F32]),
    "eeasr_exit_measures_int8": (None, [_I8, _SIZE, _SIZE, _FLOAT, _INT32, _INT32, _F32, ctypes.POINTER(_Measures)]),
    "eeasr_exit_measures_logp": (None, [_F32, _SIZE, _SIZE, _INT32, ctypes.POINTER(_Measures)]),
    "eeasr_greedy_ctc_int8": (_SIZE, [_I8, _SIZE, _SIZE, _INT32, _I32]),
    "eeasr_greedy_ctc_logp": (_SIZE, [_F32, _SIZE, _SIZE, _INT32, _I32]),
}


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build_library()))
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
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
