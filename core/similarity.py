"""Representational similarity before and after the inner loop (Raghu et al.'s feature-reuse study).

Two measures between a layer's activations on a task's query set under the meta-learned
parameters (before adaptation) and under the task's fast parameters (after k inner steps); both
are 1 for identical representations:

- Linear CKA (Kornblith et al. 2019): CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)
  with column-centred X [n, p], Y [n, q], every feature of an example (F*H*W for a conv layer) a
  column. Invariant to orthogonal transforms and isotropic scaling.
- SVCCA (Raghu et al. 2017), the "CCA similarity" of the ANIL paper: keep the top singular
  directions of each side that explain 99 % of its variance, then average the canonical
  correlations between the two subspaces. Invariant to any invertible linear map of the kept
  subspace. For a conv layer each spatial position of each query image is a data point and the
  F channels are the features, as SVCCA does for conv layers (a task has far fewer images than
  F*H*W features, where every canonical correlation would be trivially 1). Where the kept
  directions of both sides outnumber the data points (e.g. the head's logits on a 1-query task),
  CCA is undefined and the value is NaN. Like any CCA it reads high when the data points are not
  many more than the kept directions (the last conv layer of a 1-query Omniglot task has 2x2
  positions per image): compare SVCCA across variants at one layer rather than across layers.

`cka_before_after` (a probe run inside a trial, like evaluation) returns columns (task_index, layer,
inner_steps, cka, cca) for the results table `cka`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .evaluate import eval_noise


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA of [(tasks,) n, p] and [(tasks,) n, q] (extra trailing dims are flattened by the
    caller); computed in float64 through the n x n Gram matrices (cheap when p >> n)."""
    x = x.double() - x.double().mean(-2, keepdim=True)
    y = y.double() - y.double().mean(-2, keepdim=True)
    kx, ky = x @ x.transpose(-1, -2), y @ y.transpose(-1, -2)  # ||Y^T X||_F^2 = <K_x, K_y>
    hsic = (kx * ky).sum((-1, -2))
    return hsic / torch.sqrt((kx * kx).sum((-1, -2)) * (ky * ky).sum((-1, -2)))


def svcca(x: torch.Tensor, y: torch.Tensor, keep: float = 0.99) -> float:
    """Mean canonical correlation of X [N, p] and Y [N, q] after reducing each (centred) to the
    singular directions that explain `keep` of its variance (SVCCA; keep=1.0: plain CCA on the
    full-rank part). NaN when undefined: a side without variance, or kept dimensions kx + ky > N - 1,
    where some canonical correlations would be 1 by dimension count alone. (Nearer that limit the
    estimate is still biased upwards: compare layers with enough data points.)"""
    # on the CPU in float64 whatever the model ran on: small SVDs, exact enough, one code path
    x, y = (z.detach().to("cpu", torch.float64) for z in (x, y))
    x, y = x - x.mean(0, keepdim=True), y - y.mean(0, keepdim=True)
    bases = []
    for z in (x, y):
        u, s, _ = torch.linalg.svd(z, full_matrices=False)
        var = s * s
        total = float(var.sum())
        if total <= 0:
            return float("nan")
        rank = int((s > s[0] * max(z.shape) * torch.finfo(torch.float64).eps).sum())
        k = min(rank, int(torch.searchsorted(torch.cumsum(var, 0) / total, torch.tensor(keep - 1e-12,
                                                                                          dtype=var.dtype))) + 1)
        bases.append(u[:, :k])
    if bases[0].shape[1] + bases[1].shape[1] > x.shape[0] - 1:
        return float("nan")  # two subspaces this large in the (N-1)-dim centred space must share directions
    rho = torch.linalg.svdvals(bases[0].T @ bases[1]).clamp(max=1.0)
    return float(rho.mean())


def cca_points(h: torch.Tensor) -> torch.Tensor:
    """[tasks, n, F, H, W] -> [tasks, n*H*W, F] (spatial positions as data points); [tasks, n, d] as is."""
    if h.dim() == 5:
        t, n, f = h.shape[:3]
        return h.movedim(2, -1).reshape(t, -1, f)
    return h.reshape(h.shape[0], h.shape[1], -1)


def cka_before_after(setup, params, *, split: str = "test", eval_seed: int = 1, n_tasks: int = 100,
                     shots: int | None = None, steps: int | None = None, chunk: int = 100) -> dict:
    """Per task and per cell: CKA between the cell's output on the query set before and after
    `steps` inner steps (default the training inner steps) on `shots` per class (default training
    shots). Cells are numbered 0..n_cells-1; the last is the head (its logits)."""
    shots = shots or setup.train_shots
    steps = setup.hp.inner_steps if steps is None else steps
    model, hp, learner = setup.model, setup.hp, setup.learner
    if not hasattr(learner, "trajectory"):
        raise ValueError(f"learner {learner.name!r} ({learner.kind}) adapts no parameters: CKA before vs after the "
                         "inner loop needs a gradient-based learner")
    ways = getattr(setup.family, "ways", 1)
    params = {k: v.detach() for k, v in params.items()}
    cols: dict[str, list] = {"task_index": [], "layer": [], "inner_steps": [], "cka": [], "cca": []}
    per_task = (shots + setup.queries) * ways * math.prod(setup.family.input_shape)
    chunk = max(1, min(chunk, (1 << 22) // per_task))  # activations of every layer, twice, in float64
    for start in range(0, n_tasks, chunk):
        idx = range(start, min(start + chunk, n_tasks))
        batch = setup.family.eval_tasks(split, eval_seed, idx, shots, setup.queries).to(setup.device, setup.dtype)
        nz = eval_noise(setup, params, split, eval_seed, idx, steps)
        fast = learner.trajectory(setup, params, batch.x_support, batch.y_support, nz, steps=steps, every_step=False,
                                  mask_mode=hp.mask_eval, batched=True)[-1]
        with torch.no_grad():
            for layer in range(model.n_cells):
                upto = layer + 1 if layer + 1 < model.n_cells else None
                before = model.forward(params, batch.x_query, upto=upto)
                after = model.forward(fast, batch.x_query, upto=upto)
                value = linear_cka(before.flatten(2), after.flatten(2)).cpu().numpy()
                pb, pa = cca_points(before), cca_points(after)
                cols["cca"].append(np.array([svcca(pb[i], pa[i]) for i in range(len(idx))]))
                cols["task_index"].append(np.asarray(idx))
                cols["layer"].append(np.full(len(idx), layer))
                cols["inner_steps"].append(np.full(len(idx), steps))
                cols["cka"].append(value)
    return {k: np.concatenate(v) for k, v in cols.items()}
