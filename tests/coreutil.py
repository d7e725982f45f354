"""Small helpers for core tests (imported as `from coreutil import ...`, like raynode)."""

import torch

from metasweep.core import HParams
from metasweep.core.setup import Setup
from metasweep.core.tasks import Sine


def learner_params(model, variant, generator, dtype=torch.float32, hp=None, family=None):
    """The meta-parameters a variant's learner initialises on `model` (the model's W, b, plus T, zeta,
    Meta-SGD's alpha as the variant asks)."""
    setup = Setup(family or Sine(), variant, hp or HParams(), model=model, dtype=dtype)
    return setup.learner.init(setup, generator)


def central_fd(f, params, h=1e-6):
    """Central finite differences of a scalar function of a params dict, one entry at a time."""
    out = {}
    for k, v in params.items():
        gk = torch.zeros_like(v)
        flat = gk.view(-1)
        for i in range(v.numel()):
            plus, minus = v.clone(), v.clone()
            plus.view(-1)[i] += h
            minus.view(-1)[i] -= h
            flat[i] = (f({**params, k: plus}) - f({**params, k: minus})) / (2 * h)
        out[k] = gk
    return out
