"""One `eeasr-host stream` run's state: every utterance and window, what became of each window's answer, the
JSONL log, and the summary. Only the stream's main thread touches it; the device's messages and the
server's outcomes are fed in by `on_device` and `drain_outcomes`.

A window's answer has a status. "device": it ended on the device. "handed_off": the device's local answer
while its handoff is with the server. "server": the server's answer (it replaces the device's). When the
server cannot be reached, "local_fallback": the device's answer is shown, marked, and the handoff retried;
"rejected": the server refused the handoff, the device's answer stands; "unresolved": the run ended before
the server answered, the device's answer stands. "no_speech": the utterance held no speech.
"""

from __future__ import annotations

import json
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from eeasr.audio import SAMPLE_RATE
from eeasr.bundle import Bundle
from eeasr.host.link import DeviceGone
from eeasr.host.live import LiveView, fmt_bytes, fmt_ms
from eeasr.host.uplink import HandoffJob, Uplink
from eeasr.metrics import error_rate
from eeasr.protocol import Error, Handoff, Hello, Info, Measure, Message, Result, ResultFlag, pack_frame
from eeasr.tokenizer import Tokenizer

ANSWERED = ("device", "server", "rejected", "unresolved", "no_speech")
KEPT_LOCAL = ("local_fallback", "rejected", "unresolved")


@dataclass
class WindowRecord:
    """One window's current answer: what the live view shows and the log records."""
    utt: int
    window: int
    source: str                   # "device" or "server"
    exit: int
    layer: int
    measure: int
    confidence: float
    tokens: list[int]
    text: str
    flags: int                    # RESULT flags (LOCAL_FALLBACK added by the host)
    status: str                   # see ANSWERED / KEPT_LOCAL above
    latency_ms: float | None      # end of the utterance's audio -> this answer (None: the audio had not ended)
    up_bytes: int = 0             # HANDOFF frame bytes sent to the server for this window
    wav: str | None = None
    detail: str | None = None     # why the server did not answer
    decoder: str = "ctc"          # which decoder answered: device exits greedy CTC; the server says (its "decoder")

    def to_json(self) -> dict[str, Any]:
        return {"event": "result", "utt": self.utt, "window": self.window, "source": self.source,
                "exit": self.exit, "layer": self.layer, "measure": Measure(self.measure).name.lower()
                if self.measure in Measure._value2member_map_ else self.measure,
                "confidence": round(float(self.confidence), 6), "decoder": self.decoder, "text": self.text,
                "tokens": list(self.tokens),
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
                "up_bytes": self.up_bytes, "flags": flag_names(self.flags), "status": self.status,
                "wav": self.wav, "detail": self.detail}


def flag_names(flags: int) -> list[str]:
    return [f.name for f in ResultFlag if flags & f]


@dataclass
class UttState:
    utt: int
    wav: Path | None = None
    ref: str | None = None
    mic_index: int | None = None             # mic: the how-manieth utterance the device endpointed
    audio_end: float | None = None           # time.monotonic() when its last sample went to the device
    windows: dict[int, WindowRecord] = field(default_factory=dict)
    final_window: int | None = None
    awaiting_handoff: set[int] = field(default_factory=set)   # HANDED_OFF windows whose HANDOFF has not come
    gen: int = 0                             # bumped when the utterance is resent after a device loss
    joined_shown: bool = False

    @property
    def device_done(self) -> bool:
        return self.final_window is not None and not self.awaiting_handoff

    @property
    def answered(self) -> bool:
        return self.device_done and all(w.status in ANSWERED for w in self.windows.values())

    @property
    def text(self) -> str:
        return " ".join(w.text for _, w in sorted(self.windows.items()) if w.text)

    @property
    def ended_on(self) -> str:
        """'no_speech', 'device', 'server' or 'kept_local' (the device's answer stands for some window)."""
        st = [w.status for w in self.windows.values()]
        if st and all(s == "no_speech" for s in st):
            return "no_speech"
        if any(s in KEPT_LOCAL or s == "handed_off" for s in st):
            return "kept_local"
        return "server" if "server" in st else "device"

    @property
    def latency_ms(self) -> float | None:
        got = [w.latency_ms for w in self.windows.values() if w.latency_ms is not None]
        return max(got) if got else None


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 1) if values else None


