"""The stages of a sweep on Ray Tune: a tune cell (Optuna on meta-validation tasks) and a fixed stage
(the test stage's configurations, or a grid). Each remembers the inputs it ran with (a hash per cell
in the manifest), settles its trials in the dataset when it ends (a trial Ray gave up on is
`errored` with its message; one the scheduler stopped is `stopped_early`), and fails the sweep when
every trial errored. The store does all the file work."""

from __future__ import annotations

import collections
import contextlib
import functools
import math
from dataclasses import dataclass

from metasweep.analysis.store import mark_unfinished, quarantine_trials, read_raw, read_trials, write_trial

from . import tuner as tuners
from .bundle_trial import bundle_groups
from .console import make_console
from .errors import UserError
from .experiment import write_manifest
from .plan import (
    Cell,
    bundle_size,
    fixed_trial_id,
    grid_size,
    inputs_hash,
    search_space,
    slots_for,
    tune_inputs,
    tune_trial_base,
    tune_trials,
)
from .searcher import RelocatableSearch
from .session import fit, need_ray, tune_error
from .spec import Spec
from .study import make_searcher, running_study
from .trial import TrialConfig, resolve_device, trial_row

console = make_console(stderr=True)


class StageFailed(Exception):
    """A stage that cannot give a result (every trial errored; a cell without a finite tune result
    when the spec says to fail): the sweep exits non-zero, the rows written are kept."""


@dataclass(frozen=True)
class Run:
    """The sweep being run: its spec, where the experiment is, its spec's hash, and its manifest."""

    spec: Spec
    exp_uri: str
    spec_hash: str
    manifest: dict

    def meta(self, stage: str, cell: Cell) -> dict:
        return {"experiment": self.spec.experiment, "stage": stage, "variant": cell.variant,
                "spec_hash": self.spec_hash, "cpus": self.spec.resources.cpu}

    def bundle_size(self, key: str, cell: Cell, members: int) -> int:
        """A cell's bundle size in a stage (sweeps.plan.bundle_size for this cluster's slots), decided
        once and kept in the manifest: a stage resumed on another cluster keeps the bundles (and the
        trainable) its saved Tuner state was made with."""
        sizes = self.manifest.setdefault("bundle_sizes", {})
        if key not in sizes:
            sizes[key] = bundle_size(self.spec, cell, members=members, slots=self.slots())
            write_manifest(self.exp_uri, self.manifest)
        return int(sizes[key])

    def slots(self) -> int:
        """How many trials (or bundles) run at once: the cluster's CPUs (GPUs where trials take them)
        over what one takes, at most the spec's `max_concurrent` - what an "auto" bundle size fills."""
        import ray

        need_ray()
        res = ray.cluster_resources()
        return slots_for(self.spec, res.get("CPU", 1.0), res.get("GPU", 0.0))


# ------------------------------------------------------------------------------------------ tune


@dataclass
class TuneCell:
    """A tune cell about to run: its search space, Optuna trials (`total`), bundle size and Tune trials."""

    cell: Cell
    name: str  # "tune-<cell>": its manifest entry, and its Tuner's name when it runs alone
    label: str  # its study's name (optuna.db)
    inputs: str
    space: dict
    total: int
    size: int

    @property
    def bundled(self) -> bool:
        return self.size > 1

    @property
    def n_trials(self) -> int:
        return math.ceil(self.total / self.size)


def run_tune_stage(run: Run, cells: list[Cell]) -> None:
    """The tune stage: every cell's Optuna search (a cell done with the same inputs is skipped; one done
    with others is refused). Bundled cells run together in one Tuner - its actors reused from one cell to
    the next, bundles of the next cell starting as slots free up - each cell with its own study, bundle
    size and rungs; a cell whose trials run alone (Tune's own scheduler per cell), or whose Tuner an
    earlier driver saved, runs in a Tuner of its own."""
    todo = []
    for cell in cells:
        tc = prepare_tune_cell(run, cell)
        if tc is None:
            console.print(f"tune-{cell.name}: done before with the same inputs; its rows are kept, nothing to run",
                          markup=False)
        else:
            todo.append(tc)
    together = [tc for tc in todo if tc.bundled and not tuners.can_restore(run.exp_uri, tc.name)]
    if len(together) < 2:
        together = []
    for tc in todo:
        if tc not in together:
            run_tune_cells(run, [tc])
    if together:
        run_tune_cells(run, together)


