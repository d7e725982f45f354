"""Bundled stages on a real local Ray give the dataset of unbundled ones: the same trial ids and
rows (bit for bit in loop mode; to float rounding in fold mode), hence the same ranking."""

import subprocess
import sys

import numpy as np
import pyarrow.compute as pc
import pytest

from metasweep.analysis.ranking import compute_ranking
from metasweep.analysis.store import read_dataset

GRID = """
experiment: {name}
mode: grid
variants: [maml, mt-net]
budget: {{meta_steps: 20, report_every: 10, meta_batch: 4}}
eval: {{shots: [5, 10], inner_steps: [1], tasks: 20, val_tasks: 5}}
grid: {{alpha: [0.01, 0.05]}}
test: {{seeds: [0, 1]}}
bundle: {bundle}
max_concurrent: 2
storage: res
"""


def sweep(tmp_path, name, bundle):
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(GRID.format(name=name, bundle=bundle))
    r = subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", "sweep", str(spec), "--no-rank"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return str(tmp_path / "res" / name), r.stderr


def rows(ds, table, keys):
    t = ds[table].sort_by([(k, "ascending") for k in keys])
    return t


@pytest.mark.parametrize("mode, exact", [("loop", True), ("fold", False)])
def test_a_bundled_grid_writes_the_dataset_of_an_unbundled_one(tmp_path, mode, exact):
    alone, _ = sweep(tmp_path, "alone", "{size: 1}")
    together, log = sweep(tmp_path, "together", f"{{size: 4, mode: {mode}}}")
    assert "8 trials in 2 bundles" in log
    a, b = read_dataset(alone), read_dataset(together)
    ta, tb = (rows(d, "trials", ["trial_id"]).to_pylist() for d in (a, b))
    assert [t["trial_id"] for t in ta] == [t["trial_id"] for t in tb] and len(ta) == 8
    for x, y in zip(ta, tb):
        assert x["status"] == y["status"] == "completed"
        assert (x["alpha"], x["seed"], x["variant"], x["hparams"]) == (y["alpha"], y["seed"], y["variant"], y["hparams"])
        assert x["final_val_loss"] == pytest.approx(y["final_val_loss"], rel=0 if exact else 1e-5)
    ea, eb = (rows(d, "eval_tasks", ["trial_id", "shots", "inner_steps", "task_index"]) for d in (a, b))
    assert ea["trial_id"].to_pylist() == eb["trial_id"].to_pylist()
    la, lb = np.asarray(ea["loss"]), np.asarray(eb["loss"])
    if exact:
        np.testing.assert_array_equal(la, lb)
    else:
        np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-6)
    ra, rb = compute_ranking(alone), compute_ranking(together)
    assert ra.variants == rb.variants and ra.settings == rb.settings
    for key, cell in ra.cells.items():
        assert cell.mean == pytest.approx(rb.cells[key].mean, rel=0 if exact else 1e-5)
    assert [p["variant"] for p in ra.paired] == [p["variant"] for p in rb.paired]
    ids = pc.unique(b["curves"]["trial_id"]).to_pylist()
    assert len(ids) == 8  # every member's curve, under its own id