@dataclass
class Summary:
    """What a run amounts to: where utterances ended, WER against references, latency, bytes sent upward."""
    utterances: int
    ended: dict[str, int]
    bad_inputs: int
    unresolved: int
    rejected: int
    wer: float | None
    ref_words: int
    latency_device_ms: list[float]
    latency_server_ms: list[float]
    up_bytes: int
    audio_s: float
    rows: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"event": "summary", "utterances": self.utterances, **{f"ended_{k}": v for k, v in self.ended.items()},
                "bad_inputs": self.bad_inputs, "unresolved_handoffs": self.unresolved,
                "rejected_handoffs": self.rejected, "wer": self.wer,
                "ref_words": self.ref_words, "latency_ms_mean": _mean(self.latency_device_ms + self.latency_server_ms),
                "latency_ms_device": _mean(self.latency_device_ms), "latency_ms_server": _mean(self.latency_server_ms),
                "up_bytes": self.up_bytes, "audio_s": round(self.audio_s, 3),
                "pcm_bytes": int(round(self.audio_s * SAMPLE_RATE * 2))}

    def table(self) -> str:
        lines = []
        if self.rows and any(r["ref"] is not None for r in self.rows):
            lines += ["", f"{'utt':>3}  {'ended on':<10} {'latency':>8}  {'WER':>5}  text / reference"]
            for r in self.rows:
                w = "" if r["wer"] is None else f"{r['wer']:.0f}%"
                lines.append(f"{r['utt']:>3}  {r['ended_on']:<10} {fmt_ms(r['latency_ms']):>8}  {w:>5}  "
                             f"{r['text']!r}")
                if r["ref"] is not None:
                    lines.append(f"{'':>33}{r['ref']!r}  ({r['name']})")
        dev, srv = self.latency_device_ms, self.latency_server_ms
        pcm = self.audio_s * SAMPLE_RATE * 2
        rows = [("utterances", f"{self.utterances}"),
                ("  ended on the device", f"{self.ended['device']}"),
                ("  ended on the server", f"{self.ended['server']}"),
                ("  device's answer kept", f"{self.ended['kept_local']}  (server unreachable or refused)"),
                ("  no speech", f"{self.ended['no_speech']}")]
        if self.bad_inputs:
            rows.append(("unreadable inputs", f"{self.bad_inputs}"))
        if self.unresolved:
            rows.append(("unresolved handoffs", f"{self.unresolved}  (the device's answers stand; see the log)"))
        if self.rejected:
            rows.append(("refused handoffs", f"{self.rejected}  (the server said why; see the log)"))
        if self.wer is not None:
            rows.append(("WER vs references", f"{self.wer:.1f} %  ({self.ref_words} words)"))
        rows.append(("latency, end of audio -> text", f"mean {fmt_ms(_mean(dev + srv))}; ended on the device "
                     f"{fmt_ms(_mean(dev))} ({len(dev)}), on the server {fmt_ms(_mean(srv))} ({len(srv)})"))
        if self.audio_s > 0:
            rows.append(("bytes upward", f"{fmt_bytes(self.up_bytes)} for {self.audio_s:.1f} s of audio = "
                         f"{fmt_bytes(self.up_bytes / self.audio_s)}/s; raw 16-bit PCM "
                         f"{fmt_bytes(pcm / self.audio_s)}/s ({100 * self.up_bytes / pcm:.1f} % of it)"))
        width = max(len(k) for k, _ in rows)
        return "\n".join([*lines, "", "summary", *(f"  {k:<{width}}  {v}" for k, v in rows)])


