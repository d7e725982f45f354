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


def validation_loss(setup: Setup, params, val_tasks: int, eval_seed: int) -> tuple[float, float | None]:
    """Mean query loss (and accuracy) on `val_tasks` meta-validation tasks at the training shots and
    inner steps: the tune stage's objective."""
    cols = evaluate(setup, params, split="val", eval_seed=eval_seed, n_tasks=val_tasks,
                    shots=(setup.train_shots,), steps=(setup.hp.inner_steps,), chunk=val_tasks)
    acc = cols["accuracy"]
    return float(cols["loss"].mean()), (None if np.isnan(acc).all() else float(acc.mean()))


# which iterate of a trial is evaluated on the test tasks (the spec's `eval.select`):
#   last       - the parameters after the last meta-step
#   best_val   - those of the report with the lowest validation loss (meta-validation tasks; for RL the
#                highest validation return)
#   best_train - those of the report with the lowest mean meta-training loss since the previous
#                report (the ANIL paper's RL protocol: "the best iterate selected on training returns")
# Ties keep the earlier report. Only reports are candidates (every `report_every` steps and the last).
SELECTIONS = {"last": None, "best_val": "val_loss", "best_train": "meta_train_loss"}


def keep_if_best(state: TrainState, row: dict, select: str) -> None:
    """After a report `row` (a curve row of `state.step`): keep a copy of the parameters in
    `state.best` if `select` ranks them above the kept ones. Non-finite values never win."""
    key = SELECTIONS[select]
    if key is None:
        return
    value = row.get(key)
    if value is None or not math.isfinite(value):
        return
    if state.best is None or value < state.best["value"]:
        state.best = {"step": int(row["meta_step"]), "value": float(value),
                      "params": {k: v.detach().clone() for k, v in state.params.items()}}


def selected(state: TrainState, select: str) -> tuple[dict, int]:
    """(parameters, meta-step) of the iterate to evaluate: the kept one, else the current one (also
    for `last`, and for a selection that kept nothing: no finite report)."""
    if SELECTIONS[select] is not None and state.best is not None:
        return state.best["params"], state.best["step"]
    return state.params, state.step


def params_finite(params) -> bool:
    return bool(torch.stack([torch.isfinite(p).all() for p in params.values()]).all())


def train(setup: Setup, state: TrainState, meta_steps: int, *, report_every: int = 100,
          val_tasks: int = 100, val_seed: int = 0, select: str = "last",
          on_report: Callable[[TrainState, dict], None] | None = None) -> str:
    """Run until `meta_steps` outer steps are done. Returns "completed" or "diverged" (a NaN/inf
    loss: a result, not a crash). A scheduler that stops a trial early does so from outside (Ray
    Tune ends the trial at a report). Curve rows accumulate in `state.curves` so that they survive a
    checkpoint/resume. `select` (SELECTIONS): which iterate `state.best` keeps, at reports.

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
            keep_if_best(state, row, select)
            if on_report is not None:
                on_report(state, row)  # the caller's side effects (progress, Tune's report and checkpoint)
    return "completed"


def curve_row(setup: Setup, state: TrainState, step: int, window: list[float], wall0: float,
              val_loss: float = float("nan"), val_acc: float | None = None) -> dict:
    """One learning-curve row: the step, wall time, mean meta-train loss since the last row, the
    validation loss/accuracy and the learner's diagnostics (e.g. MT-net's mask_fraction)."""
    state.extra["wall_seconds"] = time.perf_counter() - wall0
    return {
        "meta_step": step,
        "wall_seconds": state.extra["wall_seconds"],
        "meta_train_loss": float(np.mean(window)),
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        **setup.learner.diagnostics(setup, state.params),
    }
