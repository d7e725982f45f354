"""The Optuna searcher of a tune cell, and what keeps its study where the experiment is.

The study lives in Optuna's memory inside the searcher, which Ray Tune saves with its experiment
state (in `<experiment>/ray/<cell>/`, on the experiment's storage: a folder or an object store) at
the same moments as its trials. So a restored searcher and its restored trials always agree, and a
moved experiment (or one on S3) carries its study with it. A copy of each study is exported to
`<experiment>/optuna.db` (sqlite) whenever a trial ends, for optuna-dashboard; SQLite needs a
POSIX file system, so on an object store that copy is written locally and uploaded.

Tune restores the searcher from its last snapshot; should it meet a trial the study already counts
as finished (e.g. an older layout that kept the study in sqlite), the update is skipped instead of
crashing the resume (UpdateFinishedTrialError).
"""

from __future__ import annotations

from collections.abc import Callable

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.search.optuna import OptunaSearch

# label of a study -> what to do with it after a trial ended (set by the driver that runs it; a
# restored searcher finds the current experiment's exporter here, never an old path in its state)
EXPORTERS: dict[str, Callable] = {}


class ResumableOptunaSearch(OptunaSearch):
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
    {name: (low, high, log, integer)}."""

    def __init__(self, space: dict[str, tuple[float, float, bool, bool]]):
        self.space = space

    def __call__(self, trial):
        for key, (low, high, log, integer) in self.space.items():
            if integer:
                trial.suggest_int(key, round(low), round(high), log=log)
            else:
                trial.suggest_float(key, low, high, log=log)
