"""Sentence sources for corpus synthesis: Debian text packages plus generated numbers, dates and commands.

Each source yields raw (un-normalized) sentences; synthesis normalizes and chunks them. Extracted text is cached
under the cache directory so a rebuild does not re-run diatheke. Licences of each source are listed in
`SOURCE_LICENCES` and copied into every corpus's `corpus.json` (and the model card).
"""

from __future__ import annotations

import gzip
import hashlib
import random
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from eeasr.text import split_sentences

FORTUNE_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
JARGON_FILE = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
BIBLE_MODULE = "engWEB2015eb"

SOURCE_LICENCES = {
    "fortunes": "Debian fortunes-min/fortunes (BSD-4-Clause and various free licences; see its copyright file)",
    "wordnet": "WordNet 3.0 licence (Princeton; free use with attribution), Debian wordnet-base",
    "bible": "World English Bible (public domain), Debian sword-text-web via diatheke",
    "jargon": "The Jargon File 4.4.7 (public domain), Debian jargon-text",
    "generated": "eeasr templates (Apache-2.0)",
}

# Debian packages that provide the sources above (installed by `make data`).
DEBIAN_PACKAGES = ("fortunes", "fortune-mod", "wordnet-base", "diatheke", "sword-text-web", "jargon-text")

_MIN_WORDS = 3
_MAX_CHARS = 400
_JUNK = re.compile(r"https?://|www\.|[{}<>|\\_=^~]|\s{3,}|\t|[A-Z]{6,}")


def _clean(sentence: str) -> str | None:
    """Drop sentences a TTS engine would read badly (code, ASCII art, URLs, shouting)."""
    s = " ".join(sentence.split())
    if len(s) > _MAX_CHARS or len(s.split()) < _MIN_WORDS or _JUNK.search(s):
        return None
    letters = sum(c.isalpha() for c in s)
    if letters < 0.6 * len(s):
        return None
    return s


def fortunes() -> Iterator[str]:
    """Fortune cookies (the non-offensive set), split into sentences."""
    for f in sorted(FORTUNE_DIR.iterdir()):
        if f.suffix or not f.is_file():
            continue  # .dat indexes and .u8 links
        text = f.read_text(encoding="utf-8", errors="ignore")
        for cookie in text.split("\n%\n"):
            # Attribution lines ("-- Mark Twain") and indented verse are not prose.
            body = "\n".join(line for line in cookie.splitlines() if not line.strip().startswith("--"))
            yield from split_sentences(" ".join(body.split()))


def wordnet_examples() -> Iterator[str]:
    """The quoted example sentences in WordNet's glosses."""
    for part in ("noun", "verb", "adj", "adv"):
        path = WORDNET_DIR / f"data.{part}"
        for line in path.read_text(encoding="utf-8", errors="ignore").splitlines():
            if line.startswith("  "):
                continue  # licence header
            yield from re.findall(r'"([^"]{10,})"', line)


def bible() -> Iterator[str]:
    """The World English Bible, verse text without markup."""
    out = subprocess.run(
        ["diatheke", "-b", BIBLE_MODULE, "-k", "Gen 1:1-Rev 22:21"],
        capture_output=True, text=True, check=True,
    ).stdout
    # The plain renderer glues adjacent <w> elements ("Godcreated"), so strip the OSIS markup ourselves.
    out = out.replace("</w><w", "</w> <w")
    for line in out.splitlines():
        m = re.match(r"^[1-3 ]*[A-Za-z ]+ \d+:\d+: (.*)$", line)
        if m:
            verse = re.sub(r"<[^>]+>", "", m.group(1))
            yield from split_sentences(" ".join(verse.split()))


def jargon() -> Iterator[str]:
    """Definition paragraphs of the Jargon File."""
    with gzip.open(JARGON_FILE, "rt", encoding="utf-8", errors="ignore") as f:
        para: list[str] = []
        for line in f:
            if line.strip():
                para.append(line.strip())
                continue
            text = " ".join(para)
            para = []
            if text and not text.startswith(":") and "{" not in text:
                yield from split_sentences(text)


