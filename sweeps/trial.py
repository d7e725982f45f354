"""One trial, Ray-free: build the core objects from a flat config, train, evaluate, and return
the rows of the results dataset. `metasweep train` calls it directly; the Ray trainable wraps it
with reporting and checkpoints."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from metasweep.analysis.rows import git_sha, now, package_version  # noqa: F401 (re-exported)
from metasweep.analysis.rows import trial_row as build_row
from metasweep.analysis.summary import summarize
from metasweep.core import HParams
from metasweep.core.evaluate import evaluate
from metasweep.core.hparams import COMMON
from metasweep.core.hparams import default as default_hparam
from metasweep.core.registry import load_plugins, make_family, make_learner
from metasweep.core.setup import Setup, check_sizes
from metasweep.core.state import TrainState, init_state
from metasweep.core.train import selected, train

from .config import Budget, EvalSpec, ModelSpec, RunSpec, TaskSpec, field_default

_B, _E = Budget(), EvalSpec()  # the config model owns the defaults of a run; TrialConfig agrees with it


@dataclass
class TrialConfig:
    """Everything that defines one trial (one row of `trials`). Built from the config model
    (`sweeps.plan.trial_config`); its defaults are the config's and the hyper-parameters' declared ones."""

    task: str = field_default(TaskSpec, "family")
    task_options: dict = field(default_factory=dict)
    variant: str = "maml"
    variant_overrides: dict = field(default_factory=dict)
    hidden: tuple[int, ...] = tuple(field_default(ModelSpec, "hidden"))
    train_shots: int = field_default(RunSpec, "train_shots")[0]
    train_shots_range: tuple[int, int] | None = None  # meta-train on K ~ U{lo..hi} (core.setup.draw_train_shots)
    queries: int = field_default(TaskSpec, "queries")
    alpha: float = default_hparam("alpha")
    beta: float = default_hparam("beta")
    temperature: float = default_hparam("temperature")
    inner_steps: int = default_hparam("inner_steps")
    meta_batch: int = default_hparam("meta_batch")
    zeta_init: float = default_hparam("zeta_init")
    meta_steps: int = _B.meta_steps
    report_every: int = _B.report_every
    val_tasks: int = _E.val_tasks
    val_seed: int = _E.val_seed
    eval_split: str = "test"
    eval_seed: int = _E.seed
    eval_tasks: int = _E.tasks
    eval_shots: tuple[int, ...] = tuple(_E.shots)
    eval_steps: tuple[int, ...] = tuple(_E.inner_steps)
    mask_eval: str = default_hparam("mask_eval")
    seed: int = 0
    device: str = "auto"
    engine: str = "auto"  # batched | vmap | loop (core.meta.ENGINES) | auto (core.setup.auto_engine: batched for
    #                       dense nets, the measured fastest for the conv net on the device)
    cuda_graphs: bool = True  # CUDA: meta-gradient replayed from a captured graph (core/graphs.py)
    tf32: bool = False  # CUDA: TF32 convolutions/matmuls (core.setup.Setup.math_mode)
    select: str = _E.select  # which iterate is evaluated (core.train.SELECTIONS)
    cka_tasks: int = _E.cka_tasks  # image tasks: > 0 computes per-layer CKA before/after the inner loop on that many
    #                     evaluation tasks (the results table `cka`, core/similarity.py); learners without an
    #                     inner loop of parameters skip it
    extra_hparams: dict = field(default_factory=dict)  # a learner family's own hyper-parameters, by name
    plugins: tuple[str, ...] = ()  # modules that register learners / task families (core.registry.load_plugins)
    hp_source: str = "given"  # where alpha, beta, ... came from: tuned | fallback | defaults | grid | given
    hp_source_trial: str | None = None  # the tune trial a tuned configuration came from

    @classmethod
    def from_dict(cls, d: dict) -> TrialConfig:
        known = set(cls.__dataclass_fields__)
        cfg = cls(**{k: v for k, v in d.items() if k in known})
        cfg.hidden = tuple(cfg.hidden)
        cfg.plugins = tuple(cfg.plugins)
        cfg.eval_shots = tuple(int(s) for s in cfg.eval_shots)
        cfg.eval_steps = tuple(int(s) for s in cfg.eval_steps)
        if cfg.train_shots_range is not None:
            cfg.train_shots_range = tuple(int(k) for k in cfg.train_shots_range)
        return cfg

    def set_hparam(self, name: str, value) -> None:
        """Set a hyper-parameter by name: a common one is a field, a learner's own goes to extra_hparams."""
        if name in COMMON:
            setattr(self, name, value)
        else:
            self.extra_hparams = {**self.extra_hparams, name: value}

    def hparam(self, name: str):
        return getattr(self, name) if name in COMMON else self.extra_hparams.get(name, default_hparam(name))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"], d["eval_shots"], d["eval_steps"] = list(self.hidden), list(self.eval_shots), list(self.eval_steps)
        d["plugins"] = list(self.plugins)
        if self.train_shots_range is not None:
            d["train_shots_range"] = list(self.train_shots_range)
        return d


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def build_setup(cfg: TrialConfig) -> Setup:
    """The core objects of a trial: the task family and the learner from the registry (by name),
    the learner's model for the family, the hyper-parameters. ValueError (a RegistryError,
    VariantError or the family's own) naming what is wrong."""
    load_plugins(cfg.plugins)
    family = make_family(cfg.task, **cfg.task_options)
    learner = make_learner(cfg.variant, **cfg.variant_overrides)
    hp = HParams(alpha=cfg.alpha, beta=cfg.beta, temperature=cfg.temperature, inner_steps=cfg.inner_steps,
                 meta_batch=cfg.meta_batch, mask_eval=cfg.mask_eval, zeta_init=cfg.zeta_init, extra=cfg.extra_hparams)
    # image tasks: the authors' conv net (64 filters / stride 2 for Omniglot, 32 filters / max-pool for
    # MiniImagenet), `hidden` does not apply; options data_root, ways, cache_dir (and Omniglot's splits,
    # split_seed) live in task_options; queries and shots are per class
    model = learner.make_model(family, tuple(cfg.hidden))
    return Setup(family, learner, hp, model, cfg.train_shots, cfg.queries, train_shots_range=cfg.train_shots_range,
                 device=resolve_device(cfg.device), engine=cfg.engine, cuda_graphs=cfg.cuda_graphs, tf32=cfg.tf32)


