"""Write framing and endpointing test vectors for firmware/native/tests/check_protocol.c.

Frames are eeasr.protocol's bytes: valid ones of every message type (random contents and the limits), which C
must decode and re-encode byte for byte, and one broken frame per rejection reason, which C must refuse for
that reason (the reference refuses each too, checked here). Endpoint cases are int16 signals with
eeasr.endpoint's events and final noise floor. Reason numbers are read from protocol.h's eeasr_reason.

Format "EEPV" version 1, little-endian, packed:

    header:   char[4] "EEPV", u32 version, u32 n_frames, u32 n_endpoint
    frame:    char[32] name (NUL padded), i32 reason (0: a valid frame), u32 n, u8 wire[n]
              (the bytes of one frame with its 0x00 delimiter, or one broken run and its delimiter)
    endpoint: char[32] name, u32 n_samples, u32 chunk, i16 pcm[n_samples],
              u32 n_events, (i32 kind 1 start / 2 end, u64 sample)[n_events] (flush's last),
              f64 floor after the last push
"""

from __future__ import annotations

import argparse
import re
import struct
import zlib
from pathlib import Path

import numpy as np
from cobs import cobs

from eeasr import endpoint as E
from eeasr import protocol as P

MAGIC = b"EEPV"
VERSION = 1
HEADER = Path(__file__).resolve().parents[1] / "components" / "eeasr_core" / "include" / "eeasr_core" / "protocol.h"


def _reasons() -> dict[str, int]:
    enum = re.search(r"typedef enum \{([^}]*)\} eeasr_reason;", HEADER.read_text()).group(1)
    return {name: i for i, name in enumerate(re.findall(r"^\s+EEASR_(\w+)", enum, re.M))}


def _hex(rng: np.random.Generator) -> str:
    return rng.bytes(8).hex()


def _random_messages(rng: np.random.Generator) -> list[P.Message]:
    def text(n: int) -> str:
        return "".join(rng.choice(list("abc xyzé€😀\n\"")) for _ in range(n))

    out: list[P.Message] = []
    for _ in range(6):
        out += [
            P.Hello(_hex(rng), _hex(rng), _hex(rng), int(rng.integers(0, 2**32)), int(rng.integers(0, 2**16)),
                    int(rng.integers(0, 256)), int(rng.integers(0, 2**16)), int(rng.integers(0, 2**16)),
                    rng.integers(0, 256, int(rng.integers(1, 33))).tolist(), text(int(rng.integers(0, 30)))),
            P.Audio(rng.integers(-32768, 32768, int(rng.integers(0, 600))).astype(np.int16), int(rng.integers(0, 8))),
            P.Result(int(rng.integers(0, 2**32)), int(rng.integers(0, 2**16)), int(rng.integers(0, 32)),
                     int(rng.integers(1, 7)), int(rng.integers(0, 16)), int(rng.integers(0, 3)),
                     float(np.float32(rng.normal(0, 3))), rng.integers(0, 2**16, int(rng.integers(0, 50))).tolist(),
                     text(int(rng.integers(0, 40)))),
            P.Handoff(int(rng.integers(0, 2**32)), int(rng.integers(0, 2**16)), int(rng.integers(0, 2)),
                      int(rng.integers(0, 16)), _hex(rng), float(np.float32(rng.uniform(1e-3, 1))),
                      int(rng.integers(-128, 128)),
                      rng.integers(-128, 128, (int(rng.integers(0, 40)), int(rng.integers(1, 200)))).astype(np.int8)),
            P.Handoff(int(rng.integers(0, 2**32)), int(rng.integers(0, 2**16)), int(rng.integers(0, 2)),
                      int(rng.integers(0, 16)), _hex(rng), float(np.float32(rng.uniform(1e-3, 1))),
                      int(rng.integers(-128, 128)),
                      rng.integers(-128, 128, (int(rng.integers(0, 20)), 8)).astype(np.int8),
                      (rng.random(int(rng.integers(1, 80))) < 0.5).tolist()),   # a gated program's module mask
            P.Error(int(rng.integers(1, 9)), text(int(rng.integers(0, 60)))),
            P.Ack(int(rng.integers(0, 2**16)), int(rng.integers(1, 9)), int(rng.integers(0, 256))),
            P.CommandMsg(int(rng.integers(0, 256))),
            P.Info('{"checks": [' + ", ".join(str(x) for x in rng.integers(0, 999, int(rng.integers(0, 50)))) + "]}"),
        ]
    return out


