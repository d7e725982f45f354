"""The `metasweep` command line: train, sweep, resume, status, rank, plot, query."""

from __future__ import annotations

import inspect
import sys
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.table import Table

from .console import make_console
from .errors import UserError, fail

app = typer.Typer(
    name="metasweep",
    help="Hyper-parameter and ablation sweeps for gradient-based meta-learning (MAML, Meta-SGD, ANIL, "
         "T-net, MT-net, ...) on Ray Tune + Optuna, with results in Parquet and honest rankings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = make_console(stderr=True)  # progress, messages
out = make_console()  # tables and results


@app.callback()
def root() -> None:
    """metasweep: meta-learning sweeps on Ray Tune + Optuna."""


def print_summary(summary: list[dict], title: str, metric: str = "loss") -> None:
    table = Table(title=title)
    for col in ("shots", "inner steps", "tasks", f"{metric} (mean ± 95% CI)"):
        table.add_column(col, justify="right")
    for r in summary:
        table.add_row(str(r["shots"]), str(r["inner_steps"]), str(r["n"]), f"{r['mean']:.3f} ± {r['ci95']:.3f}")
    out.print(table)


@app.command()
def train(
    task: str | None = typer.Option(None, help="task family (a name in the registry)"),
    variant: str = typer.Option("maml", help="preset (a name in the registry)"),
    train_shots: int | None = typer.Option(None, help="support points (per class) per task during meta-training (K)"),
    train_shots_range: str | None = typer.Option(None, help="LO,HI: meta-train on K drawn from LO..HI per meta-batch "
                                                            "(validation stays at --train-shots)"),
    queries: int | None = typer.Option(None, help="query points (per class) per task"),
    order: int | None = typer.Option(None, help="task option order (polynomial)"),
    data_root: str | None = typer.Option(None, help="task option data_root: image tasks' dataset folder "
                                                    "(docs/IMAGES.md)"),
    ways: int | None = typer.Option(None, help="task option ways: classes per task (N-way); shots and queries are "
                                               "per class"),
    splits: str | None = typer.Option(None, help="task option splits (omniglot): characters in train,val,test"),
    cache_dir: str | None = typer.Option(None, help="task option cache_dir: where decoded images are cached"),
    task_option: list[str] = typer.Option([], help="any task option of the family, KEY=VALUE (repeatable)"),
    switch: list[str] = typer.Option([], help="a switch of the preset, KEY=VALUE (repeatable), e.g. distance=cosine"),
    hparam: list[str] = typer.Option([], help="any declared hyper-parameter, NAME=VALUE (repeatable), e.g. "
                                              "cosine_scale=7"),
    plugin: list[str] = typer.Option([], help="a module registering learners or task families (repeatable)"),
    cka_tasks: int | None = typer.Option(None, help="per-layer CKA before/after the inner loop on N test tasks "
                                                    "(table cka; plot --kind cka)"),
    alpha: float | None = typer.Option(None, help="inner step size α"),
    beta: float | None = typer.Option(None, help="outer (Adam) step size β"),
    temperature: float | None = typer.Option(None, help="Gumbel-Softmax temperature c (masked variants)"),
    inner_steps: int | None = typer.Option(None, help="inner steps during meta-training"),
    meta_batch: int | None = typer.Option(None, help="tasks per meta-step"),
    meta_steps: int | None = typer.Option(None, help="outer steps"),
    mask_eval: str | None = typer.Option(None, help="masks at evaluation: sample | threshold"),
    seed: int = typer.Option(0, help="training seed"),
    eval_shots: str | None = typer.Option(None, help="comma-separated shot counts to evaluate (image tasks: the "
                                                     "train shots by default)"),
    eval_steps: str | None = typer.Option(None, help="comma-separated inner-step counts to evaluate"),
    eval_tasks: int | None = typer.Option(None, help="number of fixed meta-test tasks"),
    eval_seed: int | None = typer.Option(None, help="seed that fixes the evaluation tasks"),
    report_every: int | None = typer.Option(None, help="validation + curve row every K meta-steps"),
    val_tasks: int | None = typer.Option(None, help="meta-validation tasks per report"),
    select: str | None = typer.Option(None, help="the iterate evaluated: last | best_val (lowest validation loss "
                                                 "at a report) | best_train (lowest meta-training loss)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    cuda_graphs: bool = typer.Option(True, help="CUDA: replay each meta-gradient from a captured CUDA graph "
                                     "(same math, fewer kernel launches)"),
    tf32: bool = typer.Option(False, help="CUDA: allow TF32 convolutions/matmuls (off: full float32 precision)"),
    out_dir: Path = typer.Option(Path("runs/train"), "--out", help="folder for the trial's Parquet files"),
):
    """Meta-train one variant (no Ray), print the evaluation table and write the Parquet rows. Bad
    options exit 2 with one line, before any training; an errored trial exits 1, its rows kept."""
    from .single import build

    options = dict(locals())
    try:
        _, cfg = build(options)
    except UserError as e:
        fail(str(e))
    result = train_one(cfg, out_dir)
    if result.status == "errored":
        fail(f"trial errored: {result.trial_row['error'].strip().splitlines()[0]} (rows kept in {out_dir})", code=1)


def train_one(cfg, out_dir: Path):
    """Train with a progress bar, write the rows, print the evaluation tables."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from metasweep.analysis.store import write_trial
    from metasweep.analysis.summary import summarize

    from .trial import failure, run_trial

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task(f"{cfg.variant} meta-training", total=cfg.meta_steps, info="")

        def on_report(state, row):
            progress.update(bar, completed=state.step,
                            info=f"train {row['meta_train_loss']:.3f}  val {row['val_loss']:.3f}")

        result = run_trial(cfg, trial_id=f"{cfg.variant}-seed{cfg.seed}", experiment=out_dir.name, stage="single",
                           on_report=on_report)
    try:
        write_trial(str(out_dir), result.trial_row, result.curves, result.eval_tasks, extra={"cka": result.cka})
    except Exception as e:  # rows it cannot write: the trial is errored, its row says why
        result = errored(result, failure("writing", e))
        write_trial(str(out_dir), result.trial_row, {}, {})
    console.print(f"status: [bold]{result.status}[/]  meta-steps: {result.trial_row['meta_steps']}  "
                  f"wall: {result.trial_row['wall_seconds']:.1f}s  device: {result.trial_row['device']}")
    if result.summary:
        from metasweep.core.train import SELECTIONS

        step, key = result.trial_row["selected_step"], SELECTIONS[cfg.select]
        if key is None:
            console.print(f"evaluated: the last iterate (meta-step {step}; eval.select last)")
        else:
            value = result.curves[key][result.curves["meta_step"].index(step)]
            what = {"val_loss": "validation loss", "meta_train_loss": "meta-training loss"}[key]
            console.print(f"evaluated: the iterate of meta-step {step}, the lowest {what} of the reports "
                          f"({value:.4f}; eval.select {cfg.select})")
        where = f"{cfg.variant} on {cfg.task}"
        print_summary(result.summary, f"{where}: eval loss on {cfg.eval_tasks} meta-test tasks")
        if any(a == a for a in result.eval_tasks.get("accuracy", [])):  # classification: accuracy too
            print_summary(summarize(result.eval_tasks, "accuracy"),
                          f"{where}: eval accuracy on {cfg.eval_tasks} meta-test tasks", "accuracy")
    console.print(f"results: {out_dir}/{{trials,curves,eval_tasks}}/")
    return result


def errored(result, error: str):
    """The trial's result as `errored` with `error` (its row rebuilt by the dataset's one builder)."""
    from dataclasses import replace

    from metasweep.analysis.rows import from_stored, trial_row

    row = trial_row(**{**from_stored(result.trial_row), "status": "errored", "error": error})
    return replace(result, status="errored", trial_row=row)


@app.command()
def sweep(
    spec: Path = typer.Argument(..., help="spec file (YAML), e.g. sweeps/specs/quickstart.yaml"),
    address: str | None = typer.Option(None, help="Ray cluster address (HOST:PORT or auto); default: "
                                                     "an embedded local Ray"),
    storage: str | None = typer.Option(None, help="overrides the spec's storage: a folder or a pyarrow "
                                                     "filesystem URI such as s3://bucket/prefix"),
    stage: str = typer.Option("all", help="tune | test | all"),
    rank_after: bool = typer.Option(True, "--rank/--no-rank", help="print the ranking table at the end"),
):
    """Run a spec's sweep: the tune stage (Optuna on meta-validation tasks), then the test stage (each
    variant's best configuration retrained on seeds, evaluated on meta-test tasks); or a grid."""
    from .run import sweep as run_sweep

    if stage not in ("tune", "test", "all"):
        fail(f"--stage: must be tune, test or all (got {stage!r})")
    exp_uri = driven(lambda: run_sweep(str(spec), address=address, storage=storage, stage=stage),
                     lambda: resume_command(spec, storage))
    console.print(f"results: {exp_uri}")
    if rank_after and stage != "tune":
        _print_rank(exp_uri)


