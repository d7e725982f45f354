"""The shipped meta-RL smoke sweep, exactly as shipped (slow: a few minutes on 2 cores; `pytest -m
slow`): MAML-TRPO and ANIL-TRPO tuned by Optuna over alpha and max_kl, tested on 2 seeds, ranked by
return with paired tests on the shared evaluation tasks; adaptation clearly improves the return."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metasweep.analysis.ranking import compute_ranking
from metasweep.analysis.store import read_dataset

SPEC = Path(__file__).parents[1] / "sweeps" / "specs" / "rl-anil-smoke.yaml"


@pytest.mark.slow
def test_rl_smoke_sweep_ranks_maml_against_anil_on_returns(tmp_path):
    r = subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", "sweep", str(SPEC)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    exp = str(tmp_path / "results" / "rl-anil-smoke")
    ds = read_dataset(exp)
    trials = ds["trials"].to_pylist()
    assert sorted(t["stage"] for t in trials) == ["test"] * 4 + ["tune"] * 4
    assert all(t["status"] == "completed" and t["learner_kind"] == "rl" for t in trials)
    tuned = [t for t in trials if t["stage"] == "tune"]
    assert len({(t["variant"], t["hparams"]) for t in tuned}) == 4  # Optuna's own alpha and max_kl per trial
    assert all('"max_kl"' in t["hparams"] and '"alpha"' in t["hparams"] for t in trials)
    ev = ds["eval_tasks"].to_pandas()
    test_ids = {t["trial_id"] for t in trials if t["stage"] == "test"}
    ev = ev[ev.trial_id.isin(test_ids)]
    by_step = ev.groupby("inner_steps")["return"].mean()
    assert by_step[1] > by_step[0] + 3, by_step  # adaptation clearly improves the return
    assert np.allclose(ev["loss"], -ev["return"])
    ranking = compute_ranking(exp, metric="return", inner_steps=1, baseline="maml-trpo")
    assert ranking.variants == ["maml-trpo", "anil-trpo"] and not ranking.lower_is_better
    (test,) = ranking.paired
    assert test["variant"] == "anil-trpo" and test["n"] == 40 and 0 <= test["p_holm"] <= 1
