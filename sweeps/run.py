"""The driver: runs a spec's stages on Ray Tune (embedded local Ray, or a cluster via --address),
keeps a manifest so that an interrupted sweep resumes where it stopped, and prints a ranking."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import threading
import time

from metasweep.analysis.store import mark_unfinished, quarantine_trials, read_dataset, read_raw

from .console import make_console
from .errors import UserError
from .experiment import experiment_uri, is_local, read_manifest, read_text, write_manifest, write_text
from .plan import Cell, cells, grid_trial_configs, search_space, stage_test_configs, tune_trial_base
from .spec import Spec, load_spec, parse_spec
from .trial import TrialConfig

console = make_console(stderr=True)


class Interrupted(Exception):
    """Tuner.fit() returned before every trial ended (SIGINT, lost driver)."""


# --------------------------------------------------------------------------------------- Ray


def check_address(address: str) -> None:
    """Fail in a second with one line instead of Ray's long retry loop on an unreachable head."""
    if address in ("auto", "local") or address.startswith("ray://"):
        target = address.removeprefix("ray://") if address.startswith("ray://") else None
        if not target:
            return
    else:
        target = address
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379), 'auto' or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as e:
        raise UserError(f"--address {address}: no Ray cluster reachable there ({e.strerror or e})") from None


def init_ray(address: str | None) -> bool:
    """Connect to a cluster, or start an embedded local Ray. Returns True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    import logging

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own one-line-per-trial progress instead
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # results live in our Parquet dataset: no CSV / TensorBoard loggers (result.json is kept, below)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    if address:
        check_address(address)
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as e:
            raise UserError(f"--address {address}: could not connect to Ray ({e})") from None
        return True
    # "local": always a fresh embedded instance (a bare ray.init() would try to join whatever cluster
    # /tmp/ray last recorded, and hang if that one is gone)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    return True


def _run_config(exp_uri: str, name: str, spec: Spec):
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    return tune.RunConfig(
        name=name,
        storage_path=f"{exp_uri}/ray",
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        verbose=0,
        callbacks=[ProgressCallback(name), JsonLoggerCallback()],  # result.json: ResultGrid reads it
    )


def _trainable(spec: Spec):
    from ray import tune

    from .trainable import metasweep_trainable

    return tune.with_resources(metasweep_trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def _scheduler(spec: Spec):
    if spec.scheduler.type != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    reports = math.ceil(spec.budget.meta_steps / spec.budget.report_every)
    return ASHAScheduler(time_attr="training_iteration", max_t=reports + 1, grace_period=spec.scheduler.grace_period,
                         reduction_factor=spec.scheduler.reduction_factor)


def ProgressCallback(stage_name: str):
    from .progress import TrialProgress

    return TrialProgress(stage_name)


_INTERRUPTED = threading.Event()
_IN_FIT = threading.Event()


def _on_sigint(signum, frame):
    """Ctrl+C: remember it, and let Tune stop gracefully (it saves its experiment state one last time
    on SIGUSR1, its own interrupt signal) when inside Tuner.fit(); elsewhere stop at once."""
    _INTERRUPTED.set()
    if _IN_FIT.is_set():
        os.kill(os.getpid(), signal.SIGUSR1)
    else:
        raise KeyboardInterrupt


def install_interrupt_handler() -> None:
    """Our SIGINT handler instead of Tune's: Tune's handler swallows Ctrl+C and returns a partial
    result that cannot always be told from a finished stage."""
    if threading.current_thread() is threading.main_thread():
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        signal.signal(signal.SIGINT, _on_sigint)


def _fit(tuner, expected: int, name: str):
    """Tuner.fit(), and a check that every trial really ended: after Ctrl+C (or a partial grid, trials
    left RUNNING/PENDING) the stage must not pass as finished."""
    _IN_FIT.set()
    try:
        grid = tuner.fit()
    finally:
        _IN_FIT.clear()
    if _INTERRUPTED.is_set():
        raise Interrupted(f"{name}: stopped by Ctrl+C")
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None)
    if trials is not None:
        unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
        if len(trials) < expected or unfinished:
            raise Interrupted(f"{name}: {len(unfinished) + expected - len(trials)} of {expected} trials unfinished")
    elif len(grid) < expected:
        raise Interrupted(name)
    return grid


def _tuner(exp_uri: str, name: str, make, stage: str, cell: Cell | None = None):
    """Restore a stage's Tuner if Ray saved one (resume), else make a new one."""
    from ray import tune

    path = f"{exp_uri}/ray/{name}"
    if tune.Tuner.can_restore(path):
        console.print(f"[bold]{name}[/]: resuming from {path}")
        return make(path)
    quarantine_rows(exp_uri, stage, cell.variant if cell else None, cell.shots if cell else None)
    return make(None)


