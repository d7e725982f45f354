"""The driver: `sweep` and `resume` run a spec's stages on Ray Tune (an embedded local Ray, or a
cluster via --address), one driver per experiment (a lease), everything checked before the first
trial, and a manifest so that an interrupted sweep resumes where it stopped.

Jobs live in their own modules: the Ray session and Ctrl+C (`session`), Tune's wiring (`tuner`),
Optuna (`study`, `searcher`), the stages (`stages`; `pipeline`: tune and test in one Tuner), what is
printed (`report`), checks before the first trial (`preflight`), the lease (`lock`); the store does
every file of the dataset.
"""

from __future__ import annotations

import os
import time

from metasweep.analysis.store import SCHEMAS, StoreError, exists, read_raw, set_aside

from .config import ConfigError, dotted, format_error
from .console import make_console
from .errors import UserError
from .experiment import experiment_uri, located, read_manifest, read_text, write_manifest, write_text
from .lock import Lease, check_free
from .pipeline import refuse_one_stage, run_tune_and_test
from .plan import cells, grid_trial_configs, stage_test_configs, tune_trial_base
from .preflight import preflight
from .report import best_configs, check_untuned, hp_sources, print_best, print_sources
from .session import Interrupted, check_address, ray_session  # noqa: F401 (Interrupted: the CLI's)
from .spec import Spec, load_spec, parse_spec, spec_base
from .stages import Run, StageFailed, recorded_done, run_fixed_stage, run_tune_stage  # noqa: F401 (StageFailed: the CLI's)

console = make_console(stderr=True)


# ------------------------------------------------------------------------------------------ entry points


def sweep(spec_path: str, address: str | None = None, storage: str | None = None, stage: str = "all") -> str:
    """Run a spec file's sweep (or continue it: the same spec into the same experiment)."""
    if address:
        check_address(address)  # before anything is written
    spec, text, spec_hash = load_spec(spec_path)
    exp_uri = experiment_uri(storage or spec.storage, spec.experiment)
    existing = read_text(exp_uri, "spec.yaml")
    if existing is not None and existing != text:
        raise UserError(f"experiment {exp_uri} already exists with a different spec; rename the experiment "
                        f"or continue it with: metasweep resume {exp_uri}")
    manifest = read_manifest(exp_uri)
    manifest.setdefault("spec_base", spec_base(spec_path) or os.getcwd())
    drive(spec, text, spec_hash, exp_uri, manifest, stage, address, f"spec {spec_path}",
          f"experiment [bold]{spec.experiment}[/] → {exp_uri}")
    return exp_uri


def check(spec_path: str, storage: str | None = None, stage: str = "all", slots: int | None = None) -> dict:
    """What `sweep` would run, checked as it checks before its first trial (the spec, every data
    folder, every size constraint: UserError naming the field), without starting Ray or writing
    anything: {"experiment": where it goes, "state": new / continues / conflicts, "slots": trials at
    once, "stages": [{"stage", "cell", "trials", "bundles" (members of each; 1s: no bundles),
    "meta_steps", "done" (the manifest of the experiment there says so)}, ...], "one_tuner": whether
    tune and test run in one Tuner (sweeps.pipeline)}.
    Bundle sizes are those of `slots` (default: this machine's CPUs over a trial's, at most
    max_concurrent); a cluster with other slots bundles differently."""
    from .bundle_trial import bundle_groups
    from .plan import bundle_size, one_tuner, slots_for, tune_trials

    spec, text, _ = load_spec(spec_path)
    exp_uri = experiment_uri(storage or spec.storage, spec.experiment)
    try:
        preflight(spec, planned(spec, stage))
    except ConfigError as e:
        raise UserError(format_error(e, lambda loc: f"spec {spec_path}, field {dotted(loc)}")) from None
    existing = read_text(exp_uri, "spec.yaml")
    state = "new" if existing is None else ("continues" if existing == text else "conflicts")
    manifest = read_manifest(exp_uri) if state == "continues" else {}
    if state == "continues":
        refuse_one_stage(exp_uri, manifest, stage)
    if slots is None:
        import torch

        slots = slots_for(spec, os.cpu_count() or 1, torch.cuda.device_count())  # this machine, as a local Ray sees it
    rows = []

    def add(stage_name: str, cell, cfgs: list, members: int) -> None:
        # sized as the stages size them (sweeps.stages: a tune cell by its own trials, a test or grid
        # cell by its stage's) and grouped as they group them (bundle_groups; the tune stage's search
        # asks a bundle's worth at a time)
        size = bundle_size(spec, cell, members=members, slots=slots)
        parts = ([len(g) for g in bundle_groups(cfgs, size)] if stage_name != "tune" else
                 [min(size, len(cfgs) - i) for i in range(0, len(cfgs), size)])
        rows.append({"stage": stage_name, "cell": cell.name, "trials": len(cfgs), "bundles": parts,
                     "meta_steps": cfgs[0].meta_steps, "done": recorded_done(manifest, stage_name, cell.name)})

    def by_cell(configs):
        out: dict = {}
        for cell, cfg in configs:
            out.setdefault(cell, []).append(cfg)
        return out

    if spec.mode == "grid":
        configs = grid_trial_configs(spec)
        for cell, cfgs in by_cell(configs).items():
            add("grid", cell, cfgs, len(configs))
    else:
        if stage in ("tune", "all"):
            for cell in cells(spec):
                add("tune", cell, [tune_trial_base(spec, cell)] * tune_trials(spec, cell.variant),
                    tune_trials(spec, cell.variant))
        if stage in ("test", "all"):
            configs = stage_test_configs(spec, {})
            for cell, cfgs in by_cell(configs).items():
                add("test", cell, cfgs, len(configs))
    by_stage = {name: [max(r["bundles"]) for r in rows if r["stage"] == name] for name in ("tune", "test")}
    together = stage == "all" and all(by_stage.values()) and one_tuner(by_stage["tune"], by_stage["test"])
    return {"experiment": exp_uri, "state": state, "slots": slots, "stages": rows, "one_tuner": together}


