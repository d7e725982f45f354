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
