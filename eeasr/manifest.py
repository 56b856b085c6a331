"""The corpus manifest: JSONL, one utterance per line, keys sorted so that diffs and hashes are stable.

Audio paths are stored relative to the manifest's directory when the audio lies inside it (so a
corpus directory can be moved as a whole) and absolute otherwise; in memory they are always absolute.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from eeasr.audio import PathLike, atomic_write

SPLITS = ("train", "dev", "test")
HELDOUT_REASONS = ("voice", "family")


@dataclass
class Utterance:
    """One utterance. `heldout` says why it is kept out of training: None (it is not, or it is an
    ordinary dev/test utterance), "voice" (its synthetic voice is reserved for evaluation) or
    "family" (its whole TTS engine family is). Unknown manifest keys are kept in `extra`."""

    id: str
    path: Path
    text: str
    duration: float
    speaker: str
    source: str
    split: str
    voice: str | None = None
    engine: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    heldout: str | None = None
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, os.PathLike)):
            raise ValueError(f"path must be a string, got {self.path!r}")
        self.path = Path(self.path)
        for name in ("id", "text", "speaker", "source", "split"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        for name in ("voice", "engine", "sha256"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string or null, got {getattr(self, name)!r}")
        if isinstance(self.duration, bool) or not isinstance(self.duration, (int, float)):
            raise ValueError(f"duration must be a number of seconds, got {self.duration!r}")
        self.duration = float(self.duration)
        if not (math.isfinite(self.duration) and self.duration >= 0):
            raise ValueError(f"duration must be finite and >= 0, got {self.duration!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split {self.split!r} is not one of {', '.join(SPLITS)}")
        if self.heldout is not None and self.heldout not in HELDOUT_REASONS:
            raise ValueError(f"heldout {self.heldout!r} is not null or one of {', '.join(HELDOUT_REASONS)}")
        if not isinstance(self.settings, dict):
            raise ValueError(f"settings must be an object, got {self.settings!r}")


_FIELDS = tuple(f.name for f in dataclasses.fields(Utterance) if f.name != "extra")
_REQUIRED = tuple(f.name for f in dataclasses.fields(Utterance) if f.default is dataclasses.MISSING
                  and f.default_factory is dataclasses.MISSING)


def iter_manifest(path: PathLike) -> Iterator[Utterance]:
    """Yield the utterances of a manifest, with absolute audio paths.

    A malformed line raises a one-line ValueError naming the file and line. The one exception is an
    unterminated, unparsable last line, the mark of a build killed mid-append: it is skipped with a
    warning, so that the build can resume (append_manifest removes it).
    """
    base = _base_dir(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                if not line.endswith("\n"):
                    warnings.warn(f"{os.fspath(path)}:{lineno}: skipped a torn last line (interrupted append?)",
                                  stacklevel=2)
                    return
                raise _line_error(path, lineno, f"malformed JSON: {e.msg} at column {e.colno}") from None
            try:
                utt = _from_record(rec, base)
            except ValueError as e:
                raise _line_error(path, lineno, str(e)) from None
            yield utt


def read_manifest(path: PathLike) -> list[Utterance]:
    """All utterances of a manifest (see iter_manifest)."""
    return list(iter_manifest(path))


def write_manifest(path: PathLike, utts: Iterable[Utterance]) -> None:
    """Write a whole manifest atomically: readers see the old file or the complete new one."""
    base = _base_dir(path)
    with atomic_write(path) as f:
        for utt in utts:
            f.write(_dump(utt, base))


def append_manifest(path: PathLike, utts: Iterable[Utterance]) -> None:
    """Append utterances and fsync, so that a resumable build loses at most the batch in flight.

    A torn last line left by an earlier interrupted append is cut off first.
    """
    base = _base_dir(path)
    data = b"".join(_dump(utt, base) for utt in utts)
    with open(path, "a+b") as f:
        _repair_tail(f)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes (the `sha256` field)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _base_dir(manifest: PathLike) -> Path:
    return Path(os.path.abspath(manifest)).parent


def _from_record(rec: Any, base: Path) -> Utterance:
    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in _REQUIRED if k not in rec]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    known = {k: v for k, v in rec.items() if k in _FIELDS}
    if not isinstance(known["path"], str):
        raise ValueError(f"path must be a string, got {known['path']!r}")
    known["path"] = Path(os.path.normpath(base / known["path"]))
    extra = {k: v for k, v in rec.items() if k not in _FIELDS}
    return Utterance(**known, extra=extra)


def _dump(utt: Utterance, base: Path) -> bytes:
    rec: dict[str, Any] = {name: getattr(utt, name) for name in _FIELDS}
    clash = set(utt.extra) & set(rec)
    if clash:
        raise ValueError(f"utterance {utt.id}: extra keys {sorted(clash)} shadow fields")
    rec["path"] = _stored_path(utt.path, base)
    rec.update(utt.extra)
    # allow_nan=False: NaN is not JSON, and other tools would choke on it.
    return (json.dumps(rec, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _stored_path(path: Path, base: Path) -> str:
    p = Path(os.path.abspath(path))
    return p.relative_to(base).as_posix() if p.is_relative_to(base) else p.as_posix()


def _line_error(path: PathLike, lineno: int, problem: str) -> ValueError:
    return ValueError(" ".join(f"{os.fspath(path)}:{lineno}: {problem} (fix or delete this line)".split()))


def _repair_tail(f: BinaryIO) -> None:
    """Make the file end with a newline: terminate a complete last record, cut off a torn one."""
    start = _last_line_start(f)
    f.seek(start)
    tail = f.read()
    if not tail or tail.endswith(b"\n"):
        return
    try:
        json.loads(tail)
    except ValueError:
        f.truncate(start)
        return
    f.write(b"\n")


def _last_line_start(f: BinaryIO, block: int = 1 << 16) -> int:
    """Offset of the first byte after the second-to-last newline, scanning back from the end."""
    end = f.seek(0, os.SEEK_END)
    pos = max(end - 1, 0)  # a final newline belongs to the last line
    while pos > 0:
        lo = max(pos - block, 0)
        f.seek(lo)
        i = f.read(pos - lo).rfind(b"\n")
        if i >= 0:
            return lo + i + 1
        pos = lo
    return 0