def check_trial(cfg: TrialConfig, setup: Setup) -> None:
    """Every size constraint of the data and the learner, before any training (ValueError)."""
    check_sizes(setup, eval_split=cfg.eval_split, eval_shots=cfg.eval_shots, val=cfg.val_tasks > 0)


@dataclass
class TrialResult:
    status: str
    trial_row: dict
    curves: dict
    eval_tasks: dict
    summary: list[dict]
    cka: dict = field(default_factory=dict)  # rows of the optional `cka` table


CURVE_COLUMNS = ("meta_step", "wall_seconds", "meta_train_loss", "val_loss", "val_accuracy", "mask_fraction",
                 "mask_fraction_per_cell", "alpha_mean")


def curve_columns(rows: list[dict]) -> dict:
    return {n: [r.get(n) for r in rows] for n in CURVE_COLUMNS}


def failure(phase: str, e: Exception) -> str:
    """The message of a trial's crash, for its row: the phase, the exception, the innermost frames."""
    return f"{phase}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=-4)}"


def run_trial(cfg: TrialConfig, *, trial_id: str, experiment: str = "train", stage: str = "single",
              attempt: int = 0, spec_hash: str = "", state: TrainState | None = None,
              on_report: Callable[[TrainState, dict], None] | None = None) -> TrialResult:
    """Build and check the trial (every size constraint before any training), train (from `state`
    if given, so that a resumed trial continues exactly), evaluate on the fixed evaluation tasks, and
    assemble the dataset rows. A NaN/inf loss is status "diverged"; an exception in any phase
    (configuration, training, evaluation, CKA) is status "errored" with the phase and message in the
    row - both are results, and the rows written so far are kept."""
    started, t0 = now(), time.perf_counter()
    ident = dict(experiment=experiment, stage=stage, trial_id=trial_id, attempt=attempt, spec_hash=spec_hash,
                 started=started)
    setup = None
    try:
        setup = build_setup(cfg)
        check_trial(cfg, setup)
    except Exception as e:  # a configuration the core refuses: an errored result with its reason
        row = trial_row(cfg, **ident, status="errored", error=f"configuration: {type(e).__name__}: {e}",
                        meta_steps=0, wall_seconds=time.perf_counter() - t0, device=resolve_device(cfg.device))
        return TrialResult("errored", row, curve_columns([]), {}, [])
    torch.manual_seed(cfg.seed)
    state = state or init_state(setup, cfg.seed)
    error, eval_cols, cka_cols, phase = "", {}, {}, "training"
    try:
        status = train(setup, state, cfg.meta_steps, report_every=cfg.report_every, val_tasks=cfg.val_tasks,
                       val_seed=cfg.val_seed, select=cfg.select, on_report=on_report)
        phase = "evaluation"
        if status == "completed":
            eval_cols = _evaluation(cfg, setup, state)
            phase = "CKA"
            if cfg.cka_tasks > 0 and hasattr(setup.learner, "trajectory"):  # learners that adapt parameters
                cka_cols = _cka(cfg, setup, state)
    except Exception as e:  # a result to record, not a crash of the sweep
        status, error = "errored", failure(phase, e)
    row = trial_row(cfg, **ident, setup=setup, status=status, error=error or None, meta_steps=state.step,
                    wall_seconds=state.extra.get("wall_seconds", time.perf_counter() - t0),
                    **evaluated(cfg, state, bool(eval_cols)))
    summary = summarize(eval_cols) if eval_cols else []
    return TrialResult(status, row, curve_columns(state.curves), eval_cols, summary, cka_cols)


