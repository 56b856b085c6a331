"""Running a device segment under the real TensorFlow Lite Micro interpreter (the `tflite-micro` wheel).

Shared by the converter (which proves every segment under TFLM) and the host's simulated device; imports
neither torch nor tensorflow, and `tflite_micro` only when a segment is loaded.

- `verify_tflite`: refuses bytes that are not a valid TFLite flatbuffer (LiteRT's flatbuffer verifier when
  `ai-edge-litert` is installed, as with the converter; always a full read of the schema with index range
  checks, which is all a host install has) before TFLM sees them: TFLM itself trusts its input and may crash on
  garbage. Changed weights are not structural damage: a bundle's sha256 per file catches those.
- `tensor_names`: the names of a model's input and output tensors, in the order TFLM indexes them.
- `smallest_arena`: bisection over the arena size for which TFLM's AllocateTensors succeeds.
- `TFLMSegment`: load once, run on int8/int16 inputs looked up by name, outputs returned raw by name.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from eeasr.bundle import QParams

ARENA_STEP = 16
_DTYPES = {"INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "FLOAT32": np.float32}


class CorruptModelError(ValueError):
    """Bytes that are not a TFLite model TFLM can be given safely."""


class TFLMError(RuntimeError):
    """TFLM refused or failed to run a segment (its own messages are included)."""


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to fd 2 (TFLM's allocation report and error messages)."""
    sys.stderr.flush()
    saved = os.dup(2)
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


def tflite_schema() -> Any:
    """The TFLite flatbuffer schema module that ships with the tflite-micro wheel."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb
    return fb


def verify_tflite(data: bytes, where: str = "model") -> None:
    """Raise CorruptModelError unless `data` is a well-formed TFLite flatbuffer with one subgraph whose
    tensors, buffers and operator codes are all in range."""
    if len(data) < 16 or data[4:8] != b"TFL3":
        raise CorruptModelError(f"{where}: not a TFLite model (no TFL3 identifier; {len(data)} bytes)")
    try:
        from ai_edge_litert.interpreter import Interpreter as LiteRT
        with captured_stderr():
            LiteRT(model_content=bytes(data))  # runs tflite::Verifier on the whole flatbuffer
    except ImportError:  # the host install has no ai-edge-litert: the structural read below still runs
        pass
    except (ValueError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "not a valid Flatbuffer" in msg or "identifier" in msg or "verif" in msg.lower():
            raise CorruptModelError(f"{where}: corrupt TFLite flatbuffer ({msg})") from None
        # other LiteRT failures (an op LiteRT lacks) are not corruption; TFLM decides below
    fb = tflite_schema()
    try:
        m = fb.Model.GetRootAsModel(data, 0)
        if m.Version() != 3 or m.SubgraphsLength() < 1:
            raise CorruptModelError(f"{where}: TFLite schema version {m.Version()}, {m.SubgraphsLength()} subgraphs")
        n_buf, n_codes = m.BuffersLength(), m.OperatorCodesLength()
        sub = m.Subgraphs(0)
        n_t = sub.TensorsLength()
        for i in range(n_t):
            t = sub.Tensors(i)
            if not 0 <= t.Buffer() < n_buf:
                raise CorruptModelError(f"{where}: tensor {i} refers to buffer {t.Buffer()} of {n_buf}")
            t.ShapeAsNumpy()
        for i in range(sub.OperatorsLength()):
            op = sub.Operators(i)
            if not 0 <= op.OpcodeIndex() < n_codes:
                raise CorruptModelError(f"{where}: operator {i} has opcode {op.OpcodeIndex()} of {n_codes}")
            for j in list(op.InputsAsNumpy()) + list(op.OutputsAsNumpy()):
                if not -1 <= j < n_t:
                    raise CorruptModelError(f"{where}: operator {i} refers to tensor {j} of {n_t}")
        for io in list(sub.InputsAsNumpy()) + list(sub.OutputsAsNumpy()):
            if not 0 <= io < n_t:
                raise CorruptModelError(f"{where}: subgraph input/output {io} of {n_t} tensors")
        for i in range(n_buf):
            b = m.Buffers(i)
            if b.Offset() and b.Offset() + b.Size() > len(data):
                raise CorruptModelError(f"{where}: buffer {i} lies outside the file")
            if b.DataLength():
                b.DataAsNumpy()  # a view: numpy refuses one that would end past the bytes
        fb.ModelT.InitFromObj(m)  # reads every table and vector: a truncated or garbled one fails here
    except CorruptModelError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to read the schema is corruption
        raise CorruptModelError(f"{where}: corrupt TFLite flatbuffer ({type(e).__name__}: {e})") from None


def tensor_names(tflite: bytes) -> tuple[list[str], list[str]]:
    """Names of the input and output tensors of subgraph 0, in the order TFLM indexes them."""
    fb = tflite_schema()
    m = fb.Model.GetRootAsModel(tflite, 0)
    sub = m.Subgraphs(0)
    ins = [sub.Tensors(sub.Inputs(i)).Name().decode() for i in range(sub.InputsLength())]
    outs = [sub.Tensors(sub.Outputs(i)).Name().decode() for i in range(sub.OutputsLength())]
    return ins, outs


def _load(data: bytes, arena: int) -> tuple[Any, list[str]]:
    from tflite_micro.python.tflite_micro import runtime
    with captured_stderr() as lines:
        try:
            return runtime.Interpreter.from_bytes(data, arena_size=arena), lines
        except RuntimeError as e:
            err = e
    raise TFLMError(f"{err}; TFLM said: {' | '.join(l for l in lines if l.strip())[-800:]}")


def tflm_loads(data: bytes, arena: int) -> bool:
    """Whether TFLM allocates the model's tensors in an arena of `arena` bytes."""
    try:
        _load(data, arena)
        return True
    except TFLMError:
        return False


