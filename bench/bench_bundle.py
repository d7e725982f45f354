"""Bundles against separate trials: member-meta-steps/s and peak memory per member (issue 15).

For each case, in one run: B members trained as one bundle (core.bundle, each mode) and the same B
members trained one after another as separate trials (core.train, the batched engine, as a trial
runs alone), both on one thread; medians over rounds and the ratio of the medians. Peak RSS is
measured in fresh subprocesses (one trial alone vs one bundle of B), per member.

    python bench/bench_bundle.py                       # sine MAML and MT-net, meta-batch 25 and 4, B = 8
    python bench/bench_bundle.py --members 8 --meta-batch 4 --variants maml --modes fold --rounds 5
    python bench/bench_bundle.py --conv                # also the Omniglot-shaped conv net (5-way 1-shot)
    python bench/bench_bundle.py --processes 2 --meta-batch 25 --modes fold --rounds 3   # both cores at once
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from metasweep.core import HParams, get_variant
from metasweep.core.bundle import Member, bundle_step
from metasweep.core.meta import outer_step
from metasweep.core.setup import Setup
from metasweep.core.state import init_state
from metasweep.core.tasks import Sine
from metasweep.core.tasks.synthetic import SyntheticImages

FLOATS = ("alpha", "beta", "temperature", "zeta_init")


def make_setup(variant: str, meta_batch: int, conv: bool) -> Setup:
    if conv:
        return Setup(SyntheticImages(ways=5), get_variant(variant), HParams(alpha=0.4, meta_batch=meta_batch),
                     train_shots=1, queries=5, engine="batched")
    return Setup(Sine(), get_variant(variant), HParams(meta_batch=meta_batch), train_shots=10, queries=10,
                 engine="batched")


def separate(setup: Setup, members: int, steps: int) -> float:
    """member-meta-steps/s of `members` trials trained one after another."""
    states = [init_state(setup, seed) for seed in range(members)]
    for st in states:
        outer_step(setup, st)  # warm-up
    t = time.perf_counter()
    for st in states:
        for _ in range(steps):
            outer_step(setup, st)
    return members * steps / (time.perf_counter() - t)


def bundled(setup: Setup, members: int, steps: int, mode: str) -> float:
    ms = [Member(setup, init_state(setup, seed)) for seed in range(members)]
    bundle_step(ms, mode, FLOATS)  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        bundle_step(ms, mode, FLOATS)
    return members * steps / (time.perf_counter() - t)


def peak_rss_mb(variant: str, meta_batch: int, conv: bool, members: int, mode: str | None, steps: int) -> float:
    """Peak RSS (MiB) of a fresh process training one trial (mode None) or one bundle."""
    code = f"""
import resource, torch
torch.set_num_threads(1)
import sys; sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
from bench_bundle import make_setup, separate, bundled
s = make_setup({variant!r}, {meta_batch}, {conv})
separate(s, 1, {steps}) if {mode!r} is None else bundled(s, {members}, {steps}, {mode!r})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def concurrent_rate(variant: str, meta_batch: int, members: int, mode: str | None, steps: int,
                    processes: int) -> float:
    """Member-meta-steps/s of `processes` fresh processes at once (one thread each: one per core), each
    training one bundle of `members` (or, mode None, one trial alone): every process waits for a common
    start after its warm-up; total member-steps over the wall time from that start to the last end."""
    start = time.time() + 8.0  # after every process has imported torch and warmed up
    code = f"""
import time, torch
torch.set_num_threads(1)
import sys; sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
from bench_bundle import make_setup
from metasweep.core.bundle import Member, bundle_step
from metasweep.core.meta import outer_step
from metasweep.core.state import init_state
s = make_setup({variant!r}, {meta_batch}, False)
mode = {mode!r}
if mode is None:
    st = init_state(s, 0)
    step = lambda: outer_step(s, st)
else:
    ms = [Member(s, init_state(s, seed)) for seed in range({members})]
    step = lambda: bundle_step(ms, mode, {FLOATS!r})
for _ in range(5):
    step()
time.sleep(max(0.0, {start} - time.time()))
for _ in range({steps}):
    step()
print(time.time())
"""
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    ends = [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    per_process = members if mode is not None else 1
    return processes * per_process * steps / (max(ends) - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--meta-batch", type=int, nargs="*", default=[25, 4])
    ap.add_argument("--variants", nargs="*", default=["maml", "mt-net"])
    ap.add_argument("--modes", nargs="*", default=["fold", "vmap"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--conv", action="store_true", help="also the Omniglot-shaped conv net (synthetic images)")
    ap.add_argument("--processes", type=int, default=0,
                    help="also: this many processes at once (one per core), each one fold bundle of --members, against "
                         "as many separate trials at once; total member-meta-steps/s (dense net)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {args.members} members, {args.rounds} rounds x {args.steps} steps")
    cases = [(v, mb, False) for v in args.variants for mb in args.meta_batch]
    if args.conv:
        cases += [(v, 4, True) for v in args.variants]
    results = []
    for variant, mb, conv in cases:
        setup = make_setup(variant, mb, conv)
        steps = max(2, args.steps // (20 if conv else 1))
        sep = [separate(setup, args.members, steps) for _ in range(args.rounds)]
        line = {"variant": variant, "meta_batch": mb, "net": "conv" if conv else "dense",
                "separate": statistics.median(sep)}
        for mode in args.modes:
            line[mode] = statistics.median(bundled(setup, args.members, steps, mode) for _ in range(args.rounds))
        line["rss_single_mb"] = peak_rss_mb(variant, mb, conv, args.members, None, steps)
        best = max(args.modes, key=lambda m: line[m])
        line["rss_bundle_per_member_mb"] = peak_rss_mb(variant, mb, conv, args.members, best, steps) / args.members
        results.append(line)
        ratios = ", ".join(f"{m} {line[m]:.0f} ({line[m] / line['separate']:.2f}x)" for m in args.modes)
        print(f"{line['net']:5s} {variant:8s} meta-batch {mb:2d}: separate {line['separate']:.0f}, {ratios} "
              f"member-steps/s; peak RSS {line['rss_single_mb']:.0f} MiB alone, "
              f"{line['rss_bundle_per_member_mb']:.0f} MiB per member in a {best} bundle")
    if args.processes:
        for variant in args.variants:
            for mb in args.meta_batch:
                steps = args.steps * 10
                rates = {m: statistics.median(concurrent_rate(variant, mb, args.members, m, steps * (1 if m else 4),
                                                              args.processes) for _ in range(args.rounds))
                         for m in (None, "fold")}
                results.append({"variant": variant, "meta_batch": mb, "processes": args.processes,
                                "separate_at_once": rates[None], "fold_at_once": rates["fold"]})
                print(f"{args.processes} processes at once, {variant} meta-batch {mb}: one trial each "
                      f"{rates[None]:.0f}, one fold bundle of {args.members} each {rates['fold']:.0f} "
                      "member-steps/s in all")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
