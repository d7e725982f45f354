"""The tune stage's bundles: Optuna's batched ask/tell (one persistent study, one Optuna trial per
member) and ASHA's rungs per member, decided as Ray Tune's ASHAScheduler decides for trials."""

import pickle

import optuna
import pytest
from optuna.trial import TrialState

from metasweep.sweeps.bundle_search import BundleSearch, CellsSearch, Rungs, member_id, members_of_result


def search(tmp_path, total=5, size=2):
    return BundleSearch({"alpha": (1e-3, 1.0, True), "beta": (1e-4, 1e-2, True)}, size, total,
                        study_name="exp.maml-k10", storage_url=f"sqlite:///{tmp_path}/optuna.db", sampler_seed=0,
                        stage="tune", cell="maml-k10")


def test_each_bundle_asks_several_configurations_and_tells_each_members_result(tmp_path):
    s = search(tmp_path)
    first, second, third = s.suggest("t1"), s.suggest("t2"), s.suggest("t3")
    assert [len(x["hps"]) for x in (first, second, third)] == [2, 2, 1]
    assert s.suggest("t4") == BundleSearch.FINISHED
    values = [h["alpha"] for x in (first, second, third) for h in x["hps"]]
    assert len(set(values)) == 5 and all(1e-3 <= v <= 1.0 for v in values)
    n0, n1 = first["numbers"]
    s.on_trial_complete("t1", {"members": {member_id("tune", "maml-k10", n0): {"status": "completed", "val_loss": 0.5},
                                           member_id("tune", "maml-k10", n1): {"status": "diverged",
                                                                               "val_loss": None}}})
    s.on_trial_complete("t2", {"members": {member_id("tune", "maml-k10", second["numbers"][0]):
                                           {"status": "stopped_early", "val_loss": 2.0}}})
    s.on_trial_complete("t3", error=True)
    assert members_of_result({"members/tune-c-n0001/status": "completed", "members/tune-c-n0001/val_loss": 0.5,
                              "val_loss": 0.5}) == {"tune-c-n0001": {"status": "completed", "val_loss": 0.5}}
    study = optuna.load_study(study_name="exp.maml-k10", storage=f"sqlite:///{tmp_path}/optuna.db")
    states = {t.number: t.state for t in study.trials}
    assert states[n0] == TrialState.COMPLETE and study.trials[n0].value == 0.5
    assert states[n1] == TrialState.FAIL and states[second["numbers"][0]] == TrialState.PRUNED
    assert states[second["numbers"][1]] == TrialState.FAIL  # no result for it: the bundle lost it
    assert states[third["numbers"][0]] == TrialState.FAIL
    assert study.best_trial.params == first["hps"][0]


def test_an_in_memory_study_travels_with_the_pickled_searcher():
    s = BundleSearch({"alpha": (1e-3, 1.0, True)}, 2, 4, study_name="e.c", sampler_seed=0, stage="tune", cell="c")
    x = s.suggest("t1")
    s.on_trial_complete("t1", {"members": {member_id("tune", "c", n): {"status": "completed", "val_loss": 0.1 * n}
                                           for n in x["numbers"]}})
    again = pickle.loads(pickle.dumps(s))
    assert [t.value for t in again.study.trials] == [0.0, 0.1]
    y = again.suggest("t2")
    assert y["numbers"] == [2, 3] and again.suggest("t3") == BundleSearch.FINISHED


def test_the_searcher_survives_pickling_and_a_second_tell(tmp_path):
    s = search(tmp_path, total=2)
    x = s.suggest("t1")
    restored = pickle.loads(pickle.dumps(s))  # what Tune does to save and restore a searcher
    assert restored.pending == {"t1": x["numbers"]} and restored.suggest("t2") == BundleSearch.FINISHED
    done = {member_id("tune", "maml-k10", n): {"status": "completed", "val_loss": 1.0} for n in x["numbers"]}
    s.on_trial_complete("t1", {"members": done})
    restored.on_trial_complete("t1", {"members": done})  # after a driver restart: already told, not an error


