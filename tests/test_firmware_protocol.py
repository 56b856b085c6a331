"""The firmware's C framing and endpointer (eeasr_core protocol.h, endpoint.h) against eeasr.protocol and
eeasr.endpoint: the same bytes for every message, the same verdict (and words) for every frame, valid or not,
and the same endpoint events (and noise floor, bit for bit) for any chunking of the same audio."""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cobs import cobs
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from eeasr import endpoint as E
from eeasr import protocol as P
from eeasr.host import ccore

REAL = Path("/usr/share/pocketsphinx/test/data")  # Debian pocketsphinx-testdata (make apt-deps)
CORPUS = Path.home() / ".cache" / "eeasr" / "corpus"
HEADERS = ccore.CORE / "include" / "eeasr_core"
MANY = settings(max_examples=300, deadline=None)
SOME = settings(max_examples=60, deadline=None)


# --- the C header's numbers are the reference's --------------------------------------------------------------

def _defines(header: str) -> dict[str, str]:
    return dict(re.findall(r"^#define (EEASR_\w+) ([-+.\w]+)", (HEADERS / header).read_text(), re.M))


def _enum_values(header: str) -> dict[str, int]:
    return {k: int(v, 0) for k, v in re.findall(r"^\s+(EEASR_\w+) = (\w+),", (HEADERS / header).read_text(), re.M)}


def test_limits_and_codes_equal_the_reference() -> None:
    c = {k: int(v, 0) for k, v in _defines("protocol.h").items() if re.fullmatch(r"(0x)?[0-9A-Fa-f]+", v)}
    assert c["EEASR_PROTOCOL_VERSION"] == P.VERSION
    assert c["EEASR_HEADER_SIZE"] == P.HEADER.size and c["EEASR_CRC_SIZE"] == P.CRC.size
    for name in ("MAX_PAYLOAD", "MAX_FRAME", "MAX_ENCODED", "MAX_AUDIO_SAMPLES", "MAX_TOKENS", "MAX_TEXT"):
        assert c[f"EEASR_{name}"] == getattr(P, name), name
    assert c["EEASR_MAX_ENCODED"] == 49357  # docs/protocol.md
    fixed = {"HELLO_FIXED": P.Hello, "RESULT_FIXED": P.Result, "HANDOFF_FIXED": P.Handoff, "ACK_SIZE": P.Ack}
    for name, cls in fixed.items():
        assert c[f"EEASR_{name}"] == cls.LAYOUT.size, name
    enums = _enum_values("protocol.h")
    for prefix, enum in [("MSG", P.MsgType), ("AUDIO", P.AudioFlag), ("RESULT", P.ResultFlag),
                         ("MEASURE", P.Measure), ("CMD", P.Command), ("ERROR", P.ErrorCode)]:
        got = {k[len(prefix) + 7:]: v for k, v in enums.items() if k.startswith(f"EEASR_{prefix}_")}
        assert got == {m.name: m.value for m in enum}, prefix
    enum = re.search(r"typedef enum \{([^}]*)\} eeasr_reason;", (HEADERS / "protocol.h").read_text()).group(1)
    assert re.findall(r"^\s+EEASR_(\w+)", enum, re.M) == [r.name for r in ccore.Reason]


def test_endpoint_constants_equal_the_reference() -> None:
    c = _defines("endpoint.h")
    for name in ("HOP", "MIN_ENERGY", "START_HOPS", "END_HOPS", "PREROLL_HOPS", "WARMUP_HOPS", "MAX_SPEECH_HOPS"):
        assert int(c[f"EEASR_EP_{name}"]) == getattr(E, name), name
    for name in ("START_RATIO", "END_RATIO", "FLOOR_MIN", "RISE"):
        assert float(c[f"EEASR_EP_{name}"]) == getattr(E, name), name  # the same double, digit for digit


