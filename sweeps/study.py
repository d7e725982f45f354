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


def make_searcher(space: dict, sampler_seed: int, label: str, max_concurrent: int) -> RelocatableSearch:
    """A TPE search over `space` ({name: Range}), its study in memory, labelled `label`, at most
    `max_concurrent` trials at once."""
    import optuna

    define_by_run = DefineByRun({k: (r.low, r.high, r.log, hparam_def(k).kind == "int") for k, r in space.items()})
    searcher = ResumableOptunaSearch(space=define_by_run, metric="val_loss", mode="min", label=label,
                                     sampler=optuna.samplers.TPESampler(seed=sampler_seed))
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
