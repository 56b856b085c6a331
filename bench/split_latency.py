"""End-to-end latency from the end of an utterance's audio to its text, for device exits and for handoffs, and
the upward bytes, measured on the real `eeasr-host stream` in simulation.

    nice -n 19 .venv/bin/python bench/split_latency.py                 # 40 held-out test utterances, default bundle
    nice -n 19 .venv/bin/python bench/split_latency.py --n 100 --seed 1
    nice -n 19 .venv/bin/python bench/split_latency.py --bundle DIR    # another bundle with a server part

Runs `eeasr-host stream --simulate --wav <N test utterances> --refs <manifest> --log <out>/split_latency.jsonl`
as a subprocess: the simulated device (`eeasr-host device-sim`: the firmware's C core and the bundle's int8
segments under the real TFLM interpreter) on a pseudo-terminal, a local `eeasr-host serve` on loopback, the
host between them. Without --bundle, stream uses its default: models/default with EXITS=2 and the bundle's
calibrated exit threshold. The N utterances are a fixed seeded sample of the test split (bench/testset.py,
the same rule as bench/int8_wer.py). Then the JSONL log is read:
- latency: per utterance, from the moment its last audio sample was written to the device to its last
  window's final answer (the stream's own clock), by who answered: the device (per exit) or the server; for
  handed-off utterances also the device's provisional answer (shown while the server works);
- upward bytes: HANDOFF frames as posted to the server, per second of audio, for the handed-off utterances
  and over the whole run, against raw 16-bit PCM (32000 B/s) and a 16 kbit/s speech codec (2000 B/s);
- the share of utterances and windows ended on the device, and the run's WER against the references.

This is a simulation on this machine (a 2-core x86 host, shared with whatever else runs): TFLM's reference
kernels on x86 are not the ESP32-S3's speed, and the WAV files are sent as fast as the device acknowledges
them, not in real time. The ESP32-S3's own modelled compute time per segment is in the converter's cost
report (the bundle manifest's device.segments[].cost.latency_s), quoted in the output. Writes
split_latency.md, split_latency.csv (per source), split_latency_utts.csv (per utterance), split_latency.png,
split_latency.jsonl (the stream's log) and split_latency_stream.txt (its screen output) under --out.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from report import parser, save_figure  # noqa: E402
from testset import default_manifest, seeded_subset, split_utterances

from eeasr.bundle import BundleError, load_bundle

ROOT = Path(__file__).resolve().parent.parent
PCM_BYTES_PER_S = 32000      # raw 16-bit PCM at 16 kHz
CODEC_BYTES_PER_S = 2000     # a 16 kbit/s speech codec
FINAL_STATUSES = ("device", "server", "rejected", "unresolved", "no_speech")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class UttResult:
    """One utterance as the stream's log tells it."""
    utt: int
    wav: str
    ended_on: str                 # "device", "server", "kept_local" (server did not answer) or "no_speech"
    exit: int                     # the highest exit that answered one of its windows
    layer: int
    latency_ms: float | None      # end of audio -> the last window's final answer
    provisional_ms: float | None  # handed off: end of audio -> the device's local answer of its last window
    windows: int
    device_windows: int
    up_bytes: int
    text: str


def read_log(path: Path) -> tuple[list[UttResult], dict]:
    """The utterances (each window's last record is its answer) and the run's summary event."""
    final: dict[tuple[int, int], dict] = {}
    provisional: dict[tuple[int, int], dict] = {}
    summary: dict = {}
    for line in path.read_text().splitlines():
        e = json.loads(line)
        if e.get("event") == "result":
            key = (e["utt"], e["window"])
            if e["status"] == "handed_off":
                provisional[key] = e
            final[key] = e
        elif e.get("event") == "summary":
            summary = e
    by_utt: dict[int, list[dict]] = {}
    for (u, _), e in sorted(final.items()):
        by_utt.setdefault(u, []).append(e)
    out = []
    for u, ws in by_utt.items():
        st = [w["status"] for w in ws]
        if all(s == "no_speech" for s in st):
            ended = "no_speech"
        elif any(s not in ("device", "server", "no_speech") for s in st):
            ended = "kept_local"
        else:
            ended = "server" if "server" in st else "device"
        top = max(ws, key=lambda w: w["exit"])
        lat = [w["latency_ms"] for w in ws if w["latency_ms"] is not None]
        last = (u, ws[-1]["window"])
        prov = provisional.get(last, {}).get("latency_ms")
        out.append(UttResult(u, ws[0]["wav"], ended, top["exit"], top["layer"], max(lat) if lat else None, prov,
                             len(ws), sum(w["status"] == "device" for w in ws), sum(w["up_bytes"] for w in ws),
                             " ".join(w["text"] for w in ws if w["text"])))
    return out, summary


