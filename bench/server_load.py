"""Suffix server throughput and latency at 1, 8 and 32 concurrent clients.

    nice -n 19 .venv/bin/python bench/server_load.py                          # models/default, EXITS=2
    nice -n 19 .venv/bin/python bench/server_load.py --bundle DIR --duration 30 --concurrency 1,4,16

Starts `eeasr-host serve` on loopback as a real subprocess (host/server_client.py: start_local_server) with
the given bundle (default: models/default converted with --exits 2 into ~/.cache/eeasr/bundles/, reused while
the model's files are unchanged). For each concurrency level, that many clients (asyncio tasks over one
aiohttp session with keep-alive) post HANDOFF frames back to back for --duration seconds after a short
warm-up. Every handoff is a full window (W/4 encoder frames of int8 state with the bundle's handoff
quantization: the largest the device sends; shorter utterances cost less). Latency is measured at the
client, from sending the request to the parsed reply; the server's own queue and compute times and batch
sizes come from its replies. Client and server share this machine's CPUs, so a client-bound level shows up
as low server utilisation. Writes server_load.md, server_load.csv and server_load.png under --out.
"""

from __future__ import annotations

import asyncio
import csv
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from report import parser, save_figure  # noqa: E402

from eeasr.bundle import MANIFEST, Bundle, BundleError, load_bundle, sha256_file
from eeasr.host.server_client import start_local_server
from eeasr.paths import default_cache_dir
from eeasr.protocol import Handoff, pack_frame

ROOT = Path(__file__).resolve().parent.parent
ENCODER_FRAME_S = 0.04   # 4x subsampling of 10 ms feature frames


def log(msg: str) -> None:
    print(msg, flush=True)


def get_bundle(model_dir: Path, exits: int) -> Bundle:
    """A cached conversion of `model_dir`, reconverted when the model's files changed since."""
    out = default_cache_dir() / "bundles" / f"{model_dir.resolve().name}-exits{exits}"
    if (out / MANIFEST).exists():
        try:
            b = load_bundle(out)
            files = b.manifest["model"]["checkpoint_files"]
            if b.device_exits == exits and all(sha256_file(model_dir / n) == h for n, h in files.items()):
                log(f"reusing bundle {out} (model {b.model_hash}, bundle {b.bundle_id[:12]})")
                return b
            log(f"{out} was converted from other model files; converting again")
        except (BundleError, FileNotFoundError) as e:
            log(f"{out}: {e}; converting again")
    log(f"converting {model_dir} with --exits {exits} into {out} (1-3 minutes)")
    exe = Path(sys.executable).parent / "eeasr-convert"
    run = subprocess.run([str(exe), str(model_dir), "--exits", str(exits), "--out", str(out)],
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if run.returncode != 0:
        raise SystemExit(f"eeasr-convert failed (exit code {run.returncode}); see its output above")
    return load_bundle(out)


def make_frames(b: Bundle, frames: int, n: int = 16) -> list[bytes]:
    q = b.handoff_qparams()
    d = int(b.manifest["model"]["d_model"])
    layer = int(b.manifest["device"]["handoff"]["layer"])
    rng = np.random.default_rng(0)
    return [pack_frame(Handoff(i, 0, 0, layer, b.model_hash[:16], q.scale, q.zero_point,
                               rng.integers(-128, 128, (frames, d), dtype=np.int8)), i) for i in range(n)]


@dataclass
class Level:
    clients: int
    latency_s: list[float] = field(default_factory=list)
    queue_ms: list[float] = field(default_factory=list)
    compute_ms: list[float] = field(default_factory=list)
    batch: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0


async def run_level(url: str, token: str, frames: list[bytes], clients: int, duration: float, warmup: float,
                    progress: bool) -> Level:
    import aiohttp

    level = Level(clients)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-eeasr-frame"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        measuring = False

        async def client(k: int, until: float) -> None:
            i = k
            while time.perf_counter() < until:
                body = frames[i % len(frames)]
                i += clients
                t0 = time.perf_counter()
                try:
                    async with session.post(url + "/v1/handoff", data=body, headers=headers) as r:
                        if r.status != 200:
                            why = f"{r.status} {(await r.text()).strip()[:80]}"
                            level.errors[why] = level.errors.get(why, 0) + 1
                            continue
                        reply = await r.json()
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    level.errors[type(e).__name__] = level.errors.get(type(e).__name__, 0) + 1
                    continue
                if measuring:
                    level.latency_s.append(time.perf_counter() - t0)
                    level.queue_ms.append(reply["timings_ms"]["queue"])
                    level.compute_ms.append(reply["timings_ms"]["compute"])
                    level.batch.append(reply["batch_size"])

        await asyncio.gather(*(client(k, time.perf_counter() + warmup) for k in range(clients)))
        measuring = True
        start = time.perf_counter()
        tasks = [asyncio.create_task(client(k, start + duration)) for k in range(clients)]
        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=5.0)
            if progress and not all(t.done() for t in tasks):
                el = time.perf_counter() - start
                log(f"  {clients:>3} clients: {el:4.0f}/{duration:g} s, {len(level.latency_s)} replies "
                    f"({len(level.latency_s) / el:.1f}/s)")
        await asyncio.gather(*tasks)
        level.wall_s = time.perf_counter() - start
    return level


