"""Paired statistics and three-state verdicts for ``mixerlab compare``, with the seed-to-seed
variation of the trained models inside every interval.

Every run of a comparison is evaluated on the same test images and stores, per image, whether its
prediction was correct. A claim compares two models (or two differences of models) on those
images, each trained with one or more seeds; models are paired by seed.

Image-only statistics (kept; conditional on the seeds that were trained)
-----------------------------------------------------------------------
* :func:`paired_bootstrap`: the difference of accuracies in points with a percentile interval,
  resampling test *images* (Efron & Tibshirani, "An Introduction to the Bootstrap" (1993),
  ch. 13; the paired form of Koehn, "Statistical significance tests for machine translation
  evaluation", EMNLP 2004). With several seeds the per-image value is the mean over seeds, so
  the interval says how much the *test images* move the estimate for *these* trained models;
  the variation between training seeds does not enter it (the reason for the functions below).
* :func:`mcnemar`: McNemar's test on the discordant images of two models (one seed each), exact
  binomial two-sided p-value and its mid-p variant (Fagerland, Lydersen & Laake, "The McNemar test
  for binary matched-pairs data: mid-p and asymptotic are better than exact conditional", BMC
  Medical Research Methodology 13:91, 2013).

Seed-aware statistics (:func:`paired_with_seeds`, :func:`accuracy_with_seeds`, :func:`seed_test`)
---------------------------------------------------------------------------------------------
Training seed and test image are two *crossed* random factors (Bouthillier et al., "Accounting
for variance in machine learning benchmarks", MLSys 2021, who show that ignoring the training
sources of variance gives over-confident comparisons). Write the per-seed, per-image value of the
statistic (``A - B``, or ``(A - B) - (C - D)``, or ``A`` alone) as
``D[s, i] = theta + alpha_s + beta_i + gamma_si`` (seed effect, image effect, interaction). The
quantity estimated, ``theta``, is the expected difference over training seeds *and* test images
(what a claim about two architectures is about). The estimate is the grand mean, whose variance is ``sigma_a^2 / S + sigma_b^2 / N +
sigma_g^2 / (S N)``; the two-way ANOVA mean squares give it without bias as
``(MS_seed + MS_image - MS_resid) / (S N)`` (the crossed random-effects variance; see Owen,
"The pigeonhole bootstrap", Annals of Applied Statistics 1(2), 2007, who also shows that
resampling seeds and images independently over-counts the interaction; and a percentile
bootstrap over 2-5 seeds is over-confident, its variance being (S - 1)/S of the sample variance
with normal-like quantiles instead of t with S - 1 degrees of freedom -- which is why this module
uses the moment formula rather than a hierarchical bootstrap). It is computed as the sum of two
non-negative parts:

* **seed term** ``var_s(d_s) / S``, where ``d_s`` is seed ``s``'s statistic over all test images
  (the "per-seed paired differences"); it carries ``S - 1`` degrees of freedom;
* **image term** ``var_i(Dbar_i) / N - MS_resid / (S N)`` (clipped at 0): the variance of the
  mean of the seed-averaged per-image values -- what resampling images, as
  :func:`paired_bootstrap` does, measures (it is the B -> infinity bootstrap variance, Efron &
  Tibshirani ch. 6) -- less the interaction already counted in the seed term.

The interval is ``estimate +- t(df) * sqrt(seed term + image term)``, floored at the image-only
variance ``var_i(Dbar_i) / N`` (the expected sum, ``sigma_a^2 / S + sigma_b^2 / N + sigma_g^2 /
(S N)``, is never below the image-only term's expectation, ``sigma_b^2 / N + sigma_g^2 / (S N)``;
with 2-3 seeds the seed term alone can come out near 0 by chance while the interaction is
subtracted from the image term, leaving a zero-width interval, which the floor prevents). Its degrees of freedom
follow Welch-Satterthwaite (Satterthwaite, "An approximate distribution of estimates of variance
components", Biometrics Bulletin 2(6), 1946), with one guard (``df_rule="upper"``, the default):
in the df formula only, the seed term is replaced by its one-sided 75 % upper confidence bound
``var_s(d_s) (S - 1) / chi2_{S-1}(0.25) / S``. Plain Welch-Satterthwaite (``df_rule="welch"``)
estimates df from the same few seeds as the variance, so a seed term that comes out small by
chance buys many degrees of freedom; with S = 2-3 its coverage falls to 87-93 % when the seed
variance is 1-10 times the image variance, while the guarded rule stays at >= 94 % for S = 2, 3,
5 over seed/image variance ratios 0.3-100 (a check made for this module, not a published
result: a normal-model simulation with 20 000 repetitions per case, and the per-image Bernoulli
simulation of ``tests/test_stats.py``, which also asserts the plain rule's shortfall at S = 2).
``df_rule="min"`` takes ``S - 1`` (the conservative smallest-df answer to the Behrens-Fisher
problem): >= 95 % always, but at S = 2 the interval is t = 12.7 standard errors wide even when
the image term dominates. With two seeds the interval is wide in any case, the price of an honest
95 % from two seeds (Dror et al., "Deep dominance -- how to properly compare deep neural models",
ACL 2019, on few-seed comparisons); a calibration (below) is the way to narrow it.

**Calibration.** Where a preset cannot pay for several seeds, the seed term comes from a
:class:`Calibration`: the pure seed standard deviation ``sigma_a`` of the statistic (net of the
image noise of each seed's test evaluation) measured elsewhere with >= 5 seeds (:func:`calibrate`,
or ``mixerlab.compare.calibration`` for a committed table). Then the seed term is
``sigma_a^2 / S`` (its degrees of freedom are the calibration's, ``seeds - 1``) and the image term
is the whole image-resampling variance ``var_i(Dbar_i) / N``, which for S seeds is exactly
``sigma_b^2 / N + sigma_g^2 / (S N)``; degrees of freedom by Welch-Satterthwaite, plain (the
calibrated term does not depend on this run's data). With
``seed_term="auto"`` (the default) the seed term is measured when the run has at least
``min_seeds`` seeds (5) or has >= 2 seeds and no calibration, taken from the calibration when one
is given and the run has fewer seeds, and absent (``"none"``: image-only, flagged, and never a
decisive verdict unless asked) with one seed and no calibration. Every record says which
(``seed_source``).

**Dataset-level metrics** (:func:`metric_with_seeds`; compare's E6: COCO box AP, mIoU). A metric
that is not a mean over images has no per-image values to average, so the image term is measured
by recomputing the metric on paired bootstrap resamples of the test images (the same resample for
every seed and both models; the metric of a weighted image set, e.g.
``mixerlab.dense.metrics.ap_from_matches``): ``var_b`` of the seed-averaged difference is the image
term, the mean over seeds of each seed's ``var_b`` less it, over ``S - 1``, the interaction that
the seed term already holds (the bootstrap counterparts of ``var_i(Dbar_i) / N`` and
``MS_resid / (S N)``). Seed term, calibration, the floor, degrees of freedom and the records are as
above; for a per-image mean it agrees with :func:`paired_with_seeds` up to the bootstrap's error
(``tests/test_compare_dense.py``).

Verdicts
--------
* :class:`Criterion` and :func:`verdict`: a claim is fixed *before* the run as "the difference is
  above (or below) a threshold"; the verdict is **agrees** when the whole 95 % interval is on the
  claim's side, **does not agree** when the whole interval is on the other side, and
  **inconclusive** when the interval allows both answers. :func:`judge` applies it to a seed-aware
  record and adds ``p_flip``: the probability that a rerun with ``rerun_seeds`` new seeds on the
  same test images gives a point estimate on the other side of the threshold, from the normal
  predictive distribution ``N(estimate, v_seed * (1/S + 1/S'))`` where ``v_seed`` is the variance
  of one seed's statistic between seeds (the shared test images cancel between the two runs).
* :func:`holm`: several criteria of one experiment, corrected for multiplicity with Holm's
  step-down procedure (Holm, "A simple sequentially rejective multiple test procedure",
  Scandinavian Journal of Statistics 6(2), 1979): each criterion's two-sided p-value of
  "statistic = threshold" is compared with ``alpha / (m - j + 1)`` in increasing order, and its
  interval is recomputed at that level, so that a verdict is decisive exactly when Holm rejects.
"""
from __future__ import annotations

