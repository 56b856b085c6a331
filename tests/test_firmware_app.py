"""The ESP32-S3 application's checks that run without ESP-IDF, an Xtensa compiler or a board (issue 7):
the budget check (fits / refuses with the shortfall) for EXITS = 1..N, the model partition image (built,
parsed back by Python and by the firmware's own C parser compiled natively, refused when corrupt or too big),
the firmware's HELLO byte for byte against eeasr.protocol, `compote manifest lint` on
idf_component.yml, and the flashing step with esptool (merge-bin, write-flash, verify-flash, and
`make flash-model`'s exact command path) against esp32-mock-bootloader over a socket.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from eeasr.bundle import Bundle, QParams, load_bundle
from eeasr.convert.budget import Limits, budget_table, check_budget, read_partitions, refusal
from eeasr.convert.model_image import (HEADER_BYTES, ModelImageError, build_image, golden_vectors, parse_image,
                                       plan_layout)

REPO = Path(__file__).resolve().parent.parent
FW = REPO / "firmware"
MAIN = FW / "main"
VENV = Path(sys.executable).parent.parent
MODEL_OFFSET = 0x310000


@pytest.fixture(scope="module")
def all_exits_bundle(convert_small) -> Path:  # noqa: ANN001
    """The small random model of conftest's small_bundle with all 4 exits on the device (EXITS = 1..4)."""
    return convert_small(4)


# ---- budget ----------------------------------------------------------------------------------------------

def test_budget_fits_for_every_exits(all_exits_bundle: Path) -> None:
    b = load_bundle(all_exits_bundle)
    lim = Limits.from_partitions()
    parts = read_partitions()
    assert lim.model_partition_offset == parts["model"].offset == MODEL_OFFSET
    assert lim.model_partition_bytes == parts["model"].size
    prev = None
    for k in range(1, 5):
        res = check_budget(b.manifest, k, lim)
        assert res.fits, res.problems
        assert res.exits == k and res.exit_layers == [1, 2, 3, 4][:k]
        assert res.image_bytes == plan_layout(b.manifest, k).total
        assert res.arena_where == "sram"        # a tiny model's arena fits beside the firmware's buffers
        assert res.flash_bytes == lim.app_estimate_bytes + res.image_bytes
        if prev:                                 # each exit adds a segment and its modelled time
            assert res.image_bytes > prev.image_bytes
            assert res.latency_s_per_s["esp-nn/flash"] > prev.latency_s_per_s["esp-nn/flash"]
        prev = res
    # the planned size is the built size
    assert len(build_image(b)) == plan_layout(b.manifest).total
    table = budget_table(b.manifest, lim)
    rows = [line for line in table.splitlines() if re.match(r"\| \d \(", line)]
    assert [r.split()[1] for r in rows] == ["1", "2", "3", "4"] and all(r.endswith("| yes |") for r in rows)
    assert "model_partition_bytes = 13,565,952" in table


def test_budget_refuses_and_says_by_how_much(all_exits_bundle: Path) -> None:
    m = load_bundle(all_exits_bundle).manifest
    base = Limits.from_partitions()
    need = plan_layout(m, 4).total

    small = replace(base, model_partition_bytes=need - 1000)
    res = check_budget(m, 4, small)
    assert not res.fits and res.problems == [f"model image {need:,} B does not fit the {need - 1000:,} B `model` "
                                             f"partition: 1,000 B over"]
    assert refusal(res).startswith("EXITS=4 does not fit the ESP32-S3: model image")
    assert check_budget(m, 1, small).fits     # fewer exits fit the same partition

    arena = max(s["arena"]["bytes"] for s in m["device"]["segments"])
    no_room = replace(base, sram_heap_bytes=base.sram_reserved_bytes, model_in_psram=False,
                      psram_bytes=base.psram_reserved_bytes + arena - 77)
    res = check_budget(m, 4, no_room)
    assert res.arena_where == "psram" and len(res.problems) == 1
    assert f"arena {arena:,} B does not fit SRAM" in res.problems[0] and res.problems[0].endswith(", 77 B over")

    big_app = replace(base, app_estimate_bytes=base.app_partition_bytes + 5)
    assert check_budget(m, 1, big_app).problems[-1].endswith("app partition by 5 B")


