"""Paired statistics and three-state verdicts for ``mixerlab compare``.

Every run of a comparison is evaluated on the same test images and stores, per image, whether its
prediction was correct. A claim compares two models (or two differences of models) on those
images:

* :func:`paired_bootstrap`: the difference of accuracies in points with a percentile interval,
  resampling test *images* (the same resampled images for both models and every seed, so the
  pairing and the seed-to-seed variation are kept: with several seeds the per-image value is the
  mean over seeds). Efron & Tibshirani, "An Introduction to the Bootstrap" (1993), ch. 13; the
  paired form is the one of Koehn, "Statistical significance tests for machine translation
  evaluation" (EMNLP 2004). Seeded, so a report recomputes to the same digits.
* :func:`mcnemar`: McNemar's test on the discordant images of two models (one seed each), exact
  binomial two-sided p-value and its mid-p variant (Fagerland, Lydersen & Laake, "The McNemar test
  for binary matched-pairs data: mid-p and asymptotic are better than exact conditional", BMC
  Medical Research Methodology 13:91, 2013).
* :class:`Criterion` and :func:`verdict`: a claim is fixed *before* the run as "the difference is
  above (or below) a threshold"; the verdict is **agrees** when the whole 95 % interval is on the
  claim's side, **does not agree** when the whole interval is on the other side, and
  **inconclusive** when the interval allows both answers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

AGREES, DISAGREES, INCONCLUSIVE = "agrees", "does not agree", "inconclusive"
WORDS = (AGREES, DISAGREES, INCONCLUSIVE)


def _as_matrix(correct) -> np.ndarray:
    """(seeds, images) float array of 0/1 from a vector, a matrix or a list of vectors."""
    a = np.asarray(correct, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"expected per-image correctness of shape (images,) or (seeds, images), got {a.shape}")
    return a


def per_image(correct) -> np.ndarray:
    """Per-image accuracy averaged over seeds, shape (images,)."""
    return _as_matrix(correct).mean(axis=0)


def bootstrap_interval(values: np.ndarray, *, n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` (one value per test image) under resampling
    of the images with replacement; ``n_boot`` resamples from ``numpy.random.default_rng(seed)``."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n == 0:
        raise ValueError("no test images to resample")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(k, n))
        means[start:start + k] = v[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def accuracy(correct, **kw) -> dict:
    """Top-1 in points (mean over seeds and images) with its bootstrap interval over images."""
    v = per_image(correct)
    lo, hi = bootstrap_interval(v, **kw)
    return dict(value=100.0 * float(v.mean()), lo=100.0 * lo, hi=100.0 * hi, n=len(v))


def paired_bootstrap(correct_a, correct_b, correct_c=None, correct_d=None, **kw) -> dict:
    """Accuracy of A minus B in points, with a paired bootstrap interval over test images.

    With ``correct_c`` and ``correct_d`` the statistic is the difference of differences
    (A - B) - (C - D), e.g. "the gap at little data minus the gap at full data"; all four are
    resampled with the same images. Each argument is (images,) or (seeds, images).
    """
    arrays = [per_image(x) for x in (correct_a, correct_b, correct_c, correct_d) if x is not None]
    if len(arrays) not in (2, 4):
        raise ValueError("paired_bootstrap takes two or four correctness arrays")
    n = {len(x) for x in arrays}
    if len(n) != 1:
        raise ValueError(f"paired comparison needs the same test images for every run, got sizes {sorted(n)}")
    d = arrays[0] - arrays[1]
    if len(arrays) == 4:
        d = d - (arrays[2] - arrays[3])
    lo, hi = bootstrap_interval(d, **kw)
    return dict(diff=100.0 * float(d.mean()), lo=100.0 * lo, hi=100.0 * hi, n=len(d))


def _binom_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (log-space sum)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2.0)
            for i in range(k + 1)]
    m = max(logs)
    return min(1.0, math.exp(m) * sum(math.exp(x - m) for x in logs))


def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's test of two models on the same images (first seed of each if several).

    ``b``: images A gets right and B wrong; ``c``: the reverse. Under H0 (equal accuracy)
    b ~ Binomial(b + c, 1/2). Returns b, c, the exact two-sided p-value
    min(1, 2 P(X <= min(b, c))) and the mid-p value (exact minus P(X = min(b, c))).
    """
    a = _as_matrix(correct_a)[0] > 0.5
    b_ = _as_matrix(correct_b)[0] > 0.5
    if a.shape != b_.shape:
        raise ValueError(f"McNemar needs the same test images for both models, got {a.shape} and {b_.shape}")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    n, k = b + c, min(b, c)
    if n == 0:
        return dict(b=b, c=c, p_exact=1.0, p_mid=1.0)
    cdf = _binom_cdf_half(k, n)
    pmf = cdf - _binom_cdf_half(k - 1, n)
    p_exact = min(1.0, 2.0 * cdf)
    p_mid = min(1.0, 2.0 * cdf - pmf)
    return dict(b=b, c=c, p_exact=p_exact, p_mid=p_mid)


@dataclass(frozen=True)
class Criterion:
    """A claim fixed before the run: ``stat`` (a difference in points, named e.g.
    ``"ffonly - deit"``) is ``above`` (``">"``) or ``below`` (``"<"``) ``threshold``.

    ``why`` is the derivation from the paper (printed in the report beside the verdict)."""

    stat: str
    op: str
    threshold: float
    why: str = ""

    def __post_init__(self):
        if self.op not in (">", "<"):
            raise ValueError(f"criterion op must be '>' or '<', got {self.op!r}")

    def text(self) -> str:
        return f"{self.stat} {self.op} {self.threshold:+g} points"


def verdict(lo: float | None, hi: float | None, criterion: Criterion) -> str:
    """Three-state verdict of a 95 % interval [lo, hi] against ``criterion``; ``inconclusive``
    when the interval is missing or straddles the threshold."""
    if lo is None or hi is None:
        return INCONCLUSIVE
    t = criterion.threshold
    above, below = lo > t, hi < t
    if criterion.op == ">":
        return AGREES if above else DISAGREES if below else INCONCLUSIVE
    return AGREES if below else DISAGREES if above else INCONCLUSIVE


def combine(words: list[str]) -> str:
    """Verdict of a claim made of several parts: agrees if every part agrees, does not agree if
    any part does not, else inconclusive (no parts: inconclusive)."""
    if not words:
        return INCONCLUSIVE
    if any(w == DISAGREES for w in words):
        return DISAGREES
    return AGREES if all(w == AGREES for w in words) else INCONCLUSIVE
