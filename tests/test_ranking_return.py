"""The `return` metric (reinforcement learning: higher is better) through the ranking and plots on a
synthetic dataset: sort order, best and ties, the sign of the paired difference and P(better), the
average ranks, the CSV; returns curves are the negated loss curves; older files without the column."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_ranking import curve_cols, eval_cols, trial_row

from metasweep.analysis import plots
from metasweep.analysis.figures import curves as curves_figure
from metasweep.analysis.figures.common import Context
from metasweep.analysis.metrics import METRICS, get_metric
from metasweep.analysis.query import connect
from metasweep.analysis.ranking import compute_ranking
from metasweep.analysis.render import paired_rows, render
from metasweep.analysis.store import read_dataset, write_trial

RETURN = {"maml-trpo": -30.0, "anil-trpo": -25.0, "fomaml-trpo": -40.0}  # anil best, fomaml worst


def return_cols(returns):
    cols = eval_cols({20: -returns})
    cols["return"] = [float(r) for r in returns]
    return cols


@pytest.fixture(scope="module")
def rl_ds(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rl"))
    rng = np.random.default_rng(0)
    task = rng.normal(0, 8, size=60)  # task difficulty shared by every variant (paired)
    for v, mean in RETURN.items():
        for seed in (0, 1, 2):
            r = mean + task + rng.normal(0, 1, size=60)
            row = {**trial_row(f"{v}-{seed}", v, seed), "task_family": "navigation2d", "train_shots": 20}
            write_trial(root, row, {**curve_cols(), "val_loss": [-mean - 5, -mean - 2, -mean]}, return_cols(r))
    return root


def test_metrics_have_one_owner_with_a_direction():
    assert [m for m in METRICS] == ["loss", "accuracy", "return"]
    assert get_metric("return").higher_is_better and get_metric("loss").lower_is_better
    assert get_metric("return").better(-20.0, -30.0) and get_metric("loss").better(0.1, 0.2)
    with pytest.raises(ValueError, match="metric must be loss, accuracy, return"):
        get_metric("reward")


def test_return_is_ranked_higher_is_better(rl_ds):
    r = compute_ranking(rl_ds, metric="return", baseline="maml-trpo")
    assert not r.lower_is_better
    st = r.settings[0]
    best = [v for v in r.variants if r.cells[(v, st)].best]
    assert best == ["anil-trpo"]
    assert r.cells[("anil-trpo", st)].mean == pytest.approx(-25.0, abs=1.5)
    assert r.avg_rank == {"anil-trpo": 1.0, "maml-trpo": 2.0, "fomaml-trpo": 3.0}
    tests = {p["variant"]: p for p in r.paired}
    assert tests["anil-trpo"]["mean_diff"] == pytest.approx(5.0, abs=0.5) and tests["anil-trpo"]["p_holm"] < 1e-6
    header, body = paired_rows(r)
    better = {row[1]: float(row[header.index("P(better)")]) for row in body}
    assert better["anil-trpo"] > 0.95 and better["fomaml-trpo"] < 0.05  # P(better) points the right way
    md = render(r, "markdown")
    assert "higher is better" in md and "**-2" in md  # the best cell (about -25) in bold
    csv = render(r, "csv").splitlines()
    best_col = csv[0].split(",").index("best")
    assert [line.split(",")[best_col] for line in csv[1:] if line.startswith("anil-trpo")] == ["True"]


def test_loss_of_an_rl_dataset_is_minus_the_return(rl_ds):
    by_loss = compute_ranking(rl_ds, metric="loss", baseline="maml-trpo")
    by_return = compute_ranking(rl_ds, metric="return", baseline="maml-trpo")
    st = by_loss.settings[0]
    for v in RETURN:
        assert by_loss.cells[(v, st)].mean == pytest.approx(-by_return.cells[(v, st)].mean)
    assert by_loss.avg_rank == by_return.avg_rank


def test_return_curves_are_the_negated_loss_curves(rl_ds, tmp_path):
    con = connect(rl_ds, ("trials", "curves"))
    d = curves_figure.data(Context(con, rl_ds), "return")
    sel = d.rows["label"] == "anil-trpo"
    assert np.allclose(d.rows["v_mean"][sel], [-20.0, -23.0, -25.0])  # val_loss = [25 - 5, 25 - 2, 25] negated
    assert d.with_train
    out = tmp_path / "curves.png"
    assert plots.make_plot(rl_ds, "curves", str(out), metric="return") == str(out) and out.stat().st_size > 0
    plots.make_plot(rl_ds, "ranks", str(tmp_path / "ranks.png"), metric="return")


def test_files_written_before_the_return_column_read_null(tmp_path):
    root = str(tmp_path / "old")
    rng = np.random.default_rng(1)
    for v in ("maml", "t-net"):
        write_trial(root, trial_row(f"{v}-0", v, 0), curve_cols(), eval_cols({5: rng.normal(size=10)}))
    path = f"{root}/eval_tasks/maml-0__a0.parquet"
    t = pq.read_table(path)
    pq.write_table(t.drop(["return"]).replace_schema_metadata(t.schema.metadata), path)  # as an older metasweep wrote it
    assert "return" not in pq.read_schema(path).names
    ds = read_dataset(root)
    assert ds["eval_tasks"].schema.field("return").type == pa.float64()
    with pytest.raises(ValueError, match="no return"):
        compute_ranking(root, metric="return")
    assert compute_ranking(root, metric="loss").variants == ["maml", "t-net"]


def test_rank_and_plot_take_the_return_metric_on_the_command_line(rl_ds, tmp_path):
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", *args], capture_output=True, text=True,
                              timeout=300)

    r = cli("rank", rl_ds, "--metric", "return", "--baseline", "maml-trpo", "--format", "csv")
    assert r.returncode == 0, r.stderr
    best = [line.split(",")[0] for line in r.stdout.splitlines()[1:] if ",True," in line]
    assert best[:1] == ["anil-trpo"]
    bad = cli("rank", rl_ds, "--metric", "reward")
    assert bad.returncode == 2 and bad.stderr.strip() == \
        "error: --metric: metric must be loss, accuracy, return (got 'reward')"
    png = tmp_path / "curves.png"
    drawn = cli("plot", rl_ds, "--kind", "curves", "--metric", "return", "-o", str(png))
    assert drawn.returncode == 0, drawn.stderr
    assert png.stat().st_size > 10_000
    rep = cli("report", rl_ds, "--metric", "return", "--baseline", "maml-trpo")
    assert rep.returncode == 0, rep.stderr
    # a baseline the user names must be a variant of the stage (the default, maml, only where present)
    for command in ("rank", "report"):
        for name in ("maml", "anil"):  # the default's name given explicitly; a near miss
            wrong = cli(command, rl_ds, "--metric", "return", "--baseline", name)
            assert wrong.returncode == 2 and "Traceback" not in wrong.stderr, wrong.stderr[-2000:]
            assert wrong.stderr.strip().startswith(f"error: --baseline {name}: not a variant of stage test of ")
            assert wrong.stderr.strip().endswith("(its variants: anil-trpo, fomaml-trpo, maml-trpo)")
        default = cli(command, rl_ds, "--metric", "return")
        assert default.returncode == 0, default.stderr
        assert "baseline 'maml' is not in this stage" in default.stdout
    section = rep.stdout.split("## Per seed")[1]
    assert "Each seed's mean return" in section and "| anil-trpo |" in section
    assert "higher is better" in rep.stdout.split("## Per seed")[0]
