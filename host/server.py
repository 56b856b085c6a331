"""The suffix server, `eeasr-host serve --bundle DIR`: runs the layers after the device's last exit on the
handoffs devices send upward (docs/protocol.md, "Server API").

`POST /v1/handoff` takes one HANDOFF frame (without COBS), refuses it with a one-line reason when it is not
one this bundle can continue (400 malformed, 409 another model or another EXITS), dequantizes the int8 hidden
state with the frame's own scale and zero point, and queues it. A batcher collects what arrives within
`batch_wait_ms` of the oldest queued handoff (at most `max_batch`), pads to the longest, runs the server ONNX
once in a worker thread (the event loop keeps accepting meanwhile) and answers each handoff with its last
exit's greedy CTC tokens, text and frame entropy, or, for a Conformer-AED bundle, the last exit's attention beam
search (+ LM rescoring) tokens, text and N-best posterior (eeasr/aed_decode.py); the reply's "decoder" says
which ("ctc", "attention", "attention+lm"). `GET /healthz` and `GET /metrics` need no token.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from eeasr.aed_decode import AttentionDecoder, AttentionResult
from eeasr.bundle import Bundle, load_bundle
from eeasr.exits import frame_entropy, greedy_ctc
from eeasr.features import dequantize_int8
from eeasr.host.metrics import ServerMetrics
from eeasr.protocol import MAX_FRAME, Handoff, Measure, ProtocolError, unpack_frame
from eeasr.gated_program import server_gate_input
from eeasr.server_model import SERVER_OUTPUT_GATES, SERVER_OUTPUT_MEMORY, ServerModel
from eeasr.tokenizer import Tokenizer

HANDOFF_PATH = "/v1/handoff"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
FRAME_CONTENT_TYPE = "application/x-eeasr-frame"


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8750                 # 0: any free port (the URL printed says which)
    batch_wait_ms: float = 5.0       # how long the oldest queued handoff waits for company
    max_batch: int = 32              # handoffs per model call
    max_queue: int = 256             # queued handoffs before new ones get 503 (bounded memory under overload)
    threads: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))  # onnxruntime intra-op threads


@dataclass
class Decoded:
    """One handoff's answer from the server's last exit."""
    tokens: list[int]
    text: str
    confidence: float                # frame entropy (Eq. 5) over the valid frames, or the N-best posterior (Eq. 6)
    logp: np.ndarray                 # [T_valid, V] CTC log-probabilities
    measure: Measure = Measure.FRAME_ENTROPY
    decoder: str = "ctc"             # which decoder answered: "ctc", "attention" or "attention+lm"
    modules_run: int | None = None   # a gated (I3D) bundle: the server's modules that ran


class Suffix:
    """A bundle's server side: the ONNX model, the tokenizer, and what a handoff must match to be continued."""

    def __init__(self, bundle: Bundle, threads: int = 1) -> None:
        m = bundle.manifest
        self.bundle = bundle
        self.model = ServerModel.from_bundle(bundle, threads)
        self.decoder = AttentionDecoder.from_bundle(bundle, threads)  # None: answer with greedy CTC
        self.decoder_name = "ctc" if self.decoder is None else self.decoder.name
        self.tokenizer = Tokenizer.load(bundle.file(m["tokenizer"]["file"]))
        self.after_layer = int(m["server"]["after_layer"])     # the layer a handoff's state comes out of
        last = m["exits"][-1]
        self.exit, self.layer, self.output = int(last["index"]), int(last["layer"]), str(last["output"])
        self.d_model = int(m["model"]["d_model"])
        self.max_frames = int(m["window"]["encoder_frames"])
        self.hash8 = bundle.model_hash[:16]                    # what a frame carries (8 bytes)
        # A gated (I3D) bundle: {"predictor", "beta", "n_layers"}; its handoffs carry a module mask of this many
        # modules (a global predictor's covers every layer, a local one's the device's), early-exit ones none.
        self.gated: dict[str, Any] | None = m["server"].get("gated")
        self.mask_modules = 0 if not self.gated else 2 * (int(self.gated["n_layers"]) if
                                                          self.gated["predictor"] == "global" else self.after_layer)

    @classmethod
    def load(cls, bundle_dir: str | Path, threads: int = 1) -> Suffix:
        return cls(load_bundle(bundle_dir), threads)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model_hash": self.bundle.model_hash, "bundle_id": self.bundle.bundle_id,
                "first_layer": self.after_layer + 1, "handoff_layer": self.after_layer, "exit": self.exit,
                "exit_layer": self.layer, "d_model": self.d_model, "max_frames": self.max_frames,
                "decoder": self.decoder_name}

    def check(self, h: Handoff) -> None:
        """Raises HTTPConflict (another model or EXITS) or HTTPBadRequest (a shape this model cannot take)."""
        if h.model_hash != self.hash8:
            raise web.HTTPConflict(text=f"handoff is for model {h.model_hash}, this server runs model {self.hash8}")
        if h.layer != self.after_layer:
            raise web.HTTPConflict(text=f"handoff comes out of layer {h.layer}, this server continues after layer "
                                        f"{self.after_layer} (device and server bundles differ in EXITS)")
        t, d = h.hidden.shape
        if d != self.d_model:
            raise web.HTTPBadRequest(text=f"handoff state is {d} wide, the model's d_model is {self.d_model}")
        if t > self.max_frames:
            raise web.HTTPBadRequest(text=f"handoff has {t} frames, a window holds at most {self.max_frames}")
        if len(h.modules) != self.mask_modules:
            raise web.HTTPBadRequest(text=f"handoff carries a module mask of {len(h.modules)} modules, this "
                                          f"{'gated' if self.gated else 'early-exit'} bundle takes {self.mask_modules}")

    def run_batch(self, hiddens: list[np.ndarray], masks: list[list[bool]] | None = None) -> list[Decoded]:
        """Float hidden states [T_i, d] -> one model call on the batch padded to the longest T -> each item's
        decoded last exit over its own valid frames. Empty states (a window without an encoder frame) are
        answered without the model (an attention decoder's answer: no tokens, posterior 1). A gated bundle
        takes each handoff's module mask in `masks`."""
        live = [i for i, h in enumerate(hiddens) if len(h)]
        logps = [np.zeros((0, self.tokenizer.vocab_size), np.float32) for _ in hiddens]
        attention: dict[int, AttentionResult] = {}
        modules_run: dict[int, int] = {}
        if live:
            lengths = np.array([len(hiddens[i]) for i in live], np.int64)
            x = np.zeros((len(live), int(lengths.max()), self.d_model), np.float32)
            for row, i in enumerate(live):
                x[row, :lengths[row]] = hiddens[i]
            gates = None if not self.gated else server_gate_input(
                self.gated["predictor"], self.after_layer, int(self.gated["n_layers"]),
                [(masks or [])[i] for i in live], float(self.gated["beta"]))
            outs = self.model(x, lengths, gates)
            out = outs[self.output]
            if self.gated:
                modules_run = dict(zip(live, outs[SERVER_OUTPUT_GATES].sum(axis=(1, 2)).astype(int).tolist()))
            for row, i in enumerate(live):
                logps[i] = out[row, :lengths[row]]
            if self.decoder is not None:
                attention = dict(zip(live, self.decoder.decode(outs[SERVER_OUTPUT_MEMORY], lengths)))
        res = []
        for i, lp in enumerate(logps):
            if self.decoder is None:
                tokens = greedy_ctc(lp)
                res.append(Decoded(tokens, self.tokenizer.decode(tokens), frame_entropy(lp), lp))
                if self.gated:
                    res[-1].modules_run = modules_run.get(i, 0)
            else:
                a = attention.get(i)
                tokens = a.tokens if a else []
                res.append(Decoded(tokens, self.tokenizer.decode(tokens), a.posterior if a else 1.0, lp,
                                   Measure.NBEST_POSTERIOR, self.decoder_name))
        return res