@app.command()
def check(
    spec: Path = typer.Argument(..., help="spec file (YAML)"),
    storage: str | None = typer.Option(None, help="as for sweep: overrides the spec's storage"),
    stage: str = typer.Option("all", help="tune | test | all"),
    slots: int | None = typer.Option(None, help="trials that run at once (default: this machine's CPUs over a "
                                                "trial's, at most max_concurrent): sets the auto bundle size"),
):
    """Check a spec without running it: every field, data folder and size constraint, as `sweep` checks
    before its first trial (exit 2 naming the field), then what it would run - stages, cells, trials,
    bundles, meta-steps - and where. Starts no Ray, writes nothing."""
    from rich.table import Table

    from .run import check as run_check

    if stage not in ("tune", "test", "all"):
        fail(f"--stage: must be tune, test or all (got {stage!r})")
    if slots is not None and slots < 1:
        fail(f"--slots: must be at least 1 (got {slots})")
    plan = driven(lambda: run_check(str(spec), storage=storage, stage=stage, slots=slots), "")
    table = Table(title=f"{spec}: what `metasweep sweep` would run ({plan['slots']} at once)")
    continues = plan["state"] == "continues"
    columns = ("stage", "cell", "trials", "bundles (members each)", "meta-steps a trial") + (("state",) if continues else ())
    for col in columns:
        table.add_column(col, justify="left" if col in ("stage", "cell", "state") else "right")
    for r in plan["stages"]:
        parts = r["bundles"]
        bundles = " + ".join(map(str, parts)) if max(parts) > 1 else "none (a trial each)"
        table.add_row(r["stage"], r["cell"], str(r["trials"]), bundles, str(r["meta_steps"]),
                      *(("done" if r["done"] else "to run",) if continues else ()))
    out.print(table)
    todo = [r for r in plan["stages"] if not r["done"]]
    trials = sum(r["trials"] for r in todo)
    steps = sum(r["trials"] * r["meta_steps"] for r in todo)
    stages = {r["stage"] for r in plan["stages"]}
    done = len(plan["stages"]) - len(todo)
    out.print(f"{trials} trials, {steps:,} meta-steps {'to run' if done else 'in all'}"
              + (f" ({done} of {len(plan['stages'])} stage cells done)" if done else "")
              + ("; test trials use each cell's tuned configuration" if {"tune", "test"} <= stages else ""))
    if plan["one_tuner"]:
        out.print("tune and test run in one Tuner: each cell's test bundles start when its tune cell has ended")
    where = {"new": "a new experiment", "continues": "continues the experiment there (the same spec)",
             "conflicts": "an experiment there has a different spec: `sweep` would refuse it (rename the "
                          "experiment, or `metasweep resume` the one there)"}[plan["state"]]
    out.print(f"results: {plan['experiment']} ({where})")
    if plan["state"] == "conflicts":
        raise typer.Exit(2)