def test_cells_search_asks_cell_after_cell_and_tells_each_cells_own_study(tmp_path):
    """Several tune cells in one Tuner: bundles of the first cell, then of the next, each suggestion
    carrying its cell's config; a result reaches the study of the cell that asked, also after the
    searcher was saved and restored (as Tune does)."""
    a = BundleSearch({"alpha": (1e-3, 1.0, True)}, 2, 3, study_name="e.a", sampler_seed=0, stage="tune", cell="a")
    b = BundleSearch({"beta": (1e-4, 1e-2, True)}, 2, 2, study_name="e.b", sampler_seed=0, stage="tune", cell="b")
    s = CellsSearch({"a": a, "b": b}, {"a": {"meta": {"cell": "a"}}, "b": {"meta": {"cell": "b"}}}, "e.tune")
    got = [s.suggest(f"t{i}") for i in range(1, 4)]
    assert [g["meta"]["cell"] for g in got] == ["a", "a", "b"]
    assert [len(g["hps"]) for g in got] == [2, 1, 2] and set(got[2]["hps"][0]) == {"beta"}
    assert s.suggest("t4") == CellsSearch.FINISHED
    path = tmp_path / "searcher.pkl"
    s.save(str(path))
    restored = CellsSearch({}, {}, "")
    restored.restore(str(path))
    assert restored.label == "e.tune" and restored.owner == {"t1": "a", "t2": "a", "t3": "b"}
    for searcher in (s, restored):
        searcher.on_trial_complete("t3", {"members": {member_id("tune", "b", n): {"status": "completed",
                                                                                  "val_loss": 0.5 + n}
                                                      for n in got[2]["numbers"]}})
        searcher.on_trial_complete("t1", error=True)
        assert [t.state for t in searcher.searches["b"].study.trials] == [TrialState.COMPLETE] * 2
        assert [t.value for t in searcher.searches["b"].study.trials] == [0.5, 1.5]
        assert [t.state for t in searcher.searches["a"].study.trials] == [TrialState.FAIL] * 2 + [TrialState.RUNNING]
        assert searcher.owner == {"t2": "a"}


def test_cells_search_then_queues_a_cells_next_stage_when_its_last_tune_bundle_ends(tmp_path):
    """`then` (sweeps.pipeline): a cell's test bundles are made once its last tune bundle has ended -
    not before, not twice (a trial re-reported after a restart) - and suggested after any tune bundle
    still to ask; the search waits (None) while a cell's tune bundles run, and ends when every cell's
    test bundles are out. The queue travels with the saved searcher."""
    from metasweep.sweeps.bundle_search import NEXT_STAGE

    made = []

    def next_stage(cell):
        made.append(cell)
        return [{"stage": "test", "cell": cell, "k": k} for k in range(2 if cell == "a" else 1)]

    NEXT_STAGE["e.stages"] = next_stage
    try:
        a = BundleSearch({"alpha": (1e-3, 1.0, True)}, 2, 2, study_name="e.a", sampler_seed=0, stage="tune", cell="a")
        b = BundleSearch({"beta": (1e-4, 1e-2, True)}, 2, 4, study_name="e.b", sampler_seed=0, stage="tune", cell="b")
        s = CellsSearch({"a": a, "b": b}, {"a": {"meta": {"cell": "a"}}, "b": {"meta": {"cell": "b"}}}, "e.tune",
                        then="e.stages")

        def complete(searcher, trial, cell, numbers):
            searcher.on_trial_complete(trial, {"members": {member_id("tune", cell, n): {
                "status": "completed", "val_loss": 1.0 + n} for n in numbers}})

        t1 = s.suggest("t1")
        t2 = s.suggest("t2")
        assert (t1["meta"]["cell"], t2["meta"]["cell"]) == ("a", "b") and made == []
        complete(s, "t1", "a", t1["numbers"])
        assert made == ["a"]
        t3 = s.suggest("t3")  # b's second tune bundle before a's tests: it gates b's tests
        assert t3["meta"]["cell"] == "b"
        assert [s.suggest(t) for t in ("t4", "t5")] == [{"stage": "test", "cell": "a", "k": 0},
                                                         {"stage": "test", "cell": "a", "k": 1}]
        assert s.suggest("t6") is None  # b's tune bundles still run
        complete(s, "t2", "b", t2["numbers"])
        assert made == ["a"] and s.suggest("t6") is None
        path = tmp_path / "searcher.pkl"
        s.save(str(path))
        restored = CellsSearch({}, {}, "")
        restored.restore(str(path))
        for searcher in (s, restored):
            complete(searcher, "t3", "b", t3["numbers"])
            complete(searcher, "t3", "b", t3["numbers"])  # re-reported: nothing new
            assert searcher.suggest("t7") == {"stage": "test", "cell": "b", "k": 0}
            assert searcher.suggest("t8") == CellsSearch.FINISHED
            complete(searcher, "t4", "a", [])  # a test bundle's end is no tune cell's business
        assert made == ["a", "b", "b"]  # once per searcher: the live one and the restored one
        old = CellsSearch({}, {}, "")
        old.__dict__.update({k: v for k, v in s.__dict__.items() if k not in ("then", "queued", "fed")})
        assert old.then is None and old.suggest("t9") == CellsSearch.FINISHED  # saved before `then` existed
    finally:
        NEXT_STAGE.pop("e.stages")


