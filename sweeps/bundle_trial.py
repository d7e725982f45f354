"""A bundle of trials, Ray-free: several trial configurations trained as one computation
(core.bundle), each still its own trial with its own rows.

`bundle_groups` splits a stage's configurations into bundles (members share everything but their
seed and float hyper-parameters); `run_bundle` is `run_trial` for a bundle: it builds and checks each
member (a member the core refuses is an errored row; the others go on), trains them together,
evaluates the completed ones on the shared tasks in one pass, and returns one TrialResult per member
with the rows `run_trial` would have written for it alone (same trial ids, same columns; values to
float rounding, or bit for bit in "loop" mode).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from metasweep.core.bundle import Member, train_bundle
from metasweep.core.evaluate import evaluate_members
from metasweep.core.hparams import HPARAMS
from metasweep.core.state import init_state
from metasweep.core.train import selected

from .trial import (
    TrialConfig,
    TrialResult,
    _cka,
    build_setup,
    check_trial,
    curve_columns,
    evaluated,
    failure,
    now,
    resolve_device,
    trial_row,
)
from .trial import summarize as summarize_rows


def bundle_key(cfg: TrialConfig) -> str:
    """What members of one bundle share (JSON): everything but the seed, the float hyper-parameters
    (a learner's own included) and where those came from."""
    floats = {n for n, d in HPARAMS.items() if d.kind == "float"}
    d = cfg.to_dict()
    d["extra_hparams"] = {k: v for k, v in d["extra_hparams"].items() if k not in floats}
    free = {"seed", "hp_source", "hp_source_trial"} | floats
    return json.dumps({k: v for k, v in d.items() if k not in free}, sort_keys=True, default=str)


def bundle_groups(items: list, size: int, key: Callable = lambda item: item) -> list[list]:
    """`items` (trial configurations, or anything `key` maps to one) in bundles of at most `size`
    members sharing a `bundle_key`, in the order they come (a group's members stay together)."""
    if size < 1:
        raise ValueError(f"bundle size must be >= 1 (got {size})")
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(bundle_key(key(item)), []).append(item)
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def run_bundle(cfgs: list[TrialConfig], *, trial_ids: list[str], experiment: str = "train", stage: str = "single",
               attempts: list[int] | None = None, spec_hash: str = "", states: list | None = None,
               statuses: list[str] | None = None, mode: str = "auto",
               on_report: Callable | None = None, after_reports: Callable | None = None) -> list[TrialResult]:
    """`run_trial` for a bundle of `cfgs` (one `bundle_key`). `states` / `statuses` resume members
    from checkpoints (a member that had ended keeps its status); `on_report(i, member, row)` and
    `after_reports(step)` as in core.bundle.train_bundle (`i` indexes `cfgs`)."""
    if len({bundle_key(c) for c in cfgs}) != 1:
        raise ValueError("a bundle's members must share everything but their seed and float hyper-parameters")
    started, t0 = now(), time.perf_counter()
    attempts = attempts or [0] * len(cfgs)
    ident = [dict(experiment=experiment, stage=stage, trial_id=t, attempt=a, spec_hash=spec_hash, started=started)
             for t, a in zip(trial_ids, attempts)]
    results: list[TrialResult | None] = [None] * len(cfgs)
    members: dict[int, Member] = {}
    for i, cfg in enumerate(cfgs):
        try:
            setup = build_setup(cfg)
            check_trial(cfg, setup)
        except Exception as e:  # a configuration the core refuses: that member's errored row
            row = trial_row(cfg, **ident[i], status="errored", error=f"configuration: {type(e).__name__}: {e}",
                            meta_steps=0, wall_seconds=time.perf_counter() - t0, device=resolve_device(cfg.device))
            results[i] = TrialResult("errored", row, curve_columns([]), {}, [])
            continue
        state = states[i] if states and states[i] is not None else init_state(setup, cfg.seed)
        members[i] = Member(setup, state, statuses[i] if statuses else "running")
    order = sorted(members)
    errors = dict.fromkeys(order, "")
    evals: dict[int, dict] = {}
    phase = "training"
    try:
        train_bundle([members[i] for i in order], cfgs[order[0]].meta_steps if order else 0,
                     report_every=cfgs[0].report_every, val_tasks=cfgs[0].val_tasks, val_seed=cfgs[0].val_seed,
                     mode=mode, select=cfgs[order[0]].select if order else "last",
                     on_report=(lambda j, m, row: on_report(order[j], m, row)) if on_report else None,
                     after_reports=after_reports)
        phase = "evaluation"
        evals = _evaluation(cfgs, members, [i for i in order if members[i].status == "completed"])
    except Exception as e:  # a crash of the bundle's computation: every member still running errors with it
        for i in order:
            if members[i].status in ("running", "completed") and i not in evals:
                members[i].status, errors[i] = "errored", failure(phase, e)
    for i in order:
        results[i] = _result(cfgs[i], members[i], ident[i], evals.get(i, {}), errors[i], t0)
    return results


def _evaluation(cfgs: list[TrialConfig], members: dict, done: list[int]) -> dict[int, dict]:
    """The completed members' eval rows, on the shared tasks in one pass."""
    if not done:
        return {}
    c = cfgs[done[0]]
    cols = evaluate_members([members[i].setup for i in done], [selected(members[i].state, c.select)[0] for i in done],
                            split=c.eval_split, eval_seed=c.eval_seed, n_tasks=c.eval_tasks, shots=c.eval_shots,
                            steps=c.eval_steps, mask_eval=c.mask_eval)
    out = {}
    for i, rows in zip(done, cols):
        n = len(rows["loss"])
        masked = "mask_eval" in members[i].setup.learner.reads()
        out[i] = {**rows, "split": [c.eval_split] * n, "eval_seed": [c.eval_seed] * n,
                  "mask_eval": [c.mask_eval if masked else None] * n}
    return out


def _result(cfg: TrialConfig, m: Member, ident: dict, eval_cols: dict, error: str, t0: float) -> TrialResult:
    """One member's rows, as run_trial writes them (CKA computed here, per member)."""
    status, cka_cols = m.status, {}
    if status == "completed" and cfg.cka_tasks > 0 and hasattr(m.setup.learner, "trajectory"):
        try:
            cka_cols = _cka(cfg, m.setup, m.state)
        except Exception as e:
            status, error = "errored", failure("CKA", e)
    row = trial_row(cfg, **ident, setup=m.setup, status=status, error=error or None, meta_steps=m.state.step,
                    wall_seconds=m.state.extra.get("wall_seconds", time.perf_counter() - t0),
                    **evaluated(cfg, m.state, bool(eval_cols)))
    summary = summarize_rows(eval_cols) if eval_cols else []
    return TrialResult(status, row, curve_columns(m.state.curves), eval_cols, summary, cka_cols)
