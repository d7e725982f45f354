"""`metasweep check SPEC`: the checks `sweep` makes before its first trial, and what it would run
(stages, cells, trials, bundles, meta-steps, where the results go), without Ray and without writing."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[1] / "sweeps" / "specs" / "quickstart.yaml"


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def rows(stdout: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("│ ").split("│")] for line in stdout.splitlines() if line.startswith("│")]


def test_check_prints_the_plan_of_the_quickstart_and_writes_nothing(tmp_path):
    spec = tmp_path / "quickstart.yaml"
    shutil.copy(QUICKSTART, spec)
    r = cli("check", str(spec), "--slots", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    table = rows(r.stdout)
    assert table == [["tune", f"{v}-k10", "4", "2 + 2", "400"] for v in ("maml", "t-net", "mt-net")] + \
        [["test", f"{v}-k10", "3", "3", "400"] for v in ("maml", "t-net", "mt-net")]
    assert "21 trials, 8,400 meta-steps in all" in r.stdout
    assert "tune and test run in one Tuner: each cell's test bundles start when its tune cell has ended" in r.stdout
    assert f"results: {tmp_path / 'results' / 'quickstart'} (a new experiment)" in " ".join(r.stdout.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quickstart.yaml"]  # nothing written
    one = rows(cli("check", str(spec), "--slots", "1", "--stage", "tune", cwd=tmp_path).stdout)
    assert [row[3] for row in one] == ["4", "4", "4"]  # one slot: a tune cell is one bundle
    spec.write_text(spec.read_text() + "bundle: {size: 1}\n")
    alone = cli("check", str(spec), "--slots", "2", cwd=tmp_path)
    assert alone.returncode == 0 and "in one Tuner" not in alone.stdout  # trials alone: a Tuner per stage


def test_check_refuses_a_bad_field_and_names_it(tmp_path):
    text = QUICKSTART.read_text().replace("meta_batch: 25", "meta_batch: 0")
    (tmp_path / "s.yaml").write_text(text)
    r = cli("check", "s.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and "budget.meta_batch" in r.stderr and len(r.stderr.splitlines()) == 1
    bad = cli("check", str(QUICKSTART), "--slots", "0", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --slots: must be at least 1 (got 0)"


def test_check_says_whether_the_experiment_continues_or_conflicts(tmp_path):
    spec = tmp_path / "quickstart.yaml"
    shutil.copy(QUICKSTART, spec)
    exp = tmp_path / "results" / "quickstart"
    exp.mkdir(parents=True)
    (exp / "spec.yaml").write_text(QUICKSTART.read_text())
    same = cli("check", str(spec), cwd=tmp_path)
    assert same.returncode == 0 and "continues the experiment there (the same spec)" in " ".join(same.stdout.split())
    # what its manifest records as done is said, and left out of the totals
    (exp / "manifest.json").write_text(json.dumps({"cells": {"tune-maml-k10": "done", "tune-t-net-k10": "done",
                                                             "test": "done"}, "inputs": {"test": {"maml-k10": "h"}}}))
    part = cli("check", str(spec), cwd=tmp_path)
    assert part.returncode == 0, part.stderr
    states = {(row[0], row[1]): row[-1] for row in rows(part.stdout)}
    assert states == {("tune", "maml-k10"): "done", ("tune", "t-net-k10"): "done", ("tune", "mt-net-k10"): "to run",
                      ("test", "maml-k10"): "done", ("test", "t-net-k10"): "to run", ("test", "mt-net-k10"): "to run"}
    assert "10 trials, 4,000 meta-steps to run (3 of 6 stage cells done)" in part.stdout
    (exp / "spec.yaml").write_text(QUICKSTART.read_text() + "\n# edited\n")
    other = cli("check", str(spec), cwd=tmp_path)
    assert other.returncode == 2
    assert "an experiment there has a different spec: `sweep` would refuse it" in " ".join(other.stdout.split())
