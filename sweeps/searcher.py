"""The Optuna searcher of a tune cell, and what keeps its study where the experiment is.

The study lives in Optuna's memory inside the searcher, which Ray Tune saves with its experiment
state (in `<experiment>/ray/<cell>/`, on the experiment's storage: a folder or an object store) at
the same moments as its trials. So a restored searcher and its restored trials always agree, and a
moved experiment (or one on S3) carries its study with it. A copy of each study is exported to
`<experiment>/optuna.db` (sqlite) whenever a trial ends, for optuna-dashboard; SQLite needs a
POSIX file system, so on an object store that copy is written locally and uploaded.

Tune also saves, with a search's or a grid's state, the storage path new trials are created with:
`RelocatableSearch` and `RelocatableGrid` replace it on restore by where the experiment is now
(`LOCATIONS`, registered by the driver), so a moved experiment's new trials write there.

Tune restores the searcher from its last snapshot; should it meet a trial the study already counts
as finished (e.g. an older layout that kept the study in sqlite), the update is skipped instead of
crashing the resume (UpdateFinishedTrialError).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

# label of a study -> what to do with it after a trial ended, and where Tune's state of its cell is
# now ((pyarrow filesystem, path) of <experiment>/ray), both set by the driver that runs it: a
# restored searcher finds the current experiment here, never an old path in its saved state
EXPORTERS: dict[str, Callable] = {}
LOCATIONS: dict[str, tuple] = {}


def relocate(spec: dict, label: str) -> None:
    """Point the storage a Tune experiment spec creates its trials with at the experiment's current
    place (LOCATIONS), if the driver registered one for `label`."""
    where = LOCATIONS.get(label)
    storage = spec.get("storage")
    if where is not None and storage is not None:
        moved = copy.copy(storage)
        moved.storage_filesystem, moved.storage_fs_path = where
        spec["storage"] = moved


class RelocatableSearch(SearchGenerator):
    """Tune's wrapper of a searcher. It saves, with its state, the storage its trials are created
    with: restored after the experiment moved (or read from another machine), it would create the
    trials it has not suggested yet under the old path. This one takes the current one."""

    def __init__(self, searcher: ResumableOptunaSearch, max_concurrent: int):
        super().__init__(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent))
        self.label = searcher.label

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if self._experiment is not None:
            relocate(self._experiment.spec, self.label)


class RelocatableGrid(BasicVariantGenerator):
    """Tune's generator of a grid's trials (created as slots free up), relocated the same way."""

    def __init__(self, label: str, max_concurrent: int):
        super().__init__(max_concurrent=max_concurrent)
        self.label = label

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        for iterator in self._iterators:
            relocate(iterator.unresolved_spec, self.label)
            pending = getattr(iterator.variants, "iterable", None)  # the grid points not yet made trials
            for _, spec in pending if isinstance(pending, list) else ():
                relocate(spec, self.label)


class ResumableOptunaSearch(OptunaSearch):
    """Optuna's searcher with a `label` (its study's name in optuna.db) and the resume tolerance above."""

    def __init__(self, *args, label: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.label = label

    def on_trial_result(self, trial_id: str, result: dict):
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        try:
            super().on_trial_complete(trial_id, result, error)
        except UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)
        self.export()

    def export(self) -> None:
        exporter = EXPORTERS.get(self.label)
        if exporter is not None and self._ot_study is not None:
            exporter(self._ot_study)


class DefineByRun:
    """Optuna's define-by-run search space (a module-level class: Tune pickles the searcher):
    {name: optuna distribution} (sweeps.study.distributions)."""

    def __init__(self, space: dict):
        self.space = space

    def __call__(self, trial):
        for key, dist in self.space.items():
            _suggest(trial, key, dist)


def _suggest(trial, key: str, dist):
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, log=dist.log)
