"""Optuna for a tune cell: the searcher over the cell's search space (TPE, seeded) and the export of
its study to `<experiment>/optuna.db` for optuna-dashboard (see sweeps.searcher for where the study
itself lives and why)."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
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
    after every ended trial, in the background (`EXPORTS`: Tune's loop never waits on sqlite), every
    export written before this returns."""
    EXPORTERS[label] = lambda study: EXPORTS.submit(exp_uri, label, study)
    try:
        yield
    finally:
        EXPORTERS.pop(label, None)
        EXPORTS.flush()


class Exports:
    """Writes studies to optuna.db from one background thread, so that the driver's Tune loop (which
    tells the study when a trial ends, then starts the next trial) never waits for sqlite: a write
    takes 0.1-0.5 s, a slot idle for as long. `submit` takes the study's finished trials at once (what
    the copy will hold); where several snapshots of one study wait, only the latest is written. `flush`
    waits until every submitted snapshot is written. A write that fails is reported on stderr when
    flushed (the study itself lives in Tune's state; the sqlite file is a copy for optuna-dashboard),
    never raised into the sweep."""

    def __init__(self):
        self._lock = threading.Condition()
        self._pending: dict[tuple[str, str], tuple] = {}  # (exp_uri, name) -> (directions, trials)
        self._busy = False
        self._thread: threading.Thread | None = None
        self._failures: list[str] = []

    def submit(self, exp_uri: str, name: str, study) -> None:
        trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        with self._lock:
            self._pending[(exp_uri, name)] = (list(study.directions), trials)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="metasweep-optuna-export", daemon=True)
                self._thread.start()
            self._lock.notify_all()

    def flush(self) -> None:
        with self._lock:
            while self._pending or self._busy:
                self._lock.wait()
            failures, self._failures = self._failures, []
        for message in failures:
            print(f"warning: {message}", file=sys.stderr)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending:
                    if not self._lock.wait(timeout=5.0) and not self._pending:
                        self._thread = None  # idle: the next submit starts another
                        return
                (exp_uri, name), (directions, trials) = next(iter(self._pending.items()))
                del self._pending[(exp_uri, name)]
                self._busy = True
            try:
                export_trials(directions, trials, exp_uri, name)
            except BaseException as e:  # noqa: BLE001 - reported at flush, the sweep goes on (and flush never waits on a dead thread)
                with self._lock:
                    self._failures.append(f"{exp_uri}/{DB}: study {name} not written ({type(e).__name__}: {e})")
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()


EXPORTS = Exports()


def export_trials(directions, trials: list, exp_uri: str, name: str) -> None:
    """Write `trials` (finished FrozenTrials) as study `name` of `<experiment>/optuna.db` (sqlite),
    replacing an older copy; on an object store, through a local file uploaded after."""
    if is_local(exp_uri):
        os.makedirs(exp_uri, exist_ok=True)
        _write(directions, trials, os.path.join(exp_uri, DB), name)
        return
    fs, root = resolve(exp_uri)
    with tempfile.TemporaryDirectory() as d:
        local = os.path.join(d, DB)
        try:
            with fs.open_input_stream(f"{root}/{DB}") as f, open(local, "wb") as out:
                out.write(f.read())
        except (FileNotFoundError, OSError):
            pass  # the first study of this experiment
        _write(directions, trials, local, name)
        fs.create_dir(root, recursive=True)
        with open(local, "rb") as f, fs.open_output_stream(f"{root}/{DB}") as out:
            out.write(f.read())


def _write(directions, trials: list, path: str, name: str) -> None:
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    try:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass
        copy = optuna.create_study(study_name=name, storage=storage, directions=directions)
        copy.add_trials(trials)
    finally:
        storage.engine.dispose()
