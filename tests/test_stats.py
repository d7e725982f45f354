"""Tests for metasweep.analysis.stats: hand-computed values, scipy cross-checks, synthetic power/size."""

import math

import numpy as np
import pytest
from scipy import stats as st

from metasweep.analysis import stats
from metasweep.analysis.stats import (
    all_pairs,
    average_ranks,
    bootstrap_seed_ci,
    compare_to_baseline,
    friedman,
    holm,
    mean_ci,
    not_significantly_worse,
    paired_test,
    seed_level_test,
)

# ---------------------------------------------------------------------------------------------
# mean_ci


def test_mean_ci_by_hand():
    # mean 2.5; deviations -1.5,-0.5,0.5,1.5 -> ddof=0 variance (2.25+0.25+0.25+2.25)/4 = 1.25
    m, h = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m == pytest.approx(2.5)
    assert h == pytest.approx(1.96 * math.sqrt(1.25) / math.sqrt(4))
    _, h1 = mean_ci([1.0, 2.0, 3.0, 4.0], z=1.0)
    assert h1 == pytest.approx(math.sqrt(1.25) / 2)


def test_mean_ci_single_value_has_nan_half_width():
    m, h = mean_ci([0.7])
    assert m == 0.7 and math.isnan(h)


@pytest.mark.parametrize("bad", [[1.0, float("nan"), 3.0], [float("nan")]])
def test_mean_ci_rejects_nan(bad):
    with pytest.raises(ValueError, match="NaN"):
        mean_ci(bad)


def test_mean_ci_rejects_inf_and_empty():
    with pytest.raises(ValueError, match="inf"):
        mean_ci([1.0, float("inf")])
    with pytest.raises(ValueError, match="empty"):
        mean_ci([])


# ---------------------------------------------------------------------------------------------
# holm


def test_holm_by_hand():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    adj = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_is_monotone():
    p = np.array([0.5, 0.2, 0.9, 0.01, 0.3])
    adj = holm(p)
    assert adj.max() <= 1.0
    assert adj[2] == 1.0  # 0.5*2 and 0.9*1 both hit the cap via the running max
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0)  # monotone in the raw p-values
    assert np.all(adj >= p)


def test_holm_single_and_empty():
    np.testing.assert_allclose(holm([0.02]), [0.02])
    assert holm([]).size == 0


def test_holm_rejects_nan_and_out_of_range():
    with pytest.raises(ValueError, match="NaN"):
        holm([0.1, float("nan")])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, 1.2])


# ---------------------------------------------------------------------------------------------
# ranks and Friedman


def test_average_ranks_with_ties_by_hand():
    scores = np.array(
        [
            [0.1, 0.1, 0.3],  # lower better: 1.5, 1.5, 3
            [0.2, 0.1, 0.1],  # 3, 1.5, 1.5
            [0.3, 0.2, 0.1],  # 3, 2, 1
        ]
    )
    lower = [(1.5 + 3 + 3) / 3, (1.5 + 1.5 + 2) / 3, (3 + 1.5 + 1) / 3]
    np.testing.assert_allclose(average_ranks(scores), lower)
    # higher better: 2.5,2.5,1 / 1,2.5,2.5 / 1,2,3
    higher = [(2.5 + 1 + 1) / 3, (2.5 + 2.5 + 2) / 3, (1 + 2.5 + 3) / 3]
    np.testing.assert_allclose(average_ranks(scores, lower_is_better=False), higher)


FRIEDMAN_SCORES = np.array(
    [
        [0.10, 0.20, 0.30],  # ranks 1 2 3
        [0.15, 0.35, 0.25],  # 1 3 2
        [0.30, 0.10, 0.20],  # 3 1 2
        [0.05, 0.40, 0.30],  # 1 3 2
        [0.12, 0.22, 0.32],  # 1 2 3
    ]
)


