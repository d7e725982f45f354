"""The tune and test stages in one Tuner, each cell's test bundles started as soon as its tune cell
has ended.

Two Tuners one after the other each start their own trial processes (≈ 3 s each: a process, then
torch and Ray Tune imported), and the test stage's last bundles leave slots idle that the tune stage
could not fill. Where every tune cell and every test cell runs in bundles (sweeps.plan.bundle_size
above 1) and neither stage has run yet, `run_experiment` runs both here: one searcher
(bundle_search.CellsSearch with `then`) asks every cell's Optuna bundles first and, when a cell's
last tune bundle ends, queues that cell's test bundles - its best configuration chosen on
meta-validation tasks exactly as the test stage chooses it (sweeps.report.best_configs, read from the
rows its tune bundles wrote), on the spec's seeds, bundled and identified as the test stage bundles
them. The dataset is the one the two Tuners write (trial ids, rows, values: tests/test_pipeline.py).

What is not the same: a cell whose tune stage failed (every trial errored) or, with `test.untuned:
fail`, ended without a finite result, is not tested and fails the sweep at the end, as before - but
the other cells' tests have run by then instead of not at all.

The manifest's "stages_tuner" entry says that such a Tuner exists ({"name", "done"}): `resume`
restores it (Tune's saved state holds both stages' trials and the searcher's queue). It cannot be
continued one stage at a time (`sweep --stage tune` or `test`: exit 2).
"""

from __future__ import annotations

import contextlib

from metasweep.analysis.store import read_trials

from . import tuner as tuners
from .bundle_search import NEXT_STAGE, CellsSearch
from .console import make_console
from .errors import UserError
from .experiment import write_manifest
from .plan import Cell, cells, inputs_hash, one_tuner, stage_test_configs
from .progress import BY_STAGE, say_after_trial
from .report import best_configs, check_untuned, hp_sources, print_best, print_sources
from .searcher import RelocatableSearch
from .session import fit
from .stages import (
    Run,
    StageFailed,
    TuneCell,
    announce,
    bundle_points,
    bundle_search_for,
    fail_if_all_errored,
    mark_tune_cells_done,
    plural,
    prepare_tune_cell,
    quarantine_rows,
    settle,
    tune_config_of,
    tuner_for,
)
from .study import running_study

console = make_console(stderr=True)

RAN = ("completed", "diverged", "stopped_early")  # a tune trial's row that says it trained


def name_of(run: Run) -> str:
    return f"stages-{inputs_hash(sorted(c.name for c in cells(run.spec)))[:8]}"


def pending(exp_uri: str, manifest: dict) -> str | None:
    """The name of an experiment's unfinished tune-and-test Tuner, or None (no Ray needed)."""
    entry = manifest.get("stages_tuner")
    if entry and not entry.get("done") and tuners.can_restore(exp_uri, entry["name"]):
        return entry["name"]
    return None


def refuse_one_stage(exp_uri: str, manifest: dict, stage: str) -> None:
    """UserError where one stage is asked of an experiment whose unfinished Tuner runs both (the
    driver asks before starting Ray; `check` too)."""
    name = pending(exp_uri, manifest)
    if name is not None and stage != "all":
        raise UserError(f"{exp_uri}: its tune and test stages run together in one Tuner (ray/{name}), "
                        f"which is unfinished; continue both (no --stage): metasweep resume {exp_uri}")


def run_tune_and_test(run: Run, stage: str) -> bool:
    """Run (or resume) the tune and test stages in one Tuner where they can; False where they cannot
    (a stage or cell done or run alone before, a cell not bundled, one stage asked for): the stages
    then run one after the other."""
    refuse_one_stage(run.exp_uri, run.manifest, stage)
    name = pending(run.exp_uri, run.manifest)
    if name is None and (stage != "all" or "test" in run.manifest["cells"]):
        return False
    todo = [prepare_tune_cell(run, cell) for cell in cells(run.spec)]
    if any(tc is None for tc in todo):
        if name is not None:  # cannot happen: the manifest marks cells done only after the Tuner ended
            raise UserError(f"{run.exp_uri}: a tune cell is done but its Tuner ray/{name} is not")
        return False
    if name is None and any(tuners.can_restore(run.exp_uri, tc.name) for tc in todo):
        return False  # a cell's own Tuner from an earlier driver: resume it as it was
    configs = stage_test_configs(run.spec, {})
    sizes = {tc.cell: run.bundle_size(f"test-{tc.cell.name}", tc.cell, len(configs)) for tc in todo}
    if name is None and not one_tuner([tc.size for tc in todo], sizes.values()):
        return False
    pipelined(run, todo, sizes, name or name_of(run))
    return True


