"""metasweep.core: the meta-learning math (task families, models, learners behind one protocol,
engines, evaluation, checkpoint state). Pure torch; no Ray, no files except `state.save/load`.

Names (learner kinds, presets, task families, models) live in core.registry."""

from .hparams import HPARAMS, HParamDef, HParams
from .learners import Learner
from .registry import RegistryError, make_family, make_learner
from .variants import PRESETS, Variant, VariantError, get_variant

__all__ = ["PRESETS", "Variant", "VariantError", "get_variant", "HParams", "HParamDef", "HPARAMS", "Learner",
           "RegistryError", "make_family", "make_learner"]
