"""`eeasr-convert`: turn a checkpoint into a device/server bundle.

    eeasr-convert CHECKPOINT --exits K --out DIR     (the default command, `convert`)
    eeasr-convert report CHECKPOINT|BUNDLE           (device cost table for K = 1..all, or of one bundle;
                                                      any family the converter converts)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import click

from eeasr.convert.calibration import CALIBRATIONS, DEFAULT_CLIP_PERCENTILE


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
@click.option("--calibration", type=click.Choice(CALIBRATIONS), default=CALIBRATIONS[0], show_default=True,
              help="How int8 activation ranges are set from the representative windows: `percentile` clips each "
                   "range at its [100-P, P] percentiles (--clip-percentile), `minmax` spans every value seen. A "
                   "few outliers stretch a min/max range and coarsen the int8 steps of all other values; on "
                   "models/default percentile ranges raised the handoff's token agreement with the float model "
                   "from 0.913 to 0.932 at the same size (docs/decisions/0005-handoff-agreement.md).")
@click.option("--clip-percentile", type=click.FloatRange(50, 100, min_open=True), default=None, metavar="P",
              help=f"With --calibration percentile: clip at the [100-P, P] percentiles [default: "
                   f"{DEFAULT_CLIP_PERCENTILE:g}].")
@click.option("--target-wer", type=float, default=None,
              help="WER (%) the exit thresholds must meet on the calibration set [default: last exit's + 2].")
@click.option("--threads", type=int, default=1, help="CPU threads for torch and TensorFlow.")
@click.option("--beam", type=int, default=10, help="Conformer-AED: attention beam of the server's decoder.")
@click.option("--lm", "lm", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Conformer-AED: an `eeasr-train lm` run; the server rescores its N-best with it.")
@click.option("--lm-weight", type=float, default=0.5, help="Conformer-AED: LM weight in the log-score am + w * lm.")
def convert(checkpoint: Path, k: int, out: Path, min_cosine: float | None, min_agreement: float | None,
            int16: tuple[int, ...], calibration_windows: int, calibration: str, clip_percentile: float | None,
            target_wer: float | None, threads: int, beam: int, lm: Path | None, lm_weight: float) -> None:
    """Convert CHECKPOINT (a model directory with calibration.npz, as `eeasr-train export` writes) into a bundle."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from eeasr.convert.build import DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_COSINE, ConvertOptions, convert_checkpoint

    if calibration == "minmax" and clip_percentile is not None:
        raise click.UsageError("--clip-percentile goes with --calibration percentile, not minmax")
    if calibration == "percentile" and clip_percentile is None:
        clip_percentile = DEFAULT_CLIP_PERCENTILE
    opts = ConvertOptions(exits=k, min_cosine=DEFAULT_MIN_COSINE if min_cosine is None else min_cosine,
                          min_agreement=DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement,
                          int16=frozenset(int16), calibration_windows=calibration_windows,
                          clip_percentile=clip_percentile, target_wer=target_wer, threads=threads, beam=beam, lm=lm,
                          lm_weight=lm_weight)
    try:
        convert_checkpoint(checkpoint, out, opts, log=lambda m: click.echo(m, err=True))
    except _errors() as e:
        raise click.ClickException(f"conversion failed: {e}") from None


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table (markdown) to this file.")
@click.option("--threads", type=int, default=1, help="CPU threads for torch and TensorFlow.")
@click.option("--calibration-windows", type=int, default=32,
              help="Checkpoint: representative windows per segment of the conversion the table is measured on.")
