"""Packaging: the shared core and the host install stay free of torch and tensorflow; the commands run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SHARED = ["eeasr", "eeasr.features", "eeasr.text", "eeasr.tokenizer", "eeasr.metrics", "eeasr.audio",
          "eeasr.manifest", "eeasr.testvectors", "eeasr.bundle", "eeasr.exits", "eeasr.windows",
          "eeasr.tflm", "eeasr.server_model", "eeasr.device_program"]
HEAVY = re.compile(r"^(torch|tensorflow.*|nvidia-.*)$")
# What pip prints (with -vv) when it cannot reach an index at all.
NETWORK_ERRORS = ("connection error", "Failed to establish a new connection", "Temporary failure in name resolution",
                  "Name or service not known", "Network is unreachable", "No route to host", "ConnectTimeoutError",
                  "Read timed out", "ProxyError")


def test_shared_package_imports_without_torch_or_tensorflow():
    code = (f"import importlib, sys\nfor m in {SHARED!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_host_install_pulls_neither_torch_nor_tensorflow(tmp_path: Path):
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--report", str(report),
           "-e", f"{REPO}[host]"]
    # No retries and a short timeout (inherited by pip's build-environment subprocess too), so that a
    # machine without a network fails fast instead of backing off for minutes.
    env = dict(os.environ, PIP_RETRIES="0", PIP_DEFAULT_TIMEOUT="20", PIP_NO_INPUT="1")
    run = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, env=env, cwd=tmp_path)
    if run.returncode != 0:
        # pip logs why it could not fetch an index page only at -vv: rerun to tell a network failure from others.
        verbose = subprocess.run([*cmd, "-vv"], capture_output=True, text=True, env=env, cwd=tmp_path)
        log = verbose.stdout + verbose.stderr
        hits = [line.strip() for line in log.splitlines() if any(e in line for e in NETWORK_ERRORS)]
        if verbose.returncode != 0 and hits:
            pytest.skip(f"no network to resolve the [host] install: {hits[0][:300]}")
        pytest.fail(f"pip could not resolve the [host] install:\n{run.stderr[-3000:]}")
    installs = json.loads(report.read_text())["install"]
    names = {item["metadata"]["name"].lower().replace("_", "-") for item in installs}
    assert "eeasr" in names and {"numpy", "soundfile", "pyserial", "sounddevice", "tflite-micro", "onnxruntime"} <= names
    assert not {n for n in names if HEAVY.match(n)}, sorted(names)


def test_host_runtimes_run_without_torch_or_tensorflow():
    """The simulated device's and the server's runners load their runtimes (tflite-micro, onnxruntime) in a
    process where torch and tensorflow cannot be imported."""
    pytest.importorskip("tflite_micro")
    pytest.importorskip("onnxruntime")
    code = ("import sys\n"
            "for m in ('torch', 'tensorflow'): sys.modules[m] = None  # importing them now raises ImportError\n"
            "from tflite_micro.python.tflite_micro import runtime\n"
            "import onnxruntime\n"
            "import eeasr.tflm, eeasr.server_model, eeasr.device_program\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize("script", ["eeasr-data", "eeasr-train", "eeasr-convert", "eeasr-host"])
def test_console_script_help(script: str, tmp_path: Path):
    exe = BIN / script
    assert exe.is_file(), f"{exe} is not installed; run `make setup`"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"Usage: {script} ")
    # The description: the text between the usage line and the options, e.g. "Build the data eeasr trains on."
    description = [ln.strip() for ln in lines[1:lines.index("Options:")] if ln.strip()]
    assert description and len(description[0]) > 10, out.stdout
    assert "Traceback" not in out.stderr