def test_weights_go_to_psram_only_when_they_fit(all_exits_bundle: Path) -> None:
    m = load_bundle(all_exits_bundle).manifest
    base = Limits.from_partitions()
    assert check_budget(m, 4, base).weights_where == "psram"
    seg_bytes = sum(s["bytes"] for s in m["device"]["segments"])
    tight = replace(base, psram_bytes=base.psram_reserved_bytes + seg_bytes - 1)
    res = check_budget(m, 4, tight)
    assert res.fits and res.weights_where == "flash"  # the firmware falls back to XIP, as budget models it
    assert res.first_exit_s_per_s == pytest.approx(m["device"]["segments"][0]["cost"]["latency_s"]["esp-nn/flash"]
                                                   / (m["window"]["frames"] / 100))


# ---- model partition image ---------------------------------------------------------------------------------

def test_model_image_round_trip(small_bundle: Path) -> None:
    from eeasr.features import FeatureConfig, NormStats, log_mel, quantize_int8

    b = load_bundle(small_bundle)
    m = b.manifest
    data = build_image(b)
    assert len(data) == plan_layout(m).total
    im = parse_image(data)
    assert (im.model_hash, im.bundle_id, im.feature_hash) == (b.model_hash, b.bundle_id, m["features"]["hash"])
    assert (im.window, im.encoder_frames, im.d_model, im.vocab) == (64, 16, 32, m["model"]["vocab_size"])
    assert im.exit_layers == [1, 2, 3, 4] and im.device_exits == 2 and im.handoff_layer == 2
    by_name = {s["name"]: s for s in b.segments}
    for s in im.segments:
        entry = by_name[s.name]
        assert hashlib.sha256(im.tflite[s.name]).hexdigest() == entry["sha256"]   # hashes match the bundle
        assert s.offset % 16 == 0 and s.arena == entry["arena"]["bytes"]
        assert s.in_q == QParams.from_dict(entry["inputs"]["feats" if s.front else "hidden_in"])
        assert s.hidden_q == QParams.from_dict(entry["outputs"]["hidden"])
        assert s.logits_q == QParams.from_dict(entry["outputs"]["logits"])
    assert im.segments[1].requant == b.boundaries[0]["requantize"]
    assert im.handoff_q == b.handoff_qparams() and im.feature_q == b.input_qparams("seg1", "feats")
    np.testing.assert_array_equal(im.norm_mean, np.float32(m["features"]["norm"]["mean"]))
    np.testing.assert_array_equal(im.norm_std, np.float32(m["features"]["norm"]["std"]))
    for i, name in enumerate(("entropy", "nonblank_entropy")):
        assert im.thresholds[i] == pytest.approx(m["thresholds"]["measures"][name]["threshold"], rel=1e-6)
    assert im.arena == max(s["arena"]["bytes"] for s in b.segments)
    # golden vectors: the reference features of the clip, and the TFLM outputs the wheel gives again now
    g = im.golden
    cfg = FeatureConfig.from_dict(m["features"]["config"])
    want = quantize_int8(NormStats.from_dict(m["features"]["norm"]).apply(log_mel(g.pcm, cfg)), im.feature_q.scale,
                         im.feature_q.zero_point)
    np.testing.assert_array_equal(g.feats_q, want)
    again = golden_vectors(b, 2)
    for i in range(2):
        np.testing.assert_array_equal(g.hidden_q[i], again.hidden_q[i])
        np.testing.assert_array_equal(g.logits_q[i], again.logits_q[i])
    assert g.t_valid == 16 and g.hidden_q[0].shape == (16, 32)


