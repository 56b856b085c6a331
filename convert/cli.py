"""`eeasr-convert`: turn a checkpoint into a device/server bundle.

    eeasr-convert CHECKPOINT --exits K --out DIR     (the default command, `convert`)
    eeasr-convert report CHECKPOINT|BUNDLE           (device cost table for K = 1..all, or of one bundle)
"""

from __future__ import annotations

import os
from pathlib import Path

import click


class _DefaultCommandGroup(click.Group):
    """A group whose first argument, when it names no subcommand, goes to the default command `convert`."""

    default_command = "convert"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultCommandGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """Quantize and partition a trained model for the ESP32-S3 and the server.

    The first EXITS exits become int8 TensorFlow Lite Micro segments (checked by the real TFLM
    interpreter), the rest a server model; a bundle directory holds them with generated firmware
    sources and a versioned manifest.json.

    \b
      eeasr-convert models/default --exits 2 --out bundles/exits2
      eeasr-convert report models/default
    """


def _errors() -> tuple[type[BaseException], ...]:
    from eeasr.bundle import BundleError
    from eeasr.convert.esp_ops import UnsupportedOpError
    from eeasr.convert.segments import AgreementError, Int16Error
    from eeasr.convert.server import ServerCheckError
    from eeasr.server_model import ServerModelError
    from eeasr.tflm import CorruptModelError, TFLMError

    return (AgreementError, Int16Error, UnsupportedOpError, ServerCheckError, ServerModelError, TFLMError,
            CorruptModelError, BundleError, ValueError, FileNotFoundError, FileExistsError)


@main.command("convert")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--exits", "k", type=int, required=True,
              help="Exits on the device (EXITS): segments 1..K (I3D: layers up to the K-th exit, as gated module "
                   "segments).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Bundle directory to write.")
@click.option("--min-cosine", type=float, default=None,
              help="Least hidden-state cosine, TFLM int8 vs float, per segment and T_valid [default: 0.98].")
@click.option("--min-agreement", type=float, default=None,
              help="Least exit argmax agreement, TFLM int8 vs float [default: 0.85].")
@click.option("--int16", "int16", type=int, multiple=True,
              help="Segment number to convert with int16 activations (repeatable); checked against int16 kernels.")
@click.option("--calibration-windows", type=int, default=32, help="Representative windows per segment.")
@click.option("--target-wer", type=float, default=None,
              help="WER (%) the exit thresholds must meet on the calibration set [default: last exit's + 2].")
@click.option("--threads", type=int, default=1, help="CPU threads for torch and TensorFlow.")
@click.option("--beam", type=int, default=10, help="Conformer-AED: attention beam of the server's decoder.")
@click.option("--lm", "lm", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Conformer-AED: an `eeasr-train lm` run; the server rescores its N-best with it.")
@click.option("--lm-weight", type=float, default=0.5, help="Conformer-AED: LM weight in the log-score am + w * lm.")
def convert(checkpoint: Path, k: int, out: Path, min_cosine: float | None, min_agreement: float | None,
            int16: tuple[int, ...], calibration_windows: int, target_wer: float | None, threads: int, beam: int,
            lm: Path | None, lm_weight: float) -> None:
    """Convert CHECKPOINT (a model directory with calibration.npz, as `eeasr-train export` writes) into a bundle."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from eeasr.convert.build import DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_COSINE, ConvertOptions, convert_checkpoint

    opts = ConvertOptions(exits=k, min_cosine=DEFAULT_MIN_COSINE if min_cosine is None else min_cosine,
                          min_agreement=DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement,
                          int16=frozenset(int16), calibration_windows=calibration_windows, target_wer=target_wer,
                          threads=threads, beam=beam, lm=lm, lm_weight=lm_weight)
    try:
        convert_checkpoint(checkpoint, out, opts, log=lambda m: click.echo(m, err=True))
    except _errors() as e:
        raise click.ClickException(f"conversion failed: {e}") from None


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table (markdown) to this file.")
@click.option("--threads", type=int, default=1, help="CPU threads for torch and TensorFlow.")
def report(path: Path, out: Path | None, threads: int) -> None:
    """Device cost per segment for K = 1..all exits: flash, arena, MACs, bytes per frame, modelled ESP32-S3
    latency. PATH is a checkpoint (all its exits are converted for the table; nothing is written) or a bundle
    (its own segments)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from eeasr.bundle import MANIFEST, load_bundle
    from eeasr.convert.cost import Assumptions, cost_table

    try:
        if (path / MANIFEST).exists():
            b = load_bundle(path)
            rows = [{"k": i + 1, "name": s["name"], "exit_layer": s["exit"]["layer"] if "exit" in s else s["layer"],
                     "cost": s["cost"]}
                    for i, s in enumerate(b.segments)]
            window, title = b.window, f"bundle {path} (model {b.model_hash}, EXITS={b.device_exits})"
        else:
            from eeasr.convert.build import ConvertOptions, _setup_threads, build_segments
            from eeasr.train.checkpoint import load_checkpoint

            _setup_threads(threads)
            ck = load_checkpoint(path)
            n = len(ck.cfg.model.exits)
            segments, _, _, costs = build_segments(ck, ConvertOptions(exits=n), lambda m: click.echo(m, err=True))
            rows = [{"k": i + 1, "name": s.name, "exit_layer": s.plan.exit_layer, "cost": c.to_dict()}
                    for i, (s, c) in enumerate(zip(segments, costs))]
            window, title = ck.cfg.data.window, f"checkpoint {path} (model {ck.model_hash}), every exit on the device"
    except _errors() as e:
        raise click.ClickException(str(e)) from None
    notes = "\n".join(f"- `{k}` = {v['value']:.4g}: {v['note']}" for k, v in Assumptions().notes().items())
    text = (f"Device cost, {title}; window W={window} frames ({window / 100:g} s). Latency is the roofline "
            f"per op (max of compute and memory time), summed; RTF = latency / window; 'memory'/'compute' says "
            f"which dominates.\n\n{cost_table(rows, window)}\n\nAssumptions (convert/cost.py):\n{notes}\n")
    click.echo(text)
    if out:
        out.write_text(text)
