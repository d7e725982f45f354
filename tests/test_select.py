"""eval.select (core.train.SELECTIONS): which iterate a trial evaluates. The kept iterate is the
one a fresh run stopped at its step would have (bit for bit, CPU), chosen by its report's validation
or meta-training loss, kept across a checkpoint, and what the trial's rows evaluate."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from metasweep.core.state import init_state, state_from_bytes
from metasweep.core.train import SELECTIONS, selected, train
from metasweep.sweeps.trial import TrialConfig, build_setup, run_trial

STEPS, EVERY = 30, 10


def cfg(**kw):
    base = dict(variant="maml", meta_batch=4, meta_steps=STEPS, report_every=EVERY, val_tasks=5, beta=0.01,
                hidden=(20, 20), eval_tasks=8, eval_shots=(5, 10), eval_steps=(1,), device="cpu")
    return TrialConfig(**{**base, **kw})


def trained(c: TrialConfig, steps: int, select: str):
    setup = build_setup(c)
    state = init_state(setup, c.seed)
    train(setup, state, steps, report_every=c.report_every, val_tasks=c.val_tasks, select=select)
    return setup, state


def test_the_selections_pick_the_report_with_the_lowest_loss_and_its_exact_parameters():
    chosen = {}
    for select, key in (("best_val", "val_loss"), ("best_train", "meta_train_loss")):
        setup, state = trained(cfg(), STEPS, select)
        values = [r[key] for r in state.curves]
        first_best = state.curves[int(np.argmin(values))]  # ties: the earlier report
        params, step = selected(state, select)
        assert step == first_best["meta_step"] and state.best["value"] == first_best[key]
        chosen[select] = step
        # the same seed stopped at that step: the same parameters, bit for bit
        _, alone = trained(cfg(), step, "last")
        for name in alone.params:
            assert torch.equal(params[name], alone.params[name]), (select, name)
        if step != STEPS:  # an earlier iterate: not the parameters training ended with
            assert any(not torch.equal(params[n], state.params[n]) for n in params)
    assert any(step != STEPS for step in chosen.values()), chosen  # the case exercises an earlier iterate
    _, last = trained(cfg(), STEPS, "last")
    assert last.best is None and selected(last, "last")[1] == STEPS


def test_a_non_finite_report_is_never_kept():
    from metasweep.core.train import keep_if_best

    setup, state = trained(cfg(), EVERY, "best_val")
    kept = state.best
    keep_if_best(state, {"meta_step": 99, "val_loss": float("nan"), "meta_train_loss": float("-inf")}, "best_val")
    keep_if_best(state, {"meta_step": 99, "val_loss": float("nan"), "meta_train_loss": float("-inf")}, "best_train")
    assert state.best is kept and set(SELECTIONS) == {"last", "best_val", "best_train"}


@pytest.mark.parametrize("select", ["best_val", "best_train"])
def test_the_kept_iterate_survives_a_checkpoint_exactly(select):
    setup, whole = trained(cfg(), STEPS, select)
    _, half = trained(cfg(), 2 * EVERY, select)
    resumed = state_from_bytes(setup, half.to_bytes())
    train(setup, resumed, STEPS, report_every=EVERY, val_tasks=5, select=select)
    assert resumed.best["step"] == whole.best["step"] and resumed.best["value"] == whole.best["value"]
    for name, p in whole.best["params"].items():
        assert torch.equal(resumed.best["params"][name], p)


@pytest.mark.parametrize("select", ["best_val", "best_train"])
def test_a_trial_evaluates_and_records_the_selected_iterate(select):
    r = run_trial(cfg(select=select), trial_id="t")
    key = {"best_val": "val_loss", "best_train": "meta_train_loss"}[select]
    i = int(np.argmin(r.curves[key]))
    step = r.curves["meta_step"][i]
    assert r.status == "completed" and r.trial_row["selected_step"] == step and r.trial_row["meta_steps"] == STEPS
    assert r.trial_row["final_val_loss"] == r.curves["val_loss"][i]
    # its eval rows are those of the same trial trained only to that step
    alone = run_trial(cfg(meta_steps=step), trial_id="t")
    assert alone.trial_row["selected_step"] == step
    np.testing.assert_array_equal(np.asarray(r.eval_tasks["loss"]), np.asarray(alone.eval_tasks["loss"]))
    assert len(r.curves["meta_step"]) == STEPS // EVERY  # every report's curve row is kept


def test_the_spec_names_a_wrong_selection_and_the_allowed_ones(tmp_path):
    (tmp_path / "s.yaml").write_text("experiment: s\nvariants: [maml]\neval: {select: best}\n")
    r = subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", "check", "s.yaml"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "s.yaml" in r.stderr and "eval.select" in r.stderr and "'last', 'best_val' or 'best_train'" in r.stderr


def test_the_report_says_which_iterates_were_evaluated():
    from metasweep.analysis.report import provenance

    rows = [run_trial(cfg(select="best_train", seed=s), trial_id=f"t{s}").trial_row for s in (0, 1, 2)]
    steps = sorted(r["selected_step"] for r in rows)
    line = next(li for li in provenance(rows) if li.startswith("Evaluated iterate: "))
    assert line == (f"Evaluated iterate: best_train (eval.select); the meta-step each of the 3 evaluated trials was "
                    f"tested at: {steps[0]}-{steps[-1]} (median {steps[1]}), of {STEPS}")
    assert not any(li.startswith("Evaluated iterate") for li in provenance([run_trial(cfg(), trial_id="x").trial_row]))


def test_metasweep_train_says_which_iterate_it_evaluated(tmp_path):
    r = subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", "train", "--task", "sine", "--variant", "maml",
                        "--meta-steps", str(STEPS), "--report-every", str(EVERY), "--meta-batch", "4", "--beta", "0.01",
                        "--val-tasks", "5", "--eval-tasks", "8", "--eval-steps", "1",
                        "--select", "best_train", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    from metasweep.analysis.store import read_dataset

    ds = read_dataset(str(tmp_path / "out"))
    row, curves = ds["trials"].to_pylist()[0], ds["curves"].to_pylist()
    best = min(curves, key=lambda c: c["meta_train_loss"])
    assert row["selected_step"] == best["meta_step"]
    assert (f"evaluated: the iterate of meta-step {best['meta_step']}, the lowest meta-training loss of the reports "
            f"({best['meta_train_loss']:.4f}; eval.select best_train)") in " ".join((r.stdout + r.stderr).split())
