"""`metasweep plot` and `metasweep query` on a real tiny sweep (run once for the module) and on
synthetic datasets written with `write_trial` (alpha grid with diverged points, polynomial orders)."""

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from metasweep.analysis import plots
from metasweep.analysis.figures import alpha as alpha_figure
from metasweep.analysis.figures import curves as curves_figure
from metasweep.analysis.figures import masks as masks_figure
from metasweep.analysis.figures.common import Context
from metasweep.analysis.query import connect, query_table
from metasweep.analysis.store import write_trial

SPECS = Path(__file__).parent / "specs"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def metasweep(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny spec swept once on a local Ray: 3 variants, tune (2 trials each) and test (seeds 0, 1)."""
    work = tmp_path_factory.mktemp("tiny")
    r = metasweep("sweep", str(SPECS / "tiny.yaml"), "--storage", str(work / "res"), "--no-rank", cwd=work,
                  timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return work / "res" / "tiny"


def assert_real_png(path: Path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000
    img = mpimg.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    flat = img.reshape(-1, img.shape[2])
    assert len(np.unique(flat[:: max(1, len(flat) // 50_000)], axis=0)) > 20  # not a single colour


def one_error_line(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


# ------------------------------------------------------------------------------------------ real sweep


@pytest.mark.parametrize("kind", ["curves", "ranks", "mask-fraction"])
def test_plot_cli_on_a_real_sweep(tiny, tmp_path, kind):
    out = tmp_path / f"{kind}.png"
    r = metasweep("plot", str(tiny), "--kind", kind, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in " ".join(r.stderr.split())  # rich may wrap the line
    assert_real_png(out)


def test_plot_cli_tune_stage_curves(tiny, tmp_path):
    out = tmp_path / "tune.png"
    r = metasweep("plot", str(tiny), "--kind", "curves", "--stage", "tune", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert_real_png(out)


def test_plot_cli_errors_are_one_line(tiny, tmp_path):
    one_error_line(metasweep("plot", str(tiny), "--kind", "bogus", "-o", str(tmp_path / "x.png")),
                   "--kind: must be one of curves, alpha, mask-fraction, ranks, cka (got 'bogus')")
    one_error_line(metasweep("plot", str(tiny), "--kind", "curves", "-o", str(tmp_path / "x.jpg")), "PNG")
    one_error_line(metasweep("plot", str(tiny), "--kind", "alpha", "-o", str(tmp_path / "x.png")),
                   "needs a sweep over alpha (a grid over alpha)")
    one_error_line(metasweep("plot", str(tiny), "--kind", "curves", "--stage", "grid", "-o", str(tmp_path / "x.png")),
                   "no trials of stage 'grid'; stages present: test, tune")
    one_error_line(metasweep("plot", str(tiny), "--kind", "curves", "--metric", "accuracy", "-o",
                             str(tmp_path / "x.png")), "no validation accuracy")
    one_error_line(metasweep("plot", str(tmp_path / "nope"), "--kind", "curves", "-o", str(tmp_path / "x.png")),
                   "no results dataset here")
    assert not (tmp_path / "x.png").exists()


def test_query_prints_counts(tiny):
    r = metasweep("query", str(tiny), "select variant, count(*) as n from trials group by variant order by variant")
    assert r.returncode == 0, r.stderr
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in r.stdout.splitlines()
            if line.startswith("│")}
    assert rows == {"maml": "4", "mt-net": "4", "t-net": "4"}  # 2 tune + 2 test trials each
    assert "3 row(s)" in r.stdout


def test_query_writes_csv_and_parquet(tiny, tmp_path):
    sql = "select variant, count(*) from trials group by variant"
    r = metasweep("query", str(tiny), sql, "-o", str(tmp_path / "out.csv"))
    assert r.returncode == 0, r.stderr
    t = pcsv.read_csv(tmp_path / "out.csv")
    assert t.num_rows == 3 and sorted(t.column("variant").to_pylist()) == ["maml", "mt-net", "t-net"]
    r = metasweep("query", str(tiny), "select * from eval_tasks", "-o", str(tmp_path / "out.parquet"))
    assert r.returncode == 0, r.stderr
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 12 * 20 * 2 * 2  # trials x tasks x shots x steps
    # list columns become text in CSV
    r = metasweep("query", str(tiny), "select * from curves", "-o", str(tmp_path / "curves.csv"))
    assert r.returncode == 0, r.stderr
    assert pcsv.read_csv(tmp_path / "curves.csv").num_rows == 12 * 2


def test_query_errors_are_clear(tiny, tmp_path):
    r = metasweep("query", str(tiny), "selec 1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith('error: Parser Error: syntax error at or near "selec"')
    r = metasweep("query", str(tiny), "select * from runs")
    assert r.returncode == 2 and "runs does not exist" in r.stderr and "trials, curves, eval_tasks" in r.stderr
    one_error_line(metasweep("query", str(tiny), "select 1", "-o", str(tmp_path / "x.json")),
                   "must end in .csv or .parquet")


def test_connect_for_python_users(tiny):
    con = connect(str(tiny))
    n = con.sql("select count(*) from eval_tasks e join trials t using (trial_id, attempt) "
                "where t.stage = 'test'").fetchall()[0][0]
    assert n == 6 * 20 * 2 * 2
    t = query_table(str(tiny), "select distinct stage from trials order by stage")
    assert t.column("stage").to_pylist() == ["test", "tune"]
    with pytest.raises(ValueError, match="Parser Error"):
        query_table(str(tiny), "selec 1", con=con)


# ------------------------------------------------------------------------------------------ synthetic


def trial_row(tid, variant, seed, *, stage="grid", alpha=0.01, status="completed", family="sine", options=None):
    now = dt.datetime.now(dt.timezone.utc)
    options = options or {}
    masked = variant in ("mt-net", "m-net")
    config = {"alpha": alpha, "beta": 0.001, "inner_steps": 1, "meta_batch": 25, "meta_steps": 100,
              "task": family, "task_options": options, "variant": variant, "seed": seed}
    return {"experiment": "synth", "stage": stage, "trial_id": tid, "attempt": 0, "variant": variant,
            "task_family": family, "task_options": json.dumps(options, sort_keys=True), "train_shots": 10,
            "seed": seed, "alpha": alpha, "beta": 0.001, "temperature": 1.0 if masked else None, "inner_steps": 1,
            "meta_batch": 25, "config": json.dumps(config), "status": status,
            "meta_steps": 100 if status == "completed" else 30, "started_at": now, "ended_at": now}


def evals(per_shots: dict, steps=(1, 5)):
    cols = {k: [] for k in ("split", "eval_seed", "task_index", "shots", "inner_steps", "loss")}
    for shots, vals in per_shots.items():
        for st in steps:
            cols["split"] += ["test"] * len(vals)
            cols["eval_seed"] += [1] * len(vals)
            cols["task_index"] += list(range(len(vals)))
            cols["shots"] += [shots] * len(vals)
            cols["inner_steps"] += [st] * len(vals)
            cols["loss"] += [float(v) / st ** 0.5 for v in vals]
    return cols


def curves(n=3, cells=None):
    out = {"meta_step": [10 * (i + 1) for i in range(n)], "val_loss": [2.0 / (i + 1) for i in range(n)],
           "meta_train_loss": [2.5 / (i + 1) for i in range(n)]}
    if cells is not None:
        out["mask_fraction_per_cell"] = [[c * (i + 1) / n for c in cells] for i in range(n)]
        out["mask_fraction"] = [float(np.mean(c)) for c in out["mask_fraction_per_cell"]]
    return out


ALPHAS = (0.001, 0.01, 0.1, 1.0)


@pytest.fixture(scope="module")
def alpha_grid(tmp_path_factory):
    """maml and mt-net over 4 alphas x 2 seeds; mt-net at alpha 1.0 diverged (no eval rows), maml at
    alpha 1.0 completed but its adapted loss overflows on some tasks."""
    root = str(tmp_path_factory.mktemp("alpha") / "grid")
    rng = np.random.default_rng(0)
    task = rng.gamma(2.0, 1.0, 40)
    for v in ("maml", "mt-net"):
        for a in ALPHAS:
            for seed in (0, 1):
                tid = f"grid-{v}-{a}-{seed}"
                if v == "mt-net" and a == 1.0:
                    write_trial(root, trial_row(tid, v, seed, alpha=a, status="diverged"), curves(1), {})
                    continue
                base = task * (1 + abs(np.log10(a) + 2) * (0.8 if v == "maml" else 0.3))
                losses = {s: base * (5 / s) + 0.05 * rng.standard_normal(40) for s in (5, 10)}
                if v == "maml" and a == 1.0:
                    for x in losses.values():
                        x[:3] = np.inf
                write_trial(root, trial_row(tid, v, seed, alpha=a, options={}), curves(), evals(losses))
    return root


def test_alpha_plot_marks_diverged_points(alpha_grid, tmp_path):
    out = tmp_path / "alpha.png"
    r = metasweep("plot", alpha_grid, "--kind", "alpha", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert_real_png(out)
    ctx = Context(connect(alpha_grid), alpha_grid, "grid")
    fig = alpha_figure.figure(ctx, "loss")
    panels = fig.axes
    assert len(panels) == 2 * 2  # (1 and 5 inner steps) x (5 and 10 shots)
    for ax in panels:
        assert ax.get_xscale() == "log"
        crosses = [ln for ln in ax.lines if ln.get_marker() == "x"]
        assert sorted(ln.get_xdata()[0] for ln in crosses) == [1.0, 1.0]  # mt-net diverged, maml non-finite
        # 3 finite alphas per variant plotted with error bars, plus maml's... none at alpha 1.0
        pts = {tuple(ln.get_xdata()) for ln in ax.lines if ln.get_marker() == "o"}
        assert pts == {ALPHAS[:3]}
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "diverged / non-finite (not averaged in)" in legend and "maml" in legend and "mt-net" in legend
    assert "experiment synth, stage grid" in fig.get_suptitle()


def test_alpha_plot_points_are_mean_and_ci_over_tasks(alpha_grid):
    ctx = Context(connect(alpha_grid), alpha_grid, "grid")
    fig = alpha_figure.figure(ctx, "loss")
    ax = fig.axes[0]  # 5-shot, 1 inner step
    assert ax.get_title() == "5-shot, 1 inner step"
    con = connect(alpha_grid)
    want = con.sql("""select t.alpha, e.task_index, avg(e.loss) v from eval_tasks e join trials t
                      using (trial_id, attempt) where t.variant = 'mt-net' and e.shots = 5 and e.inner_steps = 1
                      group by all order by t.alpha, e.task_index""").fetchnumpy()
    line = next(c for c in ax.containers if c.get_label() == "mt-net").lines[0]
    for a, y in zip(line.get_xdata(), line.get_ydata()):
        v = want["v"][want["alpha"] == a]
        assert y == pytest.approx(v.mean(), rel=1e-12)


@pytest.fixture(scope="module")
def poly_masks(tmp_path_factory):
    """mt-net on polynomials of order 0, 1, 2 (2 seeds each) reporting per-layer mask fractions that
    grow with the order (MT-net Fig. 4), plus a maml trial without masks."""
    root = str(tmp_path_factory.mktemp("poly") / "poly")
    expected = {}
    for order in (0, 1, 2):
        for seed in (0, 1):
            cells = [0.2 + 0.2 * order + 0.02 * seed, 0.1 + 0.1 * order, 0.05 + 0.3 * order + 0.01 * seed]
            expected.setdefault(order, []).append(cells)
            tid = f"grid-mt-{order}-{seed}"
            write_trial(root, trial_row(tid, "mt-net", seed, options={"order": order}, family="polynomial"),
                        curves(3, cells), evals({10: np.ones(5)}))
    write_trial(root, trial_row("grid-maml-0", "maml", 0, options={"order": 1}, family="polynomial"), curves(3),
                evals({10: np.ones(5)}))
    return root, {k: np.array(v) for k, v in expected.items()}


def test_mask_fraction_plot_groups_by_polynomial_order(poly_masks, tmp_path):
    root, expected = poly_masks
    out = tmp_path / "mask.png"
    r = metasweep("plot", root, "--kind", "mask-fraction", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert_real_png(out)
    ctx = Context(connect(root), root, "grid")
    fig = masks_figure.figure(ctx, "loss")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["order 0 (2 trial(s))", "order 1 (2 trial(s))", "order 2 (2 trial(s))"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["layer 1", "layer 2", "layer 3 (output)", "overall"]
    bars = [p for p in ax.patches if p.get_width() < 1]
    heights = np.array([b.get_height() for b in bars]).reshape(3, 4)  # order x (3 layers + overall)
    for k, order in enumerate((0, 1, 2)):
        want = expected[order].mean(axis=0)  # the last report holds the full per-cell values
        assert heights[k, :3] == pytest.approx(want, rel=1e-12)
        assert heights[k, 3] == pytest.approx(expected[order].mean(), rel=1e-12)
    assert ax.get_ylabel() == "fraction of weights updated (0–1)"


def test_mask_fraction_without_masked_variant_is_an_error(alpha_grid, tmp_path):
    only_maml = tmp_path / "m"
    write_trial(str(only_maml), trial_row("t0", "maml", 0), curves(), evals({5: np.ones(4)}))
    one_error_line(metasweep("plot", str(only_maml), "--kind", "mask-fraction", "-o", str(tmp_path / "x.png")),
                   "no masked variant")


def test_curves_and_ranks_on_a_grid(alpha_grid, tmp_path):
    out = tmp_path / "curves.png"
    assert plots.make_plot(alpha_grid, "curves", str(out)) == str(out)
    assert_real_png(out)
    ctx = Context(connect(alpha_grid), alpha_grid, "grid")
    fig = curves_figure.figure(ctx, "loss")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "maml alpha=0.001, 2 seed(s)" in labels and "mt-net alpha=1, 2 seed(s) (2 diverged)" in labels
    # maml at alpha 1.0 has a non-finite cell in every setting: it ranks last there (not dropped)
    from metasweep.analysis.ranking import compute_ranking

    r = compute_ranking(alpha_grid, stage="grid")
    worst = max(r.avg_rank.values())
    assert [v for v, rank in r.avg_rank.items() if rank == worst] == ["maml alpha=1"]
    assert plots.make_plot(alpha_grid, "ranks", str(tmp_path / "r.png"))
    assert_real_png(tmp_path / "r.png")
    with pytest.raises(ValueError, match="plot kind must be one of"):
        plots.make_plot(alpha_grid, "violin", str(tmp_path / "v.png"))


def test_connect_with_some_tables_keeps_the_latest_committed_attempt_only(tmp_path):
    from metasweep.analysis.store import write_table

    root = str(tmp_path / "att")
    write_trial(root, trial_row("t1", "maml", 0) | {"attempt": 0}, curves(5), evals({5: np.ones(3)}))
    write_trial(root, trial_row("t1", "maml", 0) | {"attempt": 1}, curves(2), evals({5: np.ones(4)}))
    write_table(root, "curves", {**curves(7), "trial_id": ["t1"] * 7, "attempt": [2] * 7}, "t1", 2)  # uncommitted
    full, part = connect(root), connect(root, ("trials", "curves"))
    q = "select attempt, count(*) from curves group by all"
    assert full.sql(q).fetchall() == part.sql(q).fetchall() == [(1, 2)]
    assert part.sql("select count(*) from trials").fetchall() == [(1,)]
    with pytest.raises(ValueError, match="unknown table"):
        connect(root, ("runs",))


def test_plot_and_rank_name_every_trial_alike(tmp_path):
    """One owner of labels: alphas that agree to 3 digits are two rows in `rank` and two curves in
    `plot` (plot merged them into one), named the same way."""
    from metasweep.analysis.ranking import compute_ranking

    root = str(tmp_path / "close")
    for a in (0.01001, 0.01002):
        for seed in (0, 1):
            write_trial(root, trial_row(f"g-{a}-{seed}", "maml", seed, alpha=a), curves(), evals({5: np.ones(4) + a}))
    r = compute_ranking(root)
    assert r.variants == ["maml alpha=0.01001", "maml alpha=0.01002"]
    ctx = Context(connect(root), root)
    assert ctx.series() == r.variants
    legend = [t.get_text() for t in curves_figure.figure(ctx, "loss").axes[0].get_legend().get_texts()]
    assert legend == ["maml alpha=0.01001, 2 seed(s)", "maml alpha=0.01002, 2 seed(s)"]


def test_plot_series_of_a_tuned_stage_are_variants_per_train_shots(tmp_path):
    """A test stage tuned per (variant, train shots) cell: one curve per variant and train shots,
    never one per tuned alpha."""
    root = str(tmp_path / "tuned")
    for v in ("maml", "t-net"):
        for k, a in ((5, 0.0123), (10, 0.0456)):
            for seed in (0, 1):
                row = trial_row(f"t-{v}-{k}-{seed}", v, seed, stage="test", alpha=a * (2 if v == "t-net" else 1))
                row.update(train_shots=k, hp_source="tuned")
                write_trial(root, row, curves(), evals({5: np.ones(4)}))
    ctx = Context(connect(root), root)
    assert ctx.stage == "test"
    assert ctx.series() == ["maml (train 5-shot)", "maml (train 10-shot)", "t-net (train 5-shot)",
                            "t-net (train 10-shot)"]
    legend = [t.get_text() for t in curves_figure.figure(ctx, "loss").axes[0].get_legend().get_texts()]
    assert legend == [f"{s}, 2 seed(s)" for s in ctx.series()]


def test_the_reproduction_reports_fig4_in_both_conventions(poly_masks):
    """P(update) = sigmoid(zeta) per layer and over all logits (with the seeds' range), the paper's
    formula E[sigmoid(-zeta)] = 1 - P(update), and the authors' logged layers' mean of sigmoid(-zeta)."""
    from metasweep.sweeps.reproduce import mask_fraction_table

    root, expected = poly_masks
    lines = mask_fraction_table(root).splitlines()
    assert lines[0].startswith("| order | layer 1 | layer 2 | layer 3 | overall P(update) | seeds' range |")
    for order in (0, 1, 2):
        per_seed = expected[order]  # [seeds, layers]
        per_layer, overall = per_seed.mean(axis=0), per_seed.mean(axis=1)  # the fixture's overall: layers' mean
        want = ([f"{v:.3f}" for v in per_layer] + [f"{overall.mean():.3f}", f"{overall.min():.3f}–{overall.max():.3f}",
                f"{1 - overall.mean():.3f}", f"{(1 - per_layer).mean():.3f}", "2"])
        row = next(li for li in lines if li.startswith(f"| {order} |"))
        assert row.strip("| ").split(" | ")[1:] == want
