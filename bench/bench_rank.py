"""Benchmark: `compute_ranking` on a ~10 million row eval_tasks table.

Synthetic test stage: 10 variants x 10 seeds (100 trials) x 3 evaluation shot counts x ~33k tasks
at one number of inner steps = ~10M eval rows. Trials rows go through `store.write_table` (one file
per trial, as a sweep writes them); the eval rows are written with pyarrow directly, one Parquet file
per trial in the store layout (`eval_tasks/<trial_id>__a0.parquet`).

Prints the median wall time of `compute_ranking` over repeats, the median of `read_dataset` alone (the
I/O floor, measured in the same run) and their ratio, and the peak resident memory of a fresh
subprocess that runs `compute_ranking` once (ru_maxrss). Target: <= 2 s on a 2-core machine.

    python bench/bench_rank.py                       # ~10M rows, 3 repeats, temporary folder
    python bench/bench_rank.py --tasks 2000          # a quick run
    python bench/bench_rank.py --root /tmp/br --keep # keep (and reuse) the dataset
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from metasweep.analysis.store import SCHEMAS, write_table

SHOTS = (5, 10, 20)


def variant_names(n: int) -> list[str]:
    base = ["maml", "fomaml", "reptile", "meta-sgd", "anil", "t-net", "m-net", "m-net-full", "mt-net", "mt-net-full"]
    return (base + [f"variant-{i}" for i in range(len(base), n)])[:n]


def write_dataset(root: str, n_variants: int, n_seeds: int, n_tasks: int) -> int:
    """Losses = task difficulty (shared by all variants) + variant shift + seed effect + noise."""
    rng = np.random.default_rng(0)
    now = dt.datetime.now(dt.timezone.utc)
    difficulty = {s: rng.gamma(2.0, 0.5, size=n_tasks) / (s / 5) for s in SHOTS}
    task_index = np.tile(np.arange(n_tasks, dtype=np.int32), len(SHOTS))
    shots = np.repeat(np.array(SHOTS, dtype=np.int32), n_tasks)
    base = np.concatenate([difficulty[s] for s in SHOTS])
    n = task_index.size
    schema = SCHEMAS["eval_tasks"]
    os.makedirs(f"{root}/eval_tasks", exist_ok=True)
    rows = 0
    for vi, variant in enumerate(variant_names(n_variants)):
        for seed in range(n_seeds):
            tid = f"test-{variant}-s{seed}"
            loss = base * (1 + 0.02 * vi) + 0.05 * rng.standard_normal() + 0.1 * rng.standard_normal(n)
            table = pa.table({
                "trial_id": pa.array([tid] * n, pa.string()), "attempt": pa.array(np.zeros(n, np.int32)),
                "split": pa.array(["test"] * n), "eval_seed": pa.array(np.ones(n, np.int64)),
                "task_index": pa.array(task_index), "shots": pa.array(shots),
                "inner_steps": pa.array(np.ones(n, np.int32)), "mask_eval": pa.nulls(n, pa.string()),
                "loss": pa.array(loss), "accuracy": pa.nulls(n, pa.float64()),
            }, schema=schema)
            pq.write_table(table, f"{root}/eval_tasks/{tid}__a0.parquet")
            rows += n
            config = {"alpha": 0.01, "beta": 0.001, "inner_steps": 1, "meta_batch": 25, "meta_steps": 1000}
            write_table(root, "trials", {k: [v] for k, v in {
                "experiment": "bench", "stage": "test", "trial_id": tid, "attempt": 0, "variant": variant,
                "task_family": "sine", "task_options": "{}", "train_shots": 10, "seed": seed, "alpha": 0.01,
                "beta": 0.001, "inner_steps": 1, "meta_batch": 25, "config": json.dumps(config),
                "status": "completed", "meta_steps": 1000, "started_at": now, "ended_at": now}.items()}, tid, 0)
            write_table(root, "curves", {"meta_step": [1000], "val_loss": [float(loss[:100].mean())],
                                         "trial_id": [tid], "attempt": [0]}, tid, 0)
    return rows


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


_PEAK = """
import resource, sys
{body}
hwm = next((int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")), 0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm)
"""


def peak_rss_mib(body: str) -> tuple[float, float]:
    """(ru_maxrss, VmHWM) in MiB of a fresh interpreter running `body`. On Linux ru_maxrss also counts
    the RSS the parent had when it forked (kept across exec), so VmHWM (this process image only) is
    the honest number; both are printed, and the parent is kept small by measuring first."""
    res = subprocess.run([sys.executable, "-c", _PEAK.format(body=body)], capture_output=True, text=True,
                         check=True)
    maxrss, hwm = res.stdout.split()[-2:]
    return int(maxrss) / 1024, int(hwm) / 1024  # both KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--tasks", type=int, default=33_334, help="tasks per (trial, shots)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--root", default=None, help="dataset folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the dataset; reuse it if --root already has one")
    args = ap.parse_args()

    from metasweep.analysis.ranking import compute_ranking
    from metasweep.analysis.store import exists, read_dataset

    root = args.root or tempfile.mkdtemp(prefix="bench_rank_")
    try:
        if args.keep and exists(root):
            print(f"reusing {root}")
        else:
            t0 = time.perf_counter()
            rows = write_dataset(root, args.variants, args.seeds, args.tasks)
            print(f"wrote {rows:,} eval_tasks rows ({args.variants} variants x {args.seeds} seeds x "
                  f"{len(SHOTS)} shots x {args.tasks:,} tasks) to {root} in {time.perf_counter() - t0:.1f}s")
        # memory first, while this process is still small (see peak_rss_mib)
        mem = peak_rss_mib(f"from metasweep.analysis.ranking import compute_ranking\ncompute_ranking({root!r})")
        mem0 = peak_rss_mib("import metasweep.analysis.ranking")
        r = compute_ranking(root)  # warm-up (page cache), and a sanity check
        assert len(r.variants) == args.variants and len(r.settings) == len(SHOTS), (r.variants, r.settings)
        t_rank = timed(lambda: compute_ranking(root), args.repeats)
        t_read = timed(lambda: read_dataset(root), args.repeats)
        med_rank, med_read = statistics.median(t_rank), statistics.median(t_read)
        print(f"compute_ranking: median {med_rank:.2f}s over {args.repeats} runs "
              f"({', '.join(f'{t:.2f}' for t in t_rank)})")
        print(f"read_dataset alone (baseline, all three tables): median {med_read:.2f}s "
              f"({', '.join(f'{t:.2f}' for t in t_read)})")
        print(f"ratio compute_ranking / read_dataset: {med_rank / med_read:.2f}")
        print(f"peak memory of a subprocess running compute_ranking once: VmHWM {mem[1]:.0f} MiB, "
              f"ru_maxrss {mem[0]:.0f} MiB (imports alone: VmHWM {mem0[1]:.0f} MiB, ru_maxrss {mem0[0]:.0f} MiB)")
        print("target <= 2 s:", "met" if med_rank <= 2.0 else "NOT met")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