def resume_command(spec: Path, storage: str | None) -> str:
    """`metasweep resume <where the spec's experiment is>`."""
    from .experiment import experiment_uri
    from .spec import load_spec

    try:
        loaded, _, _ = load_spec(str(spec))
        return f"metasweep resume {experiment_uri(storage or loaded.storage, loaded.experiment)}"
    except Exception:  # the spec changed or went since: the generic form
        return "metasweep resume <experiment path>"


def driven(call, resume_hint) -> str:
    """A sweep or resume as a command: bad input exits 2 (one line); a stage without a result exits 1
    with its summary; an interrupted one 130, with how to continue (`resume_hint`: the command, or a
    function giving it). Rows written are kept in every case."""
    from .run import Interrupted, StageFailed

    try:
        return call()
    except UserError as e:
        fail(str(e))
    except StageFailed as e:
        fail(f"sweep failed: {e}", code=1)
    except (Interrupted, KeyboardInterrupt) as e:
        hint = resume_hint() if callable(resume_hint) else resume_hint
        console.print(f"[bold red]sweep interrupted[/] ({e}); rows written so far are kept. Continue with: "
                      f"{hint}")
        raise SystemExit(130) from None


@app.command()
def resume(
    experiment: str = typer.Argument(..., help="experiment path (STORAGE/EXPERIMENT), a folder or a URI, "
                                               "wherever it is now"),
    address: str | None = typer.Option(None, help="Ray cluster address; default: embedded local Ray"),
    rank_after: bool = typer.Option(True, "--rank/--no-rank"),
):
    """Continue an interrupted sweep: finished stages are skipped, unfinished Tuners restored
    (errored trials restart from their checkpoints), the Optuna study continues; damaged or foreign
    dataset files are set aside (damaged/), saying so."""
    from .run import resume as run_resume

    exp_uri = driven(lambda: run_resume(experiment, address=address), f"metasweep resume {experiment}")
    if rank_after:
        _print_rank(exp_uri)