def test_rungs_stop_members_as_ashas_trials():
    r = Rungs(grace_period=1, eta=3, max_reports=10)
    assert r.milestones == [1, 3, 9]
    assert [r.decide(k, 1, v) for k, v in (("a", 1.0), ("b", 0.5), ("c", 2.0), ("d", 0.4))] == \
        [False, False, True, False]  # c is above the 1/3 quantile of (1.0, 0.5); d below that of (1, .5, 2)
    assert r.decide("e", 2, 100.0) is False  # not a rung
    assert r.decide("f", 1, float("nan")) is True  # a non-finite loss is the worst


@pytest.mark.parametrize("eta", [2, 3, 4])
def test_rungs_agree_with_ray_tunes_asha_cutoff(eta):
    """The cutoff is Ray Tune's: ASHA's _Bracket.cutoff on rewards (negated losses)."""
    import numpy as np
    from ray.tune.schedulers.async_hyperband import _Bracket

    losses = [0.9, 0.3, 1.7, 0.8, 0.2, 1.1]
    bracket = _Bracket(min_t=1, max_t=10, reduction_factor=eta, s=0)
    rewards = {str(i): -v for i, v in enumerate(losses)}
    ray_cut = -bracket.cutoff(rewards)
    ours = float(np.nanpercentile(losses, 100.0 / eta))
    assert ours == pytest.approx(ray_cut)


def test_a_grid_is_asked_once_per_combination_across_bundles():
    from metasweep.sweeps.spec import Range
    from metasweep.sweeps.study import distributions, make_sampler

    space = {"alpha": Range(choices=[0.01, 0.04, 0.1]), "beta": Range(choices=[1e-3, 1e-2])}
    s = BundleSearch(distributions(space), 4, 6, study_name="e.c", sampler_seed=0, stage="tune", cell="c",
                     sampler=make_sampler(space, 0, constant_liar=True))
    asked = [s.suggest("t1"), s.suggest("t2")]
    assert s.suggest("t3") == BundleSearch.FINISHED
    points = [(h["alpha"], h["beta"]) for x in asked for h in x["hps"]]
    assert sorted(points) == sorted((a, b) for a in (0.01, 0.04, 0.1) for b in (1e-3, 1e-2))
    again = pickle.loads(pickle.dumps(s))  # Tune saves the searcher: the grid's sampler travels with it
    assert isinstance(again.study.sampler, optuna.samplers.GridSampler)
    # telling the last grid point is not an error (Optuna's GridSampler calls study.stop() there, which
    # raises outside study.optimize), and every member of the bundle is told
    for t, x in (("t1", asked[0]), ("t2", asked[1])):
        s.on_trial_complete(t, {"members": {member_id("tune", "c", n): {"status": "completed", "val_loss": 0.1 * n}
                                            for n in x["numbers"]}})
    assert [t.state for t in s.study.trials] == [TrialState.COMPLETE] * 6
    assert s.study.best_trial.number == 0


