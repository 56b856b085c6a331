"""`eeasr-host stream --mic` with real PortAudio input: a PulseAudio server run as a user process, whose
default source is a pipe (module-pipe-source) the test writes known audio into: noise, a held-out utterance,
noise. sounddevice (PortAudio -> ALSA -> the pulse plugin) records exactly those samples, the simulated
device's endpointer finds the utterance in them, and the run's answer must be the bundle's answer for the
audio between the endpoints the contract's endpointer puts there.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from eeasr.audio import load_audio
from eeasr.endpoint import Endpointer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
HOST = str(Path(sys.executable).parent / "eeasr-host")
CLIP = REPO / "assets" / "demo" / "test-031020-espeak-en-gb-x-gbcwmd+m6.flac"   # a held-out voice
BLOCK = 1600                                                                   # 100 ms


def known_audio() -> np.ndarray:
    """1 s of noise (the endpointer learns the floor), the utterance over the same noise (TTS emits exact
    digital zeros, a microphone never does), 1.5 s of noise (the utterance ends after 300 ms of it)."""
    speech = load_audio(CLIP).astype(np.float64)
    noise = np.random.default_rng(0).normal(0, 20, 16000 + len(speech) + 24000)
    noise[16000:16000 + len(speech)] += speech
    return np.clip(np.round(noise), -32768, 32767).astype(np.int16)


@pytest.fixture
def pulse(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """A private PulseAudio (its own runtime dir and socket), default source = a pipe at `feed`."""
    if shutil.which("pulseaudio") is None or ctypes.util.find_library("portaudio") is None:
        pytest.skip("needs the Debian packages pulseaudio and libportaudio2 (make apt-deps installs them)")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run), "PULSE_RUNTIME_PATH": str(run / "pulse"),
           "HOME": str(tmp_path)}   # its cookie and state go here, not into the user's home
    feed = tmp_path / "feed"
    cmd = ["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "-n", "--system=no", "--disallow-exit",
           "--disable-shm=yes", "--log-target=stderr",
           "--load=module-native-protocol-unix auth-anonymous=1",
           "--load=module-null-sink sink_name=speakers",
           f"--load=module-pipe-source source_name=feed file={feed} format=s16le rate=16000 channels=1",
           "--load=module-always-sink"]
    log = tmp_path / "pulseaudio.log"
    with open(log, "wb") as f:
        server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            info = subprocess.run(["pactl", "info"], capture_output=True, text=True, env=env)
            if info.returncode == 0 and "Default Source: feed" in info.stdout:
                break
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield env, feed
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def write_slowly(feed: Path, pcm: np.ndarray) -> None:
    """Into the pipe at about the pace a microphone records."""
    with open(feed, "wb") as f:
        for i in range(0, len(pcm), BLOCK):
            f.write(pcm[i:i + BLOCK].tobytes())
            f.flush()
            time.sleep(BLOCK / 16000 * 0.9)


def test_mic_stream_answers_the_utterance_in_the_recorded_audio(pulse, default_bundle_k2: Path, bundle_reference,
                                                                 tmp_path: Path):
    env, feed = pulse
    audio = known_audio()
    events = Endpointer().push(audio)
    assert [e.kind for e in events] == ["start", "end"]
    expected = bundle_reference(default_bundle_k2, audio[events[0].sample:events[1].sample])

    log, out = tmp_path / "log.jsonl", tmp_path / "stdout.txt"
    cmd = [HOST, "stream", "--mic", "--utterances", "1", "--simulate", "--bundle", str(default_bundle_k2),
           "--log", str(log)]
    with open(out, "w") as f:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, text=True, env=env)
    writer = None
    try:
        deadline = time.monotonic() + 300
        while "listening on" not in out.read_text():   # the recording stream is open: now the pipe is heard
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.1)
        writer = threading.Thread(target=write_slowly, args=(feed, audio))
        writer.start()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        if writer is not None:
            writer.join()
    text = out.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "overflowed" not in text
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    results = [x for x in lines if x["event"] == "result"]
    final = {}
    for r in results:
        assert r["utt"] == 0 and r["wav"] is None
        final[r["window"]] = r
    assert sorted(final) == list(range(len(expected)))
    assert "FINAL" in final[len(expected) - 1]["flags"]
    for k, r in final.items():
        want = expected[k]["server"] if r["source"] == "server" else expected[k]["exits"][r["exit"] - 1]
        assert r["tokens"] == want
        assert r["latency_ms"] is not None and r["latency_ms"] > 0   # from when the utterance's audio ended
    summary = next(x for x in lines if x["event"] == "summary")
    assert summary["utterances"] == 1 and summary["audio_s"] > 0
