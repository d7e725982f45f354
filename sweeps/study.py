"""Optuna for a tune cell: the searcher over the cell's search space (TPE, seeded) and the export of
its study to `<experiment>/optuna.db` for optuna-dashboard (see sweeps.searcher for where the study
itself lives and why)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager

from metasweep.analysis.store import resolve
from metasweep.core.hparams import hparam_def

from .experiment import is_local
from .searcher import EXPORTERS, DefineByRun, RelocatableSearch, ResumableOptunaSearch

DB = "optuna.db"


def distributions(space: dict) -> dict:
    """Optuna's distributions for a search space ({name: sweeps.spec.Range}): a list of values is
    categorical, a range is float (int for an integer hyper-parameter), log-scaled as it says."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for k, r in space.items():
        if r.grid:
            out[k] = CategoricalDistribution(r.choices)
        elif hparam_def(k).kind == "int":
            out[k] = IntDistribution(round(r.low), round(r.high), log=r.log)
        else:
            out[k] = FloatDistribution(r.low, r.high, log=r.log)
    return out


def make_sampler(space: dict, sampler_seed: int, constant_liar: bool = False):
    """The tune stage's sampler: a grid (every searched hyper-parameter a list of values) is Optuna's
    GridSampler, each combination once, in trial order; otherwise TPE, seeded."""
    import optuna

    from .plan import grid_size

    if grid_size(space) is not None:
        from .grid_sampler import TunedGridSampler

        return TunedGridSampler({k: list(r.choices) for k, r in space.items()}, seed=sampler_seed)
    return optuna.samplers.TPESampler(seed=sampler_seed, constant_liar=constant_liar)


def make_searcher(space: dict, sampler_seed: int, label: str, max_concurrent: int) -> RelocatableSearch:
    """An Optuna search over `space` ({name: Range}; `make_sampler`), its study in memory, labelled
    `label`, at most `max_concurrent` trials at once."""
    searcher = ResumableOptunaSearch(space=DefineByRun(distributions(space)), metric="val_loss", mode="min",
                                     label=label, sampler=make_sampler(space, sampler_seed))
    return RelocatableSearch(searcher, max_concurrent)


@contextmanager
def running_study(exp_uri: str, label: str):
    """While this driver runs the study labelled `label`: export it to the experiment's optuna.db
    after every ended trial."""
    EXPORTERS[label] = lambda study: export_study(study, exp_uri, label)
    try:
        yield
    finally:
        EXPORTERS.pop(label, None)


def export_study(study, exp_uri: str, name: str) -> None:
    """Write the study's finished trials as study `name` of `<experiment>/optuna.db` (sqlite),
    replacing an older copy; on an object store, through a local file uploaded after."""
    if is_local(exp_uri):
        os.makedirs(exp_uri, exist_ok=True)
        _write(study, os.path.join(exp_uri, DB), name)
        return
    fs, root = resolve(exp_uri)
    with tempfile.TemporaryDirectory() as d:
        local = os.path.join(d, DB)
        try:
            with fs.open_input_stream(f"{root}/{DB}") as f, open(local, "wb") as out:
                out.write(f.read())
        except (FileNotFoundError, OSError):
            pass  # the first study of this experiment
        _write(study, local, name)
        fs.create_dir(root, recursive=True)
        with open(local, "rb") as f, fs.open_output_stream(f"{root}/{DB}") as out:
            out.write(f.read())


def _write(study, path: str, name: str) -> None:
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    try:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass
        copy = optuna.create_study(study_name=name, storage=storage, directions=study.directions)
        copy.add_trials([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()])
    finally:
        storage.engine.dispose()
