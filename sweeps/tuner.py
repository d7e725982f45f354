"""Ray Tune wiring of a stage: the trainable (told where the experiment is now), the run config on
the experiment's storage, the scheduler, and a Tuner restored when Tune saved one (resume). Nothing
here knows a stage's meaning; `sweeps.stages` does."""

from __future__ import annotations

import math
from contextlib import contextmanager

from metasweep.analysis.store import resolve

from .experiment import is_local
from .session import need_ray
from .spec import Spec


def storage_of(exp_uri: str, name: str = "") -> tuple[str, object | None]:
    """(path, filesystem) of Ray Tune's state under the experiment (`<experiment>/ray[/name]`): a
    local path with no filesystem, or an object store's path with its pyarrow filesystem (so a URI's
    query, e.g. ?endpoint_override=..., reaches Ray too)."""
    suffix = "/ray" + (f"/{name}" if name else "")
    if is_local(exp_uri):
        return exp_uri + suffix, None
    fs, root = resolve(exp_uri)
    return root + suffix, fs


@contextmanager
def located(exp_uri: str, label: str):
    """While this driver runs the Tuner whose search or grid is labelled `label`: where Tune's state of
    the experiment is now ((pyarrow filesystem, path), as Ray resolves them), for a restored one."""
    import pyarrow.fs as pafs

    from .searcher import LOCATIONS

    path, fs = storage_of(exp_uri)
    LOCATIONS[label] = (fs or pafs.LocalFileSystem(), path)
    try:
        yield
    finally:
        LOCATIONS.pop(label, None)


def grid(label: str, max_concurrent: int):
    """The generator of a fixed stage's trials (a grid search over its points)."""
    from .searcher import RelocatableGrid

    return RelocatableGrid(label, max_concurrent)


def trainable(spec: Spec, exp_uri: str, bundled: bool = False):
    """The trial function with its resources (`bundled`: one Tune trial per bundle of trials), told
    where the results go (not stored in Tune's state: a restored Tuner gets the experiment's current
    place)."""
    from ray import tune

    from .bundle_trainable import metasweep_bundle_trainable
    from .trainable import metasweep_trainable

    need_ray()  # with_parameters puts the results' place in Ray's object store
    fn = tune.with_parameters(metasweep_bundle_trainable if bundled else metasweep_trainable, results_uri=exp_uri)
    return tune.with_resources(fn, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def run_config(spec: Spec, exp_uri: str, name: str, progress: str | None = None, total: int | None = None):
    """Tune's run config of the Tuner `name`; `progress`: the label of its lines of progress (its name),
    `total`: how many trials it runs (members of bundles one by one)."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from .progress import TrialProgress
    from .retention import LatestCheckpoints

    path, fs = storage_of(exp_uri)
    return tune.RunConfig(
        name=name, storage_path=path, storage_filesystem=fs,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        # Tune deletes no checkpoint: its saved state may name any of them after a crash (sweeps.retention)
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        verbose=0,
        callbacks=[TrialProgress(progress or name, total), JsonLoggerCallback(),  # result.json: ResultGrid reads it
                   LatestCheckpoints()],
    )


def scheduler(spec: Spec, cell):
    """ASHA over a tune cell's reports (its variant's budget), or None."""
    if spec.scheduler.type != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    budget = spec.budget_of(cell.variant)
    reports = math.ceil(budget.meta_steps / budget.report_every)
    return ASHAScheduler(time_attr="training_iteration", max_t=reports + 1, grace_period=spec.scheduler.grace_period,
                         reduction_factor=spec.scheduler.reduction_factor)


def can_restore(exp_uri: str, name: str) -> bool:
    from ray import tune

    path, fs = storage_of(exp_uri, name)
    return tune.Tuner.can_restore(path, storage_filesystem=fs)


def restore(spec: Spec, exp_uri: str, name: str, bundled: bool = False):
    """The stage's Tuner as Tune saved it, at the experiment's current place; errored trials resume."""
    from ray import tune

    path, fs = storage_of(exp_uri, name)
    return tune.Tuner.restore(path, trainable=trainable(spec, exp_uri, bundled), resume_errored=True,
                              storage_filesystem=fs)


def new_tuner(spec: Spec, exp_uri: str, name: str, param_space: dict, tune_config, bundled: bool = False,
              progress: str | None = None, total: int | None = None):
    from ray import tune

    return tune.Tuner(trainable(spec, exp_uri, bundled), param_space=param_space, tune_config=tune_config,
                      run_config=run_config(spec, exp_uri, name, progress, total))