def trained(cell: Cell, trials: list[dict]) -> bool:
    """Whether any of a cell's tune trials trained (not every one errored): from the trials table's rows
    (`trials`), as the test stage would find them (a bundle Ray gave up on has rows still `running`,
    not counted)."""
    return any(r["status"] in RAN for r in trials
               if r["stage"] == "tune" and (r["variant"], r["train_shots"]) == (cell.variant, cell.shots))


def tested(run: Run, cell: Cell, best: dict, trials: list[dict]) -> bool:
    """Whether the test stage runs a cell once its tune cell has ended: it trained, and it has a finite
    result or the spec tests untuned cells on the defaults (sweeps.report.check_untuned). `trials`: the
    trials table's rows, read once by the caller (the driver reads them while slots wait)."""
    return trained(cell, trials) and (cell.name in best or run.spec.test.untuned == "fallback")


def test_points(run: Run, sizes: dict[Cell, int], cell_name: str) -> list[dict]:
    """A tune cell's test bundles once its tune trials have ended ([] where the test stage would not
    run it): its best configuration on every seed, as the test stage makes them."""
    cell = next(c for c in sizes if c.name == cell_name)
    trials = read_trials(run.exp_uri).to_pylist()
    best = {k: v for k, v in best_configs(run.spec, run.exp_uri, trials).items() if k == cell_name}
    if not tested(run, cell, best, trials):
        say_after_trial(f"test: {cell_name} not tested (its tune cell has no result; said at the end)")
        return []  # the sweep fails at the end, naming the cell (fail_if_all_errored, check_untuned)
    source = ("tuned", best[cell_name]["_trial_id"]) if best else ("fallback", None)
    cfgs = [cfg for c, cfg in stage_test_configs(run.spec, best, {cell_name: source}) if c == cell]
    points = bundle_points(run, "test", cell, cfgs, sizes[cell])
    say_after_trial(f"test: {cell_name}'s {plural(len(cfgs), 'trial')} queued in "
                    f"{plural(len(points), 'bundle')}, its tune cell having ended (configuration: "
                    + (f"{source[1]}, val_loss {best[cell_name]['_val_loss']:.4f})" if best else "the defaults)"))
    return points


