"""The ranking on synthetic datasets written with `write_trial` (no Ray): every number the table
prints is recomputed here with numpy/scipy, independently of analysis.stats."""

import csv
import datetime as dt
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as st

from metasweep.analysis import ranking as rk
from metasweep.analysis import render as rk_render
from metasweep.analysis import stats
from metasweep.analysis.ranking import compute_ranking
from metasweep.analysis.render import print_ranking, render
from metasweep.analysis.store import write_trial

SHOTS = (5, 10)
N_TASKS = 200
SEEDS = (0, 1, 2)
# t-net is better than maml by a clear margin; mt-net equals t-net up to a negligible shift
SHIFT = {"maml": 0.0, "t-net": -0.3, "mt-net": -0.299}


def trial_row(tid, variant, seed, *, stage="test", attempt=0, status="completed", alpha=0.01, train_shots=10):
    now = dt.datetime.now(dt.timezone.utc)
    config = {"alpha": alpha, "beta": 0.001, "inner_steps": 1, "meta_batch": 25, "meta_steps": 100,
              "seed": seed, "variant": variant}
    return {"experiment": "synth", "stage": stage, "trial_id": tid, "attempt": attempt, "variant": variant,
            "task_family": "sine", "task_options": "{}", "train_shots": train_shots, "seed": seed, "alpha": alpha,
            "beta": 0.001, "inner_steps": 1, "meta_batch": 25, "config": json.dumps(config), "status": status,
            "meta_steps": 100 if status == "completed" else 40, "started_at": now, "ended_at": now}


def eval_cols(losses: dict, inner_steps=1):
    """losses: {(shots, inner_steps) or shots: per-task array}."""
    cols = {k: [] for k in ("split", "eval_seed", "task_index", "shots", "inner_steps", "loss")}
    for key, vals in losses.items():
        shots, steps = key if isinstance(key, tuple) else (key, inner_steps)
        n = len(vals)
        cols["split"] += ["test"] * n
        cols["eval_seed"] += [1] * n
        cols["task_index"] += list(range(n))
        cols["shots"] += [shots] * n
        cols["inner_steps"] += [steps] * n
        cols["loss"] += [float(v) for v in vals]
    return cols


def curve_cols(n=3):
    return {"meta_step": [10 * (i + 1) for i in range(n)], "val_loss": [1.0 / (i + 1) for i in range(n)],
            "meta_train_loss": [1.2 / (i + 1) for i in range(n)]}


def make_shift_dataset(root):
    """3 variants x 3 seeds x 200 shared tasks x eval shots 5/10 (1 inner step), plus: a diverged maml
    trial whose (huge) rows must not be averaged in, a restarted trial (attempt 0 and 1), and 5 inner
    steps where mt-net's loss overflows on 7 tasks. Returns the expected per-(variant, shots) matrices."""
    rng = np.random.default_rng(42)
    task_effect = {s: rng.gamma(2.0, 1.0, N_TASKS) * (5 / s) for s in SHOTS}
    expected = {}
    for v, shift in SHIFT.items():
        for seed in SEEDS:
            losses, losses5 = {}, {}
            for s in SHOTS:
                x = task_effect[s] + shift + 0.1 * rng.standard_normal(N_TASKS)
                losses[s] = x
                expected.setdefault((v, s), []).append(x)
                y = task_effect[s] * 0.5 + shift + 0.1 * rng.standard_normal(N_TASKS)
                if v == "mt-net" and seed == 1:
                    y[[3, 17, 50, 51, 99, 150, 199]] = np.inf
                losses5[(s, 5)] = y
            tid = f"test-{v}-s{seed}"
            if v == "maml" and seed == 0:  # attempt 0 was interrupted and restarted: only attempt 1 counts
                write_trial(root, trial_row(tid, v, seed, attempt=0), curve_cols(),
                            eval_cols({s: losses[s] + 100.0 for s in SHOTS}))
                write_trial(root, trial_row(tid, v, seed, attempt=1), curve_cols(), eval_cols({**losses, **losses5}))
            else:
                write_trial(root, trial_row(tid, v, seed), curve_cols(), eval_cols({**losses, **losses5}))
    # a diverged maml seed: its evaluation rows (if a writer left any) are never averaged in
    write_trial(root, trial_row("test-maml-s3", "maml", 3, status="diverged"), curve_cols(1),
                eval_cols({s: np.full(N_TASKS, 1e6) for s in SHOTS}))
    # another stage in the same dataset: must not leak into the test stage
    write_trial(root, trial_row("tune-maml-x", "maml", 0, stage="tune", alpha=0.5), curve_cols(),
                eval_cols({s: np.full(N_TASKS, -50.0) for s in SHOTS}))
    return {k: np.stack(v) for k, v in expected.items()}


@pytest.fixture(scope="module")
def shift_ds(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shift") / "synth")
    return root, make_shift_dataset(root)


def holm_by_hand(p):
    p = np.asarray(p, float)
    order = np.argsort(p)
    adj = np.empty_like(p)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (len(p) - i) * p[j]))
        adj[j] = running
    return adj


