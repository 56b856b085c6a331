"""The server model: the encoder layers after the last device exit and their exits, as ONNX run by
onnxruntime. The converter exports and checks it (eeasr/convert/server.py); the server and the host's
simulated split run it. Imports neither torch nor tensorflow, and onnxruntime only when a model is loaded.

Input: the device's handoff, dequantized: `hidden` float32 [B, T, d] (the hidden state after layer EXITS'
exit layer; frames past a window's valid count are ignored) and `lengths` int64 [B], the valid ENCODER frames.
Outputs: `logp_exit{j}` float32 [B, T, V], the CTC log-probabilities of every remaining exit j (1-based exit
numbers of the whole model), and for a Conformer-AED also `memory` float32 [B, T, d], the last exit's encoder
output its attention decoder attends to (eeasr/aed_decode.py). Batch and time are dynamic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from eeasr.bundle import Bundle, BundleError

SERVER_INPUT_HIDDEN = "hidden"
SERVER_INPUT_LENGTHS = "lengths"
SERVER_OUTPUT_MEMORY = "memory"
# A gated (I3D) server model (convert/i3d.py) takes one more input: the server layers' gates from the handoff's
# module mask (global gate predictor) or the threshold its own local predictors use; and says what ran.
SERVER_INPUT_GATES = "gates"        # float32 [B, L_server, 2], 1 run / 0 skip
SERVER_INPUT_BETA = "beta"          # float32 [1]
SERVER_OUTPUT_GATES = "gates_used"  # float32 [B, L_server, 2]


class ServerModelError(RuntimeError):
    """onnxruntime cannot load or run the server model."""


def output_name(exit_index: int) -> str:
    """The server model's output for exit `exit_index` (1-based, numbered over the whole model)."""
    return f"logp_exit{exit_index}"


def onnx_session(onnx_bytes: bytes, threads: int = 1, where: str = "server model") -> Any:
    """An onnxruntime CPU session with `threads` intra-op threads; ServerModelError naming `where` when it
    cannot load the model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ServerModelError(f"{where}: onnxruntime cannot load it ({type(e).__name__}: "
                               f"{str(e).strip()[:300]})") from None


class ServerModel:
    """onnxruntime session over the server ONNX; outputs by name."""

    def __init__(self, onnx_bytes: bytes, threads: int = 1, where: str = "server model") -> None:
        self.session = onnx_session(onnx_bytes, threads, where)
        self.where = where
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        extra = sorted(set(self.inputs) - {SERVER_INPUT_HIDDEN, SERVER_INPUT_LENGTHS})
        if len(self.inputs) != 2 + len(extra) or extra not in ([], [SERVER_INPUT_GATES], [SERVER_INPUT_BETA]):
            raise ServerModelError(f"{where}: inputs {self.inputs}, expected {SERVER_INPUT_HIDDEN!r} and "
                                   f"{SERVER_INPUT_LENGTHS!r} (and {SERVER_INPUT_GATES!r} or {SERVER_INPUT_BETA!r} "
                                   f"for a gated model)")
        self.gate_input: str | None = extra[0] if extra else None

    @classmethod
    def from_bundle(cls, bundle: Bundle, threads: int = 1) -> ServerModel:
        """The bundle's server model; BundleError when it has none (every exit on the device) or when its
        outputs are not the ones the manifest lists."""
        entry: dict[str, Any] | None = bundle.manifest.get("server")
        if not entry:
            raise BundleError(f"{bundle.path}: no server model (every exit of the model is on the device)")
        model = cls(bundle.file(entry["file"]).read_bytes(), threads, f"{bundle.path}/{entry['file']}")
        if sorted(model.outputs) != sorted(entry["outputs"]):
            raise BundleError(f"{model.where}: outputs {model.outputs}, the manifest lists {sorted(entry['outputs'])}")
        return model

    def __call__(self, hidden: np.ndarray, lengths: np.ndarray,
                 gates: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """hidden float32 [B, T, d] (dequantized handoff), lengths [B] valid encoder frames ->
        {output name: log-probabilities [B, T, V]}. A gated model also takes `gates` {its gate input: array}."""
        feed = {SERVER_INPUT_HIDDEN: np.ascontiguousarray(hidden, np.float32),
                SERVER_INPUT_LENGTHS: np.asarray(lengths, np.int64)}
        if self.gate_input is not None:
            if not gates or self.gate_input not in gates:
                raise ServerModelError(f"{self.where}: a gated server model needs input {self.gate_input!r}")
            feed[self.gate_input] = np.asarray(gates[self.gate_input], np.float32)
        res = self.session.run(None, feed)
        return dict(zip(self.outputs, res))


__all__ = ["ServerModel", "ServerModelError", "onnx_session", "output_name", "SERVER_INPUT_HIDDEN",
           "SERVER_INPUT_LENGTHS", "SERVER_OUTPUT_MEMORY", "SERVER_INPUT_GATES", "SERVER_INPUT_BETA",
           "SERVER_OUTPUT_GATES"]
