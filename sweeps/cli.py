"""The `metasweep` command line: train, sweep, resume, status, rank, plot, query."""

from __future__ import annotations

import math
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


def int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UserError(f"{option}: expected comma-separated integers like 5,10,20 (got {text!r})") from None
    if not values or any(v < 0 for v in values):
        raise UserError(f"{option}: expected non-negative integers like 5,10,20 (got {text!r})")
    return values


def print_summary(summary: list[dict], title: str, metric: str = "loss") -> None:
    table = Table(title=title)
    for col in ("shots", "inner steps", "tasks", f"{metric} (mean ± 95% CI)"):
        table.add_column(col, justify="right")
    for r in summary:
        table.add_row(str(r["shots"]), str(r["inner_steps"]), str(r["n"]), f"{r['mean']:.3f} ± {r['ci95']:.3f}")
    out.print(table)


@app.command()
def train(
    task: str = typer.Option("sine", help="task family: sine | polynomial | omniglot | miniimagenet"),
    variant: str = typer.Option("maml", help="preset: maml, fomaml, reptile, meta-sgd, anil, t-net, m-net, "
                                             "m-net-full, mt-net, mt-net-full"),
    train_shots: int = typer.Option(10, help="support points per task during meta-training (K)"),
    queries: int = typer.Option(10, help="query points per task"),
    order: int | None = typer.Option(None, help="polynomial order (task polynomial)"),
    data_root: Path | None = typer.Option(None, help="image tasks: the dataset folder (see docs/IMAGES.md)"),
    ways: int = typer.Option(5, help="image tasks: classes per task (N-way); shots and queries are per class"),
    splits: str | None = typer.Option(None, help="omniglot: characters in train,val,test (default 1100,100,423)"),
    cka_tasks: int = typer.Option(0, help="image tasks: per-layer CKA before/after the inner loop on N test "
                                          "tasks (table cka; plot --kind cka)"),
    cache_dir: Path | None = typer.Option(None, help="image tasks: where decoded images are cached "
                                                      "(default $METASWEEP_CACHE_DIR or ~/.cache/metasweep/images)"),
    meta_batch: int = typer.Option(25, help="tasks per outer step"),
    meta_steps: int = typer.Option(1000, help="outer steps (meta-iterations)"),
    inner_steps: int = typer.Option(1, help="inner gradient steps during meta-training"),
    alpha: float = typer.Option(1e-2, help="inner step size α"),
    beta: float = typer.Option(1e-3, help="outer (Adam) step size β"),
    temperature: float = typer.Option(1.0, help="Gumbel-Softmax temperature c (masked variants)"),
    mask_eval: str = typer.Option("sample", help="masks at evaluation: sample | threshold"),
    seed: int = typer.Option(0, help="seeds init, task sampling and mask noise"),
    eval_shots: str | None = typer.Option(None, help="shot counts to evaluate at (default 5,10,20; image "
                                                      "tasks: the training shots)"),
    eval_steps: str = typer.Option("1,10", help="inner steps to evaluate at (0 = unadapted)"),
    eval_tasks: int = typer.Option(600, help="number of fixed meta-test tasks"),
    eval_seed: int = typer.Option(1, help="seed that fixes the evaluation tasks"),
    report_every: int = typer.Option(100, help="validation + curve row every K meta-steps"),
    val_tasks: int = typer.Option(100, help="meta-validation tasks per report"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    cuda_graphs: bool = typer.Option(True, help="CUDA: replay each meta-gradient from a captured CUDA graph "
                                     "(same math, fewer kernel launches)"),
    tf32: bool = typer.Option(False, help="CUDA: allow TF32 convolutions/matmuls (off: full float32 precision)"),
    out_dir: Path = typer.Option(Path("runs/train"), "--out", help="folder for the trial's Parquet files"),
):
    """Meta-train one variant (no Ray), print the evaluation table and write the Parquet rows."""
    from metasweep.analysis.store import write_trial
    from metasweep.core import RegistryError, VariantError

    from .trial import TrialConfig, run_trial

    try:
        if task not in ("sine", "polynomial", "omniglot", "miniimagenet"):
            raise UserError(f"--task: must be sine, polynomial, omniglot or miniimagenet (got {task!r})")
        image = task in ("omniglot", "miniimagenet")
        for name, value in (("--train-shots", train_shots), ("--queries", queries), ("--meta-batch", meta_batch),
                            ("--meta-steps", meta_steps), ("--inner-steps", inner_steps),
                            ("--eval-tasks", eval_tasks), ("--report-every", report_every),
                            ("--val-tasks", val_tasks)):
            if value < 1:
                raise UserError(f"{name}: must be >= 1 (got {value})")
        for name, value in (("--alpha", alpha), ("--beta", beta), ("--temperature", temperature)):
            if not (value > 0 and math.isfinite(value)):
                raise UserError(f"{name}: must be a positive number (got {value})")
        if mask_eval not in ("sample", "threshold"):
            raise UserError(f"--mask-eval: must be sample or threshold (got {mask_eval!r})")
        if device not in ("auto", "cpu") and not device.startswith("cuda"):
            raise UserError(f"--device: must be auto, cpu, cuda or cuda:N (got {device!r})")
        task_options = {}
        if order is not None:
            if task != "polynomial":
                raise UserError("--order: only applies to --task polynomial")
            if order < 0:
                raise UserError(f"--order: must be >= 0 (got {order})")
            task_options["order"] = order
        if not image and (data_root is not None or cache_dir is not None or splits is not None or cka_tasks):
            raise UserError("--data-root / --cache-dir / --splits / --cka-tasks: only apply to --task omniglot or "
                            "miniimagenet")
        if image:
            if data_root is None:
                raise UserError(f"--data-root: required for --task {task} (the dataset folder; nothing is downloaded)")
            if ways < 2:
                raise UserError(f"--ways: must be >= 2 (got {ways})")
            task_options.update(data_root=str(data_root), ways=ways)
            if cka_tasks < 0:
                raise UserError(f"--cka-tasks: must be >= 0 (got {cka_tasks})")
            if splits is not None:
                if task != "omniglot":
                    raise UserError("--splits: only applies to --task omniglot")
                sizes = int_list(splits, "--splits")
                if len(sizes) != 3 or min(sizes) < 1:
                    raise UserError(f"--splits: expected three integers >= 1: train,val,test (got {splits!r})")
                task_options["splits"] = list(sizes)
            if cache_dir is not None:
                task_options["cache_dir"] = str(cache_dir)
        if eval_shots is None:
            eval_shots = str(train_shots) if image else "5,10,20"
        cfg = TrialConfig(task=task, task_options=task_options, variant=variant, train_shots=train_shots,
                          queries=queries, alpha=alpha, beta=beta, temperature=temperature,
                          inner_steps=inner_steps, meta_batch=meta_batch, meta_steps=meta_steps,
                          report_every=min(report_every, meta_steps), val_tasks=val_tasks, eval_tasks=eval_tasks,
                          eval_seed=eval_seed, eval_shots=int_list(eval_shots, "--eval-shots"),
                          eval_steps=int_list(eval_steps, "--eval-steps"), mask_eval=mask_eval, seed=seed,
                          device=device, cka_tasks=cka_tasks, cuda_graphs=cuda_graphs, tf32=tf32)
        if min(cfg.eval_shots) < 1:
            raise UserError(f"--eval-shots: shot counts must be >= 1 (got {eval_shots!r})")
        from metasweep.core.registry import make_learner

        make_learner(variant)
        if image:
            from metasweep.core.tasks import DataError, make_family

            try:
                make_family(task, **task_options).check()  # decodes (once, cached) and checks all splits
            except (DataError, ValueError) as e:
                raise UserError(str(e)) from None
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise UserError(f"--device {device}: CUDA is not available on this machine")
    except (VariantError, RegistryError) as e:
        fail(f"--variant: {e}")
    except UserError as e:
        fail(str(e))

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task(f"{variant} meta-training", total=meta_steps, info="")

        def on_report(state, row):
            progress.update(bar, completed=state.step,
                            info=f"train {row['meta_train_loss']:.3f}  val {row['val_loss']:.3f}")

        result = run_trial(cfg, trial_id=f"{variant}-seed{seed}", experiment=out_dir.name, stage="single",
                           on_report=on_report)
    write_trial(str(out_dir), result.trial_row, result.curves, result.eval_tasks, extra={"cka": result.cka})
    console.print(f"status: [bold]{result.status}[/]  meta-steps: {result.trial_row['meta_steps']}  "
                  f"wall: {result.trial_row['wall_seconds']:.1f}s  device: {result.trial_row['device']}")
    if result.status == "errored":
        console.print(result.trial_row["error"])
    if result.summary:
        print_summary(result.summary, f"{variant} on {task}: eval loss on {eval_tasks} meta-test tasks")
        if image:
            from metasweep.analysis.summary import summarize

            print_summary(summarize(result.eval_tasks, "accuracy"),
                          f"{variant} on {task}: eval accuracy on {eval_tasks} meta-test tasks ({ways}-way)",
                          "accuracy")
    console.print(f"results: {out_dir}/{{trials,curves,eval_tasks}}/")


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
    from .run import Interrupted
    from .run import sweep as run_sweep

    if stage not in ("tune", "test", "all"):
        fail(f"--stage: must be tune, test or all (got {stage!r})")
    try:
        exp_uri = run_sweep(str(spec), address=address, storage=storage, stage=stage)
    except UserError as e:
        fail(str(e))
    except (Interrupted, KeyboardInterrupt) as e:
        console.print(f"[bold red]sweep interrupted[/] ({e}); rows written so far are kept. Continue with: "
                      f"metasweep resume <experiment path>")
        raise SystemExit(130) from None
    console.print(f"results: {exp_uri}")
    if rank_after and stage != "tune":
        _print_rank(exp_uri)


@app.command()
def resume(
    experiment: str = typer.Argument(..., help="experiment path (STORAGE/EXPERIMENT)"),
    address: str | None = typer.Option(None, help="Ray cluster address; default: embedded local Ray"),
    rank_after: bool = typer.Option(True, "--rank/--no-rank"),
):
    """Continue an interrupted sweep: finished stages are skipped, unfinished Tuners restored
    (errored trials restart from their checkpoints), the Optuna study continues."""
    from .run import Interrupted
    from .run import resume as run_resume

    try:
        exp_uri = run_resume(experiment, address=address)
    except UserError as e:
        fail(str(e))
    except (Interrupted, KeyboardInterrupt) as e:
        console.print(f"[bold red]sweep interrupted[/] ({e}); continue with: metasweep resume {experiment}")
        raise SystemExit(130) from None
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


@app.command()
def rank(
    experiment: str = typer.Argument(..., help="experiment path (or a `metasweep train --out` folder)"),
    metric: str = typer.Option("loss", help="loss | accuracy"),
    stage: str | None = typer.Option(None, help="test | tune | grid | single (default: test if present)"),
    inner_steps: int | None = typer.Option(None, help="evaluation inner steps (default: smallest > 0)"),
    baseline: str = typer.Option("maml", help="variant the paired tests compare against"),
    fmt: str = typer.Option("text", "--format", help="text | markdown | latex | csv"),
):
    """The paper-style table: variants x settings, mean ± 95% CI, best and ties marked, average
    rank, Friedman test, and paired tests against the baseline on shared tasks."""
    from metasweep.analysis.ranking import compute_ranking
    from metasweep.analysis.render import FORMATS, print_ranking, render

    if metric not in ("loss", "accuracy"):
        fail(f"--metric: must be loss or accuracy (got {metric!r})")
    if fmt not in FORMATS:
        fail(f"--format: must be {', '.join(FORMATS[:-1])} or {FORMATS[-1]} (got {fmt!r})")
    with dataset_errors():
        r = compute_ranking(experiment, metric=metric, stage=stage, inner_steps=inner_steps, baseline=baseline)
    if fmt == "text":
        print_ranking(r, out)
    else:
        sys.stdout.write(render(r, fmt))


@app.command()
def plot(
    experiment: str = typer.Argument(..., help="experiment path"),
    kind: str = typer.Option("curves", help="curves | alpha | mask-fraction | ranks | cka"),
    output: Path = typer.Option(..., "-o", "--output", help="PNG file to write"),
    stage: str | None = typer.Option(None, help="stage to plot (default: test if present)"),
    metric: str = typer.Option("loss", help="loss | accuracy"),
):
    """Figures: learning curves with bands over seeds, loss vs alpha per variant (MT-net section 6.2),
    fraction of updated weights per layer (MT-net Fig. 4), average ranks."""
    from metasweep.analysis.plots import KINDS, make_plot

    if kind not in KINDS:
        fail(f"--kind: must be one of {', '.join(KINDS)} (got {kind!r})")
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
    experiment: str = typer.Argument(..., help="table1 | alpha | polynomial (MT-net sections 6.1-6.3)"),
    scale: str = typer.Option("smoke", help="smoke (minutes) | full (the paper's budget)"),
    out_dir: Path = typer.Option(..., "--out", help="folder for report.md, figures and the results dataset"),
    address: str | None = typer.Option(None, help="Ray cluster address; default: embedded local Ray"),
    seeds: str | None = typer.Option(None, help="comma-separated seeds (default: 0,1 smoke; 0,1,2 full)"),
):
    """Reproduce an MT-net regression experiment at the paper's settings and write a report with our
    numbers (mean ± 95% CI over tasks and across seeds) beside the paper's."""
    from .reproduce import run as run_reproduction

    try:
        seed_list = list(int_list(seeds, "--seeds")) if seeds else None
        report = run_reproduction(experiment, scale, out_dir, address, seed_list)
    except UserError as e:
        fail(str(e))
    console.print(f"report: {report}")
    out.print(report.read_text(), markup=False, highlight=False)


def main() -> None:
    try:
        app()
    except UserError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
