import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eeasr.text import chunk_sentence, normalize_text, split_sentences

CASES = [
    # plain text, case, punctuation, whitespace
    ("Hello, World!", "hello world"),
    ("  many   spaces\tand\nlines ", "many spaces and lines"),
    ("Hello!!! World???", "hello world"),
    ("", ""),
    ("...", ""),
    # cardinals
    ("I have 42 apples.", "i have forty two apples"),
    ("1,234 people", "one thousand two hundred thirty four people"),
    ("1,000,000", "one million"),
    ("-5 degrees", "minus five degrees"),
    ("It was -5.", "it was minus five"),
    ("0", "zero"),
    ("007", "zero zero seven"),
    ("105", "one hundred five"),
    ("12345678901234567", "one two three four five six seven eight nine zero one two three four five six seven"),
    # ordinals
    ("1st 2nd 3rd 4th", "first second third fourth"),
    ("23rd and 101st", "twenty third and one hundred first"),
    ("the 1,000th visitor", "the one thousandth visitor"),
    # years
    ("in 1999", "in nineteen ninety nine"),
    ("2005", "two thousand five"),
    ("1905", "nineteen oh five"),
    ("2000", "two thousand"),
    ("2010", "twenty ten"),
    ("1100", "eleven hundred"),
    ("2100 items", "two thousand one hundred items"),
    ("1099", "one thousand ninety nine"),
    ("in 1066", "in ten sixty six"),
    ("1999 was the year", "nineteen ninety nine was the year"),
    ("the 1984 Olympics", "the nineteen eighty four olympics"),
    ("the 1640 votes", "the one thousand six hundred forty votes"),
    ("1234 people", "one thousand two hundred thirty four people"),
    ("In 1886 the population was 3,186,149.",
     "in eighteen eighty six the population was three million one hundred eighty six thousand one hundred forty nine"),
    ("44 BC", "forty four b c"),
    ("the 1990s", "the nineteen nineties"),
    ("the '90s", "the nineties"),
    ("the 1800s", "the eighteen hundreds"),
    # decimals and percentages
    ("pi is 3.14", "pi is three point one four"),
    ("0.5", "zero point five"),
    (".5", "point five"),
    ("3.50", "three point five zero"),
    ("50%", "fifty percent"),
    ("12.5 %", "twelve point five percent"),
    ("-3% change", "minus three percent change"),
    # currency
    ("$5", "five dollars"),
    ("$1", "one dollar"),
    ("$1.50", "one dollar fifty cents"),
    ("$0.99", "ninety nine cents"),
    ("$0.01", "one cent"),
    ("$2.00", "two dollars"),
    ("$1,250", "one thousand two hundred fifty dollars"),
    ("$1.5 million", "one point five million dollars"),
    ("£20", "twenty pounds"),
    ("£1.01", "one pound one penny"),
    ("€3.50", "three euros fifty cents"),
    ("$5-10", "five dollars to ten"),
    # times
    ("10:30", "ten thirty"),
    ("7:05", "seven oh five"),
    ("9:00", "nine o'clock"),
    ("9:00 a.m.", "nine a m"),
    ("at 10am", "at ten a m"),
    ("10:30pm", "ten thirty p m"),
    ("5 P.M.", "five p m"),
    ("10:30-11:30", "ten thirty to eleven thirty"),
    ("John 3:16", "john three sixteen"),
    # dates
    ("March 3, 2021", "march third twenty twenty one"),
    ("on May 5th, 1990", "on may fifth nineteen ninety"),
    ("Jan. 5", "january fifth"),
    ("3 March 2021", "third of march twenty twenty one"),
    ("March 2021", "march twenty twenty one"),
    ("3/14/2015", "march fourteenth twenty fifteen"),
    ("14/3/2015", "march fourteenth twenty fifteen"),
    ("1/2/05", "january second oh five"),
    ("2021-03-14", "march fourteenth twenty twenty one"),
    ("we march 3 miles", "we march three miles"),
    # ranges, fractions, slashes, hyphens
    ("pages 5-10", "pages five to ten"),
    ("1/2", "one half"),
    ("3/4 of it", "three quarters of it"),
    ("2/3", "two thirds"),
    ("2 1/2 cups", "two and a half cups"),
    ("24/7", "twenty four seven"),
    ("well-known and/or", "well known and or"),
    ("COVID-19", "covid nineteen"),
    ("3D MP3", "three d mp three"),
    # symbols
    ("Tom & Jerry", "tom and jerry"),
    ("1+1", "one plus one"),
    ("me@example.com", "me at example com"),
    ("#5", "number five"),
    ("#hashtag", "hashtag"),
    ("No. 7", "number seven"),
    ("No. I said no.", "no i said no"),
    ("30\u00b0C", "thirty degrees c"),
    # abbreviations
    ("Mr. Smith met Mrs. Jones and Dr. Who", "mister smith met missus jones and doctor who"),
    ("Mr Smith", "mister smith"),
    ("Prof. X and Ms. Y", "professor x and miz y"),
    ("Martin Luther King Jr.", "martin luther king junior"),
    ("St. Louis", "saint louis"),
    ("the St. Lawrence river", "the saint lawrence river"),
    ("Main St. is busy", "main street is busy"),
    ("5th St.", "fifth street"),
    ("apples, pears, etc.", "apples pears et cetera"),
    ("cats vs. dogs", "cats versus dogs"),
    ("cats vs dogs", "cats versus dogs"),
    ("e.g. this", "for example this"),
    ("i.e. that", "that is that"),
    ("U.S.A.", "u s a"),
    # apostrophes
    ("don't it's o'clock", "don't it's o'clock"),
    ("'quoted' dogs' bones", "quoted dogs bones"),
    ("rock 'n' roll", "rock n roll"),
    ("x''y", "x y"),
    # unicode
    ("caf\u00e9 na\u00efve", "cafe naive"),
    ("stra\u00dfe \u00c6r\u00f8", "strasse aero"),
    ("\u201cSmart quotes\u201d \u2014 and \u2018apostrophes\u2019 don\u2019t", "smart quotes and apostrophes don't"),
    ("2\u00bd cups", "two and a half cups"),
    ("\uff11\uff12 fullwidth", "twelve fullwidth"),
    ("\u0441\u043b\u043e\u0432\u043e \u4e2d\u6587 ok", "ok"),
    ("\ufb01ne", "fine"),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_normalize_cases(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_normalize_cases_idempotent(raw: str, expected: str) -> None:
    assert normalize_text(expected) == expected


_OUTPUT_RE = re.compile(r"(?:[a-z]+(?:'[a-z]+)*(?: |$))*")
_TOKENS = [
    "March", "May", "Mr.", "St.", "Dr", "vs", "etc.", "e.g.", "a.m.", "pm", "AD", "BC", "No.", "I", "the",
    "and", "don't", "'", "''", "-", "/", ":", ",", ".", "$", "\u00a3", "\u20ac", "%", "#", "&", "+", "@",
    "1", "5", "12", "1999", "2005", "1,234", "3.14", "10:30", "9:00", "3/14/2015", "1/2", "21st", "90s",
    "\u00e9", "\u00bd", "\u2014", "\u2019", "\n", "\t",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), max_size=20).map(lambda t: "".join(t) if len(t) % 2 else " ".join(t)))
