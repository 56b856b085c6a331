"""What every benchmark script shares: its command line built from its docstring, and how a plot is saved."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def parser(doc: str) -> argparse.ArgumentParser:
    """`--help` shows the docstring: its first paragraph as the description, the rest after the options."""
    head, _, rest = doc.partition("\n\n")
    return argparse.ArgumentParser(description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)


def save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