def _limit_messages() -> list[tuple[str, P.Message]]:
    h8 = "0123456789abcdef"
    return [
        ("audio_4096_samples", P.Audio(np.arange(-2048, 2048, dtype=np.int16) * 16, P.AudioFlag.STREAM_END)),
        ("audio_empty", P.Audio(np.zeros(0, np.int16), P.AudioFlag.UTT_END)),
        ("result_1024_tokens_4096_bytes", P.Result(1, 2, 3, 4, 5, 2, float("inf"), list(range(0, 65536, 64)),
                                                   "é" * 2048)),
        ("result_nan_confidence", P.Result(0, 0, 0, 1, 1, 0, float("nan"))),
        ("handoff_at_the_limit", P.Handoff(9, 9, 1, 4, h8, 2.0**-126, -128,
                                           np.full((1, P.MAX_PAYLOAD - 26), -1, np.int8))),
        ("handoff_empty", P.Handoff(9, 9, 1, 4, h8, 0.5, 0, np.zeros((0, 144), np.int8))),
        ("handoff_255_modules", P.Handoff(9, 9, 1, 4, h8, 0.5, 0, np.ones((2, 3), np.int8), [True] * 255)),
        ("handoff_mask_limit", P.Handoff(9, 9, 1, 4, h8, 0.5, 0, np.full((1, P.MAX_PAYLOAD - 26 - 3), 5, np.int8),
                                         [False, True] * 5)),
        ("info_49152_no_zeros", P.Info("\x01" * P.MAX_PAYLOAD)),
        ("info_49152_zeros", P.Info("\x00" * P.MAX_PAYLOAD)),
        ("info_empty", P.Info("")),
        ("hello_32_exits_long_name", P.Hello(h8, h8, h8, 16000, 150, 4, 144, 257, list(range(32)), "n" * 300)),
        ("error_cut_at_4096", P.Error(P.ErrorCode.INTERNAL, "ü" * 3000)),
    ]


def _raw(payload: bytes, mtype: int, version: int = 1, length: int | None = None) -> bytes:
    body = P.HEADER.pack(version, mtype, 7, len(payload) if length is None else length) + payload
    return body + P.CRC.pack(zlib.crc32(body))


def _wire(raw: bytes) -> bytes:
    return cobs.encode(raw) + b"\x00"


