"""The tune stage's grid sampler (a list of values for every searched hyper-parameter, sweeps.study)."""

from __future__ import annotations

import optuna


class TunedGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler without its `study.stop()` once every point has been tried: stopping is
    only allowed inside `study.optimize`, and Ray Tune tells results from outside it (the RuntimeError
    cut the tell of a bundle's later members and the study's export to optuna.db). The tune stage asks
    exactly the grid's size, so nothing needs stopping."""

    def after_trial(self, study, trial, state, values) -> None:
        return None
