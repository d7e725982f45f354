"""The README's main job, exactly as shipped (slow: about a minute on 2 cores; `pytest -m slow`)."""

import subprocess
import sys
from pathlib import Path

import pytest

from metasweep.analysis.store import read_dataset

QUICKSTART = Path(__file__).parents[1] / "sweeps" / "specs" / "quickstart.yaml"


@pytest.mark.slow
def test_shipped_quickstart_sweep_ends_with_a_ranking(tmp_path):
    r = subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", "sweep", str(QUICKSTART)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    ds = read_dataset(str(tmp_path / "results" / "quickstart"))
    stages = ds["trials"].column("stage").to_pylist()
    assert stages.count("tune") == 3 * 4 and stages.count("test") == 3 * 3
    assert ds["eval_tasks"].num_rows == 21 * 600 * 3 * 2
    assert ds["curves"].num_rows == 21 * 4
    assert "ranking: loss (stage test, 1 inner step(s))" in r.stdout
    for variant in ("maml", "t-net", "mt-net"):
        assert f"│ {variant}" in r.stdout
