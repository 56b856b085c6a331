"""Exporting the server model: the encoder layers after the last device exit and their exits, as ONNX, checked
against torch under onnxruntime (the runner, ServerModel, is eeasr/server_model.py: the server loads it too).

Input: the device's handoff, dequantized: `hidden` float32 [B, T, d] (the hidden state after layer EXITS'
exit layer; frames past a window's valid count are ignored) and `lengths` int64 [B], the valid ENCODER frames.
Outputs: `logp_exit{j}` float32 [B, T, V], the CTC log-probabilities of every remaining exit j (1-based exit
numbers of the whole model), and with `memory` (a Conformer-AED, convert/aed_server.py) `memory` [B, T, d], the
last exit's encoder output. Batch and time are dynamic.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np

from eeasr.server_model import SERVER_INPUT_HIDDEN, SERVER_INPUT_LENGTHS, SERVER_OUTPUT_MEMORY, ServerModel, output_name

OPSET = 17


class ServerCheckError(RuntimeError):
    """The ONNX server model does not reproduce the torch layers."""


def server_module(model: Any, first_block: int, memory: bool = False) -> Any:
    """A torch module running blocks [first_block, n) of an EarlyExitConformer and the exits after them; with
    `memory`, its last output is also the hidden state at the last exit."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    layers = list(model.cfg.exits)

    class ServerPart(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(model.blocks[first_block:])
            self.exit_heads = nn.ModuleList(model.exits[j] for j, layer in enumerate(layers) if layer > first_block)
            self.exit_after = [layer - 1 - first_block for layer in layers if layer > first_block]
            self.mask_bias = float(model.cfg.mask_bias)

        def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
            t = hidden.shape[1]
            mask = torch.arange(t, device=hidden.device)[None, :] < lengths[:, None]
            bias = ((~mask).to(hidden.dtype) * self.mask_bias)[:, None, None, :]
            x, outs, j = hidden, [], 0
            for i, block in enumerate(self.blocks):
                x = block(x, mask, bias)
                if j < len(self.exit_after) and i == self.exit_after[j]:
                    outs.append(F.log_softmax(self.exit_heads[j](x), dim=-1))
                    j += 1
                    last = x
            return (*outs, last) if memory else tuple(outs)

    return ServerPart().eval()


def remaining_exits(exit_layers: list[int], k: int) -> list[tuple[int, int]]:
    """(exit number, layer) of the exits after the first k."""
    return [(j + 1, layer) for j, layer in enumerate(exit_layers) if j >= k]


def export_onnx(model: Any, k: int, memory: bool = False) -> bytes:
    """ONNX bytes of the layers after exit k (TorchScript exporter, opset 17, dynamic batch and time); with
    `memory`, also the output `memory` (the last exit's hidden state)."""
    import torch

    cfg = model.cfg
    first = cfg.exits[k - 1]
    module = server_module(model, first, memory)
    outs = [output_name(j) for j, _ in remaining_exits(cfg.exits, k)] + ([SERVER_OUTPUT_MEMORY] if memory else [])
    x = torch.zeros(2, 8, cfg.d_model)
    lengths = torch.tensor([8, 5])
    dyn = {SERVER_INPUT_HIDDEN: {0: "batch", 1: "frames"}, SERVER_INPUT_LENGTHS: {0: "batch"}}
    dyn.update({o: {0: "batch", 1: "frames"} for o in outs})
    f = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x, lengths), f, dynamo=False, input_names=[SERVER_INPUT_HIDDEN, SERVER_INPUT_LENGTHS],
                          output_names=outs, dynamic_axes=dyn, opset_version=OPSET, do_constant_folding=True)
    return f.getvalue()


def check_against_torch(model: Any, k: int, server: ServerModel, feats: np.ndarray, n_frames: np.ndarray,
                        tol: float = 2e-3) -> dict[str, float]:
    """Run the full torch model on a batch of (padded) feature windows, feed its float hidden state after exit
    k's layer to the ONNX model and compare every remaining exit's log-probabilities on valid frames with
    torch's. Raises ServerCheckError beyond `tol` (max abs difference)."""
    import torch

    cfg = model.cfg
    first = cfg.exits[k - 1]
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(feats, np.float32))
        n = torch.from_numpy(np.asarray(n_frames, np.int64))
        ref, lengths = model(x, n)
        h, lens = model.front(x, n)
        from eeasr.train.model import valid_mask
        mask = valid_mask(lens, h.shape[1])
        bias = model.key_bias(lens, h.shape[1]).to(h)
        for block in model.blocks[:first]:
            h = block(h, mask, bias)
    got = server(h.numpy(), lens.numpy())
    worst = {}
    for j, _ in remaining_exits(cfg.exits, k):
        a, b = got[output_name(j)], ref[j - 1].numpy()
        diff = max(float(np.abs(a[i, : lengths[i]] - b[i, : lengths[i]]).max()) for i in range(len(a)))
        worst[output_name(j)] = diff
        if not diff <= tol:
            raise ServerCheckError(f"server ONNX {output_name(j)} differs from torch by {diff:.2e} (max abs "
                                   f"log-probability on valid frames; tolerance {tol:.0e})")
    return worst


__all__ = ["export_onnx", "check_against_torch", "server_module", "remaining_exits", "ServerCheckError", "OPSET"]