def test_bundles(run: Run, sizes: dict[Cell, int], unqueued=()) -> int:
    """How many test bundles the Tuner must have run: those of the cells tested (not `unqueued`: cells
    whose test bundles could not be made)."""
    trials = read_trials(run.exp_uri).to_pylist()
    best = best_configs(run.spec, run.exp_uri, trials)
    return sum(-(-len(run.spec.test.seeds) // n) for c, n in sizes.items()
               if c.name not in unqueued and tested(run, c, best, trials))


def feeder(run: Run, sizes: dict[Cell, int], unqueued: dict[str, str]):
    """`test_points` as the searcher calls it, inside Ray Tune's loop: an exception there would be
    logged by Tune and swallowed, and the searcher would wait for that cell's test bundles for ever.
    Here it is said (after the ended trial's lines) and kept in `unqueued` ({cell: error}, the manifest's
    stages_tuner entry: a driver stopped before the Tuner ended finds it again); the cell is not tested,
    and the sweep fails at the end naming it (a resume then tests it in the test stage)."""
    def feed(cell_name: str) -> list[dict]:
        try:
            return test_points(run, sizes, cell_name)
        except Exception as e:  # noqa: BLE001 - any error: never a hung sweep
            unqueued[cell_name] = f"{type(e).__name__}: {e}"
            write_manifest(run.exp_uri, run.manifest)  # its stages_tuner entry holds `unqueued`
            say_after_trial(f"test: {cell_name} not tested: its test bundles could not be made "
                            f"({unqueued[cell_name]}); said at the end")
            return []
    return feed


def pipelined(run: Run, todo: list[TuneCell], sizes: dict[Cell, int], name: str) -> None:
    from ray import tune

    spec, manifest = run.spec, run.manifest
    label = f"{spec.experiment}.{name}"
    test_cells = [tc.cell for tc in todo]
    n_test = sum(-(-len(spec.test.seeds) // sizes[c]) for c in test_cells)  # bundles, if every cell is tested
    for tc in todo:
        announce(run, tc)
    console.print(f"[bold]test[/]: {plural(len(spec.test.seeds) * len(test_cells), 'trial')} in "
                  f"{plural(n_test, 'bundle')}, each cell's as soon as its tune cell has ended; tune and test in "
                  f"one Tuner (Ray Tune's state: ray/{name})")
    # cells whose test bundles could not be made, and why: kept in the manifest as they happen, since
    # the Tuner's saved searcher counts them as fed (a resumed Tuner neither makes nor expects them)
    before = manifest.get("stages_tuner") or {}
    unqueued: dict[str, str] = dict(before.get("unqueued", {})) if before.get("name") == name else {}
    NEXT_STAGE[label] = feeder(run, sizes, unqueued)

    def make():
        quarantine_rows(run.exp_uri, "test", test_cells)
        search = CellsSearch({tc.cell.name: bundle_search_for(run, tc) for tc in todo},
                             {tc.cell.name: tune_config_of(run, tc) for tc in todo}, label, then=label)
        config = tune.TuneConfig(search_alg=RelocatableSearch(search, spec.max_concurrent), metric="val_loss",
                                 mode="min", num_samples=sum(tc.n_trials for tc in todo) + n_test, reuse_actors=True)
        return tuners.new_tuner(spec, run.exp_uri, name, {}, config, bundled=True, progress=BY_STAGE,
                                total=sum(tc.total for tc in todo) + len(spec.test.seeds) * len(test_cells))

    manifest["stages_tuner"] = {"name": name, "done": False, "unqueued": unqueued}
    write_manifest(run.exp_uri, manifest)
    try:
        with contextlib.ExitStack() as stack:
            for tc in todo:
                stack.enter_context(running_study(run.exp_uri, tc.label))
                stack.enter_context(tuners.located(run.exp_uri, tc.label))
            stack.enter_context(tuners.located(run.exp_uri, label))
            tuner = tuner_for(run, name, make, "tune", test_cells, bundled=True)
            trials = fit(tuner, lambda: sum(tc.n_trials for tc in todo) + test_bundles(run, sizes, unqueued), name)
    finally:
        NEXT_STAGE.pop(label, None)
    by_stage = {"tune": [], "test": []}
    for t in trials:
        by_stage[t.config.get("meta", {}).get("stage", "tune")].append(t)
    settle(run, "tune", by_stage["tune"], set(test_cells))
    settle(run, "test", by_stage["test"], set(test_cells))
    rows = read_trials(run.exp_uri).to_pylist()  # settled: what every check below reads
    failed = mark_tune_cells_done(run, todo, rows)
    best = best_configs(spec, run.exp_uri, rows)
    manifest["best"] = best
    print_best(spec, best)
    try:
        check_untuned(spec, run.exp_uri, manifest, best)
    except StageFailed as e:
        failed.append(str(e))
    configs = [(c, cfg) for c, cfg in stage_test_configs(spec, best, hp_sources(spec, manifest, best))
               if c.name not in unqueued and tested(run, c, best, rows)]
    failed += [f"test-{c}: not tested, its test bundles could not be made ({e}); its tune rows are kept and "
               f"`metasweep resume {run.exp_uri}` tests it" for c, e in unqueued.items()]
    tested_cells = sorted({c for c, _ in configs}, key=test_cells.index)
    if tested_cells:
        try:
            fail_if_all_errored(run.exp_uri, "test", tested_cells, "test", rows)
        except StageFailed as e:
            failed.append(str(e))
        manifest["cells"]["test"] = "done"
        manifest.setdefault("inputs", {})["test"] = {c.name: inputs_hash([cfg for x, cfg in configs if x == c])
                                                     for c in tested_cells}
        print_sources(configs)
    manifest["stages_tuner"]["done"] = True
    write_manifest(run.exp_uri, manifest)
    if failed:
        raise StageFailed("\n".join(failed))
