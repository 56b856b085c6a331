"""What `eeasr-host stream` shows: one line per window result as it comes, updates when the server's answer
replaces the device's, and a summary table at the end.

Plain text, so it reads the same in a terminal, a CI log or a pipe. On a terminal one extra transient line at
the bottom (rewritten in place, erased before every permanent line) shows what is in flight: the microphone's
level and whether the endpointer hears speech, or the device's local answer while the server works. When
stdout is not a terminal there is no transient line: only the permanent lines, one per result.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from eeasr.host.stream import Summary, WindowRecord


def fmt_bytes(n: float) -> str:
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def fmt_ms(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.0f} ms"


def where(r: WindowRecord) -> str:
    """'device exit 2 (layer 4)' / 'server exit 6 (layer 12, ctc)': a server answer says which decoder gave it
    (ctc, attention, attention+lm); device exits always answer with greedy CTC."""
    return f"{r.source} exit {r.exit} (layer {r.layer}{', ' + r.decoder if r.source == 'server' else ''})"


@dataclass
class LiveView:
    out: TextIO = sys.stdout
    tty: bool | None = None

    def __post_init__(self) -> None:
        if self.tty is None:
            self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self._transient = ""
        self._pending: tuple[int, int] | None = None   # the window the transient line shows, if any

    # -- permanent lines -------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """A permanent line (notes, errors, progress)."""
        self._clear()
        print(text, file=self.out, flush=True)
        self._redraw()

    def utterance(self, utt: int, label: str) -> None:
        self.say(f"utt {utt}: {label}")

    def result(self, r: WindowRecord, update: bool = False) -> None:
        """A window's answer: the device's (ended there), the server's, or the device's kept when the server
        could not answer (marked, with why)."""
        if self._pending == (r.utt, r.window):    # its answer is in: the in-flight line has nothing left to say
            self._transient, self._pending = "", None
        head = f"utt {r.utt} win {r.window}  " + ("update: " if update else "")
        if r.status == "no_speech":
            self.say(f"{head}(no speech)")
            return
        mark = {"local_fallback": ", server unreachable — retrying", "rejected": ", server refused the handoff",
                "unresolved": ", handoff unresolved: the device's answer stands"}.get(r.status, "")
        why = f"  ({r.detail})" if r.detail else ""
        self.say(f"{head}{where(r)}{mark}  conf {r.confidence:.4g}  {fmt_ms(r.latency_ms)}  "
                 f"{fmt_bytes(r.up_bytes)} up  {r.text!r}{why}")

    def joined(self, utt: int, text: str, n_windows: int, latency_ms: float | None) -> None:
        """An utterance of several windows: its windows' texts joined."""
        self.say(f"utt {utt} = {text!r}  ({n_windows} windows, {fmt_ms(latency_ms)})")

    def summary(self, s: Summary) -> None:
        self._clear()
        self._transient = ""
        print(s.table(), file=self.out, flush=True)

    # -- the transient line (terminals only) -----------------------------------------------------------------
    def pending(self, r: WindowRecord) -> None:
        """The device's local answer while its handoff is with the server."""
        self.status(f"utt {r.utt} win {r.window}  {where(r)}: {r.text!r}  -> server ...")
        self._pending = (r.utt, r.window)

    def meter(self, dbfs: float, speech: bool) -> None:
        """Microphone level (dBFS) and whether the endpointer is inside an utterance."""
        bars = max(0, min(30, int((dbfs + 80) / 80 * 30)))
        self.status(f"{'speech   ' if speech else 'listening'} [{'#' * bars}{'.' * (30 - bars)}] {dbfs:6.1f} dBFS")

    def status(self, text: str) -> None:
        if not self.tty:
            return
        self._pending = None
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self._transient = text[:width]
        self._clear()
        self._redraw()

    def _clear(self) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K")

    def _redraw(self) -> None:
        if self.tty and self._transient:
            self.out.write(self._transient)
            self.out.flush()

    def close(self) -> None:
        self._clear()
        self._transient = ""
        if self.tty:
            self.out.flush()


__all__ = ["LiveView", "fmt_bytes", "fmt_ms", "where"]