import functools
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
    """Accuracy of A minus B in points, with a paired bootstrap interval over test images only
    (the seeds are averaged per image first, so seed-to-seed variation is *not* in the interval;
    :func:`paired_with_seeds` includes it).

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


# -- Student's t without SciPy ------------------------------------------------------------------
_NORMAL = None


def _normal():
    global _NORMAL
    if _NORMAL is None:
        from statistics import NormalDist
        _NORMAL = NormalDist()
    return _NORMAL


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by its continued fraction (Abramowitz & Stegun
    26.5.8), evaluated with the modified Lentz method; the symmetry I_x(a, b) = 1 - I_{1-x}(b, a)
    keeps the fraction in its fast-converging range x < (a + 1) / (a + b + 2)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = (a * math.log(x) + b * math.log1p(-x)
                 - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)) - math.log(a))
    tiny = 1e-300
    # modified Lentz on the fraction 1 + d1/(1 + d2/(1 + ...)), then f -> 1/f
    f, c, d = 1.0, 1.0, 0.0
    for k in range(1, 400):
        m = k // 2
        if k % 2:  # d_{2m+1}
            coef = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:  # d_{2m}
            coef = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + coef * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + coef / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = c * d
        f *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return math.exp(log_front) / f


def t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with ``df`` (> 0, may be fractional or ``inf``) degrees of
    freedom: 1 - I_{df/(df+x^2)}(df/2, 1/2) / 2 for x >= 0 (Abramowitz & Stegun 26.7.1)."""
    if df <= 0 or math.isnan(df):
        raise ValueError(f"t distribution needs df > 0, got {df}")
    if math.isinf(df) or df > 1e7:
        return _normal().cdf(x)
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + x * x))
    return 1.0 - tail if x >= 0 else tail


