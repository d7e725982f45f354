"""Every command that reads the dataset (rank, query, plot, status), run as a user runs it (the
CLI in a subprocess): a damaged or foreign file is one line naming it, exit 2, no traceback (issue
11 case 9); tables written to a file or a pipe are complete, never cut at 80 columns (case 13)."""

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metasweep.analysis.schema import SCHEMA_VERSION, VERSION_KEY
from metasweep.analysis.store import trial_row, write_text, write_trial

N_TASKS = 20


def metasweep(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def row(tid, variant, seed, alpha, temperature=None):
    hp = {"alpha": alpha, "beta": 0.001, "inner_steps": 1, "meta_batch": 25}
    if temperature is not None:
        hp.update(temperature=temperature, mask_eval="sample")
    return trial_row(experiment="exp", stage="grid", trial_id=tid, attempt=0, variant=variant, status="completed",
                     task_family="sine", train_shots=10, seed=seed, learner_kind="gradient", inner_loop=True,
                     hparams=hp, hp_source="grid", config={**hp, "meta_steps": 20}, meta_steps=20, device="cpu")


def evals(values):
    n = len(values)
    return {"split": ["test"] * n, "eval_seed": [1] * n, "task_index": list(range(n)), "shots": [5] * n,
            "inner_steps": [1] * n, "loss": list(map(float, values))}


@pytest.fixture
def experiment(tmp_path):
    """A small grid experiment folder (spec.yaml and dataset): maml and mt-net at two alphas (mt-net
    also at two temperatures: long row labels), two seeds each."""
    root = tmp_path / "exp"
    write_text(str(root), "spec.yaml", "experiment: exp\nmode: grid\n")
    rng = np.random.default_rng(0)
    task = rng.gamma(2.0, 1.0, N_TASKS)
    for v, temps in (("maml", [None]), ("mt-net-with-a-long-name", [0.5, 1.5])):
        for a in (0.003, 0.0301):
            for c in temps:
                for seed in (0, 1):
                    tid = f"grid-{v}-{a}-{c}-{seed}"
                    curves = {"meta_step": [10, 20], "val_loss": [1.0, 0.5], "meta_train_loss": [1.2, 0.6]}
                    write_trial(str(root), row(tid, v, seed, a, c), curves, evals(task + a + 0.1 * rng.normal(size=N_TASKS)))
    return root


COMMANDS = {
    "rank": lambda root, tmp: ["rank", str(root)],
    "query": lambda root, tmp: ["query", str(root), "select count(*) from trials"],
    "plot": lambda root, tmp: ["plot", str(root), "--kind", "ranks", "-o", str(tmp / "x.png")],
    "status": lambda root, tmp: ["status", str(root)],
}


def one_line_naming(r, path):
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), r.stderr


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("command", COMMANDS)
def test_a_truncated_trials_file_is_one_line_naming_it(experiment, tmp_path, command):
    damaged = next((experiment / "trials").iterdir())
    truncate(damaged)
    one_line_naming(metasweep(*COMMANDS[command](experiment, tmp_path)), damaged)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_foreign_parquet_file_is_one_line_naming_it_and_its_column(experiment, tmp_path, command):
    foreign = experiment / "trials" / "notes.parquet"
    pq.write_table(pa.table({"name": ["x"], "value": [1]}), foreign)
    r = metasweep(*COMMANDS[command](experiment, tmp_path))
    one_line_naming(r, foreign)
    assert "column 'experiment' is missing" in r.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_a_file_of_a_newer_schema_version_is_one_line_naming_it(experiment, tmp_path, command):
    path = next((experiment / "trials").iterdir())
    t = pq.read_table(path)
    pq.write_table(t.replace_schema_metadata({VERSION_KEY: str(SCHEMA_VERSION + 1).encode()}), path)
    r = metasweep(*COMMANDS[command](experiment, tmp_path))
    one_line_naming(r, path)
    assert f"schema version {SCHEMA_VERSION + 1}" in r.stderr


@pytest.mark.parametrize("command", ["rank", "query", "plot"])
def test_a_truncated_evaluation_file_is_one_line_naming_it(experiment, tmp_path, command):
    damaged = sorted((experiment / "eval_tasks").iterdir())[0]
    truncate(damaged)
    one_line_naming(metasweep(*COMMANDS[command](experiment, tmp_path)), damaged)


def test_status_does_not_read_evaluation_rows(experiment, tmp_path):
    truncate(sorted((experiment / "eval_tasks").iterdir())[0])
    r = metasweep("status", str(experiment))
    assert r.returncode == 0 and "stages done" in r.stdout


# ------------------------------------------------------------------------------------------ complete tables


def table_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(("│", "┃"))]


def cells_of(line: str) -> list[str]:
    return [c.strip() for c in line.strip("│┃").split("│" if "│" in line else "┃")]


def test_rank_in_a_pipe_prints_every_column_and_cell_whole(experiment):
    r = metasweep("rank", str(experiment))
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout
    heads = [cells_of(ln) for ln in table_lines(r.stdout) if ln.startswith("┃")]
    assert heads[0] == ["variant", "5-shot", "avg rank", "seeds"]
    assert heads[1] == ["setting", "variant", "baseline row", "Δ vs maml", "95% CI", "P(better)", "p (Wilcoxon)",
                        "p (Holm)"]
    body = [cells_of(ln) for ln in table_lines(r.stdout) if ln.startswith("│")]
    labels = [b[0] for b in body[:6]]
    assert labels == ["maml alpha=0.003", "maml alpha=0.0301"] + [
        f"mt-net-with-a-long-name alpha={a} temperature={c}" for a in ("0.003", "0.0301") for c in ("0.5", "1.5")]
    assert all(b[-1] == "2/2" for b in body[:6])  # the seeds column
    paired = body[6:]
    assert len(paired) == 4 and all(len(p) == 8 and p[-1] and p[4].startswith("[") and p[4].endswith("]") for p in paired)


def test_query_and_status_in_a_pipe_print_whole_tables(experiment):
    r = metasweep("query", str(experiment), "select * from trials order by trial_id limit 3")
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout
    header = cells_of(next(ln for ln in table_lines(r.stdout) if ln.startswith("┃")))
    from metasweep.analysis.schema import SCHEMAS

    assert header == SCHEMAS["trials"].names
    r = metasweep("status", str(experiment))
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout
    rows = [cells_of(ln) for ln in table_lines(r.stdout) if ln.startswith("│")]
    assert rows == [["grid", "maml", "10", "completed", "4", "0"],
                    ["grid", "mt-net-with-a-long-name", "10", "completed", "8", "0"]]