def prepare_tune_cell(run: Run, cell: Cell) -> TuneCell | None:
    """The cell to run, or None when it is done with the same inputs (UserError when done with others)."""
    spec, name = run.spec, f"tune-{cell.name}"
    inputs = tune_inputs(spec, cell)
    if run.manifest["cells"].get(name) == "done":
        if run.manifest.get("inputs", {}).get(name, inputs) != inputs:
            raise UserError(f"{run.exp_uri}: stage {name} ran with other inputs (its trial configuration or "
                            "search space changed since); start a new experiment (another `experiment:` name)")
        return None
    total = tune_trials(spec, cell.variant)
    return TuneCell(cell, name, f"{spec.experiment}.{cell.name}", inputs, search_space(spec, cell.variant), total,
                    run.bundle_size(name, cell, total))


def run_tune_cells(run: Run, group: list[TuneCell]) -> None:
    """One Tuner over the Optuna searches of `group` (one cell, or several bundled ones: a CellsSearch),
    then each cell's trials settled and the cell marked done."""
    from ray import tune

    spec = run.spec
    if len(group) == 1:
        name, label = group[0].name, group[0].label
    else:
        name = f"tune-{inputs_hash(sorted(tc.cell.name for tc in group))[:8]}"
        label = f"{spec.experiment}.{name}"
    bundled = group[0].bundled
    config_of = functools.partial(tune_config_of, run)

    def make():
        if len(group) > 1:
            from .bundle_search import CellsSearch

            search = RelocatableSearch(CellsSearch({tc.cell.name: bundle_search_for(run, tc) for tc in group},
                                                   {tc.cell.name: config_of(tc) for tc in group}, label),
                                       spec.max_concurrent)
            param_space = {}
        else:
            (tc,) = group
            search = (RelocatableSearch(bundle_search_for(run, tc), spec.max_concurrent) if tc.bundled else
                      make_searcher(tc.space, spec.search.sampler_seed, tc.label, spec.max_concurrent))
            param_space = config_of(tc)
        scheduler = None if bundled else tuners.scheduler(spec, group[0].cell)  # unbundled: one cell a Tuner
        tune_config = tune.TuneConfig(search_alg=search, scheduler=scheduler, metric="val_loss", mode="min",
                                      num_samples=sum(tc.n_trials for tc in group), reuse_actors=True)
        return tuners.new_tuner(spec, run.exp_uri, name, param_space, tune_config, bundled,
                                progress="tune" if len(group) > 1 else None, total=sum(tc.total for tc in group))

    for tc in group:
        announce(run, tc)
    if len(group) > 1:
        console.print(f"[bold]tune[/]: the {len(group)} cells above in one Tuner (Ray Tune's state: ray/{name})")
    with contextlib.ExitStack() as stack:
        for tc in group:
            stack.enter_context(running_study(run.exp_uri, tc.label))
            stack.enter_context(tuners.located(run.exp_uri, tc.label))
        stack.enter_context(tuners.located(run.exp_uri, label))
        trials = fit(tuner_for(run, name, make, "tune", [tc.cell for tc in group], bundled),
                     sum(tc.n_trials for tc in group), name)
    settle(run, "tune", trials, {tc.cell for tc in group})
    failed = mark_tune_cells_done(run, group)
    write_manifest(run.exp_uri, run.manifest)
    if failed:
        raise StageFailed("\n".join(failed))