def test_cells_match_numpy_and_seed_bootstrap(shift_ds):
    root, exp = shift_ds
    r = compute_ranking(root)
    assert r.stage == "test" and r.inner_steps == 1 and r.metric == "loss"
    assert r.variants == ["maml", "mt-net", "t-net"]  # baseline first, then by name
    assert r.settings == [(10, 5), (10, 10)]
    for (v, s), mat in exp.items():
        c = r.cells[(v, (10, s))]
        per_task = mat.mean(axis=0)
        assert c.n_tasks == N_TASKS and c.n_seeds == 3
        assert c.mean == pytest.approx(per_task.mean(), rel=1e-12)
        assert c.ci95 == pytest.approx(1.96 * per_task.std() / np.sqrt(N_TASKS), rel=1e-12)
        # small cells use the exact two-level bootstrap of stats.bootstrap_seed_ci
        _, lo, hi = stats.bootstrap_seed_ci(list(mat), n_boot=1000, rng=0)
        assert c.seed_ci == pytest.approx((lo, hi), rel=1e-12)
        assert lo < c.mean < hi


def test_best_is_marked_and_ties_follow_the_holm_corrected_paired_test(shift_ds):
    root, exp = shift_ds
    r = compute_ranking(root)
    for s in SHOTS:
        means = {v: exp[(v, s)].mean(axis=0) for v in SHIFT}
        best = min(means, key=lambda v: means[v].mean())
        assert best in ("t-net", "mt-net")
        assert r.cells[(best, (10, s))].best
        others = [v for v in SHIFT if v != best]
        p = [st.wilcoxon(means[v] - means[best]).pvalue for v in others]
        for v, p_adj in zip(others, holm_by_hand(p)):
            assert not r.cells[(v, (10, s))].best
            assert r.cells[(v, (10, s))].tied_with_best == (p_adj >= 0.05), (v, s, p_adj)
        assert not r.cells[("maml", (10, s))].tied_with_best  # 0.3 worse on every task
    # the negligible shift leaves mt-net tied with t-net in at least one setting (it is in both here)
    assert any(r.cells[(v, (10, s))].tied_with_best for v in ("t-net", "mt-net") for s in SHOTS)


def test_average_ranks_and_friedman_match_scipy(shift_ds):
    root, exp = shift_ds
    r = compute_ranking(root)
    scores = np.array([[exp[(v, s)].mean() for v in r.variants] for s in SHOTS])
    ranks = st.rankdata(scores, axis=1).mean(axis=0)
    assert [r.avg_rank[v] for v in r.variants] == pytest.approx(ranks.tolist())
    assert r.avg_rank["maml"] == 3.0
    f = st.friedmanchisquare(*scores.T)
    assert r.friedman["statistic"] == pytest.approx(f.statistic)
    assert r.friedman["pvalue"] == pytest.approx(f.pvalue)
    assert r.friedman["n_settings"] == 2 and r.friedman["n_variants"] == 3


def test_paired_table_has_holm_p_values_against_the_baseline(shift_ds):
    root, exp = shift_ds
    r = compute_ranking(root)
    assert r.baseline == "maml"
    assert len(r.paired) == 2 * 2  # 2 settings x 2 variants vs maml
    for s in SHOTS:
        rows = [p for p in r.paired if p["setting"] == (10, s)]
        assert sorted(p["variant"] for p in rows) == ["mt-net", "t-net"]
        base = exp[("maml", s)].mean(axis=0)
        raw = [st.wilcoxon(exp[(p["variant"], s)].mean(axis=0) - base).pvalue for p in rows]
        for p, want_raw, want_holm in zip(rows, raw, holm_by_hand(raw)):
            assert p["p_wilcoxon"] == pytest.approx(want_raw, rel=1e-9)
            assert p["p_holm"] == pytest.approx(want_holm, rel=1e-9)
            d = exp[(p["variant"], s)].mean(axis=0) - base
            assert p["mean_diff"] == pytest.approx(d.mean(), rel=1e-12)
            assert p["p_holm"] < 0.05 and p["mean_diff"] < 0
    text = render(r, "markdown")
    assert "p (Holm)" in text and "Δ vs maml" in text


def test_diverged_trials_are_counted_not_averaged_and_other_stages_do_not_leak(shift_ds):
    root, exp = shift_ds
    r = compute_ranking(root)
    assert r.status_counts["maml"] == {"completed": 3, "diverged": 1}
    assert any(n.startswith("maml: 1 diverged of 4 trials") and "not averaged in" in n for n in r.notes), r.notes
    assert r.cells[("maml", (10, 5))].n_seeds == 3
    # the 1e6 rows of the diverged trial, attempt 0's +100 rows and the tune stage's -50 rows are not in the mean
    assert r.cells[("maml", (10, 5))].mean == pytest.approx(exp[("maml", 5)].mean(), rel=1e-12)