@app.command()
def status(experiment: str = typer.Argument(..., help="experiment path (STORAGE/EXPERIMENT)")):
    """How far a sweep is: stages done, trials per stage and status."""
    from .status import print_status

    with dataset_errors():
        print_status(experiment, out)


@contextmanager
def dataset_errors():
    """What every command that reads the dataset does with a damaged or foreign file (a StoreError
    naming it), a bad argument or an impossible request: one line `error: ...`, exit 2."""
    try:
        yield
    except (UserError, ValueError) as e:  # StoreError is a ValueError
        fail(str(e))


def _print_rank(exp_uri: str, **kw) -> None:
    from metasweep.analysis.ranking import compute_ranking
    from metasweep.analysis.render import print_ranking

    try:
        print_ranking(compute_ranking(exp_uri, **kw), out)
    except ValueError as e:
        console.print(f"ranking: {e}", markup=False)


def metric_error(metric: str) -> None:
    """Exit 2 naming the metrics (analysis.metrics owns them) unless `metric` is one."""
    from metasweep.analysis.metrics import get_metric

    try:
        get_metric(metric)
    except ValueError as e:
        fail(f"--metric: {e}")


@app.command()
def rank(
    experiment: str = typer.Argument(..., help="experiment path (or a `metasweep train --out` folder)"),
    metric: str = typer.Option("loss", help="loss | accuracy | return (reinforcement learning; higher is better)"),
    stage: str | None = typer.Option(None, help="test | tune | grid | single (default: test if present)"),
    inner_steps: int | None = typer.Option(None, help="evaluation inner steps (default: smallest > 0)"),
    baseline: str | None = typer.Option(None, help="variant the paired tests compare against (default: maml, "
                                                  "where the stage has it)"),
    fmt: str = typer.Option("text", "--format", help="text | markdown | latex | csv"),
):
    """The paper-style table: variants x settings, mean ± 95% CI, best and ties marked, average
    rank, Friedman test, and paired tests against the baseline on shared tasks."""
    from metasweep.analysis.ranking import compute_ranking, require_baseline
    from metasweep.analysis.render import FORMATS, print_ranking, render

    metric_error(metric)
    if fmt not in FORMATS:
        fail(f"--format: must be {', '.join(FORMATS[:-1])} or {FORMATS[-1]} (got {fmt!r})")
    with dataset_errors():
        r = compute_ranking(experiment, metric=metric, stage=stage, inner_steps=inner_steps,
                            baseline=baseline or "maml")
        if baseline is not None:
            require_baseline(r, baseline, experiment)
    if fmt == "text":
        print_ranking(r, out)
    else:
        sys.stdout.write(render(r, fmt))


@app.command()
def report(
    experiment: str = typer.Argument(..., help="experiment path"),
    output: Path | None = typer.Option(None, "-o", "--output", help="write the report to this .md file"),
    metric: str = typer.Option("loss", help="loss | accuracy | return (reinforcement learning; higher is better)"),
    stage: str | None = typer.Option(None, help="test | tune | grid | single (default: test if present)"),
    baseline: str | None = typer.Option(None, help="variant the paired tests compare against (default: maml, "
                                                  "where the stage has it)"),
    command: str | None = typer.Option(None, help="the command that ran the experiment, quoted in the report"),
):
    """The experiment's report (Markdown): trials, wall time and code versions, the ranking with paired
    tests at every evaluated number of inner steps, each seed's value, and the spec as run."""
    from metasweep.analysis.report import experiment_report

    metric_error(metric)
    if output is not None and output.suffix.lower() != ".md":
        fail(f"-o {output}: the report is Markdown; use a .md file name")
    with dataset_errors():
        text = experiment_report(experiment, metric=metric, stage=stage, baseline=baseline, command=command)
    if output is None:
        sys.stdout.write(text)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    console.print(f"wrote {output}")


