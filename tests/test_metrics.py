import random

import pytest

from eeasr.metrics import ErrorRate, bootstrap_interval, cer, error_rate, token_agreement, wer


def test_wer_hand_computed() -> None:
    # "the cat sat" -> "the bat sat on": 1 substitution, 1 insertion; "a b" -> "": 2 deletions.
    r = error_rate(["the cat sat", "a b"], ["the bat sat on", ""], "word")
    assert r == ErrorRate(errors=4, substitutions=1, deletions=2, insertions=1, ref_len=5, rate=80.0)
    assert wer(["the cat sat", "a b"], ["the bat sat on", ""]) == 80.0


def test_cer_hand_computed() -> None:
    # "abc de" (6 chars incl. space) -> "abd de": 1 substitution.
    r = error_rate(["abc de"], ["abd de"], "char")
    assert (r.errors, r.substitutions, r.ref_len) == (1, 1, 6)
    assert cer(["abc de"], ["abd de"]) == pytest.approx(100 / 6)


def test_both_sides_are_normalized() -> None:
    assert wer(["Hello, World! It's 42."], ["hello world it's forty two"]) == 0.0
    assert cer(["Mr. Smith"], ["mister smith"]) == 0.0


def test_empty_references() -> None:
    assert error_rate([""], [""]) == ErrorRate(0, 0, 0, 0, 0, 0.0)
    assert error_rate([""], ["a b"]) == ErrorRate(2, 0, 0, 2, 0, 100.0)
    assert error_rate([], []).rate == 0.0
    # An empty reference among others only adds insertions.
    assert error_rate(["a b", ""], ["a b", "c"]) == ErrorRate(1, 0, 0, 1, 2, 50.0)


def test_mismatched_lengths_and_unit() -> None:
    with pytest.raises(ValueError):
        error_rate(["a"], [])
    with pytest.raises(ValueError):
        error_rate(["a"], ["a"], "phone")  # type: ignore[arg-type]


def _corpus(n: int = 400) -> tuple[list[str], list[str]]:
    rng = random.Random(1)
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    refs, hyps = [], []
    for _ in range(n):
        ref = [rng.choice(words) for _ in range(rng.randint(3, 12))]
        hyp = [w if rng.random() > 0.15 else rng.choice(words) for w in ref if rng.random() > 0.05]
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp))
    return refs, hyps


def test_bootstrap_contains_point_estimate_and_is_reproducible() -> None:
    refs, hyps = _corpus()
    point = wer(refs, hyps)
    lo, hi = bootstrap_interval(refs, hyps, n_resamples=500, seed=3)
    assert lo < point < hi
    assert hi - lo < 10
    assert bootstrap_interval(refs, hyps, n_resamples=500, seed=3) == (lo, hi)
    assert bootstrap_interval(refs, hyps, n_resamples=500, seed=4) != (lo, hi)
    clo, chi = bootstrap_interval(refs, hyps, n_resamples=200, unit="char")
    assert clo <= cer(refs, hyps) <= chi


def test_bootstrap_wider_with_higher_confidence() -> None:
    refs, hyps = _corpus()
    lo90, hi90 = bootstrap_interval(refs, hyps, confidence=0.90)
    lo99, hi99 = bootstrap_interval(refs, hyps, confidence=0.99)
    assert lo99 <= lo90 and hi90 <= hi99


def test_bootstrap_degenerate_inputs() -> None:
    assert bootstrap_interval([], []) == (0.0, 0.0)
    assert bootstrap_interval(["a b"], ["a b"]) == (0.0, 0.0)
    with pytest.raises(ValueError):
        bootstrap_interval(["a"], ["a"], confidence=1.0)


def test_token_agreement_hand_checked() -> None:
    assert token_agreement([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert token_agreement([1, 2, 3, 4], [1, 2, 4]) == 0.75  # 1 deletion
    assert token_agreement([1, 2, 3, 4], [1, 9, 3, 4, 5]) == 0.5  # 1 substitution + 1 insertion
    assert token_agreement([1, 2], []) == 0.0
    assert token_agreement([1], [2, 3, 4]) == 0.0  # 3 edits > 1 token: clamped
    assert token_agreement([], []) == 1.0
    assert token_agreement([], [7]) == 0.0
    assert token_agreement([10, 11, 12], [12, 10, 11]) == pytest.approx(1 / 3)  # 1 insertion + 1 deletion
