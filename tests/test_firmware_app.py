"""The ESP32-S3 application's checks that run without ESP-IDF, an Xtensa compiler or a board (issue 7):
the budget check (fits / refuses with the shortfall) for EXITS = 1..N, the model partition image (built,
parsed back by Python and by the firmware's own C parser compiled natively, refused when corrupt or too big),
the firmware's HELLO byte for byte against eeasr.protocol, `compote manifest lint` on
idf_component.yml, and the flashing step with esptool (merge-bin, write-flash, verify-flash, and
`make flash-model`'s exact command path) against esp32-mock-bootloader over a socket.
"""

from __future__ import annotations

import ctypes
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
from eeasr.convert.model_image import (HEADER_BYTES, VERSION, ModelImageError, build_image, golden_vectors,
                                       parse_image, plan_layout)

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
    struct.pack_into("<H", newer, 8, VERSION + 1)
    struct.pack_into("<I", newer, HEADER_BYTES - 4, zlib.crc32(bytes(newer[:HEADER_BYTES - 4])))
    with pytest.raises(ModelImageError, match=f"version {VERSION + 1}"):
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
    printf("program=%u %u %u %u %u %u %.17g\n", m.program.kind, m.n_segments, m.program.predictor_kind,
           m.program.n_layers, m.program.device_layers, m.program.n_modules, m.program.beta);
    printf("thresholds=%.9g %.9g\nfeature_q=%.9g %d\nhandoff_q=%.9g %d\narena=%u\n", m.threshold[0], m.threshold[1],
           m.feature_scale, (int)m.feature_zero_point, m.handoff_scale, (int)m.handoff_zero_point,
           (unsigned)m.arena_bytes);
    printf("norm=%.9g %.9g\n", m.norm_mean[0], m.norm_std[m.n_mels - 1]);
    for (unsigned i = 0; i < m.n_segments; i++)
        printf("seg=%s %u %u %u %u %u %.9g %d %.9g %d %.9g %d %u %u %u %u %u %u %d %d\n", m.seg[i].name,
               (unsigned)(m.seg[i].tflite - data), (unsigned)m.seg[i].tflite_len, (unsigned)m.seg[i].arena_bytes,
               m.seg[i].exit_index, m.seg[i].exit_layer, m.seg[i].in_scale, (int)m.seg[i].in_zero_point,
               m.seg[i].hidden_scale, (int)m.seg[i].hidden_zero_point, m.seg[i].logits_scale,
               (int)m.seg[i].logits_zero_point, m.seg[i].front, m.seg[i].requant, m.seg[i].role, m.seg[i].layer,
               m.seg[i].takes_count, m.seg[i].n_gates, m.golden.seg[i].hidden ? m.golden.seg[i].hidden[1] : -999,
               m.golden.seg[i].logits ? m.golden.seg[i].logits[5] : -999);
    if (m.program.kind == EEASR_PROGRAM_GATED) {
        printf("steps=%u %u %u", m.program.front, m.program.predictor, m.program.head);
        for (unsigned l = 0; l < m.program.device_layers; l++)
            printf(" %u/%u/%u", m.program.layer[l].predictor, m.program.layer[l].mha, m.program.layer[l].ffn);
        printf("\n");
    }
    printf("golden=%u %u %u %d %d\n", (unsigned)m.golden.n_samples, (unsigned)m.golden.n_frames,
           (unsigned)m.golden.t_valid, m.golden.pcm[100], m.golden.seg[m.n_segments - 1].logits[5]);

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
    assert out["program"] == [f"0 {im.device_exits} 255 0 0 0 0"] and im.program == "early_exit"
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
        assert [int(x) for x in f[12:18]] == [int(s.front), int(s.requant), 0, 0, 1, 0]   # an early-exit segment
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


# ---- gated (I3D) programs: image, budget, the firmware's program against the Python reference -----------------