def mark_tune_cells_done(run: Run, group: list[TuneCell], rows: list[dict] | None = None) -> list[str]:
    """Each tune cell of `group` done in the manifest (with its inputs), except a cell whose every
    trial errored: those fail the sweep, and their messages are returned. `rows`: the trials table's
    rows if the caller has read them since the stage's rows were settled."""
    failed = []
    rows = read_trials(run.exp_uri).to_pylist() if rows is None else rows
    for tc in group:
        try:
            fail_if_all_errored(run.exp_uri, "tune", [tc.cell], tc.name, rows)
        except StageFailed as e:
            failed.append(str(e))
            continue
        run.manifest["cells"][tc.name] = "done"
        run.manifest.setdefault("inputs", {})[tc.name] = tc.inputs
    return failed


def tune_config_of(run: Run, tc: TuneCell) -> dict:
    """A tune cell's Tune config beside what its search suggests: its base trial and meta."""
    meta = run.meta("tune", tc.cell)
    if tc.bundled:
        meta.update(cell=tc.cell.name, bundle_mode=run.spec.bundle.mode, rungs=rungs_for(run, tc.cell))
    return {"trial": tune_trial_base(run.spec, tc.cell).to_dict(), "meta": meta}


def announce(run: Run, tc: TuneCell) -> None:
    """Say what a tune cell searches (and start its rungs' actor where it has one)."""
    what = (f"the grid of {', '.join(f'{k} {list(r.choices)}' for k, r in tc.space.items())}"
            if grid_size(tc.space) else
            ', '.join(f"{k} {list(r.choices)}" if r.grid else k for k, r in tc.space.items()))
    console.print(f"[bold]{tc.name}[/]: Optuna over {what} ({tc.total} trials"
                  + (f" in {plural(tc.n_trials, 'bundle')} of up to {tc.size}" if tc.bundled else "")
                  + ", meta-validation tasks)")
    if tc.bundled and run.spec.scheduler.type == "asha":
        rungs_for(run, tc.cell, create=True)


def recorded_done(manifest: dict, stage: str, cell: str) -> bool:
    """Whether the manifest records a stage cell as done (a tune cell by its own entry; a test or grid
    cell by its stage's, with the cell's inputs remembered). The stages also compare those inputs with
    the ones they would run now."""
    cells = manifest.get("cells", {})
    if stage == "tune":
        return cells.get(f"tune-{cell}") == "done"
    return cells.get(stage) == "done" and cell in manifest.get("inputs", {}).get(stage, {})


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def rungs_for(run: Run, cell: Cell, create: bool = False) -> str | None:
    """The name of the Ray actor holding a bundled tune cell's ASHA rungs (None without a scheduler);
    `create`: start it (once per driver; bundles find it by name)."""
    spec = run.spec
    if spec.scheduler.type != "asha":
        return None
    name = f"metasweep-rungs-{spec.experiment}-{cell.name}"
    if create:
        from .bundle_search import rung_actor

        budget = spec.budget_of(cell.variant)
        reports = math.ceil(budget.meta_steps / budget.report_every)
        rung_actor(name, spec.scheduler.grace_period, spec.scheduler.reduction_factor, reports)
    return name


def bundle_search_for(run: Run, tc: TuneCell):
    """A bundled tune cell's searcher (sweeps.bundle_search): its study labelled as the cell's."""
    from .bundle_search import BundleSearch
    from .study import distributions, make_sampler

    seed = run.spec.search.sampler_seed
    return BundleSearch(distributions(tc.space), tc.size, tc.total, study_name=tc.label, sampler_seed=seed,
                        stage="tune", cell=tc.cell.name, sampler=make_sampler(tc.space, seed, constant_liar=True))


# ------------------------------------------------------------------------------------------ fixed


