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


TUNE = """
experiment: {name}
variants: [maml, mt-net]
budget: {{meta_steps: 20, report_every: 10, meta_batch: 4}}
eval: {{shots: [5], inner_steps: [1], tasks: 10, val_tasks: 5}}
search: {{trials_per_variant: 3}}
scheduler: {{type: none}}
test: {{seeds: [0]}}
bundle: {{size: 2, mode: loop}}
max_concurrent: 2
storage: {storage}
"""


def test_tune_cells_in_one_tuner_write_the_rows_and_studies_of_one_tuner_per_cell(tmp_path, capsys):
    """The bundled tune stage runs its cells in one Tuner (sweeps.stages.run_tune_stage, a CellsSearch):
    the same trial ids, hyper-parameters and values (bit for bit, loop-mode bundles), every cell's own
    Optuna study complete, as when each cell has a Tuner of its own."""
    import optuna
    import ray

    from metasweep.sweeps.experiment import experiment_uri
    from metasweep.sweeps.plan import cells
    from metasweep.sweeps.spec import load_spec
    from metasweep.sweeps.stages import Run, prepare_tune_cell, run_tune_cells, run_tune_stage

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    uris = {}
    try:
        for name in ("separate", "together"):
            path = tmp_path / f"{name}.yaml"
            path.write_text(TUNE.format(name=name, storage=tmp_path / "res"))
            spec, _, h = load_spec(str(path))
            run = Run(spec, experiment_uri(spec.storage, spec.experiment), h, {"cells": {}})
            if name == "together":
                run_tune_stage(run, cells(spec))
            else:
                for cell in cells(spec):
                    run_tune_cells(run, [prepare_tune_cell(run, cell)])
            assert run.manifest["cells"] == {"tune-maml-k10": "done", "tune-mt-net-k10": "done"}
            uris[name] = run.exp_uri
    finally:
        ray.shutdown()
    err = capsys.readouterr().err
    assert err.count("tune: the 2 cells above in one Tuner (Ray Tune's state: ray/tune-") == 1
    assert "  [tune] tune-mt-net-k10-n0002 completed" in err
    a, b = (read_dataset(uris[n]) for n in ("separate", "together"))
    ta, tb = (rows(d, "trials", ["trial_id"]).to_pylist() for d in (a, b))
    assert [t["trial_id"] for t in ta] == [t["trial_id"] for t in tb] and len(ta) == 6
    for x, y in zip(ta, tb):
        assert x["status"] == y["status"] == "completed"
        assert (x["variant"], x["hparams"], x["final_val_loss"]) == (y["variant"], y["hparams"], y["final_val_loss"])
    ea, eb = (rows(d, "eval_tasks", ["trial_id", "shots", "inner_steps", "task_index"]) for d in (a, b))
    np.testing.assert_array_equal(np.asarray(ea["loss"]), np.asarray(eb["loss"]))
    for name in ("separate", "together"):
        storage = optuna.storages.RDBStorage(f"sqlite:///{uris[name]}/optuna.db")
        for cell in ("maml-k10", "mt-net-k10"):
            study = optuna.load_study(study_name=f"{name}.{cell}", storage=storage)
            assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3, (name, cell)