# --------------------------------------------------------------------------------------- stages


def _meta(spec: Spec, exp_uri: str, spec_hash: str, stage: str, cell: Cell) -> dict:
    return {"experiment": spec.experiment, "stage": stage, "variant": cell.variant, "results_uri": exp_uri,
            "spec_hash": spec_hash, "cpus": spec.resources.cpu}


def run_tune_cell(spec: Spec, exp_uri: str, spec_hash: str, cell: Cell) -> None:
    import optuna
    from ray import tune

    name = f"tune-{cell.name}"
    space = search_space(spec, cell.variant)
    base = tune_trial_base(spec, cell)
    base.hp_source = None  # drawn by the search (store.HP_SOURCES)
    base = base.to_dict()

    define_by_run = DefineByRun({k: (r.low, r.high, r.log) for k, r in space.items()})

    def make(restore_path):
        if restore_path:
            return tune.Tuner.restore(restore_path, trainable=_trainable(spec), resume_errored=True)
        storage = optuna_storage(exp_uri)
        searcher = _resumable_optuna_search(space=define_by_run, metric="val_loss", mode="min",
                                sampler=optuna.samplers.TPESampler(seed=spec.search.sampler_seed),
                                study_name=f"{spec.experiment}.{cell.name}", storage=storage)
        return tune.Tuner(
            _trainable(spec),
            param_space={"trial": base, "meta": _meta(spec, exp_uri, spec_hash, "tune", cell)},
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=_scheduler(spec), metric="val_loss",
                                        mode="min", num_samples=spec.search.trials_per_variant,
                                        max_concurrent_trials=spec.max_concurrent, reuse_actors=True),
            run_config=_run_config(exp_uri, name, spec),
        )

    console.print(f"[bold]{name}[/]: Optuna over {', '.join(space)} "
                  f"({spec.search.trials_per_variant} trials, meta-validation tasks)")
    _fit(_tuner(exp_uri, name, make, "tune", cell), spec.search.trials_per_variant, name)


def _resumable_optuna_search(**kwargs):
    from .searcher import ResumableOptunaSearch

    return ResumableOptunaSearch(**kwargs)


class DefineByRun:
    """Optuna's define-by-run search space (a module-level class: Tune pickles the searcher)."""

    def __init__(self, space: dict[str, tuple[float, float, bool]]):
        self.space = space

    def __call__(self, trial):
        for key, (low, high, log) in self.space.items():
            trial.suggest_float(key, low, high, log=log)


def optuna_storage(exp_uri: str):
    """A persistent Optuna study (sqlite next to the results when local, else in ~/.metasweep), so the
    study survives a restart and optuna-dashboard can open it."""
    import optuna

    if is_local(exp_uri):
        os.makedirs(exp_uri, exist_ok=True)
        path = os.path.join(exp_uri, "optuna.db")
    else:
        folder = os.path.expanduser("~/.metasweep/optuna")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, exp_uri.replace("://", "_").replace("/", "_") + ".db")
    return optuna.storages.RDBStorage(f"sqlite:///{path}")


