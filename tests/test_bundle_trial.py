"""run_bundle (sweeps/bundle_trial.py): the rows of a bundle's members equal the rows of the same
trials run alone - bit for bit in loop mode - with a member the core refuses recorded as errored."""

import numpy as np
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


@pytest.mark.parametrize("mode", ["loop", "fold", "vmap"])
def test_a_bundle_writes_the_rows_each_member_would_write_alone(mode):
    cfgs = [cfg(seed=s, alpha=a, temperature=c, engine={"fold": "batched", "vmap": "vmap"}.get(mode, "batched"))
            for s, a, c in ((0, 0.01, 1.0), (1, 0.03, 0.5), (2, 0.02, 2.0))]
    ids = [f"test-m{i}" for i in range(3)]
    bundled = run_bundle(cfgs, trial_ids=ids, stage="test", mode=mode)
    for c, tid, b in zip(cfgs, ids, bundled):
        alone = run_trial(c, trial_id=tid, stage="test")
        same_result(alone, b, exact=mode == "loop")


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
