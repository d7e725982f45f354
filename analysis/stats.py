"""Statistics for comparing meta-learning variants (PROTOCOL.md, "Statistics the users expect").

Pure functions over numpy arrays. Two units of replication matter and are kept apart:

- evaluation tasks: the papers' ``mean ± 1.96·sd/√n`` and the paired per-task tests measure how
  much the drawn tasks move the result for *one* trained model;
- seeds: retraining is the real replication; ``bootstrap_seed_ci`` and ``seed_level_test`` work
  at that level. Every seed meets the same tasks, so the bootstrap resamples seeds and one
  common set of tasks per replicate.

Non-finite inputs are always rejected: a diverged run reported as NaN must never be averaged in,
or silently dropped, by a statistic.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np


def _scipy():
    """scipy.stats, imported when a test of significance is computed: a trial's process (which
    summarises its own rows with mean_ci) never pays its import (0.4 s a process)."""
    from scipy import stats

    return stats


__all__ = [
    "mean_ci",
    "bootstrap_seed_ci",
    "holm",
    "paired_test",
    "compare_to_baseline",
    "all_pairs",
    "average_ranks",
    "friedman",
    "not_significantly_worse",
    "seed_level_test",
]

# Exact two-sided Wilcoxon over n seeds cannot go below 2 / 2**n: 0.0625 for 5 seeds, 0.03125 for 6.
MIN_SEEDS_FOR_WILCOXON = 6

# Rows of task indices drawn at once by the bootstrap: bounds memory at ~_CHUNK_ELEMS int64s.
_CHUNK_ELEMS = 4_000_000


# ---------------------------------------------------------------------------------------------
# input checks


def _finite_1d(values, name: str = "values") -> np.ndarray:
    """A non-empty 1-D float array; NaN/inf rejected because they mark diverged results."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of per-task values, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name}: is empty")
    _reject_non_finite(x, name)
    return x


def _reject_non_finite(x: np.ndarray, name: str) -> None:
    n_nan = int(np.isnan(x).sum())
    if n_nan:
        raise ValueError(
            f"{name} contain NaN ({n_nan} of {x.size} entries): diverged results must be "
            "excluded or reported explicitly, not averaged in"
        )
    n_inf = int(np.isinf(x).sum())
    if n_inf:
        raise ValueError(f"{name} contain inf ({n_inf} of {x.size} entries): diverged results?")


