"""`metasweep train` as a user runs it: a subprocess, real Parquet files, exit codes."""

import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from metasweep.analysis.store import read_dataset


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_train_writes_the_three_tables_and_prints_the_table(tmp_path):
    out = tmp_path / "demo"
    r = run("train", "--task", "sine", "--variant", "mt-net", "--train-shots", "10", "--meta-batch", "5",
            "--meta-steps", "40", "--report-every", "20", "--val-tasks", "10", "--alpha", "0.01",
            "--beta", "0.001", "--temperature", "1", "--seed", "0", "--eval-shots", "5,10,20",
            "--eval-steps", "1,10", "--eval-tasks", "30", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "loss (mean ± 95% CI)" in r.stdout and "status: completed" in r.stderr
    ds = read_dataset(str(out))
    assert ds["trials"].num_rows == 1
    assert ds["trials"]["status"][0].as_py() == "completed"
    assert ds["curves"].column("meta_step").to_pylist() == [20, 40]
    assert ds["eval_tasks"].num_rows == 30 * 3 * 2
    assert set(ds["eval_tasks"].column("shots").to_pylist()) == {5, 10, 20}
    assert pq.read_schema(next((out / "eval_tasks").glob("*.parquet"))).field("loss").type == "double"


def test_diverging_run_exits_0_with_status_diverged_and_rows_written(tmp_path):
    out = tmp_path / "div"
    r = run("train", "--alpha", "1e25", "--meta-batch", "5", "--meta-steps", "30", "--report-every", "10",
            "--val-tasks", "5", "--eval-tasks", "5", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "status: diverged" in r.stderr
    ds = read_dataset(str(out))
    assert ds["trials"]["status"][0].as_py() == "diverged"
    assert ds["curves"].num_rows >= 1 and ds["eval_tasks"].num_rows == 0


@pytest.mark.parametrize("args, words", [
    (["--variant", "mtnet"], "--variant: unknown preset 'mtnet'; did you mean 'mt-net'? presets: maml, "),
    (["--alpha", "-1"], "--alpha: must be a positive finite number (got -1.0)"),
    (["--eval-shots", "5,x"], "--eval-shots: expected comma-separated integers"),
    (["--task", "omniglot2"], "--task: unknown task family 'omniglot2'; did you mean 'omniglot'? available: sine, polynomial"),
    (["--order", "2"], "--task: unknown option 'order' for task family sine; allowed: amplitude"),
    (["--mask-eval", "argmax"], "--mask-eval: Input should be 'sample' or 'threshold' (got 'argmax')"),
    (["--meta-steps", "0"], "--meta-steps: must be >= 1"),
    (["--temperature", "1"], "--temperature: no variant reads temperature; they read: alpha, beta"),
    (["--variant", "protonet", "--hparam", "nn_scale=2"],
     "--hparam: unknown hyper-parameter; did you mean 'cosine_scale'? declared: alpha"),
])
def test_bad_arguments_exit_2_with_one_clear_line(args, words, tmp_path):
    r = run("train", *args, "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert words in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()
