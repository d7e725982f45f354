"""Evaluation on fixed tasks: one row per (task, shots, inner steps), plus mean +- 95% CI.

Task i of a split is a pure function of (family, split, eval_seed, i) and support sets are nested
over shots, so every variant, seed and shot count meets identical tasks (paired comparisons).
Mask noise at evaluation is drawn from a generator seeded by the same triple.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from .adapt import adapt
from .cells import adapted_names
from .losses import PER_TASK
from .meta import sample_noise
from .nil import FrozenCells, nil_forward
from .setup import Setup
from .tasks import task_seed


def _losses_along_trajectory(params, batch, noise, setup: Setup, steps: int, mask_mode: str, head: str = "adapt"):
    """Query loss (and accuracy) of every task after 0..steps inner steps: [tasks, steps + 1].
    head="nil": no head, cosine-similarity label weighting on the features (core.nil)."""
    hp = setup.hp
    trajectory = adapt(params, batch.x_support, batch.y_support, model=setup.model, variant=setup.variant,
                       alpha=hp.alpha, temperature=hp.temperature, steps=steps, loss_fn=setup.loss_fn, noise=noise,
                       mask_mode=mask_mode, all_steps=True, batched=True)
    losses, accs = [], []
    per_task = PER_TASK[setup.loss_fn]
    with torch.no_grad():
        for fast in trajectory:
            if head == "nil":
                out = nil_forward(setup.model, fast, batch.x_support, batch.y_support, batch.x_query,
                                  setup.family.output_dim)
            else:
                out = setup.model.forward(fast, batch.x_query)
            losses.append(per_task(out, batch.y_query))
            if setup.family.loss == "cross_entropy":
                accs.append((out.argmax(-1) == batch.y_query).to(out.dtype).flatten(1).mean(1))
    return torch.stack(losses, 1), (torch.stack(accs, 1) if accs else torch.zeros(0))


def evaluate(setup: Setup, params, *, split: str = "test", eval_seed: int = 1, n_tasks: int = 600,
             shots=(5, 10, 20), steps=(1, 10), mask_eval: str | None = None, chunk: int = 600,
             head: str | None = None, frozen: tuple[int, int] | None = None) -> dict:
    """Adapt to each of `n_tasks` fixed tasks with every shot count and report the query loss after
    each requested number of inner steps (0 = before adaptation). Returns column arrays
    (task_index, shots, inner_steps, loss, accuracy) ready for the eval_tasks table.

    `head` ("adapt" | "nil", default the variant's eval_head) and `frozen` (cells lo..hi-1 left
    untouched by the inner loop) are the feature-reuse study's evaluation modes (core.nil)."""
    with setup.math_mode():
        return _evaluate(setup, params, split, eval_seed, n_tasks, shots, steps, mask_eval, chunk, head, frozen)


def _evaluate(setup, params, split, eval_seed, n_tasks, shots, steps, mask_eval, chunk, head, frozen) -> dict:
    head = head or setup.variant.eval_head
    if head not in ("adapt", "nil"):
        raise ValueError(f"head must be adapt or nil (got {head!r})")
    if head == "nil" and setup.family.loss != "cross_entropy":
        raise ValueError("head=nil needs a classification task")
    if frozen is not None:
        setup = replace(setup, model=FrozenCells.block(setup.model, *frozen))
        if not adapted_names(setup.model, setup.variant):
            raise ValueError(f"frozen={tuple(frozen)} leaves the inner loop of {setup.variant.name!r} nothing to "
                             "adapt (for no adaptation at all, evaluate at inner step 0)")
    mask_mode = mask_eval or setup.hp.mask_eval
    shots, steps = sorted(set(int(s) for s in shots)), sorted(set(int(s) for s in steps))
    max_steps = max(steps)
    ways = getattr(setup.family, "ways", 1)  # classification supports hold k examples per class
    params = {k: v.detach() for k, v in params.items()}
    g = torch.Generator().manual_seed(task_seed(setup.family.key(), split, eval_seed, 0, stream=1))
    noise = sample_noise(params, setup, g, n_tasks, max(max_steps, 1))
    parts: dict[int, tuple[list, list]] = {k: ([], []) for k in shots}
    # at most ~8M input values per chunk (image tasks: 600 MiniImagenet tasks are ~5 GB of pixels);
    # regression tasks are tiny, so their chunk is unchanged
    per_task = (max(shots) + setup.queries) * ways * math.prod(setup.family.input_shape)
    chunk = max(1, min(chunk, (1 << 23) // per_task))
    for start in range(0, n_tasks, chunk):
        # tasks are pure functions of their index: building them chunk by chunk changes nothing and
        # bounds memory (600 MiniImagenet tasks would not fit at once)
        idx = range(start, min(start + chunk, n_tasks))
        batch = setup.family.eval_tasks(split, eval_seed, idx, max(shots), setup.queries)
        batch = batch.to(setup.device, setup.dtype)
        nz = {z: v[start:start + chunk] for z, v in noise.items()}
        for k in shots:
            with torch.no_grad():
                l, a = _losses_along_trajectory(params, batch.shots(k, ways), nz, setup, max_steps, mask_mode, head)
            parts[k][0].append(l)
            parts[k][1].append(a)
    cols = {"task_index": [], "shots": [], "inner_steps": [], "loss": [], "accuracy": []}
    for k in shots:
        loss = torch.cat(parts[k][0]).cpu().double().numpy()  # [n_tasks, max_steps + 1]
        acc = torch.cat(parts[k][1]).cpu().double().numpy()
        for s in steps:
            cols["task_index"].append(np.arange(n_tasks))
            cols["shots"].append(np.full(n_tasks, k))
            cols["inner_steps"].append(np.full(n_tasks, s))
            cols["loss"].append(loss[:, s])
            cols["accuracy"].append(acc[:, s] if acc.size else np.full(n_tasks, np.nan))
    return {k: np.concatenate(v) for k, v in cols.items()}


def summarize(cols: dict, metric: str = "loss") -> list[dict]:
    """Mean +- 1.96 sd / sqrt(N) over tasks for each (shots, inner_steps) (the papers' convention;
    sd with ddof=0 as numpy's std in the authors' code)."""
    out = []
    keys = sorted(set(zip(cols["shots"].tolist(), cols["inner_steps"].tolist())))
    for k, s in keys:
        sel = (cols["shots"] == k) & (cols["inner_steps"] == s)
        v = cols[metric][sel]
        n = len(v)
        out.append({"shots": k, "inner_steps": s, "n": n, "mean": float(v.mean()),
                    "ci95": float(1.96 * v.std() / math.sqrt(n)) if n > 1 else float("nan")})
    return out
