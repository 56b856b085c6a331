import math

import numpy as np
import pytest

from eeasr.exits import frame_entropy, greedy_ctc, nbest_posterior, nonblank_entropy


def _logp(rows):
    return np.log(np.array(rows, dtype=np.float64))


def test_greedy_ctc_merges_repeats_and_drops_blanks():
    p = _logp([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7]])
    assert greedy_ctc(p) == [1, 1, 2]


def test_frame_entropy_matches_eq5_by_hand():
    rows = [[0.5, 0.5, 0.0 + 1e-300], [1.0 - 2e-12, 1e-12, 1e-12]]
    p = _logp(rows)
    h0 = -(0.5 * math.log(0.5)) * 2
    h1 = 0.0
    assert frame_entropy(p) == pytest.approx((h0 + h1) / (2 * 3), abs=1e-9)


def test_nonblank_entropy_ignores_blank_frames():
    p = _logp([[0.98, 0.01, 0.01], [0.2, 0.4, 0.4], [0.2, 0.5, 0.3]])
    h = lambda r: -sum(x * math.log(x) for x in r)  # noqa: E731
    assert nonblank_entropy(p) == pytest.approx((h([0.2, 0.4, 0.4]) + h([0.2, 0.5, 0.3])) / (2 * 3))
    only_blank = _logp([[0.9, 0.05, 0.05]])
    assert nonblank_entropy(only_blank) == pytest.approx(frame_entropy(only_blank))


def test_nbest_posterior_is_the_softmax_of_the_best():
    scores = [-1.0, -2.0, -4.0]
    expected = math.exp(-1) / (math.exp(-1) + math.exp(-2) + math.exp(-4))
    assert nbest_posterior(scores) == pytest.approx(expected)
    assert nbest_posterior([-3.0]) == 1.0
    assert nbest_posterior([-1e4, -1e4 - 1]) == pytest.approx(1 / (1 + math.exp(-1)))
