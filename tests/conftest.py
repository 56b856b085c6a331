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