def _allocations(interp: Any) -> dict[str, int]:
    with captured_stderr() as lines:
        interp.print_allocations()
    out = {}
    for line in lines:
        m = re.search(r"Arena allocation (total|head|tail) (\d+) bytes", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def smallest_arena(data: bytes, step: int = ARENA_STEP, limit: int = 64 << 20) -> int:
    """The smallest arena (a multiple of `step`) with which TFLM allocates the segment's tensors.

    Probes never go below the persistent (tail) size TFLM reports plus 4 KiB: when a kernel's persistent
    buffer does not fit, this TFLM build dereferences the null it gets and crashes the process (seen with
    a later segment at a 64 KiB arena), while a planner (head) shortfall fails cleanly."""
    interp, _ = _load(data, limit)  # raises with TFLM's message when no arena helps (an op TFLM lacks)
    alloc = _allocations(interp)
    del interp
    if not {"head", "tail"} <= set(alloc):
        raise TFLMError(f"TFLM printed no arena report ({alloc}); cannot measure the arena safely")
    floor = -(-(alloc["tail"] + 4096) // step) * step
    hi = -(-(alloc["head"] + alloc["tail"] + 4096) // step) * step
    while not tflm_loads(data, hi):
        hi *= 2
        if hi > limit:
            raise TFLMError(f"TFLM loads the segment at {limit} bytes but not at {hi // 2}")
    lo = max(floor, hi - 2 * alloc["head"] // 3 // step * step)
    if tflm_loads(data, lo):
        if lo == floor:
            return floor
        lo = floor
        if tflm_loads(data, lo):
            return floor
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if mid <= lo:
            break
        lo, hi = (lo, mid) if tflm_loads(data, mid) else (mid, hi)
    return hi


@dataclass
class TensorInfo:
    name: str
    index: int
    dtype: str
    shape: tuple[int, ...]
    qparams: QParams | None


class TFLMSegment:
    """A verified segment loaded in TFLM; inputs and outputs by name.

    `arena`: the arena size in bytes (a bundle's manifest records it); None measures the smallest one."""

    def __init__(self, data: bytes, arena: int | None = None, where: str = "segment") -> None:
        verify_tflite(data, where)
        self.where = where
        self.arena = arena if arena is not None else smallest_arena(data)
        self.interp, _ = _load(data, self.arena)
        ins, outs = tensor_names(data)
        self.inputs = {n: self._info(n, i, self.interp.get_input_details(i)) for i, n in enumerate(ins)}
        self.outputs = {n: self._info(n, i, self.interp.get_output_details(i)) for i, n in enumerate(outs)}

    @staticmethod
    def _info(name: str, index: int, d: dict[str, Any]) -> TensorInfo:
        dtype = np.dtype(d["dtype"]).name.upper()
        q = d["quantization_parameters"]
        qp = None
        if dtype in ("INT8", "INT16") and len(q["scales"]):
            if len(q["scales"]) != 1:
                raise TFLMError(f"tensor {name}: per-channel quantization on an input/output is not supported")
            qp = QParams(float(q["scales"][0]), int(q["zero_points"][0]), dtype.lower())
        return TensorInfo(name, index, dtype, tuple(int(s) for s in d["shape"]), qp)

    def allocations(self) -> dict[str, int]:
        """TFLM's arena report: total, head (non-persistent: the planner's peak) and tail (persistent)."""
        return _allocations(self.interp)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Set every input by name (already quantized), invoke, return raw outputs by name."""
        if set(inputs) != set(self.inputs):
            raise TFLMError(f"{self.where}: inputs {sorted(inputs)}, the segment takes {sorted(self.inputs)}")
        for name, x in inputs.items():
            info = self.inputs[name]
            arr = np.asarray(x)
            if arr.dtype != _DTYPES[info.dtype] or arr.shape != info.shape:
                raise TFLMError(f"{self.where}: input {name} is {arr.dtype} {arr.shape}, expected "
                                f"{info.dtype.lower()} {info.shape}")
            self.interp.set_input(arr, info.index)
        with captured_stderr() as lines:
            try:
                self.interp.invoke()
            except RuntimeError as e:
                raise TFLMError(f"{self.where}: invoke failed: {e}; {' | '.join(lines)[-500:]}") from None
        return {name: np.array(self.interp.get_output(info.index)) for name, info in self.outputs.items()}


__all__ = ["CorruptModelError", "TFLMError", "TFLMSegment", "TensorInfo", "verify_tflite", "tensor_names",
           "tflite_schema", "smallest_arena", "tflm_loads", "captured_stderr", "ARENA_STEP"]
