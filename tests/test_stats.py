"""mixerlab.compare.stats against independent references: exact binomial sums in rational
arithmetic (math.comb + fractions) for McNemar, analytic cases for the paired bootstrap."""
from fractions import Fraction
from math import comb

import numpy as np
import pytest

from mixerlab.compare.stats import (AGREES, DISAGREES, INCONCLUSIVE, Criterion, accuracy, combine,
                                    mcnemar, paired_bootstrap, verdict)


def _pair(b, c, same_right=50, same_wrong=30):
    """Correctness vectors with b images only A gets right and c only B gets right."""
    a = [1] * b + [0] * c + [1] * same_right + [0] * same_wrong
    bb = [0] * b + [1] * c + [1] * same_right + [0] * same_wrong
    return np.array(a), np.array(bb)


def _exact_reference(b, c):
    n, k = b + c, min(b, c)
    cdf = sum(Fraction(comb(n, i), 2 ** n) for i in range(k + 1))
    pmf = Fraction(comb(n, k), 2 ** n)
    return float(min(1, 2 * cdf)), float(min(1, 2 * cdf - pmf))


@pytest.mark.parametrize("b,c", [(1, 9), (9, 1), (0, 5), (7, 7), (3, 12), (40, 61), (150, 120)])
def test_mcnemar_matches_exact_binomial(b, c):
    a, bb = _pair(b, c)
    r = mcnemar(a, bb)
    assert (r["b"], r["c"]) == (b, c)
    p_exact, p_mid = _exact_reference(b, c)
    assert r["p_exact"] == pytest.approx(p_exact, rel=1e-9, abs=1e-15)
    assert r["p_mid"] == pytest.approx(p_mid, rel=1e-9, abs=1e-15)


def test_mcnemar_hand_value_and_no_discordance():
    # b=1, c=9: P(X<=1) = 11/1024 -> exact 22/1024, mid-p 22/1024 - 10/1024
    r = mcnemar(*_pair(1, 9))
    assert r["p_exact"] == pytest.approx(22 / 1024) and r["p_mid"] == pytest.approx(12 / 1024)
    same = np.array([1, 0, 1, 1])
    assert mcnemar(same, same) == dict(b=0, c=0, p_exact=1.0, p_mid=1.0)


def test_identical_predictions_give_a_zero_width_interval_at_zero():
    rng = np.random.default_rng(0)
    x = (rng.random((3, 2000)) < 0.8).astype(int)
    r = paired_bootstrap(x, x, seed=1)
    assert r["diff"] == 0.0 and r["lo"] == 0.0 and r["hi"] == 0.0


def test_known_shift_is_recovered_with_the_binomial_width():
    # B is A with k of its wrong images made right: the per-image difference is 1 on exactly k
    # images -> mean k/N; the bootstrap SE of a mean of 0/1 values is sqrt(p(1-p)/N).
    n, k = 5000, 250
    rng = np.random.default_rng(3)
    a = (rng.random(n) < 0.7).astype(int)
    b = a.copy()
    wrong = np.flatnonzero(a == 0)[:k]
    b[wrong] = 1
    r = paired_bootstrap(b, a, n_boot=4000, seed=0)
    p = k / n
    assert r["diff"] == pytest.approx(100 * p)
    half = 1.96 * np.sqrt(p * (1 - p) / n) * 100
    assert r["lo"] < 100 * p < r["hi"]
    assert (r["hi"] - r["lo"]) / 2 == pytest.approx(half, rel=0.1)
    # the reverse order flips the sign and the interval
    r2 = paired_bootstrap(a, b, n_boot=4000, seed=0)
    assert r2["diff"] == pytest.approx(-r["diff"]) and r2["lo"] == pytest.approx(-r["hi"])


def test_bootstrap_is_seeded_and_pairs_seeds_per_image():
    rng = np.random.default_rng(5)
    a = (rng.random((2, 800)) < 0.75).astype(int)
    b = (rng.random((2, 800)) < 0.70).astype(int)
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    # combined across seeds: the point estimate is the mean over seeds and images
    assert paired_bootstrap(a, b)["diff"] == pytest.approx(100 * (a.mean() - b.mean()))
    # all right vs all wrong: +100 with no width
    ones, zeros = np.ones(50, int), np.zeros(50, int)
    assert paired_bootstrap(ones, zeros) == dict(diff=100.0, lo=100.0, hi=100.0, n=50)
    # difference of differences: (A - B) - (A - B) is identically 0
    assert paired_bootstrap(a, b, a, b)["hi"] == 0.0
    with pytest.raises(ValueError, match="same test images"):
        paired_bootstrap(a, b[:, :10])


def test_accuracy_interval_brackets_the_mean():
    x = np.array([1] * 900 + [0] * 100)
    r = accuracy(x)
    assert r["value"] == pytest.approx(90.0) and r["lo"] < 90.0 < r["hi"] and r["n"] == 1000
    assert (r["hi"] - r["lo"]) / 2 == pytest.approx(1.96 * np.sqrt(0.09 / 1000) * 100, rel=0.15)


def test_three_state_verdicts():
    above = Criterion("a - b", ">", -3.0)
    assert verdict(-2.0, 1.0, above) == AGREES
    assert verdict(-6.0, -4.0, above) == DISAGREES
    assert verdict(-4.0, -1.0, above) == INCONCLUSIVE
    below = Criterion("a - b", "<", 2.0)
    assert verdict(-1.0, 1.5, below) == AGREES and verdict(2.5, 4.0, below) == DISAGREES
    assert verdict(1.0, 3.0, below) == INCONCLUSIVE and verdict(None, None, below) == INCONCLUSIVE
    assert combine([AGREES, AGREES]) == AGREES and combine([AGREES, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([INCONCLUSIVE, DISAGREES]) == DISAGREES and combine([]) == INCONCLUSIVE
    assert above.text() == "a - b > -3 points"
    with pytest.raises(ValueError, match="op"):
        Criterion("x", ">=", 0.0)
