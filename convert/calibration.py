"""Activation ranges for int8 conversion: min/max over the representative windows (TFLite's calibrator), or
clipped at percentiles of the same values (the converter's default).

Why percentiles: a handful of outlier activations stretch a min/max range, and every other value of that
tensor then gets coarser int8 steps. Clipping each range at its 0.01 / 99.99 percentiles raised the token
agreement of the handoff with the float model from 0.913 to 0.932 on 300 held-out test windows (models/default,
EXITS=2), at identical size and cost (bench/segment_agreement.py, docs/decisions/0005-handoff-agreement.md).
The representative windows stay what the converter calibrates on: partial (zero-padded) windows included,
since the key-padding bias must get a range (on full windows alone it is all zero and TFLM crashes).

No TensorFlow here: the bundle caches (host/bundle_cache.py, convert/firmware_flash.py) read the defaults.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

DEFAULT_CLIP_PERCENTILE = 99.99
CALIBRATIONS = ("percentile", "minmax")
Reps = list[list[np.ndarray]]   # representative inputs: one list per example, in the model's input order


def check_percentile(percentile: float) -> None:
    """Refuse a clip percentile outside (50, 100] (at 50 a range shrinks to the median; 100 is min/max)."""
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"clip percentile {percentile:g}: must be in (50, 100]")


def calibration_entry(clip_percentile: float | None) -> dict[str, Any]:
    """How activation ranges were set, as the manifest records it (options and each segment)."""
    return {"calibration": "minmax" if clip_percentile is None else "percentile", "clip_percentile": clip_percentile}


def clip_ranges(calibrated: bytes, reps: Reps, percentile: float) -> bytes:
    """Replace each activation's calibrated [min, max] by [the m-th smallest, the m-th largest] of its values
    over `reps` (m = ceil(N * (100 - percentile) / 100) of its N values over all examples, at least 1: the
    [100 - p, p] percentiles), run by LiteRT on the float model with every intermediate tensor kept (only the
    m most extreme values of each run are kept). These are the values themselves: the calibrator's range can
    be wider (it gives a 0/1 mask that is then multiplied by 30 the range [0, 30]); at p = 100 such a tensor
    gets the min/max of its values. Ranges include 0 (the quantizer extends every range to 0 anyway). A range
    that would collapse to [0, 0] (a tensor that is almost always zero, such as the key-padding bias) keeps its
    min/max: a zero range gives TFLM a scale of ~1e-8 and it crashes."""
    import flatbuffers
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from eeasr.tflm import tflite_schema

    check_percentile(percentile)
    fb = tflite_schema()
    # Builtin kernels without the XNNPACK delegate: every intermediate tensor is a builtin op's output, kept.
    interp = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(calibrated, 0))
    sub = model.subgraphs[0]
    ranged = [i for i, t in enumerate(sub.tensors) if t.quantization is not None and t.quantization.min is not None
              and len(t.quantization.min) == 1 and t.type == fb.TensorType.FLOAT32]
    sizes = {d["index"]: int(np.prod(d["shape"])) for d in interp.get_tensor_details()}
    tail = {i: max(1, math.ceil(round(sizes[i] * len(reps) * (100.0 - percentile) / 100.0, 6))) for i in ranged}
    lows: dict[int, list[np.ndarray]] = {i: [] for i in ranged}
    highs: dict[int, list[np.ndarray]] = {i: [] for i in ranged}
    inputs = [(d["index"], d["dtype"]) for d in interp.get_input_details()]   # the order the calibrator feeds
    for r in reps:
        for (idx, dtype), a in zip(inputs, r):
            interp.set_tensor(idx, np.asarray(a, dtype))
        interp.invoke()
        for i in ranged:
            v = interp.get_tensor(i).ravel()
            k = min(tail[i], v.size)
            part = np.partition(v, (k - 1, v.size - k))
            lows[i].append(part[:k])
            highs[i].append(part[v.size - k:])
    for i in ranged:
        lo, hi = np.sort(np.concatenate(lows[i])), np.sort(np.concatenate(highs[i]))
        m = min(tail[i], len(lo))
        new_min, new_max = float(min(0.0, lo[m - 1])), float(max(0.0, hi[-m]))
        q = sub.tensors[i].quantization
        if new_min < new_max:
            q.min, q.max = [new_min], [new_max]
    builder = flatbuffers.Builder(len(calibrated) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


__all__ = ["DEFAULT_CLIP_PERCENTILE", "CALIBRATIONS", "Reps", "check_percentile", "calibration_entry", "clip_ranges"]