def test_a_restarted_trial_counts_its_latest_attempt_only(shift_ds):
    root, exp = shift_ds
    r = compute_ranking(root)
    assert r.status_counts["maml"]["completed"] == 3  # attempt 0 and 1 are one trial
    for s in SHOTS:
        assert r.cells[("maml", (10, s))].mean == pytest.approx(exp[("maml", s)].mean(), rel=1e-12)


def test_non_finite_eval_losses_are_diverged_cells_ranked_last(shift_ds):
    root, _ = shift_ds
    r = compute_ranking(root, inner_steps=5)
    assert r.inner_steps == 5
    for s in SHOTS:
        c = r.cells[("mt-net", (10, s))]
        assert c.nonfinite_tasks == 7 and c.n_tasks == N_TASKS and not c.best
        assert not c.tied_with_best
    # a diverged cell ranks last in its setting (it is not averaged, and not dropped either), and its
    # note says so
    assert r.avg_rank["mt-net"] == len(r.variants)
    assert any(n.startswith(f"mt-net at {SHOTS[0]}-shot: the adapted loss is not finite on 7 of {N_TASKS} tasks")
               and n.endswith("(no mean, no paired test; last in its setting for the average rank)") for n in r.notes)
    assert all(r.avg_rank[v] < len(r.variants) for v in r.variants if v != "mt-net")
    assert sum("not finite on 7 of 200 tasks after 5 inner steps" in n for n in r.notes) == 2
    from rich.console import Console

    buf = io.StringIO()
    print_ranking(r, Console(file=buf, width=200))
    assert "not finite (7/200 tasks)" in buf.getvalue()
    assert "not finite (7/200 tasks)" in render(r, "markdown")


def test_accuracy_on_a_regression_dataset_is_a_clear_error(shift_ds):
    root, _ = shift_ds
    with pytest.raises(ValueError, match="no accuracy"):
        compute_ranking(root, metric="accuracy")


def test_unknown_stage_and_inner_steps_are_clear_errors(shift_ds):
    root, _ = shift_ds
    with pytest.raises(ValueError, match=r"no trials of stage 'grid'; stages present: test, tune"):
        compute_ranking(root, stage="grid")
    with pytest.raises(ValueError, match=r"inner steps 3 were not evaluated; available: \[1, 5\]"):
        compute_ranking(root, inner_steps=3)


def test_renders_contain_the_numbers(shift_ds):
    root, exp = shift_ds
    r = compute_ranking(root)
    best5 = next(v for v in r.variants if r.cells[(v, (10, 5))].best)
    c = r.cells[(best5, (10, 5))]
    md = render(r, "markdown")
    assert f"**{c.mean:.3f} ± {c.ci95:.3f}**" in md
    assert "| variant | 5-shot | 10-shot | avg rank | seeds |" in md
    m = r.cells[("maml", (10, 10))]
    assert f"{m.mean:.3f} ± {m.ci95:.3f}" in md
    assert "Friedman test over 2 settings" in md
    tex = render(r, "latex")
    assert rf"\textbf{{{c.mean:.3f} $\pm$ {c.ci95:.3f}}}" in tex and r"\begin{tabular}" in tex
    if any(cell.tied_with_best for cell in r.cells.values()):
        assert "†" in md and r"$^\dagger$" in tex
    rows = list(csv.DictReader(io.StringIO(render(r, "csv"))))
    assert len(rows) == 3 * 2
    for row in rows:
        want = exp[(row["variant"], int(row["eval_shots"]))]
        assert float(row["mean"]) == pytest.approx(want.mean(), rel=1e-12)
        assert int(row["n_tasks"]) == N_TASKS and int(row["n_seeds"]) == 3
        assert float(row["avg_rank"]) == r.avg_rank[row["variant"]]
    with pytest.raises(ValueError, match="format must be"):
        render(r, "html")


def test_grid_rows_are_labelled_per_configuration(tmp_path):
    root = str(tmp_path / "grid")
    rng = np.random.default_rng(0)
    tasks = rng.gamma(2.0, 1.0, 50)
    for alpha, shift in ((0.01, 0.0), (0.1, -0.5)):
        for seed in (0, 1):
            losses = {5: tasks + shift + 0.01 * rng.standard_normal(50)}
            write_trial(root, trial_row(f"grid-{alpha}-{seed}", "maml", seed, stage="grid", alpha=alpha),
                        curve_cols(), eval_cols(losses))
    write_trial(root, trial_row("grid-10-0", "maml", 0, stage="grid", alpha=10.0, status="diverged"),
                curve_cols(1), eval_cols({}))
    r = compute_ranking(root)
    assert r.stage == "grid"
    assert r.variants == ["maml alpha=0.01", "maml alpha=0.1"]
    assert r.cells[("maml alpha=0.1", (10, 5))].best
    assert r.cells[("maml alpha=0.01", (10, 5))].n_seeds == 2
    assert r.status_counts["maml alpha=10"] == {"diverged": 1}
    assert any(n.startswith("maml alpha=10: 1 diverged of 1 trials") for n in r.notes)
    assert "maml alpha=0.1" in render(r, "markdown")


