"""Write gated-program test vectors for firmware/native/tests/check_vectors.c: the C core's pooling, gate
decisions and stream requantization (eeasr_core/gates.h, quant.h) against eeasr/gated_program.py.

Format "EEGT" version 1, little-endian, packed:

    header:  char[4] "EEGT", u32 version, u32 n_pool, u32 n_gate, u32 n_requant
    pool:    char[32] name, u32 rows, u32 t_valid, u32 d, f32 scale, i32 zero_point, f32 out_scale,
             i32 out_zero_point, i8 stream[rows * d]     (rows past t_valid are padding, never read)
             f32 mean[d]                                 eeasr.gated_program.pool_valid
             i8 pooled[d]                                quantized to (out_scale, out_zero_point)
    gate:    char[32] name, u32 n, f32 scale, i32 zero_point, f64 beta, i8 margins[n],
             f64 threshold                               eeasr.gated_program.gate_threshold(beta)
             u8 open[n]                                  decide(dequantize(margins), beta)
    requant: char[32] name, u32 n, f32 from_scale, i32 from_zero_point, f32 to_scale, i32 to_zero_point,
             i8 stream[n], i8 moved[n]                   Stream(stream, from).to(to)
"""

from __future__ import annotations

import argparse
import math
import struct
from pathlib import Path

import numpy as np

from eeasr.bundle import QParams, dequantize, quantize
from eeasr.gated_program import Stream, decide, gate_threshold, pool_valid, sigmoid

MAGIC = b"EEGT"
VERSION = 1


def f32(x: float) -> float:
    return float(np.float32(x))


def beta_at(margin: float, steps: int = 200) -> float:
    """A beta whose threshold is exactly `margin` when one lies within `steps` ulps of sigmoid(margin), else the
    nearest: the tie the decision must break as Python does (z > threshold: a margin equal to it stays closed)."""
    beta = float(sigmoid(np.float64(margin)))
    best = beta
    for direction in (1.0, -1.0):
        b = beta
        for _ in range(steps):
            if gate_threshold(b) == margin:
                return b
            if abs(gate_threshold(b) - margin) < abs(gate_threshold(best) - margin):
                best = b
            b = math.nextafter(b, direction)
    return best


def pool_cases() -> list[tuple[str, np.ndarray, int, QParams, QParams]]:
    """(name, int8 stream [rows, d], t_valid, stream QParams, predictor input QParams), deterministic."""
    rng = np.random.default_rng(17)
    cases = []
    for rows, d in ((16, 32), (37, 144), (150, 144)):
        x = rng.integers(-128, 128, (rows, d)).astype(np.int8)
        for t in sorted({1, 2, 3, rows // 3, rows - 1, rows}):
            qp = QParams(f32(10 ** rng.uniform(-2.5, -0.5)), int(rng.integers(-20, 20)))
            out = QParams(f32(10 ** rng.uniform(-3, -1)), int(rng.integers(-10, 10)))
            cases.append((f"random_{rows}x{d}_t{t}", x, t, qp, out))
    loud = np.full((150, 8), 127, np.int8)
    loud[:, ::2] = -128
    cases.append(("saturated_150", loud, 150, QParams(0.1, -1), QParams(0.01, 0)))
    cases.append(("one_frame_zero_point", np.full((4, 8), -7, np.int8), 1, QParams(0.05, -7), QParams(0.02, 3)))
    return cases


def gate_cases() -> list[tuple[str, np.ndarray, QParams, float]]:
    """(name, int8 margins [n], gate QParams, beta): the extremes, random betas, and betas whose threshold is
    exactly one of the dequantized margins."""
    rng = np.random.default_rng(19)
    cases = []
    margins = np.arange(-128, 128, dtype=np.int8)
    for scale, zp in ((0.05, 0), (0.0371, -11), (0.125, 7)):
        qp = QParams(f32(scale), zp)
        real = dequantize(margins, qp).astype(np.float64)
        for beta in (0.0, 1.0, 0.5, *rng.uniform(0.02, 0.98, 3).round(6).tolist()):
            cases.append((f"s{scale}_zp{zp}_beta{beta:g}", margins, qp, float(beta)))
        for i in rng.choice(256, 6, replace=False):
            cases.append((f"s{scale}_zp{zp}_at_q{int(margins[i])}", margins, qp, beta_at(float(real[i]))))
    return cases


def requant_cases() -> list[tuple[str, np.ndarray, QParams, QParams]]:
    """(name, int8 stream, from, to): one segment's output QParams to the next segment's input QParams."""
    rng = np.random.default_rng(23)
    x = np.arange(-128, 128, dtype=np.int8)
    cases = [("equal_ends", x, QParams(0.05, -7), QParams(0.05, -7)), ("ties", x, QParams(1.0, 0), QParams(2.0, 0))]
    for i in range(6):
        a, b = (QParams(f32(10 ** rng.uniform(-2.5, -0.3)), int(rng.integers(-128, 128))) for _ in range(2))
        cases.append((f"random_{i}", rng.integers(-128, 128, 37 * 16).astype(np.int8), a, b))
    return cases


def write_gated_vectors(path: Path) -> None:
    pools, gates, moves = pool_cases(), gate_cases(), requant_cases()
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<IIII", VERSION, len(pools), len(gates), len(moves)))
        for name, x, t, qp, out in pools:
            mean = pool_valid(Stream(x[None], qp), t)[0]
            f.write(name.encode("ascii").ljust(32, b"\0"))
            f.write(struct.pack("<IIIfifi", x.shape[0], t, x.shape[1], qp.scale, qp.zero_point, out.scale,
                                out.zero_point))
            f.write(x.tobytes() + mean.astype("<f4").tobytes() + quantize(mean, out).tobytes())
        for name, m, qp, beta in gates:
            f.write(name.encode("ascii").ljust(32, b"\0"))
            f.write(struct.pack("<Ifid", len(m), qp.scale, qp.zero_point, beta) + m.tobytes())
            f.write(struct.pack("<d", gate_threshold(beta)))
            f.write(decide(dequantize(m, qp), beta).astype(np.uint8).tobytes())
        for name, x, a, b in moves:
            f.write(name.encode("ascii").ljust(32, b"\0"))
            f.write(struct.pack("<Ififi", len(x), a.scale, a.zero_point, b.scale, b.zero_point))
            f.write(x.tobytes() + Stream(x, a).to(b).astype(np.int8).tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    write_gated_vectors(parser.parse_args().out)


if __name__ == "__main__":
    main()
