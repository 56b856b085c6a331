"""Write exit-measure test vectors for firmware/native/tests/check_vectors.c (the EEFV file has features only).

The reference is what thresholds are calibrated on: eeasr.exits.log_softmax (float32) of the dequantized
int8 logits of the valid frames, measured by eeasr.exits.

Format "EEXV" version 1, little-endian, packed:

    header: char[4] "EEXV", u32 version, u32 n_cases
    case:   char[32] name (NUL padded), u32 rows, u32 t_valid, u32 vocab, i32 blank, f32 scale, i32 zero_point,
            i8 logits[rows * vocab]            (rows >= t_valid: rows past t_valid are padding, never read)
            f32 logp[t_valid * vocab]          reference log-softmax
            f64 entropy, f64 nonblank_entropy  eeasr.exits.frame_entropy / nonblank_entropy
            u32 n_tokens, i32 tokens[n_tokens] eeasr.exits.greedy_ctc
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import numpy as np

from eeasr.exits import frame_entropy, greedy_ctc, log_softmax, nonblank_entropy
from eeasr.features import dequantize_int8

MAGIC = b"EEXV"
VERSION = 1


def _cases() -> list[tuple[str, np.ndarray, int, int, float, int]]:
    """(name, logits [rows, vocab], t_valid, blank, scale, zero_point), deterministic."""
    rng = np.random.default_rng(7)

    def uniform(rows: int, vocab: int) -> np.ndarray:
        return rng.integers(-128, 128, (rows, vocab)).astype(np.int8)

    # A confident CTC head: the blank wins most frames by a wide margin, a few frames pick a token.
    ctc = rng.integers(-60, 0, (120, 257))
    ctc[:, 0] = 90
    tokens = rng.random(120) < 0.2
    ctc[tokens, 0] = -20
    ctc[tokens, rng.integers(1, 257, tokens.sum())] = 100
    all_blank = rng.integers(-128, 0, (30, 40))
    all_blank[:, 0] = 127
    ties = rng.integers(-2, 3, (60, 16))  # few values: argmax ties on most frames
    return [
        ("random_small", uniform(12, 5), 12, 0, 0.1, -3),
        ("padded_window", uniform(50, 64), 37, 0, 0.0625, 0),
        ("no_valid_frames", uniform(10, 32), 0, 0, 0.2, 5),
        ("confident_ctc", ctc.astype(np.int8), 100, 0, 0.15, 10),
        ("all_blank_fallback", all_blank.astype(np.int8), 30, 0, 0.05, -128),
        ("argmax_ties", ties.astype(np.int8), 60, 0, 0.5, 0),
        ("saturated", np.where(rng.random((25, 50)) < 0.5, -128, 127).astype(np.int8), 25, 0, 0.3, -1),
        ("blank_not_zero", uniform(40, 20), 40, 3, 0.08, 2),
        ("large_vocab", uniform(30, 1000), 30, 0, 0.02, -10),
    ]


def write_exit_vectors(path: Path) -> None:
    with open(path, "wb") as f:
        cases = _cases()
        f.write(MAGIC + struct.pack("<II", VERSION, len(cases)))
        for name, logits, t_valid, blank, scale, zero_point in cases:
            logp = log_softmax(dequantize_int8(logits[:t_valid], scale, zero_point))
            tokens = greedy_ctc(logp, blank)
            f.write(name.encode("ascii").ljust(32, b"\0"))
            f.write(struct.pack("<IIIifi", logits.shape[0], t_valid, logits.shape[1], blank, scale, zero_point))
            f.write(logits.tobytes())
            f.write(logp.astype("<f4").tobytes())
            f.write(struct.pack("<ddI", frame_entropy(logp), nonblank_entropy(logp, blank), len(tokens)))
            f.write(np.asarray(tokens, dtype="<i4").tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    write_exit_vectors(parser.parse_args().out)


if __name__ == "__main__":
    main()
