"""Episodes per second of the black-box learners, training and evaluation, with MAML measured in the
same run (medians over repeats, one CPU thread, the papers' default sizes).

    python bench/bench_blackbox.py                                   # 10-shot sine, meta-batch 25
    python bench/bench_blackbox.py --meta-batch 4 --steps 50         # the families-sine budget's batch
    python bench/bench_blackbox.py --task omniglot --data-root DIR --shots 1 --queries 5 --meta-batch 4 \\
        --learners maml,mann,snail,metanet,cnp,meta-lstm --steps 5

Training: `steps` outer steps (meta-gradient and Adam update on fresh meta-batches) per repeat, after
two warm-up steps; episodes/s = meta-batch x steps / seconds. Evaluation: `evaluate` on `eval-tasks`
fixed tasks at the training shots (inner-loop learners: `inner-steps` steps; the others: their one
output). The ratio column is against MAML in the same run. On a shared machine the medians move by
tens of percent between runs: compare ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from metasweep.core import HParams, registry
from metasweep.core.evaluate import evaluate
from metasweep.core.meta import outer_step
from metasweep.core.setup import Setup
from metasweep.core.state import init_state


def make_setup(args, preset: str) -> Setup:
    if args.task == "omniglot":
        family = registry.make_family("omniglot", data_root=args.data_root, ways=args.ways,
                                      splits=[int(s) for s in args.splits.split(",")])
    else:
        family = registry.make_family(args.task)
    learner = registry.make_learner(preset)
    hp = HParams(alpha=args.alpha, beta=1e-3, meta_batch=args.meta_batch, inner_steps=args.inner_steps)
    return Setup(family, learner, hp, train_shots=args.shots, queries=args.queries, engine="auto")


def time_training(setup: Setup, steps: int, repeats: int) -> float:
    state = init_state(setup, 0)
    for _ in range(2):
        outer_step(setup, state)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            outer_step(setup, state)
        rates.append(setup.hp.meta_batch * steps / (time.perf_counter() - t0))
    return statistics.median(rates)


def time_evaluation(setup: Setup, n_tasks: int, steps: int, repeats: int) -> float:
    params = init_state(setup, 0).params
    evaluate(setup, params, n_tasks=min(n_tasks, 4), shots=(setup.train_shots,), steps=(steps,))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        evaluate(setup, params, n_tasks=n_tasks, shots=(setup.train_shots,), steps=(steps,))
        rates.append(n_tasks / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="sine", choices=("sine", "polynomial", "omniglot"))
    ap.add_argument("--data-root", default="")
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--splits", default="200,40,52", help="omniglot: train,val,test characters")
    ap.add_argument("--learners", default="maml,mann,snail,cnp,meta-lstm")
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--meta-batch", type=int, default=25)
    ap.add_argument("--inner-steps", type=int, default=1)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--steps", type=int, default=20, help="timed outer steps per repeat")
    ap.add_argument("--eval-tasks", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for preset in args.learners.split(","):
        setup = make_setup(args, preset)
        train_rate = time_training(setup, args.steps, args.repeats)
        eval_rate = time_evaluation(setup, args.eval_tasks, args.inner_steps, args.repeats)
        rows.append((preset, train_rate, eval_rate))
        print(f"  {preset}: train {train_rate:.1f} episodes/s, eval {eval_rate:.1f} episodes/s", flush=True)
    base = {r[0]: r for r in rows}.get("maml")
    print(f"\n{args.task}, {args.shots}-shot, {args.queries} queries, meta-batch {args.meta_batch}, "
          f"{args.inner_steps} inner step(s), 1 thread, median of {args.repeats}")
    print("| learner | train episodes/s | vs MAML | eval episodes/s | vs MAML |\n|---|---|---|---|---|")
    for preset, tr, ev in rows:
        ratio = (f"{tr / base[1]:.2f}x", f"{ev / base[2]:.2f}x") if base else ("-", "-")
        print(f"| {preset} | {tr:.1f} | {ratio[0]} | {ev:.1f} | {ratio[1]} |")


if __name__ == "__main__":
    main()