def test_model_image_refuses_corrupt_and_foreign_bytes(small_bundle: Path) -> None:
    data = bytearray(build_image(load_bundle(small_bundle)))
    im = parse_image(bytes(data))
    seg = im.segments[0]
    for mutate, reason in [
        (lambda d: d.__setitem__(seg.offset + 100, d[seg.offset + 100] ^ 1), "CRC-32 mismatch"),
        (lambda d: d.__setitem__(0, ord("X")), "bad magic"),
        (lambda d: d.__setitem__(40, ord("0") if d[40] != ord("0") else ord("1")), "header CRC-32"),
        (lambda d: d.__delitem__(slice(len(d) - 10, len(d))), "truncated"),
    ]:
        bad = bytearray(data)
        mutate(bad)
        with pytest.raises(ModelImageError, match=reason):
            parse_image(bytes(bad))
    newer = bytearray(data)
    struct.pack_into("<H", newer, 8, 2)
    struct.pack_into("<I", newer, HEADER_BYTES - 4, zlib.crc32(bytes(newer[:HEADER_BYTES - 4])))
    with pytest.raises(ModelImageError, match="version 2"):
        parse_image(bytes(newer))


def test_oversize_bundle_is_refused_before_anything_is_written(small_bundle: Path, tmp_path: Path) -> None:
    from eeasr.convert.firmware_flash import FirmwareError, check_fits

    b = load_bundle(small_bundle)
    need = plan_layout(b.manifest).total
    with pytest.raises(FirmwareError, match=f"{need - 4096:,} B `model` partition: 4,096 B over"):
        check_fits(b, replace(Limits.from_partitions(), model_partition_bytes=need - 4096))