def test_friedman_textbook_formula():
    n, k = FRIEDMAN_SCORES.shape
    rank_sums = np.array([1 + 1 + 3 + 1 + 1, 2 + 3 + 1 + 3 + 2, 3 + 2 + 2 + 2 + 3])  # 7, 11, 12
    expected = 12 / (n * k * (k + 1)) * np.sum(rank_sums**2) - 3 * n * (k + 1)  # 0.2*314 - 60
    assert expected == pytest.approx(2.8)
    out = friedman(FRIEDMAN_SCORES)
    assert out["statistic"] == pytest.approx(expected)
    assert out["pvalue"] == pytest.approx(math.exp(-expected / 2))  # chi2 sf with 2 dof
    ref = st.friedmanchisquare(*FRIEDMAN_SCORES.T)
    assert out["statistic"] == pytest.approx(ref.statistic) and out["pvalue"] == pytest.approx(ref.pvalue)
    assert (out["n_settings"], out["n_variants"]) == (5, 3)
    np.testing.assert_allclose(average_ranks(FRIEDMAN_SCORES), rank_sums / n)


def test_friedman_needs_three_variants():
    with pytest.raises(ValueError, match="at least 3 variants"):
        friedman(FRIEDMAN_SCORES[:, :2])


def test_ranks_reject_nan():
    bad = FRIEDMAN_SCORES.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        average_ranks(bad)
    with pytest.raises(ValueError, match="NaN"):
        friedman(bad)


# ---------------------------------------------------------------------------------------------
# paired_test


def test_paired_test_matches_scipy():
    rng = np.random.default_rng(3)
    task = rng.normal(0, 3, 40)
    a = task + rng.normal(0.3, 1, 40)
    b = task + rng.normal(0.0, 1, 40)
    out = paired_test(a, b)
    d = a - b
    assert out["n"] == 40
    assert out["mean_diff"] == pytest.approx(d.mean())
    assert out["p_wilcoxon"] == pytest.approx(st.wilcoxon(d).pvalue)
    assert out["p_ttest"] == pytest.approx(st.ttest_rel(a, b).pvalue)
    half = st.t.ppf(0.975, 39) * d.std(ddof=1) / math.sqrt(40)
    assert out["ci_low"] == pytest.approx(d.mean() - half)
    assert out["ci_high"] == pytest.approx(d.mean() + half)
    half90 = st.t.ppf(0.95, 39) * d.std(ddof=1) / math.sqrt(40)
    assert paired_test(a, b, level=0.90)["ci_high"] == pytest.approx(d.mean() + half90)


def test_paired_test_direction_and_prob_improvement():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([2.0, 2.0, 1.0, 5.0])
    # a < b on tasks 0 and 3, tie on task 1: (2 + 0.5) / 4
    out = paired_test(a, b)
    assert out["prob_improvement"] == pytest.approx(0.625)
    assert out["mean_diff"] == pytest.approx((-1 + 0 + 2 - 1) / 4)
    assert paired_test(b, a)["prob_improvement"] == pytest.approx(0.375)


def test_paired_test_identical_and_constant_shift():
    a = np.array([0.3, 0.1, 0.7, 0.2])
    same = paired_test(a, a.copy())
    assert same["p_wilcoxon"] == 1.0 and same["p_ttest"] == 1.0
    assert same["ci_low"] == same["ci_high"] == 0.0 and same["prob_improvement"] == 0.5
    shifted = paired_test(a + 1.0, a)
    assert shifted["mean_diff"] == pytest.approx(1.0) and shifted["prob_improvement"] == 0.0


def test_paired_test_rejects_bad_input():
    with pytest.raises(ValueError, match=r"same tasks.*len\(a\)=3 != len\(b\)=4"):
        paired_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="b contain NaN"):
        paired_test([1.0, 2.0, 3.0], [1.0, np.nan, 3.0])


# ---------------------------------------------------------------------------------------------
# families of comparisons


def _three_variants(rng, n=60):
    task = rng.normal(0, 3, n)
    return {
        "maml": task + rng.normal(0, 1, n),
        "mt-net": task + rng.normal(-0.8, 1, n),
        "anil": task + rng.normal(0.05, 1, n),
    }


def test_compare_to_baseline_signs_and_holm():
    vals = _three_variants(np.random.default_rng(0))
    rows = compare_to_baseline(vals, "maml")
    assert [r["variant"] for r in rows] == ["mt-net", "anil"]
    assert all(r["baseline"] == "maml" for r in rows)
    for r in rows:
        ref = paired_test(vals[r["variant"]], vals["maml"])
        assert r["mean_diff"] == pytest.approx(ref["mean_diff"])
        assert r["p_wilcoxon"] == pytest.approx(ref["p_wilcoxon"])
    assert rows[0]["mean_diff"] < 0  # d = variant - baseline; mt-net is lower
    np.testing.assert_allclose([r["p_holm"] for r in rows], holm([r["p_wilcoxon"] for r in rows]))


