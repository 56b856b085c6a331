"""The host's side of the serial link to a device (an ESP32-S3 over USB, or `eeasr-host device-sim`).

    from eeasr.host.link import DeviceLink, find_esp32s3_port, start_simulated_device

    with start_simulated_device("bundles/exits2") as sim, DeviceLink(sim.port) as link:
        hello = link.hello(timeout=5)                       # the model the device runs
        link.send_audio(pcm, AudioFlag.UTT_START | AudioFlag.UTT_END)
        link.wait_acked(timeout=30)                         # every result is sent before its frame's ACK
        for msg in link.receive(timeout=0.1): ...           # Result, Handoff, Error, Info (Hello on a reboot)

A background thread reads the line, so results arrive while `send_audio` waits for flow control (at most
MAX_UNACKED AUDIO frames unacknowledged). Garbage on the line is reported through `on_frame_error` (default:
a logged warning), never raised. A line that fails (device unplugged, simulator gone, no ACK for
`ack_timeout`) raises `DeviceGone` with a one-line message from the next call, once the messages that
arrived before are received: the caller reconnects.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from eeasr.protocol import (MAX_AUDIO_SAMPLES, Ack, Audio, AudioFlag, Command, CommandMsg, Error, Frame, FrameDecoder,
                            FrameError, Hello, Info, Message, MsgType, encode)

ESPRESSIF_VID = 0x303A
USB_SERIAL_JTAG_PID = 0x1001        # the ESP32-S3's built-in USB-Serial-JTAG
DEFAULT_BAUDRATE = 921600
MAX_UNACKED = 8                     # docs/protocol.md: the device cannot buffer more
SIM_READY = "device-sim: serial port "
_REPLIES: dict[int, tuple[type, ...]] = {Command.HELLO: (Hello,), Command.SELF_TEST: (Info,),
                                         Command.PROFILE: (Info,), Command.RESET: (Ack,)}

log = logging.getLogger(__name__)


class DeviceGone(ConnectionError):
    """The device went away (unplugged, reset, the simulator ended) or stopped answering: reconnect."""


class DeviceError(RuntimeError):
    """The device answered a command with an ERROR frame."""


@dataclass
class _Pending:
    """A command waiting for its reply: the first message of these types (or an ERROR)."""
    types: tuple[type, ...]
    reply: Message | None = None


class DeviceLink:
    """One open serial line to a device. Thread-safe: one thread may send while another receives."""

    def __init__(self, port: str, baudrate: int = DEFAULT_BAUDRATE, *,
                 on_frame_error: Callable[[FrameError], None] | None = None, ack_timeout: float = 10.0) -> None:
        import serial

        self.port = port
        self.ack_timeout = ack_timeout
        self._errors = (serial.SerialException, OSError)
        self._on_frame_error = on_frame_error or (lambda e: log.warning("%s: bad frame from the device (%d bytes): "
                                                                         "%s", port, e.n_bytes, e.reason))
        try:
            self._ser = serial.serial_for_url(port, baudrate=baudrate, timeout=0.1, write_timeout=ack_timeout)
            self._ser.reset_input_buffer()   # whatever a previous session left unread
        except self._errors as e:
            raise DeviceGone(f"cannot open {port}: {e}") from None
        self._decoder = FrameDecoder()
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._command_lock = threading.Lock()
        self._inbox: deque[Message] = deque()
        self._unacked: dict[int, float] = {}     # AUDIO seq -> time sent
        self._pending: _Pending | None = None
        self._gone: str | None = None
        self._closing = False
        self._seq = 0
        self._reader = threading.Thread(target=self._read_loop, name=f"eeasr-link {port}", daemon=True)
        self._reader.start()

    # the reader thread

    def _read_loop(self) -> None:
        while not self._closing:
            try:
                data = self._ser.read(max(1, self._ser.in_waiting))
            except self._errors as e:
                if not self._closing:
                    self._fail(f"read failed: {e}")
                return
            if data:
                self._dispatch(self._decoder.feed(data))

    def _dispatch(self, items: list[Frame | FrameError]) -> None:
        for item in items:
            if isinstance(item, FrameError):
                self._on_frame_error(item)
                continue
            msg = item.msg
            with self._cond:
                if isinstance(msg, Ack) and msg.of == MsgType.AUDIO:
                    self._unacked.pop(msg.seq, None)
                elif self._pending is not None and self._pending.reply is None and \
                        isinstance(msg, (*self._pending.types, Error)):
                    self._pending.reply = msg
                elif not isinstance(msg, Ack):   # a command's ACK after its caller gave up: nothing to do
                    self._inbox.append(msg)
                self._cond.notify_all()

    def _fail(self, reason: str) -> None:
        with self._cond:
            if self._gone is None:
                self._gone = f"the device on {self.port} is gone ({reason})"
            self._cond.notify_all()

    def _check(self) -> None:
        if self._gone is not None:
            raise DeviceGone(self._gone)
        if self._closing:
            raise DeviceGone(f"the link to {self.port} is closed")

    # sending

    def _send(self, msg: Message, audio: bool = False) -> int:
        with self._write_lock:
            seq = self._seq
            self._seq = (self._seq + 1) & 0xFFFF
            data = encode(msg, seq)
            if audio:
                with self._cond:
                    self._unacked[seq] = time.monotonic()   # before writing: the ACK may beat us back
            try:
                self._ser.write(data)
            except self._errors as e:
                self._fail(f"write failed: {e}")
                self._check()
        return seq

    def send_audio(self, samples: np.ndarray, flags: int = 0) -> None:
        """Send int16 samples in frames of at most 4096, waiting while MAX_UNACKED frames are unacknowledged.
        UTT_START in `flags` goes on the first frame, UTT_END and STREAM_END on the last (an empty array sends
        one frame with just the flags)."""
        s = np.asarray(samples)
        if s.ndim != 1 or s.dtype != np.int16:
            raise ValueError(f"audio must be 1-D int16 (16 kHz mono PCM), got {s.dtype} {s.shape}")
        starts = range(0, max(len(s), 1), MAX_AUDIO_SAMPLES)
        for i in starts:
            f = (flags & AudioFlag.UTT_START if i == 0 else 0) | \
                (flags & (AudioFlag.UTT_END | AudioFlag.STREAM_END) if i + MAX_AUDIO_SAMPLES >= len(s) else 0)
            with self._cond:
                room = self._cond.wait_for(lambda: self._gone or len(self._unacked) < MAX_UNACKED, self.ack_timeout)
                self._check()
            if not room:
                self._fail(f"no ACK for {self.ack_timeout:g} s with {MAX_UNACKED} audio frames outstanding: it "
                           f"stopped responding")
                self._check()
            self._send(Audio(s[i:i + MAX_AUDIO_SAMPLES], f), audio=True)

    def wait_acked(self, timeout: float) -> bool:
        """Wait until every AUDIO frame sent is acknowledged (so every result it caused has arrived)."""
        with self._cond:
            self._cond.wait_for(lambda: self._gone or not self._unacked, timeout)
            if self._unacked:
                self._check()
            return not self._unacked

    @property
    def unacked(self) -> int:
        """AUDIO frames sent and not yet acknowledged."""
        with self._cond:
            return len(self._unacked)

    def command(self, cmd: int, timeout: float = 10.0) -> Message:
        """Send COMMAND `cmd` and return its reply: HELLO -> Hello, SELF_TEST / PROFILE -> Info, RESET -> Ack;
        an Error when the device answers with one. TimeoutError when nothing comes in `timeout` s."""
        types = _REPLIES.get(cmd, ())
        with self._command_lock:
            pending = _Pending(types)
            with self._cond:
                self._check()
                self._pending = pending
            try:
                self._send(CommandMsg(cmd))
                with self._cond:
                    self._cond.wait_for(lambda: pending.reply is not None or self._gone, timeout)
            finally:
                with self._cond:
                    self._pending = None
            if pending.reply is not None:
                return pending.reply
            self._check()
            name = Command(cmd).name if cmd in _REPLIES else str(cmd)
            raise TimeoutError(f"no reply to COMMAND {name} from the device on {self.port} in {timeout:g} s")

    def hello(self, timeout: float = 5.0) -> Hello:
        """COMMAND HELLO: what the device runs."""
        reply = self.command(Command.HELLO, timeout)
        if not isinstance(reply, Hello):   # an Error: the only other reply a command takes
            raise DeviceError(f"device on {self.port} answered HELLO with error {reply.code}: {reply.message}")
        return reply

    # receiving

    def receive(self, timeout: float = 0.0) -> list[Message]:
        """The messages that arrived (RESULT, HANDOFF, ERROR, INFO; a HELLO when the device restarted), waiting
        up to `timeout` s for the first. DeviceGone once the line failed and nothing is left to receive."""
        with self._cond:
            self._cond.wait_for(lambda: self._inbox or self._gone or self._closing, timeout)
            if self._inbox:
                out = list(self._inbox)
                self._inbox.clear()
                return out
            if self._gone or self._closing:
                self._check()
            return []

    # lifetime

    def close(self) -> None:
        """Stop the reader and close the port (idempotent)."""
        if self._closing:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._reader.join(timeout=2.0)
        try:
            self._ser.close()
        except self._errors:
            pass

    def __enter__(self) -> DeviceLink:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def find_esp32s3_port() -> str | None:
    """The serial port of an attached ESP32-S3, by USB id: Espressif's VID 0x303A, the USB-Serial-JTAG
    (0x303A:0x1001) first, then any other Espressif USB device (native USB CDC firmware). None if none."""
    from serial.tools import list_ports

    ports = [p for p in list_ports.comports() if p.vid == ESPRESSIF_VID]
    ports.sort(key=lambda p: (p.pid != USB_SERIAL_JTAG_PID, p.device))
    return ports[0].device if ports else None


class SimulatedDevice:
    """A running `eeasr-host device-sim ... --port pty` process; `port` is the pty a DeviceLink opens."""

    def __init__(self, process: subprocess.Popen, port: str, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The end of the simulator's stderr (its start-up lines, bad frames, errors; per window with verbose)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0, keep_log: bool = False) -> None:
        """Terminate the simulator (SIGTERM, then SIGKILL after `timeout`); its log goes unless `keep_log`."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        if not keep_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> SimulatedDevice:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def start_simulated_device(bundle_dir: str | Path, *, measure: str | None = None, threshold: float | None = None,
                           verbose: bool = False, timeout: float = 60.0) -> SimulatedDevice:
    """Launch `eeasr-host device-sim --bundle DIR --port pty` as a subprocess (the same Python), wait for the pty
    path it prints, and return it running. It exits with the calling process. Raises RuntimeError with the
    simulator's own one-line error when it does not start (e.g. the bundle fails to load)."""
    args = ["device-sim", "--bundle", str(bundle_dir), "--port", "pty", "--exit-with-parent"]
    if measure is not None:
        args += ["--measure", measure]
    if threshold is not None:
        args += ["--threshold", repr(float(threshold))]
    if verbose:
        args.append("--verbose")
    fd, name = tempfile.mkstemp(prefix="eeasr-device-sim-", suffix=".log")
    log_path = Path(name)
    with os.fdopen(fd, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-c", "from eeasr.host.cli import main; main(prog_name='eeasr-host')",
                                 *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file, text=True,
                                start_new_session=True)   # the host's Ctrl-C is the host's to handle
    sim = SimulatedDevice(proc, "", log_path)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, left))
        line = proc.stdout.readline() if ready else None
        if line and line.startswith(SIM_READY):
            sim.port = line[len(SIM_READY):].strip()
            return sim
        if line == "" or left <= 0:   # EOF: it exited; or it is taking too long
            sim.stop(keep_log=True)
            tail = [x for x in sim.log_tail().splitlines() if x.strip()]
            why = tail[-1] if tail else f"exit status {proc.returncode}"
            if line is None:
                why = f"no serial port after {timeout:g} s; {why}"
            raise RuntimeError(f"the simulated device did not start: {why} (log: {log_path})")


__all__ = ["DeviceLink", "DeviceGone", "DeviceError", "SimulatedDevice", "start_simulated_device",
           "find_esp32s3_port", "ESPRESSIF_VID", "USB_SERIAL_JTAG_PID", "MAX_UNACKED", "DEFAULT_BAUDRATE"]