def test_generated_sources_are_replaced_as_a_whole(small_bundle: Path, tmp_path: Path) -> None:
    from eeasr.convert.firmware_flash import FirmwareError, write_generated

    b = load_bundle(small_bundle)
    out = tmp_path / "main" / "generated"
    write_generated(b, "box3", out)
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "eeasr_model.bin", "eeasr_model_config.h"]
    assert (out / "eeasr_model_config.h").read_bytes() == (small_bundle / "firmware" / "eeasr_model_config.h").read_bytes()
    assert parse_image((out / "eeasr_model.bin").read_bytes()).bundle_id == b.bundle_id
    assert json.loads((out / "bundle.json").read_text())["board"] == "box3"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # a bundle without the generated header: refused, the previous sources stay as they were, no temporary left
    broken = tmp_path / "broken"
    shutil.copytree(small_bundle, broken)
    (broken / "firmware" / "eeasr_model_config.h").unlink()
    with pytest.raises(FirmwareError, match="no firmware/eeasr_model_config.h"):
        write_generated(Bundle(broken, b.manifest), "box3", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["generated"]


# ---- the firmware's own C, compiled natively ----------------------------------------------------------------

DRIVER = r"""
/* Test harness (not firmware): parses a model image with firmware/main/model_image.c and prints what it read,
   then the HELLO the firmware would send for it (hello.c + eeasr_core's packer) in hex. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "hello.h"
#include "model_image.h"

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    FILE *f = fopen(argv[1], "rb");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *data = aligned_alloc(64, (size_t)(size + 63) / 64 * 64);
    if (fread(data, 1, (size_t)size, f) != (size_t)size) return 3;
    fclose(f);
    static eeasr_model_image m;
    char err[200];
    if (eeasr_model_image_parse(data, (size_t)size, 1, &m, err, sizeof err) != 0) {
        printf("error=%s\n", err);
        free(data);
        return 1;
    }
    printf("model_hash=%s\nbundle_id=%s\nfeature_hash=%s\nsize=%u\n", m.model_hash, m.bundle_id, m.feature_hash,
           (unsigned)m.size);
    printf("shape=%u %u %u %u %u %u\n", m.window, m.encoder_frames, m.d_model, m.vocab, m.n_mels, m.subsampling);
    printf("exits=%u %u %u %u\n", m.n_exits, m.device_exits, m.default_measure, m.handoff_layer);
    printf("thresholds=%.9g %.9g\nfeature_q=%.9g %d\nhandoff_q=%.9g %d\narena=%u\n", m.threshold[0], m.threshold[1],
           m.feature_scale, (int)m.feature_zero_point, m.handoff_scale, (int)m.handoff_zero_point,
           (unsigned)m.arena_bytes);
    printf("norm=%.9g %.9g\n", m.norm_mean[0], m.norm_std[m.n_mels - 1]);
    for (unsigned i = 0; i < m.device_exits; i++)
        printf("seg=%s %u %u %u %u %u %.9g %d %.9g %d %.9g %d %u %u\n", m.seg[i].name,
               (unsigned)(m.seg[i].tflite - data), (unsigned)m.seg[i].tflite_len, (unsigned)m.seg[i].arena_bytes,
               m.seg[i].exit_index, m.seg[i].exit_layer, m.seg[i].in_scale, (int)m.seg[i].in_zero_point,
               m.seg[i].hidden_scale, (int)m.seg[i].hidden_zero_point, m.seg[i].logits_scale,
               (int)m.seg[i].logits_zero_point, m.seg[i].front, m.seg[i].requant);
    printf("golden=%u %u %u %d %d\n", (unsigned)m.golden.n_samples, (unsigned)m.golden.n_frames,
           (unsigned)m.golden.t_valid, m.golden.pcm[100], m.golden.seg[m.device_exits - 1].logits[5]);

    uint8_t layers[EEASR_IMG_MAX_SEGMENTS], out[512];
    eeasr_hello h;
    size_t n = 0;
    if (eeasr_hello_from_image(&m, "eeasr-fw test", layers, &h) != 0 || eeasr_pack_hello(&h, out, sizeof out, &n))
        return 4;
    printf("hello=");
    for (size_t i = 0; i < n; i++) printf("%02x", out[i]);
    printf("\n");
    free(data);
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (make apt-deps installs build-essential)")
    d = tmp_path_factory.mktemp("fw-c")
    (d / "driver.c").write_text(DRIVER)
    exe = d / "driver"
    core = FW / "components" / "eeasr_core"
    cmd = ["gcc", "-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
           "-fno-sanitize-recover=all", f"-I{MAIN}", f"-I{core / 'include'}", str(d / "driver.c"),
           str(MAIN / "model_image.c"), str(MAIN / "hello.c"), str(core / "src" / "protocol.c"), "-o", str(exe)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return exe


def _run_driver(exe: Path, image: Path) -> tuple[int, dict[str, list[str]]]:
    run = subprocess.run([str(exe), str(image)], capture_output=True, text=True,
                         env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1"})
    assert "Sanitizer" not in run.stderr and "runtime error" not in run.stderr, run.stderr
    out: dict[str, list[str]] = {}
    for line in run.stdout.splitlines():
        k, _, v = line.partition("=")
        out.setdefault(k, []).append(v)
    return run.returncode, out


def test_firmware_c_parses_the_image_as_python_does(small_bundle: Path, c_driver: Path, tmp_path: Path) -> None:
    b = load_bundle(small_bundle)
    data = build_image(b)
    (tmp_path / "model.bin").write_bytes(data)
    rc, out = _run_driver(c_driver, tmp_path / "model.bin")
    assert rc == 0, out
    im = parse_image(data)
    f32 = lambda x: float(np.float32(float(x)))  # noqa: E731  (%.9g round-trips float32)
    assert out["model_hash"] == [im.model_hash] and out["bundle_id"] == [im.bundle_id]
    assert out["feature_hash"] == [im.feature_hash] and out["size"] == [str(len(data))]
    assert out["shape"] == [f"{im.window} {im.encoder_frames} {im.d_model} {im.vocab} {im.n_mels} {im.subsampling}"]
    assert out["exits"] == [f"{len(im.exit_layers)} {im.device_exits} {im.default_measure} {im.handoff_layer}"]
    assert [f32(x) for x in out["thresholds"][0].split()] == [f32(t) for t in im.thresholds]
    assert out["arena"] == [str(im.arena)]
    fs, fz = out["feature_q"][0].split()
    assert (f32(fs), int(fz)) == (f32(im.feature_q.scale), im.feature_q.zero_point)
    assert [f32(x) for x in out["norm"][0].split()] == [float(im.norm_mean[0]), float(im.norm_std[-1])]
    for line, s in zip(out["seg"], im.segments, strict=True):
        f = line.split()
        assert f[0] == s.name and [int(x) for x in f[1:6]] == [s.offset, s.size, s.arena, s.exit_index, s.exit_layer]
        assert (f32(f[6]), int(f[7]), f32(f[8]), int(f[9])) == (f32(s.in_q.scale), s.in_q.zero_point,
                                                                  f32(s.hidden_q.scale), s.hidden_q.zero_point)
        assert [int(f[12]), int(f[13])] == [int(s.front), int(s.requant)]
    g = im.golden
    assert out["golden"] == [f"{len(g.pcm)} {len(g.feats_q)} {g.t_valid} {g.pcm[100]} {g.logits_q[-1].flat[5]}"]

    # corrupt bytes: the C parser refuses them with the same reason as Python
    bad = bytearray(data)
    bad[im.segments[1].offset + 7] ^= 0x40
    (tmp_path / "bad.bin").write_bytes(bytes(bad))
    rc, out = _run_driver(c_driver, tmp_path / "bad.bin")
    assert rc == 1 and out["error"] == ["model image CRC-32 mismatch: the partition is corrupt, flash it again"]
    (tmp_path / "short.bin").write_bytes(data[:HEADER_BYTES + 100])
    rc, out = _run_driver(c_driver, tmp_path / "short.bin")
    assert rc == 1 and "does not fit" in out["error"][0]


def test_firmware_hello_matches_the_protocol(small_bundle: Path, c_driver: Path, tmp_path: Path) -> None:
    from eeasr.protocol import Hello

    b = load_bundle(small_bundle)
    (tmp_path / "model.bin").write_bytes(build_image(b))
    rc, out = _run_driver(c_driver, tmp_path / "model.bin")
    assert rc == 0
    m = b.manifest
    hello = Hello(b.model_hash, b.bundle_id[:16], m["features"]["hash"], 16000, 64, 4, 32, m["model"]["vocab_size"],
                  [s["exit"]["layer"] for s in b.segments], "eeasr-fw test")
    assert out["hello"] == [hello.pack().hex()]


def test_generated_header_and_eeasr_core_headers_compile_together(small_bundle: Path, tmp_path: Path) -> None:
    """The bundle's generated header beside every eeasr_core header, in either order, with -Werror: no macro of
    one redefines one of the other's (the model's parameters are EEASR_MODEL_*); and the model's features are
    those compiled into the C front end."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (make apt-deps installs build-essential)")
    include = FW / "components" / "eeasr_core" / "include"
    core = "".join(f'#include "eeasr_core/{h.name}"\n' for h in sorted((include / "eeasr_core").glob("*.h")))
    generated = '#include "eeasr_model_config.h"\n'
    check = r"""
_Static_assert(EEASR_MODEL_SAMPLE_RATE == EEASR_SAMPLE_RATE && EEASR_MODEL_WIN_LENGTH == EEASR_WIN_LENGTH &&
               EEASR_MODEL_HOP_LENGTH == EEASR_HOP_LENGTH && EEASR_MODEL_N_FFT == EEASR_N_FFT &&
               EEASR_MODEL_N_MELS == EEASR_N_MELS &&
               EEASR_MODEL_MEASURE_NONBLANK_ENTROPY == EEASR_MEASURE_NONBLANK_ENTROPY,
               "the model's features are not the C front end's");
int main(void) {
    return !(EEASR_MODEL_F_MIN == (float)EEASR_F_MIN && EEASR_MODEL_F_MAX == (float)EEASR_F_MAX &&
             EEASR_MODEL_LOG_FLOOR == (float)EEASR_LOG_FLOOR);
}
"""
    for name, order in (("core_first", core + generated), ("generated_first", generated + core)):
        src, exe = tmp_path / f"{name}.c", tmp_path / name
        src.write_text(order + check)
        run = subprocess.run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{include}",
                              f"-I{small_bundle / 'firmware'}", str(src), "-o", str(exe)],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert subprocess.run([str(exe)]).returncode == 0


