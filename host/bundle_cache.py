"""The bundle `eeasr-host stream` uses when none is named: the bundled default model (models/default) with
EXITS=2, converted on first use into ~/.cache/eeasr/bundles/<model hash>-k2 and reused after that, as long as
its manifest records the conversion options `eeasr-convert` uses by default now (a bundle converted with other
options, e.g. before a default changed, is converted again).

Conversion runs `eeasr-convert` in a subprocess (it needs the `convert` extra: torch and tensorflow), so the
host process itself never imports either; its progress lines are passed on as they come.
"""

from __future__ import annotations

import collections
import importlib.util
import io
import os
import pickle
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eeasr.bundle import BundleError, load_bundle
from eeasr.convert.build import ConvertOptions, bundle_options
from eeasr.paths import default_cache_dir

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "default"
DEFAULT_EXITS = 2
CHECKPOINT_FILES = ("model.pt", "config.yaml", "tokenizer.model", "norm.json", "features.json", "calibration.npz")
# TensorFlow's and absl's start-up chatter, which says nothing about the conversion.
_NOISE = re.compile(r"^(WARNING|I\d{4}|W\d{4}|E\d{4}|fully_quantize|\s+warnings\.warn)")


class _MetaOnly(pickle.Unpickler):
    """Reads the pickle inside torch's model.pt zip without torch: every class becomes a stand-in that builds
    nothing (so no code from the file runs) and tensor storages are skipped; plain dicts and strings, such as
    the checkpoint's `meta`, come through."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        return lambda *args, **kwargs: None

    def persistent_load(self, pid: Any) -> None:
        return None


def recorded_model_hash(model_dir: Path) -> str:
    """The model hash that `eeasr-train export` recorded in model.pt (the bundle carries the same hash)."""
    path = model_dir / "model.pt"
    try:
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n.endswith("data.pkl"))
            blob = _MetaOnly(io.BytesIO(z.read(name))).load()
        return str(blob["meta"]["model_hash"])
    except (OSError, zipfile.BadZipFile, StopIteration, pickle.UnpicklingError, KeyError, TypeError, EOFError):
        raise BundleError(f"{path}: not a checkpoint eeasr can read (no model hash); pass --bundle DIR") from None


def stale_reason(out: Path, model_hash: str, exits: int) -> str | None:
    """Why the cached bundle `out` cannot be served for `model_hash` with EXITS=`exits` (None: it can). It must
    be complete, of this model, and record in its manifest the options `eeasr-convert MODEL --exits K` converts
    with now (eeasr.convert.build.bundle_options: EXITS, calibration, ...)."""
    try:
        b = load_bundle(out, model_hash=model_hash)
    except BundleError as e:
        return "first use" if not out.exists() else str(e)
    if b.manifest.get("options") != bundle_options(ConvertOptions(exits)):
        return "the cached bundle was converted with other options than eeasr-convert's defaults now"
    return None


def default_bundle(say: Callable[[str], None], model_dir: Path = DEFAULT_MODEL, exits: int = DEFAULT_EXITS) -> Path:
    """The cached bundle of `model_dir` with EXITS=`exits`, converted first when it is missing or stale.
    Raises BundleError with what to do when the model is absent or the converter cannot run."""
    missing = [n for n in CHECKPOINT_FILES if not (model_dir / n).is_file()]
    if missing:
        raise BundleError(f"no bundled default model at {model_dir} (missing {', '.join(missing)}); pass --bundle DIR "
                          f"(a bundle written by `eeasr-convert`)")
    model_hash = recorded_model_hash(model_dir)
    out = default_cache_dir() / "bundles" / f"{model_hash}-k{exits}"
    why = stale_reason(out, model_hash, exits)
    if why is None:
        return out
    for mod in ("torch", "tensorflow", "tflite_micro", "onnx"):
        if importlib.util.find_spec(mod) is None:
            raise BundleError(f"converting the default model needs the converter ({mod} is not installed): "
                              f"pip install -e '.[convert]' (make setup does), or pass --bundle DIR")
    say(f"converting the bundled default model for the device ({why}; 1-3 minutes): "
        f"eeasr-convert {model_dir} --exits {exits} --out {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", "from eeasr.convert.cli import main; main(prog_name='eeasr-convert')",
           str(model_dir), "--exits", str(exits), "--out", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as p:
        assert p.stdout is not None
        for line in p.stdout:
            line = line.rstrip()
            if line and not _NOISE.match(line):
                tail = (tail + [line])[-3:]
                say(f"  convert: {line}")
    if p.returncode != 0:
        raise BundleError(f"converting {model_dir} failed (exit {p.returncode}): {tail[-1] if tail else 'no output'}")
    load_bundle(out, model_hash=model_hash)
    return out


__all__ = ["default_bundle", "stale_reason", "recorded_model_hash", "DEFAULT_MODEL", "DEFAULT_EXITS"]
