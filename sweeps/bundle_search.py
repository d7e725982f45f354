"""The tune stage in bundles: Optuna's batched ask/tell behind one Ray Tune trial per bundle, and
ASHA's rungs applied to each member inside its bundle.

`BundleSearch` is a Tune searcher whose every suggestion is a bundle: it asks the Optuna study for
up to B configurations at once (TPE with the constant-liar strategy, so that the B asks of one
bundle spread out instead of repeating the same guess), and when the bundle ends it tells the study
each member's result (its final meta-validation loss; FAIL for an errored or diverged member, PRUNED
for one stopped at a rung). The study stays the one source of truth of the tune stage, one Optuna
trial per member: like the unbundled searcher (sweeps.searcher) it lives in memory inside the
searcher, which Ray Tune saves with the experiment's state, and is exported to
`<experiment>/optuna.db` for optuna-dashboard after every bundle (`EXPORTERS`; written in the
background, sweeps.study.Exports).

`Rungs` is asynchronous successive halving (ASHA) as Ray Tune's ASHAScheduler applies it to whole
trials, applied to members: at each rung (reports grace_period * eta^k), a member whose
meta-validation loss is above the 1/eta quantile of the losses already recorded at that rung stops
(`stopped_early`, its curve kept). It lives in a named Ray actor shared by every bundle of a cell (any
node reaches it); a driver restarted by `resume` starts with empty rungs, which only makes the next
decisions more lenient.
"""

from __future__ import annotations

import math

import numpy as np
from ray.tune.search import Searcher

from .progress import say_after_trial
from .session import need_ray


def member_id(stage: str, cell: str, number: int) -> str:
    """The trial id of the tune stage's Optuna trial `number` of `cell` (bundled or not alike)."""
    return f"{stage}-{cell}-n{number:04d}"


def members_of_result(result: dict) -> dict:
    """{member trial id: {status, val_loss}} of a bundle's last result, nested or as Tune flattens it
    for searchers ("members/<id>/status")."""
    if isinstance(result.get("members"), dict):
        return result["members"]
    out: dict[str, dict] = {}
    for key, value in result.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "members":
            out.setdefault(parts[1], {})[parts[2]] = value
    return out


class BundleSearch(Searcher):
    """space: {name: optuna distribution} (sweeps.study.distributions); `sampler`: the study's sampler
    (sweeps.study.make_sampler; TPE with the constant liar by default); `size` members per bundle;
    `total` Optuna trials in all."""

    def __init__(self, space: dict, size: int, total: int, *, study_name: str, sampler_seed: int, stage: str,
                 cell: str, storage_url: str | None = None, metric: str = "val_loss", mode: str = "min",
                 sampler=None):
        super().__init__(metric=metric, mode=mode)
        self.space, self.size, self.total = dict(space), int(size), int(total)
        self.sampler = sampler
        self.study_name, self.storage_url, self.sampler_seed = study_name, storage_url, sampler_seed
        self.label = study_name  # its name in optuna.db, and what the driver registers it under
        self.stage, self.cell = stage, cell
        self.asked = 0
        self.pending: dict[str, list[int]] = {}  # Tune trial id -> the Optuna trial numbers of its members
        self._study = None

    # a study in a database is reopened after unpickling (Tune saves and restores searchers); one in
    # memory (storage_url None, the default) travels with the searcher's saved state
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_study" or self.storage_url is None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__.setdefault("_study", None)

    def save(self, checkpoint_path: str) -> None:
        """Tune saves the searcher with the experiment's state: the asks so far, the bundles pending and
        (in memory) the study itself."""
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))

    @property
    def study(self):
        if self._study is None:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            sampler = self.__dict__.get("sampler") or optuna.samplers.TPESampler(seed=self.sampler_seed,
                                                                                  constant_liar=True)
            self._study = optuna.create_study(study_name=self.study_name, storage=self.storage_url, sampler=sampler,
                                              direction="minimize", load_if_exists=True)
        return self._study

    def distributions(self) -> dict:
        from optuna.distributions import FloatDistribution

        # (low, high, log) tuples: a searcher saved before lists of values existed
        return {k: FloatDistribution(d[0], d[1], log=d[2]) if isinstance(d, tuple) else d for k, d in self.space.items()}

    def suggest(self, trial_id: str):
        if self.asked >= self.total:
            return Searcher.FINISHED
        n = min(self.size, self.total - self.asked)
        trials = [self.study.ask(self.distributions()) for _ in range(n)]
        self.asked += n
        self.pending[trial_id] = [t.number for t in trials]
        return {"hps": [dict(t.params) for t in trials], "numbers": [t.number for t in trials]}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        numbers = self.pending.pop(trial_id, [])
        try:
            self._tell(numbers, members_of_result(result or {}))
        except Exception as e:  # noqa: BLE001 - raised into Tune, the bundle that ended would count as failed
            say_after_trial(f"{self.stage}-{self.cell}: its Optuna study was not told of bundle {trial_id}'s end "
                            f"({type(e).__name__}: {e}); the trials table has its members' results")
            return
        from .searcher import EXPORTERS

        exporter = EXPORTERS.get(self.label)
        if exporter is not None:
            exporter(self.study)

    def _tell(self, numbers: list[int], members: dict) -> None:
        from optuna.trial import TrialState

        # told before a driver restart (Tune re-reports a trial that ended after its last snapshot): the
        # study already holds the outcome
        finished = {t.number for t in self.study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED))}
        for number in numbers:
            if number in finished:
                continue
            r = members.get(member_id(self.stage, self.cell, number), {})
            value = r.get("val_loss")
            if r.get("status") == "completed" and value is not None and math.isfinite(value):
                self.study.tell(number, value)
            elif r.get("status") == "stopped_early":
                self.study.tell(number, state=TrialState.PRUNED)
            else:  # errored, diverged, or the whole bundle failed
                self.study.tell(number, state=TrialState.FAIL)


