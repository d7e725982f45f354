"""Sweep overhead: what Ray Tune + our trainable cost per trial, against the same trials run in a
plain in-process loop (no Ray), both measured in this run; and the fraction of core-seconds spent
computing (training, validation, evaluation) in a quickstart sweep, its bundles counted once.

    python bench/bench_sweep.py [--trials 24] [--repeats 3] [--skip-quickstart] [--only-quickstart]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

TRIVIAL = """
experiment: overhead{rep}
mode: grid
variants: [maml]
budget: {{meta_steps: 10, report_every: 5, meta_batch: 5}}
eval: {{shots: [5], inner_steps: [1], tasks: 10, val_tasks: 5}}
grid: {{alpha: [0.01]}}
test: {{seeds: [{seeds}]}}
max_concurrent: 2
storage: {storage}
"""


def plain_loop(spec_path: str, storage: str) -> float:
    """The same trials, one after another in this process, rows written the same way."""
    from metasweep.analysis.store import write_trial
    from metasweep.sweeps.plan import grid_trial_configs
    from metasweep.sweeps.spec import load_spec
    from metasweep.sweeps.trial import run_trial

    spec, _, _ = load_spec(spec_path)
    t0 = time.perf_counter()
    for i, (_, cfg) in enumerate(grid_trial_configs(spec)):
        r = run_trial(cfg, trial_id=f"plain-{i}", stage="grid")
        write_trial(storage, r.trial_row, r.curves, r.eval_tasks)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-quickstart", action="store_true")
    ap.add_argument("--only-quickstart", action="store_true")
    ap.add_argument("--json", help="also write the measured numbers to this JSON file (bench/compare_trees.py)")
    args = ap.parse_args()
    numbers: dict = {"ray_start_s": None}
    torch.set_num_threads(1)
    import ray

    from metasweep.analysis.store import read_dataset
    from metasweep.sweeps.experiment import experiment_uri
    from metasweep.sweeps.run import run_experiment
    from metasweep.sweeps.session import init_ray
    from metasweep.sweeps.spec import load_spec
    from metasweep.sweeps.stages import Run

    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    t0 = time.perf_counter()
    init_ray(None)
    ray_start = time.perf_counter() - t0
    numbers["ray_start_s"] = ray_start
    sweep_times, plain_times = [], []
    for rep in range(0 if args.only_quickstart else args.repeats):
        spec_path = tmp / f"overhead{rep}.yaml"
        spec_path.write_text(TRIVIAL.format(rep=rep, seeds=", ".join(map(str, range(args.trials))),
                                            storage=tmp / "res"))
        spec, _, h = load_spec(str(spec_path))
        exp_uri = experiment_uri(spec.storage, spec.experiment)
        t0 = time.perf_counter()
        run_experiment(Run(spec, exp_uri, h, {"cells": {}}))
        sweep_times.append(time.perf_counter() - t0)
        assert read_dataset(exp_uri)["trials"].num_rows == args.trials
        plain_times.append(plain_loop(str(spec_path), str(tmp / f"plain{rep}")))
    ray.shutdown()

    if not args.only_quickstart:
        n, conc = args.trials, 2
        sweep_med, plain_med = statistics.median(sweep_times), statistics.median(plain_times)
        per_trial_plain = plain_med / n
        overhead = (sweep_med * conc - plain_med) / n  # core-seconds per trial beyond the training itself
        print(f"{n} trivially short trials (10 meta-steps each), 2 concurrent, median of {args.repeats}:")
        print(f"  ray start (once): {ray_start:.1f} s")
        print(f"  sweep (Tuner.fit + rows): {sweep_med:.2f} s  -> {sweep_med / n:.3f} s wall per trial")
        print(f"  plain loop, same trials:  {plain_med:.2f} s  -> {per_trial_plain:.3f} s per trial")
        print(f"  overhead per trial (core-seconds, sweep x 2 slots - plain): {overhead:.3f} s")
        numbers.update(sweep_s=sweep_med, plain_s=plain_med, overhead_per_trial_s=overhead)

    if not args.skip_quickstart:
        qs = Path(__file__).resolve().parents[1] / "sweeps" / "specs" / "quickstart.yaml"
        init_ray(None)
        spec, _, h = load_spec(str(qs))
        exp_uri = experiment_uri(str(tmp / "qs"), spec.experiment)
        t0 = time.perf_counter()
        run_experiment(Run(spec, exp_uri, h, {"cells": {}}))
        wall = time.perf_counter() - t0
        ray.shutdown()
        trials = read_dataset(exp_uri)["trials"].to_pylist()
        # the members of a bundle share one computation (and its start time): count it once, from its
        # start (in the trial's process, its imports done) to its last member's final row (training,
        # validation, the final evaluation, and the rows and checkpoints written at reports); a trial
        # run alone is a bundle of one. (`wall_seconds` alone would leave out the final evaluation.)
        bundles: dict = {}
        training: dict = {}  # training and validation alone (the trials' wall_seconds)
        for t in trials:
            key = (t["stage"], t["variant"], t["started_at"])
            span = (t["ended_at"] - t["started_at"]).total_seconds()
            bundles[key] = max(bundles.get(key, 0.0), span)
            training[key] = max(training.get(key, 0.0), t["wall_seconds"])
        busy, train_busy = sum(bundles.values()), sum(training.values())
        print(f"quickstart sweep ({len(trials)} trials in {len(bundles)} computations): {wall:.1f} s wall on 2 "
              f"cores; the computations ran {busy:.1f} core-seconds (training, validation, evaluation) = "
              f"{busy / (2 * wall):.0%} of the {2 * wall:.0f} core-seconds (the rest: Ray start and scheduling, "
              "Tune's bookkeeping, starting trial processes, the driver's stage transitions)")
        print(f"  of which training and validation alone (wall_seconds): {train_busy:.1f} core-seconds = "
              f"{train_busy / (2 * wall):.0%}")
        numbers.update(quickstart_wall_s=wall, quickstart_busy_core_s=busy, quickstart_busy_share=busy / (2 * wall),
                       quickstart_training_core_s=train_busy, quickstart_training_share=train_busy / (2 * wall))
    if args.json:
        Path(args.json).write_text(json.dumps(numbers))


if __name__ == "__main__":
    main()
