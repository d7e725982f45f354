"""The meta-training loop: outer steps, periodic validation and curve rows, divergence detection.

The caller owns side effects: it gets a report every `report_every` steps (to print, to hand to
Ray Tune, to checkpoint) and decides whether to stop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from .evaluate import evaluate
from .meta import outer_step
from .setup import Setup
from .state import TrainState


def mask_fractions(setup: Setup, params) -> tuple[float | None, list[float] | None]:
    """Expected fraction of weights the task learner updates: mean of P(m = 1) = sigmoid(zeta)
    over all zeta (overall, and per cell) - the quantity of MT-net Fig. 4."""
    if not setup.variant.masked:
        return None, None
    per_cell, all_probs = [], []
    for c in setup.model.cell_names():
        probs = [torch.sigmoid(v.detach()).flatten() for k, v in params.items()
                 if k.startswith(f"{c}.zeta")]
        if probs:
            p = torch.cat(probs)
            per_cell.append(float(p.mean()))
            all_probs.append(p)
    return float(torch.cat(all_probs).mean()), per_cell


def alpha_mean(params) -> float | None:
    alphas = [v.detach().flatten() for k, v in params.items() if k.startswith("alpha.")]
    return float(torch.cat(alphas).mean()) if alphas else None


def validation_loss(setup: Setup, params, val_tasks: int, eval_seed: int) -> tuple[float, float | None]:
    cols = evaluate(setup, params, split="val", eval_seed=eval_seed, n_tasks=val_tasks,
                    shots=(setup.train_shots,), steps=(setup.hp.inner_steps,), chunk=val_tasks)
    acc = cols["accuracy"]
    return float(cols["loss"].mean()), (None if np.isnan(acc).all() else float(acc.mean()))


def params_finite(params) -> bool:
    return bool(torch.stack([torch.isfinite(p).all() for p in params.values()]).all())


def train(setup: Setup, state: TrainState, meta_steps: int, *, report_every: int = 100,
          val_tasks: int = 100, val_seed: int = 0,
          on_report: Callable[[TrainState, dict], bool | None] | None = None) -> str:
    """Run until `meta_steps` outer steps are done. Returns "completed", "diverged" (a NaN/inf loss:
    a result, not a crash) or "stopped_early" (on_report returned True). Curve rows accumulate in
    `state.curves` so that they survive a checkpoint/resume.

    On CUDA each step's loss is read one step late: reading it waits for the GPU, and meanwhile the
    CPU has already sampled and queued the next meta-batch (on an H100 sampling Omniglot episodes
    was ~20 % of a step when done in series). The values, the rows and their steps are the same."""
    wall0 = time.perf_counter() - state.extra.get("wall_seconds", 0.0)
    window: list[float] = []
    lag = 1 if str(setup.device).startswith("cuda") else 0
    pending: list[tuple[int, torch.Tensor]] = []  # (meta-step, its loss not read yet)
    while state.step < meta_steps:
        loss = outer_step(setup, state)
        pending.append((state.step, loss))
        report = state.step % report_every == 0 or state.step == meta_steps
        while len(pending) > (0 if report else lag):
            step, loss = pending.pop(0)
            window.append(float(loss))
            if not math.isfinite(window[-1]):
                state.curves.append(curve_row(setup, state, step, window, wall0))
                return "diverged"
        if report:
            # a non-finite parameter makes the next loss non-finite; between reports that check is enough
            if not params_finite(state.params):
                state.curves.append(curve_row(setup, state, state.step, window, wall0))
                return "diverged"
            val_loss, val_acc = validation_loss(setup, state.params, val_tasks, val_seed)
            row = curve_row(setup, state, state.step, window, wall0, val_loss, val_acc)
            window = []
            state.curves.append(row)
            if not math.isfinite(val_loss):
                return "diverged"
            if on_report is not None and on_report(state, row):
                return "stopped_early"
    return "completed"


def curve_row(setup: Setup, state: TrainState, step: int, window: list[float], wall0: float,
              val_loss: float = float("nan"), val_acc: float | None = None) -> dict:
    frac, per_cell = mask_fractions(setup, state.params)
    state.extra["wall_seconds"] = time.perf_counter() - wall0
    return {
        "meta_step": step,
        "wall_seconds": state.extra["wall_seconds"],
        "meta_train_loss": float(np.mean(window)),
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "mask_fraction": frac,
        "mask_fraction_per_cell": per_cell,
        "alpha_mean": alpha_mean(state.params),
    }