def test_task_options_that_vary_label_rows_instead_of_being_averaged_together(tmp_path):
    root = str(tmp_path / "poly")
    rng = np.random.default_rng(5)
    for order in (0, 1, 2):
        for seed in (0, 1):
            row = trial_row(f"mt-{order}-{seed}", "mt-net", seed, stage="grid")
            row.update(task_family="polynomial", task_options=json.dumps({"order": order}))
            write_trial(root, row, curve_cols(), eval_cols({5: rng.normal(size=20) + order}))
    r = compute_ranking(root)
    assert r.variants == ["mt-net order=0", "mt-net order=1", "mt-net order=2"]
    assert [r.cells[(v, (10, 5))].n_seeds for v in r.variants] == [2, 2, 2]
    assert r.cells[("mt-net order=0", (10, 5))].best


def test_seed_bootstrap_normal_shortcut_agrees_with_the_exact_one():
    """Large cells use a normal approximation of the task level of the seed bootstrap."""
    rng = np.random.default_rng(3)
    mat = rng.lognormal(0.0, 0.5, size=(4, 6000)) + rng.normal(0, 0.05, size=(4, 1))
    exact = stats.bootstrap_seed_ci(list(mat), n_boot=1000, rng=0)[1:]
    fast = rk.seed_interval(mat, n_boot=1000, rng=0, exact_limit=0)
    width = exact[1] - exact[0]
    assert fast[0] == pytest.approx(exact[0], abs=0.1 * width)
    assert fast[1] == pytest.approx(exact[1], abs=0.1 * width)
    assert rk.seed_interval(mat, n_boot=1000, rng=0, exact_limit=10**9) == pytest.approx(exact, rel=1e-12)
    # the default switches at EXACT_BOOT_DRAWS: 600 tasks x 4 seeds is exact, 6000 x 4 is not
    small = mat[:, :600]
    assert rk.seed_interval(small) == pytest.approx(stats.bootstrap_seed_ci(list(small), n_boot=1000, rng=0)[1:],
                                               rel=1e-12)
    assert rk.seed_interval(mat) == pytest.approx(fast, rel=1e-12)


def assert_same_ranking(a, b):
    assert (a.variants, a.settings, a.inner_steps, a.stage) == (b.variants, b.settings, b.inner_steps, b.stage)
    assert a.cells.keys() == b.cells.keys()
    for k in a.cells:
        ca, cb = a.cells[k], b.cells[k]
        assert (ca.n_tasks, ca.n_seeds, ca.best, ca.tied_with_best, ca.nonfinite_tasks) == \
            (cb.n_tasks, cb.n_seeds, cb.best, cb.tied_with_best, cb.nonfinite_tasks)
        assert ca.mean == pytest.approx(cb.mean, rel=1e-12, nan_ok=True)
        assert ca.seed_ci == pytest.approx(cb.seed_ci, rel=1e-12) if ca.seed_ci else cb.seed_ci is None
    assert a.avg_rank == pytest.approx(b.avg_rank) and a.status_counts == b.status_counts
    assert [(p["setting"], p["variant"], p["p_holm"]) for p in a.paired] == \
        [(p["setting"], p["variant"], pytest.approx(p["p_holm"])) for p in b.paired]
    assert a.notes == b.notes


def test_reading_files_directly_equals_the_sql_path_over_read_dataset(shift_ds):
    from metasweep.analysis.query import connect

    root, _ = shift_ds
    for steps in (1, 5):
        assert_same_ranking(compute_ranking(root, inner_steps=steps),
                            compute_ranking(root, inner_steps=steps, con=connect(root)))


def test_rows_of_another_attempt_in_an_attempt_file_are_dropped(tmp_path):
    """A file that is not one attempt's rows only (statistics say so) is filtered row by row, as
    read_dataset does."""
    from metasweep.analysis.query import connect
    from metasweep.analysis.store import write_table

    root = str(tmp_path / "mixed")
    rng = np.random.default_rng(1)
    losses = {}
    for v in ("maml", "t-net", "mt-net"):
        for seed in (0, 1):
            losses[(v, seed)] = rng.normal(size=30) + SHIFT[v]
            write_trial(root, trial_row(f"{v}-{seed}", v, seed), curve_cols(), eval_cols({5: losses[(v, seed)]}))
    # maml-0 restarted: attempt 1's file also carries stale attempt-0 rows with a huge loss
    good = eval_cols({5: rng.normal(size=30)})
    stale = eval_cols({5: np.full(30, 1e3)})
    cols = {k: good[k] + stale[k] for k in good}
    n = len(cols["loss"])
    write_table(root, "eval_tasks", {**cols, "trial_id": ["maml-0"] * n, "attempt": [1] * 30 + [0] * 30},
                "maml-0", 1)
    write_table(root, "trials", {k: [v] for k, v in trial_row("maml-0", "maml", 0, attempt=1).items()}, "maml-0", 1)
    r = compute_ranking(root)
    assert r.cells[("maml", (10, 5))].n_tasks == 30
    want = (np.array(good["loss"]) + losses[("maml", 1)]) / 2  # attempt 1 of seed 0 with seed 1; no 1e3 rows
    assert r.cells[("maml", (10, 5))].mean == pytest.approx(want.mean(), rel=1e-12)
    assert_same_ranking(r, compute_ranking(root, con=connect(root)))


