"""Handoffs on their way to the server: a bounded queue, one worker thread, retries with exponential backoff.

The stream's main thread never waits on the server: it submits each HANDOFF frame here and later collects
the outcomes. A handoff the server cannot take now (ServerUnavailable: refused, timed out, 5xx) goes back in
the queue and is tried again after 0.25 s, 0.5 s, 1 s, ... (at most `max_delay`); one the server refuses
(ServerRejected) is reported and never retried. Nothing leaves the queue without an outcome: `stop` hands
back the handoffs still unanswered, for the caller to report.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from eeasr.host.server_client import ServerClient, ServerRejected, ServerUnavailable


@dataclass
class HandoffJob:
    """One window's handoff: `gen` tells a resent utterance's answers from those of its lost first try."""
    utt: int
    gen: int
    window: int
    body: bytes                    # the HANDOFF frame, as the server takes it
    attempts: int = 0
    last_error: str = ""


class Uplink:
    """Handoffs on their way to the server, sent by one worker thread. A handoff the server cannot take
    (ServerUnavailable) goes back in the queue with an exponential backoff; a refused one (ServerRejected)
    is reported and not retried. Outcomes come back through `outcomes`: ("ok", job, reply dict),
    ("unavailable", job, reason) after the first failed attempt, ("rejected", job, reason). At most `capacity`
    handoffs wait; `submit` says False beyond that, and the caller reports the handoff unresolved."""

    def __init__(self, client: ServerClient, capacity: int = 256, first_delay: float = 0.25,
                 max_delay: float = 8.0) -> None:
        self.client = client
        self.capacity = capacity
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.outcomes: queue.Queue[tuple[str, HandoffJob, Any]] = queue.Queue()
        self._heap: list[tuple[float, int, HandoffJob]] = []
        self._order = itertools.count()
        self._inflight: HandoffJob | None = None
        self._stopping = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="eeasr-uplink", daemon=True)
        self._thread.start()

    def submit(self, job: HandoffJob) -> bool:
        with self._cond:
            if len(self._heap) + (self._inflight is not None) >= self.capacity:
                return False
            heapq.heappush(self._heap, (time.monotonic(), next(self._order), job))
            self._cond.notify()
            return True

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._heap) + (self._inflight is not None)

    def next_retry_in(self) -> float | None:
        with self._cond:
            return max(0.0, self._heap[0][0] - time.monotonic()) if self._heap else None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                if self._stopping:
                    return
                job = heapq.heappop(self._heap)[2]
                self._inflight = job
            outcome = self._attempt(job)
            with self._cond:
                self._inflight = None
                if outcome is None:   # unavailable: back in the queue, later
                    delay = min(self.max_delay, self.first_delay * 2 ** (job.attempts - 1))
                    heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order), job))

    def _attempt(self, job: HandoffJob) -> str | None:
        job.attempts += 1
        try:
            self.outcomes.put(("ok", job, self.client.handoff(job.body)))
            return "ok"
        except ServerUnavailable as e:
            job.last_error = str(e)
            if job.attempts == 1:
                self.outcomes.put(("unavailable", job, str(e)))
            return None
        except ServerRejected as e:
            self.outcomes.put(("rejected", job, str(e)))
            return "rejected"
        except Exception as e:  # a client bug must not lose the handoff silently: report it as refused
            self.outcomes.put(("rejected", job, f"client error: {type(e).__name__}: {e}"))
            return "rejected"

    def stop(self) -> list[HandoffJob]:
        """Stop the worker (after its request in flight, bounded by the client's timeout); the handoffs the
        server never answered."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            left = [j for _, _, j in sorted(self._heap)]
            self._heap.clear()
            return left


__all__ = ["HandoffJob", "Uplink"]