def test_idempotent_and_alphabet_on_tricky_tokens(s: str) -> None:
    once = normalize_text(s)
    assert _OUTPUT_RE.fullmatch(once), once
    assert normalize_text(once) == once


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_idempotent_on_arbitrary_unicode(s: str) -> None:
    once = normalize_text(s)
    assert _OUTPUT_RE.fullmatch(once), once
    assert normalize_text(once) == once


def test_split_sentences() -> None:
    text = (
        "Mr. Smith went to Washington. He met Dr. Jones at St. Paul's! Was it late? "
        '"Yes." She left; Then J. R. R. Tolkien wrote apples, pears, etc. and more. '
        "So did I. It cost 3.14 dollars.\n\nA heading\nwithout a stop"
    )
    assert split_sentences(text) == [
        "Mr. Smith went to Washington.",
        "He met Dr. Jones at St. Paul's!",
        "Was it late?",
        '"Yes."',
        "She left;",
        "Then J. R. R. Tolkien wrote apples, pears, etc. and more.",
        "So did I.",
        "It cost 3.14 dollars.",
        "A heading without a stop",
    ]


def test_split_sentences_keeps_lowercase_continuations_and_empty() -> None:
    assert split_sentences("one. two. three") == ["one. two. three"]
    assert split_sentences("  \n\n  ") == []


RAW = (
    "When the sun rose over the quiet hills, the farmers walked out to their fields, and the "
    "children, who had slept late, ran to the river because it was warm; nobody expected that "
    "the storm would come back before noon, but it did."
)


def test_chunk_prefers_clause_breaks() -> None:
    assert chunk_sentence(RAW, 8) == [
        "when the sun rose over the quiet hills",
        "the farmers walked out to their fields",
        "and the children who had slept late",
        "ran to the river because it was warm",
        "nobody expected",
        "that the storm would come back before noon",
        "but it did",
    ]


def test_chunk_short_sentence_and_edge_cases() -> None:
    assert chunk_sentence("Hello, World!", 5) == ["hello world"]
    assert chunk_sentence("", 5) == []
    assert chunk_sentence("?!", 5) == []
    with pytest.raises(ValueError):
        chunk_sentence("a b", 0)


def test_chunk_does_not_cut_dates_or_numbers() -> None:
    raw = "On March 3, 2021, we met Mr. Smith, Dr. Jones and 1,234 others, which was a lot of people to meet in one day"
    chunks = chunk_sentence(raw, 8)
    assert chunks[0] == "on march third twenty twenty one"
    assert any(c.endswith("one thousand two hundred thirty four others") for c in chunks)


_WORDS = ["alpha", "beta", "and", "which", "12", "1,234", "$5", "Mr.", "don't", ",", ";", ":", " -", "\u2014", "March 3, 2021"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=60), st.integers(min_value=1, max_value=12))
def test_chunk_bounds_and_no_loss(words: list[str], max_words: int) -> None:
    raw = " ".join(words)
    chunks = chunk_sentence(raw, max_words)
    assert all(1 <= len(c.split()) <= max_words for c in chunks)
    assert " ".join(chunks) == normalize_text(raw)