# ------------------------------------------------------------------------------------------ CLI


def metasweep(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_rank_cli(shift_ds):
    root, _ = shift_ds
    r = metasweep("rank", root)
    assert r.returncode == 0, r.stderr
    assert "ranking: loss (stage test, 1 inner step(s))" in r.stdout
    assert "paired tests against maml" in r.stdout and "t-net" in r.stdout
    assert "maml: 1 diverged of 4 trials" in r.stdout
    r = metasweep("rank", root, "--format", "markdown", "--inner-steps", "5")
    assert r.returncode == 0 and "not finite (7/200 tasks)" in r.stdout
    r = metasweep("rank", root, "--format", "html")
    assert r.returncode == 2 and r.stderr.strip() == \
        "error: --format: must be text, markdown, latex or csv (got 'html')"


def test_rank_cli_missing_experiment_is_one_line(tmp_path):
    r = metasweep("rank", str(tmp_path / "nope"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no results dataset here" in lines[0]


# ------------------------------------------------------------------------------------------ rows are variants


def built_row(tid, variant, seed, *, stage="test", train_shots=10, hparams=None, hp_source="tuned", hp_trial=None,
              learner_kind="gradient", inner_loop=True, status="completed", meta_steps=100):
    """A trials row through the store's one builder (as every writer makes them)."""
    from metasweep.analysis.store import trial_row as build

    hparams = hparams or {"alpha": 0.01, "beta": 0.001, "inner_steps": 1, "meta_batch": 25}
    return build(experiment="synth", stage=stage, trial_id=tid, attempt=0, variant=variant, status=status,
                 task_family="sine", train_shots=train_shots, seed=seed, learner_kind=learner_kind,
                 inner_loop=inner_loop, hparams=hparams, hp_source=hp_source, hp_source_trial=hp_trial,
                 config={**hparams, "meta_steps": meta_steps}, meta_steps=meta_steps, device="cpu")


TRAIN = (5, 10)


def tuned_hp(v, k):
    """Each (variant, train shots) cell's own tuned alpha and beta, as a tune stage leaves them."""
    i = list(SHIFT).index(v)
    hp = {"alpha": round(0.004 * (i + 1) * k / 5 + 0.0013, 6), "beta": 0.001 * (i + 1), "inner_steps": 1,
          "meta_batch": 25}
    return {**hp, "temperature": 0.5 + 0.1 * k, "mask_eval": "sample"} if v == "mt-net" else hp


def write_tuned_test_stage(root, sources=None, n_tasks=60):
    """A tune + test experiment with train_shots [5, 10]: every cell has its own tuned alpha/beta
    (issue 11 case 6). `sources` overrides a cell's hp_source. Returns the expected matrices
    {(variant, train, eval shots): [seeds, tasks]}."""
    rng = np.random.default_rng(7)
    task = {s: rng.gamma(2.0, 1.0, n_tasks) * (5 / s) for s in SHOTS}
    expected = {}
    for v, shift in SHIFT.items():
        for k in TRAIN:
            source = (sources or {}).get((v, k), "tuned")
            for j in range(2):  # the tune stage's trials (never ranked with the test stage)
                hp = {**tuned_hp(v, k), "alpha": 0.05 * (j + 1)}
                write_trial(root, built_row(f"tune-{v}-k{k}-{j}", v, 0, stage="tune", train_shots=k, hparams=hp,
                                            hp_source=None), curve_cols(), {})
            for seed in SEEDS:
                losses = {s: task[s] * (1 - 0.02 * k) + shift + 0.1 * rng.standard_normal(n_tasks) for s in SHOTS}
                for s in SHOTS:
                    expected.setdefault((v, k, s), []).append(losses[s])
                write_trial(root, built_row(f"test-{v}-k{k}-s{seed}", v, seed, train_shots=k, hparams=tuned_hp(v, k),
                                            hp_source=source, hp_trial=f"tune-{v}-k{k}-0" if source == "tuned" else None),
                            curve_cols(), eval_cols(losses))
    return {key: np.stack(m) for key, m in expected.items()}


@pytest.fixture(scope="module")
def tuned_ds(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tuned") / "tuned")
    return root, write_tuned_test_stage(root)


def test_a_tuned_stage_with_several_train_shots_ranks_one_row_per_variant(tuned_ds):
    """Issue 11 case 6: each cell's own tuned alpha/beta must not split its variant into rows."""
    root, exp = tuned_ds
    r = compute_ranking(root)
    assert r.variants == ["maml", "mt-net", "t-net"]
    assert r.settings == [(5, 5), (5, 10), (10, 5), (10, 10)]
    for (v, k, s), mat in exp.items():
        c = r.cells[(v, (k, s))]
        assert (c.n_seeds, c.n_tasks) == (3, 60) and c.mean == pytest.approx(mat.mean(), rel=1e-12)
    assert set(r.avg_rank) == {"maml", "mt-net", "t-net"} and r.avg_rank["maml"] == 3.0
    assert r.friedman and r.friedman["n_settings"] == 4
    assert r.baseline == "maml" and len(r.paired) == 4 * 2
    for p in r.paired:
        k, s = p["setting"]
        d = exp[(p["variant"], k, s)].mean(axis=0) - exp[("maml", k, s)].mean(axis=0)
        assert p["baseline"] == "maml" and p["mean_diff"] == pytest.approx(d.mean(), rel=1e-12)
    header, body = rk_render.table_rows(r)
    assert header == ["variant", "train 5 / eval 5-shot", "train 5 / eval 10-shot", "train 10 / eval 5-shot",
                      "train 10 / eval 10-shot", "avg rank", "seeds"]
    assert [row[-1] for row in body] == ["3/3", "3/3", "3/3"]


def test_the_tuned_hyper_parameters_are_a_table_of_their_own(tuned_ds):
    root, _ = tuned_ds
    r = compute_ranking(root)
    header, body, common = rk_render.config_rows(r)
    assert header == ["variant", "train shots", "source", "alpha", "beta", "temperature", "mask_eval", "from trial"]
    assert common == "hyper-parameters the same in every cell: inner_steps=1, meta_batch=25"
    got = {(row[0], int(row[1])): row for row in body}
    assert sorted(got) == [(v, k) for v in ("maml", "mt-net", "t-net") for k in TRAIN]
    for (v, k), row in got.items():
        hp = tuned_hp(v, k)
        assert row[2] == "tuned" and row[-1] == f"tune-{v}-k{k}-0"
        assert float(row[3]) == pytest.approx(hp["alpha"], rel=1e-3) and float(row[4]) == pytest.approx(hp["beta"])
        assert (row[5] != "-") == (v == "mt-net")  # the temperature of the masked variant only
    rows = list(csv.DictReader(io.StringIO(render(r, "csv"))))
    assert len(rows) == 3 * 4
    for row in rows:
        assert json.loads(row["hparams"]) == tuned_hp(row["variant"], int(row["train_shots"]))
        assert row["hp_source"] == "tuned" and row["note"] == ""
    md = render(r, "markdown")
    assert "| variant | train shots | source | alpha | beta | temperature | mask_eval | from trial |" in md


def test_rank_cli_on_a_tuned_stage_with_several_train_shots(tuned_ds):
    root, _ = tuned_ds
    out = metasweep("rank", root)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rows = [ln.split("│")[1].strip() for ln in lines if ln.startswith("│") and "±" in ln]
    assert rows == ["maml", "mt-net", "t-net"]  # no `maml alpha=...` rows
    assert "paired tests against maml" in out.stdout and "hyper-parameters per (variant, train shots) cell" in out.stdout
    assert "Friedman test over 4 settings" in " ".join(out.stdout.split())


@pytest.fixture(scope="module")
def grid_ds(tmp_path_factory):
    """A grid over alpha x variants x train shots [5, 10]: mt-net also reads a temperature."""
    root = str(tmp_path_factory.mktemp("grid2") / "grid")
    rng = np.random.default_rng(11)
    task = rng.gamma(2.0, 1.0, 40)
    for v, shift in SHIFT.items():
        for a in (0.01, 0.1):
            for k in TRAIN:
                hp = {"alpha": a, "beta": 0.001, "inner_steps": 1, "meta_batch": 25}
                if v == "mt-net":
                    hp.update(temperature=1.0, mask_eval="sample")
                for seed in (0, 1):
                    losses = {5: task + shift - 3 * a + 0.05 * rng.standard_normal(40)}
                    write_trial(root, built_row(f"grid-{v}-{a}-k{k}-{seed}", v, seed, stage="grid", train_shots=k,
                                                hparams=hp, hp_source="grid"), curve_cols(), eval_cols(losses))
    return root


def test_grid_rows_keep_their_grid_values_and_meet_the_baseline_at_the_same_point(grid_ds):
    from metasweep.analysis.query import connect

    r = compute_ranking(grid_ds)
    assert r.variants == [f"{v} alpha={a}" for v in ("maml", "mt-net", "t-net") for a in (0.01, 0.1)]
    assert r.settings == [(5, 5), (10, 5)] and r.configs == []
    con = connect(grid_ds)
    for setting in r.settings:
        tests = [p for p in r.paired if p["setting"] == setting]
        assert sorted((p["variant"], p["baseline"]) for p in tests) == [
            (f"{v} alpha={a}", f"maml alpha={a}") for v in ("mt-net", "t-net") for a in (0.01, 0.1)]
        per_task = {}
        for label in r.variants:
            v, a = label.split(" alpha=")
            per_task[label] = np.array(con.sql(
                f"""select avg(e.loss) from eval_tasks e join trials t using (trial_id, attempt)
                    where t.variant = '{v}' and t.alpha = {a} and t.train_shots = {setting[0]}
                    group by e.task_index order by e.task_index""").fetchall())[:, 0]
        raw = [stats.paired_test(per_task[p["variant"]], per_task[p["baseline"]]) for p in tests]
        for p, want, holm in zip(tests, raw, holm_by_hand([w["p_wilcoxon"] for w in raw])):
            assert p["mean_diff"] == pytest.approx(want["mean_diff"], rel=1e-12)
            assert p["p_holm"] == pytest.approx(holm, rel=1e-9)
    text = render(r, "markdown")
    assert "| setting | variant | baseline row | Δ vs maml |" in text and "| maml alpha=0.1 |" in text


def test_no_baseline_at_a_grid_point_is_a_note_not_a_wrong_comparison(tmp_path):
    root = str(tmp_path / "g")
    rng = np.random.default_rng(2)
    for v, a in (("maml", 0.1), ("t-net", 0.01), ("t-net", 0.1)):
        for seed in (0, 1):
            hp = {"alpha": a, "beta": 0.001, "inner_steps": 1, "meta_batch": 25}
            write_trial(root, built_row(f"{v}-{a}-{seed}", v, seed, stage="grid", hparams=hp, hp_source="grid"),
                        curve_cols(), eval_cols({5: rng.normal(size=20)}))
    r = compute_ranking(root)
    assert r.variants == ["maml", "t-net alpha=0.01", "t-net alpha=0.1"]
    assert [(p["variant"], p["baseline"]) for p in r.paired] == [("t-net alpha=0.1", "maml")]
    assert "no maml row at the same grid point as t-net alpha=0.01: no paired test for them" in r.notes


def test_what_a_variant_sets_for_itself_does_not_part_it_from_its_grid_point(tmp_path):
    """A variant with its own budget (t-net: 300 meta-steps, maml 100) and its own beta is paired at
    each grid value of alpha with maml's row of that alpha; the dimension of the grid still parts rows."""
    root = str(tmp_path / "g")
    rng = np.random.default_rng(3)
    for v, steps, beta in (("maml", 100, 0.001), ("t-net", 300, 0.003)):
        for a in (0.01, 0.1):
            for seed in (0, 1):
                hp = {"alpha": a, "beta": beta, "inner_steps": 1, "meta_batch": 25}
                write_trial(root, built_row(f"{v}-{a}-{seed}", v, seed, stage="grid", hparams=hp, hp_source="grid",
                                            meta_steps=steps), curve_cols(), eval_cols({5: rng.normal(size=20)}))
    r = compute_ranking(root)
    assert r.variants == ["maml alpha=0.01", "maml alpha=0.1", "t-net alpha=0.01", "t-net alpha=0.1"]
    assert sorted((p["variant"], p["baseline"]) for p in r.paired) == [
        ("t-net alpha=0.01", "maml alpha=0.01"), ("t-net alpha=0.1", "maml alpha=0.1")]
    assert not any("same grid point" in n for n in r.notes)


# ------------------------------------------------------------------------------------------ learners without an inner loop


def test_a_learner_without_inner_loop_is_ranked_at_every_inner_step_count(tmp_path):
    """A Prototypical Network has only inner_steps = 0 rows: it is ranked beside MAML at 1 and at 5
    steps with those rows, with a note; never dropped."""
    root = str(tmp_path / "proto")
    rng = np.random.default_rng(4)
    task = rng.gamma(2.0, 1.0, 50)
    proto_hp = {"beta": 0.001, "meta_batch": 25, "distance": "euclidean"}
    proto = {}
    for seed in (0, 1):
        maml = {(5, st): task / (1 + st) + 0.05 * rng.standard_normal(50) for st in (0, 1, 5)}
        write_trial(root, built_row(f"maml-{seed}", "maml", seed), curve_cols(), eval_cols(maml))
        proto[seed] = task * 0.4 + 0.05 * rng.standard_normal(50)
        write_trial(root, built_row(f"proto-{seed}", "protonet", seed, hparams=proto_hp, learner_kind="metric",
                                    inner_loop=False), curve_cols(), eval_cols({(5, 0): proto[seed]}))
    want = (proto[0] + proto[1]) / 2
    for steps in (None, 5, 0):
        r = compute_ranking(root, inner_steps=steps)
        assert r.variants == ["maml", "protonet"] and r.inner_steps == (steps if steps is not None else 1)
        assert r.cells[("protonet", (10, 5))].mean == pytest.approx(want.mean(), rel=1e-12)
        assert len(r.paired) == 1 and r.paired[0]["variant"] == "protonet"
        note = "protonet: no inner loop; its inner_steps = 0 rows stand for every number of inner steps"
        assert (note in r.notes) == (r.inner_steps > 0)
    with pytest.raises(ValueError, match=r"available: \[0, 1, 5\]"):
        compute_ranking(root, inner_steps=2)
    header, body, _ = rk_render.config_rows(compute_ranking(root))
    assert "distance" in header and {row[0]: row[header.index("alpha")] for row in body} == {"maml": "0.01",
                                                                                           "protonet": "-"}


def test_learners_without_inner_loop_rank_among_themselves_at_0_steps_when_no_gradient_row_is_there(tmp_path):
    """`--inner-steps 0` where the gradient learners were evaluated only after adaptation (eval
    inner_steps [1, 10], the shipped specs): the learners without an inner loop are ranked against each
    other (e.g. --baseline cnp) and the gradient rows are named in a note, not an error."""
    root = str(tmp_path / "bb")
    rng = np.random.default_rng(5)
    task = rng.gamma(2.0, 1.0, 40)
    values = {}
    for seed in (0, 1):
        write_trial(root, built_row(f"maml-{seed}", "maml", seed), curve_cols(),
                    eval_cols({(5, st): task / (1 + st) for st in (1, 10)}))
        for v, scale in (("cnp", 0.5), ("snail", 0.7)):
            values[(v, seed)] = task * scale + 0.05 * rng.standard_normal(40)
            write_trial(root, built_row(f"{v}-{seed}", v, seed, hparams={"beta": 0.001, "meta_batch": 25},
                                        learner_kind="blackbox", inner_loop=False), curve_cols(),
                        eval_cols({(5, 0): values[(v, seed)]}))
    r = compute_ranking(root, inner_steps=0, baseline="cnp")
    assert r.inner_steps == 0 and set(r.cells) == {("cnp", (10, 5)), ("snail", (10, 5))}
    want = (values[("snail", 0)] + values[("snail", 1)]) / 2
    assert r.cells[("snail", (10, 5))].mean == pytest.approx(want.mean(), rel=1e-12)
    assert [(p["variant"], p["baseline"]) for p in r.paired] == [("snail", "cnp")]
    assert "maml: not evaluated at 0 inner steps (evaluated at 1, 10): not ranked here" in r.notes
    with pytest.raises(ValueError, match=r"available: \[0, 1, 10\]"):
        compute_ranking(root, inner_steps=2)


# ------------------------------------------------------------------------------------------ untuned cells (case 2)


def test_a_cell_that_ran_untuned_is_a_note_in_every_format(tmp_path):
    """Issue 11 case 2: a cell whose tune stage had no finite result ran on the defaults; every
    ranking format says so."""
    root = str(tmp_path / "fallback")
    write_tuned_test_stage(root, sources={("mt-net", 10): "fallback"}, n_tasks=20)
    r = compute_ranking(root)
    note = "mt-net (train 10-shot) ran on the spec's defaults: its tune stage had no finite result"
    assert note in r.notes and sum("spec's defaults" in n for n in r.notes) == 1
    assert f"- {note}" in render(r, "markdown")
    tex = render(r, "latex")
    assert f"% note: {note}" in tex and "Note: mt-net (train 10-shot) ran on the spec's defaults" in tex.split(r"\caption{")[1]
    rows = list(csv.DictReader(io.StringIO(render(r, "csv"))))
    assert {(row["variant"], row["train_shots"]) for row in rows if row["note"]} == {("mt-net", "10")}
    assert {row["note"] for row in rows if row["note"]} == {note}
    assert {row["hp_source"] for row in rows if row["variant"] == "mt-net" and row["train_shots"] == "10"} == {"fallback"}
    out = metasweep("rank", root)
    assert out.returncode == 0 and f"note: {note}" in out.stdout
    header, body, _ = rk_render.config_rows(r)
    assert [row[2] for row in body if row[:2] == ["mt-net", "10"]] == ["fallback"]


def test_a_stage_run_entirely_on_defaults_says_so_once(tmp_path):
    root = str(tmp_path / "defaults")
    write_tuned_test_stage(root, sources={(v, k): "defaults" for v in SHIFT for k in TRAIN}, n_tasks=20)
    r = compute_ranking(root)
    note = "every variant ran on the spec's defaults: there was no tune stage"
    assert [n for n in r.notes if "defaults" in n] == [note]
    rows = list(csv.DictReader(io.StringIO(render(r, "csv"))))
    assert all(row["note"].endswith("ran on the spec's defaults: there was no tune stage") for row in rows)
    assert note in render(r, "latex") and f"- {note}" in render(r, "markdown")