def run_fixed_stage(run: Run, stage: str, configs: list[tuple[Cell, TrialConfig]]) -> None:
    """One Tuner over fixed configurations (the test stage, or a grid). A cell that ran before with
    other inputs (e.g. on the defaults, before its tune stage ran) has its old rows set aside and runs
    again, saying so; a cell done with the same inputs is kept."""
    from ray import tune

    by_cell = collections.defaultdict(list)
    for cell, cfg in configs:
        by_cell[cell].append(cfg)
    inputs = {cell.name: inputs_hash(cfgs) for cell, cfgs in by_cell.items()}
    remembered = run.manifest.setdefault("inputs", {})
    done = remembered.get(stage, {}) if run.manifest["cells"].get(stage) == "done" else {}
    todo = [cell for cell in by_cell if done.get(cell.name) != inputs[cell.name]]
    if not todo:
        console.print(f"{stage}: every cell done before with the same inputs; their rows are kept, nothing to run",
                      markup=False)
        return
    changed = [cell.name for cell in todo if cell.name in done]
    if changed:
        console.print(f"{stage}: cell(s) {', '.join(changed)} ran with other inputs (their configurations changed, "
                      "e.g. tuned since): their old rows are set aside (orphaned/), running them again")
        quarantine_rows(run.exp_uri, stage, [c for c in todo if c.name in changed], quiet=True)
    points, bundled = fixed_points(run, stage, {cell: by_cell[cell] for cell in todo})
    name = stage if len(todo) == len(by_cell) and not done else f"{stage}-{inputs_hash(sorted(c.name for c in todo))[:8]}"

    label = f"{run.spec.experiment}.{name}"

    def make():
        generator = tuners.grid(label, run.spec.max_concurrent)
        return tuners.new_tuner(run.spec, run.exp_uri, name,
                                {("bundle" if bundled else "point"): tune.grid_search(points)},
                                tune.TuneConfig(search_alg=generator, reuse_actors=True), bundled, total=n)

    n = sum(len(by_cell[c]) for c in todo)
    console.print(f"[bold]{name}[/]: {n} trials" + (f" in {plural(len(points), 'bundle')}" if bundled else ""))
    with tuners.located(run.exp_uri, label):
        trials = fit(tuner_for(run, name, make, stage, todo, bundled), len(points), name)
    settle(run, stage, trials, set(todo))
    fail_if_all_errored(run.exp_uri, stage, todo, name)
    run.manifest["cells"][stage] = "done"
    remembered[stage] = {**done, **{cell.name: inputs[cell.name] for cell in todo}}


def fixed_points(run: Run, stage: str, by_cell: dict[Cell, list[TrialConfig]]) -> tuple[list[dict], bool]:
    """(Tune's grid points, bundled): one point per trial, or - where a cell's bundle size is above 1 -
    one per bundle of trials sharing everything but their seed and float hyper-parameters. Every trial
    carries its id (sweeps.plan.fixed_trial_id), so bundled and unbundled stages write the same rows."""
    members = sum(len(c) for c in by_cell.values())
    sizes = {cell: run.bundle_size(f"{stage}-{cell.name}", cell, members) for cell in by_cell}
    if all(n == 1 for n in sizes.values()):
        return [{"trial": cfg.to_dict(), "meta": run.meta(stage, cell), "trial_id": fixed_trial_id(stage, cell, cfg)}
                for cell, cfgs in by_cell.items() for cfg in cfgs], False
    return [p for cell, cfgs in by_cell.items() for p in bundle_points(run, stage, cell, cfgs, sizes[cell])], True


def bundle_points(run: Run, stage: str, cell: Cell, cfgs: list[TrialConfig], size: int) -> list[dict]:
    """A fixed stage cell's trials in bundles of at most `size` (Tune configs: "meta", "members")."""
    meta = {**run.meta(stage, cell), "bundle_mode": run.spec.bundle.mode}
    return [{"meta": meta, "members": [{"trial": c.to_dict(), "trial_id": tid, "variant": cell.variant}
                                       for tid, c in group]}
            for group in bundle_groups([(fixed_trial_id(stage, cell, c), c) for c in cfgs], size,
                                       key=lambda item: item[1])]


# ------------------------------------------------------------------------------------------ shared


def tuner_for(run: Run, name: str, make, stage: str, cells: list[Cell], bundled: bool = False):
    """Restore a stage's Tuner if Tune saved one (resume), else make a new one, after setting aside the
    rows an abandoned earlier run of these cells wrote."""
    if tuners.can_restore(run.exp_uri, name):
        console.print(f"[bold]{name}[/]: resuming")
        return tuners.restore(run.spec, run.exp_uri, name, bundled)
    quarantine_rows(run.exp_uri, stage, cells)
    return make()