def test_firmware_sources_use_only_declared_kconfig_options() -> None:
    declared = set(re.findall(r"^\s*(?:config|choice)\s+(\w+)", (MAIN / "Kconfig.projbuild").read_text(), re.M))
    used = set()
    for src in [*MAIN.glob("*.c"), *MAIN.glob("*.cc"), *MAIN.glob("*.h")]:
        used |= set(re.findall(r"CONFIG_(EEASR_\w+)", src.read_text()))
    for cfg in [FW / "sdkconfig.defaults", *FW.glob("boards/*/sdkconfig.defaults")]:
        used |= set(re.findall(r"^CONFIG_(EEASR_\w+)=", cfg.read_text(), re.M))
    assert used and used <= declared, sorted(used - declared)
    sources = re.search(r"SRCS (.*?)\n\s*INCLUDE_DIRS", (MAIN / "CMakeLists.txt").read_text(), re.S).group(1).split()
    assert sorted(sources) == sorted(p.name for p in [*MAIN.glob("*.c"), *MAIN.glob("*.cc")])
    for board in ("devkitc-n16r8", "box3"):
        text = (FW / "boards" / board / "sdkconfig.defaults").read_text()
        assert "CONFIG_SPIRAM_MODE_OCT=y" in text   # both named boards carry octal PSRAM
    parts = read_partitions()
    assert parts["model"].offset % 0x10000 == 0    # mmap works in 64 KB pages
    assert parts["factory"].offset % 0x10000 == 0 and parts["model"].offset + parts["model"].size <= 16 << 20