class Session:
    """Every utterance and window of one run; the main thread's state."""

    def __init__(self, bundle: Bundle, view: LiveView, log: TextIO | None, refs: dict[Path, str]) -> None:
        self.bundle = bundle
        self.view = view
        self.log = log
        self.refs = refs
        self.tokenizer = Tokenizer.load(bundle.file(bundle.manifest.get("tokenizer", {}).get("file",
                                                                                          "tokenizer.model")))
        self.utts: list[UttState] = []
        self.by_device: dict[int, UttState] = {}     # device utt id -> utterance, for the current link
        self.uplink: Uplink | None = None
        self.bad_inputs = 0
        self.unresolved = 0                          # handoffs the server never answered
        self.rejected = 0                            # handoffs the server refused
        self.up_bytes = 0
        self.audio_samples = 0                       # everything sent to the device
        self.handoff_seq = 0
        self.mic_ends: list[float] = []              # mic: when each utterance's audio ended, in device order
        self.mic_device_utts = 0

    # -- logging
    def write(self, obj: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(json.dumps(obj) + "\n")
            self.log.flush()

    def record(self, r: WindowRecord, update: bool = False, show: bool = True) -> None:
        self.write({**r.to_json(), "update": update})
        if show:
            self.view.result(r, update)

    # -- utterances
    def new_utt(self, wav: Path | None = None) -> UttState:
        ref = self.refs.get(wav.resolve()) if wav is not None else None
        u = UttState(len(self.utts), wav, ref)
        self.utts.append(u)
        return u

    def restart(self, u: UttState) -> None:
        """The device lost this utterance: forget its windows so far (their late handoffs are ignored)."""
        u.gen += 1
        u.windows.clear()
        u.final_window = None
        u.awaiting_handoff.clear()
        u.audio_end = None

    def new_link(self) -> None:
        """A new device connection numbers utterances afresh."""
        self.by_device.clear()
        self.mic_ends.clear()
        self.mic_device_utts = 0

    def _utt_for(self, device_utt: int, current: UttState | None) -> UttState | None:
        u = self.by_device.get(device_utt)
        if u is None:
            if current is not None:             # WAV: results belong to the file being streamed
                if any(v is current for v in self.by_device.values()):
                    return None                 # a stray utterance the device opened on its own
                u = current
            else:                               # mic: the device's next utterance is the next one here
                u = self.new_utt()
                u.mic_index = self.mic_device_utts
                self.mic_device_utts += 1
            self.by_device[device_utt] = u
        return u

    def _latency(self, u: UttState) -> float | None:
        if u.audio_end is None and u.mic_index is not None and u.mic_index < len(self.mic_ends):
            u.audio_end = self.mic_ends[u.mic_index]
        return None if u.audio_end is None else 1000 * (time.monotonic() - u.audio_end)

    # -- device messages
    def on_device(self, msg: Message, current: UttState | None) -> None:
        if isinstance(msg, Result):
            self._on_result(msg, current)
        elif isinstance(msg, Handoff):
            self._on_handoff(msg)
        elif isinstance(msg, Error):
            self.view.say(f"device error {msg.code}: {msg.message}")
        elif isinstance(msg, Hello):
            raise DeviceGone("the device restarted (it sent HELLO unasked)")
        elif isinstance(msg, Info):
            pass  # self-test / profile reports are for `eeasr-host device` commands

    def _on_result(self, m: Result, current: UttState | None) -> None:
        u = self._utt_for(m.utt_id, current)
        if u is None:
            self.view.say(f"device result for an utterance the host did not send (device utt {m.utt_id}); ignored")
            return
        text = self.tokenizer.decode(m.tokens) if m.tokens else ""
        if m.flags & ResultFlag.NO_SPEECH:
            status = "no_speech"
        elif m.flags & ResultFlag.HANDED_OFF:
            status = "handed_off"
            u.awaiting_handoff.add(m.window)
        else:
            status = "device"
        if m.flags & ResultFlag.FINAL:
            u.final_window = m.window
        r = WindowRecord(u.utt, m.window, "device", m.exit_index, m.layer, m.measure, m.confidence, list(m.tokens),
                         text, m.flags, status, self._latency(u), wav=None if u.wav is None else str(u.wav))
        u.windows[m.window] = r
        if status == "handed_off":
            self.record(r, show=False)
            self.view.pending(r)
        else:
            self.record(r)
        self._check_done(u)

    def _on_handoff(self, m: Handoff) -> None:
        u = self.by_device.get(m.utt_id)
        if u is None or m.window not in u.awaiting_handoff:
            self.view.say(f"device handoff without its result (device utt {m.utt_id}, window {m.window}); ignored")
            return
        u.awaiting_handoff.discard(m.window)
        body = pack_frame(m, self.handoff_seq)
        self.handoff_seq = (self.handoff_seq + 1) & 0xFFFF
        self.up_bytes += len(body)
        r = u.windows[m.window]
        r.up_bytes = len(body)
        assert self.uplink is not None
        if not self.uplink.submit(HandoffJob(u.utt, u.gen, m.window, body)):
            self.keep_local(r, "unresolved", f"more than {self.uplink.capacity} handoffs waiting for the server")
            self.unresolved += 1
        self._check_done(u)

    def keep_local(self, r: WindowRecord, status: str, why: str, update: bool = False) -> None:
        r.status, r.detail = status, why
        r.flags |= ResultFlag.LOCAL_FALLBACK
        self.record(r, update)

    # -- server outcomes
    def drain_outcomes(self) -> None:
        if self.uplink is None:
            return
        while True:
            try:
                kind, job, payload = self.uplink.outcomes.get_nowait()
            except queue.Empty:
                return
            self._on_outcome(kind, job, payload)

    def _on_outcome(self, kind: str, job: HandoffJob, payload: Any) -> None:
        u = self.utts[job.utt]
        r = u.windows.get(job.window)
        if job.gen != u.gen or r is None:
            self.write({"event": "stale_handoff", "utt": job.utt, "window": job.window, "outcome": kind})
            return
        was_fallback = r.status == "local_fallback"
        if kind == "ok":
            d = payload
            flags = ResultFlag.SERVER | (r.flags & ResultFlag.FINAL)
            s = WindowRecord(u.utt, job.window, "server", int(d["exit"]), int(d["layer"]), int(d["measure"]),
                             float(d["confidence"]), list(d["tokens"]), str(d["text"]), flags, "server",
                             self._latency(u), r.up_bytes, r.wav, decoder=str(d.get("decoder", "ctc")))
            u.windows[job.window] = s
            self.record(s, update=was_fallback)
        elif kind == "unavailable":
            self.keep_local(r, "local_fallback", payload)
        else:
            self.rejected += 1
            self.keep_local(r, "rejected", payload, update=was_fallback)
        self._check_done(u)

    def _check_done(self, u: UttState) -> None:
        if u.answered and not u.joined_shown:
            u.joined_shown = True
            if len(u.windows) > 1:
                self.view.joined(u.utt, u.text, len(u.windows), u.latency_ms)

    # -- the end
    def finish(self) -> None:
        """Stop the uplink; every handoff the server never answered is logged and shown as unresolved."""
        if self.uplink is None:
            return
        left = self.uplink.stop()
        self.drain_outcomes()
        for job in left:
            u = self.utts[job.utt]
            r = u.windows.get(job.window)
            if job.gen != u.gen or r is None:
                continue
            self.unresolved += 1
            self.keep_local(r, "unresolved", job.last_error or "the run ended before the server answered")

    def summary(self) -> Summary:
        rows, refs, hyps = [], [], []
        ended = {"device": 0, "server": 0, "kept_local": 0, "no_speech": 0}
        lat_dev: list[float] = []
        lat_srv: list[float] = []
        for u in self.utts:
            if not u.windows:
                continue
            e = u.ended_on
            ended[e] += 1
            lat = u.latency_ms
            if lat is not None and e == "device":
                lat_dev.append(lat)
            elif lat is not None and e == "server":
                lat_srv.append(lat)
            w = None
            if u.ref is not None:
                refs.append(u.ref)
                hyps.append(u.text)
                w = error_rate([u.ref], [u.text]).rate
            rows.append({"utt": u.utt, "ended_on": e, "latency_ms": lat, "text": u.text, "ref": u.ref, "wer": w,
                         "name": u.wav.name if u.wav else ""})
        er = error_rate(refs, hyps) if refs else None
        audio_s = self.audio_samples / SAMPLE_RATE
        return Summary(sum(ended.values()), ended, self.bad_inputs, self.unresolved, self.rejected,
                       None if er is None else er.rate,
                       0 if er is None else er.ref_len, lat_dev, lat_srv, self.up_bytes, audio_s, rows)


__all__ = ["Session", "Summary", "UttState", "WindowRecord", "ANSWERED", "KEPT_LOCAL", "flag_names"]