def report(path: Path, out: Path | None, threads: int, calibration_windows: int) -> None:
    """Device cost per segment: flash, arena, MACs, bytes per frame, modelled ESP32-S3 latency. PATH is a
    checkpoint of a family the converter converts (every exit on the device is converted for the table;
    nothing is written) or a bundle (its own segments). Early-exit programs (conformer, conformer-aed): one row
    per K = 1..n, cumulative. Gated programs (i3d): one row per module segment, then each K at beta 0 and 1."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from eeasr.bundle import MANIFEST, load_bundle
    from eeasr.convert.cost import Assumptions, cost_table, gated_cost_table

    def log(m: str) -> None:
        click.echo(m, err=True)

    try:
        if (path / MANIFEST).exists():
            b = load_bundle(path)
            prog = b.manifest["device"]["program"]
            window, title = b.window, f"bundle {path} (model {b.model_hash}, EXITS={b.device_exits})"
            if prog["kind"] == "gated":
                rows = [{"name": s["name"], "role": s["role"], "layer": s["layer"], "cost": s["cost"]}
                        for s in b.segments]
                table = gated_cost_table(rows, window, [(int(prog["head"]["exit"]), int(prog["head"]["layer"]))])
            else:
                table = cost_table([{"k": i + 1, "name": s["name"], "exit_layer": s["exit"]["layer"],
                                     "cost": s["cost"]} for i, s in enumerate(b.segments)], window)
        else:
            table, window, title = _checkpoint_table(path, threads, calibration_windows, log)
    except _errors() as e:
        raise click.ClickException(str(e)) from None
    notes = "\n".join(f"- `{k}` = {v['value']:.4g}: {v['note']}" for k, v in Assumptions().notes().items())
    text = (f"Device cost, {title}; window W={window} frames ({window / 100:g} s). Latency is the roofline "
            f"per op (max of compute and memory time), summed; RTF = latency / window; 'memory'/'compute' says "
            f"which dominates.\n\n{table}\n\nAssumptions (convert/cost.py):\n{notes}\n")
    click.echo(text)
    if out:
        out.write_text(text)


def _checkpoint_table(path: Path, threads: int, calibration_windows: int, log: Callable[[str], None]
                      ) -> tuple[str, int, str]:
    """(table, window, title) for a checkpoint with every exit on the device, converted in memory as
    `eeasr-convert --exits ALL` converts it (an i3d model: every layer as gated module segments)."""
    from eeasr.convert.build import CONVERTIBLE, ConvertOptions, _setup_threads, build_segments
    from eeasr.convert.cost import cost_table, gated_cost_table, segment_cost
    from eeasr.train.checkpoint import load_checkpoint

    _setup_threads(threads)
    ck = load_checkpoint(path)
    cfg, window = ck.cfg.model, ck.cfg.data.window
    if cfg.encoder not in CONVERTIBLE:
        raise ValueError(f"{path}: {cfg.encoder!r} models cannot be converted yet; eeasr-convert converts "
                         f"{', '.join(CONVERTIBLE)}")
    title = f"checkpoint {path} (model {ck.model_hash}), every exit on the device"
    if cfg.encoder == "i3d":
        from eeasr.convert.i3d import build_gated_segments
        from eeasr.convert.segments import load_calibration

        calib = load_calibration(ck.path, ck.norm, window)
        segs, *_ = build_gated_segments(ck.model, calib, window, cfg.exits[-1], float(cfg.i3d.beta),
                                        calibration_windows, log)
        rows = [{"name": n, "role": s.mod.role, "layer": s.mod.layer,
                 "cost": segment_cost(s.tflite, s.arena, window).to_dict()} for n, s in segs.items()]
        return (gated_cost_table(rows, window, [(j + 1, layer) for j, layer in enumerate(cfg.exits)]), window,
                f"{title} ({cfg.i3d.predictor} gate predictor)")
    opts = ConvertOptions(exits=len(cfg.exits), calibration_windows=calibration_windows)
    segments, _, _, costs = build_segments(ck, opts, log)
    rows = [{"k": i + 1, "name": s.name, "exit_layer": s.plan.exit_layer, "cost": c.to_dict()}
            for i, (s, c) in enumerate(zip(segments, costs))]
    return cost_table(rows, window), window, title
