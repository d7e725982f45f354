"""Losses of one task, and their batched form (one value per task along dimension 0).

MSE averages over points (MT-net / MAML sine convention); cross-entropy averages over examples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2).mean()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def mse_per_task(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2).flatten(1).mean(1)


def cross_entropy_per_task(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    n_tasks = logits.shape[0]
    flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    return flat.reshape(n_tasks, -1).mean(1)


def mse_per_task_grad(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d mse_per_task(pred, target)[t] / d pred[t]: 2 (pred - target) / (points x outputs of a task)."""
    return (pred - target) * (2.0 / pred[0].numel())


def cross_entropy_per_task_grad(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d cross_entropy_per_task(logits, labels)[t] / d logits[t]: (softmax - one-hot) / examples of a task."""
    probs = torch.softmax(logits, dim=-1)
    onehot = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return (probs - onehot) * (1.0 / labels[0].numel())


LOSSES = {"mse": mse, "cross_entropy": cross_entropy}
PER_TASK = {"mse": mse_per_task, "cross_entropy": cross_entropy_per_task, mse: mse_per_task,
            cross_entropy: cross_entropy_per_task}
# the gradient of a batched loss w.r.t. the predictions, written out (models with a closed-form backward,
# core.cells, use it for the inner loop); a loss without one is differentiated by autograd
PER_TASK_GRAD = {"mse": mse_per_task_grad, "cross_entropy": cross_entropy_per_task_grad, mse: mse_per_task_grad,
                 cross_entropy: cross_entropy_per_task_grad}


def register_loss(name: str, fn, per_task=None) -> None:
    """Add a loss (e.g. core.rl.pg's policy-gradient losses): `fn(out, target)` of one task, and its
    batched form (one value per task; default `fn` itself, for losses that reduce only the sample
    dimension), found by name and by function as the built-in ones."""
    per_task = per_task or fn
    for table, key, value in ((LOSSES, name, fn), (PER_TASK, name, per_task), (PER_TASK, fn, per_task)):
        if table.get(key, value) is not value:
            raise ValueError(f"loss {name!r} is already registered differently")
        table[key] = value
