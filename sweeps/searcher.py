"""OptunaSearch that survives a driver restart with a persistent study.

After a killed driver, Tune restores the searcher from its last experiment snapshot, but the sqlite
study may already record some of those trials as finished (they ended after the snapshot). Tune
then re-runs or continues them and reports to Optuna again, which refuses updates to finished
trials (UpdateFinishedTrialError). The study already holds the outcome, so such updates are
skipped: the study continues instead of the resume crashing.
"""

from __future__ import annotations

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.search.optuna import OptunaSearch


class ResumableOptunaSearch(OptunaSearch):
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