def answered(path: Path) -> int:
    """Utterances whose last window has its final answer in the log so far (the progress bar)."""
    done = set()
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in lines:
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue   # a line being written
        if e.get("event") == "result" and "FINAL" in e.get("flags", []) and e.get("status") in FINAL_STATUSES:
            done.add(e["utt"])
    return len(done)


def run_stream(wavs: list[Path], refs: Path, bundle: Path | None, log_path: Path, screen: Path, timeout: float,
               progress: bool) -> tuple[int, float]:
    """`eeasr-host stream` on the files; returns its exit status and wall time."""
    from tqdm import tqdm

    exe = Path(sys.executable).parent / "eeasr-host"
    cmd = [str(exe), "stream", "--simulate", "--refs", str(refs), "--log", str(log_path)]
    if bundle is not None:
        cmd += ["--bundle", str(bundle)]
    for w in wavs:
        cmd += ["--wav", str(w)]
    log_path.unlink(missing_ok=True)
    bar = tqdm(total=len(wavs), desc="eeasr-host stream", unit="utt", disable=not progress)
    t0 = time.perf_counter()
    with open(screen, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        waiter = threading.Thread(target=proc.wait, daemon=True)
        waiter.start()
        while waiter.is_alive():
            waiter.join(0.5)
            bar.update(answered(log_path) - bar.n)
            if time.perf_counter() - t0 > timeout:
                proc.terminate()   # stream takes SIGTERM as Ctrl-C: what came back is logged and summarized
                log(f"eeasr-host stream ran past --timeout {timeout:g} s; stopped it")
                proc.wait(60)
                break
    bar.update(answered(log_path) - bar.n)
    bar.close()
    return proc.returncode, time.perf_counter() - t0


def stats(values: list[float]) -> dict:
    v = np.array(values, float)
    if not len(v):
        return {"n": 0, "p50_ms": None, "p95_ms": None, "mean_ms": None, "max_ms": None}
    return {"n": len(v), "p50_ms": float(np.percentile(v, 50)), "p95_ms": float(np.percentile(v, 95)),
            "mean_ms": float(v.mean()), "max_ms": float(v.max())}


def fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def write_png(groups: list[tuple[str, list[float]]], rates: list[tuple[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.4), dpi=110, gridspec_kw={"width_ratios": (3, 2)})
    shown = [(name, v) for name, v in groups if v]
    ax.boxplot([v for _, v in shown], whis=(5, 95), showmeans=True)
    for i, (_, v) in enumerate(shown):
        ax.plot(np.full(len(v), i + 1) + np.random.default_rng(i).uniform(-0.12, 0.12, len(v)), v, ".", alpha=0.5)
    ax.set_xticks(range(1, len(shown) + 1), [f"{textwrap.fill(n, 14)}\n(n={len(v)})" for n, v in shown], fontsize=7)
    ax.set_ylabel("end of audio -> text, ms")
    ax.set_title("latency (whiskers p5..p95, triangle mean)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    names, values = zip(*rates)
    bars = bx.barh(names, values, color=["C0", "C1", "C7", "C7"][: len(values)])
    bx.set_xscale("log")
    bx.xaxis.set_minor_formatter(NullFormatter())
    bx.set_xlabel("bytes upward per second of audio (log)")
    for b, v in zip(bars, values):
        bx.text(v, b.get_y() + b.get_height() / 2, f" {v:.0f}", va="center", fontsize=8)
    bx.invert_yaxis()
    bx.set_title("uplink", fontsize=9)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--n", type=int, default=40, help="test utterances to stream (default: %(default)d)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample (default: %(default)d)")
    ap.add_argument("--manifest", type=Path, default=None,
                    help="corpus manifest (default: ~/.cache/eeasr/corpus/manifest.jsonl)")
    ap.add_argument("--split", default="test", help="manifest split to sample (default: %(default)s)")
    ap.add_argument("--bundle", type=Path, default=None,
                    help="bundle for device and server (default: stream's own, models/default with EXITS=2)")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="stop the stream after this many seconds (default: %(default)g)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="output directory (default: bench/out)")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = ap.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["nice -n 19 .venv/bin/python bench/split_latency.py", *given])
    if args.n < 1:
        raise SystemExit("--n must be at least 1")

    manifest = args.manifest or default_manifest()
    utts = split_utterances(manifest, args.split)
    n_all = len(utts)
    utts = seeded_subset(utts, args.n, args.seed)
    missing = [str(u.path) for u in utts if not u.path.is_file()]
    if missing:
        raise SystemExit(f"{len(missing)} test audio file(s) missing, e.g. {missing[0]}; synthesize the corpus "
                         f"with `make data`")
    duration = {str(u.path): u.duration for u in utts}
    args.out.mkdir(parents=True, exist_ok=True)
    log_path, screen = args.out / "split_latency.jsonl", args.out / "split_latency_stream.txt"
    log(f"streaming {len(utts)} of the {n_all} {args.split} utterances ({sum(duration.values()):.0f} s of audio) "
        f"through eeasr-host stream (simulated device, local server); its screen output goes to {screen}")
    load = os.getloadavg()[0]   # other work on the machine slows the simulation
    rc, wall = run_stream([u.path for u in utts], manifest, args.bundle, log_path, screen, args.timeout,
                          args.progress)
    if not log_path.is_file():
        raise SystemExit(f"eeasr-host stream exited {rc} without a log; its output: {screen}")
    results, summary = read_log(log_path)
    if rc not in (0, 3):   # 3: some handoffs unresolved (counted below)
        log(f"note: eeasr-host stream exited {rc}; see {screen}")
    if not results:
        raise SystemExit(f"the stream's log {log_path} has no results; its output: {screen}")

    bundle_dir = args.bundle
    if bundle_dir is None:
        from eeasr.host.bundle_cache import default_bundle

        bundle_dir = default_bundle(log)
    try:
        bundle = load_bundle(bundle_dir)
    except BundleError as e:
        raise SystemExit(str(e)) from None
    from eeasr.host.device_sim import bundle_threshold

    measure, threshold = bundle_threshold(bundle)

    # latency per source
    groups: list[tuple[str, list[float]]] = []
    device = [r for r in results if r.ended_on == "device" and r.latency_ms is not None]
    for k in sorted({r.exit for r in device}):
        lay = next(r.layer for r in device if r.exit == k)
        groups.append((f"device, exit {k} (layer {lay})", [r.latency_ms for r in device if r.exit == k]))
    groups.append(("device, all", [r.latency_ms for r in device]))
    server = [r for r in results if r.ended_on == "server" and r.latency_ms is not None]
    srv_name = f"server, exit {server[0].exit} (layer {server[0].layer})" if server else "server"
    groups.append((srv_name, [r.latency_ms for r in server]))
    groups.append(("handed off: device's provisional answer", [r.provisional_ms for r in server
                                                                if r.provisional_ms is not None]))
    groups.append(("every utterance", [r.latency_ms for r in results if r.latency_ms is not None]))
    rows = [{"answered_by": name, **stats(v)} for name, v in groups]

    # bytes upward
    audio_all = float(summary.get("audio_s") or sum(duration.get(r.wav, 0.0) for r in results))
    handed = [r for r in results if r.up_bytes]
    audio_handed = sum(duration.get(r.wav, 0.0) for r in handed)
    up_handed = sum(r.up_bytes for r in handed)
    up_all = int(summary.get("up_bytes", up_handed))
    rate_handed = up_handed / audio_handed if audio_handed else 0.0
    rate_all = up_all / audio_all if audio_all else 0.0
    n_windows = sum(r.windows for r in results)
    n_dev_windows = sum(r.device_windows for r in results)
    ended = {k: sum(r.ended_on == k for r in results) for k in ("device", "server", "kept_local", "no_speech")}

    segs = bundle.manifest["device"]["segments"]
    modelled = "; ".join(f"{s['name']} " + ", ".join(f"{k} {v:.2f} s" for k, v in s["cost"]["latency_s"].items())
                         for s in segs if "cost" in s)
    head = (f"**Simulation on this machine** ({os.cpu_count()}-core x86 host, load average {load:.1f} when the run "
            f"started; TFLM reference kernels on x86 are not the ESP32-S3's speed): `eeasr-host stream --simulate` "
            f"with {len(results)} of the {n_all} held-out {args.split} utterances (seeded sample, seed {args.seed}; "
            f"{audio_all:.1f} s of audio, {n_windows} windows), simulated device (firmware C core + int8 segments "
            f"under the tflite-micro wheel) on a pty, `eeasr-host serve` on loopback. Bundle "
            f"{bundle.bundle_id[:12]} (model {bundle.model_hash}, EXITS={bundle.device_exits}), exit measure "
            f"{measure}, calibrated threshold {fmt(threshold, 6)}. Latency: from the host writing an utterance's "
            f"last audio frame to the device (files are sent as fast as the device acknowledges, not in real time) "
            f"to its last window's final answer, on the host's clock. The stream took {wall:.0f} s "
            f"(exit status {rc}). Modelled ESP32-S3 compute per full {segs[0]['cost'].get('window_s', '?')} s "
            f"window (converter cost report): {modelled}.\n\n`{command}`\n\n")
    t1 = ("| answered by | utterances | p50 ms | p95 ms | mean ms | max ms |\n|---|---|---|---|---|---|\n"
          + "".join(f"| {r['answered_by']} | {r['n']} | {fmt(r['p50_ms'])} | {fmt(r['p95_ms'])} | {fmt(r['mean_ms'])} "
                    f"| {fmt(r['max_ms'])} |\n" for r in rows))
    rates = [("handoffs (handed-off utterances' audio)", rate_handed), ("whole run (all audio)", rate_all),
             ("raw 16-bit PCM", float(PCM_BYTES_PER_S)), ("16 kbit/s speech codec", float(CODEC_BYTES_PER_S))]
    t2 = ("| upward | B/s of audio | vs raw 16-bit PCM (32000 B/s) | vs 16 kbit/s codec (2000 B/s) |\n"
          "|---|---|---|---|\n"
          + "".join(f"| {name} | {v:.0f} | {100 * v / PCM_BYTES_PER_S:.1f} % | {v / CODEC_BYTES_PER_S:.2f}x |\n"
                    for name, v in rates[:2]))
    wer = summary.get("wer")
    t3 = (f"\nUtterances ended on the device: {ended['device']} of {len(results)} "
          f"({100 * ended['device'] / len(results):.1f} %); on the server {ended['server']}; device's answer kept "
          f"(server did not answer) {ended['kept_local']}; no speech {ended['no_speech']}. Windows ended on the "
          f"device: {n_dev_windows} of {n_windows} ({100 * n_dev_windows / max(1, n_windows):.1f} %). "
          f"Handoffs: {len(handed)} utterances, {up_handed} bytes, {up_handed / max(1, len(handed)):.0f} bytes per "
          f"handed-off utterance. System WER of this run: "
          f"{'-' if wer is None else f'{wer:.1f} %'} ({summary.get('ref_words', '?')} reference words).\n")
    text = head + t1 + "\n" + t2 + t3
    print(text)
    (args.out / "split_latency.md").write_text(text)
    with open(args.out / "split_latency.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["metric", "name", *list(rows[0])[1:], "bytes_per_s", "pct_of_pcm"])
        w.writeheader()
        for r in rows:
            w.writerow({"metric": "latency", "name": r["answered_by"], **{k: (round(v, 1) if isinstance(v, float)
                                                                                else v) for k, v in r.items()
                                                                            if k != "answered_by"}})
        for name, v in rates:
            w.writerow({"metric": "upward", "name": name, "bytes_per_s": round(v, 1),
                        "pct_of_pcm": round(100 * v / PCM_BYTES_PER_S, 2)})
    with open(args.out / "split_latency_utts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["utt", "wav", "audio_s", "ended_on", "exit", "layer", "latency_ms", "provisional_ms", "windows",
                    "up_bytes", "text"])
        for r in results:
            w.writerow([r.utt, r.wav, duration.get(r.wav), r.ended_on, r.exit, r.layer, r.latency_ms,
                        r.provisional_ms, r.windows, r.up_bytes, r.text])
    write_png(groups, rates, args.out / "split_latency.png",
              f"eeasr-host stream in simulation on this {os.cpu_count()}-core x86 host: {len(results)} {args.split} "
              f"utterances, {ended['device']} ended on the device")
    log(f"wrote {args.out}/split_latency.md, split_latency.csv, split_latency_utts.csv, split_latency.png, "
        f"split_latency.jsonl, split_latency_stream.txt")


if __name__ == "__main__":
    main()
