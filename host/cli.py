"""`eeasr-host`: the host side of the edge-cloud split."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """Talk to an eeasr device (or the simulated one), run the suffix server, stream speech.

    The device runs the first layers and answers when its exit is confident; otherwise it hands its
    int8 hidden state to the server, which runs the remaining layers.
    """