def test_compare_to_baseline_errors():
    vals = _three_variants(np.random.default_rng(0))
    with pytest.raises(ValueError, match="baseline 'protonet' not among"):
        compare_to_baseline(vals, "protonet")
    vals["anil"] = vals["anil"][:-1]
    with pytest.raises(ValueError, match="same evaluation tasks.*'anil': 59"):
        compare_to_baseline(vals, "maml")
    vals["anil"] = np.append(vals["anil"], np.nan)
    with pytest.raises(ValueError, match=r"values\['anil'\] contain NaN"):
        compare_to_baseline(vals, "maml")


def test_all_pairs_holm_over_every_pair():
    vals = _three_variants(np.random.default_rng(1))
    rows = all_pairs(vals)
    assert [(r["a"], r["b"]) for r in rows] == [("maml", "mt-net"), ("maml", "anil"), ("mt-net", "anil")]
    for r in rows:
        assert r["mean_diff"] == pytest.approx(np.mean(vals[r["a"]] - vals[r["b"]]))
    np.testing.assert_allclose([r["p_holm"] for r in rows], holm([r["p_wilcoxon"] for r in rows]))


def test_not_significantly_worse_marks_ties_with_best():
    rng = np.random.default_rng(2)
    task = rng.normal(0, 3, 300)
    vals = {
        "best": task + rng.normal(0, 1, 300),
        "tied": task + rng.normal(0.0, 1, 300),
        "worse": task + rng.normal(1.0, 1, 300),
    }
    assert not_significantly_worse(vals, "best") == {"best", "tied"}
    assert not_significantly_worse({"best": vals["best"]}, "best") == {"best"}


# ---------------------------------------------------------------------------------------------
# synthetic power and size: pairing on shared tasks must detect a small true shift


N_TASKS, SHIFT = 600, 0.25  # task effects sd 3 shared by all variants, per-variant noise sd 1


def test_power_detects_a_true_improvement_only_when_paired():
    detected_paired = detected_unpaired = 0
    for rep in range(50):
        rng = np.random.default_rng(1000 + rep)
        task = rng.normal(0, 3, N_TASKS)
        vals = {
            "maml": task + rng.normal(0, 1, N_TASKS),
            "better": task - SHIFT + rng.normal(0, 1, N_TASKS),
            "same": task + rng.normal(0, 1, N_TASKS),
        }
        row = compare_to_baseline(vals, "maml")[0]
        assert row["variant"] == "better"
        detected_paired += row["p_holm"] < 0.05
        detected_unpaired += st.mannwhitneyu(vals["better"], vals["maml"]).pvalue < 0.05
    assert detected_paired >= 45  # expected ~49/50 (z ≈ 4.3)
    assert detected_unpaired <= 10  # unpaired, the shared task spread (sd 3) hides it: ~1.4 SE


def test_size_equal_pair_flagged_at_nominal_rate():
    flagged_w = flagged_t = 0
    reps = 200
    for rep in range(reps):
        rng = np.random.default_rng(5000 + rep)
        task = rng.normal(0, 3, N_TASKS)
        out = paired_test(task + rng.normal(0, 1, N_TASKS), task + rng.normal(0, 1, N_TASKS))
        flagged_w += out["p_wilcoxon"] < 0.05
        flagged_t += out["p_ttest"] < 0.05
        # the t-interval covers the true difference 0 exactly when the t-test does not reject
        assert (out["ci_low"] <= 0 <= out["ci_high"]) == (out["p_ttest"] >= 0.05)
    assert 2 <= flagged_w <= 0.10 * reps  # expected 10
    assert 2 <= flagged_t <= 0.10 * reps


# ---------------------------------------------------------------------------------------------
# bootstrap over seeds


def _seeds(offsets, n_tasks=200, sd=1.0, rng=0):
    g = np.random.default_rng(rng)
    return [off + g.normal(0, sd, n_tasks) for off in offsets]