def test_one_trial_per_process_runs_the_grid_and_lists_beside_ranges_are_categorical():
    """The unbundled searcher's define-by-run space (sweeps.searcher.DefineByRun) on a real study."""
    from metasweep.sweeps.searcher import DefineByRun
    from metasweep.sweeps.spec import Range
    from metasweep.sweeps.study import distributions, make_sampler

    grid = {"alpha": Range(choices=[0.01, 0.1]), "beta": Range(choices=[1e-3])}
    study = optuna.create_study(sampler=make_sampler(grid, 0))
    study.optimize(lambda t: (DefineByRun(distributions(grid))(t), t.params["alpha"])[1], n_trials=2)
    assert sorted(t.params["alpha"] for t in study.trials) == [0.01, 0.1]
    # Ray Tune's OptunaSearch asks and tells outside study.optimize: the last tell must not raise
    from metasweep.sweeps.searcher import ResumableOptunaSearch

    searcher = ResumableOptunaSearch(space=DefineByRun(distributions(grid)), metric="val_loss", mode="min",
                                     label="e.c", sampler=make_sampler(grid, 0))
    for i in range(2):
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"val_loss": config["alpha"], "training_iteration": 1})
    assert sorted(t.params["alpha"] for t in searcher._ot_study.trials) == [0.01, 0.1]
    assert {t.state for t in searcher._ot_study.trials} == {TrialState.COMPLETE}
    mixed = {"alpha": Range(choices=[0.01, 0.1]), "beta": Range(low=1e-4, high=1e-2)}
    study = optuna.create_study(sampler=make_sampler(mixed, 0))
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    study.optimize(lambda t: (DefineByRun(distributions(mixed))(t), 0.0)[1], n_trials=6)
    assert {t.params["alpha"] for t in study.trials} <= {0.01, 0.1}
    assert all(1e-4 <= t.params["beta"] <= 1e-2 for t in study.trials)


@pytest.mark.parametrize("fails", ["tell", "feeder"])
def test_cells_search_never_waits_for_ever_when_a_cells_tell_or_its_feeder_raises(tmp_path, monkeypatch, fails):
    """An exception from a searcher's on_trial_complete reaches Ray Tune, which logs it and takes the
    bundle that ended for a failed one; and the cell, never fed, left the search answering None (wait)
    for ever. Neither raises now: a failed tell is said and the cell's test bundles are queued all
    the same; a feeder that fails queues none, said too."""
    from metasweep.sweeps.bundle_search import NEXT_STAGE
    from metasweep.sweeps.progress import AFTER

    def next_stage(cell):
        if fails == "feeder":
            raise OSError("no trials table")
        return [{"stage": "test", "cell": cell}]

    NEXT_STAGE["e.stages"] = next_stage
    try:
        a = BundleSearch({"alpha": (1e-3, 1.0, True)}, 2, 2, study_name="e.a", sampler_seed=0, stage="tune", cell="a")
        if fails == "tell":
            monkeypatch.setattr(a.study, "tell", lambda *args, **kw: (_ for _ in ()).throw(RuntimeError("locked")))
        s = CellsSearch({"a": a}, {"a": {"meta": {"cell": "a"}}}, "e.tune", then="e.stages")
        t1 = s.suggest("t1")
        assert s.suggest("t2") is None  # a's tune bundle runs
        s.on_trial_complete("t1", {"members": {member_id("tune", "a", n): {"status": "completed", "val_loss": 1.0}
                                               for n in t1["numbers"]}})
        if fails == "tell":
            assert AFTER == ["tune-a: its Optuna study was not told of bundle t1's end (RuntimeError: locked); the "
                             "trials table has its members' results"]
            assert s.suggest("t2") == {"stage": "test", "cell": "a"}
        else:
            assert AFTER == ["test: a not tested: its test bundles could not be made (OSError: no trials table)"]
        assert s.suggest("t3") == CellsSearch.FINISHED
    finally:
        NEXT_STAGE.pop("e.stages")
        AFTER.clear()
