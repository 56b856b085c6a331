"""The device end of `eeasr-host stream`: an attached ESP32-S3 (named, or found by its USB id) or, when none is
attached, the simulated device (`eeasr-host device-sim` on a pty). The device's HELLO must name the model and
bundle the host was given. When the device goes away, `reconnect` restarts the simulated one or waits for
the attached one to be plugged back in.
"""

from __future__ import annotations

import time

from eeasr.bundle import Bundle
from eeasr.host.link import DeviceGone, DeviceLink, SimulatedDevice, find_esp32s3_port, start_simulated_device
from eeasr.host.live import LiveView
from eeasr.protocol import Hello

SIM_RESTARTS = 3                 # a simulated device that fails this often in a row is broken, not unplugged


class EdgeError(RuntimeError):
    """No usable device: it does not start, does not answer, or runs another model; one line saying why."""


class Edge:
    """Holds the link to the device and gets a new one when the device goes away: the simulated device is
    restarted; an attached one is waited for until it is plugged back in."""

    def __init__(self, bundle: Bundle, view: LiveView, port: str | None, simulate: bool) -> None:
        self.bundle = bundle
        self.view = view
        self.named_port = port
        self.simulate = simulate
        self.sim: SimulatedDevice | None = None
        self.link: DeviceLink | None = None

    def connect(self) -> DeviceLink:
        port = None if self.simulate else (self.named_port or find_esp32s3_port())
        if port is None:
            try:
                self.sim = start_simulated_device(self.bundle.path)
            except RuntimeError as e:
                raise EdgeError(str(e)) from None
            port = self.sim.port
            if self.simulate:
                self.view.say(f"using the simulated device (TFLM) on {port} (--simulate)")
            else:
                self.view.say(f"no ESP32-S3 attached: using the simulated device (TFLM) on {port}")
        else:
            self.view.say(f"device: ESP32-S3 on {port}")
        try:
            link = DeviceLink(port)
        except DeviceGone as e:
            self.close()
            raise EdgeError(str(e)) from None
        try:
            hello = link.hello(timeout=15.0)
            self._check(hello, port)
        except (TimeoutError, DeviceGone, RuntimeError) as e:
            link.close()
            self.close()
            if isinstance(e, EdgeError):
                raise
            raise EdgeError(f"the device on {port} does not answer HELLO ({e}); is it running eeasr firmware?") \
                from None
        self.link = link
        return link

    def _check(self, hello: Hello, port: str) -> None:
        b = self.bundle
        if hello.model_hash != b.model_hash[:16] or hello.bundle_id != b.bundle_id[:16]:
            raise EdgeError(f"the device on {port} runs model {hello.model_hash} (bundle {hello.bundle_id}), but the "
                            f"host's bundle {b.path} is model {b.model_hash[:16]} (bundle {b.bundle_id[:16]}): pass "
                            f"the device's bundle with --bundle, or flash this one")

    def reconnect(self, why: str) -> DeviceLink:
        """Close the dead link and get a new one (Ctrl-C stops the wait for an attached device)."""
        self.close_link()
        self.view.say(f"device lost: {why}")
        if self.sim is not None:
            self.sim.stop()
            self.sim = None
            for attempt in range(SIM_RESTARTS):
                try:
                    self.view.say("restarting the simulated device")
                    return self.connect()
                except (EdgeError, DeviceGone) as e:
                    if attempt == SIM_RESTARTS - 1:
                        raise EdgeError(f"the simulated device does not come back: {e}") from None
        self.view.say(f"waiting for the device{' on ' + self.named_port if self.named_port else ''} to come back "
                      f"(Ctrl-C to stop)")
        while True:
            time.sleep(1.0)
            if self.named_port or find_esp32s3_port():
                try:
                    return self.connect()
                except (EdgeError, DeviceGone) as e:
                    self.view.say(f"not yet: {e}")

    def close_link(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None

    def close(self) -> None:
        self.close_link()
        if self.sim is not None:
            self.sim.stop()
            self.sim = None


__all__ = ["Edge", "EdgeError"]
