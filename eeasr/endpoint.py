"""Energy-based endpointing: where an utterance starts and ends in a live stream (docs/protocol.md, Endpointing).

One spec for the firmware and the simulated device. It works on 10 ms hops (160 samples, aligned with the
feature hops) and integer energies, and compares them with a noise floor that follows the quietest recent
level: a hop is loud 12 dB above the floor (and above -55 dBFS), quiet below 6 dB above it. Speech starts
after 3 loud hops (with 200 ms of audio before them kept), and ends after 300 ms of quiet hops. The floor
only falls during speech and rises slowly (1.005 per hop, 2 dB/s) otherwise, so it never climbs into a
long utterance. The first 300 ms only learn the floor, and 20 s of unbroken "speech" end the utterance and
restart the floor from the current level, so steady noise never holds the device in speech. Double arithmetic with multiplications and comparisons only: bit-identical in C.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOP = 160
START_RATIO = 15.848931924611133      # 10 ** (12 / 10): loud = 12 dB above the floor
END_RATIO = 3.9810717055349722        # 10 ** (6 / 10): quiet = under 6 dB above the floor
MIN_ENERGY = 543271                   # hop energy (sum of squares of 160 int16) of -55 dBFS RMS
FLOOR_MIN = 160.0                     # 1 LSB RMS: the floor never reaches 0 on digital silence
RISE = 1.005                          # floor rise per non-speech hop
START_HOPS = 3
END_HOPS = 30
PREROLL_HOPS = 20
WARMUP_HOPS = 30                      # the first 300 ms only learn the floor (a fan already running is not speech)
MAX_SPEECH_HOPS = 2000                # 20 s: a stationary sound that started mid-stream cannot hold speech open


@dataclass
class Event:
    kind: str        # "start" or "end"
    sample: int      # absolute sample index in the stream: start is inclusive, end exclusive


def hop_energy(hop: np.ndarray) -> int:
    """Sum of squares of one hop of int16 samples, exact."""
    h = np.asarray(hop, dtype=np.int64)
    return int((h * h).sum())


class Endpointer:
    """Feed int16 samples in any chunk sizes; get start/end events at hop boundaries."""

    def __init__(self) -> None:
        self.floor = float(MIN_ENERGY)
        self.in_speech = False
        self._run = 0             # consecutive loud hops (idle) or quiet hops (speech)
        self._speech_hops = 0
        self._hop = 0             # index of the next hop
        self._pending = np.zeros(0, dtype=np.int16)

    def push(self, samples: np.ndarray) -> list[Event]:
        s = np.concatenate([self._pending, np.asarray(samples, dtype=np.int16)])
        n = len(s) // HOP
        self._pending = s[n * HOP:]
        events: list[Event] = []
        for i in range(n):
            ev = self.step(hop_energy(s[i * HOP:(i + 1) * HOP]))
            if ev is not None:
                events.append(ev)
        return events

    def step(self, e: int) -> Event | None:
        """One hop of energy `e`; the state machine of docs/protocol.md."""
        h = self._hop
        self._hop += 1
        ef = float(e)
        if h < WARMUP_HOPS:
            self.floor = max(FLOOR_MIN, ef if h == 0 else min(ef, self.floor))
            return None
        if not self.in_speech:
            loud = ef > self.floor * START_RATIO and e > MIN_ENERGY
            self._run = self._run + 1 if loud else 0
            self.floor = max(FLOOR_MIN, min(ef, self.floor * RISE))
            if self._run == START_HOPS:
                self.in_speech, self._run, self._speech_hops = True, 0, 0
                return Event("start", max(0, h - START_HOPS + 1 - PREROLL_HOPS) * HOP)
            return None
        quiet = ef < self.floor * END_RATIO or e <= MIN_ENERGY
        self.floor = max(FLOOR_MIN, min(ef, self.floor))
        self._run = self._run + 1 if quiet else 0
        self._speech_hops += 1
        if self._speech_hops == MAX_SPEECH_HOPS:
            self.floor = max(FLOOR_MIN, ef)
            self._run = END_HOPS
        if self._run == END_HOPS:
            self.in_speech, self._run = False, 0
            return Event("end", (h + 1) * HOP)
        return None

    def flush(self) -> Event | None:
        """End of stream: close an open utterance at the last whole hop."""
        if not self.in_speech:
            return None
        self.in_speech, self._run = False, 0
        return Event("end", self._hop * HOP)
