"""Small helpers for the meta-RL tests (imported as `from rlutil import ...`)."""

import torch

from metasweep.core import HParams, registry
from metasweep.core.rl.outer import collect
from metasweep.core.rl.policy import GaussianMLP
from metasweep.core.setup import Setup

D = torch.float64


def nav_setup(preset="maml-trpo", hidden=(100, 100), meta_batch=4, shots=5, queries=5, dtype=torch.float32,
              horizon=100, alpha=0.1, **extra):
    family = registry.make_family("navigation2d", horizon=horizon)
    learner = registry.make_learner(preset)
    hp = HParams(alpha=alpha, beta=1e-3, meta_batch=meta_batch, extra=extra)
    model = GaussianMLP((2, *hidden, 2))
    return Setup(family, learner, hp, model, train_shots=shots, queries=queries, dtype=dtype)


def tiny_meta_batch(preset="maml-trpo", seed=0, **kw):
    """A tiny float64 policy (2-5-4-2), its meta-parameters moved off init, and one collected meta-batch
    (support trajectories, the graph-free adaptation, query trajectories): the meta-objective is then
    a deterministic function of the meta-parameters."""
    setup = nav_setup(preset, hidden=(5, 4), meta_batch=3, shots=4, queries=3, dtype=D, horizon=12, **kw)
    g = torch.Generator().manual_seed(seed)
    params = setup.learner.init(setup, g)
    params = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=D) for k, v in params.items()}
    return setup, params, collect(setup, params, g)
