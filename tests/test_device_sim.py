"""The simulated device over a real pty (`eeasr-host device-sim` as a subprocess) and the host's link to it.

The simulator runs the firmware's C core (firmware/components/eeasr_core) by default. Its path is
deterministic, so its results are compared exactly with eeasr/device_program.py run in this process on the
same int8 windows, computed in one batch per utterance: the C front end and exit measure (host/ccore.py),
windows by eeasr/windows.py, the endpointer of eeasr/endpoint.py, the exit rule with the same threshold.
The C core and the Python reference core are compared with each other in process, frame by frame.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tflite_micro")
serial = pytest.importorskip("serial")

from eeasr import protocol as P  # noqa: E402
from eeasr.bundle import load_bundle  # noqa: E402
from eeasr.device_program import DeviceProgram, ExitOutput  # noqa: E402
from eeasr.endpoint import HOP, Endpointer  # noqa: E402
from eeasr.features import NormStats, log_mel  # noqa: E402
from eeasr.host import ccore  # noqa: E402
from eeasr.host.device_sim import Device, c_core, python_core  # noqa: E402
from eeasr.host.link import SIM_READY, DeviceGone, DeviceLink, start_simulated_device  # noqa: E402
from eeasr.host.windows_stream import StreamingWindows, frame_energy  # noqa: E402
from eeasr.windows import window_spans  # noqa: E402

try:
    ccore.build_library()
except ccore.CCoreError as e:
    pytest.skip(f"the simulator's default core cannot be built: {e}", allow_module_level=True)

SR = 16000
MIN_FRAMES = 4     # docs/protocol.md: a window of fewer feature frames yields an empty RESULT
BIN = Path(sys.executable).parent
MEASURE_REL = 1e-5  # C float32 exit measure vs the float64 reference (tests/test_firmware_core.py)


def _speech(seconds: float, seed: int) -> np.ndarray:
    """Speech-like: gliding harmonics, syllable-rate modulation, a noise floor (a microphone never gives zeros)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0 = 110 + 60 * rng.random() + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(h * phase) / h for h in range(1, 12)) * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t + rng.random()))
    return np.clip(x * 6000 + rng.normal(0, 30, n), -32768, 32767).astype(np.int16)


def _quiet(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 20, int(seconds * SR)).astype(np.int16)


