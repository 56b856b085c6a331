"""Energy endpointing (docs/protocol.md, Endpointing): the state machine on synthetic and real-shaped audio."""

from __future__ import annotations

import numpy as np

from eeasr.endpoint import END_HOPS, HOP, MAX_SPEECH_HOPS, PREROLL_HOPS, START_HOPS, Endpointer


def _tone(seconds: float, amp: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (amp * np.sin(2 * np.pi * 220 * t) * (1 + 0.3 * rng.standard_normal(len(t)))).astype(np.int16)


def _noise(seconds: float, std: float, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0, std, int(seconds * 16000)).astype(np.int16)


def _run(x: np.ndarray, chunk: int) -> list[tuple[str, int]]:
    ep, ev = Endpointer(), []
    for i in range(0, len(x), chunk):
        ev += ep.push(x[i:i + chunk])
    end = ep.flush()
    return [(e.kind, e.sample) for e in ev + ([end] if end else [])]


def test_two_utterances_in_noise_are_found_with_preroll_and_pause() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([_noise(1, 30, rng), _tone(1.5, 6000, rng), _noise(1, 30, rng),
                        _tone(0.8, 3000, rng), _noise(1, 30, rng)])
    ev = _run(x, 1000)
    assert [k for k, _ in ev] == ["start", "end", "start", "end"]
    onset1, onset2 = 16000, 16000 + 24000 + 16000
    assert ev[0][1] == (onset1 // HOP + START_HOPS - 1 - START_HOPS + 1 - PREROLL_HOPS) * HOP
    assert ev[2][1] == (onset2 // HOP - PREROLL_HOPS) * HOP
    # the end comes END_HOPS quiet hops after the speech stops
    assert abs(ev[1][1] - (onset1 + 24000 + END_HOPS * HOP)) <= HOP


def test_chunking_does_not_change_the_events() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([_noise(0.5, 20, rng), _tone(1.0, 8000, rng), _noise(0.7, 20, rng)])
    assert _run(x, 1) == _run(x, 161) == _run(x, len(x))


def test_silence_and_steady_noise_never_start_and_flush_closes_speech() -> None:
    rng = np.random.default_rng(2)
    assert _run(np.zeros(48000, np.int16), 4096) == []
    assert _run(_noise(3, 2000, rng), 4096) == []
    # noise that starts mid-stream opens speech, which MAX_SPEECH_HOPS closes; the floor then holds
    ev = _run(np.concatenate([_noise(1, 20, rng), _noise(40, 2000, rng)]), 4096)
    assert [k for k, _ in ev] == ["start", "end"] and ev[1][1] - ev[0][1] <= (MAX_SPEECH_HOPS + PREROLL_HOPS + 3) * HOP
    # speech cut off by the end of the stream is closed by flush at the last whole hop
    ev = _run(np.concatenate([_noise(1, 20, rng), _tone(1.0, 8000, rng)[:15999]]), 4096)
    assert [k for k, _ in ev] == ["start", "end"] and ev[1][1] == 31999 // HOP * HOP