def _same_tasks(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check every variant was evaluated on the same tasks, naming the variant that was not."""
    out = {k: _finite_1d(v, f"values[{k!r}]") for k, v in values.items()}
    lengths = {k: v.size for k, v in out.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            "paired comparison needs every variant on the same evaluation tasks; "
            f"per-variant task counts differ: {lengths}"
        )
    return out


def _check_scores(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=float)
    if s.ndim != 2:
        raise ValueError(f"scores: expected shape [n_settings, n_variants], got shape {s.shape}")
    if s.size == 0:
        raise ValueError(f"scores: is empty (shape {s.shape})")
    _reject_non_finite(s, "scores")
    return s


# ---------------------------------------------------------------------------------------------
# intervals


def mean_ci(values, z: float = 1.96) -> tuple[float, float]:
    """Mean and half-width ``z·sd/√n`` over evaluation tasks: the papers' reported interval.

    ``sd`` uses ``ddof=0`` (``np.std``'s default) because that is what the papers' code computed;
    matching it keeps our numbers comparable with published tables. The interval only reflects
    which tasks were drawn for one trained model, not retraining (see ``bootstrap_seed_ci``).
    With a single value the half-width is NaN: there is no spread to report.
    """
    x = _finite_1d(values)
    n = x.size
    half = float(z * x.std(ddof=0) / np.sqrt(n)) if n > 1 else float("nan")
    return float(x.mean()), half


def _task_resample_means(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` means of ``x`` resampled with replacement, drawn in row chunks to bound memory."""
    n = x.size
    rows = max(1, _CHUNK_ELEMS // n)
    out = np.empty(k)
    for start in range(0, k, rows):
        stop = min(k, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = x[idx].mean(axis=1)
    return out


def _seed_counts(gen: np.random.Generator, n_boot: int, n_seeds: int) -> np.ndarray:
    """Level 1 of the bootstrap: ``counts[b, s]`` = copies of seed s drawn in replicate b; shape
    [n_boot, n_seeds], each row sums to n_seeds."""
    picks = gen.integers(0, n_seeds, size=(n_boot, n_seeds))
    flat = (np.arange(n_boot)[:, None] * n_seeds + picks).ravel()
    return np.bincount(flat, minlength=n_boot * n_seeds).reshape(n_boot, n_seeds)


def _shared_tasks_exact(x: np.ndarray, counts: np.ndarray, gen: np.random.Generator) -> np.ndarray:
    """Replicate means with one common task resample per replicate; x [seeds, tasks], counts
    [n_boot, seeds] -> [n_boot]. Replicate b is (1/(S·n)) Σ_s Σ_t counts[b, s] · x[s, t] · k[b, t],
    k[b, t] the copies of task t drawn (n draws with replacement, the same for every seed)."""
    n_boot, (n_seeds, n) = counts.shape[0], x.shape
    rows = max(1, _CHUNK_ELEMS // n)
    out = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = gen.integers(0, n, size=(stop - start, n))
        flat = (np.arange(stop - start)[:, None] * n + idx).ravel()
        task_counts = np.bincount(flat, minlength=(stop - start) * n).reshape(stop - start, n)
        out[start:stop] = ((counts[start:stop] @ x) * task_counts).sum(axis=1) / (n_seeds * n)
    return out


def _shared_tasks_normal(x: np.ndarray, counts: np.ndarray, gen: np.random.Generator) -> np.ndarray:
    """The same replicate means as ``_shared_tasks_exact`` (same seed draws), the common task
    resample drawn from its normal limit: given the seeds of replicate b, the seed-weighted task
    values y_b[t] = (1/S) Σ_s counts[b, s] x[s, t] have mean c_b·m/S and variance c_b' C c_b / S²
    over tasks (m the seeds' task means, C their covariance across tasks, ddof 0), so the mean of n
    resampled tasks is ~ N(c_b·m/S, c_b' C c_b / (S² n)). Costs O(n_boot · S²) after one pass over x."""
    n_seeds, n = x.shape
    m = x.mean(axis=1)
    centred = x - m[:, None]
    cov = centred @ centred.T / n
    c = counts.astype(float)
    var = np.einsum("bs,st,bt->b", c, cov, c) / (n_seeds**2 * n)
    return c @ m / n_seeds + np.sqrt(np.maximum(var, 0.0)) * gen.standard_normal(counts.shape[0])


def bootstrap_seed_ci(
    per_seed_task_values,
    n_boot: int = 2000,
    level: float = 0.95,
    rng=0,
    *,
    shared_tasks: bool = True,
    task_level: str = "exact",
) -> tuple[float, float, float]:
    """Mean over seeds of per-seed means, and a two-level percentile bootstrap CI ``(lo, hi)``.

    Seeds are the unit of replication (PROTOCOL.md), so each replicate resamples seeds with
    replacement, then tasks: both sources of variation enter the interval.

    - ``shared_tasks=True`` (every seed met the same tasks, as in a sweep): the input is one
      array [seeds, tasks] (or a list of equal-length per-seed arrays, task t at position t), and
      each replicate draws **one** set of task indices used by every seed it drew. Resampling tasks
      independently per seed would average the task effect away over seeds and make the interval
      too narrow when tasks vary more than seeds.
    - ``shared_tasks=False`` (each seed met its own tasks): a list of 1-D arrays, possibly of
      different lengths; each resampled seed resamples its own tasks. Seeds count equally
      whatever their number of tasks.

    ``task_level="normal"`` (shared tasks only) draws the task level of each replicate from its
    normal limit instead (same seed draws; see ``_shared_tasks_normal``): for cells too large for
    ``n_boot · seeds · tasks`` work. Deterministic for a fixed ``rng`` (an int seed or a Generator).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if task_level not in ("exact", "normal"):
        raise ValueError(f"task_level must be exact or normal, got {task_level!r}")
    seeds = [_finite_1d(v, f"per_seed_task_values[{i}]") for i, v in enumerate(per_seed_task_values)]
    if not seeds:
        raise ValueError("per_seed_task_values: no seeds given")
    gen = np.random.default_rng(rng)
    n_seeds = len(seeds)
    point = float(np.mean([s.mean() for s in seeds]))
    counts = _seed_counts(gen, n_boot, n_seeds)
    if shared_tasks:
        if len({s.size for s in seeds}) > 1:
            raise ValueError("shared_tasks=True needs every seed on the same tasks, but the seeds have "
                             f"{sorted({s.size for s in seeds})} tasks; pass shared_tasks=False if they met different ones")
        draw = _shared_tasks_exact if task_level == "exact" else _shared_tasks_normal
        means = draw(np.stack(seeds), counts, gen)
    elif task_level == "normal":
        raise ValueError("task_level='normal' is for shared tasks only")
    else:
        sums = np.zeros(n_boot)  # one independent task resample per copy of a seed, summed into its replicate
        for s, x in enumerate(seeds):
            k = int(counts[:, s].sum())
            if k:
                owner = np.repeat(np.arange(n_boot), counts[:, s])
                sums += np.bincount(owner, weights=_task_resample_means(x, k, gen), minlength=n_boot)
        means = sums / n_seeds
    alpha = 1.0 - level
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return point, float(lo), float(hi)


# ---------------------------------------------------------------------------------------------
# multiple comparisons


def holm(pvalues) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order.

    Step-down: the i-th smallest p is multiplied by ``m - i`` (i from 0), then a running maximum
    keeps the adjusted values monotone in the raw ones, and they are capped at 1. Controls the
    family-wise error rate without Bonferroni's loss of power.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"pvalues: expected a 1-D array, got shape {p.shape}")
    if p.size == 0:
        return p.copy()
    if np.isnan(p).any():
        raise ValueError("pvalues contain NaN: a comparison failed upstream")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"pvalues must lie in [0, 1], got min {p.min()} max {p.max()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = (m - np.arange(m)) * p[order]
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate(stepped))
    out = np.empty(m)
    out[order] = adjusted_sorted
    return out


# ---------------------------------------------------------------------------------------------
# paired comparisons on shared evaluation tasks


def _wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p; all-zero differences mean no evidence at all, so p = 1."""
    if not np.any(d):
        return 1.0
    return float(_scipy().wilcoxon(d, alternative="two-sided").pvalue)


def paired_test(a, b, level: float = 0.95) -> dict:
    """Compare two variants evaluated on the same tasks (same order), with ``d = a - b``.

    Pairing removes the task-difficulty variance shared by both variants, which is usually far
    larger than the difference between them. No direction is assumed (lower need not be better);
    ``prob_improvement`` is P(a < b) on a random shared task, ties counted half.

    Returns ``n``, ``mean_diff``, ``ci_low``/``ci_high`` (t-interval of the mean difference),
    ``p_wilcoxon`` (two-sided signed-rank), ``p_ttest`` (paired t) and ``prob_improvement``.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    a = _finite_1d(a, "a")
    b = _finite_1d(b, "b")
    if a.size != b.size:
        raise ValueError(
            f"paired test needs both variants on the same tasks in the same order: "
            f"len(a)={a.size} != len(b)={b.size}"
        )
    n = a.size
    if n < 2:
        raise ValueError(f"paired test needs at least 2 shared tasks, got {n}")
    d = a - b
    mean_diff = float(d.mean())
    if np.ptp(d) == 0:
        # Zero spread: the t statistic is 0/0 or ±inf; state the limit instead of scipy's warning.
        ci_low = ci_high = mean_diff
        p_t = 1.0 if mean_diff == 0 else 0.0
    else:
        res = _scipy().ttest_rel(a, b)
        ci = res.confidence_interval(confidence_level=level)
        ci_low, ci_high, p_t = float(ci.low), float(ci.high), float(res.pvalue)
    return {
        "n": int(n),
        "mean_diff": mean_diff,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "p_wilcoxon": _wilcoxon_p(d),
        "p_ttest": p_t,
        "prob_improvement": float(np.mean(a < b) + 0.5 * np.mean(a == b)),
    }


def compare_to_baseline(values: dict[str, np.ndarray], baseline: str) -> list[dict]:
    """Every other variant vs ``baseline`` (``d = variant - baseline``), Holm over the family.

    ``p_holm`` adjusts the Wilcoxon p-values over these ``len(values) - 1`` comparisons, because
    a table that stars several variants makes that many claims at once.
    """
    if baseline not in values:
        raise ValueError(f"baseline {baseline!r} not among the variants {sorted(values)}")
    vals = _same_tasks(values)
    rows = [
        {"variant": k, "baseline": baseline, **paired_test(v, vals[baseline])}
        for k, v in vals.items()
        if k != baseline
    ]
    return _add_holm(rows)


def all_pairs(values: dict[str, np.ndarray]) -> list[dict]:
    """Every unordered pair ``(a, b)`` in the dict's order, ``d = a - b``, Holm over all pairs."""
    vals = _same_tasks(values)
    rows = [
        {"a": ka, "b": kb, **paired_test(vals[ka], vals[kb])}
        for ka, kb in itertools.combinations(vals, 2)
    ]
    return _add_holm(rows)


def _add_holm(rows: list[dict]) -> list[dict]:
    adjusted = holm([r["p_wilcoxon"] for r in rows])
    return [{**r, "p_holm": float(p)} for r, p in zip(rows, adjusted)]


def not_significantly_worse(values: dict[str, np.ndarray], best: str, alpha: float = 0.05) -> set[str]:
    """Variants tied with ``best`` for table marking: Holm-corrected Wilcoxon p vs ``best`` ≥ alpha.

    The test is two-sided, so a variant significantly *better* than ``best`` is also left out;
    pick ``best`` as the top variant by the reported metric.
    """
    rows = compare_to_baseline(values, best)
    return {best} | {r["variant"] for r in rows if r["p_holm"] >= alpha}


# ---------------------------------------------------------------------------------------------
# across settings


def average_ranks(scores: np.ndarray, lower_is_better: bool = True) -> np.ndarray:
    """Mean rank of each variant over settings; shape [n_settings, n_variants] -> [n_variants].

    Ranks are taken within each setting (1 = best, ties share the average rank), so settings with
    very different scales (sine MSE, Omniglot accuracy) count equally.
    """
    s = _check_scores(scores)
    ranks = _scipy().rankdata(s if lower_is_better else -s, axis=1)
    return ranks.mean(axis=0)


def friedman(scores) -> dict:
    """Friedman test that all variants rank alike across settings (columns = variants).

    Returns ``statistic``, ``pvalue`` (scipy's tie-corrected chi-square), ``n_settings`` and
    ``n_variants``. Direction does not matter: the statistic is symmetric in the ranking order.
    """
    s = _check_scores(scores)
    n_settings, n_variants = s.shape
    if n_variants < 3:
        raise ValueError(
            f"Friedman's test needs at least 3 variants (columns), got {n_variants}; "
            "for two variants use a paired Wilcoxon test across settings (paired_test)"
        )
    if n_settings < 2:
        raise ValueError(f"Friedman's test needs at least 2 settings (rows), got {n_settings}")
    res = _scipy().friedmanchisquare(*s.T)
    return {
        "statistic": float(res.statistic),
        "pvalue": float(res.pvalue),
        "n_settings": int(n_settings),
        "n_variants": int(n_variants),
    }


# ---------------------------------------------------------------------------------------------
# across seeds


def _seed_means(per_seed, name: str) -> np.ndarray:
    return np.array([_finite_1d(np.atleast_1d(x), f"{name}[{i}]").mean() for i, x in enumerate(per_seed)])


def seed_level_test(per_seed_a, per_seed_b) -> dict:
    """Paired two-sided Wilcoxon across seeds on per-seed means (seed i of a paired with seed i of b).

    Each argument is a sequence with one entry per seed: that seed's per-task values, or already
    its mean. With fewer than 6 seeds the exact test's smallest possible p is 2/2**n ≥ 0.0625, so
    it can never show a difference at 0.05 (PROTOCOL.md): ``p_wilcoxon`` is NaN and ``note`` says
    why, rather than a p-value that looks like evidence of no difference.
    """
    ma = _seed_means(per_seed_a, "per_seed_a")
    mb = _seed_means(per_seed_b, "per_seed_b")
    if ma.size != mb.size:
        raise ValueError(
            f"seed-level test pairs seed i of a with seed i of b: got {ma.size} and {mb.size} seeds"
        )
    n = int(ma.size)
    if n == 0:
        raise ValueError("seed-level test: no seeds given")
    d = ma - mb
    out = {"n_seeds": n, "mean_diff": float(d.mean()), "p_wilcoxon": float("nan"), "note": ""}
    if n < MIN_SEEDS_FOR_WILCOXON:
        out["note"] = (
            f"only {n} seeds: the exact two-sided Wilcoxon p cannot go below 2/2**{n} = {2 / 2**n:.4g}, "
            f"so no difference could reach p < 0.05; run at least {MIN_SEEDS_FOR_WILCOXON} seeds"
        )
        return out
    out["p_wilcoxon"] = _wilcoxon_p(d)
    return out
