"""The converter's TFLM checks on top of the shared runner (eeasr/tflm.py: TFLMSegment, verify_tflite,
smallest_arena, which the host's simulated device uses too):

- `op_uses`: every operator with its dtypes and the name of the tensor it computes (the layer), for the
  esp-tflite-micro op check (convert/esp_ops.py) and the cost model (convert/cost.py).
- `arena_with_margin`: the arena recorded in the bundle, from the smallest one TFLM accepts.
"""

from __future__ import annotations

from eeasr.convert.esp_ops import OpUse
from eeasr.tflm import tflite_schema

ARENA_MARGIN = 0.10        # recorded arena = measured minimum * (1 + margin) + slack, 16-byte aligned:
ARENA_SLACK = 8 * 1024     # covers ESP-NN scratch buffers that the x86 reference build does not request


def op_uses(data: bytes) -> list[OpUse]:
    """Every operator of subgraph 0: op name, first-input and output dtypes, output tensor name, broadcast."""
    fb = tflite_schema()
    m = fb.Model.GetRootAsModel(data, 0)
    sub = m.Subgraphs(0)
    op_names = {v: k for k, v in fb.BuiltinOperator.__dict__.items() if not k.startswith("_")}
    type_names = {v: k for k, v in fb.TensorType.__dict__.items() if not k.startswith("_")}
    uses = []
    for i in range(sub.OperatorsLength()):
        op = sub.Operators(i)
        code = m.OperatorCodes(op.OpcodeIndex())
        name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        if name == "CUSTOM":
            name = f"CUSTOM:{code.CustomCode().decode(errors='replace') if code.CustomCode() else '?'}"
        ins = [j for j in op.InputsAsNumpy() if j >= 0]
        out = sub.Tensors(op.Outputs(0))
        tin = type_names[sub.Tensors(ins[0]).Type()] if ins else "-"
        shapes = [tuple(sub.Tensors(j).ShapeAsNumpy()) if sub.Tensors(j).ShapeLength() else () for j in ins[:2]]
        broadcast = len(shapes) == 2 and shapes[0] != shapes[1]
        uses.append(OpUse(i, name, tin, type_names[out.Type()], out.Name().decode(errors="replace"), broadcast))
    return uses


def arena_with_margin(minimum: int) -> int:
    return int(-(-(minimum * (1 + ARENA_MARGIN) + ARENA_SLACK) // 16) * 16)


__all__ = ["op_uses", "arena_with_margin", "ARENA_MARGIN", "ARENA_SLACK"]
