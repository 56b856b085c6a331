"""Does a bundle fit the ESP32-S3? Flash (the `model` partition, the app partition), the tensor arena
(internal SRAM or PSRAM, decided by the same rule the firmware applies at boot) and the modelled latency
(the manifest's roofline, convert/cost.py). `make flash` refuses a bundle that does not fit and says by how
much; `eeasr-firmware table` prints the budget for EXITS = 1..N.

The partition sizes come from firmware/partitions.csv (the table the firmware is built with). The SRAM and
PSRAM figures are estimates written next to each number: replace them with `idf.py size` and the device's
PROFILE report (`eeasr-host device-info`) once a board is at hand.

Either program kind: an early-exit bundle's first k segments (EXITS = k), or a gated (I3D) bundle's every
segment (its one EXITS). One arena serves every segment in turn, so it is the largest segment's; flash holds
them all. The worst-case latency runs every segment (a gated program with every gate open); the fastest
answer is segment 1 alone (early-exit) or the front, predictor(s) and head with every gate closed (gated).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eeasr.convert.model_image import image_segments, plan_layout

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
PARTITIONS_CSV = FIRMWARE / "partitions.csv"
MODEL_PARTITION = "model"
APP_PARTITION = "factory"
KiB, MiB = 1024, 1024 * 1024


@dataclass(frozen=True)
class Partition:
    name: str
    type: str
    subtype: str
    offset: int
    size: int


def _int(s: str) -> int:
    s = s.strip()
    mult = {"K": KiB, "M": MiB}.get(s[-1:].upper(), 1)
    return int(s[:-1] if mult != 1 else s, 0) * mult


def read_partitions(path: Path = PARTITIONS_CSV) -> dict[str, Partition]:
    """Partitions by name from an ESP-IDF partition CSV (offsets must be explicit, as ours are)."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.reader(line for line in f if line.strip() and not line.lstrip().startswith("#")):
            name, ptype, sub, off, size = (c.strip() for c in row[:5])
            if not off:
                raise ValueError(f"{path}: partition {name!r} has no explicit offset")
            out[name] = Partition(name, ptype, sub, _int(off), _int(size))
    return out


def _note(value: Any, note: str) -> Any:
    return field(default=value, metadata={"note": note})


@dataclass(frozen=True)
class Limits:
    """ESP32-S3 (N16R8-class module) limits; each with where it comes from."""
    flash_bytes: int = _note(16 * MiB, "16 MB flash: ESP32-S3-DevKitC-1 N16R8 and ESP32-S3-BOX-3")
    model_partition_bytes: int = _note(0, "the `model` partition of firmware/partitions.csv")
    model_partition_offset: int = _note(0, "the `model` partition of firmware/partitions.csv")
    app_partition_bytes: int = _note(0, "the `factory` app partition of firmware/partitions.csv")
    app_estimate_bytes: int = _note(1_250_000, "the application: ESP-IDF + TFLM with ~20 kernels + ESP-NN + "
                                    "drivers + eeasr; estimated (not built here): replace with `idf.py size`")
    sram_heap_bytes: int = _note(300 * KiB, "internal SRAM heap an IDF app can count on: 512 KB SRAM less IRAM "
                                 "code, static data, caches and the ROM's reserve (estimate)")
    sram_reserved_bytes: int = _note(64 * KiB, "the firmware's own internal RAM: task stacks, USB/I2S DMA buffers, "
                                     "log-mel tables and state, link RX buffer (estimate)")
    psram_bytes: int = _note(8 * MiB, "8 MB octal PSRAM (N16R8, BOX-3)")
    psram_reserved_bytes: int = _note(512 * KiB, "the firmware's PSRAM buffers: microphone ring (8 s), window "
                                      "features, hidden state, host-audio slots, TX frame (estimate)")
    model_in_psram: bool = _note(True, "CONFIG_EEASR_MODEL_IN_PSRAM (default y): copy the segments from flash "
                                 "into PSRAM at boot when they fit beside the arena, else run them from flash (XIP)")

    @classmethod
    def from_partitions(cls, path: Path = PARTITIONS_CSV, **kw: Any) -> Limits:
        parts = read_partitions(path)
        for need in (MODEL_PARTITION, APP_PARTITION):
            if need not in parts:
                raise ValueError(f"{path}: no {need!r} partition")
        m, a = parts[MODEL_PARTITION], parts[APP_PARTITION]
        return cls(model_partition_bytes=m.size, model_partition_offset=m.offset, app_partition_bytes=a.size, **kw)

    def notes(self) -> dict[str, str]:
        from dataclasses import fields
        return {f.name: f.metadata["note"] for f in fields(self)}


def arena_home(arena: int, lim: Limits) -> str:
    """Where the firmware puts the arena: internal SRAM when it fits beside the firmware's own buffers, else
    PSRAM (firmware/main/segment_runner.cc applies the same rule with the heap it really has)."""
    if arena <= lim.sram_heap_bytes - lim.sram_reserved_bytes:
        return "sram"
    return "psram"


@dataclass
class Budget:
    exits: int
    exit_layers: list[int]
    image_bytes: int                    # the model partition image
    segments_bytes: int                 # .tflite files alone
    flash_bytes: int                    # app estimate + image
    arena_bytes: int
    arena_where: str
    weights_where: str                  # "psram" (copied at boot) or "flash" (XIP from the mmapped partition)
    psram_used: int
    sram_used: int
    latency_s_per_s: dict[str, float]   # scenario -> modelled seconds per second of audio, every segment run
    first_exit_s_per_s: float           # ESP-NN, weights where they live, the fastest answer (module docstring)
    problems: list[str]

    @property
    def fits(self) -> bool:
        return not self.problems


