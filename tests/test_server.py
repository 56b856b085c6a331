"""The suffix server as users run it: `eeasr-host serve` in a real subprocess on loopback, a small random-model
bundle, real HTTP through host/server_client.py. Answers must equal the server ONNX run directly; batching must
not change them; bad input gets the right status and a one-line reason; the metrics count what happened."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("aiohttp")
requests = pytest.importorskip("requests")
prom_parser = pytest.importorskip("prometheus_client.parser")

from eeasr.bundle import Bundle, dequantize, load_bundle  # noqa: E402
from eeasr.exits import frame_entropy, greedy_ctc  # noqa: E402
from eeasr.host.server import Suffix  # noqa: E402
from eeasr.host.server_client import (LocalServer, ServerClient, ServerRejected, ServerStartError,  # noqa: E402
                                      ServerUnavailable, start_local_server)
from eeasr.protocol import MAX_FRAME, Handoff, Result, pack_frame  # noqa: E402
from eeasr.server_model import ServerModel, output_name  # noqa: E402
from eeasr.tokenizer import Tokenizer  # noqa: E402

TOKEN = "test-token-5f0c"


def handoff(b: Bundle, t: int, seed: int, *, utt_id: int = 7, window: int = 0, model_hash: str | None = None,
            layer: int | None = None, d: int | None = None) -> Handoff:
    """A handoff as the device sends it: int8 state [t, d] with the bundle's handoff quantization."""
    q = b.handoff_qparams()
    hidden = np.random.default_rng(seed).integers(-128, 128, (t, d or b.manifest["model"]["d_model"]), dtype=np.int8)
    return Handoff(utt_id, window, 0, b.manifest["device"]["handoff"]["layer"] if layer is None else layer,
                   model_hash or b.model_hash[:16], q.scale, q.zero_point, hidden)


def frame(h: Handoff) -> bytes:
    return pack_frame(h, seq=3)


def reference(b: Bundle, h: Handoff) -> tuple[np.ndarray, list[int], str]:
    """The server ONNX run directly on one handoff: last exit's log-probs over the valid frames, tokens, text."""
    model = ServerModel.from_bundle(b)
    last = b.manifest["exits"][-1]["index"]
    x = dequantize(h.hidden, b.handoff_qparams())[None]
    logp = model(x, np.array([len(h.hidden)]))[output_name(last)][0, :len(h.hidden)]
    tokens = greedy_ctc(logp)
    return logp, tokens, Tokenizer.load(b.file("tokenizer.model")).decode(tokens)


@pytest.fixture(scope="module")
def bundle(small_bundle: Path) -> Bundle:
    return load_bundle(small_bundle)


@pytest.fixture(scope="module")
def server(small_bundle: Path) -> LocalServer:
    # a long batch window, so that concurrent requests surely share model calls
    with start_local_server(small_bundle, TOKEN, batch_wait_ms=50, max_batch=8) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: LocalServer) -> ServerClient:
    with server.client(timeout=30) as c:
        yield c


def post(server: LocalServer, body: bytes, token: str | None = TOKEN, **kw) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(server.url + "/v1/handoff", data=body, headers=headers, timeout=30, **kw)


