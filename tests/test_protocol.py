"""The wire protocol (docs/protocol.md): round trips, and garbage that never crashes the decoder."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eeasr import protocol as p

HASH = "0cc8dc2c7891d4ff"


def _messages() -> list[p.Message]:
    return [
        p.Hello(HASH, "00112233aabbccdd", "5bdbfeb587617ab3", 16000, 600, 4, 144, 257, [2, 4], "eeasr-sim 1"),
        p.Audio(np.array([-32768, -1, 0, 1, 32767], dtype=np.int16), p.AudioFlag.UTT_START),
        p.Result(7, 1, p.ResultFlag.FINAL | p.ResultFlag.SERVER, 6, 12, p.Measure.FRAME_ENTROPY, 0.25,
                 [1, 255, 256], "héllo world"),
        p.Handoff(7, 1, p.ResultFlag.FINAL, 4, HASH, 0.0625, -3,
                  np.arange(150 * 144, dtype=np.int64).astype(np.int8).reshape(150, 144)),
        p.Error(p.ErrorCode.BAD_FRAME, "crc mismatch"),
        p.Ack(65535, p.MsgType.AUDIO, 0),
        p.CommandMsg(p.Command.SELF_TEST),
        p.Info('{"ok": true}'),
    ]


def _same(a: p.Message, b: p.Message) -> bool:
    if type(a) is not type(b):
        return False
    for k, va in vars(a).items():
        vb = getattr(b, k)
        if isinstance(va, np.ndarray):
            if not np.array_equal(va, vb) or va.dtype != vb.dtype:
                return False
        elif isinstance(va, float):
            if np.float32(va) != np.float32(vb):
                return False
        elif va != vb:
            return False
    return True


def test_every_message_round_trips_through_a_stream() -> None:
    msgs = _messages()
    stream = b"".join(p.encode(m, i) for i, m in enumerate(msgs))
    out = p.FrameDecoder().feed(stream)
    assert [f.seq for f in out] == list(range(len(msgs)))
    assert all(_same(m, f.msg) for m, f in zip(msgs, out))


def test_byte_at_a_time_equals_all_at_once() -> None:
    stream = b"".join(p.encode(m, i) for i, m in enumerate(_messages()))
    dec = p.FrameDecoder()
    out = [x for b in stream for x in dec.feed(bytes([b]))]
    assert len(out) == len(_messages()) and all(isinstance(x, p.Frame) for x in out)


def test_frame_layout_is_the_documented_one() -> None:
    raw = p.pack_frame(p.Ack(0x1234, 2, 0), seq=0xBEEF)
    assert raw[:6] == bytes([1, 6, 0xEF, 0xBE, 4, 0])
    assert raw[6:10] == bytes([0x34, 0x12, 2, 0])
    assert int.from_bytes(raw[10:], "little") == zlib.crc32(raw[:10])
    enc = p.encode(p.Ack(0x1234, 2, 0), 0xBEEF)
    assert enc.endswith(b"\x00") and b"\x00" not in enc[:-1]


@pytest.mark.parametrize("msg, reason", [
    (p.Audio(np.zeros(p.MAX_AUDIO_SAMPLES + 1, np.int16)), "exceed"),
    (p.Audio(np.zeros(4, np.float32)), "int16"),
    (p.Handoff(0, 0, 0, 4, HASH, 0.1, 0, np.zeros((400, 144), np.int8)), "payload limit"),
    (p.Hello("xyz", HASH, HASH, 16000, 600, 4, 144, 257, [2]), "hex"),
    (p.Result(0, 0, 0, 1, 2, 0, 0.5, [], "\ud800"), "UTF-8"),
    (p.Info("\udfff"), "UTF-8"),
])
def test_bad_messages_are_refused_with_a_reason(msg: p.Message, reason: str) -> None:
    with pytest.raises(p.ProtocolError, match=reason):
        p.encode(msg, 0)


def test_rejections_name_the_reason() -> None:
    good = p.pack_frame(p.CommandMsg(1), 0)
    cases = {
        "crc mismatch": good[:-1] + bytes([good[-1] ^ 1]),
        "version": bytes([2]) + good[1:-4] + zlib.crc32(bytes([2]) + good[1:-4]).to_bytes(4, "little"),
        "shorter than header": good[:5],
        "does not match its header": good[:6] + b"\x01" + good[6:],
    }
    unknown = bytearray(good[:-4])
    unknown[1] = 0x7F
    cases["unknown message type"] = bytes(unknown) + zlib.crc32(bytes(unknown)).to_bytes(4, "little")
    for reason, raw in cases.items():
        (err,) = p.FrameDecoder().feed(p.cobs.encode(raw) + b"\x00")
        assert isinstance(err, p.FrameError) and reason in err.reason, (reason, err)


def test_truncated_payloads_are_rejected_not_misread() -> None:
    for m in _messages():
        body = m.pack()
        for cut in {1, len(body) // 2, len(body) - 1} - {0}:
            if cut >= len(body):
                continue
            hdr = p.HEADER.pack(p.VERSION, m.TYPE, 0, cut) + body[:cut]
            raw = hdr + zlib.crc32(hdr).to_bytes(4, "little")
            out = p.FrameDecoder().feed(p.cobs.encode(raw) + b"\x00")
            if isinstance(m, (p.Info, p.Error, p.Audio)) and isinstance(out[0], p.Frame):
                continue          # open-ended payloads: a shorter one is still well formed
            assert isinstance(out[0], p.FrameError), (type(m).__name__, cut)


def test_overlong_run_is_dropped_without_buffering_it() -> None:
    dec = p.FrameDecoder()
    out = []
    for _ in range(40):
        out += dec.feed(b"\x01" * 5000)
    assert len(dec._buf) <= p.MAX_ENCODED
    out += dec.feed(b"\x00" + p.encode(p.CommandMsg(1), 5))
    assert isinstance(out[0], p.FrameError) and "longer than" in out[0].reason
    assert isinstance(out[1], p.Frame) and out[1].seq == 5


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_random_bytes_never_crash_and_the_next_frame_still_arrives(garbage: bytes) -> None:
    dec = p.FrameDecoder()
    out = dec.feed(garbage)
    assert all(isinstance(x, (p.Frame, p.FrameError)) for x in out)
    assert all(x.reason for x in out if isinstance(x, p.FrameError))
    tail = dec.feed(b"\x00" + p.encode(p.Info("{}"), 42))
    assert isinstance(tail[-1], p.Frame) and tail[-1].seq == 42 and tail[-1].msg == p.Info("{}")


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_messages()) - 1), st.data())
def test_corrupted_or_truncated_frames_are_rejected(i: int, data: st.DataObject) -> None:
    enc = p.encode(_messages()[i], 3)[:-1]
    kind = data.draw(st.sampled_from(["flip", "cut"]))
    if kind == "flip":
        pos = data.draw(st.integers(0, len(enc) - 1))
        bit = data.draw(st.integers(0, 7))
        bad = bytearray(enc)
        bad[pos] ^= 1 << bit
        bad = bytes(bad)          # a flip to 0x00 is a delimiter: two broken pieces, both rejected
    else:
        bad = enc[:data.draw(st.integers(0, len(enc) - 1))]
    out = p.FrameDecoder().feed(bad + b"\x00" + p.encode(p.CommandMsg(2), 9))
    # CRC-32 catches every single-bit error; a cut frame fails its length check or its COBS decoding
    assert all(isinstance(x, p.FrameError) for x in out[:-1])
    assert isinstance(out[-1], p.Frame) and out[-1].seq == 9
