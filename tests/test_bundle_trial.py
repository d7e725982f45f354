"""run_bundle (sweeps/bundle_trial.py): the rows of a bundle's members equal the rows of the same
trials run alone - bit for bit in loop mode - with a member the core refuses recorded as errored."""

import numpy as np
import pyarrow.compute as pc
import pytest

from metasweep.sweeps.bundle_trial import bundle_groups, bundle_key, run_bundle
from metasweep.sweeps.trial import TrialConfig, run_trial

VOLATILE = ("started_at", "ended_at", "wall_seconds", "node")


def cfg(**kw):
    base = dict(variant="mt-net", meta_batch=3, meta_steps=12, report_every=6, val_tasks=4, eval_tasks=10,
                eval_shots=(5, 10), eval_steps=(1, 2), train_shots=5, queries=4, device="cpu")
    return TrialConfig(**{**base, **kw})


def same_result(a, b, exact):
    assert a.status == b.status
    ra, rb = ({k: v for k, v in r.items() if k not in VOLATILE} for r in (a.trial_row, b.trial_row))
    if not exact:
        ra["final_val_loss"] = pytest.approx(rb["final_val_loss"], rel=1e-5)
    assert ra == rb
    for table in ("curves", "eval_tasks"):
        da, db = getattr(a, table), getattr(b, table)
        assert set(da) == set(db)
        for k in da:
            if k == "wall_seconds":
                continue
            first = next((v for v in da[k] if v is not None), None)
            if isinstance(first, list) and not exact:  # per-cell mask fractions
                assert [pytest.approx(v, rel=1e-5) for v in da[k]] == list(db[k]), (table, k)
            elif not isinstance(first, (float, np.floating)):  # ids, counts: equal as they are
                assert list(da[k]) == list(db[k]), (table, k)
            elif exact:
                np.testing.assert_array_equal(np.asarray(da[k], float), np.asarray(db[k], float), err_msg=k)
            else:
                np.testing.assert_allclose(np.asarray(da[k], float), np.asarray(db[k], float), rtol=1e-5, atol=1e-6,
                                           err_msg=k)


@pytest.mark.parametrize("mode, select", [("loop", "last"), ("fold", "last"), ("vmap", "last"), ("loop", "best_val"),
                                          ("vmap", "best_train")])
def test_a_bundle_writes_the_rows_each_member_would_write_alone(mode, select):
    """Also with a selection (eval.select): each member keeps and evaluates its own iterate."""
    cfgs = [cfg(seed=s, alpha=a, temperature=c, engine={"fold": "batched", "vmap": "vmap"}.get(mode, "batched"),
                select=select, report_every=6 if select == "last" else 3)
            for s, a, c in ((0, 0.01, 1.0), (1, 0.03, 0.5), (2, 0.02, 2.0))]
    ids = [f"test-m{i}" for i in range(3)]
    bundled = run_bundle(cfgs, trial_ids=ids, stage="test", mode=mode)
    for c, tid, b in zip(cfgs, ids, bundled):
        alone = run_trial(c, trial_id=tid, stage="test")
        same_result(alone, b, exact=mode == "loop")
        assert b.trial_row["selected_step"] == alone.trial_row["selected_step"] is not None


def test_a_refused_member_is_errored_and_its_siblings_complete():
    cfgs = [cfg(seed=0), cfg(seed=1, alpha=-1.0), cfg(seed=2, alpha=1e25)]
    results = run_bundle(cfgs, trial_ids=["a", "b", "c"], stage="grid")
    assert [r.status for r in results] == ["completed", "errored", "diverged"]
    assert "alpha must be a positive finite number" in results[1].trial_row["error"]
    assert results[0].eval_tasks and not results[2].eval_tasks
    same_result(run_trial(cfgs[0], trial_id="a", stage="grid"), results[0], exact=False)


def test_configurations_are_grouped_into_bundles_by_what_they_share():
    items = [cfg(seed=s, alpha=a) for s in (0, 1, 2) for a in (0.01, 0.1)] + [cfg(seed=0, inner_steps=2)]
    groups = bundle_groups(items, 4)
    assert [len(g) for g in groups] == [4, 2, 1]
    assert len({bundle_key(c) for c in groups[0] + groups[1]}) == 1 and groups[2][0].inner_steps == 2
    with pytest.raises(ValueError, match="bundle size must be >= 1"):
        bundle_groups(items, 0)
    with pytest.raises(ValueError, match="share everything but their seed"):
        run_bundle([cfg(), cfg(inner_steps=2)], trial_ids=["a", "b"])


def test_bundles_run_as_ray_tune_trials_write_each_members_rows(tmp_path):
    """Two bundles as two Tune trials on a real local Ray: every member's rows land under its own trial
    id, equal to the trial run alone (loop mode: exactly)."""
    import ray
    from ray import tune

    from metasweep.analysis.store import read_dataset
    from metasweep.sweeps.bundle_trainable import metasweep_bundle_trainable

    cfgs = [cfg(seed=s, alpha=a) for s in (0, 1) for a in (0.01, 0.05)]
    groups = bundle_groups(list(enumerate(cfgs)), 2, key=lambda item: item[1])
    uri = str(tmp_path / "exp")
    meta = {"experiment": "exp", "stage": "grid", "spec_hash": "h", "cpus": 1, "bundle_mode": "loop"}
    points = [{"meta": meta, "members": [{"trial": c.to_dict(), "trial_id": f"grid-{i}", "variant": c.variant}
                                         for i, c in g]} for g in groups]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        fn = tune.with_parameters(metasweep_bundle_trainable, results_uri=uri)
        tuner = tune.Tuner(tune.with_resources(fn, {"cpu": 1}),
                           param_space={"bundle": tune.grid_search(points)},
                           run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0))
        results = tuner.fit()
        assert not results.errors
    finally:
        ray.shutdown()
    ds = read_dataset(uri)
    rows = {r["trial_id"]: r for r in ds["trials"].to_pylist()}
    assert sorted(rows) == [f"grid-{i}" for i in range(4)]
    for i, c in enumerate(cfgs):
        alone = run_trial(c, trial_id=f"grid-{i}", stage="grid")
        assert rows[f"grid-{i}"]["status"] == "completed"
        assert rows[f"grid-{i}"]["final_val_loss"] == alone.trial_row["final_val_loss"]
        ev = ds["eval_tasks"]
        mine = ev.filter(pc.equal(ev["trial_id"], f"grid-{i}")).sort_by(
            [("shots", "ascending"), ("inner_steps", "ascending"), ("task_index", "ascending")])
        np.testing.assert_array_equal(np.asarray(mine["loss"]), _sorted_loss(alone.eval_tasks))


def _sorted_loss(cols):
    order = np.lexsort((cols["task_index"], cols["inner_steps"], cols["shots"]))
    return np.asarray(cols["loss"])[order]