def test_bootstrap_contains_mean_and_is_deterministic():
    seeds = _seeds(np.linspace(-1, 1, 8))
    point, lo, hi = bootstrap_seed_ci(seeds, rng=7)
    assert point == pytest.approx(np.mean([s.mean() for s in seeds]))
    assert lo < point < hi
    assert bootstrap_seed_ci(seeds, rng=7) == (point, lo, hi)
    assert bootstrap_seed_ci(seeds, rng=np.random.default_rng(7)) == (point, lo, hi)
    assert bootstrap_seed_ci(seeds, rng=8)[1:] != (lo, hi)


def test_bootstrap_weights_seeds_equally():
    seeds = [np.zeros(10), np.ones(1000)]  # seeds that met different tasks
    point, lo, hi = bootstrap_seed_ci(seeds, n_boot=500, shared_tasks=False)
    assert point == pytest.approx(0.5)  # pooling the tasks would give ~0.99
    assert lo == pytest.approx(0.0) and hi == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"same tasks, but the seeds have \[10, 1000\] tasks"):
        bootstrap_seed_ci(seeds)


def test_bootstrap_shrinks_with_more_seeds():
    _, lo4, hi4 = bootstrap_seed_ci(_seeds(np.linspace(-1, 1, 4)))
    _, lo16, hi16 = bootstrap_seed_ci(_seeds(np.linspace(-1, 1, 16)))
    assert hi16 - lo16 < 0.6 * (hi4 - lo4)  # sd/√S: 0.75/2 vs 0.61/4


def test_bootstrap_seed_level_width_matches_theory():
    # no task noise: only seeds vary, so the CI is the seed bootstrap of the mean, width ≈ 2·1.96·sd/√S
    offsets = np.linspace(-1, 1, 10)
    _, lo, hi = bootstrap_seed_ci(_seeds(offsets, sd=0.0))
    assert hi - lo == pytest.approx(2 * 1.96 * offsets.std() / math.sqrt(10), rel=0.15)


def test_bootstrap_identical_seeds_is_narrow_but_keeps_task_noise():
    # identical seeds that met their own tasks: only tasks vary, resampled independently per seed slot
    x = np.random.default_rng(4).normal(0, 1, 200)
    _, lo, hi = bootstrap_seed_ci([x] * 8, shared_tasks=False)
    assert hi - lo == pytest.approx(2 * 1.96 * x.std() / math.sqrt(200 * 8), rel=0.15)
    _, lo_d, hi_d = bootstrap_seed_ci(_seeds(np.linspace(-1, 1, 8)), shared_tasks=False)
    assert hi - lo < 0.2 * (hi_d - lo_d)
    # identical seeds on the same tasks are one seed 8 times: the task noise of 200 tasks, not of 1600
    _, lo_s, hi_s = bootstrap_seed_ci([x] * 8)
    assert hi_s - lo_s == pytest.approx(2 * 1.96 * x.std() / math.sqrt(200), rel=0.15)
    assert (lo_s, hi_s) == pytest.approx(bootstrap_seed_ci([x], rng=0)[1:], abs=0.15 * (hi_s - lo_s))


def test_bootstrap_chunking_does_not_change_the_distribution(monkeypatch):
    seeds = _seeds(np.linspace(-1, 1, 6), n_tasks=300)
    _, lo, hi = bootstrap_seed_ci(seeds, rng=1)
    monkeypatch.setattr(stats, "_CHUNK_ELEMS", 1000)  # 3 rows per chunk
    _, lo_c, hi_c = bootstrap_seed_ci(seeds, rng=1)
    assert lo_c == pytest.approx(lo, abs=0.1 * (hi - lo)) and hi_c == pytest.approx(hi, abs=0.1 * (hi - lo))


def _shared_task_datasets(n_sims, n_seeds, n_tasks, sd_seed, sd_task, sd_noise, rng=123):
    """x[s, t] = a_s + b_t + e_st with a ~ N(0, sd_seed²), b ~ N(0, sd_task²), e ~ N(0, sd_noise²):
    every seed meets the same tasks (b shared), the true mean is 0."""
    g = np.random.default_rng(rng)
    for _ in range(n_sims):
        yield (sd_seed * g.standard_normal((n_seeds, 1)) + sd_task * g.standard_normal((1, n_tasks))
               + sd_noise * g.standard_normal((n_seeds, n_tasks)))