def quarantine_rows(exp_uri: str, stage: str, cells: list[Cell], quiet: bool = False) -> int:
    """Set aside (the store moves them to `orphaned/`, never read) the rows of these cells of a stage,
    so that a cell run again does not count twice."""
    keys = {(c.variant, c.shots) for c in cells}
    ids = {r["trial_id"] for r in read_raw(exp_uri, "trials").to_pylist()
           if r["stage"] == stage and (r["variant"], r["train_shots"]) in keys}
    if not ids:
        return 0
    moved = quarantine_trials(exp_uri, ids)
    if not quiet:
        console.print(f"{stage}: set aside {len(ids)} trial(s) of an abandoned earlier run (see orphaned/)")
    return moved


def settle(run: Run, stage: str, trials: list, cells: set[Cell]) -> None:
    """Every trial of the stage ends with a final row: one Ray gave up on (after max_failures restarts)
    is `errored` with its message (a row written for it if it had none); one still `running` (the
    scheduler stopped it) is `stopped_early`."""
    have = None  # the trial ids with rows, read if a trial errored
    for t in trials:
        if t.status != "ERROR":
            continue
        if have is None:
            have = {r["trial_id"] for r in read_raw(run.exp_uri, "trials").select(["trial_id"]).to_pylist()}
        error = tune_error(t)
        for trial_id, cfg, variant in trials_of(t, run, stage, cells):
            if trial_id in have:
                mark_unfinished(run.exp_uri, stage, "errored", trial_ids=[trial_id], error=error)
            else:
                errored_row(run, stage, trial_id, cfg, variant, error)
    mark_unfinished(run.exp_uri, stage)


def trials_of(t, run: Run, stage: str, cells: set[Cell]) -> list[tuple[str, TrialConfig, str]]:
    """(trial id, configuration, variant) of each metasweep trial of a Tune trial (a bundle's members)."""
    from .bundle_trainable import members_of
    from .trainable import trial_config_of, trial_id_of

    config = t.config
    if "bundle" in config or "members" in config or "hps" in config:
        if "bundle" in config:
            config = {**config["bundle"], **{k: v for k, v in config.items() if k != "bundle"}}
        if "hps" in config and ("meta" not in config or "trial" not in config):  # a bundle the search drew
            (cell,) = cells
            config = {**config, "meta": {**run.meta(stage, cell), "cell": cell.name},
                      "trial": tune_trial_base(run.spec, cell).to_dict()}
        return [(m["trial_id"], TrialConfig.from_dict(m["trial"]), m["variant"]) for m in members_of(config)]
    meta, cfg = trial_config_of(config)
    return [(trial_id_of(config, t.trial_id), cfg, meta["variant"])]


def errored_row(run: Run, stage: str, trial_id: str, cfg: TrialConfig, variant: str, error: str) -> None:
    row = trial_row(cfg, experiment=run.spec.experiment, stage=stage, trial_id=trial_id, attempt=0,
                    spec_hash=run.spec_hash, started=None, status="errored", variant=variant, error=error,
                    device=resolve_device(cfg.device))
    write_trial(run.exp_uri, row, {}, {})


def fail_if_all_errored(exp_uri: str, stage: str, cells: list[Cell], name: str, rows: list[dict] | None = None) -> None:
    """StageFailed with a summary of the errors when no trial of these cells of the stage ran. `rows`:
    the trials table's rows if the caller has read them."""
    keys = {(c.variant, c.shots) for c in cells}
    rows = read_trials(exp_uri).to_pylist() if rows is None else rows
    rows = [r for r in rows if r["stage"] == stage and (r["variant"], r["train_shots"]) in keys]
    if rows and all(r["status"] == "errored" for r in rows):
        raise StageFailed(f"{name}: every trial errored ({len(rows)}); rows kept in {exp_uri}\n" + error_summary(rows))


def error_summary(rows: list[dict]) -> str:
    """One line per distinct error (its first line), with how many trials had it."""
    counts = collections.Counter((r.get("error") or "no message").strip().splitlines()[0] for r in rows)
    return "\n".join(f"  {n} x {message}" for message, n in counts.most_common())
