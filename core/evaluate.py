"""Evaluation on fixed tasks: one row per (task, shots, inner steps) (summaries: analysis.summary).

Evaluation task i - its support set (nested prefixes over shots), its query set and the learner's
evaluation noise at every inner step - is a pure function of (family, split, eval_seed, i): it does
not depend on which other tasks, shot counts or step counts are evaluated in the same call. So every
learner, seed and shot count meets identical tasks (paired comparisons), and a run that evaluates
5 shots gives the same per-task values as one that evaluates 5, 10 and 20.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .setup import Setup
from .tasks import task_seed

METRICS = ("loss", "accuracy", "return")  # per-task values; a learner's task_metrics gives loss and any of the others
ROWS = ("task_index", "shots", "inner_steps", *METRICS)


def eval_noise(setup: Setup, params, split: str, eval_seed: int, indices, steps: int, learner=None) -> dict:
    """The learner's noise for evaluation tasks `indices` and up to `steps` steps: task i's from its
    own generator seeded by (family, split, eval_seed, i, stream 1), so it depends on nothing else."""
    learner = learner or setup.learner
    parts = []
    for i in indices:
        g = torch.Generator().manual_seed(task_seed(setup.family.key(), split, eval_seed, i, stream=1))
        parts.append(learner.noise(setup, params, g, 1, steps))
    if not parts or not parts[0]:
        return {}
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def output_metrics(setup: Setup, learner, params, batch, noise, steps: int, mask_mode: str,
                   task_params: bool = False) -> dict:
    """Query loss (and, for classification, accuracy) of every task after 0..steps inner steps, from
    the learner's `outputs`: {"loss": [tasks, steps + 1], "accuracy": ...} (a learner without an inner
    loop: [tasks, 1], its only output, recorded at step 0). `task_params`: parameters with a task
    dimension (a bundle's members folded into it: evaluate_members)."""
    from .losses import PER_TASK

    extra = {"task_params": True} if task_params else {}
    outs = learner.outputs(setup, params, batch.x_support, batch.y_support, batch.x_query, noise,
                           steps=steps if learner.inner_loop else 0, every_step=True, mask_mode=mask_mode,
                           batched=True, **extra)
    per_task = PER_TASK[setup.family.loss]
    with torch.no_grad():
        out = {"loss": torch.stack([per_task(o, batch.y_query) for o in outs], 1)}
        if setup.family.loss == "cross_entropy":
            out["accuracy"] = torch.stack([(o.argmax(-1) == batch.y_query).to(o.dtype).flatten(1).mean(1)
                                           for o in outs], 1)
    return out


def task_metrics(setup: Setup, learner, params, batch, noise, steps: int, mask_mode: str,
                 task_params: bool = False) -> dict:
    """The learner's own per-task metrics when it has them (an RL learner rolls its policy out:
    core.learners.rl), else `output_metrics`. Values [tasks, steps + 1] by name (METRICS)."""
    own = getattr(learner, "task_metrics", None)
    if own is not None:
        return own(setup, params, batch, noise, steps=steps if learner.inner_loop else 0, mask_mode=mask_mode)
    return output_metrics(setup, learner, params, batch, noise, steps, mask_mode, task_params)


def evaluate(setup: Setup, params, *, split: str = "test", eval_seed: int = 1, n_tasks: int = 600,
             shots=(5, 10, 20), steps=(1, 10), mask_eval: str | None = None, chunk: int = 600,
             learner=None) -> dict:
    """Adapt to each of `n_tasks` fixed tasks with every shot count and report the query loss after
    each requested number of inner steps (0 = before adaptation). A learner without an inner loop
    gives rows at inner_steps = 0 only, whatever `steps` asks. Returns column arrays
    (task_index, shots, inner_steps, loss, accuracy, return) ready for the eval_tasks table (accuracy:
    classification only; return: RL only, where loss = -return; NaN elsewhere).

    `learner` (default the setup's) evaluates the same parameters another way, e.g. NIL's cosine
    readout (`CosineReadout(setup.learner)`) or with frozen cells (`setup.learner.with_frozen(...)`)."""
    learner = learner or setup.learner
    learner.check(setup)
    with setup.math_mode():
        return _evaluate([setup], learner, [params], split, eval_seed, n_tasks, shots, steps, mask_eval, chunk)[0]


def evaluate_members(setups: list[Setup], params_list: list, *, split: str = "test", eval_seed: int = 1,
                     n_tasks: int = 600, shots=(5, 10, 20), steps=(1, 10), mask_eval: str | None = None,
                     chunk: int = 600) -> list[dict]:
    """`evaluate` for the members of a bundle (one learner, family and shapes; their own parameters and
    float hyper-parameters) on the same fixed tasks, in one computation: members x tasks folded into
    the batched task dimension (learners with `fold` and no task_metrics of their own; others are
    evaluated one by one). Each member's rows equal its own `evaluate` to float rounding."""
    learner = setups[0].learner
    learner.check(setups[0])
    if len(setups) == 1 or not getattr(learner, "fold", False) or hasattr(learner, "task_metrics"):
        return [evaluate(s, p, split=split, eval_seed=eval_seed, n_tasks=n_tasks, shots=shots, steps=steps,
                         mask_eval=mask_eval, chunk=chunk) for s, p in zip(setups, params_list)]
    with setups[0].math_mode():
        return _evaluate(setups, learner, params_list, split, eval_seed, n_tasks, shots, steps, mask_eval, chunk)


def _folded(setups: list[Setup], params_list: list, tasks: int):
    """The members' parameters and float hyper-parameters, one copy per task: [members * tasks, ...]."""
    from .hparams import TensorHParams, hparam_def

    setup, n = setups[0], len(setups)
    stacked = {k: torch.stack([p[k] for p in params_list]) for k in params_list[0]}
    params = {k: v.unsqueeze(1).expand(n, tasks, *v.shape[1:]).reshape(n * tasks, *v.shape[1:])
              for k, v in stacked.items()}
    floats = [h for h in setup.learner.reads() if hparam_def(h).kind == "float"]
    values = {h: torch.tensor([float(s.hp.get(h)) for s in setups], dtype=setup.dtype,
                              device=setup.device).repeat_interleave(tasks) for h in floats}
    return setup.with_hp(TensorHParams(setup.hp, values)), params


def _evaluate(setups, learner, params_list, split, eval_seed, n_tasks, shots, steps, mask_eval, chunk) -> list:
    setup, n = setups[0], len(setups)
    mask_mode = mask_eval or setup.hp.mask_eval
    shots = sorted(set(int(s) for s in shots))
    steps = sorted(set(int(s) for s in steps)) if learner.inner_loop else [0]
    max_steps = max(steps)
    ways = getattr(setup.family, "ways", 1)  # classification supports hold k examples per class
    params_list = [{k: v.detach() for k, v in p.items()} for p in params_list]
    # at most ~8M input values per chunk and member (image tasks: 600 MiniImagenet tasks are ~5 GB of
    # pixels); regression tasks are tiny, so their chunk is every task
    per_task = (max(shots) + setup.queries) * ways * math.prod(setup.family.input_shape) * n
    chunk = max(1, min(chunk, (1 << 23) // per_task, getattr(setup.family, "eval_chunk", chunk)))
    parts: list[dict[int, list[dict]]] = [{k: [] for k in shots} for _ in range(n)]
    for start in range(0, n_tasks, chunk):
        # tasks are pure functions of their index: building them chunk by chunk changes nothing and
        # bounds memory (600 MiniImagenet tasks would not fit at once)
        idx = range(start, min(start + chunk, n_tasks))
        batch = setup.family.eval_tasks(split, eval_seed, idx, max(shots), setup.queries)
        batch = batch.to(setup.device, setup.dtype)
        noise = eval_noise(setup, params_list[0], split, eval_seed, idx, max_steps, learner)
        s, params = setup, params_list[0]
        if n > 1:  # every member meets the same tasks and noise: repeat them once per member
            batch = type(batch)(*(t.repeat(n, *([1] * (t.dim() - 1))) for t in batch))
            noise = {z: v.repeat(n, *([1] * (v.dim() - 1))) for z, v in noise.items()}
            s, params = _folded(setups, params_list, len(idx))
        for k in shots:
            with torch.no_grad():
                values = task_metrics(s, learner, params, batch.shots(k, ways), noise, max_steps, mask_mode,
                                      task_params=n > 1)
            for m in range(n):
                parts[m][k].append({name: v.chunk(n)[m] for name, v in values.items()})
    return [_columns(p, shots, steps, n_tasks) for p in parts]


def _columns(parts: dict, shots: list, steps: list, n_tasks: int) -> dict:
    """Eval rows (task_index, shots, inner_steps and every metric) from per-shot chunks of
    {metric: [tasks, steps + 1]}; a metric the learner does not give is NaN."""
    cols = {name: [] for name in ROWS}
    for k in shots:
        values = {m: torch.cat([p[m] for p in parts[k]]).cpu().double().numpy() if m in parts[k][0] else None
                  for m in METRICS}
        for s in steps:
            cols["task_index"].append(np.arange(n_tasks))
            cols["shots"].append(np.full(n_tasks, k))
            cols["inner_steps"].append(np.full(n_tasks, s))
            for m, v in values.items():
                cols[m].append(v[:, s] if v is not None else np.full(n_tasks, np.nan))
    return {k: np.concatenate(v) for k, v in cols.items()}
