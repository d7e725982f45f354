"""Run a grid spec's trials one after another in this process (no Ray, one thread each), with a
shorter budget if asked, then rank them by return: how docs/RL.md's numbers were measured.

    PYTHONPATH=... nice -n 10 python3 docs/rl/measure.py sweeps/specs/rl-anil-navigation.yaml \
        --meta-steps 75 --report-every 15 --out runs/rl-nav

Each trial's rows go to OUT (the dataset `metasweep rank` / `plot` read) as soon as it ends, and its
wall time is printed; trials already in OUT (same trial id, completed) are skipped, so a killed run
continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from metasweep.analysis.ranking import compute_ranking
from metasweep.analysis.render import render
from metasweep.analysis.store import exists, read_trials, write_trial
from metasweep.core.train import SELECTIONS
from metasweep.sweeps.plan import grid_trial_configs
from metasweep.sweeps.spec import load_spec
from metasweep.sweeps.trial import run_trial


def seed_table(out: str) -> str:
    """Markdown: per variant and inner steps, mean +- std (ddof 1) over seeds of the seed's mean return
    over the evaluation tasks (the ANIL paper's Table 1 reports mean +- std over 3 seeds)."""
    from metasweep.analysis.query import query_table

    rows = query_table(out, """
        with per_seed as (select t.variant, e.inner_steps, t.seed, avg(e."return") as r
                          from eval_tasks e join trials t using (trial_id, attempt) where t.status = 'completed'
                          group by all)
        select variant, inner_steps, avg(r) as mean, stddev_samp(r) as std, count(*) as seeds
        from per_seed group by all order by variant desc, inner_steps""").to_pylist()
    lines = ["| variant | inner steps | return (mean ± std over seeds) | seeds |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['inner_steps']} | {r['mean']:.1f} ± {r['std'] or 0:.1f} | {r['seeds']} |"
              for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec")
    ap.add_argument("--out", required=True)
    ap.add_argument("--meta-steps", type=int)
    ap.add_argument("--report-every", type=int)
    ap.add_argument("--seeds", type=str, help="comma-separated, default the spec's")
    ap.add_argument("--variants", type=str, help="comma-separated, default the spec's")
    ap.add_argument("--eval-tasks", type=int)
    ap.add_argument("--meta-batch", type=int)
    ap.add_argument("--shots", type=int, help="trajectories per inner step (train and eval shots)")
    ap.add_argument("--queries", type=int, help="trajectories that measure a return")
    ap.add_argument("--select", choices=list(SELECTIONS), help="the iterate evaluated (eval.select)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec, _, _ = load_spec(args.spec)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    variants = args.variants.split(",") if args.variants else None
    done = set()
    if exists(args.out):
        done = {t["trial_id"] for t in read_trials(args.out).to_pylist() if t["status"] == "completed"}
    for cell, cfg in grid_trial_configs(spec):
        if (seeds is not None and cfg.seed not in seeds) or (variants is not None and cell.variant not in variants):
            continue
        if args.meta_steps:
            cfg.meta_steps = args.meta_steps
        if args.report_every:
            cfg.report_every = min(args.report_every, cfg.meta_steps)
        if args.eval_tasks:
            cfg.eval_tasks = args.eval_tasks
        if args.meta_batch:
            cfg.meta_batch = args.meta_batch
        if args.shots:
            cfg.train_shots, cfg.eval_shots = args.shots, (args.shots,)
        if args.queries:
            cfg.queries = args.queries
        if args.select:
            cfg.select = args.select
        trial_id = f"{cell.variant}-s{cfg.seed}"
        if trial_id in done:
            continue
        t0 = time.perf_counter()

        def progress(state, row, name=trial_id):
            print(f"  {name} step {row['meta_step']}: meta-train return {-row['meta_train_loss']:.2f}, "
                  f"val return {-row['val_loss']:.2f} ({row['wall_seconds']:.0f} s)", flush=True)

        result = run_trial(cfg, trial_id=trial_id, experiment=spec.experiment, stage="grid", on_report=progress)
        write_trial(args.out, {**result.trial_row, "variant": cell.variant}, result.curves, result.eval_tasks)
        print(f"{trial_id}: {result.status} in {time.perf_counter() - t0:.0f} s, evaluated the iterate of step "
              f"{result.trial_row.get('selected_step')} "
              f"{result.trial_row.get('error') or ''}", flush=True)
    print("\n## the papers' convention: mean +- std over seeds of each seed's mean return\n")
    print(seed_table(args.out))
    for steps in sorted(set(spec.eval.inner_steps)):
        r = compute_ranking(args.out, metric="return", inner_steps=steps, baseline=spec.variant_names()[0])
        print(f"\n## return after {steps} inner step(s)\n\n{render(r, 'markdown')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
