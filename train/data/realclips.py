"""Real recorded speech for a sanity check: the transcribed clips of Debian's pocketsphinx-testdata.

LibriVox read speech (5 clips), spoken card names (5), "go forward ten meters" and one TIDIGITS digit string:
12 clips, written as 16 kHz FLAC with an eeasr manifest (split "test", source "pocketsphinx-testdata").
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from eeasr.audio import load_audio, write_audio
from eeasr.manifest import Utterance, file_sha256, write_manifest
from eeasr.text import normalize_text

DATA = Path("/usr/share/pocketsphinx/test/data")
DEBIAN_PACKAGE = "pocketsphinx-testdata"
# Raw clips (16 kHz int16) whose transcripts the package states in its tests and file names.
_RAW = {"goforward.raw": "go forward ten meters", "tidigits/dhd.2934z.raw": "two nine three four zero"}


def _transcriptions(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^(?:<s>)?\s*(.*?)\s*(?:</s>)?\s*\((\S+)\)\s*$", line)
        if m:
            out[m.group(2)] = m.group(1)
    return out


def build_realclips(out: Path, data: Path = DATA) -> Path:
    """Write the clips and manifest.jsonl under `out`; returns the manifest path."""
    if not data.exists():
        raise FileNotFoundError(f"{data} not found: install the Debian package {DEBIAN_PACKAGE} (make apt-deps)")
    clips: list[tuple[str, np.ndarray, str, str]] = []
    for sub, speaker in (("librivox", "librivox-reader"), ("cards", "cards-speaker")):
        trans = _transcriptions(data / sub / ("transcription" if sub == "librivox" else "cards.transcription"))
        for cid, text in sorted(trans.items()):
            clips.append((f"{sub}-{cid}", load_audio(data / sub / f"{cid}.wav"), text, speaker))
    for rel, text in _RAW.items():
        pcm = np.fromfile(data / rel, dtype="<i2")
        clips.append((Path(rel).stem.replace(".", "-"), pcm, text, Path(rel).stem))
    utts = []
    for cid, pcm, text, speaker in clips:
        path = out / "audio" / f"{cid}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_audio(path, pcm)
        utts.append(Utterance(id=cid, path=path, text=normalize_text(text), duration=len(pcm) / 16000,
                              speaker=speaker, source="pocketsphinx-testdata", split="test",
                              sha256=file_sha256(path)))
    write_manifest(out / "manifest.jsonl", utts)
    return out / "manifest.jsonl"


def pocketsphinx_transcribe(pcm: np.ndarray) -> str:
    """pocketsphinx 5.1.1 with its bundled US English model: the baseline users know."""
    decoder = _decoder()
    decoder.start_utt()
    decoder.process_raw(pcm.astype("<i2").tobytes(), full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return normalize_text(hyp.hypstr) if hyp is not None else ""


_DECODER = None


def _decoder():
    global _DECODER
    if _DECODER is None:
        from pocketsphinx import Decoder

        _DECODER = Decoder(samprate=16000, logfn="/dev/null")
    return _DECODER
