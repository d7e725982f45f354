"""metasweep.core: the meta-learning math (tasks, cells, variants, inner loop, outer loop,
evaluation, checkpoint state). Pure torch; no Ray, no files except `state.save/load`."""

from .hparams import HParams
from .variants import PRESETS, Variant, VariantError, get_variant

__all__ = ["PRESETS", "Variant", "VariantError", "get_variant", "HParams"]
