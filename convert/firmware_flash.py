"""What `make flash`, `make flash-model` and `make firmware-build` run (firmware/flash.mk):

  python -m eeasr.convert.firmware_flash flash --device esp32s3 --exits 2 [--model DIR] [--board B] [--port P]
  python -m eeasr.convert.firmware_flash flash-model --exits 2 [--port P]      only the `model` partition
  python -m eeasr.convert.firmware_flash build --exits 2                        build, do not flash
  python -m eeasr.convert.firmware_flash budget|table|image|inspect|merge ...

A checkpoint is converted when no bundle for it and EXITS is cached (CACHE/firmware/<model hash>/exits<K>/bundle,
found by the checkpoint's file hashes and the conversion options, which the manifest records: one converted
with other options than eeasr-convert's defaults now is converted again); the budget check refuses a bundle that
cannot fit (convert/budget.py); the generated sources and the model image are written into
firmware/main/generated/ all at once (a temporary directory renamed into place), and only after ESP-IDF was
found, so a failed step never leaves half-written firmware sources behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from eeasr.bundle import MANIFEST, Bundle, BundleError, load_bundle
from eeasr.convert.budget import FIRMWARE, Limits, budget_table, check_budget, refusal
from eeasr.convert.build import ConvertOptions, bundle_options
from eeasr.convert.model_image import ModelImageError, build_image, parse_image

BOARDS = ("devkitc-n16r8", "box3")
TARGET = "esp32s3"
GENERATED = FIRMWARE / "main" / "generated"
CONFIG_HEADER = "eeasr_model_config.h"
IMAGE = "eeasr_model.bin"
STAMP = "bundle.json"
CHECKPOINT_FILES = ("model.pt", "config.yaml", "tokenizer.model", "norm.json", "features.json", "calibration.npz")
IDF_INSTALL = """ESP-IDF was not found ({why}). `make flash` builds the firmware with ESP-IDF v5.2 or newer; install it
once (Espressif's steps for Linux and macOS; Windows: the ESP-IDF installer):
  mkdir -p ~/esp && cd ~/esp
  git clone -b v5.4.1 --recursive https://github.com/espressif/esp-idf.git
  cd esp-idf && ./install.sh esp32s3
then, in each new shell:
  . ~/esp/esp-idf/export.sh
and rerun the same make command. Nothing was written into firmware/. (`make flash-model` needs no ESP-IDF.)"""


class FirmwareError(click.ClickException):
    """A step that cannot go on; the message says why and what to do."""


def _log(msg: str) -> None:
    click.echo(msg, err=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _checkpoint_hashes(model: Path) -> dict[str, str]:
    missing = [n for n in CHECKPOINT_FILES if not (model / n).is_file()]
    if missing:
        raise FirmwareError(f"{model} is neither a bundle (no {MANIFEST}) nor a model directory (missing "
                            f"{', '.join(missing)}); pass MODEL=models/default or BUNDLE=DIR")
    return {n: _sha256(model / n) for n in CHECKPOINT_FILES}


def cached_bundle(model: Path, exits: int, cache: Path) -> Path | None:
    """A cached bundle converted from exactly these checkpoint files with EXITS = `exits` and the options
    `eeasr-convert --exits EXITS` converts with (convert() below), if any."""
    want = _checkpoint_hashes(model)
    options = bundle_options(ConvertOptions(exits))
    for manifest in sorted(cache.glob(f"*/exits{exits}/bundle/{MANIFEST}")):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if m.get("model", {}).get("checkpoint_files") == want and m.get("options") == options:
            return manifest.parent
    return None


def convert(model: Path, exits: int, cache: Path) -> Path:
    """Run `eeasr-convert` into the cache: a temporary directory, renamed to <model hash>/exits<K>/bundle."""
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache))
    exe = Path(sys.executable).parent / "eeasr-convert"
    cmd = [str(exe) if exe.exists() else "eeasr-convert", str(model), "--exits", str(exits), "--out", str(tmp / "b")]
    _log(f"converting {model} for EXITS={exits} (1-3 minutes per segment set): {' '.join(cmd)}")
    try:
        if subprocess.run(cmd).returncode != 0:
            raise FirmwareError(f"conversion of {model} failed (see above); nothing was cached")
        b = load_bundle(tmp / "b")
        dest = cache / b.model_hash / f"exits{exits}" / "bundle"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        (tmp / "b").rename(dest)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_bundle(model: Path, exits: int | None, cache: Path, bundle: Path | None = None) -> Bundle:
    """The bundle to put on the device: BUNDLE as given, MODEL when it is a bundle, else MODEL converted (cached)."""
    src = bundle or model
    try:
        if (src / MANIFEST).exists():
            b = load_bundle(src)
            if exits is not None and b.device_exits != exits:
                raise FirmwareError(f"{src} was converted with EXITS={b.device_exits}, not {exits}; pass EXITS="
                                    f"{b.device_exits} or a checkpoint as MODEL")
            return b
        if bundle is not None:
            raise FirmwareError(f"BUNDLE={bundle} holds no {MANIFEST}")
        if exits is None:
            raise FirmwareError("EXITS is needed to convert a checkpoint (e.g. EXITS=2)")
        found = cached_bundle(model, exits, cache)
        if found is not None:
            _log(f"using the cached bundle {found}")
        return load_bundle(found or convert(model, exits, cache))
    except BundleError as e:
        raise FirmwareError(str(e)) from None


def check_fits(b: Bundle, limits: Limits) -> None:
    budget = check_budget(b.manifest, None, limits)
    if not budget.fits:
        raise FirmwareError(refusal(budget))
    _log(f"budget: model image {budget.image_bytes:,} B of {limits.model_partition_bytes:,} B (`model` partition), "
         f"arena {budget.arena_bytes:,} B in {budget.arena_where.upper()}, weights in {budget.weights_where.upper()}, "
         f"modelled {budget.latency_s_per_s['esp-nn/' + budget.weights_where]:.2f} s per s of audio with all "
         f"{budget.exits} segments")


def idf_missing() -> str | None:
    """Why ESP-IDF cannot be used from this shell, or None."""
    if not os.environ.get("IDF_PATH"):
        return "IDF_PATH is unset"
    if shutil.which("idf.py") is None:
        return "idf.py is not on PATH"
    return None


def write_generated(b: Bundle, board: str, out: Path = GENERATED) -> Path:
    """The config header, the model partition image and a stamp, into `out`, replaced as a whole."""
    header = b.path / "firmware" / CONFIG_HEADER
    if not header.is_file():
        raise FirmwareError(f"{b.path} has no firmware/{CONFIG_HEADER}; reconvert it with this eeasr")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copyfile(header, tmp / CONFIG_HEADER)
        (tmp / IMAGE).write_bytes(build_image(b))
        (tmp / STAMP).write_text(json.dumps({"bundle": str(b.path), "model_hash": b.model_hash,
                                             "bundle_id": b.bundle_id, "exits": b.device_exits, "board": board},
                                            indent=1) + "\n")
        tmp.chmod(0o755)
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def idf_command(board: str, actions: list[str], port: str | None) -> list[str]:
    """idf.py with a build directory and sdkconfig per board, the board's defaults chained after the common ones.
    set-target runs only for a new build directory (it discards the configuration)."""
    build = f"build-{board}"
    cmd = ["idf.py", "-B", build, "-D", f"SDKCONFIG={build}/sdkconfig",
           "-D", f"SDKCONFIG_DEFAULTS=sdkconfig.defaults;boards/{board}/sdkconfig.defaults"]
    if port:
        cmd += ["-p", port]
    if not (FIRMWARE / build / "CMakeCache.txt").exists():
        cmd.append("set-target")
        cmd.append(TARGET)
    return cmd + actions


def esptool_command(port: str | None, args: list[str]) -> list[str]:
    """esptool from this Python environment (pinned in the `host` extra), chip esp32s3."""
    cmd = [sys.executable, "-m", "esptool", "--chip", TARGET]
    if port:
        cmd += ["--port", port]
    return cmd + args


def merge_command(build: Path, image: Path, out: Path, model_offset: int) -> list[str]:
    """One image for the whole flash (`esptool merge-bin`) from an ESP-IDF build directory's flasher_args.json
    (bootloader, partition table, app at their offsets) plus the model image at the `model` partition."""
    try:
        fa = json.loads((build / "flasher_args.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FirmwareError(f"{build}/flasher_args.json: {e}; build the firmware first (make firmware-build)") from None
    fs = fa.get("flash_settings", {})
    # the build's own copy of the model image (idf.py flash writes it too) is replaced by `image`
    files = sorted(((int(off, 0), build / rel) for off, rel in fa["flash_files"].items()
                    if int(off, 0) != model_offset), key=lambda t: t[0])
    args = ["merge-bin", "-o", str(out), "--flash-mode", fs.get("flash_mode", "dio"),
            "--flash-freq", fs.get("flash_freq", "80m"), "--flash-size", fs.get("flash_size", "16MB")]
    for off, path in files + [(model_offset, image)]:
        args += [hex(off), str(path)]
    return esptool_command(None, args)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    _log("$ " + " ".join(cmd))
    rc = subprocess.run(cmd, cwd=cwd).returncode
    if rc != 0:
        raise FirmwareError(f"{Path(cmd[0]).name} exited with status {rc}")


_model_opt = click.option("--model", type=click.Path(path_type=Path), default=Path("models/default"),
                          help="Checkpoint to convert, or a bundle directory.")
_exits_opt = click.option("--exits", type=click.IntRange(1, 16), default=None,
                          help="Exits on the device (EXITS); a bundle's own when omitted.")
_cache_opt = click.option("--cache", type=click.Path(path_type=Path),
                          default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "eeasr" / "firmware",
                          help="Where converted bundles are kept, by model hash and EXITS.")
_bundle_opt = click.option("--bundle", type=click.Path(path_type=Path), default=None,
                           help="Use this bundle as is (no conversion).")
_board_opt = click.option("--board", type=click.Choice(BOARDS), default=BOARDS[0],
                          help="Board: its sdkconfig.defaults (PSRAM, microphone) under firmware/boards/.")
_port_opt = click.option("--port", default=None, help="Serial port (or socket:// URL); found by esptool when omitted.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """Put an eeasr bundle on an ESP32-S3: budget check, model partition image, ESP-IDF build, flashing.

    \b
      make flash DEVICE=esp32s3 EXITS=2 [PORT=/dev/ttyACM0] [BOARD=devkitc-n16r8|box3] [MODEL=models/default]
      make flash-model EXITS=2           rewrite only the model partition (no ESP-IDF needed)
      make flash DEVICE=sim EXITS=2      the simulated device on the same bundle
    """


@main.command()
@click.option("--device", type=click.Choice([TARGET, "sim"]), default=TARGET, help="esp32s3, or sim for eeasr-host "
              "device-sim.")
@_model_opt
@_exits_opt
@_board_opt
@_port_opt
@_cache_opt
@_bundle_opt
def flash(device: str, model: Path, exits: int | None, board: str, port: str | None, cache: Path,
          bundle: Path | None) -> None:
    """Convert when needed, check the budget, write the generated sources, build and flash (idf.py)."""
    b = resolve_bundle(model, exits, cache, bundle)
    if device == "sim":
        exe = Path(sys.executable).parent / "eeasr-host"
        cmd = [str(exe) if exe.exists() else "eeasr-host", "device-sim", "--bundle", str(b.path)]
        _run(cmd + (["--port", port] if port else []))
        return
    _build(b, board, port, ["build", "flash"])


@main.command()
@_model_opt
@_exits_opt
@_board_opt
@_cache_opt
@_bundle_opt
def build(model: Path, exits: int | None, board: str, cache: Path, bundle: Path | None) -> None:
    """As flash, without flashing: the app, bootloader, partition table and model image under firmware/build-BOARD."""
    _build(resolve_bundle(model, exits, cache, bundle), board, None, ["build"])


def _build(b: Bundle, board: str, port: str | None, actions: list[str]) -> None:
    check_fits(b, Limits.from_partitions())
    why = idf_missing()
    if why:
        raise FirmwareError(IDF_INSTALL.format(why=why))
    write_generated(b, board)
    _log(f"wrote {GENERATED.relative_to(FIRMWARE.parent)} for bundle {b.bundle_id[:12]} (model {b.model_hash}, "
         f"EXITS={b.device_exits}, board {board})")
    _run(idf_command(board, actions, port), cwd=FIRMWARE)


@main.command("flash-model")
@_model_opt
@_exits_opt
@_port_opt
@_cache_opt
@_bundle_opt
@click.option("--baud", type=int, default=921600, help="esptool baud rate (ignored by USB-Serial-JTAG).")
@click.option("--esptool-args", default="", help="Extra esptool options before the command, e.g. "
              "'--before no-reset --after no-reset'.")
def flash_model(model: Path, exits: int | None, port: str | None, cache: Path, bundle: Path | None, baud: int,
                esptool_args: str) -> None:
    """Write only the `model` partition (esptool write-flash at its offset, then verify-flash): the
    application is not rebuilt. The device refuses, with an ERROR frame, a model for another model hash."""
    b = resolve_bundle(model, exits, cache, bundle)
    limits = Limits.from_partitions()
    check_fits(b, limits)
    image = cache / "images" / f"model-{b.bundle_id[:16]}.bin"
    if not image.exists():
        _write_atomic(image, build_image(b))
    extra = esptool_args.split() + ["--baud", str(baud)]
    off = hex(limits.model_partition_offset)
    _run(esptool_command(port, extra + ["write-flash", off, str(image)]))
    _run(esptool_command(port, extra + ["verify-flash", off, str(image)]))
    _log(f"model partition at {off}: {image.stat().st_size:,} B written and verified (bundle {b.bundle_id[:12]})")


@main.command()
@_model_opt
@_exits_opt
@_cache_opt
@_bundle_opt
def budget(model: Path, exits: int | None, cache: Path, bundle: Path | None) -> None:
    """Check one bundle against the ESP32-S3 limits; exit status 1 when it does not fit."""
    b = resolve_bundle(model, exits, cache, bundle)
    click.echo(budget_table(b.manifest, ks=[b.device_exits]))
    res = check_budget(b.manifest)
    if not res.fits:
        raise FirmwareError(refusal(res))


@main.command()
@_model_opt
@_cache_opt
@_bundle_opt
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write it here.")
def table(model: Path, cache: Path, bundle: Path | None, out: Path | None) -> None:
    """The device budget for EXITS = 1..N from one bundle with every exit on the device (converted when needed)."""
    n = None
    if bundle is None and not (model / MANIFEST).exists():
        import yaml
        n = len(yaml.safe_load((model / "config.yaml").read_text())["model"]["exits"])
    b = resolve_bundle(model, n, cache, bundle)
    text = (f"Device budget, bundle {b.path} (model {b.model_hash}): EXITS = k runs its first k segments.\n\n"
            + budget_table(b.manifest))
    click.echo(text)
    if out:
        out.write_text(text)


@main.command()
@_model_opt
@_exits_opt
@_cache_opt
@_bundle_opt
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def image(model: Path, exits: int | None, cache: Path, bundle: Path | None, out: Path) -> None:
    """Write the model partition image (checked against the `model` partition size)."""
    b = resolve_bundle(model, exits, cache, bundle)
    check_fits(b, Limits.from_partitions())
    _write_atomic(out, build_image(b))
    click.echo(f"{out}: {out.stat().st_size:,} B")


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def inspect(path: Path) -> None:
    """Parse and verify a model image (or a dump of the partition) as the firmware does at boot."""
    try:
        im = parse_image(path.read_bytes())
    except ModelImageError as e:
        raise FirmwareError(f"{path}: {e}") from None
    click.echo(f"{path}: eeasr model image v{im.version}, {im.size:,} B, model {im.model_hash}, bundle "
               f"{im.bundle_id[:12]}, EXITS={im.device_exits} of {len(im.exit_layers)} (layers "
               f"{[s.exit_layer for s in im.segments]}), W={im.window}, arena {im.arena:,} B")
    for s in im.segments:
        click.echo(f"  {s.name}: {s.size:,} B at 0x{s.offset:x}, blocks {s.blocks[0] + 1}-{s.blocks[1]}, arena "
                   f"{s.arena:,} B{', requantized input' if s.requant else ''}")


@main.command()
@click.option("--build", "build_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="An ESP-IDF build directory (firmware/build-BOARD).")
@click.option("--image", "image_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=GENERATED / IMAGE, help="The model partition image.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def merge(build_dir: Path, image_path: Path, out: Path) -> None:
    """One file for the whole flash (bootloader, partition table, app, model) for esptool write-flash 0x0."""
    _run(merge_command(build_dir, image_path, out, Limits.from_partitions().model_partition_offset))


if __name__ == "__main__":
    main()
