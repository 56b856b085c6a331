"""The simulated device: what the ESP32-S3 firmware does, over a real serial line (docs/protocol.md).

`Device` is the firmware's behaviour, independent of the line: it takes decoded frames and yields the frames
to send back, in order. AUDIO goes to the open utterance (host-segmented between UTT_START and UTT_END) or
through the energy endpointer (eeasr/endpoint.py), keeping the 23 hops of audio before a start. Per
utterance: streaming log-mel (restarted), normalized with the bundle's statistics and quantized with
segment 1's input parameters; windows are cut as frames arrive (host/windows_stream.py, the rule of
eeasr/windows.py); each window runs the bundle's segments under the real TFLM interpreter
(eeasr/device_program.py), exit by exit, until the exit policy is confident; otherwise, after the last
device exit, RESULT with HANDED_OFF and a HANDOFF of the int8 hidden state. Every RESULT and HANDOFF that an
AUDIO frame causes is sent before that frame's ACK, so a host that has all its ACKs has all its results.

Four seams, filled by the firmware's own portable C (firmware/components/eeasr_core through host/ccore.py:
`c_core`, the default) or by the Python reference (`python_core`): `FeatureFrontEnd` (samples -> quantized
frames + their energies), `ExitPolicy` (int8 logits -> measure, decision, greedy tokens), `Framing` (frames
<-> bytes) and the endpointer. The C seams follow firmware/main/pipeline.c step by step; the segments run
under the tflite-micro wheel either way. The two cores answer alike up to float rounding (tests/
test_device_sim.py states the tolerance).

`serve` runs a Device on a port: a pseudo-terminal it creates (`pty`, the path printed as
`device-sim: serial port /dev/pts/N`), a serial device path, or a pyserial URL (socket://, loop://, ...).
"""

from __future__ import annotations

import os
import select
import sys
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from eeasr import protocol as P
from eeasr.bundle import Bundle, QParams, quantize
from eeasr.device_program import DeviceProgram, ExitOutput, WindowOutput
from eeasr.gated_program import GatedProgram
from eeasr.endpoint import HOP, PREROLL_HOPS, START_HOPS, Endpointer, Event
from eeasr.exits import BLANK, frame_entropy, greedy_ctc, nonblank_entropy
from eeasr.features import FeatureConfig, NormStats, StreamingLogMel
from eeasr.host import ccore
from eeasr.host.device_checks import profile, self_test
from eeasr.host.windows_stream import StreamingWindows, Window, frame_energy

FIRMWARE = "eeasr-device-sim"
MIN_WINDOW_FRAMES = 4                    # docs/protocol.md: a shorter window yields an empty RESULT
PREROLL = (PREROLL_HOPS + START_HOPS) * HOP   # audio kept before a speech start: the 23 hops the device buffers
POLL_S = 1.0                             # how long a port read waits before the serve loop looks around
MEASURES = {"entropy": P.Measure.FRAME_ENTROPY, "nonblank_entropy": P.Measure.NONBLANK_ENTROPY}  # manifest names
MEASURE_FN = {P.Measure.FRAME_ENTROPY: frame_entropy, P.Measure.NONBLANK_ENTROPY: nonblank_entropy}
# firmware/main/link.c's receive buffer (RX_CAP): the longest encoded frame the device takes, a full AUDIO frame
DEVICE_RX_BYTES = P.MAX_AUDIO_SAMPLES * 2 + 2 + P.HEADER.size + P.CRC.size
DEVICE_RX_BYTES += DEVICE_RX_BYTES // 254 + 1
Log = Callable[[str], None]
Program = DeviceProgram | GatedProgram   # by the bundle's program kind (eeasr.gated_program.load_program)


# ---- seams -------------------------------------------------------------------------------------------------

