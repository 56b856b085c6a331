"""What every benchmark script shares: its command line built from its docstring, how its table is printed and
written, and how a plot is saved."""

from __future__ import annotations

import argparse
import csv
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


def write_tables(out: Path, name: str, text: str, rows: list[dict[str, Any]]) -> None:
    """Print the Markdown `text` and write it to OUT/NAME.md, and `rows` (one dict each, the first's keys as the
    header) to OUT/NAME.csv."""
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
