"""Representational similarity before and after the inner loop (Raghu et al.'s feature-reuse study).

Linear CKA (Kornblith et al. 2019) between a layer's activations on a task's query set under the
meta-learned parameters (before adaptation) and under the task's fast parameters (after k inner
steps): CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F) with column-centred
X [n, p], Y [n, q]. It is 1 for identical representations and invariant to orthogonal transforms and
isotropic scaling. CCA is not computed: conv activations have far more features (F*H*W) than a
task has examples, where every canonical correlation is trivially 1.

`cka_before_after` returns columns (task_index, layer, inner_steps, cka) for the results table `cka`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from metasweep.core.adapt import adapt
from metasweep.core.meta import sample_noise
from metasweep.core.tasks import task_seed


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA of [(tasks,) n, p] and [(tasks,) n, q] (extra trailing dims are flattened by the
    caller); computed in float64 through the n x n Gram matrices (cheap when p >> n)."""
    x = x.double() - x.double().mean(-2, keepdim=True)
    y = y.double() - y.double().mean(-2, keepdim=True)
    kx, ky = x @ x.transpose(-1, -2), y @ y.transpose(-1, -2)  # ||Y^T X||_F^2 = <K_x, K_y>
    hsic = (kx * ky).sum((-1, -2))
    return hsic / torch.sqrt((kx * kx).sum((-1, -2)) * (ky * ky).sum((-1, -2)))


def cka_before_after(setup, params, *, split: str = "test", eval_seed: int = 1, n_tasks: int = 100,
                     shots: int | None = None, steps: int | None = None, chunk: int = 100) -> dict:
    """Per task and per cell: CKA between the cell's output on the query set before and after
    `steps` inner steps (default the training inner steps) on `shots` per class (default training
    shots). Cells are numbered 0..n_cells-1; the last is the head (its logits)."""
    shots = shots or setup.train_shots
    steps = setup.hp.inner_steps if steps is None else steps
    model, hp = setup.model, setup.hp
    ways = getattr(setup.family, "ways", 1)
    params = {k: v.detach() for k, v in params.items()}
    g = torch.Generator().manual_seed(task_seed(setup.family.key(), split, eval_seed, 0, stream=1))
    noise = sample_noise(params, setup, g, n_tasks, max(steps, 1))
    cols: dict[str, list] = {"task_index": [], "layer": [], "inner_steps": [], "cka": []}
    per_task = (shots + setup.queries) * ways * math.prod(setup.family.input_shape)
    chunk = max(1, min(chunk, (1 << 22) // per_task))  # activations of every layer, twice, in float64
    for start in range(0, n_tasks, chunk):
        idx = range(start, min(start + chunk, n_tasks))
        batch = setup.family.eval_tasks(split, eval_seed, idx, shots, setup.queries).to(setup.device, setup.dtype)
        nz = {z: v[start:start + chunk] for z, v in noise.items()}
        fast = adapt(params, batch.x_support, batch.y_support, model=model, variant=setup.variant, alpha=hp.alpha,
                     temperature=hp.temperature, steps=steps, loss_fn=setup.loss_fn, noise=nz,
                     mask_mode=hp.mask_eval, batched=True)
        with torch.no_grad():
            for layer in range(model.n_cells):
                upto = layer + 1 if layer + 1 < model.n_cells else None
                before = model.forward(params, batch.x_query, upto=upto).flatten(2)
                after = model.forward(fast, batch.x_query, upto=upto).flatten(2)
                value = linear_cka(before, after).cpu().numpy()
                cols["task_index"].append(np.asarray(idx))
                cols["layer"].append(np.full(len(idx), layer))
                cols["inner_steps"].append(np.full(len(idx), steps))
                cols["cka"].append(value)
    return {k: np.concatenate(v) for k, v in cols.items()}


def summarize_cka(cols: dict) -> list[dict]:
    """Mean +- 95% CI of CKA over tasks, per layer."""
    out = []
    for layer in sorted(set(cols["layer"].tolist())):
        v = cols["cka"][cols["layer"] == layer]
        out.append({"layer": int(layer), "n": len(v), "mean": float(v.mean()),
                    "ci95": float(1.96 * v.std() / np.sqrt(len(v))) if len(v) > 1 else float("nan")})
    return out
