"""A one-trial summary of evaluation rows: mean ± 95% CI per (shots, inner steps) (what
`metasweep train` prints). The interval is stats.mean_ci's (the papers' convention); a setting with
a non-finite value (an adapted loss that overflowed) is reported as NaN with its count, not averaged."""

from __future__ import annotations

import numpy as np

from .stats import mean_ci


def summarize(cols: dict, metric: str = "loss") -> list[dict]:
    """cols: column arrays of eval rows (shots, inner_steps, `metric`); one dict per (shots,
    inner_steps): n, mean, ci95, nonfinite (the count of non-finite values)."""
    out = []
    shots, steps = np.asarray(cols["shots"]), np.asarray(cols["inner_steps"])
    for k, s in sorted(set(zip(shots.tolist(), steps.tolist()))):
        v = np.asarray(cols[metric], dtype=float)[(shots == k) & (steps == s)]
        bad = int((~np.isfinite(v)).sum())
        mean, ci = mean_ci(v) if not bad else (float("nan"), float("nan"))
        out.append({"shots": k, "inner_steps": s, "n": len(v), "mean": mean, "ci95": ci, "nonfinite": bad})
    return out