def summarize(lv: Level, frames: int) -> dict:
    lat = np.array(lv.latency_s) * 1000
    n = len(lat)
    rate = n / lv.wall_s if lv.wall_s else 0.0
    pct = (lambda a, p: round(float(np.percentile(a, p)), 1) if len(a) else float("nan"))
    return {"clients": lv.clients, "requests": n, "errors": sum(lv.errors.values()),
            "throughput_rps": round(rate, 2), "audio_s_per_s": round(rate * frames * ENCODER_FRAME_S, 1),
            "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "mean_batch": round(float(np.mean(lv.batch)), 2)
            if lv.batch else float("nan"), "server_queue_p50_ms": pct(lv.queue_ms, 50),
            "server_compute_p50_ms": pct(lv.compute_ms, 50)}


COLUMNS = [("clients", "clients"), ("requests", "requests"), ("errors", "errors"), ("throughput_rps", "handoffs/s"),
           ("audio_s_per_s", "audio s/s"), ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("mean_batch", "mean batch"),
           ("server_queue_p50_ms", "server queue p50 ms"), ("server_compute_p50_ms", "server compute p50 ms")]


def markdown(rows: list[dict]) -> str:
    out = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---:|" * len(COLUMNS)]
    out += ["| " + " | ".join(str(r[k]) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(out)


def write_png(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [r["clients"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.6, 3.8), dpi=120)
    a.plot(c, [r["throughput_rps"] for r in rows], "o-")
    a.set_ylabel("handoffs / s")
    a.set_ylim(bottom=0)
    b.plot(c, [r["p50_ms"] for r in rows], "o-", label="p50")
    b.plot(c, [r["p95_ms"] for r in rows], "s--", label="p95")
    b.set_ylabel("latency at the client, ms")
    b.set_ylim(bottom=0)
    b.legend()
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xticks(c, [str(x) for x in c])
        ax.set_xlabel("concurrent clients")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--bundle", type=Path, default=None,
                    help="bundle to serve (default: --model converted with --exits 2, cached)")
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "default",
                    help="model directory converted when no --bundle is given (default: models/default)")
    ap.add_argument("--concurrency", default="1,8,32", help="client counts, comma-separated (default: %(default)s)")
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per level (default: %(default)g)")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per level (default: %(default)g)")
    ap.add_argument("--frames", type=int, default=None,
                    help="encoder frames per handoff (default: a full window, W/4)")
    ap.add_argument("--batch-wait-ms", type=float, default=5.0, help="server --batch-wait-ms (default: %(default)g)")
    ap.add_argument("--max-batch", type=int, default=32, help="server --max-batch (default: %(default)d)")
    ap.add_argument("--threads", type=int, default=None, help="server --threads (default: the server's own)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="output directory (default: bench/out)")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress lines")
    args = ap.parse_args(argv)
    try:
        levels = [int(x) for x in args.concurrency.split(",")]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        ap.error(f"--concurrency {args.concurrency!r}: positive integers separated by commas")
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["nice -n 19 .venv/bin/python bench/server_load.py", *given])

    try:
        bundle = load_bundle(args.bundle) if args.bundle else get_bundle(args.model, 2)
    except BundleError as e:
        raise SystemExit(str(e)) from None
    frames = args.frames or int(bundle.manifest["window"]["encoder_frames"])
    payload = make_frames(bundle, frames)
    load0 = os.getloadavg()
    log(f"bundle {bundle.path}: model {bundle.model_hash}, EXITS={bundle.device_exits}; handoffs of {frames} frames "
        f"({len(payload[0]):,} B, {frames * ENCODER_FRAME_S:g} s of audio); {os.cpu_count()} CPUs, load average "
        f"{load0[0]:.2f} at start")
    token = secrets.token_urlsafe(16)
    rows = []
    with start_local_server(bundle.path, token, batch_wait_ms=args.batch_wait_ms, max_batch=args.max_batch,
                            threads=args.threads) as server:
        log(f"server {server.url} up: {server.log_tail(3).splitlines()[0]}")
        for c in levels:
            log(f"{c} concurrent client(s): {args.warmup:g} s warm-up, {args.duration:g} s measured")
            lv = asyncio.run(run_level(server.url, token, payload, c, args.duration, args.warmup, args.progress))
            row = summarize(lv, frames)
            rows.append(row)
            log(f"  {row['throughput_rps']} handoffs/s, p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms, mean batch "
                f"{row['mean_batch']}" + (f", errors {lv.errors}" if lv.errors else ""))
    load1 = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    note = (f"{command}\n\nbundle {bundle.path.name} (model {bundle.model_hash}, EXITS={bundle.device_exits}, "
            f"server layers {bundle.manifest['server']['after_layer'] + 1}-{bundle.manifest['exits'][-1]['layer']}); "
            f"handoffs of {frames} encoder frames; server --batch-wait-ms {args.batch_wait_ms:g} --max-batch "
            f"{args.max_batch}; {args.duration:g} s per level; {os.cpu_count()} CPUs, load average {load0[0]:.2f} "
            f"at start, {load1[0]:.2f} at end (client and server on the same machine).")
    table = markdown(rows)
    (args.out / "server_load.md").write_text(f"{table}\n\n{note}\n")
    with open(args.out / "server_load.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write_png(rows, args.out / "server_load.png", f"eeasr-host serve, {bundle.path.name}, {frames}-frame handoffs")
    print()
    print(table)
    print()
    print(note)
    log(f"wrote {args.out}/server_load.md, server_load.csv, server_load.png")


if __name__ == "__main__":
    main()