GATED_MODELS = r"""
import sys
from pathlib import Path
from eeasr.convert.build import ConvertOptions, convert_checkpoint
from eeasr.convert.random_model import write_random_model

out = Path(sys.argv[1])
for kind in ("global", "local"):
    write_random_model(out / f"ckpt-{kind}", d_model=32, n_heads=2, ff_dim=64, n_layers=3, exits=[1, 2, 3], vocab=32,
                       window=64, n_calibration=12, seed=1, encoder="i3d",
                       i3d={"predictor": kind, "inter_ctc": [1, 2], "hidden": 16})
    # the firmware's program is under test here, not int8 quality (tests/test_i3d_deploy.py holds that): a low
    # head argmax gate keeps a tiny random model's conversion from failing on it
    convert_checkpoint(out / f"ckpt-{kind}", out / f"bundle-{kind}",
                       ConvertOptions(exits=2, calibration_windows=8, min_agreement=0.5), log=lambda _: None)
"""


@pytest.fixture(scope="module")
def gated_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random I3D models (3 layers, an exit after each; a global and a local gate predictor) converted with
    EXITS=2 into gated bundles by the real converter, in one subprocess (torch and tensorflow stay out of this
    process): the device runs layers 1-2, the server layer 3."""
    import importlib.util

    for mod in ("torch", "tensorflow", "tflite_micro", "onnxruntime"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed (the convert extra builds bundles)")
    d = tmp_path_factory.mktemp("gated")
    run = subprocess.run([sys.executable, "-c", GATED_MODELS, str(d)], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return {kind: d / f"bundle-{kind}" for kind in ("global", "local")}


def _program_order(prog: dict) -> list[str]:
    pred = prog["predictor"]
    order = [prog["front"], *(pred["segments"] if pred["kind"] == "global" else [])]
    for i, lay in enumerate(prog["layers"]):
        order += [*([pred["segments"][i]] if pred["kind"] == "local" else []), lay["mha"], lay["ffn"]]
    return order + [prog["head"]["segment"]]


@pytest.mark.parametrize("kind", ["global", "local"])
def test_gated_image_carries_the_program_and_the_budget_sizes_it(gated_bundles: dict, kind: str) -> None:
    from eeasr.gated_program import GatedProgram

    b = load_bundle(gated_bundles[kind])
    m = b.manifest
    prog = m["device"]["program"]
    data = build_image(b)
    im = parse_image(data)
    assert len(data) == plan_layout(m).total
    assert (im.program, im.predictor, im.n_layers, im.device_layers) == ("gated", kind, 3, 2)
    assert (im.module_mask, im.beta, im.device_exits, im.handoff_layer) == (prog["module_mask"], prog["beta"], 2, 2)
    assert im.exit_layers == [1, 2, 3] and im.handoff_q == b.handoff_qparams()
    assert [s.name for s in im.segments] == _program_order(prog)           # the table is the program order
    by_name = {s["name"]: s for s in b.segments}
    for s in im.segments:
        e = by_name[s.name]
        assert hashlib.sha256(im.tflite[s.name]).hexdigest() == e["sha256"] and s.arena == e["arena"]["bytes"]
        assert (s.role, s.layer, s.requant, s.front) == (e["role"], e["layer"], False, s.role == "front")
        assert s.takes_count == ("n_frames" in e["inputs"])
        ins, outs = e["inputs"], e["outputs"]
        assert s.in_q == QParams.from_dict(ins.get("feats") or ins.get("pooled") or ins["hidden_in"])
        out = outs.get("hidden") or outs.get("gate")
        assert s.hidden_q == (QParams.from_dict(out) if out else QParams(0.0, 0))
        assert s.logits_q == (QParams.from_dict(outs["logits"]) if "logits" in outs else QParams(0.0, 0))
        assert s.n_gates == (outs["gate"]["shape"][-1] if "gate" in outs else 0)
        assert (s.exit_index, s.exit_layer) == ((2, 2) if s.role == "head" else (0, 0))
    assert {s.n_gates for s in im.segments if s.role == "predictor"} == {6 if kind == "global" else 2}
    assert im.arena == max(s["arena"]["bytes"] for s in b.segments)
    assert im.feature_q == b.input_qparams("front", "feats")
    # golden vectors: every segment's TFLM output with every gate open (what SELF_TEST runs each segment on)
    g = im.golden
    prog_py = GatedProgram.from_bundle(b)
    x = np.full((1, im.window, im.n_mels), im.feature_q.zero_point, np.int8)
    x[0, :len(g.feats_q)] = g.feats_q
    ref = prog_py.run(x, len(g.feats_q), gates=np.ones((2, 2), bool))
    assert ref.invoked == [s.name for s in im.segments]
    for s, step, hid, lg in zip(im.segments, ref.steps, g.hidden_q, g.logits_q, strict=True):
        out = step.raw.get("hidden", step.raw.get("gate"))
        assert np.array_equal(hid, out[0] if out is not None else np.zeros(0, np.int8))
        assert np.array_equal(lg, step.raw["logits"][0, :g.t_valid] if s.role == "head" else np.zeros((0, im.vocab)))
    assert g.measures[-1][0] > 0 and g.measures[0] == (0.0, 0.0)
    with pytest.raises(ModelImageError, match="runs all of its segments"):
        build_image(b, 1)

    # budget: one arena serves every segment in turn (the largest), flash holds them all
    res = check_budget(m)
    assert res.fits and res.exits == 2 and res.exit_layers == [2]
    assert res.arena_bytes == im.arena and res.segments_bytes == sum(s["bytes"] for s in b.segments)
    assert res.image_bytes == len(data) and res.flash_bytes == Limits.from_partitions().app_estimate_bytes + len(data)
    window_s = m["window"]["frames"] / 100
    scen = "esp-nn/" + res.weights_where
    lat = {s["name"]: s["cost"]["latency_s"][scen] / window_s for s in b.segments}
    assert res.latency_s_per_s[scen] == pytest.approx(sum(lat.values()))                 # every gate open
    closed = [n for n in lat if not n.endswith(("_mha", "_ffn"))]
    assert res.first_exit_s_per_s == pytest.approx(sum(lat[n] for n in closed))         # every gate closed
    rows = [r for r in budget_table(m).splitlines() if r.startswith("| 2 (2) |")]
    assert len(rows) == 1 and rows[0].endswith("| yes |")
    with pytest.raises(ModelImageError, match="EXITS=2, not 1"):
        check_budget(m, 1)


def _with_crcs(img: bytearray) -> bytes:
    struct.pack_into("<I", img, 16, zlib.crc32(bytes(img[HEADER_BYTES:])))
    struct.pack_into("<I", img, HEADER_BYTES - 4, zlib.crc32(bytes(img[:HEADER_BYTES - 4])))
    return bytes(img)


@pytest.mark.parametrize("kind", ["global", "local"])
def test_firmware_c_parses_the_gated_image_as_python_does(gated_bundles: dict, kind: str, c_driver: Path,
                                                         tmp_path: Path) -> None:
    from eeasr.protocol import Hello

    b = load_bundle(gated_bundles[kind])
    data = build_image(b)
    (tmp_path / "model.bin").write_bytes(data)
    rc, out = _run_driver(c_driver, tmp_path / "model.bin")
    assert rc == 0, out
    im = parse_image(data)
    f32 = lambda x: float(np.float32(float(x)))  # noqa: E731
    assert out["program"] == [f"1 {len(im.segments)} {('global', 'local').index(kind)} 3 2 {im.module_mask} "
                              f"{im.beta:.17g}"]
    assert out["exits"] == [f"3 2 {im.default_measure} 2"] and out["arena"] == [str(im.arena)]
    roles = ("segment", "front", "predictor", "mha", "ffn", "head")
    for line, s, hid, lg in zip(out["seg"], im.segments, im.golden.hidden_q, im.golden.logits_q, strict=True):
        f = line.split()
        assert f[0] == s.name and [int(x) for x in f[1:6]] == [s.offset, s.size, s.arena, s.exit_index, s.exit_layer]
        assert [f32(f[6]), int(f[7]), f32(f[8]), int(f[9]), f32(f[10]), int(f[11])] == [
            f32(s.in_q.scale), s.in_q.zero_point, f32(s.hidden_q.scale), s.hidden_q.zero_point,
            f32(s.logits_q.scale), s.logits_q.zero_point]
        assert [int(x) for x in f[12:18]] == [int(s.front), 0, roles.index(s.role), s.layer, int(s.takes_count),
                                             s.n_gates]
        want = [int(hid.flat[1]) if hid.size else -999, int(lg.flat[5]) if lg.size else -999]   # golden outputs
        assert [int(f[18]), int(f[19])] == want
    # the program's steps as the firmware indexes them: front, global predictor, per layer predictor/mha/ffn, head
    names = [s.name for s in im.segments]
    glob = kind == "global"
    layers = [f"{names.index(f'l{i}_gate') if not glob else 255}/{names.index(f'l{i}_mha')}/{names.index(f'l{i}_ffn')}"
              for i in (1, 2)]
    assert out["steps"] == [f"0 {1 if glob else 255} {len(names) - 1} " + " ".join(layers)]
    m = b.manifest
    hello = Hello(b.model_hash, b.bundle_id[:16], m["features"]["hash"], 16000, 64, 4, 32, m["model"]["vocab_size"],
                  [2], "eeasr-fw test")     # one device exit: the head at layer 2
    assert out["hello"] == [hello.pack().hex()]

    # a table out of program order, or a module mask that does not fit the program: refused by both parsers
    mha = names.index("l1_mha")
    swapped = bytearray(data)
    a, z = (256 + 64 * mha, 256 + 64 * (mha + 1))
    swapped[a:z + 64] = data[z:z + 64] + data[a:z]
    mask = bytearray(data)
    mask[169] += 2
    for bad, c_words, py_words in [(swapped, f"segment {mha + 1} (l1_ffn) is not the program's next step",
                                    "is not the program order"),
                                   (mask, "gated program of 2 device layers of 3", "module mask of")]:
        (tmp_path / "bad.bin").write_bytes(_with_crcs(bad))
        rc, got = _run_driver(c_driver, tmp_path / "bad.bin")
        assert rc == 1 and c_words in got["error"][0], got
        with pytest.raises(ModelImageError, match=py_words):
            parse_image(_with_crcs(bad))


GATED_SHIM = r"""
/* Test harness (not firmware): firmware/main/gated_program.c on an image parsed by model_image.c, the segments
   run by the caller's callback (the tflite-micro wheel through ctypes), one window. */
