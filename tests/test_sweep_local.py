"""Real sweeps on a real local Ray, as a user runs them (the CLI in a subprocess)."""

import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc

from metasweep.analysis.store import read_dataset

SPECS = Path(__file__).parent / "specs"


def metasweep(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def test_quickstart_shaped_sweep_writes_every_row_and_prints_a_ranking(tmp_path):
    r = metasweep("sweep", str(SPECS / "tiny.yaml"), "--storage", str(tmp_path / "res"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    exp = tmp_path / "res" / "tiny"
    ds = read_dataset(str(exp))
    trials = ds["trials"]
    stages = trials.column("stage").to_pylist()
    assert stages.count("tune") == 3 * 2 and stages.count("test") == 3 * 2
    assert set(trials.column("status").to_pylist()) == {"completed"}
    assert trials.column("attempt").to_pylist() == [0] * 12
    # curves: one row per report (20 steps / 10) per trial
    assert ds["curves"].num_rows == 12 * 2
    # eval rows: tasks x shots x steps per trial; tune trials on val tasks, test trials on test tasks
    assert ds["eval_tasks"].num_rows == 12 * 20 * 2 * 2
    splits = dict(zip(*pc.value_counts(ds["eval_tasks"]["split"]).flatten()))
    assert {k.as_py(): v.as_py() for k, v in zip(*pc.value_counts(ds["eval_tasks"]["split"]).flatten())} == \
        {"val": 6 * 80, "test": 6 * 80}
    del splits
    # the test stage retrains each variant's best tune configuration
    test_rows = [t for t in trials.to_pylist() if t["stage"] == "test"]
    tune_rows = [t for t in trials.to_pylist() if t["stage"] == "tune"]
    for v in ("maml", "t-net", "mt-net"):
        best = min((t for t in tune_rows if t["variant"] == v), key=lambda t: t["final_val_loss"])
        for t in (t for t in test_rows if t["variant"] == v):
            assert (t["alpha"], t["beta"]) == (best["alpha"], best["beta"])
            assert (t["hp_source"], t["hp_source_trial"]) == ("tuned", best["trial_id"])  # where the config came from
        assert sorted(t["seed"] for t in test_rows if t["variant"] == v) == [0, 1]
    assert {t["hp_source"] for t in tune_rows} == {None}  # drawn by the search
    # the temperature is searched for the masked variant only
    assert {t["temperature"] is None for t in tune_rows if t["variant"] != "mt-net"} == {True}
    assert all(0.5 <= t["temperature"] <= 2.0 for t in tune_rows if t["variant"] == "mt-net")
    assert "ranking: loss (stage test" in r.stdout and "paired tests against maml" in r.stdout
    assert (exp / "optuna.db").exists() and (exp / "spec.yaml").exists()
    st = metasweep("status", str(exp), cwd=tmp_path)
    assert st.returncode == 0 and "stages done: test, tune-maml-k10, tune-mt-net-k10, tune-t-net-k10" in st.stdout
    span = (max(t["ended_at"] for t in trials.to_pylist()) - min(t["started_at"] for t in trials.to_pylist()))
    assert f"({span.total_seconds():.0f} s); drivers' time on record: " in " ".join(st.stdout.split())
    # the same sweep again: every stage done before with the same inputs - its tables, no row, and no Ray
    again = metasweep("sweep", str(SPECS / "tiny.yaml"), "--storage", str(tmp_path / "res"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "test: every cell done before with the same inputs" in again.stderr and "Ray instance" not in again.stderr
    assert "tune-mt-net-k10: done before with the same inputs" in again.stderr
    assert again.stdout.split("ranking: loss")[1] == r.stdout.split("ranking: loss")[1]
    assert read_dataset(str(exp))["trials"].equals(trials)
    # the report: provenance, a ranking per evaluated inner-step count, per-seed values from the rows
    rep = metasweep("report", str(exp), "-o", str(tmp_path / "rep" / "report.md"), "--command", "metasweep sweep tiny",
                    cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr[-3000:]
    text = (tmp_path / "rep" / "report.md").read_text()
    assert text.startswith("# tiny\n") and "Command: `metasweep sweep tiny`" in text
    assert "Trials: test 6 completed; tune 6 completed" in text and "Wall time: " in text
    assert "; Ray nodes: 1 on 1 host" in text and "Evaluated iterate" not in text  # eval.select: last
    assert "## Ranking and paired tests (1 inner step)" in text and "## Ranking and paired tests (5 inner steps)" in text
    # the hyper-parameters of the ranked cells once, under the first ranking; later sections point to it
    assert text.count("hyper-parameters per (variant, train shots) cell") == 1
    assert text.index("hyper-parameters per (variant, train shots) cell") < text.index("(5 inner steps)")
    assert "(Hyper-parameters per cell: as in the first ranking above.)" in text.split("(5 inner steps)")[1]
    assert "```yaml" in text and "experiment: tiny" in text
    section = text.split("## Per seed (1 inner step)")[1].split("##")[0]
    ev = ds["eval_tasks"].to_pylist()
    by_id = {t["trial_id"]: t for t in trials.to_pylist()}
    for v in ("maml", "mt-net"):
        want = []
        for seed in (0, 1):
            losses = [e["loss"] for e in ev if e["inner_steps"] == 1 and e["shots"] == 5 and e["split"] == "test"
                      and by_id[e["trial_id"]]["variant"] == v and by_id[e["trial_id"]]["seed"] == seed]
            want.append(round(sum(losses) / len(losses), 3))
        line = next(li for li in section.splitlines() if li.startswith(f"| {v} | 5 |"))
        assert [float(x) for x in line.strip("| ").split(" | ")[2:4]] == want
    # what chose each test configuration: every tune trial's validation loss, the lowest per variant marked
    tune_section = text.split("## Tune stage: meta-validation loss of every configuration")[1].split("##")[0]
    marked = [li for li in tune_section.splitlines() if li.endswith("| ✓ |")]
    assert len(marked) == 3 and len([li for li in tune_section.splitlines() if li.startswith("| maml |")]) == 2
    for v in ("maml", "t-net", "mt-net"):
        best = min((t for t in tune_rows if t["variant"] == v), key=lambda t: t["final_val_loss"])
        assert any(li.startswith(f"| {v} |") and f"| {best['final_val_loss']:.4f} |" in li for li in marked)
    bad = metasweep("report", str(exp), "-o", str(tmp_path / "report.txt"), cwd=tmp_path)
    assert bad.returncode == 2 and "use a .md file name" in bad.stderr and "Traceback" not in bad.stderr
    for args in (("--stage", "grid"), ("--metric", "accuracy")):  # a report of error notes would hide them
        bad = metasweep("report", str(exp), *args, cwd=tmp_path)
        assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    missing = metasweep("report", str(tmp_path / "nothing"), cwd=tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_diverging_configuration_is_a_result_and_the_others_complete(tmp_path):
    spec = tmp_path / "div.yaml"
    spec.write_text("""
experiment: div
mode: grid
variants: [maml]
budget: {meta_steps: 20, report_every: 10, meta_batch: 5}
eval: {shots: [5], inner_steps: [1], tasks: 10, val_tasks: 5}
grid: {alpha: [0.01, 1.0e25]}
test: {seeds: [0]}
storage: res
""")
    r = metasweep("sweep", str(spec), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = read_dataset(str(tmp_path / "res" / "div"))["trials"].to_pylist()
    by_alpha = {t["alpha"]: t["status"] for t in trials}
    assert by_alpha == {0.01: "completed", 1.0e25: "diverged"}
    assert {t["hp_source"] for t in trials} == {"grid"}
    assert "diverged" in r.stdout  # the ranking notes it instead of averaging it in


def test_unreachable_address_is_one_clear_line(tmp_path):
    r = metasweep("sweep", str(SPECS / "tiny.yaml"), "--address", "127.0.0.1:1", "--storage", str(tmp_path),
                  cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        r.stderr.strip().splitlines()[0]] and "--address 127.0.0.1:1: no Ray cluster reachable" in r.stderr


def test_missing_storage_path_is_one_clear_line(tmp_path):
    r = metasweep("sweep", str(SPECS / "tiny.yaml"), "--storage", str(tmp_path / "no" / "such" / "dir"),
                  cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert "folder does not exist" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_rerunning_a_different_spec_into_the_same_experiment_is_refused(tmp_path):
    (tmp_path / "res" / "tiny").mkdir(parents=True)
    (tmp_path / "res" / "tiny" / "spec.yaml").write_text("experiment: tiny\nvariants: [maml]\n")
    r = metasweep("sweep", str(SPECS / "tiny.yaml"), "--storage", str(tmp_path / "res"), cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "already exists with a different spec" in r.stderr


def test_asha_stops_weak_tune_trials_early_and_keeps_their_curves(tmp_path):
    spec = tmp_path / "asha.yaml"
    spec.write_text("""
experiment: asha
variants: [maml]
budget: {meta_steps: 60, report_every: 10, meta_batch: 5}
eval: {shots: [5], inner_steps: [1], tasks: 10, val_tasks: 10}
search: {trials_per_variant: 6, alpha: {low: 0.0001, high: 0.5}}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
test: {seeds: [0]}
max_concurrent: 2
storage: res
""")
    r = metasweep("sweep", str(spec), "--stage", "tune", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ds = read_dataset(str(tmp_path / "res" / "asha"))
    trials = ds["trials"].to_pylist()
    assert len(trials) == 6
    statuses = {t["status"] for t in trials}
    assert statuses <= {"completed", "stopped_early"} and "stopped_early" in statuses and "completed" in statuses
    steps = {t["trial_id"]: t["meta_steps"] for t in trials}
    # a stopped trial's row (its last running row, marked) has every column a completed trial's has, but
    # the iterate evaluated (selected_step): it evaluated none
    done = next(t for t in trials if t["status"] == "completed")
    for t in trials:
        assert {k for k, v in t.items() if v is not None} | {"selected_step"} == \
            {k for k, v in done.items() if v is not None}, t
        assert t["selected_step"] == (60 if t["status"] == "completed" else None)
        assert t["temperature"] is None and t["device"] == "cpu" and t["git_sha"] and t["variant_switches"]
        assert t["learner_kind"] == "gradient" and '"alpha"' in t["hparams"]
    for t in trials:
        curve = [c["meta_step"] for c in ds["curves"].to_pylist() if c["trial_id"] == t["trial_id"]]
        assert curve == list(range(10, steps[t["trial_id"]] + 1, 10))  # the curve up to where it stopped
        if t["status"] == "stopped_early":
            assert t["meta_steps"] < 60


def test_variants_with_their_own_budget_and_defaults_train_by_them(tmp_path):
    """A variant's `budget:` and `defaults:` replace the spec's for that variant only (e.g. each learner
    at its own paper's meta-batch and step size); the rows and curves say what each trial ran."""
    spec = tmp_path / "own.yaml"
    spec.write_text("""
experiment: own
variants: [maml, {name: cnp, preset: cnp, budget: {meta_steps: 30, report_every: 15, meta_batch: 3},
                  defaults: {beta: 0.002, cnp_hidden: 16}}]
budget: {meta_steps: 20, report_every: 10, meta_batch: 5}
eval: {shots: [5], inner_steps: [1], tasks: 10, val_tasks: 5}
defaults: {beta: 0.001}
test: {seeds: [0]}
bundle: {size: 1}
storage: res
""")
    r = metasweep("sweep", str(spec), "--stage", "test", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "its own where it has them (cnp: beta=0.002, cnp_hidden=16)" in r.stdout + r.stderr
    # its own budget is the variant's, not a grid point: cnp is still paired with maml on the shared tasks
    assert "paired tests against maml" in r.stdout and "no maml row" not in r.stdout
    ds = read_dataset(str(tmp_path / "res" / "own"))
    rows = {t["variant"]: t for t in ds["trials"].to_pylist()}
    assert {v: (t["status"], t["meta_steps"], t["meta_batch"], t["beta"]) for v, t in rows.items()} == {
        "maml": ("completed", 20, 5, 0.001), "cnp": ("completed", 30, 3, 0.002)}
    assert '"cnp_hidden": 16' in rows["cnp"]["hparams"]
    curves = {v: [c["meta_step"] for c in ds["curves"].to_pylist() if c["trial_id"] == t["trial_id"]]
              for v, t in rows.items()}
    assert curves == {"maml": [10, 20], "cnp": [15, 30]}


def test_lists_of_values_make_the_tune_stage_a_grid_chosen_on_validation_tasks(tmp_path):
    """`alpha: [..]` with every other searched hyper-parameter fixed by a one-value list: each variant's
    tune stage tries every combination once (Optuna's GridSampler, bundled by default) and the test
    stage retrains the one with the lowest validation loss; beside a range, a list is categorical."""
    spec = tmp_path / "grid.yaml"
    spec.write_text("""
experiment: alphagrid
variants: [maml, mt-net]
budget: {meta_steps: 20, report_every: 10, meta_batch: 5}
eval: {shots: [5], inner_steps: [1], tasks: 10, val_tasks: 10}
search:
  alpha: [0.01, 0.04, 0.1]
  beta: [0.001]
  overrides: {mt-net: {temperature: {low: 0.5, high: 2.0}}}
  trials_per_variant: 3
test: {seeds: [0]}
storage: res
""")
    r = metasweep("sweep", str(spec), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "tune-maml-k10: Optuna over the grid of alpha [0.01, 0.04, 0.1], beta [0.001] (3 trials" in out
    assert "tune-mt-net-k10: Optuna over alpha [0.01, 0.04, 0.1], beta [0.001], temperature (3 trials" in out
    trials = read_dataset(str(tmp_path / "res" / "alphagrid"))["trials"].to_pylist()
    tune = {v: [t for t in trials if t["stage"] == "tune" and t["variant"] == v] for v in ("maml", "mt-net")}
    assert sorted(t["alpha"] for t in tune["maml"]) == [0.01, 0.04, 0.1]  # every grid point exactly once
    assert {t["alpha"] for t in tune["mt-net"]} <= {0.01, 0.04, 0.1} and len(tune["mt-net"]) == 3
    assert {t["beta"] for v in tune for t in tune[v]} == {0.001}
    assert all(0.5 <= t["temperature"] <= 2.0 for t in tune["mt-net"])
    for v, rows in tune.items():
        best = min(rows, key=lambda t: t["final_val_loss"])
        (test,) = [t for t in trials if t["stage"] == "test" and t["variant"] == v]
        assert (test["alpha"], test["hp_source_trial"]) == (best["alpha"], best["trial_id"])