class FeatureFrontEnd(Protocol):
    """One utterance's front end: int16 samples in, (quantized frames [k, n_mels], energies [k]) out."""

    def reset(self) -> None: ...

    def push(self, pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class PyFeatures:
    """The reference: StreamingLogMel, (x - mean) / std, the contract's quantizer; energies by frame_energy."""

    def __init__(self, cfg: FeatureConfig, norm: NormStats, qparams: QParams) -> None:
        self._stream = StreamingLogMel(cfg)
        self.norm = norm
        self.qparams = qparams

    def reset(self) -> None:
        self._stream.reset()

    def push(self, pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logmel = self._stream.push(pcm)
        return quantize(self.norm.apply(logmel), self.qparams), frame_energy(logmel)


class CFeatures:
    """The firmware's front end (pipeline.c utt_feed/add_frame): eeasr_core's streaming log-mel, each frame's
    energy (the double sum in bin order pipeline.c takes, frame_energy), then normalization and int8
    quantization in C."""

    def __init__(self, cfg: FeatureConfig, norm: NormStats, qparams: QParams) -> None:
        if qparams.dtype != "int8":
            raise ValueError(f"the C core quantizes features to int8, segment 1 takes {qparams.dtype}")
        self._stream = ccore.StreamingLogMel(cfg)   # ValueError for a feature config C is not compiled for
        self.norm = norm
        self.qparams = qparams

    def reset(self) -> None:
        self._stream.reset()

    def push(self, pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logmel = self._stream.push(pcm)
        q = ccore.features_int8(logmel, self.norm, self.qparams.scale, self.qparams.zero_point)
        return q, frame_energy(logmel)


@dataclass
class ExitDecision:
    value: float             # the measure on the valid frames
    confident: bool          # surer than the threshold: the device answers here
    tokens: list[int]        # greedy CTC


class ExitPolicy(Protocol):
    measure: P.Measure
    threshold: float | None

    def decide(self, exit: ExitOutput) -> ExitDecision: ...


class PyExitPolicy:
    """The reference: the measure (eeasr/exits.py) of the log-softmax of the dequantized int8 logits, over
    valid frames; confident when <= the threshold (entropies: lower is surer, the calibration's rule)."""

    def __init__(self, measure: str, threshold: float | None, blank: int = BLANK) -> None:
        self.measure = MEASURES[measure]
        self.threshold = threshold
        self.blank = blank

    def decide(self, exit: ExitOutput) -> ExitDecision:
        logp = exit.log_probs()
        value = (frame_entropy(logp) if self.measure == P.Measure.FRAME_ENTROPY
                 else nonblank_entropy(logp, self.blank))
        return ExitDecision(value, self.threshold is not None and value <= self.threshold,
                            greedy_ctc(logp, self.blank))


class CExitPolicy:
    """The firmware's (pipeline.c run_window): eeasr_exit_measures_int8 on the exit's int8 logits (dequantize,
    float32 log-softmax, entropies in float), compared in float32 with the threshold as the model image
    stores it; greedy CTC on the int8 logits (eeasr_greedy_ctc_int8)."""

    def __init__(self, measure: str, threshold: float | None, blank: int = BLANK) -> None:
        self.measure = MEASURES[measure]
        self.threshold = threshold
        self.blank = blank

    def decide(self, exit: ExitOutput) -> ExitDecision:
        qp = exit.qparams
        m = ccore.exit_measures(exit.logits_q, qp.scale, qp.zero_point, blank=self.blank)
        value = m.entropy if self.measure == P.Measure.FRAME_ENTROPY else m.nonblank_entropy
        sure = self.threshold is not None and np.float32(value) <= np.float32(self.threshold)
        return ExitDecision(value, bool(sure), ccore.greedy_ctc(exit.logits_q, blank=self.blank))


class Decoder(Protocol):
    def feed(self, data: bytes) -> list[P.Frame | P.FrameError]: ...


class Framing(Protocol):
    def encode(self, msg: P.Message, seq: int) -> bytes: ...

    def decoder(self) -> Decoder: ...


class PyFraming:
    """The reference: eeasr/protocol.py."""

    def encode(self, msg: P.Message, seq: int) -> bytes:
        return P.encode(msg, seq)

    def decoder(self) -> Decoder:
        return P.FrameDecoder()


class CFraming:
    """The firmware's: eeasr_core packs and frames every message; its decoder has the device's receive buffer."""

    def encode(self, msg: P.Message, seq: int) -> bytes:
        return ccore.encode_message(msg, seq)

    def decoder(self) -> Decoder:
        return ccore.FrameDecoder(DEVICE_RX_BYTES)


class StreamEndpointer(Protocol):
    """eeasr/endpoint.py's interface: events at hop boundaries of an int16 stream fed in any chunks."""
    floor: float
    in_speech: bool

    def push(self, samples: np.ndarray) -> list[Event]: ...

    def flush(self) -> Event | None: ...


@dataclass
class Core:
    """The swappable parts of the device (`features` makes a front end: the device's, the self-test's;
    `endpointer` a fresh endpointer for each stream)."""
    features: Callable[[], FeatureFrontEnd]
    policy: ExitPolicy
    framing: Framing
    endpointer: Callable[[], StreamEndpointer]
    name: str


def bundle_threshold(bundle: Bundle, measure: str | None = None) -> tuple[str, float | None]:
    """The exit measure (the manifest's default_measure unless named) and its calibrated threshold. None: the
    calibration found no threshold meeting its target for that measure, so the device never exits early."""
    th = bundle.thresholds
    name = measure or th.get("default_measure") or "entropy"
    if name not in MEASURES:
        raise ValueError(f"exit measure {name!r}: the device computes {', '.join(MEASURES)}")
    entry = (th.get("measures") or {}).get(name)
    return name, (float(entry["threshold"]) if entry else None)


def _seam_inputs(bundle: Bundle, program: Program, measure: str | None,
                 threshold: float | None) -> tuple[FeatureConfig, NormStats, QParams, str, float | None, int]:
    f = bundle.manifest["features"]
    name, calibrated = bundle_threshold(bundle, measure)
    return (FeatureConfig.from_dict(f["config"]), NormStats.from_dict(f["norm"]), program.feats_qparams, name,
            calibrated if threshold is None else threshold, int(bundle.manifest["model"].get("blank", BLANK)))


def python_core(bundle: Bundle, program: Program, measure: str | None = None,
                threshold: float | None = None) -> Core:
    """The Python reference of every seam for `bundle`; `threshold` overrides the calibrated one."""
    cfg, norm, qp, name, th, blank = _seam_inputs(bundle, program, measure, threshold)
    return Core(lambda: PyFeatures(cfg, norm, qp), PyExitPolicy(name, th, blank), PyFraming(), Endpointer,
                "python reference")


def c_core(bundle: Bundle, program: Program, measure: str | None = None,
           threshold: float | None = None) -> Core:
    """Every seam from the firmware's portable C core (host/ccore.py builds libeeasr_core.so on first use).
    Raises CCoreError when the library cannot be built or loaded, ValueError for a bundle it cannot serve."""
    cfg, norm, qp, name, th, blank = _seam_inputs(bundle, program, measure, threshold)
    for st in program.stages:
        if st.out_qparams("logits").dtype != "int8":
            raise ValueError(f"{st.name}: the C exit measures take int8 logits, the segment emits "
                             f"{st.out_qparams('logits').dtype} (pass --core python)")
    try:   # builds and loads the library now, and checks the feature config, before serving
        CFeatures(cfg, norm, qp)
    except ValueError as e:
        raise ValueError(f"{e}: the C core cannot serve this bundle (pass --core python)") from None
    return Core(lambda: CFeatures(cfg, norm, qp), CExitPolicy(name, th, blank), CFraming(), ccore.Endpointer,
                "eeasr_core C")


CORES: dict[str, Callable[..., Core]] = {"c": c_core, "python": python_core}


# ---- the device --------------------------------------------------------------------------------------------

@dataclass
class _Utterance:
    id: int
    host: bool                   # host-segmented (UTT_START .. UTT_END); else the endpointer's
    cutter: StreamingWindows
    windows: int = 0


@dataclass
class SegmentTimes:
    """Wall time of one segment under TFLM on this host (the simulation's stand-in for cycles)."""
    runs: int = 0
    total_s: float = 0.0
    max_s: float = 0.0

    def add(self, dt: float) -> None:
        self.runs += 1
        self.total_s += dt
        self.max_s = max(self.max_s, dt)


class Device:
    """The firmware's behaviour for one bundle; `handle` turns each decoded frame into the frames to send."""

    def __init__(self, bundle: Bundle, program: Program, core: Core, log: Log = lambda _: None) -> None:
        self.bundle, self.program, self.core, self.log = bundle, program, core, log
        m = bundle.manifest
        self.hello = P.Hello(
            model_hash=self.bundle.model_hash[:16], bundle_id=self.bundle.bundle_id[:16],
            feature_hash=m["features"]["hash"][:16], sample_rate=int(m["features"]["config"]["sample_rate"]),
            window=self.program.window, subsampling=self.program.subsampling, d_model=int(m["model"]["d_model"]),
            vocab=int(m["model"]["vocab_size"]), exit_layers=[s.exit_layer for s in self.program.stages],
            firmware=f"{FIRMWARE} ({self.core.name})")
        # a bundle without a server model keeps its last exit's answer: nothing to hand off to
        self.hands_off = m.get("server") is not None
        qp = self.program.feats_qparams
        self._pad = quantize(np.zeros(1, np.float32), qp)[0]   # padded frames are zeros before quantization
        self.front = self.core.features()
        self.times: dict[str, SegmentTimes] = {s.name: SegmentTimes() for s in self.program.stages}
        self.windows_run = 0
        self._next_id = 0
        self._utt: _Utterance | None = None
        self._new_stream()

    # state

    def _new_stream(self) -> None:
        """Forget the endpointer and the audio it held (start-up, STREAM_END, RESET)."""
        self._ep = self.core.endpointer()
        self._hist = np.zeros(0, np.int16)     # the stream's samples [hist_start, pos)
        self._hist_start = 0
        self._fed = 0                          # stream samples fed to the open endpointed utterance

    def _open(self, host: bool) -> None:
        self.front.reset()
        self._utt = _Utterance(self._next_id, host, StreamingWindows(self.program.window))
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF

    # frames

    def handle(self, item: P.Frame | P.FrameError) -> Iterator[P.Message]:
        """The replies to one decoded frame (or to garbage), in the order they go on the line."""
        if isinstance(item, P.FrameError):
            self.log(f"bad frame ({item.n_bytes} bytes): {item.reason}")
            yield P.Error(P.ErrorCode.BAD_FRAME, item.reason)
            return
        msg = item.msg
        if isinstance(msg, P.Audio):
            try:
                yield from self._audio(msg)
            except (RuntimeError, ValueError) as e:   # TFLM, a payload over the limit: report, go on, still ACK
                lost = self._utt.id if self._utt is not None else None
                self._utt = None
                self.log(f"internal error, utterance {lost} dropped: {type(e).__name__}: {e}")
                yield P.Error(P.ErrorCode.INTERNAL, f"utterance {lost} dropped: {type(e).__name__}: {e}")
            yield P.Ack(item.seq, P.MsgType.AUDIO)
        elif isinstance(msg, P.CommandMsg):
            yield from self._command(msg.command, item.seq)
        elif isinstance(msg, P.Error):
            self.log(f"host reported error {msg.code}: {msg.message}")   # never answer an error with one
        else:
            yield P.Error(P.ErrorCode.BAD_FRAME, f"unexpected {msg.TYPE.name} frame from the host")

    def _command(self, cmd: int, seq: int) -> Iterator[P.Message]:
        if cmd == P.Command.HELLO:
            yield self.hello
        elif cmd == P.Command.SELF_TEST:
            yield P.Info(self_test(self))
        elif cmd == P.Command.PROFILE:
            yield P.Info(profile(self))
        elif cmd == P.Command.RESET:
            dropped = self._utt.id if self._utt is not None else None
            self._utt = None
            self._new_stream()
            self.log("reset" + (f": utterance {dropped} dropped" if dropped is not None else ""))
            yield P.Ack(seq, P.MsgType.COMMAND)
        else:
            yield P.Error(P.ErrorCode.BAD_FRAME, f"unknown command {cmd}")

    # audio

    def _audio(self, a: P.Audio) -> Iterator[P.Message]:
        pcm = a.samples
        if a.flags & P.AudioFlag.UTT_START:
            if self._utt is not None:          # whatever was open ends where the host's utterance starts
                yield from self._close()
            self._new_stream()                 # endpointed audio after it is a new stream for the endpointer
            self._open(host=True)
        utt = self._utt
        if utt is not None and utt.host:
            yield from self._feed(pcm)
            if a.flags & (P.AudioFlag.UTT_END | P.AudioFlag.STREAM_END):
                yield from self._close()
            if a.flags & P.AudioFlag.STREAM_END:
                self._new_stream()
            return
        yield from self._endpointed(pcm)
        if a.flags & P.AudioFlag.STREAM_END:
            end = self._ep.flush()
            if end is not None and self._utt is not None:
                yield from self._feed_stream(end.sample)
                yield from self._close()
            self._new_stream()

    def _endpointed(self, pcm: np.ndarray) -> Iterator[P.Message]:
        events = self._ep.push(pcm)
        self._hist = np.concatenate([self._hist, pcm])
        for ev in events:
            if ev.kind == "start":
                self._open(host=False)
                self._fed = ev.sample
                self.log(f"utterance {self._utt.id}: speech starts at {ev.sample / self.hello.sample_rate:.2f} s "
                         f"of the stream")
            elif self._utt is not None:
                yield from self._feed_stream(ev.sample)
                self.log(f"utterance {self._utt.id}: speech ends at {ev.sample / self.hello.sample_rate:.2f} s")
                yield from self._close()
        if self._utt is not None:   # whole hops only, as the firmware: a STREAM_END never feeds a partial one
            yield from self._feed_stream((self._hist_start + len(self._hist)) // HOP * HOP)
        keep = min(len(self._hist), PREROLL)
        self._hist_start += len(self._hist) - keep
        self._hist = self._hist[len(self._hist) - keep:]

    def _feed_stream(self, upto: int) -> Iterator[P.Message]:
        """Feed the open endpointed utterance the stream's samples [fed, upto)."""
        a, b = self._fed - self._hist_start, upto - self._hist_start
        if a < 0:
            raise RuntimeError(f"stream sample {self._fed} is no longer buffered (kept from {self._hist_start})")
        self._fed = max(self._fed, upto)
        if b > a:
            yield from self._feed(self._hist[a:b])

    def _feed(self, pcm: np.ndarray) -> Iterator[P.Message]:
        utt = self._utt
        q, energy = self.front.push(pcm)
        for win in utt.cutter.push(q, energy):
            yield from self._run_window(utt, win, final=False)

    def _close(self) -> Iterator[P.Message]:
        utt, self._utt = self._utt, None
        last = utt.cutter.finish()
        if last is not None:
            yield from self._run_window(utt, last, final=True)
        else:   # no feature frame at all (under 25 ms of audio): account for the utterance anyway
            self.log(f"utterance {utt.id}: no speech")
            yield P.Result(utt.id, 0, P.ResultFlag.FINAL | P.ResultFlag.NO_SPEECH, 0, 0, self.core.policy.measure,
                           0.0, [])

    # windows

    def window_input(self, frames: np.ndarray) -> np.ndarray:
        """Quantized frames [n, n_mels] as the first segment's input [1, W, n_mels], padded past n."""
        x = np.full((1, self.program.window, self.program.n_mels), self._pad, dtype=self._pad.dtype)
        x[0, :len(frames)] = frames
        return x

    def _run_window(self, utt: _Utterance, win: Window, final: bool) -> Iterator[P.Message]:
        idx = utt.windows
        utt.windows += 1
        flags = P.ResultFlag.FINAL if final else 0
        policy = self.core.policy
        if win.n_frames < MIN_WINDOW_FRAMES:
            self.log(f"utterance {utt.id} window {idx}: {win.n_frames} frames, too short to run")
            yield P.Result(utt.id, idx, flags, 0, 0, policy.measure, 0.0, [])
            return
        out, d = self.run_window(self.window_input(win.frames), win.n_frames)
        e = out.exits[-1]
        self.windows_run += 1
        handoff = self.hands_off and not d.confident
        self.log(f"utterance {utt.id} window {idx} [{win.start}, {win.end}): exit {e.index} (layer {e.layer}) "
                 f"{policy.measure.name.lower()} {d.value:.4g} "
                 f"{'handed off' if handoff else 'answers'}, {len(d.tokens)} tokens")
        if not handoff:
            yield P.Result(utt.id, idx, flags, e.index, e.layer, policy.measure, d.value, d.tokens)
            return
        yield P.Result(utt.id, idx, flags | P.ResultFlag.HANDED_OFF, e.index, e.layer, policy.measure, d.value,
                       d.tokens)
        qp = out.hidden_qparams
        yield P.Handoff(utt.id, idx, flags, out.hidden_layer, self.hello.model_hash, qp.scale, qp.zero_point,
                        np.ascontiguousarray(out.hidden_q), out.module_mask)

    def run_window(self, x_q: np.ndarray, n_frames: int) -> tuple[WindowOutput, ExitDecision]:
        """The device program on one window with the exit policy deciding after each segment; each segment's
        wall time goes to `times` (time between the policy's calls: the segment, its requantization)."""
        decisions: list[ExitDecision] = []
        t = time.perf_counter()

        def stop(exit: ExitOutput) -> bool:
            nonlocal t
            self.times[self.program.stages[len(decisions)].name].add(time.perf_counter() - t)
            decisions.append(self.core.policy.decide(exit))
            t = time.perf_counter()
            return decisions[-1].confident

        out = self.program.run(x_q, n_frames, stop=stop)
        return out, decisions[-1]


# ---- ports and the serve loop ------------------------------------------------------------------------------

class PortClosed(ConnectionError):
    """The line went away (serial device unplugged, socket closed)."""


class PtyPort:
    """A pseudo-terminal pair: the device keeps the master and a host opens the slave's path like a USB
    serial device. The device holds the slave open too, so a host may close and reopen it at will."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)      # no echo, no line editing, no CR/LF mangling before the host sets it up
        self.path = os.ttyname(self._slave)

    def read(self) -> bytes:
        """What arrived, or b"" after POLL_S."""
        ready, _, _ = select.select([self.master], [], [], POLL_S)
        return os.read(self.master, 65536) if ready else b""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view):]

    def close(self) -> None:
        os.close(self.master)
        os.close(self._slave)


class SerialPort:
    """A serial device path or any pyserial URL (socket://, loop://, rfc2217://, ...)."""

    def __init__(self, url: str, baudrate: int) -> None:
        import serial

        self._exc = (serial.SerialException, OSError)
        try:
            self.ser = serial.serial_for_url(url, baudrate=baudrate, timeout=POLL_S)
        except self._exc as e:
            raise PortClosed(f"cannot open {url}: {e}") from None
        self.path = url

    def read(self) -> bytes:
        """What arrived, or b"" after POLL_S."""
        try:
            first = self.ser.read(1)
            return first + self.ser.read(self.ser.in_waiting) if first else b""
        except self._exc as e:
            raise PortClosed(f"{self.path}: {e}") from None

    def write(self, data: bytes) -> None:
        try:
            self.ser.write(data)
            self.ser.flush()
        except self._exc as e:
            raise PortClosed(f"{self.path}: {e}") from None

    def close(self) -> None:
        self.ser.close()


Port = PtyPort | SerialPort


def open_port(port: str, baudrate: int = 921600) -> Port:
    """`pty`: a new pseudo-terminal; anything else: a serial device path or a pyserial URL."""
    return PtyPort() if port == "pty" else SerialPort(port, baudrate)


def serve(device: Device, port: Port, exit_with_parent: bool = False,
          ready: Callable[[], None] = lambda: None) -> None:
    """Send HELLO, call `ready`, then answer frames until the port closes (PortClosed) or, with
    `exit_with_parent`, the process that started this one ends."""
    framing = device.core.framing
    decoder = framing.decoder()
    seq = 0

    def send(msg: P.Message) -> None:
        nonlocal seq
        try:
            data = framing.encode(msg, seq)
        except P.ProtocolError as e:      # e.g. a handoff over the payload limit: say so instead of dying
            data = framing.encode(P.Error(P.ErrorCode.INTERNAL, f"cannot send {msg.TYPE.name}: {e}"), seq)
        port.write(data)
        seq = (seq + 1) & 0xFFFF

    parent = os.getppid()
    send(device.hello)
    ready()
    while not (exit_with_parent and os.getppid() != parent):
        for item in decoder.feed(port.read()):
            for msg in device.handle(item):
                send(msg)


def stderr_log(msg: str) -> None:
    print(f"device-sim: {msg}", file=sys.stderr, flush=True)


def run_device_sim(bundle_dir: str | Path, port: str = "pty", measure: str | None = None,
                   threshold: float | None = None, baudrate: int = 921600, exit_with_parent: bool = False,
                   verbose: bool = False, core: str = "c", beta: float | None = None) -> None:
    """`eeasr-host device-sim`: load the bundle (BundleError, TFLMError, ValueError with a one-line reason when
    it does not), build the `core` ("c": the firmware's eeasr_core, RuntimeError with a one-line reason when it
    cannot be built; "python": the reference), open the port, print the pty path if it made one, serve until
    the port closes (PortClosed). The program is the bundle's kind: early-exit segments, or a gated (I3D)
    program (eeasr/gated_program.py) whose gate threshold `beta` overrides the manifest's."""
    from eeasr.bundle import load_bundle
    from eeasr.gated_program import load_program

    if core not in CORES:
        raise ValueError(f"core {core!r}: choose {' or '.join(CORES)}")
    bundle = load_bundle(bundle_dir)
    program = load_program(bundle, beta)
    try:
        seams = CORES[core](bundle, program, measure, threshold)
    except ccore.CCoreError as e:
        why = str(e).splitlines()[0]
        todo = "" if "build-essential" in why else "install build-essential (sudo apt-get install build-essential) or "
        raise RuntimeError(f"the C core (firmware/components/eeasr_core) is unavailable: {why}; {todo}pass --core "
                           "python to run the Python reference instead") from None
    dev = Device(bundle, program, seams, log=stderr_log if verbose else lambda _: None)
    policy = seams.policy
    name = next(k for k, v in MEASURES.items() if v == policy.measure)
    rule = (f"exit when {name} <= {policy.threshold:.4g}" + (" (--threshold)" if threshold is not None else
                                                             " (calibrated)")
            if policy.threshold is not None else f"no calibrated {name} threshold: never exits early")
    after = (f"hands off after layer {program.stages[-1].exit_layer}" if dev.hands_off
             else "no server model: the last exit answers")
    stderr_log(f"bundle {bundle.path}: model {bundle.model_hash}, bundle {bundle.bundle_id[:16]}, W={program.window} "
               f"frames, device exits at layers {dev.hello.exit_layers} under TFLM; {rule}; {after}; features, exit "
               f"policy, framing and endpointer: {seams.name}")
    p = open_port(port, baudrate)

    def ready() -> None:
        # after the start-up HELLO: it is already in the pty when a host opens it (and flushes what it finds
        # there), so it never arrives unasked in the middle of the host's session
        if isinstance(p, PtyPort):
            print(f"device-sim: serial port {p.path}", flush=True)   # the one line a host waits for
        else:
            stderr_log(f"serving on {p.path}")

    try:
        serve(dev, p, exit_with_parent, ready)
        stderr_log("the process that started the device ended: stopping")
    finally:
        p.close()


__all__ = ["Device", "Core", "FeatureFrontEnd", "PyFeatures", "CFeatures", "ExitPolicy", "PyExitPolicy", "CExitPolicy",
           "ExitDecision", "Framing", "PyFraming", "CFraming", "StreamEndpointer", "MEASURES", "MEASURE_FN",
           "python_core", "c_core", "CORES", "DEVICE_RX_BYTES", "bundle_threshold", "open_port", "serve",
           "PtyPort", "SerialPort", "PortClosed", "SegmentTimes", "run_device_sim", "MIN_WINDOW_FRAMES", "PREROLL",
           "FIRMWARE"]