class Reference:
    """The device program of the bundle, run in this process on whole utterances with the C core's functions."""

    def __init__(self, bundle_dir: Path) -> None:
        self.bundle = load_bundle(bundle_dir)
        self.program = DeviceProgram.from_bundle(self.bundle)
        self.norm = NormStats.from_dict(self.bundle.manifest["features"]["norm"])
        self.qp = self.program.feats_qparams

    def windows(self, pcm: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Each window's int8 input [1, W, n_mels] (quantized zeros past its frames) and its frame count."""
        lm = ccore.StreamingLogMel().push(pcm)
        q = ccore.features_int8(lm, self.norm, self.qp.scale, self.qp.zero_point)
        out = []
        for a, b in window_spans(frame_energy(lm), self.program.window):
            x = np.full((1, self.program.window, self.program.n_mels), self.qp.zero_point, np.int8)
            x[0, :b - a] = q[a:b]
            out.append((x, b - a))
        return out

    @staticmethod
    def entropy(e: ExitOutput) -> float:
        return ccore.exit_measures(e.logits_q, e.qparams.scale, e.qparams.zero_point).entropy

    def exit1_entropies(self, pcm: np.ndarray) -> list[float]:
        return [self.entropy(self.program.run(x, n, upto=1).exits[0]) for x, n in self.windows(pcm)
                if n >= MIN_FRAMES]

    def messages(self, utt: int, pcm: np.ndarray, threshold: float | None) -> list[P.Message]:
        """What the device must send for utterance `utt` of samples `pcm`."""
        wins = self.windows(pcm)
        if not wins:
            return [P.Result(utt, 0, P.ResultFlag.FINAL | P.ResultFlag.NO_SPEECH, 0, 0, 0, 0.0, [])]
        out: list[P.Message] = []
        # the firmware compares float32 with float32 (the model image stores the threshold so)
        sure = (lambda e: np.float32(self.entropy(e)) <= np.float32(threshold)) if threshold is not None else None
        for i, (x, n) in enumerate(wins):
            final = P.ResultFlag.FINAL if i == len(wins) - 1 else 0
            if n < MIN_FRAMES:
                out.append(P.Result(utt, i, final, 0, 0, 0, 0.0, []))
                continue
            wo = self.program.run(x, n, stop=sure)
            e = wo.exits[-1]
            local = sure is not None and sure(e)
            flags = final | (0 if local else P.ResultFlag.HANDED_OFF)
            out.append(P.Result(utt, i, flags, e.index, e.layer, 0, self.entropy(e), ccore.greedy_ctc(e.logits_q)))
            if not local:
                qp = wo.hidden_qparams
                out.append(P.Handoff(utt, i, final, wo.hidden_layer, self.bundle.model_hash[:16],
                                     float(np.float32(qp.scale)), qp.zero_point, wo.hidden_q))
        return out


def _same(a: P.Message, b: P.Message) -> bool:
    if type(a) is not type(b):
        return False
    for k, va in vars(a).items():
        vb = getattr(b, k)
        if isinstance(va, np.ndarray):
            if va.dtype != vb.dtype or va.tobytes() != np.ascontiguousarray(vb).tobytes() or va.shape != vb.shape:
                return False
        elif va != vb:
            return False
    return True


def _assert_messages(got: list[P.Message], want: list[P.Message]) -> None:
    assert len(got) == len(want), ([type(m).__name__ for m in got], [type(m).__name__ for m in want])
    for g, w in zip(got, want):
        assert _same(g, w), (g, w)


def _receive_all(link: DeviceLink, timeout: float = 30.0) -> list[P.Message]:
    assert link.wait_acked(timeout)
    return link.receive(0.0)


@pytest.fixture(scope="module")
def ref(small_bundle: Path) -> Reference:
    return Reference(small_bundle)


@pytest.fixture(scope="module")
def utterances() -> list[np.ndarray]:
    """Host-segmented: one window, several windows (cut at pauses), one frame (a window too short to run),
    fewer samples than a frame and none at all (no window: NO_SPEECH), and digital silence."""
    return [_speech(0.4, 1), np.concatenate([_speech(0.9, 2), _quiet(0.15, 3), _speech(1.1, 4)]),
            _speech(0.03, 5), _speech(0.02, 6), np.zeros(0, np.int16), np.zeros(SR // 2, np.int16)]


def _mid_gap(values: list[float]) -> float:
    """A threshold near the median of `values` and far from each of them: the middle of the widest gap
    between neighbours in the middle half. Some windows end at exit 1, others go on (and some of those are
    handed off), and float rounding of a measure (C float32 vs Python float64) cannot move a window across."""
    v = np.unique(values)
    lo, hi = max(0, len(v) // 4 - 1), min(len(v) - 1, 3 * len(v) // 4 + 1)
    i = lo + int(np.argmax(np.diff(v[lo:hi + 1])))
    return float((v[i] + v[i + 1]) / 2)


@pytest.fixture(scope="module")
def threshold(ref: Reference, utterances: list[np.ndarray]) -> float:
    return _mid_gap([v for u in utterances for v in ref.exit1_entropies(u)])


@pytest.fixture(scope="module")
def sim(small_bundle: Path, threshold: float):
    with start_simulated_device(small_bundle, threshold=threshold) as s:   # the default core: C
        yield s


@pytest.fixture
def link(sim):
    with DeviceLink(sim.port) as lk:
        lk.command(P.Command.RESET, 10)
        lk.receive(0.0)
        yield lk


def test_streaming_cutter_gives_window_spans() -> None:
    rng = np.random.default_rng(0)
    for case in range(300):
        w = int(rng.integers(1, 80))
        search = int(rng.choice([1, 5, 40, 150]))
        n = int(rng.integers(0, 6 * w + 3))
        # small integers: many ties, where the first minimum must win as in window_spans
        energy = rng.integers(0, 4, n).astype(np.float64) if case % 2 else rng.standard_normal(n)
        frames = np.arange(n)[:, None]
        cut = StreamingWindows(w, search)
        got, i = [], 0
        while i < n:
            k = int(rng.integers(1, 2 * w + 2))
            got += cut.push(frames[i:i + k], energy[i:i + k])
            assert cut.buffered <= w          # a cut happens as soon as more than W frames are buffered
            i += k
        last = cut.finish()
        got += [last] if last is not None else []
        assert [(x.start, x.end) for x in got] == window_spans(energy, w, search), (w, search, n)
        for x in got:
            assert np.array_equal(x.frames[:, 0], np.arange(x.start, x.end))


def test_frame_energy_does_not_depend_on_chunking() -> None:
    lm = log_mel(_speech(0.5, 7))
    whole = frame_energy(lm)
    assert np.array_equal(np.concatenate([frame_energy(lm[i:i + 1]) for i in range(len(lm))]), whole)
    assert np.allclose(whole, lm.astype(np.float64).mean(axis=1), rtol=0, atol=1e-5)


def test_hello_matches_the_bundle(link: DeviceLink, ref: Reference) -> None:
    h = link.hello(5)
    m = ref.bundle.manifest
    assert h.model_hash == ref.bundle.model_hash[:16] and h.bundle_id == ref.bundle.bundle_id[:16]
    assert h.feature_hash == m["features"]["hash"][:16] and h.sample_rate == SR
    assert h.window == m["window"]["frames"] == ref.program.window and h.subsampling == m["window"]["subsampling"]
    assert h.d_model == m["model"]["d_model"] and h.vocab == m["model"]["vocab_size"]
    assert h.exit_layers == [s["exit"]["layer"] for s in ref.bundle.segments]
    assert h.firmware.startswith("eeasr-device-sim")


def test_host_segmented_utterances_equal_the_device_program(link: DeviceLink, ref: Reference,
                                                           utterances: list[np.ndarray], threshold: float) -> None:
    for pcm in utterances:
        link.send_audio(pcm, P.AudioFlag.UTT_START | P.AudioFlag.UTT_END)
        assert link.unacked <= 8
    got = _receive_all(link)
    first = got[0].utt_id
    by_utt: dict[int, list[P.Message]] = {}
    for m in got:
        by_utt.setdefault(m.utt_id, []).append(m)
    assert sorted(by_utt) == list(range(first, first + len(utterances)))
    kinds = set()
    for i, pcm in enumerate(utterances):
        want = ref.messages(first + i, pcm, threshold)
        _assert_messages(by_utt[first + i], want)
        # every utterance is accounted for: exactly one FINAL result, the last result of the utterance
        results = [m for m in by_utt[first + i] if isinstance(m, P.Result)]
        assert [bool(r.flags & P.ResultFlag.FINAL) for r in results] == [False] * (len(results) - 1) + [True]
        kinds |= {("no_speech" if r.flags & P.ResultFlag.NO_SPEECH else "handoff" if r.flags & P.ResultFlag.HANDED_OFF
                   else f"exit{r.exit_index}") for r in results}
    assert {"no_speech", "handoff", "exit1"} <= kinds, kinds
    assert len(by_utt[first + 1]) >= 3   # the long utterance was cut into several windows


def test_endpointed_stream_of_two_utterances(link: DeviceLink, ref: Reference, threshold: float) -> None:
    stream = np.concatenate([_quiet(0.6, 10), _speech(1.0, 11), _quiet(0.8, 12), _speech(0.8, 13), _quiet(0.7, 14)])
    # reference utterances: the endpointer on the whole stream
    ep = Endpointer()
    events = ep.push(stream)
    if ep.in_speech:
        events.append(ep.flush())
    assert [e.kind for e in events] == ["start", "end", "start", "end"]
    spans = [(events[i].sample, events[i + 1].sample) for i in (0, 2)]
    rng = np.random.default_rng(0)
    i = 0
    while i < len(stream):                      # chunks of any size, as a microphone delivers them
        k = int(rng.integers(100, 5000))
        link.send_audio(stream[i:i + k], P.AudioFlag.STREAM_END if i + k >= len(stream) else 0)
        i += k
    got = _receive_all(link)
    utts = sorted({m.utt_id for m in got})
    assert len(utts) == 2
    for u, (a, b) in zip(utts, spans):
        _assert_messages([m for m in got if m.utt_id == u], ref.messages(u, stream[a:b], threshold))


def test_stream_end_closes_an_open_utterance_at_the_last_whole_hop(link: DeviceLink, ref: Reference,
                                                                    threshold: float) -> None:
    # still speaking when the stream ends, 150 samples into a hop: enough for one more feature frame
    stream = np.concatenate([_quiet(0.5, 20), _speech(0.9, 21)])[:-10]
    assert len(stream) % HOP == 150
    link.send_audio(stream, P.AudioFlag.STREAM_END)
    got = _receive_all(link)
    ep = Endpointer()
    (start,) = ep.push(stream)
    end = ep.flush()
    assert end.sample == len(stream) // HOP * HOP           # docs/protocol.md: the end of the last whole hop
    assert len(log_mel(stream[start.sample:end.sample])) < len(log_mel(stream[start.sample:]))
    assert len({m.utt_id for m in got}) == 1
    _assert_messages(got, ref.messages(got[0].utt_id, stream[start.sample:end.sample], threshold))


def test_garbage_gets_bad_frame_and_the_next_frames_still_work(sim, ref: Reference, threshold: float) -> None:
    pcm = _speech(0.5, 30)
    with serial.serial_for_url(sim.port, timeout=0.2) as ser:
        ser.reset_input_buffer()
        dec = P.FrameDecoder()

        def read_until(pred, timeout: float = 20.0) -> list[P.Message]:
            out, deadline = [], time.monotonic() + timeout
            while time.monotonic() < deadline:
                out += [f.msg for f in dec.feed(ser.read(4096)) if isinstance(f, P.Frame)]
                if pred(out):
                    return out
            raise AssertionError(f"timed out; got {out}")

        good = P.encode(P.Audio(pcm[:4000], P.AudioFlag.UTT_START), 1)
        bad_crc = bytearray(P.pack_frame(P.Audio(pcm[:10]), 2))
        bad_crc[-1] ^= 0xFF
        from cobs import cobs
        ser.write(b"\x01\x02garbage\xff\x00" + good + cobs.encode(bytes(bad_crc)) + b"\x00\x00\x00"
                  + P.encode(P.Result(0, 0, 0, 1, 1, 0, 0.0, []), 3))
        got = read_until(lambda ms: sum(isinstance(m, P.Error) for m in ms) == 3)
        errors = [m for m in got if isinstance(m, P.Error)]
        assert [e.code for e in errors] == [P.ErrorCode.BAD_FRAME] * 3
        assert "crc mismatch" in errors[1].message and "unexpected RESULT" in errors[2].message
        assert any(isinstance(m, P.Ack) and m.seq == 1 for m in got)     # the valid frame between was taken
        # the utterance goes on after the garbage and ends normally
        ser.write(P.encode(P.Audio(pcm[4000:], P.AudioFlag.UTT_END), 4) + P.encode(P.CommandMsg(P.Command.HELLO), 5))
        got += read_until(lambda ms: any(isinstance(m, P.Hello) for m in ms))
    results = [m for m in got if isinstance(m, (P.Result, P.Handoff))]
    _assert_messages(results, ref.messages(results[0].utt_id, pcm, threshold))


def test_reset_drops_the_open_utterance(link: DeviceLink, ref: Reference, threshold: float) -> None:
    link.send_audio(_speech(0.3, 40), P.AudioFlag.UTT_START)
    ack = link.command(P.Command.RESET, 10)
    assert isinstance(ack, P.Ack) and ack.of == P.MsgType.COMMAND
    pcm = _speech(0.3, 41)
    link.send_audio(pcm, P.AudioFlag.UTT_START | P.AudioFlag.UTT_END)
    got = _receive_all(link)
    assert len({m.utt_id for m in got}) == 1        # nothing of the dropped utterance
    _assert_messages(got, ref.messages(got[0].utt_id, pcm, threshold))


def test_self_test_and_profile_reports(link: DeviceLink) -> None:
    import json

    st = json.loads(link.command(P.Command.SELF_TEST, 30).json)
    assert st["pass"] and st["simulated"] and "eeasr_core C" in st["firmware"]
    errors = {c["name"]: c["max_error"] for c in st["checks"]}
    assert set(errors) == {"features", "segments", "exit policy", "framing", "endpointer"}
    # the C front end: 1 LSB at most, at a near-tie; the C measure: float rounding; the rest exact
    assert errors.pop("features") <= 1 and errors.pop("exit policy") <= MEASURE_REL
    assert all(v == 0 for v in errors.values()), errors
    pr = json.loads(link.command(P.Command.PROFILE, 30).json)
    assert pr["simulated"] and "SIMULATED" in pr["note"]
    assert [s["name"] for s in pr["segments"]] == ["seg1", "seg2"]
    assert all(s["wall_ms_full_window"] > 0 and s["arena_bytes"] >= s["arena_min_bytes"] > 0 for s in pr["segments"])


def test_link_reports_garbage_from_the_device_and_keeps_going() -> None:
    """The host side on a real pty whose other end the test writes: garbage goes to the callback, the valid
    frames after it are received; closing the device's end raises DeviceGone."""
    master, slave = os.openpty()
    errors: list[P.FrameError] = []
    try:
        with DeviceLink(os.ttyname(slave), on_frame_error=errors.append) as lk:
            r = P.Result(3, 0, P.ResultFlag.FINAL, 1, 1, 0, 0.5, [4, 5])
            os.write(master, b"noise\x00" + P.encode(r, 0))
            got = lk.receive(5.0)
            assert len(got) == 1 and _same(got[0], r)
            assert len(errors) == 1 and errors[0].reason
            os.close(master)
            master = -1
            with pytest.raises(DeviceGone, match="gone"):
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    lk.receive(0.2)
    finally:
        os.close(slave)
        if master >= 0:
            os.close(master)


def test_device_gone_when_the_simulator_dies(small_bundle: Path) -> None:
    with start_simulated_device(small_bundle) as s, DeviceLink(s.port) as lk:
        # the start-up HELLO went out before the pty was announced: a host opening it never gets it unasked
        assert lk.receive(0.3) == []
        lk.hello(5)
        s.process.kill()
        with pytest.raises(DeviceGone) as e:
            for _ in range(50):
                lk.send_audio(_speech(0.5, 50))
                lk.receive(0.1)
        assert "\n" not in str(e.value) and s.port in str(e.value)


def test_refuses_a_bundle_that_fails_to_load(small_bundle: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bundle"
    shutil.copytree(small_bundle, bad)
    seg = bad / "segments" / "seg1.tflite"
    seg.write_bytes(seg.read_bytes()[:-1] + b"\x00")
    run = subprocess.run([str(BIN / "eeasr-host"), "device-sim", "--bundle", str(bad)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "sha256" in lines[0] and "seg1.tflite" in lines[0], run.stderr
    with pytest.raises(RuntimeError, match=r"did not start.*sha256.*\(log: (.*)\)") as e:
        start_simulated_device(bad)
    Path(str(e.value).rsplit("(log: ", 1)[1].rstrip(")")).unlink()   # kept for the user; the test has read it


def test_device_info_prints_hello_self_test_and_profile(small_bundle: Path, ref: Reference) -> None:
    run = subprocess.run([str(BIN / "eeasr-host"), "device-info", "--sim", "--bundle", str(small_bundle)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert f"model hash           {ref.bundle.model_hash[:16]}" in out
    assert "device exits         2, after layers 1, 2" in out
    assert "SELF_TEST: PASS (simulated device)" in out and "PROFILE: SIMULATED" in out
    for name in ("features", "segments", "exit policy", "framing", "endpointer", "seg1", "seg2"):
        assert f"\n  {name} " in out


# ---- the C core against the Python reference core ------------------------------------------------------------

def _clips() -> list[np.ndarray]:
    """The recorded clips of Debian's pocketsphinx-testdata (train/data/realclips.py); none, with a warning,
    without the package."""
    from eeasr.audio import load_audio
    from eeasr.train.data.realclips import DATA, DEBIAN_PACKAGE

    if not DATA.exists():
        warnings.warn(f"{DATA} not found (Debian package {DEBIAN_PACKAGE}): recorded clips left out", stacklevel=2)
        return []
    wavs = sorted((DATA / "librivox").glob("*.wav")) + sorted((DATA / "cards").glob("*.wav"))
    raws = [DATA / "goforward.raw", DATA / "tidigits" / "dhd.2934z.raw"]
    return [load_audio(p) for p in wavs] + [np.fromfile(p, "<i2").astype(np.int16) for p in raws]


def _host_segmented(pcm: np.ndarray, chunk: int = P.MAX_AUDIO_SAMPLES) -> list[P.Audio]:
    n = max(1, -(-len(pcm) // chunk))
    return [P.Audio(pcm[i * chunk:(i + 1) * chunk], (P.AudioFlag.UTT_START if i == 0 else 0)
                    | (P.AudioFlag.UTT_END if i == n - 1 else 0)) for i in range(n)]


def _endpointed(stream: np.ndarray, seed: int) -> list[P.Audio]:
    rng, out, i = np.random.default_rng(seed), [], 0
    while i < len(stream):
        k = int(rng.integers(100, P.MAX_AUDIO_SAMPLES))
        out.append(P.Audio(stream[i:i + k], P.AudioFlag.STREAM_END if i + k >= len(stream) else 0))
        i += k
    return out


class _Recorded:
    """A Device whose windows' int8 inputs are kept, in the order they run."""

    def __init__(self, dev: Device) -> None:
        self.dev, self.inputs = dev, []
        run = dev.run_window

        def recording(x: np.ndarray, n: int):
            self.inputs.append((x.copy(), n))
            return run(x, n)

        dev.run_window = recording

    def frames(self, audio: list[P.Audio]) -> list[tuple[P.Message, bytes]]:
        """Every message the device sends for `audio` and the bytes its framing makes of it (sequence number 0:
        the serve loop numbers frames, not the core)."""
        return [(m, self.dev.core.framing.encode(m, 0)) for seq, a in enumerate(audio)
                for m in self.dev.handle(P.Frame(seq, a))]


def _by_window(frames: list[tuple[P.Message, bytes]]) -> dict[tuple, list[tuple[P.Message, bytes]]]:
    """Frames grouped by (utt_id, window), ACKs by the sequence number they acknowledge; in order."""
    out: dict[tuple, list[tuple[P.Message, bytes]]] = {}
    for m, b in frames:
        key = (("ack", m.seq) if isinstance(m, P.Ack) else (m.utt_id, m.window)
               if isinstance(m, (P.Result, P.Handoff)) else (type(m).__name__, len(out)))
        out.setdefault(key, []).append((m, b))
    return out


def test_c_and_python_cores_send_the_same_frames(ref: Reference, utterances: list[np.ndarray]) -> None:
    """The default C core and the Python reference core, on host-segmented utterances (generated, and the
    recorded clips when pocketsphinx-testdata is installed) and on endpointed streams ending inside a hop, send
    the same frames byte for byte, in the same order, with two allowed differences, both float rounding:
    - RESULT confidence: the C exit measure is float32, the reference's float64, so the float32 on the wire
      may differ in its last bits (relative MEASURE_REL). Every other byte is equal; a threshold far from
      every measure (_mid_gap) keeps the exit decisions equal.
    - A window whose int8 input differs: the C log-mel is float32, the reference's float64 (docs/features.md:
      |dL| < 1e-3 near a frame's loudest bin, more far below it), so a value whose z / scale lies that close to
      a .5 rounding boundary is quantized 1 LSB apart. TFLM then runs on other inputs, and through an int8
      network one LSB can change the hidden state and the tokens (seen with the trained default model on this
      audio: about a third of its windows had 1-2 such values among up to 48,000). Such a window may
      differ in a few values (at most 1 per 1000, and 1 per 10,000 over all windows), by 1 LSB each, and the
      C core's frames for it must be exactly the Python core's frames on the C core's input: the input is
      the only divergence.
    Window cuts must agree: both cut at the minimum of the same energies, which differ by ~1e-5."""
    clips = _clips()
    quiet = _quiet(0.7, 60)
    streams = [np.concatenate([quiet, _speech(1.2, 61), quiet, _speech(0.8, 62), quiet, _speech(0.6, 63)])[:-33]]
    if clips:
        streams.append(np.concatenate([quiet, *(x for c in clips[:6] for x in (c, quiet)), clips[6]])[:-77])
    values = [v for pcm in [*utterances, *clips] for v in ref.exit1_entropies(pcm)]
    for st in streams:
        ep = Endpointer()
        ev = ep.push(st) + [e for e in [ep.flush()] if e]
        values += [v for a, b in zip(ev[::2], ev[1::2]) for v in ref.exit1_entropies(st[a.sample:b.sample])]
    threshold = _mid_gap(values)
    audio = [a for pcm in [*utterances, *clips] for a in _host_segmented(pcm)]
    audio += [a for i, st in enumerate(streams) for a in _endpointed(st, i)]

    program, bundle = ref.program, ref.bundle
    c = _Recorded(Device(bundle, program, c_core(bundle, program, threshold=threshold)))
    py = _Recorded(Device(bundle, program, python_core(bundle, program, threshold=threshold)))
    assert c.dev.hello.firmware.endswith("(eeasr_core C)") and py.dev.hello.firmware.endswith("(python reference)")
    got, want = _by_window(c.frames(audio)), _by_window(py.frames(audio))
    assert list(got) == list(want)
    assert len(c.inputs) == len(py.inputs)
    ran = iter(zip(c.inputs, py.inputs))          # the k-th window run: the k-th RESULT naming an exit
    differing, values_run, kinds = 0, 0, set()
    for key, frames in got.items():
        expected = want[key]
        result = frames[0][0]
        if not isinstance(result, P.Result) or result.exit_index == 0:   # ACKs, NO_SPEECH, too short to run
            assert [b for _, b in frames] == [b for _, b in expected], key
            continue
        (xc, n), (xp, n_py) = next(ran)
        assert n == n_py, f"window {key} cut at {n} frames by the C core, {n_py} by the reference"
        values_run += xc[0, :n].size
        if not np.array_equal(xc, xp):
            d = np.abs(xc[0, :n].astype(np.int32) - xp[0, :n].astype(np.int32))
            assert d.max() == 1 and (d > 0).sum() <= max(1, d.size // 1000), (key, int(d.max()), int((d > 0).sum()))
            differing += int((d > 0).sum())
            # what the reference core sends for the C core's input
            out, dec = Device.run_window(py.dev, xc, n)
            e, qp = out.exits[-1], out.hidden_qparams
            up = py.dev.hands_off and not dec.confident
            final = result.flags & P.ResultFlag.FINAL
            expected = [P.Result(*key, final | (P.ResultFlag.HANDED_OFF if up else 0), e.index, e.layer,
                                 result.measure, dec.value, dec.tokens)]
            if up:
                expected.append(P.Handoff(*key, final, out.hidden_layer, py.dev.hello.model_hash, qp.scale,
                                          qp.zero_point, out.hidden_q))
            expected = [(m, P.encode(m, 0)) for m in expected]
        assert len(frames) == len(expected), key
        kinds.add("handoff" if result.flags & P.ResultFlag.HANDED_OFF else f"exit{result.exit_index}")
        for (g, gb), (w, wb) in zip(frames, expected):
            if isinstance(g, P.Result):
                assert gb == P.encode(g, 0)              # C framing, byte for byte
                assert g.confidence == pytest.approx(w.confidence, rel=MEASURE_REL), key
                gb = P.encode(dataclasses.replace(g, confidence=w.confidence), 0)
            assert gb == wb, (key, g, w)
    assert {"handoff", "exit1"} <= kinds, kinds
    # near-ties are rare: about 1 value in 100,000 with the default model
    assert differing <= max(1, values_run // 10_000), f"{differing} of {values_run} int8 inputs differ"


def _start_sim(bundle: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`eeasr-host device-sim --port pty ARGS` and the pty it announces."""
    proc = subprocess.Popen([str(BIN / "eeasr-host"), "device-sim", "--bundle", str(bundle), "--port", "pty",
                             "--exit-with-parent", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith(SIM_READY), proc.stderr.read() if proc.poll() is not None else line
    return proc, line[len(SIM_READY):].strip()


def test_python_core_on_request(small_bundle: Path, ref: Reference, threshold: float) -> None:
    proc, port = _start_sim(small_bundle, "--core", "python", "--threshold", repr(threshold))
    try:
        with DeviceLink(port) as lk:
            assert lk.hello(10).firmware == "eeasr-device-sim (python reference)"
            pcm = _speech(0.7, 70)
            lk.send_audio(pcm, P.AudioFlag.UTT_START | P.AudioFlag.UTT_END)
            got = _receive_all(lk)
    finally:
        proc.kill()
        proc.communicate()
    want = ref.messages(got[0].utt_id, pcm, threshold)
    assert [(type(m), m.window, m.flags) for m in got] == [(type(m), m.window, m.flags) for m in want]
    for g, w in zip(got, want):   # the C core's reference: the same frames up to float rounding (see above)
        if isinstance(g, P.Result):
            assert g.confidence == pytest.approx(w.confidence, rel=MEASURE_REL)
            g = dataclasses.replace(g, confidence=w.confidence)
        assert _same(g, w), (g, w)


def test_without_a_compiler_the_c_core_says_what_to_do(small_bundle: Path, tmp_path: Path) -> None:
    """No library built and no gcc or make on PATH: one line naming build-essential and --core python."""
    code = ("import sys; from pathlib import Path; from eeasr.host import ccore; "
            "ccore.LIBRARY = Path(sys.argv[1]); from eeasr.host.cli import main; "
            "main(['device-sim', '--bundle', sys.argv[2]], prog_name='eeasr-host')")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "libeeasr_core.so"), str(small_bundle)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PATH": str(tmp_path)})
    assert run.returncode == 1 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "build-essential" in lines[0] and "--core python" in lines[0], run.stderr
