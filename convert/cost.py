"""Device cost of a segment: flash, arena, multiply-accumulates, bytes moved per frame and the modelled
ESP32-S3 latency as a roofline (DESIGN.md, device contract).

Per operator of the converted graph: compute time = work / throughput of its kernel (ESP-NN or reference,
convert/esp_ops.py decides which the pinned esp-tflite-micro uses), memory time = bytes it moves / bandwidth
of where they live (weights in flash or PSRAM, activations in the arena, which decision 0002 puts in PSRAM).
The op takes the larger of the two; a segment the sum over its ops. Every number below is an assumption
with its source next to it, to be replaced by measurements on hardware (`Assumptions` is a dataclass: pass
another one). What the model leaves out: overlap between ops, the second core, instruction-cache misses,
TFLM's per-op overhead (a few microseconds x ~100 ops per block), DMA.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from eeasr.convert.esp_ops import ESPNN, kernel_for
from eeasr.convert.tflm import op_uses

_ESPNN_README = "esp-nn README, ESP32-S3 240 MHz, QPI 80 MHz, 64 KB data cache (espressif/esp-nn d45b843)"


def _a(value: float, note: str) -> Any:
    return field(default=value, metadata={"note": note.replace("{readme}", _ESPNN_README)})


@dataclass(frozen=True)
class Assumptions:
    """The roofline's numbers, each with where it comes from (`notes()`); replace them with measurements."""
    clock_hz: float = _a(240e6, "ESP32-S3 LX7 at its maximum clock; one core runs the model (the other serves "
                                "audio and USB)")
    espnn_conv_macs_per_cycle: float = _a(409_600 / 331_008, "1.24: esp-nn convolution 64x1x1x64 on 10x10 takes "
                                          "331,008 cycles ({readme}); used for FULLY_CONNECTED and CONV_2D")
    ref_cycles_per_mac: float = _a(4_712_500 / 409_600, "11.5: the same convolution in ANSI C (4,712,500 cycles): "
                                   "reference FULLY_CONNECTED, CONV_2D and BATCH_MATMUL (which has no ESP-NN kernel)")
    espnn_dw_cycles_per_mac: float = _a(184_176 / (16 * 16 * 16 * 9), "5.0: esp-nn depthwise 1x3x3x16 on 18x18, "
                                        "184,176 cycles ({readme})")
    ref_dw_cycles_per_mac: float = _a(1_159_831 / (16 * 16 * 16 * 9), "31.5: the same depthwise in ANSI C")
    espnn_add_cycles: float = _a(74_440 / 1615, "46 per element: esp-nn elementwise_add s8, 1615 elements in "
                                 "external memory ({readme})")
    ref_add_cycles: float = _a(281_337 / 1615, "174 per element: the same add in ANSI C; also used for SUB and "
                               "SQUARED_DIFFERENCE (same requantizing structure; not measured)")
    espnn_mul_cycles: float = _a(35_002 / 1615, "22 per element: esp-nn elementwise_mul s8 ({readme})")
    ref_mul_cycles: float = _a(122_703 / 1615, "76 per element: the same mul in ANSI C")
    broadcast_factor: float = _a(1.5, "broadcast ADD/MUL/SUB run TFLM's Broadcast*4DSlow reference kernels (ESP-NN "
                                 "only takes equal shapes): reference cost x 1.5 for the index arithmetic (not measured)")
    espnn_softmax_cycles: float = _a(11_107 / 256, "43 per element: esp-nn softmax s8 h 8 w 32 ({readme})")
    ref_softmax_cycles: float = _a(15_209 / 256, "59 per element: the same softmax in ANSI C")
    ref_transcendental_cycles: float = _a(60.0, "LOGISTIC, RSQRT, TANH per element (reference): taken as the "
                                          "reference softmax per element (not measured)")
    ref_reduce_cycles: float = _a(10.0, "MEAN/SUM per input element: accumulate and one requantization (not measured)")
    ref_copy_cycles: float = _a(4.0, "TRANSPOSE, PAD, RESHAPE, CAST, LESS, QUANTIZE per element: an indexed copy "
                                "(not measured)")
    flash_bytes_per_s: float = _a(40e6 * 0.6, "quad SPI flash (QIO) at 80 MHz = 40 MB/s peak, 60% through the "
                                  "cache's line refills (not measured); weights in .rodata are read this way (XIP)")
    psram_bytes_per_s: float = _a(160e6 * 0.5, "octal PSRAM at 80 MHz DDR = 160 MB/s peak (N16R8-class modules), 50% "
                                  "effective (not measured); holds the arena at W=600 (decision 0002) and, in the "
                                  "'psram' scenario, the weights copied there at boot")
    cache_bytes: int = _a(32 * 1024, "ESP-IDF's default ESP32-S3 data cache (64 KB selectable). An operand up to half "
                          "of it stays cached for the whole op; a larger one streams once per output row (frame): "
                          "ESP-NN and reference FULLY_CONNECTED run row by row over the whole weight matrix "
                          "(esp_nn/fully_connected.cc)")

    def notes(self) -> dict[str, dict[str, Any]]:
        """Field -> {value, note}: written into the manifest next to the costs."""
        from dataclasses import fields
        return {f.name: {"value": getattr(self, f.name), "note": f.metadata["note"]} for f in fields(self)}