def _broken() -> list[tuple[str, str, bytes, str]]:
    """(name, reason, wire bytes, words of the reference's rejection)."""
    T = P.MsgType
    ack = P.pack_frame(P.Ack(1, 2, 0), 3)
    hello = P.Hello("00" * 8, "11" * 8, "22" * 8, 16000, 150, 4, 144, 257, [2, 4], "fw").pack()
    result = P.Result(1, 0, 0, 1, 2, 0, 0.5, [5, 6], "ok").pack()
    handoff = P.Handoff(1, 0, 0, 4, "00" * 8, 0.5, 0, np.ones((2, 3), np.int8)).pack()
    flipped = bytearray(ack)
    flipped[7] ^= 0x20
    return [
        ("too_long", "TOO_LONG", b"\x05" * (P.MAX_ENCODED + 1) + b"\x00", "longer than"),
        ("bad_cobs", "BAD_COBS", b"\x05\x01\x01\x00", "COBS"),
        ("short_frame", "SHORT_FRAME", _wire(ack[:9]), "shorter than header"),
        ("length_mismatch", "LENGTH_MISMATCH", _wire(_raw(bytes(4), T.ACK, length=5)), "does not match its header"),
        ("bad_crc", "BAD_CRC", _wire(bytes(flipped)), "crc mismatch"),
        ("bad_version", "BAD_VERSION", _wire(_raw(bytes(4), T.ACK, version=2)), "protocol version 2"),
        ("payload_too_large", "PAYLOAD_TOO_LARGE", _wire(_raw(b"x" * (P.MAX_PAYLOAD + 1), T.INFO)), "exceeds"),
        ("unknown_type", "UNKNOWN_TYPE", _wire(_raw(bytes(4), 0x09)), "unknown message type"),
        ("hello_short", "SHORT_PAYLOAD", _wire(_raw(hello[:35], T.HELLO)), "shorter than 36"),
        ("hello_exit_list", "BAD_EXIT_LIST", _wire(_raw(hello[:37], T.HELLO)), "truncated exit list"),
        ("hello_firmware_length", "BAD_FIRMWARE_LENGTH", _wire(_raw(hello[:-1], T.HELLO)), "firmware string"),
        ("hello_firmware_utf8", "BAD_UTF8", _wire(_raw(hello[:-2] + b"\xed\xa0", T.HELLO)), "not valid UTF-8"),
        ("audio_odd", "BAD_AUDIO_LAYOUT", _wire(_raw(bytes(5), T.AUDIO)), "2 flag bytes"),
        ("audio_4097_samples", "TOO_MANY_SAMPLES", _wire(_raw(bytes(2 + 2 * 4097), T.AUDIO)), "more than 4096"),
        ("result_short", "SHORT_PAYLOAD", _wire(_raw(result[:17], T.RESULT)), "too short"),
        ("result_token_list", "BAD_TOKEN_LIST", _wire(_raw(result[:19], T.RESULT)), "truncated token list"),
        ("result_1025_tokens", "BAD_TOKEN_LIST", _wire(_raw(bytes(14) + struct.pack("<H", 1025) + bytes(2052),
                                                            T.RESULT)), "truncated token list"),
        ("result_text_length", "BAD_TEXT_LENGTH", _wire(_raw(result[:-1], T.RESULT)), "text length"),
        ("result_text_utf8", "BAD_UTF8", _wire(_raw(result[:-2] + b"\xc0\x80", T.RESULT)), "not valid UTF-8"),
        ("handoff_short", "SHORT_PAYLOAD", _wire(_raw(handoff[:25], T.HANDOFF)), "shorter than 26"),
        ("handoff_state_size", "BAD_STATE_SIZE", _wire(_raw(handoff[:-1], T.HANDOFF)), "5 state bytes for 2 x 3"),
        ("handoff_scale_zero", "BAD_SCALE", _wire(_raw(handoff[:16] + bytes(4) + handoff[20:], T.HANDOFF)),
         "not a positive number"),
        ("handoff_scale_nan", "BAD_SCALE", _wire(_raw(handoff[:16] + struct.pack("<f", float("nan")) + handoff[20:],
                                                      T.HANDOFF)), "not a positive number"),
        ("handoff_mask_zero_count", "BAD_MODULE_MASK", _wire(_raw(handoff + b"\x00", T.HANDOFF)), "module mask"),
        ("handoff_mask_short", "BAD_MODULE_MASK", _wire(_raw(handoff + b"\x09\xff", T.HANDOFF)), "module mask"),
        ("handoff_mask_long", "BAD_MODULE_MASK", _wire(_raw(handoff + b"\x03\x05\x00", T.HANDOFF)), "module mask"),
        ("handoff_mask_unused_bits", "BAD_MODULE_MASK", _wire(_raw(handoff + b"\x03\x0d", T.HANDOFF)),
         "module mask"),
        ("error_short", "SHORT_PAYLOAD", _wire(_raw(b"\x01", T.ERROR)), "shorter than its code"),
        ("error_utf8", "BAD_UTF8", _wire(_raw(b"\x01\x00\xf4\x90\x80\x80", T.ERROR)), "not valid UTF-8"),
        ("ack_size", "BAD_PAYLOAD_SIZE", _wire(_raw(bytes(3), T.ACK)), "must be 4 bytes"),
        ("command_size", "BAD_PAYLOAD_SIZE", _wire(_raw(bytes(2), T.COMMAND)), "must be 1 byte"),
        ("info_utf8", "BAD_UTF8", _wire(_raw(b'{"a": "\xe2\x82"}', T.INFO)), "not valid UTF-8"),
    ]


