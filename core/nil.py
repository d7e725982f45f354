"""The feature-reuse study's math (Raghu et al., "Rapid learning or feature reuse?").

- `nil_scores`: NIL's cosine-similarity label weighting (the readout of
  core.learners.readout.CosineReadout): score_c(q) = sum over support examples s of class c of
  cos(f(q), f(s)).
- `frozen_block`: the cells of a contiguous block lo..hi-1, for evaluating a gradient learner with
  that block left out of the inner loop (`learner.with_frozen(frozen_block(model, lo, hi))`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nil_scores(f_support: torch.Tensor, y_support: torch.Tensor, f_query: torch.Tensor, ways: int) -> torch.Tensor:
    """Class scores [(tasks,) Nq, ways] from features [(tasks,) N, F] and int labels [(tasks,) Ns]."""
    sim = F.normalize(f_query, dim=-1) @ F.normalize(f_support, dim=-1).transpose(-1, -2)  # [.., Nq, Ns]
    onehot = F.one_hot(y_support, ways).to(sim.dtype)  # [.., Ns, ways]
    return sim @ onehot


def frozen_block(model, lo: int, hi: int) -> tuple[str, ...]:
    """Names of cells lo .. hi - 1; ValueError unless 0 <= lo < hi <= n_cells."""
    names = model.cell_names()
    if not (0 <= lo < hi <= len(names)):
        raise ValueError(f"frozen block [{lo}, {hi}) must lie within the {len(names)} cells")
    return tuple(names[lo:hi])
