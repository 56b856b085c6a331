"""`eeasr-convert`: turn a checkpoint into a device/server bundle."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """Quantize and partition a trained model for the ESP32-S3 and the server.

    The first EXITS exits become int8 TensorFlow Lite Micro segments (checked by the real TFLM
    interpreter), the rest a server model; a bundle directory holds them with generated firmware
    sources and a versioned manifest.json.
    """