def best_configs(spec: Spec, exp_uri: str) -> dict[str, dict]:
    """Each cell's best tune trial by final meta-validation loss (completed trials only; ASHA-stopped
    ones did not get the full budget). Cells without a usable trial fall back to the defaults."""
    import pyarrow.compute as pc

    trials = read_dataset(exp_uri)["trials"]
    out = {}
    for cell in cells(spec):
        sel = trials.filter(pc.and_(pc.and_(pc.equal(trials["stage"], "tune"), pc.equal(trials["variant"], cell.variant)),
                                    pc.and_(pc.equal(trials["train_shots"], cell.shots),
                                            pc.equal(trials["status"], "completed"))))
        rows = [r for r in sel.to_pylist() if r["final_val_loss"] is not None and math.isfinite(r["final_val_loss"])]
        if not rows:
            continue
        best = min(rows, key=lambda r: r["final_val_loss"])
        conf = TrialConfig.from_dict(json.loads(best["config"]))
        hp = {k: conf.hparam(k) for k in search_space(spec, cell.variant)}
        out[cell.name] = {**hp, "_val_loss": best["final_val_loss"], "_trial_id": best["trial_id"]}
    return out


def run_grid_stage(spec: Spec, exp_uri: str, spec_hash: str, stage: str, configs,
                   sources: dict[str, tuple[str, str | None]] | None = None) -> None:
    """One Tuner over fixed configurations: a grid, or the test stage (`sources`: per cell name,
    where its hyper-parameters came from; default "grid")."""
    from ray import tune

    name = stage
    for cell, cfg in configs:  # where each trial's hyper-parameters came from (store.HP_SOURCES)
        cfg.hp_source, cfg.hp_source_trial = (sources or {}).get(cell.name, ("grid", None))
    points = [{"trial": cfg.to_dict(), "meta": _meta(spec, exp_uri, spec_hash, stage, cell)} for cell, cfg in configs]

    def make(restore_path):
        if restore_path:
            return tune.Tuner.restore(restore_path, trainable=_trainable(spec), resume_errored=True)
        return tune.Tuner(
            _trainable(spec),
            param_space={"point": tune.grid_search(points)},
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent, reuse_actors=True),
            run_config=_run_config(exp_uri, name, spec),
        )

    console.print(f"[bold]{name}[/]: {len(points)} trials")
    _fit(_tuner(exp_uri, name, make, stage), len(points), name)


# --------------------------------------------------------------------------------------- entry points


def prepare(spec_path: str, storage: str | None) -> tuple[Spec, str, str]:
    spec, text, spec_hash = load_spec(spec_path)
    exp_uri = experiment_uri(storage or spec.storage, spec.experiment)
    existing = read_text(exp_uri, "spec.yaml")
    if existing is not None and existing != text:
        raise UserError(f"experiment {exp_uri} already exists with a different spec; rename the experiment "
                        f"or continue it with: metasweep resume {exp_uri}")
    write_text(exp_uri, "spec.yaml", text)
    return spec, exp_uri, spec_hash


def run_experiment(spec: Spec, exp_uri: str, spec_hash: str, stage: str = "all") -> dict:
    manifest = read_manifest(exp_uri)
    manifest.setdefault("cells", {})
    t0 = time.perf_counter()
    if spec.mode == "grid":
        if not manifest["cells"].get("grid"):
            run_grid_stage(spec, exp_uri, spec_hash, "grid", grid_trial_configs(spec))
            mark_unfinished(exp_uri, "grid")
            manifest["cells"]["grid"] = "done"
            manifest["wall_seconds"] = manifest.get("wall_seconds", 0) + time.perf_counter() - t0
            write_manifest(exp_uri, manifest)
        return manifest
    if stage in ("tune", "all"):
        for cell in cells(spec):
            key = f"tune-{cell.name}"
            if manifest["cells"].get(key) == "done":
                continue
            run_tune_cell(spec, exp_uri, spec_hash, cell)
            mark_unfinished(exp_uri, "tune")
            manifest["cells"][key] = "done"
            write_manifest(exp_uri, manifest)
        manifest["best"] = best_configs(spec, exp_uri)
        write_manifest(exp_uri, manifest)
        print_best(spec, manifest["best"])
    if stage in ("test", "all"):
        if not manifest["cells"].get("test"):
            best = manifest.get("best") or {}
            if stage == "test" and not best and any(k.startswith("tune-") for k in manifest["cells"]):
                best = best_configs(spec, exp_uri)
            if not best:
                console.print("test: no tune results; every variant uses the spec's defaults "
                              f"(alpha={spec.defaults.alpha}, beta={spec.defaults.beta}, c={spec.defaults.temperature})")
            clean = {k: {h: v for h, v in hp.items() if not h.startswith("_")} for k, hp in best.items()}
            run_grid_stage(spec, exp_uri, spec_hash, "test", stage_test_configs(spec, clean),
                           hp_sources(spec, manifest, best))
            mark_unfinished(exp_uri, "test")
            manifest["cells"]["test"] = "done"
            write_manifest(exp_uri, manifest)
    manifest["wall_seconds"] = manifest.get("wall_seconds", 0) + time.perf_counter() - t0
    write_manifest(exp_uri, manifest)
    return manifest


