"""`eeasr-host`: the host side of the edge-cloud split."""

from __future__ import annotations

from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """Talk to an eeasr device (or the simulated one), run the suffix server, stream speech.

    The device runs the first layers and answers when its exit is confident; otherwise it hands its
    int8 hidden state to the server, which runs the remaining layers.
    """


@main.command()
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Bundle written by `eeasr-convert` (its server/server.onnx runs the remaining layers).")
@click.option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", default=8750, type=click.IntRange(0, 65535), help="TCP port; 0 picks a free one.")
@click.option("--token", envvar="EEASR_TOKEN", default=None, show_envvar=True,
              help="Bearer token clients must send; when none is given a random one is generated and printed.")
@click.option("--batch-wait-ms", default=5.0, type=click.FloatRange(0, 1000),
              help="How long a handoff waits for others to share its model call.")
@click.option("--max-batch", default=32, type=click.IntRange(1, 1024), help="Handoffs per model call.")
@click.option("--max-queue", default=256, type=click.IntRange(1),
              help="Queued handoffs beyond which new ones are answered 503 (retry later).")
@click.option("--threads", default=None, type=click.IntRange(1),
              help="onnxruntime threads per model call [default: CPU cores, at most 4].")
def serve(bundle_dir: str, host: str, port: int, token: str | None, batch_wait_ms: float, max_batch: int,
          max_queue: int, threads: int | None) -> None:
    """Run the suffix server: the layers after the device's last exit, over HTTP.

    POST /v1/handoff takes one HANDOFF frame (docs/protocol.md) with `Authorization: Bearer TOKEN` and
    answers JSON with the last exit's text, tokens, confidence and timings. Concurrent handoffs are
    micro-batched into one model call. GET /healthz and GET /metrics (Prometheus) need no token.
    Stops cleanly on Ctrl-C or SIGTERM.
    """
    import asyncio
    import secrets

    from eeasr.bundle import BundleError
    from eeasr.host.server import ServeOptions, Suffix, serve as run_server
    from eeasr.server_model import ServerModelError

    opts = ServeOptions(host=host, port=port, batch_wait_ms=batch_wait_ms, max_batch=max_batch, max_queue=max_queue)
    if threads is not None:
        opts.threads = threads
    try:
        suffix = Suffix.load(bundle_dir, opts.threads)
    except (BundleError, ServerModelError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    say = click.echo  # flushes every line, so a parent reading our output sees the URL at once
    say(f"bundle {bundle_dir}: model {suffix.bundle.model_hash}, bundle {suffix.bundle.bundle_id[:16]}; layers "
        f"{suffix.after_layer + 1}-{suffix.layer} answer at exit {suffix.exit}; batches of up to {opts.max_batch} "
        f"within {opts.batch_wait_ms:g} ms, {opts.threads} thread(s)")
    if not token:
        token = secrets.token_urlsafe(24)
        say(f"token (generated; set --token or EEASR_TOKEN to choose one): {token}")
    try:
        asyncio.run(run_server(suffix, token, opts, say))
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    say("stopped")


@main.command("device-sim")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Bundle written by `eeasr-convert`: its int8 segments run under the real TFLM interpreter.")
@click.option("--port", default="pty",
              help="`pty`: create a pseudo-terminal and print `device-sim: serial port /dev/pts/N` (open that path "
                   "like an ESP32's /dev/ttyACM0); or a serial device path; or a pyserial URL "
                   "(socket://HOST:PORT, loop://, ...).")
@click.option("--measure", type=click.Choice(["entropy", "nonblank_entropy"]), default=None,
              help="Exit measure [default: the bundle's default_measure].")
@click.option("--threshold", type=float, default=None,
              help="Answer at an exit when its measure is <= this [default: the bundle's calibrated threshold].")
@click.option("--beta", type=click.FloatRange(0, 1), default=None,
              help="Gated (I3D) bundles: run a module when its gate probability is > this [default: the bundle's].")
@click.option("--baudrate", default=921600, type=click.IntRange(1), help="For a serial device.")
@click.option("--core", type=click.Choice(["c", "python"]), default="c",
              help="`c`: features, exit policy, framing and endpointing by the firmware's own C code "
                   "(firmware/components/eeasr_core, built with gcc on first use); `python`: the Python reference.")
@click.option("--exit-with-parent", is_flag=True,
              help="Stop when the process that started this one ends (how `eeasr-host stream` runs it).")
@click.option("-v", "--verbose", is_flag=True, help="Log every utterance and window to stderr.")
def device_sim(bundle_dir: str, port: str, measure: str | None, threshold: float | None, beta: float | None,
               baudrate: int, core: str, exit_with_parent: bool, verbose: bool) -> None:
    """Run the simulated device: the ESP32-S3 firmware's behaviour over a serial line (docs/protocol.md).

    Sends HELLO, takes AUDIO (host-segmented utterances, or the energy endpointer's), computes log-mel
    features, cuts windows, runs the bundle's segments exit by exit with the bundle's exit thresholds and
    answers with RESULT, or RESULT + HANDOFF after its last exit. Answers COMMAND HELLO, SELF_TEST,
    PROFILE (labelled simulated: host wall time, not ESP32-S3 cycles) and RESET; garbage gets ERROR
    BAD_FRAME. Refuses a bundle that fails to load (hash or version mismatch).
    """
    from eeasr.bundle import BundleError
    from eeasr.host.device_sim import PortClosed, run_device_sim

    try:
        run_device_sim(bundle_dir, port, measure, threshold, baudrate, exit_with_parent, verbose, core, beta)
    except (BundleError, PortClosed, ValueError, RuntimeError) as e:
        raise click.ClickException(str(e).splitlines()[0]) from None
    except KeyboardInterrupt:
        click.echo("device-sim: stopped", err=True)


@main.command("device-info")
@click.option("--port", default=None,
              help="Serial device or pyserial URL [default: an attached ESP32-S3, found by its USB id 303a:1001].")
@click.option("--sim", is_flag=True, help="Start the simulated device (on a pty) for --bundle and ask it.")
@click.option("--bundle", "bundle_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="With --sim: the bundle it runs. With a device: check that the device runs this bundle.")
@click.option("--timeout", default=60.0, type=click.FloatRange(0.1), help="Seconds to wait for each reply.")
def device_info(port: str | None, sim: bool, bundle_dir: str | None, timeout: float) -> None:
    """Show what a device runs (HELLO) and its SELF_TEST and PROFILE reports, as tables."""
    import contextlib

    from eeasr.bundle import BundleError, load_bundle
    from eeasr.host.device_info import hello_table, profile_text, query, self_test_text
    from eeasr.host.link import DeviceError, DeviceGone, DeviceLink, find_esp32s3_port, start_simulated_device

    if sim and port:
        raise click.UsageError("--sim starts its own device: give --port or --sim, not both")
    if sim and not bundle_dir:
        raise click.UsageError("--sim needs --bundle DIR (the bundle the simulated device runs)")
    try:
        with contextlib.ExitStack() as stack:
            if sim:
                click.echo(f"starting the simulated device for {bundle_dir} ...", err=True)
                port = stack.enter_context(start_simulated_device(bundle_dir)).port
            elif port is None:
                port = find_esp32s3_port()
                if port is None:
                    raise click.ClickException("no ESP32-S3 attached (USB 303a:1001); name its --port, or use "
                                               "--sim --bundle DIR for the simulated device")
            click.echo(f"asking the device on {port} for HELLO, SELF_TEST and PROFILE ...", err=True)
            link = stack.enter_context(DeviceLink(port))
            hello, st, pr = query(link, timeout)
        click.echo(f"device on {port}" + (" (simulated)" if sim else ""))
        click.echo(hello_table(hello))
        if bundle_dir and not sim:
            b = load_bundle(bundle_dir, verify_files=False)
            same = b.model_hash[:16] == hello.model_hash and b.bundle_id[:16] == hello.bundle_id
            click.echo(f"bundle {bundle_dir}: " + ("the device runs it" if same else
                       f"MISMATCH: the bundle is model {b.model_hash[:16]}, bundle {b.bundle_id[:16]}"))
        click.echo(self_test_text(st))
        click.echo(profile_text(pr))
    except (DeviceGone, DeviceError, TimeoutError, RuntimeError, BundleError) as e:
        raise click.ClickException(str(e)) from None
    if not st.get("pass"):
        raise SystemExit(1)


@main.command(context_settings={"allow_extra_args": True})
@click.option("--wav", "wavs", multiple=True, type=click.Path(path_type=Path), metavar="FILE...",
              help="Audio files (WAV/FLAC), each one utterance; repeat the flag or list files after it. Files at "
                   "another rate or with more channels are converted to 16 kHz mono (and said so).")
@click.option("--mic", is_flag=True, help="Stream the microphone (16 kHz mono); the device finds utterances by "
                                          "its energy endpointer. Ctrl-C stops.")
@click.option("--mic-device", default=None, help="Input device, by number or name part (`python -m sounddevice` "
                                                  "lists them) [default: the system's default input].")
@click.option("--utterances", type=click.IntRange(1), default=None,
              help="With --mic: stop after this many utterances [default: until Ctrl-C].")
@click.option("--device", default=None, metavar="PORT",
              help="Serial port of the ESP32-S3 [default: found by its USB id; none attached: the simulated "
                   "device].")
@click.option("--simulate", is_flag=True, help="Use the simulated device (TFLM) even when an ESP32-S3 is attached.")
@click.option("--bundle", "bundle_dir", default=None, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Bundle the device runs (written by `eeasr-convert`) [default: the bundled model models/default "
                   "with EXITS=2, converted once into ~/.cache/eeasr/bundles].")
@click.option("--server", default=None, metavar="URL",
              help="Suffix server (`eeasr-host serve`) for handoffs [default: one started on loopback for this "
                   "run].")
@click.option("--token", envvar="EEASR_TOKEN", default=None, show_envvar=True, help="The --server's bearer token.")
@click.option("--server-timeout", type=click.FloatRange(0.1), default=10.0,
              help="Seconds a handoff waits for the server before it counts as unreachable (and is retried).")
@click.option("--retry-for", type=click.FloatRange(0), default=30.0,
              help="After the audio ends, seconds to keep retrying handoffs the server has not answered; those "
                   "left are reported unresolved (exit status 3).")
@click.option("--log", "log_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write one JSON line per result (and a final summary line) to this file.")
@click.option("--refs", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Transcripts for --wav files (an eeasr manifest: JSONL with path and text): adds WER to the "
                   "summary.")
def stream(wavs: tuple[Path, ...], mic: bool, mic_device: str | None, utterances: int | None, device: str | None,
           simulate: bool, bundle_dir: Path | None, server: str | None, token: str | None, server_timeout: float,
           retry_for: float, log_path: Path | None, refs: Path | None) -> None:
    """Stream speech through the device and the server and show each result live.

    The device runs the first layers and answers a window itself when its exit is confident; otherwise its
    best local answer is shown while its hidden state goes to the server, whose answer replaces it. Each line
    says which exit answered (device exit k / server exit j, with the decoder the server used: ctc, attention
    or attention+lm), the confidence, the latency from the end of the utterance's audio to the text, and the
    bytes sent upward. When the server is down or slow the device's answer is shown marked as such and the
    handoff is retried in the background; a device that goes away is reconnected (the simulated one
    restarted). A summary table ends the run.

    \b
      eeasr-host stream --wav a.wav b.flac --log results.jsonl
      eeasr-host stream --mic
      eeasr-host stream --mic --device /dev/ttyACM0 --server http://gpu-box:8750 --token $EEASR_TOKEN

    Exit status: 0 all answered; 1 some input files could not be read (the others ran); 3 the server never
    answered or refused some handoffs (the device's answers stand; the log says which and why).
    """
    from eeasr.host.stream import StreamError, StreamOptions, run_stream

    extra = [Path(a) for a in click.get_current_context().args]
    if mic == bool(wavs or extra):
        raise click.UsageError("give either --mic or --wav FILE...")
    opts = StreamOptions(wavs=[*wavs, *extra], mic=mic, mic_device=_device_arg(mic_device), device=device,
                         simulate=simulate, bundle=bundle_dir, server=server, token=token, log=log_path, refs=refs,
                         retry_for=retry_for, server_timeout=server_timeout, utterances=utterances)
    try:
        code = run_stream(opts)
    except StreamError as e:
        raise click.ClickException(str(e)) from None
    raise SystemExit(code)


def _device_arg(value: str | None) -> str | int | None:
    """PortAudio devices are chosen by index or by a part of their name."""
    return int(value) if value is not None and value.isdigit() else value