#include <stdlib.h>
#include <string.h>
#include "eeasr_core/gates.h"
#include "gated_program.h"

int gated_window(const uint8_t *image, size_t size, double beta, const int8_t *feats, int32_t n_frames,
                 eeasr_segment_fn run, int8_t *handoff, int8_t *logits, eeasr_gated_out *out, char *err,
                 size_t err_len) {
    static eeasr_model_image m;
    if (eeasr_model_image_parse(image, size, 1, &m, err, err_len) != 0) return -1;
    int8_t *pooled = malloc(m.d_model), *gate = malloc(EEASR_MAX_MODULES);
    const eeasr_gated_buffers b = {handoff, pooled, gate, logits};
    int rc = eeasr_gated_run(&m, eeasr_gate_threshold(beta < 0 ? m.program.beta : beta), feats, n_frames, run, NULL,
                             &b, out);
    free(pooled);
    free(gate);
    return rc;
}

size_t gated_out_size(void) { return sizeof(eeasr_gated_out); }
"""


@pytest.fixture(scope="module")
def gated_lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (make apt-deps installs build-essential)")
    d = tmp_path_factory.mktemp("fw-gated")
    (d / "shim.c").write_text(GATED_SHIM)
    core = FW / "components" / "eeasr_core"
    lib = d / "libgated.so"
    cmd = ["gcc", "-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wdouble-promotion",
           "-ffp-contract=off", "-fPIC", "-shared", "-fsanitize=undefined", "-static-libubsan",
           "-fno-sanitize-recover=all", f"-I{MAIN}", f"-I{core / 'include'}", str(d / "shim.c"),
           str(MAIN / "gated_program.c"), str(MAIN / "model_image.c"),
           *(str(core / "src" / f) for f in ("gates.c", "quant.c", "protocol.c")), "-o", str(lib), "-lm"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return ctypes.CDLL(str(lib))


class _GatedOut(ctypes.Structure):   # firmware/main/gated_program.h eeasr_gated_out
    _fields_ = [("t_valid", ctypes.c_uint32), ("n_modules", ctypes.c_uint8), ("modules", ctypes.c_uint8 * 32),
                ("modules_run", ctypes.c_uint8), ("n_invoked", ctypes.c_uint8), ("invoked", ctypes.c_uint8 * 40)]


_P8 = ctypes.POINTER(ctypes.c_int8)
_SEGMENT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, _P8, ctypes.c_int32, _P8, _P8)


@pytest.mark.parametrize("kind", ["global", "local"])
def test_firmware_gated_program_runs_as_the_python_reference(gated_bundles: dict, gated_lib: ctypes.CDLL,
                                                             kind: str) -> None:
    """firmware/main/gated_program.c (pooling, decisions, skipping, requantizing the stream, the head, the module
    mask) on the image's parameters, its segments run by the tflite-micro wheel as segment_runner.cc runs them
    on the device (tensors by name, n_frames where a segment takes it): the same segments run, the same module
    mask, the same handoff and head logits, bit for bit, as eeasr.gated_program at every beta tried."""
    from eeasr.device_program import encoder_frames
    from eeasr.gated_program import GatedProgram

    assert gated_lib.gated_out_size() == ctypes.sizeof(_GatedOut)
    b = load_bundle(gated_bundles[kind])
    data = build_image(b)
    im = parse_image(data)
    prog = GatedProgram.from_bundle(b)
    t_enc, d, v = im.encoder_frames, im.d_model, im.vocab

    def run_segment(_ctx: int, i: int, x: object, n: int, logits: object, out: object) -> int:
        s = im.segments[i]
        seg = prog.segments[s.name]
        name = {"front": "feats", "predictor": "pooled"}.get(s.role, "hidden_in")
        shape = seg.inputs[name].shape
        inputs = {name: np.ctypeslib.as_array(x, (int(np.prod(shape)),)).reshape(shape).copy()}
        if s.takes_count:
            inputs["n_frames"] = np.array([n], np.int32)
        for key, value in seg.run(inputs).items():
            dst = logits if key == "logits" else out
            np.ctypeslib.as_array(dst, (value.size,))[:] = value.ravel()
        return 0

    callback = _SEGMENT_FN(run_segment)
    z = np.load(gated_bundles[kind].parent / f"ckpt-{kind}" / "calibration.npz")
    windows = [z["feats"][i, :z["n_frames"][i]] for i in range(6)]
    windows += [f[:n] for f, n in zip(windows, (4, 9, 17, 30))]   # short last windows, down to one encoder frame
    ran, total = 0, 0
    for w, feats in enumerate(windows):
        x, n = prog.quantize_features(feats.astype(np.float32))
        near = prog.run(x, n, beta=0.0).probs.ravel()[:2].tolist() if w < 3 else []   # betas at gate probabilities
        for beta in (None, 0.0, 1.0, 0.3, *near):
            ref = prog.run(x, n, beta=beta)
            handoff, logits, res = np.zeros((t_enc, d), np.int8), np.zeros((t_enc, v), np.int8), _GatedOut()
            err = ctypes.create_string_buffer(200)
            rc = gated_lib.gated_window(data, ctypes.c_size_t(len(data)),
                                        ctypes.c_double(-1.0 if beta is None else beta),
                                        np.ascontiguousarray(x).ctypes.data_as(_P8), ctypes.c_int32(n), callback,
                                        handoff.ctypes.data_as(_P8), logits.ctypes.data_as(_P8), ctypes.byref(res),
                                        err, ctypes.c_size_t(len(err)))
            assert rc == 0, err.value
            t = encoder_frames(n)
            mask = np.unpackbits(np.frombuffer(bytes(res.modules), np.uint8), count=res.n_modules,
                                 bitorder="little").astype(bool).tolist()
            assert [im.segments[i].name for i in res.invoked[:res.n_invoked]] == ref.invoked, (w, beta)
            assert mask == ref.module_mask and res.modules_run == ref.modules_run and res.t_valid == t
            assert np.array_equal(handoff[:t], ref.hidden_q) and np.array_equal(logits[:t], ref.exits[0].logits_q)
            if beta is None:
                ran, total = ran + ref.modules_run, total + 4
    assert 0 < ran < total   # at the image's beta some modules were skipped and some ran