@dataclass
class _Job:
    hidden: np.ndarray
    arrived: float                                   # time.perf_counter()
    future: asyncio.Future
    modules: list[bool] = field(default_factory=list)   # the handoff's module mask (gated bundles)


@dataclass
class BatchResult:
    decoded: Decoded
    queue_s: float
    compute_s: float
    batch_size: int


class Batcher:
    """Collects queued handoffs into batches and runs them one batch at a time in a worker thread."""

    def __init__(self, suffix: Suffix, opts: ServeOptions, metrics: ServerMetrics) -> None:
        self.suffix, self.metrics = suffix, metrics
        self.wait_s = max(0.0, opts.batch_wait_ms) / 1000
        self.max_batch, self.max_queue = max(1, opts.max_batch), max(1, opts.max_queue)
        self.pending: deque[_Job] = deque()
        self.wake = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eeasr-suffix")

    async def submit(self, hidden: np.ndarray, arrived: float, modules: list[bool] | None = None) -> BatchResult:
        if len(self.pending) >= self.max_queue:
            raise web.HTTPServiceUnavailable(text=f"server busy: {len(self.pending)} handoffs queued; retry later")
        job = _Job(hidden, arrived, asyncio.get_running_loop().create_future(), list(modules or []))
        self.pending.append(job)
        self.wake.set()
        return await job.future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.pending:
                self.wake.clear()
                await self.wake.wait()
            # wait for company until batch_wait after the OLDEST arrival: one that already waited behind the
            # previous batch goes at once
            while len(self.pending) < self.max_batch:
                left = self.pending[0].arrived + self.wait_s - time.perf_counter()
                if left <= 0:
                    break
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), left)
                except TimeoutError:
                    break
            jobs = [self.pending.popleft() for _ in range(min(self.max_batch, len(self.pending)))]
            jobs = [j for j in jobs if not j.future.done()]   # the client went away while queued
            if not jobs:
                continue
            start = time.perf_counter()
            try:
                decoded = await loop.run_in_executor(self.executor, self.suffix.run_batch, [j.hidden for j in jobs],
                                                     [j.modules for j in jobs])
            except Exception as e:  # noqa: BLE001 - every waiting request gets the failure, the loop goes on
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            compute = time.perf_counter() - start
            self.metrics.batch_size.observe(len(jobs))
            for j, d in zip(jobs, decoded):
                if not j.future.done():
                    j.future.set_result(BatchResult(d, start - j.arrived, compute, len(jobs)))

    def close(self) -> None:
        for j in self.pending:
            if not j.future.done():
                j.future.set_exception(web.HTTPServiceUnavailable(text="server is shutting down; retry"))
        self.pending.clear()
        self.executor.shutdown(wait=True, cancel_futures=True)