def resume(exp_uri: str, address: str | None = None, stage: str = "all") -> str:
    """Continue an experiment wherever it is now (a folder or a URI): its own spec, finished stages
    skipped, unfinished Tuners restored; damaged or foreign dataset files set aside, saying so."""
    if address:
        check_address(address)
    exp_uri = located(exp_uri)
    text = read_text(exp_uri, "spec.yaml")
    if text is None:
        raise UserError(f"{exp_uri}: not an experiment folder (no spec.yaml); start one with metasweep sweep SPEC")
    manifest = read_manifest(exp_uri)
    spec, _, spec_hash = parse_spec(text, f"{exp_uri}/spec.yaml", base=manifest.get("spec_base"))
    stages = ["grid"] if spec.mode == "grid" else [s for s in ("tune", "test") if stage in (s, "all")]
    if all(recorded_done(manifest, s, c.name) for s in stages for c in cells(spec)):
        console.print(f"{exp_uri}: every stage is done; nothing left to run")
        return exp_uri
    drive(spec, text, spec_hash, exp_uri, manifest, stage, address, f"spec {exp_uri}/spec.yaml",
          f"resuming experiment [bold]{spec.experiment}[/] at {exp_uri}")
    return exp_uri


def drive(spec: Spec, text: str, spec_hash: str, exp_uri: str, manifest: dict, stage: str, address: str | None,
          source: str, hello: str) -> None:
    """The lease first (a second driver exits at once), then the checks before any trial, then Ray."""
    check_free(exp_uri)
    try:
        preflight(spec, planned(spec, stage))
    except ConfigError as e:
        raise UserError(format_error(e, lambda loc: f"{source}, field {dotted(loc)}")) from None
    refuse_one_stage(exp_uri, manifest, stage)
    console.print(hello)
    with Lease(exp_uri):
        set_aside_damaged(exp_uri)
        write_text(exp_uri, "spec.yaml", text)
        write_manifest(exp_uri, manifest)
        with ray_session(address):
            run_experiment(Run(spec, exp_uri, spec_hash, manifest), stage)


def planned(spec: Spec, stage: str) -> list:
    """The trials the stages to run will have (their sizes; hyper-parameters may still be tuned)."""
    if spec.mode == "grid":
        return grid_trial_configs(spec)
    out = []
    if stage in ("tune", "all"):
        out += [(cell, tune_trial_base(spec, cell)) for cell in cells(spec)]
    if stage in ("test", "all"):
        out += stage_test_configs(spec, {})
    return out


def set_aside_damaged(exp_uri: str) -> None:
    """Move each dataset file the store cannot read (damaged, foreign, newer) to `damaged/`, saying so."""
    if not exists(exp_uri):
        return
    for table in SCHEMAS:
        while True:
            try:
                read_raw(exp_uri, table)
                break
            except StoreError as e:
                path = str(e).split(": ", 1)[0]  # a StoreError names its file first
                try:
                    moved = set_aside(exp_uri, path)
                except (ValueError, OSError):
                    raise UserError(str(e)) from None
                console.print(f"set aside a file the dataset cannot read: {e}; moved to {moved}", markup=False)


# ------------------------------------------------------------------------------------------ the stages


def run_experiment(run: Run, stage: str = "all") -> dict:
    """The spec's stages in order; the manifest saved after each stage cell (and on the way out)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec, manifest = run.spec, run.manifest
    manifest.setdefault("cells", {})
    t0 = time.perf_counter()
    try:
        if spec.mode == "grid":
            run_fixed_stage(run, "grid", grid_trial_configs(spec))
            return manifest
        if run_tune_and_test(run, stage):  # both stages in one Tuner, where they can be (sweeps.pipeline)
            return manifest
        if stage in ("tune", "all"):
            run_tune_stage(run, cells(spec))  # the manifest written as each Tuner ends
            manifest["best"] = best_configs(spec, run.exp_uri)
            print_best(spec, manifest["best"])
            if stage == "tune":  # else the test stage checks (and says) it
                check_untuned(spec, run.exp_uri, manifest, manifest["best"])
        if stage in ("test", "all"):
            run_test_stage(run)
        return manifest
    finally:
        manifest["wall_seconds"] = manifest.get("wall_seconds", 0) + time.perf_counter() - t0
        write_manifest(run.exp_uri, manifest)


def run_test_stage(run: Run) -> None:
    """Each cell's best tune configuration (or the defaults: said so) on the spec's seeds; at the end,
    where each cell's configuration came from."""
    spec, manifest = run.spec, run.manifest
    tuned = any(k.startswith("tune-") for k in manifest["cells"])
    best = best_configs(spec, run.exp_uri) if tuned else {}
    check_untuned(spec, run.exp_uri, manifest, best)
    if not tuned:
        searched = {h for v in spec.variant_names() for h in spec.learner(v).searched()}
        defaults = ", ".join(f"{k}={spec.hparam_default(k)}" for k in spec.read_by_any() if k in searched)
        own = "; ".join(f"{v.name}: " + ", ".join(f"{k}={x}" for k, x in v.defaults.items())
                        for v in spec.variants if v.defaults)
        console.print(f"test: no tune results; every variant uses the spec's defaults ({defaults})"
                      + (f", its own where it has them ({own})" if own else ""), markup=False)
    configs = stage_test_configs(spec, best, hp_sources(spec, manifest, best))
    run_fixed_stage(run, "test", configs)
    print_sources(configs)
