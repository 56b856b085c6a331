"""`eeasr-host device-info`: a device's HELLO, SELF_TEST and PROFILE reports as readable tables.

The reports are the INFO JSON objects of docs/protocol.md; tables show the keys the device sent, so the
firmware's reports (cycles, heap per memory type) render as well as the simulated device's (wall time).
"""

from __future__ import annotations

import json
from typing import Any

from eeasr.host.link import DeviceError, DeviceLink
from eeasr.protocol import Command, Error, Hello, Info, Message


def table(headers: list[str] | None, rows: list[list[Any]], indent: str = "  ") -> str:
    """Left-aligned text columns, under a ruled header row when there is one."""
    cells = ([[str(h) for h in headers]] if headers else []) + [[_cell(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    if headers:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(indent + line for line in lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "pass" if v else "FAIL"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_cell(x)}" for k, x in v.items())
    return str(v)


def hello_table(h: Hello) -> str:
    rows = [["firmware", h.firmware], ["model hash", h.model_hash], ["bundle id", h.bundle_id],
            ["feature config hash", h.feature_hash], ["sample rate", f"{h.sample_rate} Hz"],
            ["window W", f"{h.window} feature frames ({h.window * 160 / h.sample_rate:g} s)"],
            ["subsampling", f"{h.subsampling}x ({h.window // max(h.subsampling, 1)} encoder frames per window)"],
            ["d_model", h.d_model], ["vocabulary", h.vocab],
            ["device exits", f"{len(h.exit_layers)}, after layers {', '.join(map(str, h.exit_layers))}"]]
    return "HELLO\n" + table(None, rows)


def _report(msg: Message, what: str) -> dict[str, Any]:
    if isinstance(msg, Error):
        raise DeviceError(f"the device answered {what} with error {msg.code}: {msg.message}")
    if not isinstance(msg, Info):
        raise DeviceError(f"the device answered {what} with a {msg.TYPE.name} frame")
    try:
        obj = json.loads(msg.json)
    except json.JSONDecodeError as e:
        raise DeviceError(f"the device's {what} report is not JSON ({e}): {msg.json[:200]!r}") from None
    if not isinstance(obj, dict):
        raise DeviceError(f"the device's {what} report is not a JSON object: {msg.json[:200]!r}")
    return obj


def self_test_text(r: dict[str, Any]) -> str:
    sim = " (simulated device)" if r.get("simulated") else ""
    head = f"SELF_TEST: {'PASS' if r.get('pass') else 'FAIL'}{sim}"
    if r.get("golden_vectors"):
        head += f"\n  golden vectors: {r['golden_vectors']}"
    rows = [[c.get("name"), c.get("pass"), c.get("max_error"), c.get("unit", ""), c.get("detail", "")]
            for c in r.get("checks", [])]
    return head + "\n" + table(["check", "result", "max error", "unit", "detail"], rows)


_SEGMENT_KEYS = {"name": "segment", "exit_layer": "exit layer", "wall_ms_full_window": "ms / full window",
                 "live_windows": "windows run", "live_wall_ms_mean": "ms mean (live)",
                 "live_wall_ms_max": "ms max (live)",
                 "cycles": "cycles", "arena_bytes": "arena B", "arena_min_bytes": "arena min B",
                 "tflm_allocated_bytes": "TFLM allocated B", "flash_bytes": "flash B",
                 "esp32s3_roofline_ms": "ESP32-S3 roofline estimate, ms / window"}


_OTHER_KEYS = {"window_frames": "window (feature frames)", "benchmark_runs": "benchmark runs per segment",
               "windows_run": "windows run so far", "features_ms_per_s_audio": "features, ms per s of audio"}


def profile_text(r: dict[str, Any]) -> str:
    out = ["PROFILE" + (": SIMULATED" if r.get("simulated") else "")]
    if r.get("note"):
        out.append(f"  {r['note']}")
    segs = r.get("segments", [])
    keys = [k for k in _SEGMENT_KEYS if any(k in s for s in segs)]
    keys += [k for s in segs for k in s if k not in keys and k not in ("exit_index",)]
    keys = list(dict.fromkeys(keys))
    if segs:
        out.append(table([_SEGMENT_KEYS.get(k, k) for k in keys], [[s.get(k) for k in keys] for s in segs]))
    rest = {_OTHER_KEYS.get(k, k): v for k, v in r.items()
            if k not in ("report", "simulated", "note", "segments", "heap", "firmware")}
    for h in r.get("heap", []):
        rest[f"heap, {h.get('type', '?')}"] = h.get("bytes")
    if rest:
        out.append(table(None, [[k, v] for k, v in rest.items()]))
    return "\n".join(out)


def query(link: DeviceLink, timeout: float) -> tuple[Hello, dict[str, Any], dict[str, Any]]:
    """HELLO, SELF_TEST and PROFILE of the device on `link`."""
    hello = link.hello(timeout)
    st = _report(link.command(Command.SELF_TEST, timeout), "SELF_TEST")
    pr = _report(link.command(Command.PROFILE, timeout), "PROFILE")
    return hello, st, pr


__all__ = ["query", "hello_table", "self_test_text", "profile_text", "table"]
