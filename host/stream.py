"""`eeasr-host stream`: audio to the device, handoffs to the server, results on screen and in a JSONL log.

Three actors. The *edge* (host/edge.py) is an attached ESP32-S3 or the simulated device; it answers each
window itself when its exit is confident, and otherwise sends its best local answer (RESULT, HANDED_OFF)
followed by a HANDOFF. The *uplink* (host/uplink.py) carries each HANDOFF to the server (`--server`, or an
`eeasr-host serve` started on loopback) from a worker thread, so a slow or absent server never stalls the
audio: the device's answer is shown marked as such, the handoff is retried with backoff, and the server's
answer replaces it when it comes (an update) or the run reports it unresolved. The *session*
(host/session.py) keeps every utterance and window, renders them (host/live.py) and writes the log.

WAV files are host-segmented: each file is one utterance (AUDIO with UTT_START ... UTT_END), sent once the
device has answered the previous file's last window. Microphone audio goes to the device unsegmented and the
device's endpointer (eeasr/endpoint.py) finds the utterances; the host runs the same endpointer on the same
samples, which tells it when each utterance's audio ended (for latency) and drives the level meter.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eeasr.audio import SAMPLE_RATE
from eeasr.bundle import Bundle, BundleError, load_bundle
from eeasr.endpoint import Endpointer
from eeasr.host.audio_source import Microphone, MicError, level_dbfs, load_wav
from eeasr.host.bundle_cache import default_bundle
from eeasr.host.edge import Edge, EdgeError
from eeasr.host.link import DeviceGone
from eeasr.host.live import LiveView
from eeasr.host.server_client import ServerClient, ServerError, ServerUnavailable, start_local_server
from eeasr.host.session import Session, UttState
from eeasr.host.uplink import Uplink
from eeasr.protocol import AudioFlag

EXIT_OK, EXIT_BAD_INPUT, EXIT_UNRESOLVED = 0, 1, 3


class StreamError(RuntimeError):
    """Something the stream cannot run without (bundle, device, server, microphone); one line saying what to do."""


def read_refs(path: Path) -> dict[Path, str]:
    """Transcripts by audio file, from an eeasr manifest (JSONL with `path` and `text`)."""
    from eeasr.manifest import read_manifest

    try:
        return {u.path.resolve(): u.text for u in read_manifest(path)}
    except (OSError, ValueError) as e:
        raise StreamError(f"--refs {path}: {e}") from None


@dataclass
class StreamOptions:
    wavs: list[Path] = field(default_factory=list)
    mic: bool = False
    mic_device: str | int | None = None
    device: str | None = None           # serial port; None: find an ESP32-S3, else simulate
    simulate: bool = False
    bundle: Path | None = None
    server: str | None = None           # None: start one on loopback
    token: str | None = None
    log: Path | None = None
    refs: Path | None = None
    retry_for: float = 30.0             # after the audio: how long unresolved handoffs keep being retried
    server_timeout: float = 10.0
    utterances: int | None = None       # mic: stop after this many
    queue: int = 256


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the run like Ctrl-C: results so far are kept, logged and summarized."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_stream(opts: StreamOptions, view: LiveView | None = None) -> int:
    """Run `eeasr-host stream`; returns the exit status (EXIT_OK, EXIT_BAD_INPUT, EXIT_UNRESOLVED)."""
    view = view or LiveView()
    if opts.mic == bool(opts.wavs):
        raise StreamError("give either --mic or --wav FILE...")
    refs = read_refs(opts.refs) if opts.refs else {}
    try:
        bundle_dir = opts.bundle or default_bundle(view.say)
        bundle = load_bundle(bundle_dir)
    except BundleError as e:
        raise StreamError(str(e)) from None
    if bundle.manifest.get("server") is None:
        raise StreamError(f"{bundle_dir}: every exit of this bundle is on the device; there is nothing to hand off")
    with ExitStack() as stack, _terminate_as_interrupt():
        if opts.log:
            opts.log.parent.mkdir(parents=True, exist_ok=True)
        log = stack.enter_context(open(opts.log, "w", encoding="utf-8")) if opts.log else None
        mic = stack.enter_context(_open_mic(opts.mic_device)) if opts.mic else None
        session = Session(bundle, view, log, refs)
        edge = Edge(bundle, view, opts.device, opts.simulate)
        stack.callback(edge.close)
        stack.callback(view.close)
        client = _server(opts, bundle, view, stack)
        session.uplink = Uplink(client, opts.queue)
        stopped: BaseException | None = None
        try:
            edge.connect()
            session.new_link()
            if mic is not None:
                _run_mic(opts, session, edge, mic)
            else:
                _run_wavs(opts, session, edge)
            _await_handoffs(session, opts.retry_for, view)
        except KeyboardInterrupt as e:
            stopped = e
            view.say("interrupted: stopping; what the server has not answered is reported unresolved")
        except (StreamError, EdgeError) as e:   # e.g. the device is gone for good: report what came back
            stopped = StreamError(str(e))
        session.finish()
        if session.audio_samples or session.bad_inputs:
            s = session.summary()
            session.write(s.to_json())
            view.summary(s)
        if stopped is not None and opts.wavs:
            left = len(opts.wavs) - sum(u.device_done for u in session.utts) - session.bad_inputs
            if left > 0:
                view.say(f"{left} input file(s) were not streamed to the end")
        if isinstance(stopped, StreamError):
            raise stopped
    if session.unresolved or session.rejected:
        return EXIT_UNRESOLVED
    return EXIT_BAD_INPUT if session.bad_inputs else EXIT_OK


def _server(opts: StreamOptions, bundle: Bundle, view: LiveView, stack: ExitStack) -> ServerClient:
    if opts.server is None:
        token = secrets.token_urlsafe(18)
        view.say("starting the server (eeasr-host serve) on loopback")
        try:
            server = stack.enter_context(start_local_server(bundle.path, token))
        except RuntimeError as e:
            raise StreamError(str(e)) from None
        view.say(f"server: {server.url} (local, for this run)")
        return stack.enter_context(ServerClient(server.url, token, opts.server_timeout))
    if not opts.token:
        raise StreamError("--server needs the server's token: --token TOKEN or EEASR_TOKEN")
    client = stack.enter_context(ServerClient(opts.server, opts.token, opts.server_timeout))
    try:
        h = client.health()
    except ServerUnavailable as e:
        view.say(f"{e}; the device's answers are shown until it comes back (handoffs are retried)")
        return client
    except ServerError as e:
        raise StreamError(f"--server {opts.server}: {e}") from None
    if h.get("model_hash") != bundle.model_hash:
        raise StreamError(f"the server at {opts.server} runs model {h.get('model_hash')}, the device's bundle is "
                          f"model {bundle.model_hash}: start it with the same bundle (eeasr-host serve --bundle DIR)")
    view.say(f"server: {opts.server} (model {bundle.model_hash[:16]})")
    return client


def _pump(session: Session, edge: Edge, current: UttState | None, timeout: float) -> None:
    """Take what the device and the server have sent; raises DeviceGone when the device went away."""
    assert edge.link is not None
    for msg in edge.link.receive(timeout):
        session.on_device(msg, current)
    session.drain_outcomes()


def _run_wavs(opts: StreamOptions, session: Session, edge: Edge) -> None:
    view = session.view
    for path in opts.wavs:
        w = load_wav(path)
        if w.error is not None or w.pcm is None:
            session.bad_inputs += 1
            view.say(f"error: {w.error}")
            session.write({"event": "error", "wav": str(path), "error": w.error})
            continue
        if w.note:
            view.say(f"note: {w.note}")
        u = session.new_utt(Path(path))
        view.utterance(u.utt, f"{path} ({len(w.pcm) / SAMPLE_RATE:.2f} s)")
        while True:
            try:
                assert edge.link is not None
                edge.link.send_audio(w.pcm, AudioFlag.UTT_START | AudioFlag.UTT_END)
                u.audio_end = time.monotonic()
                deadline = u.audio_end + 60.0 + 5.0 * len(w.pcm) / SAMPLE_RATE
                while not u.device_done:
                    if time.monotonic() > deadline:
                        raise DeviceGone(f"no final result for utterance {u.utt} within "
                                         f"{deadline - u.audio_end:.0f} s of its end")
                    _pump(session, edge, u, 0.05)
                session.audio_samples += len(w.pcm)
                break
            except DeviceGone as e:
                edge.reconnect(str(e))
                session.new_link()
                session.restart(u)
                view.say(f"utt {u.utt}: sending it again")


def _open_mic(device: str | int | None) -> Microphone:
    try:
        return Microphone(device)
    except MicError as e:
        raise StreamError(str(e)) from None


def _run_mic(opts: StreamOptions, session: Session, edge: Edge, mic: Microphone) -> None:
    view = session.view
    mirror, sent = Endpointer(), 0       # the device's endpointer, replayed on the samples it is sent
    mic.start()
    stop = f"after {opts.utterances} utterance(s)" if opts.utterances else "with Ctrl-C"
    view.say(f"listening on {mic.name} (16 kHz mono); speak, stop {stop}")
    try:
        while not _mic_done(session, opts.utterances):
            block = mic.read(0.05)
            try:
                if block is not None:
                    now = time.monotonic()
                    for ev in mirror.push(block):
                        if ev.kind == "end":   # when that sample was recorded
                            session.mic_ends.append(now - (sent + len(block) - ev.sample) / SAMPLE_RATE)
                    sent += len(block)
                    session.audio_samples += len(block)
                    view.meter(level_dbfs(block), mirror.in_speech)
                    assert edge.link is not None
                    edge.link.send_audio(block)
                _pump(session, edge, None, 0.0)
            except DeviceGone as e:
                _mic_reconnect(session, edge, str(e))
                mirror, sent = Endpointer(), 0
    except KeyboardInterrupt:
        view.say("stopping: the utterance in progress is closed and answered (Ctrl-C again quits at once)")
    finally:
        mic.close()
        if mic.overflows:
            view.say(f"note: the microphone overflowed {mic.overflows} time(s) (audio was lost there)")
    # Close an utterance still open and collect its last windows.
    if mirror.flush() is not None:
        session.mic_ends.append(time.monotonic())
    try:
        assert edge.link is not None
        edge.link.send_audio(np.zeros(0, np.int16), AudioFlag.STREAM_END)
        edge.link.wait_acked(30.0)
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and not all(u.device_done for u in session.utts):
            _pump(session, edge, None, 0.05)
    except DeviceGone as e:
        view.say(f"device lost at the end of the stream: {e}")


def _mic_done(session: Session, limit: int | None) -> bool:
    return limit is not None and sum(u.device_done for u in session.utts) >= limit


def _mic_reconnect(session: Session, edge: Edge, why: str) -> None:
    open_utts = [u for u in session.utts if not u.device_done]
    edge.reconnect(why)
    session.new_link()
    for u in open_utts:
        session.view.say(f"utt {u.utt}: cut short by the device loss")
        u.final_window = max(u.windows, default=0)
        for w in sorted(u.awaiting_handoff):
            session.unresolved += 1
            session.keep_local(u.windows[w], "unresolved", "the device went away before its handoff")
        u.awaiting_handoff.clear()


def _await_handoffs(session: Session, retry_for: float, view: LiveView) -> None:
    """After the audio: give the server up to `retry_for` s to answer the handoffs still waiting."""
    assert session.uplink is not None
    deadline = time.monotonic() + retry_for
    said = False
    while session.uplink.pending and time.monotonic() < deadline:
        nxt = session.uplink.next_retry_in()
        if nxt is not None and nxt > 0.5 and not said:
            view.say(f"{session.uplink.pending} handoff(s) waiting for the server; retrying for up to "
                     f"{retry_for:g} s (Ctrl-C to stop)")
            said = True
        view.status(f"{session.uplink.pending} handoff(s) waiting for the server"
                    + (f"; next try in {nxt:.1f} s" if nxt else ""))
        time.sleep(0.05)
        session.drain_outcomes()
    session.drain_outcomes()


__all__ = ["StreamOptions", "StreamError", "run_stream", "read_refs", "EXIT_OK", "EXIT_BAD_INPUT", "EXIT_UNRESOLVED"]