_BYTES = {"INT8": 1, "UINT8": 1, "BOOL": 1, "INT16": 2, "INT32": 4, "FLOAT32": 4, "INT64": 8}
_COPY_OPS = {"TRANSPOSE", "PAD", "RESHAPE", "CAST", "LESS", "QUANTIZE", "DEQUANTIZE", "CONCATENATION",
             "STRIDED_SLICE"}


@dataclass
class OpCost:
    op: str
    kernel: str
    macs: int
    elements: int
    weight_bytes: int          # constant operands read per window (after the cache rule)
    act_bytes: int             # activation bytes read and written per window
    compute_cycles: float


@dataclass
class SegmentCost:
    flash_bytes: int
    arena_bytes: int
    frames: int                                # encoder frames per window (W/4)
    window_s: float
    macs: int
    macs_by_op: dict[str, int]
    weight_bytes_per_frame: float
    act_bytes_per_frame: float
    latency_s: dict[str, float]               # scenario "kernels/weights" -> seconds per window
    bound: dict[str, str]                     # scenario -> "compute" or "memory" (which dominates the sum)
    ops: list[OpCost] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("ops")
        d["rtf"] = {k: round(v / self.window_s, 4) for k, v in self.latency_s.items()}
        d["latency_s"] = {k: round(v, 4) for k, v in self.latency_s.items()}
        d["weight_bytes_per_frame"] = round(self.weight_bytes_per_frame)
        d["act_bytes_per_frame"] = round(self.act_bytes_per_frame)
        return d


def _tensor_bytes(t: Any, type_names: dict[int, str]) -> int:
    shape = t.ShapeAsNumpy() if t.ShapeLength() else np.array([1])
    return int(np.prod(shape)) * _BYTES.get(type_names[t.Type()], 4)


