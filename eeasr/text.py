"""The one text normalization of the toolchain.

Data synthesis feeds `normalize_text` output to the TTS engines, training encodes it and scoring
compares it, so a transcript is always exactly what was spoken. The output alphabet is a-z, the
apostrophe (only between letters: don't, o'clock) and single spaces; numbers, symbols and common
abbreviations are spelled out the way an American reader would say them.

Rules run in a fixed order on the case-preserved text (months and "St." need capitals), the most
specific first: a pattern that reads "3/14/2015" as a date must run before the one that reads
"3/4" as a fraction, which must run before plain numbers. Every rule needs a digit, a symbol, a
dot or a capital letter, none of which survive into the output (the one exception, "vs" ->
"versus", yields a word no rule touches), so normalize_text(normalize_text(x)) == normalize_text(x).

Decisions where speech is ambiguous: a bare 4-digit number in 1100-2099 is read as a year ("1999
was", "the 1984 Olympics") unless a plural noun follows ("1640 votes" -> "one thousand six hundred
forty votes"), and 1000-2099 after "in", "since", "by", ... is always a year; n-m between digits
is a range ("five to ten"); a/b/c dates are US month/day unless only day/month is valid; clock and
era suffixes are spelled as letters ("a m", "b c"); no "and" inside numbers ("one hundred five").
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from num2words import num2words

# --------------------------------------------------------------------------------------------
# Unicode folding

_VULGAR_FRACTIONS = [chr(c) for c in (*range(0x00BC, 0x00BF), *range(0x2150, 0x215F))]
_UNICODE_MAP = str.maketrans(
    {
        **{c: "'" for c in "\u2018\u2019\u201a\u201b\u2032\u02bc"},
        **{c: '"' for c in "\u201c\u201d\u201e\u2033\u00ab\u00bb"},
        **{c: "-" for c in "\u2010\u2011\u2012\u2013\u2212"},
        **{c: " - " for c in "\u2014\u2015"},
        # NFKD turns "2½" into "21⁄2"; the space keeps the whole part apart.
        **{c: " " + unicodedata.normalize("NFKD", c).replace("\u2044", "/") for c in _VULGAR_FRACTIONS},
        "\u2044": "/",
        "\u00b0": " degrees ",
        "\u00d7": " times ",
        # Letters NFKD does not decompose.
        "\u00df": "ss", "\u00e6": "ae", "\u00c6": "AE", "\u0153": "oe", "\u0152": "OE",
        "\u00f8": "o", "\u00d8": "O", "\u0142": "l", "\u0141": "L", "\u0111": "d", "\u0110": "D",
        "\u00fe": "th", "\u00de": "Th", "\u00f0": "d", "\u00d0": "D",
    }
)
_CURRENCY_SYMBOLS = "$\u00a3\u20ac"


def _fold(s: str) -> str:
    """NFKD-fold to ASCII (marks and other non-ASCII dropped), keeping the currency symbols."""
    if s.isascii():
        return s
    s = unicodedata.normalize("NFKD", s.translate(_UNICODE_MAP))
    return "".join(c for c in s if c.isascii() or c in _CURRENCY_SYMBOLS)


# --------------------------------------------------------------------------------------------
# Number words

_DIGIT_WORDS = "zero one two three four five six seven eight nine".split()


@lru_cache(maxsize=1 << 16)
def _n2w(n: int, to: str = "cardinal") -> str:
    # num2words is British ("one hundred and five", "forty-two"); drop "and", hyphens, commas.
    words = num2words(n, lang="en", to=to).replace("-", " ").replace(",", " ").split()
    return " ".join(w for w in words if w != "and")


def _digits(s: str) -> str:
    return " ".join(_DIGIT_WORDS[int(c)] for c in s)


def _cardinal(s: str) -> str:
    """Digits (commas allowed) to words; leading zeros and very long strings are read digit by digit."""
    s = s.replace(",", "")
    if (len(s) > 1 and s[0] == "0") or len(s) > 15:
        return _digits(s)
    return _n2w(int(s))


def _decimal(s: str) -> str:
    whole, _, frac = s.replace(",", "").partition(".")
    head = _cardinal(whole) + " " if whole else ""
    return f"{head}point {_digits(frac)}" if frac else _cardinal(whole)


def _year(s: str) -> str:
    return _n2w(int(s), "year")


def _ordinal(s: str) -> str:
    s = s.replace(",", "")
    return _n2w(int(s), "ordinal") if len(s) <= 15 else _digits(s)


def _two_digits(s: str) -> str:
    return f"oh {_DIGIT_WORDS[int(s[1])]}" if s[0] == "0" else _cardinal(s)


def _plural(words: str) -> str:
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


# --------------------------------------------------------------------------------------------
# Rules

# Spoken forms of abbreviations; split_sentences never splits after these (nor after St.).
_ABBREVIATIONS = {
    "mr": "mister", "mrs": "missus", "ms": "miz", "dr": "doctor", "prof": "professor",
    "jr": "junior", "sr": "senior", "mt": "mount", "etc": "et cetera", "vs": "versus",
    "e.g": "for example", "i.e": "that is",
}
_ABBREV_RE = re.compile(
    r"(?<![\w.])(?:(?i:(mrs|mr|ms|dr|prof|jr|sr|mt|etc|e\.g|i\.e))\."
    r"|(Mrs|Mr|Ms|Dr)(?=\s+[A-Z])"  # British titles without the dot, only before a name
    r"|(?i:(no))\.\s*(?=\d)"
    r"|(?i:(st))\.)"
    r"|(?<![A-Za-z])(?i:(vs))(?![A-Za-z])\.?"
)
# "St." after a number or a capitalized word is a street ("Main St.", "5th St."), unless that word
# is one of these ("The St. Lawrence"); otherwise it is a saint.
_NOT_STREET_NAMES = frozenset("the a an in on at to from of and by for with near".split())
_LAST_WORD_RE = re.compile(r"(\w+)\W*$")


def _abbreviation(m: re.Match[str]) -> str:
    if m[3]:
        return " number "
    if m[4]:
        prev = _LAST_WORD_RE.search(m.string, max(0, m.start() - 40), m.start())
        street = prev is not None and (
            prev[1][0].isdigit() or (prev[1][0].isupper() and prev[1].lower() not in _NOT_STREET_NAMES)
        )
        return " street " if street else " saint "
    return f" {_ABBREVIATIONS[(m[1] or m[2] or m[5]).lower()]} "


# Clock suffixes are spelled as letters: "a m", "p m".
_AMPM_DOTTED_RE = re.compile(r"(?<![A-Za-z])([AaPp])\.[Mm]\.?")
_AMPM_AFTER_DIGIT_RE = re.compile(r"(?<=\d)\s?([AaPp])[Mm]\b\.?")
_AMPM_FOLLOWS_RE = re.compile(r"\s*[ap] m\b", re.I)

_MONTHS = [
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
]
_MONTH_BY_NAME = {m: m for m in _MONTHS} | {m[:3]: m for m in _MONTHS} | {"sept": "september"}
# Capitalized names, then abbreviations ("Sept" before "Sep": alternation takes the first match).
_MONTH_NAMES = [m.capitalize() for m in _MONTHS] + ["Sept"] + [m[:3].capitalize() for m in _MONTHS if m != "may"]
_MONTH = "(" + "|".join(_MONTH_NAMES) + r")\.?"
_MONTH_DAY_RE = re.compile(r"\b" + _MONTH + r"\s+(\d{1,2})(?:st|nd|rd|th)?\b(?:,?\s+(\d{4})\b)?")
_DAY_MONTH_RE = re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)?\s+" + _MONTH + r"(?![a-z])(?:,?\s+(\d{4})\b)?")
_MONTH_YEAR_RE = re.compile(r"\b" + _MONTH + r",?\s+(\d{4})\b")
_NUMERIC_DATE_RE = re.compile(r"(?<![\d/.])(\d{1,2})/(\d{1,2})/(\d{4}|\d{2})(?![\d/])")
_ISO_DATE_RE = re.compile(r"(?<![\d-])(\d{4})-(\d{2})-(\d{2})(?![\d-])")


def _month_day(m: re.Match[str]) -> str:
    day = int(m[2])
    if not 1 <= day <= 31:
        return m[0]
    year = f" {_year(m[3])}" if m[3] else ""
    return f" {_MONTH_BY_NAME[m[1].lower()]} {_n2w(day, 'ordinal')}{year} "


def _day_month(m: re.Match[str]) -> str:
    day = int(m[1])
    if not 1 <= day <= 31:
        return m[0]
    year = f" {_year(m[3])}" if m[3] else ""
    return f" {_n2w(day, 'ordinal')} of {_MONTH_BY_NAME[m[2].lower()]}{year} "


def _date_words(month: int, day: int, year: str) -> str | None:
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    year_words = _year(year) if len(year) == 4 else _two_digits(year)
    return f" {_MONTHS[month - 1]} {_n2w(day, 'ordinal')} {year_words} "


def _numeric_date(m: re.Match[str]) -> str:
    a, b = int(m[1]), int(m[2])
    # US month/day first; day/month when only that reading is valid.
    return _date_words(a, b, m[3]) or _date_words(b, a, m[3]) or m[0]


def _iso_date(m: re.Match[str]) -> str:
    return _date_words(int(m[2]), int(m[3]), m[1]) or m[0]


_DECADE_RE = re.compile(r"(?<![\w'])'?([1-9]0|\d{3}0)'?s\b")
_ERA_RE = re.compile(r"\b(\d{1,4})\s?(BCE|BC|AD|CE|B\.C\.E\.|B\.C\.|A\.D\.|C\.E\.)(?![A-Za-z])")
_YEAR_AFTER_WORD_RE = re.compile(r"\b((?i:in|since|by|from|until|till|circa|year))\s+(1\d{3}|20\d{2})\b(?![.,]\d)")


def _decade(m: re.Match[str]) -> str:
    s = m[1]
    words = _year(s) if len(s) == 4 else _cardinal(s)
    return f" {_plural(words)} "


def _era(m: re.Match[str]) -> str:
    return f" {_year(m[1])} {' '.join(c for c in m[2].lower() if c.isalpha())} "


_NUM = r"(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_SIGN = r"(?:(?<![\w.])(-))?"

_CURRENCY_UNITS = {  # symbol: (major singular, major plural, minor singular, minor plural)
    "$": ("dollar", "dollars", "cent", "cents"),
    "\u00a3": ("pound", "pounds", "penny", "pence"),
    "\u20ac": ("euro", "euros", "cent", "cents"),
}
_CURRENCY_RE = re.compile(
    r"([$\u00a3\u20ac])\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?:\s?((?i:thousand|million|billion|trillion))\b)?"
)


def _currency(m: re.Match[str]) -> str:
    one, many, cent, cents = _CURRENCY_UNITS[m[1]]
    whole, frac, scale = m[2], m[3] or "", m[4]
    if scale:  # "$1.5 million" -> "one point five million dollars"
        amount = _decimal(f"{whole}.{frac}" if frac else whole)
        return f" {amount} {scale.lower()} {many} "
    if len(frac) > 2:
        return f" {_decimal(whole + '.' + frac)} {many} "
    major = int(whole.replace(",", ""))
    minor = int(frac.ljust(2, "0")) if frac else 0
    parts = []
    if major or not minor:
        parts.append(f"{_cardinal(whole)} {one if major == 1 else many}")
    if minor:
        parts.append(f"{_n2w(minor)} {cent if minor == 1 else cents}")
    return f" {' '.join(parts)} "


_PERCENT_RE = re.compile(_SIGN + _NUM + r"\s?%")
_RANGE_RE = re.compile(r"(?<=\d)-(?=\d)")
_TIME_RE = re.compile(r"(?<![\d:.])([01]?\d|2[0-3]):([0-5]\d)(?!\d)")
_ORDINAL_RE = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+|\d+)((?i:st|nd|rd|th))\b")
_FRACTION_RE = re.compile(r"(?<![\d/.])(?:(\d+)\s+)?([1-9])/([2-9]|10)(?![\d/])")
_LETTER_DIGIT_RE = re.compile(r"(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")
_NUMBER_RE = re.compile(_SIGN + _NUM)
# A following plural noun makes a 4-digit number a count ("1640 votes"), not a year ("1999 was").
_COUNTED_NOUN_RE = re.compile(
    r"\s+(?:(?!(?:was|has|as|does|goes|yes|its|perhaps|whereas|always|besides|towards)\b)[a-z]+(?<![siu])s"
    r"|people|men|women|children|feet|teeth|mice|sheep|fish|deer|geese)\b"
)
_HAS_DIGIT_RE = re.compile(r"\d")
_HASH_NUMBER_RE = re.compile(r"#\s?(?=\d)")
_SYMBOLS = str.maketrans({"&": " and ", "+": " plus ", "@": " at ", "%": " percent ", "#": " "})


def _percent(m: re.Match[str]) -> str:
    return f" {'minus ' if m[1] else ''}{_decimal(m[2])} percent "


def _time(m: re.Match[str]) -> str:
    hour, minute = _n2w(int(m[1])), m[2]
    if minute == "00":
        return f" {hour} " if _AMPM_FOLLOWS_RE.match(m.string, m.end()) else f" {hour} o'clock "
    return f" {hour} {_two_digits(minute)} "


def _ordinal_match(m: re.Match[str]) -> str:
    return f" {_ordinal(m[1])} "


def _fraction(m: re.Match[str]) -> str:
    num, den = int(m[2]), int(m[3])
    if num >= den:
        return m[0]
    if den == 2:
        unit = "half" if num == 1 else "halves"
    elif den == 4:
        unit = "quarter" if num == 1 else "quarters"
    else:
        unit = _n2w(den, "ordinal") + ("" if num == 1 else "s")
    if m[1]:  # mixed number: "2 1/2" -> "two and a half"
        return f" {_cardinal(m[1])} and {'a' if num == 1 else _n2w(num)} {unit} "
    return f" {_n2w(num)} {unit} "


def _number(m: re.Match[str]) -> str:
    sign, num, s = m[1], m[2], m.string
    if "." in num:
        words = _decimal(num)
    elif not sign and len(num) == 4 and 1100 <= int(num) <= 2099 and not _COUNTED_NOUN_RE.match(s, m.end()):
        words = _year(num)
    else:
        words = _cardinal(num)
    return f" {'minus ' if sign else ''}{words} "


def _expand_numbers(s: str) -> str:
    s = _HASH_NUMBER_RE.sub(" number ", s)
    s = _AMPM_AFTER_DIGIT_RE.sub(lambda m: f" {m[1].lower()} m ", s)
    s = _MONTH_DAY_RE.sub(_month_day, s)
    s = _DAY_MONTH_RE.sub(_day_month, s)
    s = _MONTH_YEAR_RE.sub(lambda m: f" {_MONTH_BY_NAME[m[1].lower()]} {_year(m[2])} ", s)
    s = _NUMERIC_DATE_RE.sub(_numeric_date, s)
    s = _ISO_DATE_RE.sub(_iso_date, s)
    s = _DECADE_RE.sub(_decade, s)
    s = _ERA_RE.sub(_era, s)
    s = _YEAR_AFTER_WORD_RE.sub(lambda m: f"{m[1]} {_year(m[2])}", s)
    s = _RANGE_RE.sub(" to ", s)
    s = _CURRENCY_RE.sub(_currency, s)
    s = _PERCENT_RE.sub(_percent, s)
    s = _TIME_RE.sub(_time, s)
    s = _ORDINAL_RE.sub(_ordinal_match, s)
    s = _FRACTION_RE.sub(_fraction, s)
    s = _LETTER_DIGIT_RE.sub(" ", s)
    return _NUMBER_RE.sub(_number, s)


_DISALLOWED_RE = re.compile(r"[^a-z' ]+")
_STRAY_APOSTROPHE_RE = re.compile(r"(?<![a-z])'|'(?![a-z])")


def normalize_text(s: str) -> str:
    """Normalize text to what is spoken: lowercase a-z, inner apostrophes, single spaces."""
    s = _fold(s)
    s = _AMPM_DOTTED_RE.sub(lambda m: f" {m[1].lower()} m ", s)
    s = _ABBREV_RE.sub(_abbreviation, s)
    if _HAS_DIGIT_RE.search(s):
        s = _expand_numbers(s)
    s = _DISALLOWED_RE.sub(" ", s.translate(_SYMBOLS).lower())
    s = _STRAY_APOSTROPHE_RE.sub(" ", s)
    return " ".join(s.split())


# --------------------------------------------------------------------------------------------
# Sentences and chunks

_PARAGRAPH_RE = re.compile(r"\n\s*\n")
# A terminator run (with closing quotes/brackets) followed by a capitalized word or the end.
_SENTENCE_END_RE = re.compile(r"[.!?;]+[\"')\]]*(?=\s+[\"'(\[]*[A-Z]|\s*$)")
_NO_SPLIT_WORDS = "|".join(re.escape(a) for a in sorted([*_ABBREVIATIONS, "st"], key=len, reverse=True))
_NO_SPLIT_AFTER_RE = re.compile(
    r"(?:(?<![\w.])(?i:" + _NO_SPLIT_WORDS + ")"
    r"|(?<![\w.])[A-HJ-Z]"  # an initial ("J. R. R. Tolkien"), but not "I"
    r"|\b[A-Za-z]\.[A-Za-z])$"  # a dotted acronym: "U.S."
)


def split_sentences(text: str) -> list[str]:
    """Split raw text into sentences (raw, whitespace collapsed, empty ones dropped).

    Blank lines always end a sentence. Otherwise a sentence ends at . ! ? or ; (plus any closing
    quotes) followed by a capitalized word or the end of the text, except after a dot that ends
    a known abbreviation, a single-letter initial or a dotted acronym.
    """
    sentences = []
    for paragraph in _PARAGRAPH_RE.split(text):
        start = 0
        for m in _SENTENCE_END_RE.finditer(paragraph):
            if m[0][0] == "." and _NO_SPLIT_AFTER_RE.search(paragraph, start, m.start()):
                continue
            sentences.append(" ".join(paragraph[start : m.end()].split()))
            start = m.end()
        sentences.append(" ".join(paragraph[start:].split()))
    return [s for s in sentences if s]


_CONJUNCTIONS = frozenset("and but or so because which that when while".split())
# A clause break in the raw text: , ; : ! ? or an ellipsis before a space, or a spaced/em dash.
_CLAUSE_BREAK_RE = re.compile(r"(?:[,;:!?]+|\.\.\.)[\"')\]]*(?=\s)|\s--?\s|\s?\u2014\s?|\s\u2013\s")
_DIGIT_COMMA_DIGIT_RE = re.compile(r"\d,\s*\d")
# Segmentation costs: each chunk costs 1, so a natural cut is worth an extra chunk or two.
_CUT_COST_CLAUSE = 0.0
_CUT_COST_CONJUNCTION = 0.5
_CUT_COST_ELSEWHERE = 3.0
_CUT_COST_INSIDE_NUMBER = 8.0  # "one | thousand two hundred" would split one spoken number
_NUMBER_WORDS = frozenset(
    word
    for n in (*range(20), *range(20, 100, 10), 100, 1000, 10**6, 10**9, 10**12)
    for to in ("cardinal", "ordinal")
    for word in _n2w(n, to).split()
) | {"point", "oh", "minus", "o'clock"}
_SHORT_CHUNK_COST = 2.0


def chunk_sentence(raw: str, max_words: int) -> list[str]:
    """Normalize a raw sentence and cut it into chunks of at most `max_words` words.

    The chunks, joined with spaces, are exactly normalize_text(raw). Cuts go preferably where the
    raw text had a clause break (comma, semicolon, colon, dash), then before a conjunction, and
    chunks shorter than a quarter of `max_words` are avoided; a dynamic program picks the
    cheapest segmentation.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    words = normalize_text(raw).split()
    if len(words) <= max_words:
        return [" ".join(words)] if words else []
    cut_cost = [_CUT_COST_ELSEWHERE] * len(words)  # cost of a cut before words[i]
    for i, word in enumerate(words):
        if word in _CONJUNCTIONS:
            cut_cost[i] = _CUT_COST_CONJUNCTION
        elif i and word in _NUMBER_WORDS and words[i - 1] in _NUMBER_WORDS:
            cut_cost[i] = _CUT_COST_INSIDE_NUMBER
    # Map clause breaks to word indices by normalizing the raw pieces between them one by one; a
    # piece whose words differ from the whole's (a rule spanning the break) is merged with the next.
    piece_start, k = 0, 0
    for m in _CLAUSE_BREAK_RE.finditer(raw):
        if _DIGIT_COMMA_DIGIT_RE.match(raw, max(0, m.start() - 1)):
            continue  # "March 3, 2021", "1, 2, 3": not a clause break
        piece = normalize_text(raw[piece_start : m.end()]).split()
        if words[k : k + len(piece)] == piece:
            piece_start, k = m.end(), k + len(piece)
            if 0 < k < len(words):
                cut_cost[k] = _CUT_COST_CLAUSE
    return [" ".join(words[a:b]) for a, b in _segment(cut_cost, max_words)]


def _segment(cut_cost: list[float], max_words: int) -> list[tuple[int, int]]:
    """Cheapest [start, end) chunk bounds by dynamic programming over the cut positions."""
    n = len(cut_cost)
    short = max(1, max_words // 4)
    best = [0.0] + [float("inf")] * n
    back = [0] * (n + 1)
    for end in range(1, n + 1):
        tail = cut_cost[end] if end < n else 0.0
        for start in range(max(0, end - max_words), end):
            cost = best[start] + 1.0 + tail + (_SHORT_CHUNK_COST if end - start < short else 0.0)
            if cost < best[end]:
                best[end], back[end] = cost, start
    bounds = []
    end = n
    while end:
        bounds.append((back[end], end))
        end = back[end]
    return bounds[::-1]