def _t_pdf(x: float, df: float) -> float:
    return math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
                    - (df + 1) / 2 * math.log1p(x * x / df))


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (Newton's method on
    :func:`t_cdf`, kept inside a bisection bracket)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {p}")
    if df <= 0 or math.isnan(df):
        raise ValueError(f"t distribution needs df > 0, got {df}")
    if math.isinf(df) or df > 1e7:
        return _normal().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    z = _normal().inv_cdf(p)
    lo, hi = z if df >= 1 else 0.0, 1.0  # t quantiles are above the normal ones for df >= 1
    while t_cdf(hi, df) < p:
        hi *= 2.0
    x = min(max(z + (z ** 3 + z) / (4 * df), lo), hi)  # Cornish-Fisher start
    for _ in range(100):
        err = t_cdf(x, df) - p
        if abs(err) < 1e-13:
            break
        if err > 0:
            hi = x
        else:
            lo = x
        step = x - err / _t_pdf(x, df)
        x = step if lo < step < hi else 0.5 * (lo + hi)
        if hi - lo < 1e-12 * max(1.0, abs(x)):
            break
    return x


def chi2_cdf(x: float, df: float) -> float:
    """P(X <= x) for a chi-square with ``df`` degrees of freedom: the regularized lower
    incomplete gamma P(df/2, x/2) by its power series (Abramowitz & Stegun 6.5.29)."""
    if df <= 0:
        raise ValueError(f"chi-square needs df > 0, got {df}")
    if x <= 0:
        return 0.0
    a, h = df / 2.0, x / 2.0
    term = total = 1.0 / a
    k = 0
    while abs(term) > 1e-17 * abs(total) and k < 10_000:
        k += 1
        term *= h / (a + k)
        total += term
    return min(1.0, math.exp(a * math.log(h) - h - math.lgamma(a)) * total)


