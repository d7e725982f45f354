"""metasweep.core: the meta-learning math (tasks, cells, variants, inner loop, outer loop,
evaluation, checkpoint state). Pure torch; no Ray, no files except `state.save/load`."""

from .variants import PRESETS, Variant, VariantError, get_variant
from .hparams import HParams

__all__ = ["PRESETS", "Variant", "VariantError", "get_variant", "HParams"]