def test_crc32_is_zlibs() -> None:
    assert ccore.crc32(b"123456789") == 0xCBF43926
    rng = np.random.default_rng(1)
    for n in (0, 1, 7, 255, 4096):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert ccore.crc32(data) == zlib.crc32(data)
        assert ccore.crc32(data[n // 2:], ccore.crc32(data[:n // 2])) == zlib.crc32(data)


# --- messages with random contents ---------------------------------------------------------------------------

u8, u16, u32 = st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)
hash8 = st.binary(min_size=8, max_size=8).map(bytes.hex)
f32 = st.floats(width=32)
# text as it can exist on the wire: UTF-8 has no lone surrogates (test_protocol checks they are refused)
_chars = st.characters(blacklist_categories=("Cs",))
texts = st.text(_chars, max_size=40) | st.text(st.characters(min_codepoint=0x80, blacklist_categories=("Cs",)),
                                               max_size=12)


def _hellos(names: st.SearchStrategy[str]) -> st.SearchStrategy[P.Hello]:
    return st.builds(P.Hello, hash8, hash8, hash8, u32, u16, u8, u16, u16, st.lists(u8, min_size=1, max_size=32),
                     names)


def _handoffs(scales: st.SearchStrategy[float]) -> st.SearchStrategy[P.Handoff]:
    return st.builds(P.Handoff, u32, u16, u8, u8, hash8, scales, st.integers(-128, 127),
                     st.tuples(st.integers(0, 12), st.integers(0, 20)).flatmap(lambda s: arrays(np.int8, s)))


audios = st.builds(P.Audio, arrays(np.int16, st.integers(0, 300)), u8)
results = st.builds(P.Result, u32, u16, u8, u8, u8, u8, f32, st.lists(u16, max_size=40), texts)
errors = st.builds(P.Error, u16, texts)
acks = st.builds(P.Ack, u16, u8, u8)
commands = st.builds(P.CommandMsg, u8)
infos = st.builds(P.Info, texts.map(lambda t: json.dumps({"t": t}, ensure_ascii=False)))
# Everything the reference packs; names cut at 255 bytes and scales <= 0 make frames the decoder refuses.
messages = st.one_of(_hellos(texts | st.text(_chars, min_size=80, max_size=200)), audios, results, _handoffs(f32), errors,
                     acks, commands, infos)
# Only what the decoder accepts.
accepted = st.one_of(_hellos(texts), audios, results, _handoffs(st.floats(2.0 ** -100, 2.0 ** 100, width=32)),
                     errors, acks, commands, infos)


def _fields(msg: P.Message) -> tuple:
    """A message as comparable values: arrays by dtype, shape and bytes; floats by their float32 bits."""
    out: list = [type(msg).__name__]
    for v in vars(msg).values():
        if isinstance(v, np.ndarray):
            out.append((v.dtype.str, v.shape, v.tobytes()))
        elif isinstance(v, float):
            out.append(struct.pack("<f", v))
        else:
            out.append(v)
    return tuple(out)


def _outcome(items: list[P.Frame | P.FrameError]) -> list[tuple]:
    return [("frame", x.seq, _fields(x.msg)) if isinstance(x, P.Frame) else ("error", x.reason, x.n_bytes)
            for x in items]


@MANY
@given(messages, u16)
def test_every_message_is_byte_identical_and_decodes_the_same(msg: P.Message, seq: int) -> None:
    want = P.encode(msg, seq)
    assert ccore.encode_message(msg, seq) == want            # the C pack functions, framing and COBS
    assert ccore.encode(msg.TYPE, seq, msg.pack()) == want   # C framing of Python's payload
    assert ccore.pack_message(msg) == msg.pack()
    assert ccore.pack_frame(msg.TYPE, seq, msg.pack()) == P.pack_frame(msg, seq)
    got, ref = ccore.FrameDecoder().feed(want), P.FrameDecoder().feed(want)
    assert _outcome(got) == _outcome(ref)
    if isinstance(ref[0], P.Frame):
        assert _outcome([ccore.unpack_frame(P.pack_frame(msg, seq))]) == _outcome(ref)


@pytest.mark.parametrize("msg", [
    P.Hello("00" * 8, "11" * 8, "22" * 8, 16000, 150, 4, 144, 257, []),
    P.Hello("00" * 8, "11" * 8, "22" * 8, 16000, 150, 4, 144, 257, list(range(33))),
    P.Hello("xyz", "11" * 8, "22" * 8, 16000, 150, 4, 144, 257, [2]),
    P.Audio(np.zeros(P.MAX_AUDIO_SAMPLES + 1, np.int16)),
    P.Audio(np.zeros(4, np.float32)),
    P.Result(0, 0, 0, 1, 2, 0, 0.5, [1] * (P.MAX_TOKENS + 1)),
    P.Result(0, 0, 0, 1, 2, 0, 0.5, [], "x" * (P.MAX_TEXT + 1)),
    P.Handoff(0, 0, 0, 4, "00" * 8, 0.1, 0, np.zeros((400, 144), np.int8)),
    P.Info("x" * (P.MAX_PAYLOAD + 1)),
])
def test_messages_the_reference_refuses_c_refuses_in_the_same_words(msg: P.Message) -> None:
    with pytest.raises(P.ProtocolError) as ref:
        P.encode(msg, 0)
    with pytest.raises(P.ProtocolError) as got:
        ccore.encode_message(msg, 0)
    assert str(got.value) == str(ref.value)


def test_the_largest_messages_at_their_limits() -> None:
    limits = [
        P.Audio(np.arange(P.MAX_AUDIO_SAMPLES, dtype=np.int16), P.AudioFlag.STREAM_END),
        P.Result(1, 2, 3, 4, 5, 2, -0.0, list(range(P.MAX_TOKENS)), "é" * (P.MAX_TEXT // 2)),
        P.Handoff(1, 2, 1, 4, "ab" * 8, 1e-30, -128, np.full((1, P.MAX_PAYLOAD - 26), -1, np.int8)),  # at the limit
        P.Info("\x01" * P.MAX_PAYLOAD),  # no zero byte in the payload: the most COBS overhead
        P.Error(P.ErrorCode.INTERNAL, "ü" * P.MAX_TEXT),  # cut to 4096 bytes: whole characters
        P.Hello("00" * 8, "11" * 8, "22" * 8, 16000, 150, 4, 144, 257, list(range(32)), "x" * 300),
    ]
    for msg in limits:
        want = P.encode(msg, 77)
        assert ccore.encode_message(msg, 77) == want, type(msg).__name__
        assert _outcome(ccore.FrameDecoder().feed(want)) == _outcome(P.FrameDecoder().feed(want))
    assert len(P.encode(limits[3], 0)) <= P.MAX_ENCODED


# --- the decoder on valid, corrupted and crafted bytes ------------------------------------------------------------

@st.composite
def crafted(draw: st.DrawFn) -> bytes:
    """A frame with a correct CRC whose header or payload is off, so the checks after the CRC get exercised."""
    msg = draw(messages)
    payload = bytearray(msg.pack())
    version, mtype, n = 1, int(msg.TYPE), None
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["cut", "extend", "byte", "type", "version", "length", "utf8", "scale"]))
        if kind == "cut" and payload:
            del payload[draw(st.integers(0, len(payload) - 1)):]
        elif kind == "extend":
            payload += draw(st.binary(min_size=1, max_size=8))
        elif kind == "byte" and payload:
            payload[draw(st.integers(0, len(payload) - 1))] = draw(u8)
        elif kind == "type":
            mtype = draw(st.integers(0, 10))
        elif kind == "version":
            version = draw(st.integers(0, 3))
        elif kind == "length":
            n = draw(u16)
        elif kind == "utf8" and payload:  # bytes that open, break or end UTF-8 sequences, near the end
            at = draw(st.integers(max(0, len(payload) - 6), len(payload)))
            payload[at:at] = draw(st.binary(min_size=1, max_size=3).map(lambda b: bytes(x | 0x80 for x in b)))
        elif kind == "scale" and isinstance(msg, P.Handoff):
            payload[16:20] = struct.pack("<f", draw(st.sampled_from([0.0, -0.0, -1.0, float("inf"), float("nan")])))
    body = P.HEADER.pack(version, mtype, draw(u16), len(payload) if n is None else n) + bytes(payload)
    return cobs.encode(body + P.CRC.pack(zlib.crc32(body))) + b"\x00"


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A valid frame with bits flipped, bytes cut, dropped or inserted (delimiter included or not)."""
    enc = bytearray(P.encode(draw(messages), draw(u16)))
    kind = draw(st.sampled_from(["flip", "cut", "drop", "insert"]))
    at = draw(st.integers(0, len(enc) - 1))
    if kind == "flip":
        enc[at] ^= 1 << draw(st.integers(0, 7))
    elif kind == "cut":
        del enc[at:]
    elif kind == "drop":
        del enc[at]
    else:
        enc[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(enc)


valid = st.builds(P.encode, accepted, u16)
pieces = st.one_of(valid, damaged(), crafted(), st.binary(max_size=300), st.just(b"\x00"),
                   st.binary(max_size=40).map(lambda b: b.replace(b"\x00", b"\x01")))


@st.composite
def chunked(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]


def _feed_both(chunks: list[bytes], capacity: int = P.MAX_ENCODED) -> tuple[list, list]:
    c, py = ccore.FrameDecoder(capacity), P.FrameDecoder()
    return ([x for ch in chunks for x in c.feed(ch)], [x for ch in chunks for x in py.feed(ch)])


@MANY
@given(st.lists(pieces, min_size=1, max_size=6), st.data())
def test_c_decoder_accepts_and_rejects_exactly_what_python_does(parts: list[bytes], data: st.DataObject) -> None:
    chunks = data.draw(chunked(b"".join(parts)))
    got, ref = _feed_both(chunks)
    assert _outcome(got) == _outcome(ref)


@MANY
@given(crafted(), st.data())
def test_payload_checks_after_the_crc_match_python(frame: bytes, data: st.DataObject) -> None:
    got, ref = _feed_both(data.draw(chunked(frame)))
    assert _outcome(got) == _outcome(ref)


@MANY
@example(b"\x01" * 300, P.encode(P.CommandMsg(1), 1), P.encode(P.Info("{}"), 2))
@given(st.binary(max_size=2000), valid, valid)
def test_after_garbage_the_next_valid_frame_still_arrives(garbage: bytes, first: bytes, second: bytes) -> None:
    """Garbage costs at most the frame it runs into: the one after it always arrives."""
    got, ref = _feed_both([garbage, first, second])
    assert _outcome(got) == _outcome(ref)
    assert isinstance(got[-1], P.Frame) and P.encode(got[-1].msg, got[-1].seq) == second


@pytest.mark.parametrize("run", [P.MAX_ENCODED - 1, P.MAX_ENCODED, P.MAX_ENCODED + 1, 3 * P.MAX_ENCODED])
def test_over_long_runs_are_dropped_like_python(run: int) -> None:
    stream = b"\x00" + b"\x07" * run + b"\x00" + P.encode(P.CommandMsg(1), 5)
    for size in (1000, 4096, len(stream)):
        got, ref = _feed_both([stream[i:i + size] for i in range(0, len(stream), size)])
        assert _outcome(got) == _outcome(ref)
        assert ("longer than" in got[0].reason) == (run > P.MAX_ENCODED)
        assert isinstance(got[-1], P.Frame) and got[-1].seq == 5


def test_a_payload_over_the_limit_is_refused_like_python() -> None:
    body = P.HEADER.pack(1, P.MsgType.INFO, 0, P.MAX_PAYLOAD + 1) + b"x" * (P.MAX_PAYLOAD + 1)
    frame = cobs.encode(body + P.CRC.pack(zlib.crc32(body))) + b"\x00"
    got, ref = _feed_both([frame])
    assert _outcome(got) == _outcome(ref) and "exceeds" in got[0].reason


def _raw_frame(mtype: int, payload: bytes) -> bytes:
    body = P.HEADER.pack(1, mtype, 0, len(payload)) + payload
    return cobs.encode(body + P.CRC.pack(zlib.crc32(body))) + b"\x00"


@pytest.mark.parametrize("mtype, payload, words", [
    (P.MsgType.AUDIO, bytes(2 + 2 * P.MAX_AUDIO_SAMPLES), None),
    (P.MsgType.AUDIO, bytes(2 + 2 * (P.MAX_AUDIO_SAMPLES + 1)), "more than 4096 samples"),
    (P.MsgType.RESULT, bytes(14) + struct.pack("<H", 1024) + bytes(2048 + 2), None),
    (P.MsgType.RESULT, bytes(14) + struct.pack("<H", 1025) + bytes(2050 + 2), "truncated token list"),
    (P.MsgType.RESULT, bytes(16) + struct.pack("<H", 5) + b"abcd", "does not match its text length"),
    (P.MsgType.HELLO, bytes(35) + bytes([0, 0]), None),  # no exits: the reference accepts it
    (P.MsgType.HANDOFF, bytes(16) + struct.pack("<f", 1.0) + bytes(2) + struct.pack("<HH", 300, 0), None),
])
def test_payloads_at_their_limits_get_python_verdicts(mtype: int, payload: bytes, words: str | None) -> None:
    got, ref = _feed_both([_raw_frame(mtype, payload)])
    assert _outcome(got) == _outcome(ref)
    assert isinstance(got[0], P.Frame) if words is None else words in got[0].reason


def test_a_device_sized_receive_buffer_drops_what_it_cannot_hold() -> None:
    audio = P.encode(P.Audio(np.ones(P.MAX_AUDIO_SAMPLES, np.int16)), 1)  # the largest frame a device accepts
    big = P.encode(P.Info("x" * 20000), 2)
    out = ccore.FrameDecoder(len(audio) - 1).feed(big + audio)  # room for the largest AUDIO run, no more
    assert isinstance(out[0], P.FrameError) and out[0].reason == f"frame longer than {len(audio) - 1} bytes"
    assert out[0].n_bytes == len(big) - 1 and isinstance(out[1], P.Frame) and out[1].seq == 1


def test_c_reason_words_cover_every_reason() -> None:
    words = {ccore.reason_str(r) for r in ccore.Reason}
    assert len(words) == len(ccore.Reason) and "unknown reason" not in words
    assert ccore.reason_str(ccore.Reason.BAD_CRC) == "crc mismatch"


# --- the endpointer ----------------------------------------------------------------------------------------------

def _noise(n: int, level: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.round(rng.standard_normal(n) * level), -32768, 32767).astype(np.int16)


def _tone(n: int, level: float, hz: float = 440.0) -> np.ndarray:
    return np.round(level * np.sin(2 * np.pi * hz * np.arange(n) / 16000)).astype(np.int16)


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    sec = 16000
    silence = np.zeros(sec, np.int16)
    burst = np.concatenate([_noise(sec, 30, rng), _tone(sec // 2, 8000), _noise(sec, 30, rng)])
    return {
        "digital_silence_then_tone": np.concatenate([silence, _tone(sec, 3000), silence]),
        "noise_bursts": np.concatenate([burst, burst * 2 // 3, _noise(2 * sec, 30, rng), burst]),
        "fan_from_the_start": _noise(5 * sec, 2000, rng),  # learned in the warm-up: never speech
        "fan_starts_later": np.concatenate([_noise(sec, 20, rng), _noise(25 * sec, 2000, rng)]),  # 20 s cap
        "near_the_thresholds": np.concatenate([_noise(sec, 10, rng)] + [
            _noise(3000, 10 * 10 ** (db / 20), rng) for db in rng.uniform(0, 20, 60)]),
        "slow_ramp": (_noise(20 * sec, 1, rng) * np.linspace(1, 3000, 20 * sec)).astype(np.int16),
        "full_scale": np.concatenate([silence, np.full(sec, -32768, np.int16), silence]),
        "short": _tone(1000, 5000),
    }


def _real_clips() -> dict[str, np.ndarray]:
    """pocketsphinx-testdata speech with noise lead-ins and tails at a few levels."""
    rng = np.random.default_rng(9)
    clips = [np.fromfile(REAL / "goforward.raw", "<i2"), np.fromfile(REAL / "tidigits" / "dhd.2934z.raw", "<i2")]
    clips += [sf.read(p, dtype="int16")[0] for p in [*sorted(REAL.glob("librivox/*.wav"))[:3],
                                                     *sorted(REAL.glob("cards/*.wav"))[:2]]]
    out = {}
    for i, pcm in enumerate(clips):
        level = [3, 30, 300][i % 3]
        lead, tail = _noise(int(rng.integers(8000, 24000)), level, rng), _noise(12000, level, rng)
        noisy = np.clip(pcm.astype(np.int32) + _noise(len(pcm), level, rng), -32768, 32767).astype(np.int16)
        out[f"clip{i}_noise{level}"] = np.concatenate([lead, noisy, tail, noisy[: len(noisy) // 2]])
    return out


def _run(ep: E.Endpointer | ccore.Endpointer, chunks: list[np.ndarray]) -> tuple[list, list[float]]:
    events, floors = [], []
    for ch in chunks:
        events += ep.push(ch)
        floors.append(ep.floor)
    events.append(ep.flush())
    return events, floors


def _chunks(pcm: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    return np.split(pcm, np.sort(rng.integers(0, len(pcm) + 1, int(rng.integers(0, 60)))))


def _check_same_events(pcm: np.ndarray, seed: int) -> list:
    rng = np.random.default_rng(seed)
    want, _ = _run(E.Endpointer(), [pcm])
    for chunks in ([pcm], _chunks(pcm, rng), _chunks(pcm, rng), [pcm[i:i + 160] for i in range(0, len(pcm), 160)],
                   [pcm[i:i + 1601] for i in range(0, len(pcm), 1601)]):
        got, c_floors = _run(ccore.Endpointer(), chunks)
        ref, py_floors = _run(E.Endpointer(), chunks)
        assert got == ref == want
        assert c_floors == py_floors  # bit for bit, after every chunk
    return want


@pytest.mark.parametrize("name", sorted(_signals()))
def test_endpointer_equals_python_on_generated_signals(name: str) -> None:
    events = _check_same_events(_signals()[name], seed=len(name))
    if name == "fan_from_the_start":
        assert events == [None]
    if name == "fan_starts_later":  # the 20 s cap ends the utterance, and the fan does not restart one
        assert [e.kind for e in events if e] == ["start", "end"]
        assert events[1].sample - events[0].sample == (E.MAX_SPEECH_HOPS + E.START_HOPS + E.PREROLL_HOPS) * 160


@pytest.mark.skipif(not REAL.exists(), reason="Debian pocketsphinx-testdata not installed (make apt-deps)")
def test_endpointer_equals_python_on_recorded_speech_in_noise() -> None:
    for i, pcm in enumerate(_real_clips().values()):
        events = _check_same_events(pcm, seed=i)
        assert any(e is not None and e.kind == "start" for e in events)


def _corpus_test_clips(n: int) -> list[Path]:
    manifest = CORPUS / "manifest.jsonl"
    if not manifest.exists():
        return []
    paths = []
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        if row.get("split") == "test":
            paths.append(CORPUS / row["path"])
        if len(paths) == n:
            break
    return [p for p in paths if p.exists()]


@pytest.mark.skipif(not _corpus_test_clips(1), reason="no synthesized corpus in ~/.cache/eeasr/corpus")
def test_endpointer_equals_python_on_corpus_test_clips() -> None:
    rng = np.random.default_rng(2)
    clips = [sf.read(p, dtype="int16")[0] for p in _corpus_test_clips(12)]
    stream = np.concatenate([np.concatenate([_noise(int(rng.integers(4000, 20000)), 20, rng), c]) for c in clips])
    _check_same_events(stream, seed=5)


energies = st.one_of(st.integers(0, 400), st.integers(500_000, 600_000), st.integers(0, 160 * 32768 ** 2),
                     st.integers(2_000, 50_000))


@MANY
@given(st.lists(energies, max_size=400), st.booleans())
def test_endpointer_step_by_step_floor_and_events_equal_python(hops: list[int], flush: bool) -> None:
    c, py = ccore.Endpointer(), E.Endpointer()
    for e in hops:
        assert c.step(e) == py.step(e)
        assert c.floor == py.floor and c.in_speech == py.in_speech
    if flush:
        assert c.flush() == py.flush()


@SOME
@given(arrays(np.int16, st.integers(0, 20000), elements=st.integers(-32768, 32767)), st.data())
def test_endpointer_random_audio_any_chunking(pcm: np.ndarray, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(pcm)), max_size=20)))
    chunks = np.split(pcm, cuts)
    assert _run(ccore.Endpointer(), chunks) == _run(E.Endpointer(), chunks)


def test_endpointer_takes_what_python_takes() -> None:
    c = ccore.Endpointer()
    assert c.push([]) == [] and c.push(np.zeros(10, np.float64)) == [] and c.flush() is None
    with pytest.raises(ValueError, match="1-D"):
        c.push(np.zeros((2, 160), np.int16))