# ---- ESP-IDF component manifest ---------------------------------------------------------------------------

def test_idf_component_manifest_lints(tmp_path: Path) -> None:
    import yaml

    from eeasr.convert.esp_ops import ESP_TFLITE_MICRO_VERSION

    compote = VENV / "bin" / "compote"
    if not compote.exists():
        pytest.skip("idf-component-manager is not installed (the dev extra pins it)")
    manifest = MAIN / "idf_component.yml"
    run = subprocess.run([str(compote), "manifest", "lint", str(manifest)], capture_output=True, text=True)
    assert run.returncode == 0 and not run.stdout.strip(), run.stdout + run.stderr
    deps = yaml.safe_load(manifest.read_text())["dependencies"]
    assert deps["espressif/esp-tflite-micro"]["version"] == f"=={ESP_TFLITE_MICRO_VERSION}"
    broken = tmp_path / "idf_component.yml"
    broken.write_text(manifest.read_text().replace('version: "==1.5.4"', 'version: "==1.5.4"\n    pinned: yes'))
    run = subprocess.run([str(compote), "manifest", "lint", str(broken)], capture_output=True, text=True)
    assert run.returncode != 0 and "pinned" in run.stdout + run.stderr


# ---- flashing against esp32-mock-bootloader -----------------------------------------------------------------

def _esptool(port: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "esptool", "--chip", "esp32s3", "--port", port, "--before",
                           "no-reset", "--after", "no-reset", *args], capture_output=True, text=True, timeout=300)