def assert_one_line(r: requests.Response, status: int, *words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.text.count("\n") <= 1 and "Traceback" not in r.text, r.text
    for w in words:
        assert w in r.text, r.text


def test_health_needs_no_token(server: LocalServer, bundle: Bundle) -> None:
    r = requests.get(server.url + "/healthz", timeout=10)
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok" and h["model_hash"] == bundle.model_hash and h["bundle_id"] == bundle.bundle_id
    assert h["first_layer"] == bundle.manifest["server"]["after_layer"] + 1 == 3
    assert ServerClient(server.url, "wrong token").health() == h


def test_handoff_round_trip_equals_server_model(client: ServerClient, bundle: Bundle) -> None:
    last = bundle.manifest["exits"][-1]
    n_tokens = 0
    for i, t in enumerate([1, 5, 11, bundle.manifest["window"]["encoder_frames"]]):
        h = handoff(bundle, t, seed=i, utt_id=100 + i, window=i)
        got = client.handoff(frame(h))
        logp, tokens, text = reference(bundle, h)
        assert (got["utt_id"], got["window"], got["exit"], got["layer"], got["measure"]) == \
            (100 + i, i, last["index"], last["layer"], 0)
        assert got["tokens"] == tokens and got["text"] == text
        assert got["confidence"] == pytest.approx(frame_entropy(logp), rel=1e-5, abs=1e-9)
        assert set(got["timings_ms"]) == {"queue", "compute", "total"} and got["batch_size"] >= 1
        assert got["timings_ms"]["total"] >= got["timings_ms"]["compute"] >= 0
        n_tokens += len(tokens)
    assert n_tokens > 0  # the comparison covered real token sequences, not only blanks


def test_window_without_encoder_frames(client: ServerClient, bundle: Bundle) -> None:
    got = client.handoff(frame(handoff(bundle, 0, seed=0)))
    assert got["tokens"] == [] and got["text"] == "" and got["confidence"] == 0.0


def test_batched_equals_one_at_a_time(bundle: Bundle) -> None:
    suffix = Suffix(bundle)
    q = bundle.handoff_qparams()
    hiddens = [dequantize(handoff(bundle, t, seed=10 + i).hidden, q) for i, t in enumerate([16, 3, 9, 0, 16, 1, 12])]
    batched = suffix.run_batch(hiddens)
    for h, b in zip(hiddens, batched):
        (alone,) = suffix.run_batch([h])
        assert b.logp.shape == alone.logp.shape == (len(h), suffix.tokenizer.vocab_size)
        assert np.abs(b.logp - alone.logp).max(initial=0.0) < 1e-4
        assert b.tokens == alone.tokens and b.text == alone.text


def test_concurrent_requests_are_batched_and_unchanged(client: ServerClient, bundle: Bundle) -> None:
    frames = [frame(handoff(bundle, 1 + (3 * i) % 16, seed=200 + i, utt_id=i)) for i in range(24)]
    alone = [client.handoff(f) for f in frames]
    with ThreadPoolExecutor(len(frames)) as pool:
        together = list(pool.map(client.handoff, frames))
    assert max(r["batch_size"] for r in together) > 1
    for a, b in zip(alone, together):
        assert (a["utt_id"], a["tokens"], a["text"]) == (b["utt_id"], b["tokens"], b["text"])
        assert b["confidence"] == pytest.approx(a["confidence"], rel=1e-4, abs=1e-9)


def test_unauthorized(server: LocalServer, bundle: Bundle) -> None:
    body = frame(handoff(bundle, 4, seed=0))
    for token in (None, "wrong"):
        r = post(server, body, token)
        assert_one_line(r, 401, "token")
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert_one_line(requests.post(server.url + "/v1/handoff", data=body, auth=("u", TOKEN), timeout=10), 401)
    assert_one_line(post(server, b"garbage", token=None), 401)  # the token is checked before the body
    with pytest.raises(ServerRejected) as e:
        ServerClient(server.url, "wrong").handoff(body)
    assert e.value.status == 401 and "token" in e.value.reason


def test_model_mismatch(server: LocalServer, client: ServerClient, bundle: Bundle) -> None:
    assert_one_line(post(server, frame(handoff(bundle, 4, seed=0, model_hash="0123456789abcdef"))), 409,
                    "0123456789abcdef", bundle.model_hash[:16])
    assert_one_line(post(server, frame(handoff(bundle, 4, seed=0, layer=1))), 409, "layer 1", "EXITS")
    with pytest.raises(ServerRejected) as e:
        client.handoff(frame(handoff(bundle, 4, seed=0, model_hash="ffffffffffffffff")))
    assert e.value.status == 409


def test_bad_frames(server: LocalServer, bundle: Bundle) -> None:
    good = frame(handoff(bundle, 4, seed=0))
    corrupt = bytearray(good)
    corrupt[20] ^= 0x40
    cases = {
        good[:-1]: "does not match its header",
        good[:8]: "shorter than header",
        bytes(corrupt): "crc mismatch",
        b"": "shorter than header",
        pack_frame(Result(1, 0, 0, 1, 1, 0, 0.5, [3], "hi"), 0): "expected a HANDOFF frame, got RESULT",
        frame(handoff(bundle, 4, seed=0, d=33)): "d_model is 32",
        frame(handoff(bundle, 17, seed=0)): "at most 16",
        b"\x00" * MAX_FRAME: "does not match its header",   # exactly at the size limit: a bad frame, not 413
    }
    for body, why in cases.items():
        assert_one_line(post(server, body), 400, why)
    with pytest.raises(ServerRejected) as e:
        ServerClient(server.url, TOKEN).handoff(good[:-1])
    assert e.value.status == 400 and "does not match its header" in e.value.reason


def test_oversize_body(server: LocalServer) -> None:
    assert_one_line(post(server, b"\x01" * (MAX_FRAME + 1)), 413, str(MAX_FRAME))
    assert_one_line(post(server, b"\x01" * 200_000), 413, str(MAX_FRAME))
    # chunked, without a Content-Length: refused once the read passes the limit
    assert_one_line(post(server, iter([b"\x01" * 10_000] * 10)), 413, str(MAX_FRAME))


def metric_values(server: LocalServer) -> dict[tuple[str, tuple], float]:
    r = requests.get(server.url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    out = {}
    for fam in prom_parser.text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests(server: LocalServer, client: ServerClient, bundle: Bundle) -> None:
    def count(status: str) -> float:
        return m.get(("eeasr_http_requests_total", (("path", "/v1/handoff"), ("status", status))), 0.0)

    m = metric_values(server)
    before = {s: count(s) for s in ("200", "400", "401")}
    batches = m[("eeasr_batch_size_count", ())]
    answered = m[("eeasr_handoff_seconds_count", ())]
    for i in range(3):
        client.handoff(frame(handoff(bundle, 4, seed=i)))
    post(server, b"junk")
    post(server, b"junk", token=None)
    post(server, b"junk", token="wrong")
    m = metric_values(server)
    assert {s: count(s) - before[s] for s in before} == {"200": 3, "400": 1, "401": 2}
    assert m[("eeasr_handoff_seconds_count", ())] - answered == 3
    assert m[("eeasr_handoff_queue_seconds_count", ())] >= 3 and m[("eeasr_handoff_compute_seconds_count", ())] >= 3
    assert 1 <= m[("eeasr_batch_size_count", ())] - batches <= 3
    assert m[("eeasr_handoffs_in_flight", ())] == 0
    assert m[("eeasr_server_info", (("bundle_id", bundle.bundle_id), ("model_hash", bundle.model_hash)))] == 1


def test_client_when_server_is_down(small_bundle: Path, bundle: Bundle) -> None:
    body = frame(handoff(bundle, 4, seed=0))
    with start_local_server(small_bundle, TOKEN) as s:
        c = s.client(timeout=10)
        assert c.handoff(body)["exit"] == 4
        assert s.stop() == 0  # SIGTERM: a clean shutdown
        assert "stopped" in s.log_tail()
        with pytest.raises(ServerUnavailable, match="Connection refused"):
            c.handoff(body)
        with pytest.raises(ServerUnavailable):
            c.health()
    # a server that accepts the connection and never answers: the client's timeout
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(1)
        with pytest.raises(ServerUnavailable, match="no reply within 0.5 s"):
            ServerClient(f"http://127.0.0.1:{mute.getsockname()[1]}", TOKEN, timeout=0.5).handoff(body)


def test_start_failure_reports_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="no manifest.json") as e:
        start_local_server(tmp_path, TOKEN, startup_timeout=60)
    assert "exited with code 1" in str(e.value) and "Traceback" not in str(e.value)


def test_serve_without_token_generates_one_and_stops_on_sigint(small_bundle: Path, bundle: Bundle,
                                                                tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EEASR_TOKEN"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "eeasr-host"), "serve", "--bundle",
                                 str(small_bundle), "--port", "0"], stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while not re.search(r"listening on (http://\S+)", log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        url = re.search(r"listening on (http://\S+)", text).group(1)
        token = re.search(r"token \(generated.*\): (\S+)", text).group(1)
        assert len(token) >= 24
        assert ServerClient(url, token).handoff(frame(handoff(bundle, 4, seed=0)))["exit"] == 4
        with pytest.raises(ServerRejected):
            ServerClient(url, "").handoff(frame(handoff(bundle, 4, seed=0)))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert log.read_text().rstrip().endswith("stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