def hp_sources(spec: Spec, manifest: dict, best: dict) -> dict[str, tuple[str, str | None]]:
    """Per test-stage cell, (hp_source, hp_source_trial): "tuned" from its best tune trial,
    "fallback" when its tune stage ran without a finite result, "defaults" when it had none."""
    out = {}
    for cell in cells(spec):
        if cell.name in best:
            out[cell.name] = ("tuned", best[cell.name].get("_trial_id"))
        else:
            tuned = manifest["cells"].get(f"tune-{cell.name}") == "done"
            out[cell.name] = ("fallback" if tuned else "defaults", None)
    return out


def print_best(spec: Spec, best: dict) -> None:
    from rich.table import Table

    table = Table(title="tune stage: best configuration per variant (meta-validation loss)")
    for c in ("variant", "train shots", "alpha", "beta", "temperature", "val loss"):
        table.add_column(c, justify="right")
    for cell in cells(spec):
        b = best.get(cell.name)
        if b is None:
            table.add_row(cell.variant, str(cell.shots), "-", "-", "-", "no completed trial")
            continue
        hp = [f"{b[k]:.3g}" if k in b else "-" for k in ("alpha", "beta", "temperature")]
        table.add_row(cell.variant, str(cell.shots), *hp,
                      f"{b['_val_loss']:.4f}")
    make_console().print(table)


def run_on_ray(spec: Spec, exp_uri: str, spec_hash: str, stage: str, address: str | None) -> None:
    """Run the experiment on a cluster (`address`) or an embedded local Ray that we start and stop."""
    import ray

    install_interrupt_handler()
    started = init_ray(address)
    try:
        run_experiment(spec, exp_uri, spec_hash, stage)
    finally:
        if started:
            ray.shutdown()


def sweep(spec_path: str, address: str | None = None, storage: str | None = None, stage: str = "all") -> str:
    if address:
        check_address(address)  # before anything is written
    spec, exp_uri, spec_hash = prepare(spec_path, storage)
    console.print(f"experiment [bold]{spec.experiment}[/] → {exp_uri}")
    run_on_ray(spec, exp_uri, spec_hash, stage, address)
    return exp_uri


def resume(exp_uri: str, address: str | None = None, stage: str = "all") -> str:
    if "://" not in exp_uri:
        exp_uri = os.path.abspath(exp_uri)
    text = read_text(exp_uri, "spec.yaml")
    if text is None:
        raise UserError(f"{exp_uri}: not an experiment folder (no spec.yaml); start one with metasweep sweep SPEC")
    spec, _, spec_hash = parse_spec(text, f"{exp_uri}/spec.yaml")
    console.print(f"resuming experiment [bold]{spec.experiment}[/] at {exp_uri}")
    run_on_ray(spec, exp_uri, spec_hash, stage, address)
    return exp_uri


def quarantine_rows(exp_uri: str, stage: str, variant: str | None = None, shots: int | None = None) -> int:
    """Before a stage cell starts afresh (no Ray state to restore: the driver died before Tune saved
    any), set aside the rows an earlier, abandoned run of that cell wrote (the store moves them to
    `orphaned/`, never read), so the restarted cell does not count twice."""
    trials = read_raw(exp_uri, "trials").to_pylist()
    ids = {r["trial_id"] for r in trials if r["stage"] == stage and (variant is None or r["variant"] == variant)
           and (shots is None or r["train_shots"] == shots)}
    if not ids:
        return 0
    moved = quarantine_trials(exp_uri, ids)
    console.print(f"{stage}: set aside {len(ids)} trial(s) of an abandoned earlier run (see orphaned/)")
    return moved