def op_costs(tflite: bytes, a: Assumptions = Assumptions(), kernels: str = "esp-nn") -> list[OpCost]:
    """Per operator: kernel, MACs, elements, bytes moved, compute cycles. `kernels="reference"` prices every
    op with the reference kernels (ESP-NN disabled)."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    m = fb.Model.GetRootAsModel(tflite, 0)
    sub = m.Subgraphs(0)
    type_names = {v: k for k, v in fb.TensorType.__dict__.items() if not k.startswith("_")}
    uses = op_uses(tflite)
    out = []
    for i, use in enumerate(uses):
        op = sub.Operators(i)
        ins = [j for j in op.InputsAsNumpy() if j >= 0]
        o = sub.Tensors(op.Outputs(0))
        oshape = o.ShapeAsNumpy() if o.ShapeLength() else np.array([1])
        n_out = int(np.prod(oshape))
        rows = int(np.prod(oshape[:-1])) if len(oshape) > 1 else 1
        kernel = kernel_for(use) or "reference"
        if kernels == "reference":
            kernel = "reference"
        macs = 0
        name = use.op
        if name == "FULLY_CONNECTED":
            macs = n_out * int(sub.Tensors(ins[1]).ShapeAsNumpy()[1])
        elif name == "CONV_2D":
            f = sub.Tensors(ins[1]).ShapeAsNumpy()
            macs = n_out * int(f[1] * f[2] * f[3])
        elif name == "DEPTHWISE_CONV_2D":
            f = sub.Tensors(ins[1]).ShapeAsNumpy()
            macs = n_out * int(f[1] * f[2])
        elif name == "BATCH_MATMUL":
            macs = n_out * int(sub.Tensors(ins[0]).ShapeAsNumpy()[-1])
        in_elems = max((int(np.prod(sub.Tensors(j).ShapeAsNumpy())) if sub.Tensors(j).ShapeLength() else 1)
                       for j in ins) if ins else n_out
        esp = kernel == ESPNN
        if name in ("FULLY_CONNECTED", "CONV_2D"):
            cycles = macs / a.espnn_conv_macs_per_cycle if esp else macs * a.ref_cycles_per_mac
        elif name == "BATCH_MATMUL":
            cycles = macs * a.ref_cycles_per_mac
        elif name == "DEPTHWISE_CONV_2D":
            cycles = macs * (a.espnn_dw_cycles_per_mac if esp else a.ref_dw_cycles_per_mac)
        elif name == "ADD":
            cycles = n_out * (a.espnn_add_cycles if esp else a.ref_add_cycles * (a.broadcast_factor if use.broadcast
                                                                                   else 1.0))
        elif name == "MUL":
            cycles = n_out * (a.espnn_mul_cycles if esp else a.ref_mul_cycles * (a.broadcast_factor if use.broadcast
                                                                                   else 1.0))
        elif name in ("SUB", "SQUARED_DIFFERENCE"):
            cycles = n_out * a.ref_add_cycles * (a.broadcast_factor if use.broadcast else 1.0)
        elif name == "SOFTMAX":
            cycles = n_out * (a.espnn_softmax_cycles if esp else a.ref_softmax_cycles)
        elif name in ("LOGISTIC", "RSQRT", "TANH", "HARD_SWISH"):
            cycles = n_out * a.ref_transcendental_cycles
        elif name in ("MEAN", "SUM"):
            cycles = in_elems * a.ref_reduce_cycles
        else:  # copies and anything else
            cycles = max(n_out, in_elems) * a.ref_copy_cycles
        weight_bytes = act_bytes = 0
        for pos, j in enumerate(ins):
            t = sub.Tensors(j)
            nbytes = _tensor_bytes(t, type_names)
            if m.Buffers(t.Buffer()).DataLength() > 0:  # a constant operand (weights, bias, tables)
                weight_bytes += nbytes * (rows if nbytes > a.cache_bytes // 2 else 1)
            elif name == "BATCH_MATMUL" and pos == 1:
                # the right operand is walked once per left row within each batch (head): it streams when one
                # head's slice does not stay cached
                shape = t.ShapeAsNumpy()
                per_batch = nbytes // max(1, int(np.prod(shape[:-2])))
                lhs_rows = int(sub.Tensors(ins[0]).ShapeAsNumpy()[-2])
                act_bytes += nbytes * (lhs_rows if per_batch > a.cache_bytes // 2 else 1)
            else:
                act_bytes += nbytes
        act_bytes += _tensor_bytes(o, type_names)
        out.append(OpCost(name, kernel, macs, n_out, weight_bytes, act_bytes, cycles))
    return out


def segment_cost(tflite: bytes, arena_bytes: int, window: int, a: Assumptions = Assumptions(),
                 feature_rate: float = 100.0) -> SegmentCost:
    """Cost of one segment for a window of `window` feature frames, in four scenarios: ESP-NN or reference
    kernels x weights in flash (XIP) or copied to PSRAM."""
    frames = window // 4
    by_kernels = {k: op_costs(tflite, a, k) for k in ("esp-nn", "reference")}
    latency, bound = {}, {}
    for kern, ops in by_kernels.items():
        for where, bw in (("flash", a.flash_bytes_per_s), ("psram", a.psram_bytes_per_s)):
            total = comp_sum = mem_sum = 0.0
            for c in ops:
                comp = c.compute_cycles / a.clock_hz
                mem = c.weight_bytes / bw + c.act_bytes / a.psram_bytes_per_s
                total += max(comp, mem)
                comp_sum += comp
                mem_sum += mem
            key = f"{kern}/{where}"
            latency[key] = total
            bound[key] = "memory" if mem_sum > comp_sum else "compute"
    ops = by_kernels["esp-nn"]
    macs_by: dict[str, int] = {}
    for c in ops:
        if c.macs:
            macs_by[c.op] = macs_by.get(c.op, 0) + c.macs
    return SegmentCost(flash_bytes=len(tflite), arena_bytes=arena_bytes, frames=frames,
                       window_s=window / feature_rate, macs=sum(c.macs for c in ops), macs_by_op=macs_by,
                       weight_bytes_per_frame=sum(c.weight_bytes for c in ops) / frames,
                       act_bytes_per_frame=sum(c.act_bytes for c in ops) / frames,
                       latency_s=latency, bound=bound, ops=ops)


def cost_table(rows: list[dict[str, Any]], window: int) -> str:
    """Markdown: one row per device program K = 1..n (cumulative over its segments), from manifest cost
    entries [{name, exit_layer, cost: SegmentCost.to_dict()}]."""
    head = ("| K (exit layer) | segment | flash B | arena B | MACs / window | weights B / frame | activations B / frame "
            "| ESP-NN, weights in flash: s / window (RTF) | ESP-NN, PSRAM | reference, flash | reference, PSRAM "
            "| device total flash B | device latency to exit K (ESP-NN, flash) |")
    lines = [head, "|" + "---|" * 13]
    flash_total = 0
    lat_total = 0.0
    for r in rows:
        c = r["cost"]
        flash_total += c["flash_bytes"]
        lat_total += c["latency_s"]["esp-nn/flash"]
        cell = {k: f"{c['latency_s'][k]:.2f} ({c['rtf'][k]:.2f}, {c['bound'][k]})" for k in c["latency_s"]}
        lines.append(f"| {r['k']} ({r['exit_layer']}) | {r['name']} | {c['flash_bytes']:,} | {c['arena_bytes']:,} "
                     f"| {c['macs'] / 1e6:.1f} M | {c['weight_bytes_per_frame']:,} | {c['act_bytes_per_frame']:,} "
                     f"| {cell['esp-nn/flash']} | {cell['esp-nn/psram']} | {cell['reference/flash']} "
                     f"| {cell['reference/psram']} | {flash_total:,} | {lat_total:.2f} s for {window / 100:g} s |")
    return "\n".join(lines)


def gated_cost_table(rows: list[dict[str, Any]], window: int, exits: list[tuple[int, int]]) -> str:
    """Markdown for a gated (I3D) program, from manifest-style entries [{name, role, layer, cost}]: one row per
    segment, then one per device program K (exits [(K, exit layer)]). A gated program's cost is not cumulative
    over its segments: front, gate predictor(s) and head always run, each module only when its gate opens, so
    program K is given at beta 0 (every module up to its exit layer) and at beta 1 (none)."""
    scenarios = ("esp-nn/flash", "esp-nn/psram", "reference/flash", "reference/psram")
    lines = ["| segment | role | layer | flash B | arena B | MACs / window | weights B / frame | activations B / frame "
             "| ESP-NN, weights in flash: s / window (RTF) | ESP-NN, PSRAM | reference, flash | reference, PSRAM |",
             "|" + "---|" * 12]
    for r in rows:
        c = r["cost"]
        cell = [f"{c['latency_s'][k]:.3f} ({c['rtf'][k]:.3f}, {c['bound'][k]})" for k in scenarios]
        lines.append(f"| {r['name']} | {r['role']} | {r['layer']} | {c['flash_bytes']:,} | {c['arena_bytes']:,} "
                     f"| {c['macs']:,} | {c['weight_bytes_per_frame']:,} | {c['act_bytes_per_frame']:,} "
                     f"| {' | '.join(cell)} |")
    lines += ["", "| K (exit layer) | segments | device flash B | largest arena B | MACs / window, beta 0 (every "
                  "module) | beta 1 (no module) | ESP-NN, flash: s / window, beta 0 | beta 1 |", "|" + "---|" * 8]

    def total(rs: list[dict[str, Any]], key: str) -> float:
        return sum(r["cost"]["latency_s"][key] if key in scenarios else r["cost"][key] for r in rs)

    for k, layer in exits:
        # a global predictor (layer 0) and local ones up to the exit layer; modules up to it; front and head
        used = [r for r in rows if r["role"] in ("front", "head") or r["layer"] <= layer]
        always = [r for r in used if r["role"] not in ("mha", "ffn")]
        lines.append(f"| {k} ({layer}) | {len(used)} | {int(total(used, 'flash_bytes')):,} "
                     f"| {max(r['cost']['arena_bytes'] for r in used):,} | {int(total(used, 'macs')):,} "
                     f"| {int(total(always, 'macs')):,} "
                     f"| {total(used, 'esp-nn/flash'):.3f} s for {window / 100:g} s "
                     f"| {total(always, 'esp-nn/flash'):.3f} s |")
    return "\n".join(lines)


__all__ = ["Assumptions", "OpCost", "SegmentCost", "op_costs", "segment_cost", "cost_table", "gated_cost_table"]
