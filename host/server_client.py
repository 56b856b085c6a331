"""Talking to the suffix server (`eeasr-host serve`): a synchronous client, and a local server started as a
real subprocess on loopback (what `eeasr-host stream` uses when no --server is given, and what tests use).

    with start_local_server("bundles/exits2", token) as server:
        client = ServerClient(server.url, token, timeout=10)
        client.health()                # {"status": "ok", "model_hash": ..., ...}
        client.handoff(frame_bytes)    # {"utt_id", "window", "exit", "text", "tokens", ...}

Failures are split by what the caller should do about them: `ServerUnavailable` (refused, timed out, reset,
5xx: retry with backoff) and `ServerRejected` (4xx: the handoff itself is refused; retrying cannot help).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

from eeasr.host.server import FRAME_CONTENT_TYPE, HANDOFF_PATH, HEALTH_PATH


class ServerError(Exception):
    """Base of the client's errors; the text is one line."""


class ServerUnavailable(ServerError):
    """The server could not answer (connection refused or reset, timeout, 5xx): retryable."""


class ServerRejected(ServerError):
    """The server refused the request (4xx) with its one-line reason: not retryable."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"server refused the request ({status}): {reason}")
        self.status = status
        self.reason = reason


def _why(e: requests.RequestException, timeout: float) -> str:
    """A one-line cause. requests' own message tells urllib3's whole retry story; the OSError somewhere in the
    chain (ConnectionError -> MaxRetryError.reason -> NewConnectionError -> ConnectionRefusedError) says it best."""
    if isinstance(e, requests.Timeout):
        return f"no reply within {timeout:g} s"
    seen: set[int] = set()
    todo: list[object] = [e]
    while todo:
        x = todo.pop()
        if not isinstance(x, BaseException) or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.strerror:
            return x.strerror
        todo += [x.__cause__, x.__context__, getattr(x, "reason", None), *x.args]
    return type(e).__name__


class ServerClient:
    """Synchronous client of one server. Safe to share between threads (one HTTP session per thread, each
    keeping its connection alive)."""

    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.headers["Authorization"] = f"Bearer {self.token}"
            with self._lock:
                self._sessions.append(s)
        return s

    def _request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        try:
            r = self._session().request(method, self.url + path, timeout=self.timeout, **kw)
        except requests.RequestException as e:
            raise ServerUnavailable(f"server {self.url} unavailable: {_why(e, self.timeout)}") from None
        reason = next((ln.strip() for ln in r.text.splitlines() if ln.strip()), r.reason or "no reason given")
        if r.status_code >= 500:
            raise ServerUnavailable(f"server {self.url} failed ({r.status_code}): {reason}")
        if r.status_code != 200:
            raise ServerRejected(r.status_code, reason)
        try:
            out = r.json()
        except ValueError:
            raise ServerRejected(r.status_code, f"{self.url}{path} answered something other than JSON; is it "
                                                "an eeasr server?") from None
        if not isinstance(out, dict):
            raise ServerRejected(r.status_code, f"{self.url}{path} answered JSON that is not an object")
        return out

    def handoff(self, frame: bytes) -> dict[str, Any]:
        """POST one HANDOFF frame (eeasr.protocol.pack_frame, no COBS); the server's JSON result."""
        return self._request("POST", HANDOFF_PATH, data=bytes(frame),
                             headers={"Content-Type": FRAME_CONTENT_TYPE})

    def health(self) -> dict[str, Any]:
        """GET /healthz: status, model hash, bundle id, the first layer the server runs."""
        return self._request("GET", HEALTH_PATH)

    def close(self) -> None:
        with self._lock:
            for s in self._sessions:
                s.close()
            self._sessions.clear()
        self._local = threading.local()

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ServerStartError(RuntimeError):
    """`eeasr-host serve` did not come up; the text ends with the tail of its output."""


_LISTENING = re.compile(r"listening on (http://\S+)")


class LocalServer:
    """An `eeasr-host serve` subprocess on loopback; `stop()` (or leaving the `with`) ends it with SIGTERM."""

    def __init__(self, process: subprocess.Popen, log_path: Path, token: str) -> None:
        self.process = process
        self.log_path = log_path
        self.token = token
        self.url = ""

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def client(self, timeout: float = 10.0) -> ServerClient:
        return ServerClient(self.url, self.token, timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            rc = self.process.poll()
            if rc is not None:
                raise ServerStartError(f"eeasr-host serve exited with code {rc} before it was ready; its output "
                                       f"ends:\n{self.log_tail()}")
            if not self.url:
                m = _LISTENING.search(self.log_tail(200))
                self.url = m.group(1) if m else ""
            if self.url:
                try:
                    if ServerClient(self.url, self.token, timeout=2.0).health().get("status") == "ok":
                        return
                except ServerError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(f"eeasr-host serve was not ready after {timeout:g} s; its output "
                                       f"ends:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `timeout` s; returns the exit code (0 after a clean shutdown)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)


def start_local_server(bundle_dir: str | Path, token: str, port: int = 0, *, batch_wait_ms: float | None = None,
                       max_batch: int | None = None, threads: int | None = None,
                       startup_timeout: float = 60.0) -> LocalServer:
    """Launch `eeasr-host serve --bundle BUNDLE_DIR` on 127.0.0.1 (port 0: a free one) with this interpreter,
    wait until /healthz answers, and return it. Raises ServerStartError with the server's last output lines
    when it exits or is not ready within `startup_timeout` s. The token travels in the environment, not argv."""
    cmd = [sys.executable, "-c", "import sys; from eeasr.host.cli import main; sys.exit(main(prog_name='eeasr-host'))",
           "serve", "--bundle", str(bundle_dir), "--host", "127.0.0.1", "--port", str(port)]
    for flag, value in (("--batch-wait-ms", batch_wait_ms), ("--max-batch", max_batch), ("--threads", threads)):
        if value is not None:
            cmd += [flag, str(value)]
    fd, log_name = tempfile.mkstemp(prefix="eeasr-serve-", suffix=".log")
    env = {**os.environ, "EEASR_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    with os.fdopen(fd, "wb") as log:  # a file, not a pipe: a chatty server can never block on a full pipe
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)   # the host's Ctrl-C must not stop its server mid-handoff
    server = LocalServer(proc, Path(log_name), token)
    try:
        server._wait_ready(startup_timeout)
    except BaseException:
        server.stop()
        server.log_path.unlink(missing_ok=True)
        raise
    return server


__all__ = ["ServerClient", "ServerError", "ServerUnavailable", "ServerRejected", "LocalServer", "ServerStartError",
           "start_local_server"]
