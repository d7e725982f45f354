"""Metric-based learners' speed: episodes/s of meta-training and of evaluation, against MAML.

Per learner (Prototypical, Matching with and without FCE, Relation, Siamese networks) and the
baseline (MAML, second order, `--inner-steps` at training and `--eval-steps` at evaluation) on the
project's conv-4, Omniglot-shaped synthetic images by default (28x28 grey, 64 filters, stride 2;
`--task miniimagenet`: 84x84 RGB, 32 filters, max-pool) or real Omniglot episodes (`--data-root`):

- training: full outer steps (episode sampling, objective, gradient, Adam) on meta-batches of
  `--meta-batch` episodes; episodes/s = meta-batch x steps / seconds (a Siamese "episode" is the
  2 x ways x queries verification pairs drawn from one episode);
- evaluation: `core.evaluate.evaluate` of `--eval-tasks` fixed tasks (task construction included
  for every learner alike); episodes/s = tasks / seconds.

Rounds interleave the learners (the machine is shared and noisy); medians over rounds, and each
learner's ratio to the baseline's median measured in the same run. One thread by default.

    python bench/bench_metric.py [--task omniglot] [--ways 5] [--shots 1] [--queries 5]
        [--meta-batch 4] [--steps 3] [--rounds 5] [--eval-tasks 50] [--eval-steps 3]
        [--learners protonet,matching,matching-fce,relation,siamese] [--baseline maml]
        [--threads 1] [--device cpu] [--engine auto] [--data-root DIR --splits 200,40,52 --cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from metasweep.core import HParams, registry
from metasweep.core.conv import ConvNet
from metasweep.core.evaluate import evaluate
from metasweep.core.meta import outer_step
from metasweep.core.setup import Setup
from metasweep.core.state import init_state
from metasweep.core.tasks.synthetic import SyntheticImages


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("omniglot", "miniimagenet"), default="omniglot")
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--meta-batch", type=int, default=4)
    ap.add_argument("--inner-steps", type=int, default=1, help="the baseline's inner steps at training")
    ap.add_argument("--eval-steps", type=int, default=3, help="the baseline's inner steps at evaluation")
    ap.add_argument("--steps", type=int, default=3, help="outer steps per timing")
    ap.add_argument("--eval-tasks", type=int, default=50, help="evaluation tasks per timing")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--learners", default="protonet,matching,matching-fce,relation,siamese")
    ap.add_argument("--baseline", default="maml")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--engine", default="auto", help="batched | vmap | loop | auto (core.setup.auto_engine)")
    ap.add_argument("--data-root", default=None, help="Omniglot folder: real episodes from the decoded cache")
    ap.add_argument("--splits", default=None, help="train,val,test character counts (minimal sets: 200,40,52)")
    ap.add_argument("--cache-dir", default=None)
    return ap.parse_args()


def family_and_model(args):
    if args.data_root:
        from metasweep.core.tasks import Omniglot

        opts = dict(data_root=args.data_root, ways=args.ways, cache_dir=args.cache_dir or "")
        if args.splits:
            opts["splits"] = tuple(int(n) for n in args.splits.split(","))
        family = Omniglot(**opts)
        family.check()  # decode once, outside the timings
        return family, ConvNet.omniglot(args.ways)
    if args.task == "omniglot":
        return SyntheticImages(args.ways, 1, 28), ConvNet.omniglot(args.ways)
    return SyntheticImages(args.ways, 3, 84), ConvNet.miniimagenet(args.ways)


def timed(fn, name: str, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn(name)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    family, model = family_and_model(args)
    names = [args.baseline] + [n for n in args.learners.split(",") if n and n != args.baseline]
    hp = HParams(alpha=0.4, beta=1e-3, inner_steps=args.inner_steps, meta_batch=args.meta_batch)
    setups = {n: Setup(family, registry.make_learner(n), hp, model, args.shots, args.queries, device=args.device,
                       engine=args.engine) for n in names}
    states = {n: init_state(s, 0) for n, s in setups.items()}

    def train_once(n):
        for _ in range(args.steps):
            outer_step(setups[n], states[n])

    def eval_once(n):
        evaluate(setups[n], states[n].params, n_tasks=args.eval_tasks, shots=(args.shots,), steps=(args.eval_steps,))

    for n in names:  # warm-up
        outer_step(setups[n], states[n])
        evaluate(setups[n], states[n].params, n_tasks=2, shots=(args.shots,), steps=(args.eval_steps,))
    train_rate = {n: [] for n in names}
    eval_rate = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            train_rate[n].append(args.meta_batch * args.steps / timed(train_once, n, args.device))
            eval_rate[n].append(args.eval_tasks / timed(eval_once, n, args.device))
    train_med = {n: statistics.median(v) for n, v in train_rate.items()}
    eval_med = {n: statistics.median(v) for n, v in eval_rate.items()}
    base = args.baseline
    print(f"{'learner':<14} {'engine':<8} {'train ep/s':>11} {'x ' + base:>10} {'eval ep/s':>10} {'x ' + base:>10}")
    for n in names:
        print(f"{n:<14} {setups[n].engine:<8} {train_med[n]:>11.1f} {train_med[n] / train_med[base]:>10.2f} "
              f"{eval_med[n]:>10.1f} {eval_med[n] / eval_med[base]:>10.2f}")
    print(json.dumps({"task": args.task, "data": "real" if args.data_root else "synthetic", "ways": args.ways,
                      "shots": args.shots, "queries": args.queries, "meta_batch": args.meta_batch,
                      "baseline": base, "baseline_inner_steps": args.inner_steps, "eval_steps": args.eval_steps,
                      "threads": args.threads, "device": args.device, "rounds": args.rounds,
                      "train_episodes_per_s": {n: round(v, 2) for n, v in train_med.items()},
                      "eval_episodes_per_s": {n: round(v, 2) for n, v in eval_med.items()},
                      "train_ratio_to_baseline": {n: round(train_med[n] / train_med[base], 3) for n in names},
                      "eval_ratio_to_baseline": {n: round(eval_med[n] / eval_med[base], 3) for n in names}}))


if __name__ == "__main__":
    main()