def check_budget(manifest: dict[str, Any], k: int | None = None, lim: Limits | None = None) -> Budget:
    """Budget of the manifest's device program against `lim`: an early-exit program's first `k` segments
    (default: all); a gated program's every segment (`k` may only be its EXITS; ModelImageError otherwise)."""
    lim = lim or Limits.from_partitions()
    image = image_segments(manifest, k)
    segs = [s.entry for s in image]
    if not segs:
        raise ValueError("the bundle has no device segments")
    gated = manifest["device"]["program"]["kind"] == "gated"
    k = int(manifest["device"]["exits"]) if gated else len(segs)
    lay = plan_layout(manifest, k)
    arena = max(int(s["arena"]["bytes"]) for s in segs)
    where = arena_home(arena, lim)
    seg_bytes = sum(int(s["bytes"]) for s in segs)
    psram = lim.psram_reserved_bytes + (arena if where == "psram" else 0)
    weights = "psram" if lim.model_in_psram and psram + seg_bytes <= lim.psram_bytes else "flash"
    psram += seg_bytes if weights == "psram" else 0
    sram = lim.sram_reserved_bytes + (arena if where == "sram" else 0)
    problems = []
    if lay.total > lim.model_partition_bytes:
        problems.append(f"model image {lay.total:,} B does not fit the {lim.model_partition_bytes:,} B `model` "
                        f"partition: {lay.total - lim.model_partition_bytes:,} B over")
    if lim.app_estimate_bytes > lim.app_partition_bytes:
        problems.append(f"application (~{lim.app_estimate_bytes:,} B) exceeds the {lim.app_partition_bytes:,} B app "
                        f"partition by {lim.app_estimate_bytes - lim.app_partition_bytes:,} B")
    if lim.model_partition_offset + lim.model_partition_bytes > lim.flash_bytes:
        problems.append(f"the `model` partition ends at {lim.model_partition_offset + lim.model_partition_bytes:,} B, "
                        f"past the {lim.flash_bytes:,} B flash")
    if psram > lim.psram_bytes:
        problems.append(f"arena {arena:,} B does not fit SRAM ({lim.sram_heap_bytes - lim.sram_reserved_bytes:,} B "
                        f"free) nor PSRAM: needs {psram:,} B of {lim.psram_bytes:,} B PSRAM, "
                        f"{psram - lim.psram_bytes:,} B over")
    window_s = manifest["window"]["frames"] / 100.0
    lat: dict[str, float] = {}
    for s in segs:
        for scen, v in s["cost"]["latency_s"].items():
            lat[scen] = lat.get(scen, 0.0) + v / window_s
    fastest = [s.entry for s in image if s.role not in ("mha", "ffn")] if gated else segs[:1]
    first = sum(s["cost"]["latency_s"][f"esp-nn/{weights}"] for s in fastest) / window_s
    return Budget(k, [s.exit[1] for s in image if s.exit[0]], lay.total, seg_bytes, lim.app_estimate_bytes + lay.total,
                  arena, where, weights, psram, sram, lat, first, problems)


def refusal(b: Budget) -> str:
    """One message for a bundle that does not fit."""
    return f"EXITS={b.exits} does not fit the ESP32-S3: " + "; ".join(b.problems)


def budget_table(manifest: dict[str, Any], lim: Limits | None = None, ks: list[int] | None = None) -> str:
    """Markdown: one row per EXITS = k (the first k segments of an all-exits bundle; a gated bundle's one EXITS),
    then the limits."""
    lim = lim or Limits.from_partitions()
    gated = manifest["device"]["program"]["kind"] == "gated"
    n = len(manifest["device"]["segments"])
    ks = ks or ([int(manifest["device"]["exits"])] if gated else list(range(1, n + 1)))
    w = manifest["window"]["frames"]
    rows = ["| EXITS (exit layers) | model image B (segments B) | flash B: app est. + image | arena B | arena in "
            "| weights in | SRAM / PSRAM used B | s per s of audio, every segment run, as placed (ESP-NN) "
            "| ESP-NN, weights in flash (XIP) | ESP-NN, weights in PSRAM | "
            + ("every gate closed" if gated else "exit 1 only") + ", as placed | fits |",
            "|" + "---|" * 12]
    for k in ks:
        b = check_budget(manifest, k, lim)
        l = b.latency_s_per_s
        rows.append(f"| {k} ({', '.join(map(str, b.exit_layers))}) | {b.image_bytes:,} ({b.segments_bytes:,}) "
                    f"| {b.flash_bytes:,} | {b.arena_bytes:,} | {b.arena_where.upper()} | {b.weights_where.upper()} "
                    f"| {b.sram_used:,} / {b.psram_used:,} | **{l['esp-nn/' + b.weights_where]:.2f}** "
                    f"| {l['esp-nn/flash']:.2f} | {l['esp-nn/psram']:.2f} | {b.first_exit_s_per_s:.2f} "
                    f"| {'yes' if b.fits else 'NO: ' + '; '.join(b.problems)} |")
    def show(v: Any) -> str:
        return str(v) if isinstance(v, bool) else f"{v:,}"

    limits = "\n".join(f"- {name} = {show(getattr(lim, name))}: {note}" for name, note in lim.notes().items())
    worst = ("every gate open" if gated else "a window that is handed off")
    return (f"Window W = {w} frames ({w / 100:g} s); latency is per second of audio when every device segment "
            f"runs (the worst case: {worst}), modelled by convert/cost.py's roofline; above 1.0 "
            f"the device falls behind real time and buffers audio.\n\n"
            + "\n".join(rows) + f"\n\nLimits (convert/budget.py):\n{limits}\n")


__all__ = ["Partition", "read_partitions", "Limits", "Budget", "check_budget", "arena_home", "refusal",
           "budget_table", "PARTITIONS_CSV", "FIRMWARE"]