@functools.lru_cache(maxsize=256)
def chi2_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of a chi-square with ``df`` degrees of freedom (bisection on
    :func:`chi2_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {p}")
    lo, hi = 0.0, max(1.0, 2.0 * df)
    while chi2_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if chi2_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# -- seed-aware statistics ----------------------------------------------------------------------
SEEDS, CALIBRATION, NONE = "seeds", "calibration", "none"
DF_RULES = ("upper", "welch", "min")


@dataclass(frozen=True)
class Calibration:
    """A seed standard deviation measured elsewhere, for runs that cannot pay for several seeds.

    ``sd``: the *pure* seed SD of the statistic in points (between-seed SD of one seed's value,
    net of the image noise of each seed's test evaluation; :func:`calibrate` measures it);
    ``seeds``: how many seeds it was measured with (its degrees of freedom are ``seeds - 1``;
    ``None``: treated as known exactly); ``what``: where it comes from (printed in the report)."""

    sd: float
    seeds: int | None = None
    what: str = ""

    def __post_init__(self):
        if not (isinstance(self.sd, (int, float)) and math.isfinite(self.sd)) or self.sd < 0:
            raise ValueError(f"calibration seed SD must be a finite number >= 0 points, got {self.sd!r}")
        if self.seeds is not None and self.seeds < 2:
            raise ValueError(f"a calibration needs >= 2 seeds (>= 5 recommended), got {self.seeds}")

    @property
    def df(self) -> float:
        return math.inf if self.seeds is None else float(self.seeds - 1)


def _stack_runs(runs, seed_ids=None):
    """Align 1, 2 or 4 runs by seed. Each run is a (images,) vector, a (seeds, images) matrix
    (rows paired by position) or a mapping seed id -> (images,) vector (paired by seed id, keeping
    the seeds every run has). Returns the (K, S, N) array, the seed ids and the dropped ids."""
    if any(isinstance(r, dict) for r in runs):
        if not all(isinstance(r, dict) for r in runs):
            raise ValueError("pass every run as a {seed: correctness} mapping, or none")
        common = set(runs[0])
        for r in runs[1:]:
            common &= set(r)
        every = set().union(*[set(r) for r in runs])
        if not common:
            raise ValueError("no seed common to all runs: models are paired by seed"
                             + (f" (seeds per run: {[sorted(r) for r in runs]})" if every else " (no seeds)"))
        ids = sorted(common)
        mats = [np.stack([np.asarray(r[k], dtype=np.float64).reshape(-1) for k in ids]) for r in runs]
        dropped = sorted(every - common)
    else:
        mats = []
        for r in runs:
            a = np.asarray(r, dtype=np.float64)
            a = a[None, :] if a.ndim == 1 else a
            if a.ndim != 2:
                raise ValueError(f"expected per-image correctness of shape (images,) or (seeds, images), got {a.shape}")
            mats.append(a)
        dropped = []
        ids = None
    counts = [m.shape[0] for m in mats]
    if min(counts) == 0:
        raise ValueError("no seeds: every run needs at least one seed's per-image correctness")
    if len(set(counts)) != 1:
        raise ValueError(f"runs are paired by seed but have {counts} seeds; pass {{seed: correctness}} "
                         "mappings to pair them by seed id")
    sizes = sorted({m.shape[1] for m in mats})
    if len(sizes) != 1:
        raise ValueError(f"paired comparison needs the same test images for every run, got sizes {sizes}")
    if sizes[0] == 0:
        raise ValueError("no test images")
    x = np.stack(mats)
    if not np.all(np.isfinite(x)):
        raise ValueError("per-image correctness contains NaN or infinite values")
    if ids is None:
        ids = list(range(counts[0])) if seed_ids is None else list(seed_ids)
        if len(ids) != counts[0]:
            raise ValueError(f"{len(ids)} seed ids for {counts[0]} seeds")
    return x, ids, dropped


def _check_calibration(calibration):
    if calibration is None or isinstance(calibration, Calibration):
        return calibration
    if isinstance(calibration, (int, float)):
        return Calibration(float(calibration))  # validates the sign
    raise ValueError(f"calibration must be a Calibration or a seed SD in points, got {calibration!r}")


def _welch_df(terms) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variance estimates (value, df)."""
    total = sum(v for v, _ in terms)
    denom = sum(v * v / df for v, df in terms if v > 0 and math.isfinite(df))
    if total <= 0:
        return math.inf
    return math.inf if denom == 0 else total * total / denom


def _seed_stat(x: np.ndarray, weights, *, calibration=None, level=0.95, seed_term="auto", min_seeds=5,
               df_rule="upper", seed_ids=None, dropped=()) -> dict:
    """The seed-aware record of the statistic sum_k weights[k] * x[k] (x: (K, S, N) in 0..1)."""
    if df_rule not in DF_RULES:
        raise ValueError(f"df_rule must be one of {DF_RULES}, got {df_rule!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if seed_term not in ("auto", SEEDS, CALIBRATION, NONE):
        raise ValueError(f"seed_term must be 'auto', 'seeds', 'calibration' or 'none', got {seed_term!r}")
    cal = _check_calibration(calibration)
    d = 100.0 * np.tensordot(np.asarray(weights, dtype=np.float64), x, axes=1)  # (S, N) in points
    s, n = d.shape
    per_seed = d.mean(axis=1)
    est = float(per_seed.mean())
    dbar = d.mean(axis=0)
    v_image_all = float(dbar.var(ddof=1)) / n if n > 1 else 0.0  # image resampling of the seed means
    if s >= 2:
        s2_seed = float(per_seed.var(ddof=1))
        resid = d - per_seed[:, None] - dbar[None, :] + est
        ms_resid = float((resid * resid).sum()) / ((s - 1) * max(n - 1, 1))
        pure_seed_var = max(0.0, s2_seed - ms_resid / n)
    else:
        s2_seed = ms_resid = pure_seed_var = None
    source = seed_term
    if source == "auto":
        if s >= 2 and (cal is None or s >= min_seeds):
            source = SEEDS
        elif cal is not None:
            source = CALIBRATION
        else:
            source = NONE
    if source == SEEDS and s < 2:
        raise ValueError("seed_term='seeds' needs at least 2 seeds")
    if source == CALIBRATION and cal is None:
        raise ValueError("seed_term='calibration' needs a calibration")
    if source == SEEDS:
        v_seed, df_seed = s2_seed / s, float(s - 1)
        # never narrower than resampling the images alone (module docstring, "floor"): with few
        # seeds the seed term can come out near 0 by chance while the interaction it should carry
        # is subtracted from the image term, which would leave a zero-width interval
        v_image = max(0.0, v_image_all - ms_resid / (s * n), v_image_all - v_seed)
        v_between = s2_seed  # variance of one seed's statistic between seeds
    elif source == CALIBRATION:
        v_seed, df_seed = cal.sd ** 2 / s, cal.df
        v_image = v_image_all
        # one seed's image interaction: measured (MS_resid / N) with >= 2 seeds, else bounded by
        # the whole per-image variance of the single seed (conservative)
        v_between = cal.sd ** 2 + (ms_resid / n if s >= 2 else v_image_all)
    else:
        v_seed, df_seed = 0.0, math.inf
        v_image = v_image_all
        v_between = v_image_all * s  # image noise of one seed only: seed variation unknown
    var = v_seed + v_image
    df_image = float(max(n - 1, 1))
    if source == SEEDS and df_rule == "min":
        df = df_seed
    elif source == SEEDS and df_rule == "upper":
        # the seed term at its one-sided 75 % upper confidence bound, for the df only: a seed term
        # that came out small by chance must not buy many degrees of freedom (module docstring)
        df = _welch_df([(v_seed * df_seed / chi2_quantile(0.25, df_seed), df_seed), (v_image, df_image)])
    else:
        df = _welch_df([(v_seed, df_seed), (v_image, df_image)])
    half = t_quantile(0.5 + level / 2.0, df) * math.sqrt(var) if var > 0 else 0.0
    notes = []
    if source == NONE:
        notes.append("one seed and no calibration: the interval covers test images only")
    if dropped:
        notes.append(f"seeds {dropped} not in every run, left out")
    return dict(diff=est, lo=est - half, hi=est + half, se=math.sqrt(var), df=df, level=level, n=n,
                seeds=s, seed_ids=list(seed_ids) if seed_ids is not None else list(range(s)),
                per_seed=[float(v) for v in per_seed],
                seed_sd=None if s2_seed is None else math.sqrt(s2_seed),
                seed_sd_pure=None if pure_seed_var is None else math.sqrt(pure_seed_var),
                seed_source=source, seed_var=v_seed, image_var=v_image, between_seed_var=v_between,
                calibration_sd=None if cal is None else cal.sd,
                calibration_seeds=None if cal is None else cal.seeds,
                calibration_what=None if cal is None else cal.what,
                note="; ".join(notes) or None)


def paired_with_seeds(correct_a, correct_b, correct_c=None, correct_d=None, *, calibration=None,
                      level: float = 0.95, seed_term: str = "auto", min_seeds: int = 5,
                      df_rule: str = "upper", seed_ids=None) -> dict:
    """Accuracy of A minus B in points (or (A - B) - (C - D) with ``correct_c`` and
    ``correct_d``), models paired by seed, with an interval holding both the test-image and the
    training-seed variation (module docstring).

    Each run is (images,), (seeds, images) (rows paired by position; ``seed_ids`` names them) or
    a mapping ``{seed: (images,) vector}`` (paired by seed id; seeds not in every run are left
    out and named in ``note``). ``calibration``: a :class:`Calibration` (or a seed SD in points)
    of this statistic, used when the run has fewer than ``min_seeds`` seeds; ``seed_term``:
    ``"auto"``, or force ``"seeds"`` / ``"calibration"`` / ``"none"``; ``df_rule``: degrees of
    freedom of a measured seed term, ``"upper"`` (default), ``"welch"`` or ``"min"`` (module
    docstring).

    Returns a dict: ``diff`` (points), ``lo``, ``hi`` (the ``level`` interval), ``se``, ``df``,
    ``level``, ``n`` (images), ``seeds``, ``seed_ids``, ``per_seed`` (the statistic of each seed,
    points), ``seed_sd`` (their SD; None with one seed), ``seed_sd_pure`` (net of image noise),
    ``seed_source`` (``"seeds"``, ``"calibration"`` or ``"none"``), ``seed_var`` and
    ``image_var`` (the two parts of ``se**2``), ``between_seed_var`` (variance of one seed's
    statistic, for :func:`judge`), ``calibration_sd``, ``calibration_seeds``,
    ``calibration_what`` and ``note``.
    """
    runs = [r for r in (correct_a, correct_b, correct_c, correct_d) if r is not None]
    if len(runs) not in (2, 4) or (correct_c is None) != (correct_d is None):
        raise ValueError("paired_with_seeds takes two or four correctness arrays")
    x, ids, dropped = _stack_runs(runs, seed_ids)
    w = [1.0, -1.0] if len(runs) == 2 else [1.0, -1.0, -1.0, 1.0]
    return _seed_stat(x, w, calibration=calibration, level=level, seed_term=seed_term,
                      min_seeds=min_seeds, df_rule=df_rule, seed_ids=ids, dropped=dropped)


def accuracy_with_seeds(correct, *, calibration=None, level: float = 0.95, seed_term: str = "auto",
                        min_seeds: int = 5, df_rule: str = "upper", seed_ids=None) -> dict:
    """Top-1 of one configuration in points with the seed-aware interval: the record of
    :func:`paired_with_seeds` with ``value`` (= ``diff``) the accuracy."""
    x, ids, dropped = _stack_runs([correct], seed_ids)
    rec = _seed_stat(x, [1.0], calibration=calibration, level=level, seed_term=seed_term,
                     min_seeds=min_seeds, df_rule=df_rule, seed_ids=ids, dropped=dropped)
    rec["value"] = rec["diff"]
    return rec


def calibrate(correct_a, correct_b=None, correct_c=None, correct_d=None, *, min_seeds: int = 5,
              what: str = "", seed_ids=None) -> Calibration:
    """The pure seed SD (points) of a statistic measured on a run with >= ``min_seeds`` seeds:
    one run (an accuracy), two (A - B) or four ((A - B) - (C - D)), shaped as for
    :func:`paired_with_seeds`. It is ``sqrt(max(0, var_s(d_s) - MS_resid / N))``, the seed
    component of the crossed random-effects model (module docstring)."""
    runs = [r for r in (correct_a, correct_b, correct_c, correct_d) if r is not None]
    if len(runs) not in (1, 2, 4):
        raise ValueError("calibrate takes one, two or four correctness arrays")
    x, ids, _ = _stack_runs(runs, seed_ids)
    if x.shape[1] < min_seeds:
        raise ValueError(f"a calibration needs >= {min_seeds} seeds, got {x.shape[1]}")
    w = {1: [1.0], 2: [1.0, -1.0], 4: [1.0, -1.0, -1.0, 1.0]}[len(runs)]
    rec = _seed_stat(x, w, seed_term=SEEDS, seed_ids=ids)
    return Calibration(rec["seed_sd_pure"], seeds=x.shape[1], what=what)


# -- verdicts on seed-aware records -------------------------------------------------------------
def _rerun_p_flip(rec: dict, threshold: float, rerun_seeds: int | None) -> float | None:
    s2 = rerun_seeds or rec["seeds"]
    v = rec["between_seed_var"] * (1.0 / rec["seeds"] + 1.0 / s2)
    gap = rec["diff"] - threshold
    if v <= 0:
        return 0.5 if gap == 0 else 0.0
    return _normal().cdf(-abs(gap) / math.sqrt(v))


def judge(rec: dict, criterion: Criterion, *, rerun_seeds: int | None = None,
          allow_image_only: bool = False) -> dict:
    """The record of :func:`paired_with_seeds` with its verdict against ``criterion``.

    Adds ``stat``, ``criterion`` (text), ``why``, ``op``, ``threshold``, ``verdict`` (agrees only
    when the whole interval is on the claim's side, does not agree when wholly on the other,
    else inconclusive; with ``seed_source == "none"`` always inconclusive unless
    ``allow_image_only``) and ``p_flip``: the probability that a rerun with ``rerun_seeds`` new
    seeds (default: as many as this run) on the same test images puts its estimate on the other
    side of the threshold (normal predictive distribution, module docstring)."""
    out = dict(rec, stat=criterion.stat, criterion=criterion.text(), why=criterion.why, op=criterion.op,
               threshold=criterion.threshold)
    if rerun_seeds is not None and rerun_seeds < 1:
        raise ValueError(f"rerun_seeds must be >= 1, got {rerun_seeds}")
    word = verdict(rec["lo"], rec["hi"], criterion)
    if rec["seed_source"] == NONE and not allow_image_only and word != INCONCLUSIVE:
        word = INCONCLUSIVE
        out["note"] = "; ".join(x for x in (rec.get("note"), "no seed term, so no decisive verdict") if x)
    out["verdict"] = word
    out["p_flip"] = _rerun_p_flip(rec, criterion.threshold, rerun_seeds)
    return out


def seed_test(criterion: Criterion, correct_a, correct_b, correct_c=None, correct_d=None, *,
              calibration=None, rerun_seeds: int | None = None, allow_image_only: bool = False,
              **kw) -> dict:
    """:func:`paired_with_seeds` then :func:`judge`: the seed-aware counterpart of
    ``report.paired_test`` for one criterion (``kw``: ``level``, ``seed_term``, ``min_seeds``,
    ``df_rule``, ``seed_ids``)."""
    rec = paired_with_seeds(correct_a, correct_b, correct_c, correct_d, calibration=calibration, **kw)
    return judge(rec, criterion, rerun_seeds=rerun_seeds, allow_image_only=allow_image_only)


def p_value(rec: dict, threshold: float) -> float:
    """Two-sided p-value of "statistic = threshold" from a seed-aware record (t with the record's
    df): the record's ``level`` interval excludes the threshold exactly when p < 1 - level."""
    gap = rec["diff"] - threshold
    if rec["se"] <= 0:
        return 1.0 if gap == 0 else 0.0
    return min(1.0, 2.0 * (1.0 - t_cdf(abs(gap) / rec["se"], rec["df"])))


def holm(records: list[dict], alpha: float | None = None, *, allow_image_only: bool = False) -> list[dict]:
    """Holm's step-down correction over the criteria of one experiment (judged records of
    :func:`judge` / :func:`seed_test`; records without an interval, e.g. missing runs, count
    towards m with p = 1 and stay inconclusive).

    With p-values sorted increasingly, criterion j (1-based) is decided at level
    ``alpha / (m - j + 1)`` as long as every earlier one was; once one is not, the rest are tested
    at that same level (and cannot be decided). Each returned record (same order as given) has
    ``p`` (unadjusted), ``p_holm`` (adjusted: running max of ``(m - k + 1) p_(k)``),
    ``holm_level`` (the interval's confidence level, ``1 - alpha_j``), ``lo``/``hi`` recomputed
    at that level (``lo_unadjusted``/``hi_unadjusted`` kept), ``verdict`` from the adjusted
    interval (``verdict_unadjusted`` kept) and ``m``. ``alpha`` defaults to 1 - the records'
    level."""
    m = len(records)
    if m == 0:
        return []
    levels = {r.get("level", 0.95) for r in records if r.get("se") is not None}
    if alpha is None:
        alpha = 1.0 - (levels.pop() if len(levels) == 1 else 0.95)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    ps = []
    for r in records:
        usable = r.get("se") is not None and r.get("diff") is not None and "threshold" in r
        if usable and (r.get("seed_source") != NONE or allow_image_only):
            ps.append(p_value(r, r["threshold"]))
        else:
            ps.append(1.0)
    order = sorted(range(m), key=lambda i: ps[i])
    adj, running, stopped_level = [0.0] * m, 0.0, None
    level_of = [0.0] * m
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * ps[i]))
        adj[i] = running
        a_j = alpha / (m - j)
        if stopped_level is None and ps[i] > a_j:
            stopped_level = a_j
        level_of[i] = a_j if stopped_level is None else stopped_level
    out = []
    for i, r in enumerate(records):
        new = dict(r, p=ps[i], p_holm=adj[i], holm_level=1.0 - level_of[i], m=m,
                   verdict_unadjusted=r.get("verdict", INCONCLUSIVE),
                   lo_unadjusted=r.get("lo"), hi_unadjusted=r.get("hi"))
        if r.get("se") is not None and r.get("diff") is not None and "threshold" in r:
            half = t_quantile(1.0 - level_of[i] / 2.0, r["df"]) * r["se"] if r["se"] > 0 else 0.0
            new.update(lo=r["diff"] - half, hi=r["diff"] + half)
            crit = Criterion(r.get("stat", ""), r["op"], r["threshold"])
            word = verdict(new["lo"], new["hi"], crit)
            if r.get("seed_source") == NONE and not allow_image_only:
                word = INCONCLUSIVE
            new["verdict"] = word
        else:
            new["verdict"] = INCONCLUSIVE
        out.append(new)
    return out


# -- seed-aware intervals of a dataset-level metric (AP, mIoU) ------------------------------------
def bootstrap_weights(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) image counts of ``n_boot`` resamples of ``n`` test images with replacement
    (multinomial; ``numpy.random.default_rng(seed)``): row b counts how often each image is drawn."""
    if n < 1 or n_boot < 2:
        raise ValueError(f"a bootstrap needs >= 1 image and >= 2 resamples, got {n} and {n_boot}")
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def metric_with_seeds(metric, runs_a: dict, runs_b: dict, *, n_images: int, n_boot: int = 200,
                      boot_seed: int = 0, scale: float = 100.0, calibration=None, level: float = 0.95,
                      seed_term: str = "auto", min_seeds: int = 5, df_rule: str = "upper") -> dict:
    """A - B of a *dataset-level* metric (COCO AP, mIoU: not a mean of per-image values), models
    paired by seed and by test image, with the seed-aware interval of :func:`paired_with_seeds`'s
    conventions (same keys, ``seed_source``, ``df_rule``, the image-only floor, :func:`judge` and
    :func:`holm` apply unchanged).

    ``metric(run, weights)``: the metric of ``run`` (whatever a run's per-image record is, e.g.
    ``mixerlab.dense.metrics.coco_matches``) on its ``n_images`` test images each counted
    ``weights[i]`` times (``None``: once each), as a fraction; ``runs_a`` / ``runs_b``: ``{seed:
    run}``, paired by seed id (seeds not in both are left out, named in ``note``). Differences are
    reported times ``scale`` (100: points).

    The crossed seed x image decomposition of the module docstring, with the image resampling
    done by recomputing the metric (no per-image values to average):

    * per-seed differences ``d_s`` on all test images; **seed term** ``var_s(d_s) / S`` with
      ``S - 1`` degrees of freedom (>= 2 seeds), or the calibration's;
    * ``n_boot`` paired resamples of the test images (:func:`bootstrap_weights`, the same images
      for every seed and both models): ``D[b, s]`` is seed s's difference on resample b. The image
      variance of the seed-averaged difference is ``var_b(mean_s D[b, s])`` (the bootstrap
      estimate of ``sigma_b^2 / N + sigma_g^2 / (S N)``); the mean over seeds of
      ``var_b(D[b, s])`` estimates ``sigma_b^2 / N + sigma_g^2 / N``, so their difference times
      ``1 / (S - 1)`` is the interaction ``sigma_g^2 / (S N)`` already in the seed term, which the
      image term gives back (as ``MS_resid / (S N)`` does for per-image correctness) -- never
      below the image-only variance ``var_b(mean_s D[b, s])`` in total (the floor).

    For a metric that is a mean of per-image values (accuracy) this is :func:`paired_with_seeds`
    with the moment formulas replaced by their bootstrap estimates (``tests/test_compare_dense.py``
    checks the two against each other). Returns the record of :func:`paired_with_seeds` plus
    ``n_boot`` and ``boot_seed``."""
    if df_rule not in DF_RULES:
        raise ValueError(f"df_rule must be one of {DF_RULES}, got {df_rule!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if seed_term not in ("auto", SEEDS, CALIBRATION, NONE):
        raise ValueError(f"seed_term must be 'auto', 'seeds', 'calibration' or 'none', got {seed_term!r}")
    if not isinstance(runs_a, dict) or not isinstance(runs_b, dict):
        raise ValueError("metric_with_seeds takes two {seed: run} mappings")
    ids = sorted(set(runs_a) & set(runs_b))
    dropped = sorted(set(runs_a) ^ set(runs_b))
    if not ids:
        raise ValueError(f"no seed common to both runs: models are paired by seed (seeds: {sorted(runs_a)} "
                         f"and {sorted(runs_b)})")
    cal = _check_calibration(calibration)
    n, s = int(n_images), len(ids)
    if n < 1:
        raise ValueError(f"no test images (n_images={n_images})")

    def diff(k, w=None):
        va, vb = metric(runs_a[k], w), metric(runs_b[k], w)
        if not (math.isfinite(va) and math.isfinite(vb)):
            raise ValueError(f"the metric is not finite for seed {k} ({va}, {vb})")
        return scale * (va - vb)

    per_seed = np.array([diff(k) for k in ids])
    est = float(per_seed.mean())
    weights = bootstrap_weights(n, n_boot, boot_seed)
    boot = np.array([[diff(k, w) for k in ids] for w in weights])  # (n_boot, S)
    v_image_all = float(boot.mean(axis=1).var(ddof=1))
    if s >= 2:
        s2_seed = float(per_seed.var(ddof=1))
        within = float(boot.var(axis=0, ddof=1).mean())  # one seed's image variance, averaged
        inter = max(0.0, (within - v_image_all) / (s - 1))  # sigma_g^2 / (S N)
        pure_seed_var = max(0.0, s2_seed - s * inter)
    else:
        s2_seed = inter = pure_seed_var = None
    source = seed_term
    if source == "auto":
        if s >= 2 and (cal is None or s >= min_seeds):
            source = SEEDS
        elif cal is not None:
            source = CALIBRATION
        else:
            source = NONE
    if source == SEEDS and s < 2:
        raise ValueError("seed_term='seeds' needs at least 2 seeds")
    if source == CALIBRATION and cal is None:
        raise ValueError("seed_term='calibration' needs a calibration")
    if source == SEEDS:
        v_seed, df_seed = s2_seed / s, float(s - 1)
        v_image = max(0.0, v_image_all - inter, v_image_all - v_seed)  # the floor, as in _seed_stat
        v_between = s2_seed
    elif source == CALIBRATION:
        v_seed, df_seed = cal.sd ** 2 / s, cal.df
        v_image = v_image_all
        v_between = cal.sd ** 2 + (s * inter if s >= 2 else v_image_all)
    else:
        v_seed, df_seed = 0.0, math.inf
        v_image = v_image_all
        v_between = v_image_all * s
    var = v_seed + v_image
    df_image = float(max(n - 1, 1))
    if source == SEEDS and df_rule == "min":
        df = df_seed
    elif source == SEEDS and df_rule == "upper":
        df = _welch_df([(v_seed * df_seed / chi2_quantile(0.25, df_seed), df_seed), (v_image, df_image)])
    else:
        df = _welch_df([(v_seed, df_seed), (v_image, df_image)])
    half = t_quantile(0.5 + level / 2.0, df) * math.sqrt(var) if var > 0 else 0.0
    notes = []
    if source == NONE:
        notes.append("one seed and no calibration: the interval covers test images only")
    if dropped:
        notes.append(f"seeds {dropped} not in every run, left out")
    return dict(diff=est, lo=est - half, hi=est + half, se=math.sqrt(var), df=df, level=level, n=n,
                seeds=s, seed_ids=list(ids), per_seed=[float(v) for v in per_seed],
                seed_sd=None if s2_seed is None else math.sqrt(s2_seed),
                seed_sd_pure=None if pure_seed_var is None else math.sqrt(pure_seed_var),
                seed_source=source, seed_var=v_seed, image_var=v_image, between_seed_var=v_between,
                calibration_sd=None if cal is None else cal.sd,
                calibration_seeds=None if cal is None else cal.seeds,
                calibration_what=None if cal is None else cal.what,
                n_boot=int(n_boot), boot_seed=int(boot_seed), note="; ".join(notes) or None)