def _frames() -> list[tuple[str, int, bytes]]:
    reasons = _reasons()
    rng = np.random.default_rng(17)
    cases = [(f"random_{type(m).__name__.lower()}_{i}", 0, P.encode(m, int(rng.integers(0, 2**16))))
             for i, m in enumerate(_random_messages(rng))]
    cases += [(name, 0, P.encode(m, 65535)) for name, m in _limit_messages()]
    for name, reason, wire, words in _broken():
        (out,) = P.FrameDecoder().feed(wire)
        if not isinstance(out, P.FrameError) or words not in out.reason:
            raise SystemExit(f"{name}: the reference gave {out!r}, expected a rejection with {words!r}")
        cases.append((name, reasons[reason], wire))
    for name, _, wire in cases:
        if len(name) >= 32:
            raise SystemExit(f"case name {name!r} is longer than 31 bytes")
        if not wire.endswith(b"\x00") or b"\x00" in wire[:-1]:
            raise SystemExit(f"{name}: not one run and its delimiter")
    return cases


def _endpoint_cases() -> list[tuple[str, np.ndarray, int]]:
    rng = np.random.default_rng(23)

    def noise(n: int, level: float) -> np.ndarray:
        return np.clip(np.round(rng.standard_normal(n) * level), -32768, 32767).astype(np.int16)

    def tone(n: int, level: float) -> np.ndarray:
        return np.round(level * np.sin(2 * np.pi * 440 * np.arange(n) / 16000)).astype(np.int16)

    speechy = np.concatenate([noise(12000, 30)] + [np.concatenate([tone(int(rng.integers(2000, 9000)), a),
                                                                   noise(int(rng.integers(1000, 9000)), 30)])
                                                   for a in rng.uniform(300, 12000, 12)])
    return [
        ("bursts_in_noise", speechy, 517),
        ("bursts_in_noise_one_push", speechy, len(speechy)),
        ("fan_after_warmup_20s_cap", np.concatenate([noise(16000, 10), noise(22 * 16000, 3000)]), 4000),
        ("unfinished_utterance", np.concatenate([np.zeros(8000, np.int16), tone(16000, 20000)]), 160),
    ]


def write_protocol_vectors(path: Path) -> None:
    frames, endpoint = _frames(), _endpoint_cases()
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<III", VERSION, len(frames), len(endpoint)))
        for name, reason, wire in frames:
            f.write(name.encode("ascii").ljust(32, b"\0") + struct.pack("<iI", reason, len(wire)) + wire)
        for name, pcm, chunk in endpoint:
            ep = E.Endpointer()
            events = [e for at in range(0, len(pcm), chunk) for e in ep.push(pcm[at:at + chunk])]
            floor = ep.floor
            events += [e for e in [ep.flush()] if e is not None]
            f.write(name.encode("ascii").ljust(32, b"\0") + struct.pack("<II", len(pcm), chunk))
            f.write(pcm.astype("<i2").tobytes() + struct.pack("<I", len(events)))
            f.write(b"".join(struct.pack("<iQ", 1 if e.kind == "start" else 2, e.sample) for e in events))
            f.write(struct.pack("<d", floor))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    write_protocol_vectors(parser.parse_args().out)


if __name__ == "__main__":
    main()
