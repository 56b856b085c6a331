"""The TTS voice catalogue, which voices each split gets, and how each engine is driven.

Splits hold out whole voices (docs/decisions/0001-corpus-splits.md):
- espeak-ng: a voice is accent + variant. Test gets every voice of accent en-029 and of variants f4, m6, paul,
  steph; dev every voice of accent en-gb-x-gbcwmd and of variants f3, m5, ed, linda; train the rest.
- flite: train awb and kal16, dev rms, test slt.
- festival: train the diphone voices kal and ked; the HTS family (cmu_us_slt_arctic_hts) never trains and is
  shared by dev and test (different sentences), so both measure an engine family the model has never heard.
Engines are fed normalized text (eeasr.text), so the transcript is exactly what is spoken.
"""

from __future__ import annotations

import io
import random
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000

ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029")
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3", "klatt4",
    "adam", "Andy", "Annie", "benjamin", "david", "ed", "edward", "grandma", "grandpa", "john", "linda", "max",
    "Michael", "paul", "quincy", "rob", "robert", "steph", "travis", "victor",
)
_ESPEAK_HELDOUT = {
    "test": ({"en-029"}, {"f4", "m6", "paul", "steph"}),
    "dev": ({"en-gb-x-gbcwmd"}, {"f3", "m5", "ed", "linda"}),
}
_FLITE = {"awb": "train", "kal16": "train", "rms": "dev", "slt": "test"}
_FESTIVAL_DIPHONE = {"kal_diphone": "train", "ked_diphone": "train"}
HELDOUT_FAMILY = "festival-hts"

# Share of each split's speech per family (voices within a family share it equally).
FAMILY_WEIGHTS = {
    "train": {"espeak-ng": 0.45, "flite": 0.30, "festival-diphone": 0.25},
    "dev": {"espeak-ng": 0.4, "flite": 0.3, "festival-hts": 0.3},
    "test": {"espeak-ng": 0.4, "flite": 0.3, "festival-hts": 0.3},
}

DEBIAN_PACKAGES = ("espeak-ng", "flite", "festival", "festvox-kallpc16k", "festvox-kdlpc16k", "festvox-us-slt-hts")


@dataclass(frozen=True)
class Voice:
    id: str          # unique, used in paths and manifests
    engine: str      # espeak-ng | flite | festival
    family: str      # espeak-ng | flite | festival-diphone | festival-hts
    name: str        # the engine's own voice name
    speaker: str     # the recorded person behind it (kal16 and kal_diphone are the same speaker)
    split: str
    heldout: str | None  # None for train; "voice" or "family": why it is out of training


def _espeak_split(accent: str, variant: str) -> str:
    for split in ("test", "dev"):
        accents, variants = _ESPEAK_HELDOUT[split]
        if accent in accents or variant in variants:
            return split
    return "train"


def catalogue() -> list[Voice]:
    """Every voice with its split, in a fixed order."""
    voices = []
    for accent in ESPEAK_ACCENTS:
        for variant in ESPEAK_VARIANTS:
            split = _espeak_split(accent, variant)
            voices.append(Voice(f"espeak-{accent}+{variant}", "espeak-ng", "espeak-ng", f"{accent}+{variant}",
                                f"espeak-{accent}+{variant}", split, None if split == "train" else "voice"))
    for name, split in _FLITE.items():
        voices.append(Voice(f"flite-{name}", "flite", "flite", name, name.removesuffix("16"), split,
                            None if split == "train" else "voice"))
    for name, split in _FESTIVAL_DIPHONE.items():
        voices.append(Voice(f"festival-{name}", "festival", "festival-diphone", name, name.split("_")[0], split,
                            None if split == "train" else "voice"))
    for split in ("dev", "test"):
        voices.append(Voice(f"festival-slt-hts-{split}", "festival", HELDOUT_FAMILY, "cmu_us_slt_arctic_hts",
                            "slt", split, "family"))
    return voices