def _one_line(text: str | None, fallback: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[0] if lines else fallback


def build_app(suffix: Suffix, token: str, opts: ServeOptions) -> web.Application:
    """The aiohttp application; the batcher starts and stops with it."""
    metrics = ServerMetrics(suffix.bundle.model_hash, suffix.bundle.bundle_id)
    batcher = Batcher(suffix, opts, metrics)
    expected = f"Bearer {token}".encode()
    known = {HANDOFF_PATH, HEALTH_PATH, METRICS_PATH}

    @web.middleware
    async def one_line_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                              ) -> web.StreamResponse:
        """Every error is a one-line text reply (never a traceback); every reply is counted."""
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            headers = {k: v for k, v in e.headers.items() if k.lower() == "www-authenticate"}
            resp = web.Response(status=e.status, text=_one_line(e.text, e.reason) + "\n", headers=headers)
        except Exception as e:  # noqa: BLE001 - a bug must not leak a traceback to the client
            traceback.print_exc(file=sys.stderr)
            resp = web.Response(status=500, text=f"internal error: {type(e).__name__}: {_one_line(str(e), '')}\n")
        path = request.path if request.path in known else "other"
        metrics.requests.labels(path=path, status=str(resp.status)).inc()
        return resp

    async def handoff(request: web.Request) -> web.Response:
        arrived = time.perf_counter()
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            raise web.HTTPUnauthorized(text="missing or wrong token (send 'Authorization: Bearer TOKEN')",
                                       headers={"WWW-Authenticate": 'Bearer realm="eeasr"'})
        if request.content_length is not None and request.content_length > MAX_FRAME:
            raise web.HTTPRequestEntityTooLarge(MAX_FRAME, request.content_length,
                                                text=f"body of {request.content_length} bytes exceeds the "
                                                     f"{MAX_FRAME}-byte frame limit")
        metrics.in_flight.inc()
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise web.HTTPRequestEntityTooLarge(MAX_FRAME, text=f"body exceeds the {MAX_FRAME}-byte frame "
                                                                    "limit") from None
            try:
                msg = unpack_frame(body).msg
            except ProtocolError as e:
                raise web.HTTPBadRequest(text=f"bad frame: {e}") from None
            if not isinstance(msg, Handoff):
                raise web.HTTPBadRequest(text=f"bad frame: expected a HANDOFF frame, got {msg.TYPE.name}")
            suffix.check(msg)
            hidden = dequantize_int8(msg.hidden, msg.scale, msg.zero_point)
            res = await batcher.submit(hidden, arrived, msg.modules)
            total = time.perf_counter() - arrived
            metrics.queue.observe(res.queue_s)
            metrics.compute.observe(res.compute_s)
            metrics.total.observe(total)
            d = res.decoded
            return web.json_response({
                "utt_id": msg.utt_id, "window": msg.window, "exit": suffix.exit, "layer": suffix.layer,
                "measure": int(d.measure), "confidence": d.confidence, "tokens": d.tokens,
                "text": d.text, "decoder": d.decoder, "timings_ms": {"queue": round(res.queue_s * 1000, 3),
                                               "compute": round(res.compute_s * 1000, 3),
                                               "total": round(total * 1000, 3)},
                "batch_size": res.batch_size, **({} if d.modules_run is None else {"modules_run": d.modules_run})})
        finally:
            metrics.in_flight.dec()

    async def health(request: web.Request) -> web.Response:
        return web.json_response(suffix.health())

    async def prometheus(request: web.Request) -> web.Response:
        body, content_type = metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def batcher_task(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        batcher.close()

    app = web.Application(client_max_size=MAX_FRAME, middlewares=[one_line_errors])
    app.router.add_post(HANDOFF_PATH, handoff)
    app.router.add_get(HEALTH_PATH, health)
    app.router.add_get(METRICS_PATH, prometheus)
    app.cleanup_ctx.append(batcher_task)
    return app


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(suffix: Suffix, token: str, opts: ServeOptions, say: Callable[[str], None] = print) -> None:
    """Listen until SIGINT or SIGTERM, then stop accepting, finish what is running and return.
    Raises OSError when the address cannot be bound."""
    runner = web.AppRunner(build_app(suffix, token, opts), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, opts.host, opts.port)
        await site.start()
        port = runner.addresses[0][1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        say(f"listening on {url_of(opts.host, port)} (POST {HANDOFF_PATH}, GET {HEALTH_PATH}, GET {METRICS_PATH}); "
            "Ctrl-C stops")
        await stop.wait()
        say("stopping")
    finally:
        await runner.cleanup()


__all__ = ["ServeOptions", "Suffix", "Decoded", "Batcher", "BatchResult", "build_app", "serve", "url_of",
           "HANDOFF_PATH", "HEALTH_PATH", "METRICS_PATH", "FRAME_CONTENT_TYPE"]
