"""Summaries of the feature-reuse table `cka` (per-layer CKA / SVCCA before vs after the inner
loop, computed inside trials by core.similarity): mean ± 95% CI over tasks per layer."""

from __future__ import annotations

import numpy as np

from .stats import mean_ci


def summarize_cka(cols: dict, measure: str = "cka") -> list[dict]:
    """Mean +- 95% CI over tasks, per layer, of `measure` (cka | cca; NaN values left out)."""
    out = []
    for layer in sorted(set(cols["layer"].tolist())):
        v = np.asarray(cols[measure][cols["layer"] == layer], dtype=float)
        v = v[np.isfinite(v)]
        mean, ci = mean_ci(v) if len(v) else (float("nan"), float("nan"))
        out.append({"layer": int(layer), "n": len(v), "mean": mean, "ci95": ci})
    return out
