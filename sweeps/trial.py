"""One trial, Ray-free: build the core objects from a flat config, train, evaluate, and return
the rows of the results dataset. `metasweep train` calls it directly; the Ray trainable wraps it
with reporting and checkpoints."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import socket
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from metasweep.core import HParams, get_variant
from metasweep.core.cells import DenseNet
from metasweep.core.conv import ConvNet
from metasweep.core.evaluate import evaluate, summarize
from metasweep.core.setup import Setup
from metasweep.core.state import TrainState, init_state
from metasweep.core.tasks import IMAGE_FAMILIES, make_family
from metasweep.core.train import train


@dataclass
class TrialConfig:
    """Everything that defines one trial (one row of `trials`)."""

    task: str = "sine"
    task_options: dict = field(default_factory=dict)
    variant: str = "maml"
    variant_overrides: dict = field(default_factory=dict)
    hidden: tuple[int, ...] = (40, 40)
    train_shots: int = 10
    queries: int = 10
    alpha: float = 1e-2
    beta: float = 1e-3
    temperature: float = 1.0
    inner_steps: int = 1
    meta_batch: int = 25
    zeta_init: float = 0.0
    meta_steps: int = 1000
    report_every: int = 100
    val_tasks: int = 100
    val_seed: int = 0
    eval_split: str = "test"
    eval_seed: int = 1
    eval_tasks: int = 600
    eval_shots: tuple[int, ...] = (5, 10, 20)
    eval_steps: tuple[int, ...] = (1, 10)
    mask_eval: str = "sample"
    seed: int = 0
    device: str = "auto"
    engine: str = "auto"  # batched | vmap | loop (core.meta.ENGINES) | auto (core.setup.auto_engine: batched for
    #                       dense nets, the measured fastest for the conv net on the device)
    cuda_graphs: bool = True  # CUDA: meta-gradient replayed from a captured graph (core/graphs.py)
    tf32: bool = False  # CUDA: TF32 convolutions/matmuls (core.setup.Setup.math_mode)
    cka_tasks: int = 0  # image tasks: > 0 computes per-layer CKA before/after the inner loop on that many
    #                     evaluation tasks (the results table `cka`, analysis/cka.py)

    @classmethod
    def from_dict(cls, d: dict) -> TrialConfig:
        known = set(cls.__dataclass_fields__)
        cfg = cls(**{k: v for k, v in d.items() if k in known})
        cfg.hidden = tuple(cfg.hidden)
        cfg.eval_shots = tuple(int(s) for s in cfg.eval_shots)
        cfg.eval_steps = tuple(int(s) for s in cfg.eval_steps)
        return cfg

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"], d["eval_shots"], d["eval_steps"] = list(self.hidden), list(self.eval_shots), list(self.eval_steps)
        return d


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def build_setup(cfg: TrialConfig) -> Setup:
    family = make_family(cfg.task, **{k: (tuple(v) if isinstance(v, list) else v)
                                      for k, v in cfg.task_options.items()})
    variant = get_variant(cfg.variant, **cfg.variant_overrides)
    hp = HParams(alpha=cfg.alpha, beta=cfg.beta, temperature=cfg.temperature, inner_steps=cfg.inner_steps,
                 meta_batch=cfg.meta_batch, mask_eval=cfg.mask_eval, zeta_init=cfg.zeta_init)
    if cfg.task in IMAGE_FAMILIES:
        # image tasks: the authors' conv net (64 filters / stride 2 for Omniglot, 32 filters / max-pool
        # for MiniImagenet); `hidden` does not apply. Options data_root, ways, cache_dir (and Omniglot's
        # splits, split_seed) live in task_options; queries and shots are per class.
        model = ConvNet.for_family(family)
    else:
        model = DenseNet(tuple((*family.input_shape, *cfg.hidden, family.output_dim)))
    return Setup(family, variant, hp, model, cfg.train_shots, cfg.queries,
                 device=resolve_device(cfg.device), engine=cfg.engine, cuda_graphs=cfg.cuda_graphs, tf32=cfg.tf32)


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("metasweep")
    except Exception:
        return "unknown"


def git_sha() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _errored(cfg, error, trial_id, experiment, stage, attempt, spec_hash, started) -> TrialResult:
    row = {"experiment": experiment, "stage": stage, "trial_id": trial_id, "attempt": attempt,
           "variant": cfg.variant, "task_family": cfg.task, "train_shots": cfg.train_shots, "seed": cfg.seed,
           "alpha": cfg.alpha, "beta": cfg.beta, "config": json.dumps(cfg.to_dict(), sort_keys=True, default=str),
           "status": "errored", "error": error, "meta_steps": 0, "node": socket.gethostname(),
           "package_version": package_version(), "git_sha": git_sha(), "spec_hash": spec_hash,
           "started_at": started, "ended_at": now()}
    return TrialResult("errored", row, curve_columns([]), {}, [])


@dataclass
class TrialResult:
    status: str
    trial_row: dict
    curves: dict
    eval_tasks: dict
    summary: list[dict]
    cka: dict = field(default_factory=dict)  # rows of the optional `cka` table


def curve_columns(rows: list[dict]) -> dict:
    names = ["meta_step", "wall_seconds", "meta_train_loss", "val_loss", "val_accuracy", "mask_fraction",
             "mask_fraction_per_cell", "alpha_mean"]
    return {n: [r.get(n) for r in rows] for n in names}


def run_trial(cfg: TrialConfig, *, trial_id: str, experiment: str = "train", stage: str = "single",
              attempt: int = 0, spec_hash: str = "", state: TrainState | None = None,
              on_report: Callable[[TrainState, dict], bool | None] | None = None) -> TrialResult:
    """Train (from `state` if given, so that a resumed trial continues exactly), evaluate on the
    fixed evaluation tasks, and assemble the dataset rows. A NaN/inf loss is status "diverged"; an
    exception inside training is status "errored" with its message - both are results."""
    started = now()
    t0 = time.perf_counter()
    error = ""
    try:
        setup = build_setup(cfg)
    except Exception as e:  # a configuration the core refuses: an errored result with its reason
        return _errored(cfg, f"{type(e).__name__}: {e}", trial_id, experiment, stage, attempt, spec_hash, started)
    torch.manual_seed(cfg.seed)
    if state is None:
        state = init_state(setup, cfg.seed)
    try:
        status = train(setup, state, cfg.meta_steps, report_every=cfg.report_every, val_tasks=cfg.val_tasks,
                       val_seed=cfg.val_seed, on_report=on_report)
    except Exception as e:  # a result to record, not a crash of the sweep
        status, error = "errored", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
    eval_cols: dict = {}
    summary: list[dict] = []
    if status in ("completed", "stopped_early"):
        eval_cols = evaluate(setup, state.params, split=cfg.eval_split, eval_seed=cfg.eval_seed,
                             n_tasks=cfg.eval_tasks, shots=cfg.eval_shots, steps=cfg.eval_steps,
                             mask_eval=cfg.mask_eval)
        # Training finished; a non-finite evaluation loss (e.g. many inner steps with a large alpha)
        # is an evaluation result, kept as is in its row and flagged by the ranking.
        eval_cols["split"] = [cfg.eval_split] * len(eval_cols["loss"])
        eval_cols["eval_seed"] = [cfg.eval_seed] * len(eval_cols["loss"])
        eval_cols["mask_eval"] = [cfg.mask_eval if setup.variant.masked else None] * len(eval_cols["loss"])
        summary = summarize(eval_cols)
    cka_cols: dict = {}
    if status in ("completed", "stopped_early") and cfg.cka_tasks > 0:
        from metasweep.analysis.cka import cka_before_after

        cka_cols = cka_before_after(setup, state.params, split=cfg.eval_split, eval_seed=cfg.eval_seed,
                                    n_tasks=cfg.cka_tasks)
        n = len(cka_cols["cka"])
        cka_cols.update(split=[cfg.eval_split] * n, eval_seed=[cfg.eval_seed] * n,
                        shots=[cfg.train_shots] * n)
    final_val = state.curves[-1]["val_loss"] if state.curves else float("nan")
    trial_row = {
        "experiment": experiment, "stage": stage, "trial_id": trial_id, "attempt": attempt,
        "variant": cfg.variant, "variant_switches": json.dumps(setup.variant.as_dict(), sort_keys=True),
        "task_family": cfg.task, "task_options": json.dumps(cfg.task_options, sort_keys=True),
        "train_shots": cfg.train_shots, "seed": cfg.seed, "alpha": cfg.alpha, "beta": cfg.beta,
        "temperature": cfg.temperature if setup.variant.masked else None,
        "inner_steps": cfg.inner_steps, "meta_batch": cfg.meta_batch,
        "mask_eval": cfg.mask_eval if setup.variant.masked else None,
        "config": json.dumps(cfg.to_dict(), sort_keys=True), "status": status, "error": error,
        "meta_steps": state.step, "wall_seconds": state.extra.get("wall_seconds", time.perf_counter() - t0),
        "final_val_loss": final_val if final_val is not None and math.isfinite(final_val) else None,
        "node": socket.gethostname(), "device": setup.device, "package_version": package_version(),
        "git_sha": git_sha(), "spec_hash": spec_hash, "started_at": started, "ended_at": now(),
    }
    return TrialResult(status, trial_row, curve_columns(state.curves), eval_cols, summary, cka_cols)
