"""Investigate where our Table 1 differs from the paper, from the trained models' final checkpoints
(no retraining): per-seed losses, sampled vs thresholded masks at evaluation, mask fractions.

    python docs/reproduction/investigate_table1.py docs/reproduction/table1/results/table1-full
"""

import json
import sys
from pathlib import Path

import torch

from metasweep.analysis.summary import summarize
from metasweep.core.evaluate import evaluate
from metasweep.core.state import load_state
from metasweep.sweeps.trial import TrialConfig, build_setup

torch.set_num_threads(1)
exp = Path(sys.argv[1])
rows = []
for trial_dir in sorted((exp / "ray" / "test").glob("metasweep_trainable_*")):
    cfg = TrialConfig.from_dict(json.loads((trial_dir / "params.json").read_text())["point"]["trial"])
    last = sorted(trial_dir.glob("checkpoint_*"))[-1]
    setup = build_setup(cfg)
    state = load_state(setup, last / "state.pt")
    out = {"variant": cfg.variant, "seed": cfg.seed, "step": state.step}
    modes = ("sample", "threshold") if setup.variant.masked else ("sample",)
    for mode in modes:
        cols = evaluate(setup, state.params, split="test", eval_seed=cfg.eval_seed, n_tasks=600, shots=(5, 10, 20),
                        steps=(1,), mask_eval=mode)
        out[mode] = {r["shots"]: round(r["mean"], 3) for r in summarize(cols)}
    diag = setup.learner.diagnostics(setup, state.params)
    frac, per_cell = diag["mask_fraction"], diag["mask_fraction_per_cell"]
    out["mask_fraction"] = None if frac is None else [round(frac, 3), [round(p, 3) for p in per_cell]]
    if setup.variant.transform:
        out["T_norms"] = [round(float(torch.linalg.matrix_norm(state.params[f"c{i}.T"], 2)), 2) for i in range(3)]
    rows.append(out)
    print(json.dumps(out))