def test_merge_write_verify_against_mock_bootloader(small_bundle: Path, tmp_path: Path) -> None:
    """The application cannot be built here (no Xtensa toolchain, no ESP-IDF): the bootloader, partition table
    and app are small random PLACEHOLDER images, labelled so in flasher_args.json as an ESP-IDF build directory
    would list the real ones; the model image is the real one built from the bundle."""
    mock_api = pytest.importorskip("esp32_mock_bootloader")
    from eeasr.convert.firmware_flash import merge_command

    rng = np.random.default_rng(7)
    build = tmp_path / "build-placeholder"
    files = {"0x0": "bootloader/bootloader.PLACEHOLDER.bin", "0x8000": "partition_table/partition-table.PLACEHOLDER.bin",
             "0x10000": "eeasr.PLACEHOLDER.bin", hex(MODEL_OFFSET): "model-from-the-build.bin"}
    blobs = {}
    for off, rel in files.items():
        (build / rel).parent.mkdir(parents=True, exist_ok=True)
        blobs[off] = rng.integers(0, 256, 4096 if off != "0x10000" else 65536, dtype=np.uint8).tobytes()
        (build / rel).write_bytes(blobs[off])
    (build / "flasher_args.json").write_text(json.dumps({
        "note": "placeholder images for the flashing test, not firmware",
        "flash_settings": {"flash_mode": "dio", "flash_size": "16MB", "flash_freq": "80m"}, "flash_files": files}))
    image = tmp_path / "model.bin"
    image.write_bytes(build_image(load_bundle(small_bundle)))
    merged = tmp_path / "merged.bin"
    run = subprocess.run(merge_command(build, image, merged, MODEL_OFFSET), capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    whole = merged.read_bytes()
    assert whole[:4096] == blobs["0x0"] and whole[0x8000:0x9000] == blobs["0x8000"]
    assert whole[0x10000:0x20000] == blobs["0x10000"]
    assert whole[MODEL_OFFSET:] == image.read_bytes()   # the given model image replaced the build's copy
    parse_image(whole[MODEL_OFFSET:])

    with mock_api.mock_bootloader(chip="esp32s3") as mock:
        url = mock.url()
        for args in (["write-flash", "0x0", str(merged)], ["verify-flash", "0x0", str(merged)],
                     ["verify-flash", hex(MODEL_OFFSET), str(image)]):
            run = _esptool(url, *args)
            assert run.returncode == 0, f"{args}:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
        assert "Verification successful (digest matched)" in run.stdout
        other = tmp_path / "other.bin"
        other.write_bytes(bytes(b ^ 0xFF for b in image.read_bytes()[:8192]))
        run = _esptool(url, "verify-flash", hex(MODEL_OFFSET), str(other))
        assert run.returncode != 0                        # verify-flash really compares


def _make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """make in the repository with this test's virtual environment, never re-running `make setup`."""
    return subprocess.run(["make", "-s", "-C", str(REPO), "-o", f"{VENV}/.installed", f"VENV={VENV}", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_make_flash_model_writes_the_model_partition(small_bundle: Path, tmp_path: Path) -> None:
    mock_api = pytest.importorskip("esp32_mock_bootloader")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    cache = tmp_path / "cache"
    with mock_api.mock_bootloader(chip="esp32s3") as mock:
        url = mock.url()
        run = _make("flash-model", f"BUNDLE={small_bundle}", "EXITS=2", f"PORT={url}", f"FW_CACHE={cache}",
                    "ESPTOOL_ARGS=--before no-reset --after no-reset")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert f"model partition at {hex(MODEL_OFFSET)}" in run.stderr and "written and verified" in run.stderr
        assert f"write-flash {hex(MODEL_OFFSET)}" in run.stderr      # the exact command it ran
        images = list((cache / "images").glob("model-*.bin"))
        assert len(images) == 1 and parse_image(images[0].read_bytes()).bundle_id == load_bundle(small_bundle).bundle_id
        run = _esptool(url, "verify-flash", hex(MODEL_OFFSET), str(images[0]))
        assert run.returncode == 0, run.stdout[-2000:]
    # a bundle of another EXITS is refused by name, before esptool runs
    run = _make("flash-model", f"BUNDLE={small_bundle}", "EXITS=3", "PORT=socket://127.0.0.1:9", f"FW_CACHE={cache}")
    assert run.returncode != 0 and "converted with EXITS=2, not 3" in run.stderr


def test_make_firmware_build_without_esp_idf_says_how_and_writes_nothing(small_bundle: Path, tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    generated = MAIN / "generated"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in generated.iterdir()) if generated.exists() else None
    env = {k: v for k, v in os.environ.items() if k != "IDF_PATH"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not (Path(p) / "idf.py").exists())
    run = _make("firmware-build", f"BUNDLE={small_bundle}", "EXITS=2", f"FW_CACHE={tmp_path}", env=env)
    assert run.returncode != 0
    assert "ESP-IDF was not found (IDF_PATH is unset)" in run.stderr and "./install.sh esp32s3" in run.stderr
    assert "Nothing was written into firmware/" in run.stderr
    after = sorted((p.name, p.stat().st_mtime_ns) for p in generated.iterdir()) if generated.exists() else None
    assert after == before
    assert not list(MAIN.glob(".generated.*"))