# label of a Tuner running the tune and test stages together -> the driver's function giving a tune
# cell's test bundles (Tune configs) once the cell's search has ended: set by the driver that runs
# the Tuner (sweeps.pipeline), never saved with the searcher
NEXT_STAGE: dict = {}


class CellsSearch(Searcher):
    """Several bundled tune cells' searches behind one Ray Tune searcher, so that one Tuner runs them
    all: its actors (and their imports) serve every cell, and a cell's bundles start as soon as slots
    free up instead of after the previous cell's Tuner has ended. `searches`: {cell: BundleSearch},
    asked in order (a cell's bundles first, then the next cell's); `configs`: {cell: the rest of its
    Tune config} ("trial", "meta"), merged into each suggestion. Each cell keeps its own study (told
    by its own BundleSearch), bundle size and rungs.

    `then`: the label under which the driver registered the next stage (NEXT_STAGE): when a cell's
    last tune bundle has ended, its test bundles are queued and suggested as slots free up (after
    any tune bundle still to ask: those gate other cells' tests); the search ends when every cell's
    have been."""

    then: str | None = None  # a searcher saved before `then` existed has none
    queued: list = ()
    fed: frozenset = frozenset()

    def __init__(self, searches: dict[str, BundleSearch], configs: dict[str, dict], label: str,
                 then: str | None = None):
        super().__init__(metric="val_loss", mode="min")
        self.searches, self.configs, self.label = dict(searches), dict(configs), label
        self.owner: dict[str, str] = {}  # Tune trial id -> the cell that suggested it
        self.then, self.queued, self.fed = then, [], frozenset()  # test bundles to suggest; cells whose are made

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

    def suggest(self, trial_id: str):
        for cell, search in self.searches.items():
            out = search.suggest(trial_id)
            if out is Searcher.FINISHED:
                continue
            self.owner[trial_id] = cell
            return {**out, **self.configs[cell]}
        if self.queued:
            self.queued = list(self.queued)
            return self.queued.pop(0)
        if self.then is not None and len(self.fed) < len(self.searches):
            return None  # a cell's tune bundles still run: its test bundles follow
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        cell = self.owner.pop(trial_id, None)
        if cell is None:
            return
        search = self.searches[cell]
        # An exception here would reach Tune, which takes the bundle that ended for a failed one (restarts
        # it, or skips its lines) and, before, left the cell never fed: the search then waited for its test
        # bundles for ever. So a failure is said (a failed tell by the cell's BundleSearch), and the cell is
        # fed all the same (the driver's feeder keeps the cells whose bundles it could not make:
        # sweeps.pipeline.feeder).
        search.on_trial_complete(trial_id, result, error)
        if self.then is not None and cell not in self.fed and search.asked >= search.total and not search.pending:
            self.fed = self.fed | {cell}
            try:
                self.queued = [*self.queued, *NEXT_STAGE[self.then](cell)]
            except Exception as e:  # noqa: BLE001
                say_after_trial(f"test: {cell} not tested: its test bundles could not be made ({type(e).__name__}: "
                                f"{e})")


class Rungs:
    """ASHA for members: milestones (in reports) grace_period * eta^k below max_reports."""

    def __init__(self, grace_period: int, eta: float, max_reports: int):
        self.eta = float(eta)
        self.milestones = []
        m = int(grace_period)
        while m < max_reports:
            self.milestones.append(m)
            m = int(math.ceil(m * self.eta))
        self.recorded: dict[int, dict[str, float]] = {m: {} for m in self.milestones}

    def decide(self, key: str, report: int, loss: float) -> bool:
        """True: stop member `key`, whose loss at its `report`-th report is worse than the 1/eta quantile
        of the losses recorded at that rung (as Ray Tune's ASHA decides for a trial)."""
        if report not in self.recorded:
            return False
        rec = self.recorded[report]
        loss = loss if math.isfinite(loss) else float("inf")
        stop = bool(rec) and loss > float(np.nanpercentile(list(rec.values()), 100.0 / self.eta))
        rec[key] = loss
        return stop


_ACTORS: dict = {}  # the driver keeps its rung actors' handles: an actor whose handles are gone dies


def rung_actor(name: str, grace_period: int, eta: float, max_reports: int):
    """The named Ray actor holding a cell's rungs (created once per driver; bundles find it by name)."""
    import ray

    need_ray()
    handle = ray.remote(num_cpus=0)(Rungs).options(name=name, get_if_exists=True).remote(grace_period, eta,
                                                                                         max_reports)
    _ACTORS[name] = handle
    return handle