def evaluated(cfg: TrialConfig, state: TrainState, has_eval: bool) -> dict:
    """The row's final_val_loss and selected_step: the validation loss of the iterate `cfg.select`
    chose (core.train.selected) and its meta-step (None when nothing was evaluated); the last
    report's validation loss for a trial that did not finish."""
    _, step = selected(state, cfg.select)
    rows = [r for r in state.curves if r["meta_step"] == step] if has_eval else state.curves[-1:]
    return {"final_val_loss": rows[-1]["val_loss"] if rows else None, "selected_step": step if has_eval else None}


def _evaluation(cfg: TrialConfig, setup: Setup, state: TrainState) -> dict:
    """The eval_tasks rows, of the iterate `cfg.select` chose. A non-finite evaluation loss (e.g. many
    inner steps with a large alpha) is an evaluation result, kept as is in its row and flagged by the
    ranking."""
    cols = evaluate(setup, selected(state, cfg.select)[0], split=cfg.eval_split, eval_seed=cfg.eval_seed, n_tasks=cfg.eval_tasks,
                    shots=cfg.eval_shots, steps=cfg.eval_steps, mask_eval=cfg.mask_eval)
    n = len(cols["loss"])
    masked = "mask_eval" in setup.learner.reads()
    return {**cols, "split": [cfg.eval_split] * n, "eval_seed": [cfg.eval_seed] * n,
            "mask_eval": [cfg.mask_eval if masked else None] * n}


def _cka(cfg: TrialConfig, setup: Setup, state: TrainState) -> dict:
    from metasweep.core.similarity import cka_before_after

    cols = cka_before_after(setup, selected(state, cfg.select)[0], split=cfg.eval_split, eval_seed=cfg.eval_seed,
                            n_tasks=cfg.cka_tasks)
    n = len(cols["cka"])
    return {**cols, "split": [cfg.eval_split] * n, "eval_seed": [cfg.eval_seed] * n, "shots": [cfg.train_shots] * n}


def learner_facts(cfg: TrialConfig, setup: Setup | None = None) -> tuple[str, bool, dict, dict | None]:
    """(learner_kind, inner_loop, {name: value} of the hyper-parameters the learner reads, its switches)
    of a trial, from its learner (the setup's, else the registry's). A learner the registry refuses
    (the trial errors on it) is recorded as a gradient learner given alpha, beta, inner steps and
    meta-batch."""
    learner = setup.learner if setup is not None else None
    if learner is None:
        try:
            load_plugins(cfg.plugins)
            learner = make_learner(cfg.variant, **cfg.variant_overrides)
        except (ValueError, ImportError):
            return "gradient", True, {k: cfg.hparam(k) for k in ("alpha", "beta", "inner_steps", "meta_batch")}, None
    return learner.kind, learner.inner_loop, {k: cfg.hparam(k) for k in learner.reads()}, learner.switches()


def trial_row(cfg: TrialConfig, *, experiment: str, stage: str, trial_id: str, attempt: int, spec_hash: str,
              started, status: str, variant: str | None = None, setup: Setup | None = None, node: str | None = None,
              **measured) -> dict:
    """The trials row of one attempt of this trial, for every status, through the dataset's one
    builder (analysis.rows.trial_row): the running rows and the final row differ only in what was
    `measured` (meta_steps, wall_seconds, final_val_loss, error, device, ended_at). `variant`: the
    spec's name (default the preset)."""
    kind, inner_loop, hparams, switches = learner_facts(cfg, setup)
    if setup is not None:
        measured.setdefault("device", setup.device)
    return build_row(
        experiment=experiment, stage=stage, trial_id=trial_id, attempt=attempt, variant=variant or cfg.variant,
        status=status, task_family=cfg.task, task_options=cfg.task_options, train_shots=cfg.train_shots,
        seed=cfg.seed, learner_kind=kind, inner_loop=inner_loop, hparams=hparams, hp_source=cfg.hp_source,
        hp_source_trial=cfg.hp_source_trial, variant_switches=switches, config=cfg.to_dict(), node=node,
        spec_hash=spec_hash, started_at=started, **measured)