def _coverage(datasets, **kw) -> float:
    """Fraction of the datasets whose 95% interval contains the true mean 0."""
    hits = []
    for k, x in enumerate(datasets):
        _, lo, hi = bootstrap_seed_ci(x, n_boot=500, rng=k, **kw)
        hits.append(lo <= 0.0 <= hi)
    return float(np.mean(hits))


# 8 seeds x 40 shared tasks, task variance dominating: Var(grand mean) = 0.3²/8 + 1/40 + 0.5²/320.
# The percentile bootstrap's variance is (S-1)/S and (n-1)/n of that, so its 95% interval covers
# ~0.943 of the time (z = 1.96·0.972); over 1000 simulations the coverage's sd is 0.0073, so
# [0.92, 0.97] leaves >= 3 sd on both sides. Resampling tasks per seed (the old bootstrap) covers ~0.77.
SHARED = dict(n_sims=1000, n_seeds=8, n_tasks=40, sd_seed=0.3, sd_task=1.0, sd_noise=0.5)


def test_bootstrap_covers_95_percent_when_seeds_share_their_tasks():
    assert 0.92 <= _coverage(_shared_task_datasets(**SHARED)) <= 0.97
    # the same data bootstrapped as if each seed had its own tasks: far too narrow
    assert _coverage(_shared_task_datasets(**SHARED), shared_tasks=False) < 0.85


def test_bootstrap_normal_task_level_covers_95_percent_too():
    """The fast path (task level from its normal limit) on the same simulation, and on one where
    seeds are many and tasks few: ~0.95 both (0.951 and 0.949 here)."""
    assert 0.92 <= _coverage(_shared_task_datasets(**SHARED), task_level="normal") <= 0.97
    many_seeds = dict(SHARED, n_sims=400, n_seeds=30, n_tasks=60)  # sd of the coverage 0.011
    assert 0.91 <= _coverage(_shared_task_datasets(**many_seeds), task_level="normal") <= 0.98


def test_bootstrap_normal_task_level_follows_the_exact_one():
    x = next(_shared_task_datasets(1, 6, 3000, 0.2, 1.0, 0.5, rng=9))
    exact = bootstrap_seed_ci(x, n_boot=2000, rng=3)
    normal = bootstrap_seed_ci(x, n_boot=2000, rng=3, task_level="normal")
    width = exact[2] - exact[1]
    assert normal[0] == exact[0]
    assert normal[1:] == pytest.approx(exact[1:], abs=0.05 * width)
    with pytest.raises(ValueError, match="shared tasks only"):
        bootstrap_seed_ci(x, task_level="normal", shared_tasks=False)


def test_bootstrap_rejects_nan():
    seeds = _seeds([0.0, 1.0])
    seeds[1][5] = np.nan
    with pytest.raises(ValueError, match=r"per_seed_task_values\[1\] contain NaN"):
        bootstrap_seed_ci(seeds)


# ---------------------------------------------------------------------------------------------
# seed-level test


def test_seed_level_test_needs_six_seeds():
    out = seed_level_test([1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 1.0, 2.0, 3.0, 4.0])
    assert math.isnan(out["p_wilcoxon"]) and out["n_seeds"] == 5
    assert "0.0625" in out["note"] and "6 seeds" in out["note"]


def test_seed_level_test_six_seeds_exact_minimum():
    # all six seeds favour a: the exact two-sided minimum 2/2**6
    a = [np.full(50, v) for v in (1.0, 2.1, 3.2, 4.3, 5.4, 6.5)]
    b = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # per-seed means may be given directly
    out = seed_level_test(a, b)
    assert out["p_wilcoxon"] == pytest.approx(2 / 2**6)
    assert out["note"] == "" and out["mean_diff"] == pytest.approx(np.mean([1.0, 1.1, 1.2, 1.3, 1.4, 1.5]))


def test_seed_level_test_rejects_mismatch_and_nan():
    with pytest.raises(ValueError, match="got 6 and 5 seeds"):
        seed_level_test(np.arange(6.0), np.arange(5.0))
    with pytest.raises(ValueError, match=r"per_seed_b\[2\] contain NaN"):
        seed_level_test(np.arange(6.0), [0.0, 1.0, np.nan, 3.0, 4.0, 5.0])