def sample_settings(voice: Voice, rng: random.Random) -> dict[str, float | int]:
    """Per-utterance prosody, drawn from the seeded generator so a seed fixes everything."""
    if voice.engine == "espeak-ng":
        return {"wpm": rng.randint(135, 195), "pitch": rng.randint(20, 80), "gap": rng.choice([0, 0, 1, 2])}
    return {"stretch": round(rng.uniform(0.85, 1.2), 3)}


def _to_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    audio = audio.astype(np.float32)
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    return audio if rate == SAMPLE_RATE else soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ")


def _espeak(voice: Voice, text: str, s: dict) -> np.ndarray:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice.name, "-s", str(s["wpm"]), "-p", str(s["pitch"]), "-g", str(s["gap"]),
         "--stdout", text], capture_output=True, check=True).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return _to_16k(audio, rate)


def _flite(voice: Voice, text: str, s: dict, tmp: Path) -> np.ndarray:
    out = tmp / "flite.wav"
    subprocess.run(["flite", "-voice", voice.name, "--setf", f"duration_stretch={s['stretch']}", "-t", text,
                    "-o", str(out)], capture_output=True, check=True)
    audio, rate = sf.read(out, dtype="float32")
    return _to_16k(audio, rate)


def _festival_batch(voice: Voice, texts: list[str], settings: list[dict], tmp: Path) -> list[np.ndarray]:
    """One festival process per batch: its start-up costs more than a sentence."""
    lines = [f"(voice_{voice.name})"]
    paths = []
    for i, (text, s) in enumerate(zip(texts, settings)):
        path = tmp / f"fest{i}.wav"
        paths.append(path)
        # Normalized text holds only a-z, apostrophes and spaces, so it is safe inside a Scheme string.
        lines.append(f"(Parameter.set 'Duration_Stretch {s['stretch']})")
        lines.append(f'(utt.save.wave (utt.synth (eval (list \'Utterance \'Text "{text}"))) "{path}" \'riff)')
    script = tmp / "batch.scm"
    script.write_text("\n".join(lines) + "\n")
    subprocess.run(["festival", "--batch", str(script)], capture_output=True, check=True)
    out = []
    for path in paths:
        audio, rate = sf.read(path, dtype="float32")
        out.append(_to_16k(audio, rate))
    return out


def synthesize(voice: Voice, texts: list[str], settings: list[dict]) -> list[np.ndarray]:
    """Float32 16 kHz mono audio for each text, spoken by `voice` with per-text settings."""
    with tempfile.TemporaryDirectory(prefix="eeasr-tts-") as d:
        tmp = Path(d)
        if voice.engine == "festival":
            return _festival_batch(voice, texts, settings, tmp)
        if voice.engine == "flite":
            return [_flite(voice, t, s, tmp) for t, s in zip(texts, settings)]
        return [_espeak(voice, t, s) for t, s in zip(texts, settings)]


def check_voices(voices: list[Voice]) -> None:
    """Fail before a build if a voice is missing: espeak-ng and flite silently fall back to a default voice."""
    missing = []
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    data = Path(version.split("Data at:")[-1].strip()) if "Data at:" in version else None
    accents = subprocess.run(["espeak-ng", "--voices=en"], capture_output=True, text=True).stdout.split()
    flite = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split()
    for v in voices:
        if v.engine == "espeak-ng":
            accent, variant = v.name.split("+")
            if accent not in accents or data is None or not (data / "voices" / "!v" / variant).exists():
                missing.append(v.id)
        elif v.engine == "flite" and v.name not in flite:
            missing.append(v.id)
    for name in sorted({v.name for v in voices if v.engine == "festival"}):
        with tempfile.NamedTemporaryFile("w", suffix=".scm") as f:
            f.write(f"(voice_{name})\n")
            f.flush()
            if subprocess.run(["festival", "--batch", f.name], capture_output=True).returncode != 0:
                missing += [v.id for v in voices if v.name == name]
    if missing:
        raise RuntimeError(f"TTS voices not installed: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
                           f" (install the Debian packages {' '.join(DEBIAN_PACKAGES)}; `make apt-deps` does)")