@app.command()
def plot(
    experiment: str = typer.Argument(..., help="experiment path"),
    kind: str = typer.Option("curves", help="curves | alpha | mask-fraction | ranks | cka"),
    output: Path = typer.Option(..., "-o", "--output", help="PNG file to write"),
    stage: str | None = typer.Option(None, help="stage to plot (default: test if present)"),
    metric: str = typer.Option("loss", help="loss | accuracy | return (reinforcement learning)"),
):
    """Figures: learning curves with bands over seeds, loss vs alpha per variant (MT-net section 6.2),
    fraction of updated weights per layer (MT-net Fig. 4), average ranks."""
    from metasweep.analysis.plots import KINDS, make_plot

    if kind not in KINDS:
        fail(f"--kind: must be one of {', '.join(KINDS)} (got {kind!r})")
    metric_error(metric)
    if output.suffix.lower() != ".png":
        fail(f"-o {output}: the figure is written as PNG; use a .png file name")
    with dataset_errors():
        make_plot(experiment, kind, str(output), stage=stage, metric=metric)
    console.print(f"wrote {output}")


@app.command()
def query(
    experiment: str = typer.Argument(..., help="experiment path"),
    sql: str = typer.Argument(..., help="SQL over the views trials, curves, eval_tasks (duckdb)"),
    output: Path | None = typer.Option(None, "-o", "--output", help="write .csv or .parquet instead of printing"),
):
    """Run SQL (duckdb) over the experiment's three tables, registered as views."""
    from metasweep.analysis.query import run_query

    if output is not None and output.suffix.lower() not in (".csv", ".parquet"):
        fail(f"-o {output}: must end in .csv or .parquet")
    with dataset_errors():
        run_query(experiment, sql, str(output) if output else None, console=out)


@app.command()
def reproduce(
    experiment: str = typer.Argument(..., help="table1 | alpha | polynomial (MT-net sections 6.1-6.3) | "
                                               "polynomial-authors (6.3 at the authors' script settings: alpha "
                                               "1e-3, coefficients c_i / 2^i)"),
    scale: str = typer.Option("smoke", help="smoke (minutes) | full (the paper's budget)"),
    out_dir: Path = typer.Option(..., "--out", help="folder for report.md, figures and the results dataset"),
    address: str | None = typer.Option(None, help="Ray cluster address; default: embedded local Ray"),
    seeds: str | None = typer.Option(None, help="comma-separated seeds (default: 0,1 smoke; 0,1,2 full)"),
):
    """Reproduce an MT-net regression experiment at the paper's settings and write a report with our
    numbers (mean ± 95% CI over tasks and across seeds) beside the paper's."""
    from .reproduce import run as run_reproduction

    try:
        from .single import int_list

        seed_list = int_list(seeds, "--seeds") if seeds else None
        report = run_reproduction(experiment, scale, out_dir, address, seed_list)
    except UserError as e:
        fail(str(e))
    console.print(f"report: {report}")
    out.print(report.read_text(), markup=False, highlight=False)


def registry_help() -> None:
    """Fill the help of options whose allowed values live in the registry (presets, task families) and
    the defaults the config model owns. Only when help is asked for: the registry imports torch."""
    from metasweep.core import registry
    from metasweep.core.hparams import default as hp_default

    from .config import Budget, EvalSpec, RunSpec, TaskSpec, field_default
    from .single import FIELDS

    params = inspect.signature(train).parameters
    params["variant"].default.help = f"preset: {', '.join(registry.preset_names())}"
    params["task"].default.help = (f"task family: {', '.join(registry.family_names())} "
                                   f"(default {field_default(TaskSpec, 'family')})")
    models = {"budget": Budget, "eval": EvalSpec, "task": TaskSpec}
    for option, loc in FIELDS.items():
        if len(loc) == 2 and loc[0] in models:
            params[option].default.help += f" (default {field_default(models[loc[0]], loc[1])})"
        elif loc[0] == "defaults" and len(loc) == 2:
            params[option].default.help += f" (default {hp_default(loc[1])})"
    params["train_shots"].default.help += f" (default {field_default(RunSpec, 'train_shots')[0]})"


def main() -> None:
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        registry_help()
    try:
        app()
    except UserError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
