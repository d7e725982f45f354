"""Bundles: many trials of one learner trained as one computation, each member still its own trial.

On these nets a meta-step is dispatch-bound (a second-order meta-step of the 1-40-40-1 sine net over
25 tasks is a few MFLOP), so one trial per process leaves most of the machine idle. A bundle trains
B members with a leading member dimension: members share the learner, the task family and every
shape (inner steps, meta-batch, shots, queries), and differ in their seed and in continuous
hyper-parameters (alpha, beta, the temperature c, zeta_init, a learner's own floats). Each member
keeps what it would have alone: its initial parameters, its data and noise streams (its own
generator, drawn in the same order), its own optimiser (Adam state and step size beta), its own
curve rows, checkpoint content and status. A member whose loss turns non-finite is `diverged` at that
step and frozen out; the others go on.

Three ways to compute a bundle step (`mode`):
- "fold": the members folded into the task dimension of the batched engine: B members of T tasks are
  B*T tasks, each with its member's parameters and hyper-parameters; one autograd call gives every
  member's gradient of its own mean query loss. Fewest dispatches: the fastest on the CPU (for
  learners with `fold = True`: the gradient-based family); a member equals the same configuration
  trained alone with engine="batched" to float rounding;
- "vmap": the members' meta-gradients in one `torch.func.vmap` over the member dimension of the
  single-trial "vmap" engine (per-member hyper-parameters enter as 0-dim tensors); a member's
  numbers equal the same configuration trained alone with engine="vmap" to float rounding (vmap over
  one more dimension may pick other kernels; tests/test_bundles.py gives the tolerances);
- "loop": each member's own single-trial step in turn (its own engine): bit-identical to training it
  alone, for any learner; no speed-up of the arithmetic, only of everything around it.

Hyper-parameters a learner uses only as numbers in torch arithmetic can vary across members in
"vmap" mode; integers and choices (inner steps, meta-batch, mask evaluation) cannot (they change
shapes or code paths): `check_bundle` says which.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import grad, vmap

from .adapt import takes_groups
from .cells import to_tasks
from .evaluate import evaluate_members
from .hparams import TensorHParams, hparam_def
from .learners.base import LearnerBase
from .meta import meta_loss, outer_rule, outer_step, reptile_direction
from .optim import step_optimizers
from .setup import Setup
from .state import TrainState
from .tasks import Batch
from .tasks.base import splits_sample
from .train import curve_row, keep_if_best, params_finite

MODES = ("fold", "vmap", "loop")


@dataclass(eq=False)  # members are told apart by identity (their states hold tensors)
class Member:
    """One trial inside a bundle: its setup (its own hyper-parameters), its training state and its
    status ("running", then "completed" | "diverged" | "stopped_early")."""

    setup: Setup
    state: TrainState
    status: str = "running"
    window: list | None = None  # meta-train losses since the last report


def varying(setups: list[Setup]) -> tuple[str, ...]:
    """The hyper-parameters (read by the learner) whose values differ across members."""
    reads = setups[0].learner.reads()
    return tuple(n for n in reads if len({s.hp.get(n) for s in setups}) > 1)


def auto_mode(setup: Setup) -> str:
    """The mode measured fastest (bench/bench_bundle.py, one CPU thread, 8 members of 10-shot sine): "fold"
    for learners that can fold - at every meta-batch where the model takes each member's parameters once
    (core.adapt.takes_groups, the dense net; MAML: fold 4,710 vs vmap 2,119 member-steps/s at meta-batch 4,
    1,991 vs 1,159 at 25), else up to meta-batch 12 (above it the per-task copies of the weights cost more
    than fold saves: before the grouped products, fold 930 vs vmap 1,110 at 25); "vmap" otherwise and for
    learners that cannot fold; "loop" for outer rules with no batched gradient (TRPO) and for members with a
    train_shots_range (their meta-batches differ in shape)."""
    if not outer_rule(setup.learner.outer).batched_gradient or setup.train_shots_range is not None:
        return "loop"
    if getattr(setup.learner, "fold", False) and (takes_groups(setup.model, setup.loss_fn) or setup.hp.meta_batch <= 12):
        return "fold"
    return "vmap"


def check_bundle(setups: list[Setup], mode: str = "vmap") -> None:
    """ValueError unless the members can be one bundle: one learner, family, model, shapes, device;
    in "fold" and "vmap" modes only float hyper-parameters may differ (integers and choices change
    shapes); "fold" needs a learner whose batched computation takes per-task parameters."""
    if mode not in MODES:
        raise ValueError(f"bundle mode must be one of {', '.join(MODES)} (got {mode!r})")
    if not setups:
        raise ValueError("a bundle needs at least one member")
    first = setups[0]
    if mode != "loop" and not outer_rule(first.learner.outer).batched_gradient:
        raise ValueError(f"learner {first.learner.name!r} (outer rule {first.learner.outer}) has no batched meta-gradient "
                         "to map over members: use mode loop")
    if mode == "fold" and not getattr(first.learner, "fold", False):
        raise ValueError(f"learner {first.learner.name!r} cannot be folded into the task dimension: use mode vmap "
                         "or loop")
    for s in setups[1:]:
        for what in ("family", "learner", "model", "train_shots", "train_shots_range", "queries", "device", "dtype",
                     "engine"):
            if getattr(s, what) != getattr(first, what):
                raise ValueError(f"bundle members must share the {what} (got {getattr(first, what)!r} and "
                                 f"{getattr(s, what)!r})")
    if mode != "loop" and first.train_shots_range is not None:
        raise ValueError("members with a train_shots_range draw their own support sizes, so their meta-batches differ "
                         "in shape: bundle them with mode loop")
    for name in varying(setups):
        if mode != "loop" and hparam_def(name).kind != "float":
            raise ValueError(f"bundle members differ in {name}, which changes shapes or code paths: bundle only "
                             "members with equal integer and choice hyper-parameters")


def _stack(trees: list[dict]) -> dict:
    return {k: torch.stack([t[k] for t in trees]) for k in trees[0]}


def _member_values(members: list[Member], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    s = members[0].setup
    return {n: torch.tensor([float(m.setup.hp.get(n)) for m in members], dtype=s.dtype, device=s.device)
            for n in names}


def _draw(members: list[Member]) -> tuple[Batch, list[dict]]:
    """Every member's next meta-batch, concatenated over members along the task dimension, and its noise,
    each from the member's own generator in the order it draws alone (batch, then noise). Where the learner
    samples the family's batch (LearnerBase.train_batch, no train_shots_range), each member's draws are
    taken and the family's arithmetic done once for all members (core.tasks.base: draw / finish); the
    values are the same."""
    setup = members[0].setup
    hp, family = setup.hp, setup.family
    # the learner's own method (through a wrapper's delegation too, e.g. NIL's readout)
    split = (getattr(setup.learner.train_batch, "__func__", None) is LearnerBase.train_batch
             and setup.train_shots_range is None and splits_sample(family))
    drawn, noises = [], []
    for m in members:
        st = m.state
        drawn.append(family.draw(st.generator, hp.meta_batch, setup.train_shots, setup.queries) if split
                     else tuple(m.setup.learner.train_batch(m.setup, st.generator)))
        noises.append(m.setup.learner.noise(m.setup, st.params, st.generator, hp.meta_batch, hp.inner_steps))
    joined = tuple(torch.cat(ts) for ts in zip(*drawn))
    batch = family.finish(joined, setup.train_shots) if split else Batch(*joined)
    return batch.to(setup.device, setup.dtype), noises


def fold_gradients(members: list[Member], floats: tuple[str, ...]):
    """(per-member gradients {name: [B, ...]}, per-member losses [B]): B members x T tasks as B*T tasks
    of the batched engine, each task with its member's parameters (expanded, differentiable) and float
    hyper-parameters (where core.adapt.takes_groups, the members' parameters as they are, each shared by its
    member's T tasks); d/d(member b) of sum_b mean_t loss_bt is member b's own meta-gradient."""
    setup = members[0].setup
    hp, learner, n = setup.hp, setup.learner, len(members)
    batch, noises = _draw(members)
    noise = {k: torch.cat([nz[k] for nz in noises]) for k in noises[0]} if noises[0] else {}
    tasks = batch.x_support.shape[0] // n
    values = {k: v.repeat_interleave(tasks) for k, v in _member_values(members, floats).items()}
    s = setup.with_hp(TensorHParams(hp, values))
    with setup.math_mode():
        leaves = {k: v.detach().requires_grad_(learner.outer != "reptile")
                  for k, v in _stack([m.state.params for m in members]).items()}
        # where the model computes with grouped parameters, each member's once (one product per member over its
        # tasks' points, no per-task copies: core.cells.affine); else (and for Reptile's fast weights) one copy
        # per task
        grouped = learner.outer != "reptile" and takes_groups(s.model, s.loss_fn)
        folded = leaves if grouped else {k: to_tasks(v, n * tasks) for k, v in leaves.items()}
        if learner.outer == "reptile":
            return _fold_reptile(s, leaves, folded, batch, noise, n, tasks)
        losses = learner.query_loss(s, folded, batch, noise, batched=True, task_params=True).view(n, tasks).mean(1)
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()), allow_unused=True)
    return ({k: g if g is not None else torch.zeros_like(leaves[k]) for k, g in zip(leaves, grads)},
            losses.detach())


def _fold_reptile(s: Setup, leaves: dict, per_task: dict, batch: Batch, noise: dict, n: int, tasks: int):
    """Reptile's direction theta - mean_tasks(theta~) per member, from the folded inner loops."""
    from .losses import PER_TASK

    learner = s.learner
    names = learner.adapted_names(s.model)
    with torch.no_grad():
        fast = learner.trajectory(s, per_task, batch.x_support, batch.y_support, noise, steps=s.hp.inner_steps,
                                  every_step=False, batched=True, task_params=True)[-1]
        losses = PER_TASK[s.family.loss](s.model.forward(fast, batch.x_query), batch.y_query).view(n, tasks).mean(1)
    direction = {k: torch.zeros_like(v) for k, v in leaves.items()}
    for name in names:
        direction[name] = leaves[name] - fast[name].detach().view(n, tasks, *leaves[name].shape[1:]).mean(1)
    return direction, losses


def vmap_gradients(members: list[Member], floats: tuple[str, ...]):
    """(per-member gradients {name: [B, ...]}, per-member losses [B]) of the members' own next meta-batch,
    in one vmap over the member dimension."""
    setup = members[0].setup
    hp = setup.hp
    batch, noises = _draw(members)
    batch = Batch(*(t.unflatten(0, (len(members), -1)) for t in batch))  # [members, tasks, ...]
    noise = _stack(noises) if noises[0] else {}
    params = _stack([{k: v.detach() for k, v in m.state.params.items()} for m in members])
    reptile = setup.learner.outer == "reptile"
    compute = setup.with_hp(hp)
    object.__setattr__(compute, "engine", "vmap")

    def one(p, b, nz, values):
        s = compute.with_hp(TensorHParams(hp, values))
        if reptile:
            return reptile_direction(p, b, nz, s)

        def f(q):
            loss = meta_loss(q, b, nz, s, "vmap")
            return loss, loss.detach()

        return grad(f, has_aux=True)(p)

    with setup.math_mode():
        return vmap(one)(params, batch, noise, _member_values(members, floats))


def bundle_step(members: list[Member], mode: str, floats: tuple[str, ...]) -> list[torch.Tensor]:
    """One meta-iteration of every running member; returns their meta-losses (0-dim tensors)."""
    if mode == "loop":
        return [outer_step(m.setup, m.state) for m in members]
    grads, losses = (fold_gradients if mode == "fold" else vmap_gradients)(members, floats)
    grads = {name: g.contiguous() for name, g in grads.items()}  # each member's slice laid out as its parameter
    for i, m in enumerate(members):
        for name, p in m.state.params.items():
            p.grad = grads[name][i]
    step_optimizers([m.state.optimizer for m in members])
    for m in members:
        m.state.step += 1
    return list(losses.unbind(0))


@dataclass
class _Run:
    """What one call of train_bundle holds fixed."""

    members: list[Member]
    meta_steps: int
    report_every: int
    val_tasks: int
    val_seed: int
    mode: str
    floats: tuple[str, ...]
    wall0: dict
    on_report: Callable | None
    after_reports: Callable | None
    select: str = "last"

    def reports(self, step: int) -> bool:
        return step % self.report_every == 0 or step == self.meta_steps


def train_bundle(members: list[Member], meta_steps: int, *, report_every: int = 100, val_tasks: int = 100,
                 val_seed: int = 0, mode: str = "auto", select: str = "last",
                 on_report: Callable[[int, Member, dict], bool | None] | None = None,
                 after_reports: Callable[[int], None] | None = None) -> list[str]:
    """Train every member to `meta_steps` (members resumed from checkpoints at another step catch up
    first, alone, to the bundle's step). Returns each member's status: "completed", "diverged" (a
    non-finite loss: frozen out at that step, its rows kept) or "stopped_early" (`on_report(i,
    member, row)` returned True: a scheduler's rung inside the bundle). Curve rows accumulate in each
    member's state, as in core.train; the members reporting at a step are validated in one pass
    (core.evaluate.evaluate_members). `after_reports(step)` runs once they have all reported (e.g. one
    checkpoint of the whole bundle). mode "auto": `auto_mode`. `select`: which iterate each member
    keeps in `state.best`, as in core.train.train."""
    if mode == "auto":
        mode = auto_mode(members[0].setup)
    check_bundle([m.setup for m in members], mode)
    run = _Run(members, meta_steps, report_every, val_tasks, val_seed, mode,
               tuple(n for n in members[0].setup.learner.reads() if hparam_def(n).kind == "float"),
               {id(m): time.perf_counter() - m.state.extra.get("wall_seconds", 0.0) for m in members},
               on_report, after_reports, select)
    for m in members:
        m.window = []
        if m.status == "running" and m.state.step >= meta_steps:
            m.status = "completed"
    while True:
        running = [m for m in members if m.status == "running"]
        if not running:
            return [m.status for m in members]
        # members restored at different steps (checkpoints of different reports) catch up alone with the
        # furthest one first, so the bundle then moves in lockstep
        low = min(m.state.step for m in running)
        _step(run, [m for m in running if m.state.step == low])


def _step(run: _Run, group: list[Member]) -> None:
    """One step of `group` (members at one step count), then their reports if it is a report step."""
    losses = bundle_step(group, run.mode, run.floats)
    reporting = []
    for m, loss in zip(group, losses):
        st = m.state
        m.window.append(float(loss))
        if not math.isfinite(m.window[-1]) or run.reports(st.step) and not params_finite(st.params):
            st.curves.append(curve_row(m.setup, st, st.step, m.window, run.wall0[id(m)]))
            m.status = "diverged"
        elif run.reports(st.step):
            reporting.append(m)
    if not reporting:
        return
    # one pass over the reporting members (each member alone in loop mode, which promises bit-identity)
    groups = [[m] for m in reporting] if run.mode == "loop" else [reporting]
    vals = [cols for g in groups for cols in evaluate_members(
        [m.setup for m in g], [m.state.params for m in g], split="val", eval_seed=run.val_seed, n_tasks=run.val_tasks,
        shots=(g[0].setup.train_shots,), steps=(g[0].setup.hp.inner_steps,), chunk=run.val_tasks)]
    for m, cols in zip(reporting, vals):
        _report(run, m, cols)
    if run.after_reports is not None:
        run.after_reports(reporting[0].state.step)


def _report(run: _Run, m: Member, cols: dict) -> None:
    """The single-trial loop's report (core.train.train) for one member: curve row, status, callback."""
    st = m.state
    acc = cols["accuracy"]
    val_loss, val_acc = float(cols["loss"].mean()), (None if np.isnan(acc).all() else float(acc.mean()))
    row = curve_row(m.setup, st, st.step, m.window, run.wall0[id(m)], val_loss, val_acc)
    m.window = []
    st.curves.append(row)
    if not math.isfinite(val_loss):
        m.status = "diverged"
        return
    keep_if_best(st, row, run.select)
    if run.on_report is not None and run.on_report(next(i for i, x in enumerate(run.members) if x is m), m, row):
        m.status = "stopped_early"
    elif st.step >= run.meta_steps:
        m.status = "completed"