_ROOMS = ["kitchen", "living room", "bedroom", "bathroom", "garage", "office", "hallway", "garden"]
_NAMES = ["Alice", "Bob", "Maria", "John", "Priya", "Chen", "Fatima", "Oliver", "Sofia", "Lucas"]
_CITIES = ["Paris", "Boston", "Madrid", "Tokyo", "Berlin", "Chicago", "Lisbon", "Denver", "Dublin", "Oslo"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_ITEMS = ["milk", "bread", "eggs", "coffee", "apples", "rice", "batteries", "tea", "butter", "cheese"]
_GENRES = ["jazz", "rock", "classical", "folk", "blues", "pop", "reggae", "country"]
_DEVICES = ["lights", "fan", "heater", "radio", "television", "lamp", "speaker", "air conditioner"]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _generated_one(rng: random.Random) -> str:
    n, m = rng.randint(0, 100), rng.randint(1, 60)
    time = f"{rng.randint(1, 12)}:{rng.choice(['00', '15', '30', '45', f'{rng.randint(0, 59):02d}'])}"
    templates = [
        lambda: f"Turn {rng.choice(['on', 'off'])} the {rng.choice(_ROOMS)} {rng.choice(_DEVICES)}.",
        lambda: f"Set a timer for {m} minutes.",
        lambda: f"Set the temperature to {rng.randint(15, 28)} degrees.",
        lambda: f"Remind me at {time} to buy {rng.choice(_ITEMS)}.",
        lambda: f"Add {rng.choice(_ITEMS)} to the shopping list.",
        lambda: f"What is the weather in {rng.choice(_CITIES)} on {rng.choice(_DAYS)}?",
        lambda: f"Play some {rng.choice(_GENRES)} music.",
        lambda: f"Call {rng.choice(_NAMES)} at {time}.",
        lambda: rng.choice(["Stop.", "Pause.", "Volume up.", "Volume down.", "Next track.", "Cancel that.",
                            "Yes please.", "No thanks.", "What time is it?", "Good morning."]),
        lambda: f"{n} plus {m} is {n + m}.",
        lambda: f"The meeting is on {rng.choice(_MONTHS)} {_ordinal(rng.randint(1, 28))} at {time}.",
        lambda: f"She was born on {rng.choice(_MONTHS)} {rng.randint(1, 28)}, {rng.randint(1900, 2025)}.",
        lambda: f"The ticket costs ${rng.randint(1, 300)}.{rng.randint(0, 99):02d}.",
        lambda: f"About {rng.randint(1, 99)}% of the {rng.randint(2, 9000)} votes were counted.",
        lambda: f"Room {rng.randint(100, 999)} is on the {_ordinal(rng.randint(1, 30))} floor.",
        lambda: f"My code is {' '.join(str(rng.randint(0, 9)) for _ in range(4))}.",
        lambda: f"In {rng.randint(1200, 2030)} the population was {rng.randint(1000, 9_000_000):,}.",
        lambda: f"The train leaves at {time} from platform {rng.randint(1, 20)}.",
        lambda: f"Set an alarm for {time} on {rng.choice(_DAYS)}.",
        lambda: f"It measured {rng.randint(0, 99)}.{rng.randint(1, 9)} meters across.",
    ]
    return rng.choice(templates)()


def generated(count: int, seed: int) -> Iterator[str]:
    """Numbers, dates, times, prices and short voice-assistant commands from templates."""
    rng = random.Random(seed)
    for _ in range(count):
        yield _generated_one(rng)


_DEBIAN_SOURCES = {"fortunes": fortunes, "wordnet": wordnet_examples, "bible": bible, "jargon": jargon}


def load_source(name: str, cache_dir: Path) -> list[str]:
    """Clean sentences of one Debian source, cached as a text file (one sentence per line)."""
    cache = cache_dir / "text" / f"{name}.txt"
    if cache.exists():
        return cache.read_text(encoding="utf-8").splitlines()
    seen: set[str] = set()
    sentences = []
    for raw in _DEBIAN_SOURCES[name]():
        s = _clean(raw)
        if s and s not in seen:
            seen.add(s)
            sentences.append(s)
    if not sentences:
        raise RuntimeError(f"text source {name!r} gave no sentences: is its Debian package installed? "
                           f"(make data installs {' '.join(DEBIAN_PACKAGES)})")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    tmp.replace(cache)
    return sentences


def text_split(sentence: str) -> str:
    """Assign a sentence to train/dev/test by a hash of its text, so no text is shared across splits."""
    h = int.from_bytes(hashlib.sha1(sentence.encode()).digest()[:4], "big") % 100
    return "test" if h < 5 else "dev" if h < 10 else "train"


DEBIAN_SOURCE_NAMES = tuple(_DEBIAN_SOURCES)
