"""Where eeasr keeps corpora and caches: outside the work tree, so later runs (and sessions) reuse them."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$EEASR_CACHE, else ~/.cache/eeasr."""
    return Path(os.environ.get("EEASR_CACHE", Path.home() / ".cache" / "eeasr")).expanduser()
