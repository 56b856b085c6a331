"""Shared fixtures: one tiny synthesized corpus per test session (built in seconds by the real TTS engines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eeasr.paths import default_cache_dir


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eeasr.train.data.synth import SynthConfig, build

    out = tmp_path_factory.mktemp("corpus")
    build(SynthConfig(hours=0.05, eval_hours=0.01), out, default_cache_dir(), progress=False)
    return out


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of a tiny random model (d=32, 4 layers with an exit after each, W=64 feature frames, 16 encoder
    frames), converted by the real `eeasr-convert --exits 2` in a subprocess (torch and tensorflow stay out of
    the test process): two device segments, and a server model for layers 3-4. Needs the convert extra."""
    import importlib.util
    import os
    import subprocess
    import sys

    for mod in ("torch", "tensorflow", "tflite_micro", "onnxruntime"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed (the convert extra builds bundles)")
    ckpt = tmp_path_factory.mktemp("small-model")
    code = ("import sys; from pathlib import Path; from eeasr.convert.random_model import write_random_model; "
            "write_random_model(Path(sys.argv[1]), d_model=32, n_heads=2, ff_dim=64, n_layers=4, exits=[1, 2, 3, 4], "
            "conv_kernel=5, vocab=32, window=64, n_calibration=12, seed=1)")
    out = tmp_path_factory.mktemp("small-bundle") / "exits2"
    for cmd in ([sys.executable, "-c", code, str(ckpt)],
                [str(Path(sys.executable).parent / "eeasr-convert"), str(ckpt), "--exits", "2", "--out", str(out),
                 "--calibration-windows", "8"]):
        run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        assert run.returncode == 0, f"{cmd[:3]} failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    return out


@pytest.fixture(scope="session")
def default_bundle_k2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled default model (models/default) converted with EXITS=2 by the real `eeasr-convert` in a
    subprocess (1-3 minutes): what `eeasr-host stream` runs by default. For checks that need a trained model."""
    import importlib.util
    import os
    import subprocess
    import sys

    for mod in ("torch", "tensorflow", "tflite_micro", "onnxruntime"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed (the convert extra builds bundles)")
    model = Path(__file__).resolve().parent.parent / "models" / "default"
    out = tmp_path_factory.mktemp("default-bundle") / "exits2"
    cmd = [str(Path(sys.executable).parent / "eeasr-convert"), str(model), "--exits", "2", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, f"eeasr-convert failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    return out
