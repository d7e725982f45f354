"""Core speed: meta-steps/s on 10-shot sine, meta-batch 25, 1 inner step, second order.

Compares, in the same run and interleaved round by round (this machine is noisy): our engines
(batched, vmap) against a plain per-task Python loop of the same math written the way most MAML
code is (autograd.grad(create_graph=True) per task) - the stand-in for learn2learn/higher - and
MT-net against MAML. Also times evaluation of 600 tasks x 3 shot counts x 10 inner steps.
Prints medians over rounds and the ratios.

    python bench/bench_core.py [--rounds 7] [--steps 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from metasweep.core import HParams, get_variant
from metasweep.core.evaluate import evaluate
from metasweep.core.meta import outer_step
from metasweep.core.setup import Setup
from metasweep.core.state import init_state
from metasweep.core.tasks import Sine


def plain_loop_step(setup: Setup, state, opt) -> float:
    """One MAML outer step the common way: a Python loop over tasks, autograd per task."""
    hp = setup.hp
    batch = setup.family.sample(state.generator, hp.meta_batch, setup.train_shots, setup.queries)
    params = state.params
    opt.zero_grad()
    total = 0.0
    for t in range(hp.meta_batch):
        xs, ys, xq, yq = batch.select(t)
        loss = ((setup.model.forward(params, xs) - ys) ** 2).mean()
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        fast = {k: v - hp.alpha * g for (k, v), g in zip(params.items(), grads)}
        total = total + ((setup.model.forward(fast, xq) - yq) ** 2).mean()
    total = total / hp.meta_batch
    total.backward()
    opt.step()
    return float(total.detach())


def steps_per_second(fn, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the medians here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    contenders = {}
    for variant in ("maml", "mt-net"):
        for engine in ("batched", "vmap"):
            s = Setup(Sine(), get_variant(variant), HParams(meta_batch=25), engine=engine)
            st = init_state(s, 0)
            contenders[f"{variant}/{engine}"] = (lambda s=s, st=st: outer_step(s, st))
    s = Setup(Sine(), get_variant("maml"), HParams(meta_batch=25))
    st = init_state(s, 0)
    for p in st.params.values():
        p.requires_grad_(True)
    plain_opt = torch.optim.Adam(list(st.params.values()), lr=1e-3)
    contenders["maml/plain-loop"] = lambda: plain_loop_step(s, st, plain_opt)

    for fn in contenders.values():  # warm-up
        steps_per_second(fn, 10)
    rates = {k: [] for k in contenders}
    for _ in range(args.rounds):
        for k, fn in contenders.items():
            steps = args.steps if "loop" not in k else max(10, args.steps // 5)
            rates[k].append(steps_per_second(fn, steps))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio_rounds = lambda a, b: statistics.median(x / y for x, y in zip(rates[a], rates[b]))  # noqa: E731

    eval_setup = Setup(Sine(), get_variant("mt-net"), HParams())
    eval_params = init_state(eval_setup, 0).params
    eval_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        evaluate(eval_setup, eval_params, n_tasks=600, shots=(5, 10, 20), steps=(1, 10))
        eval_times.append(time.perf_counter() - t0)

    print(f"torch {torch.__version__}, threads {args.threads}, rounds {args.rounds}")
    print("meta-steps/s (median over rounds), sine 10-shot, meta-batch 25, 1 inner step, second order:")
    for k, v in med.items():
        print(f"  {k:18s} {v:8.1f}")
    results = {
        "median_steps_per_s": med,
        "batched_vs_plain_loop": ratio_rounds("maml/batched", "maml/plain-loop"),
        "vmap_vs_plain_loop": ratio_rounds("maml/vmap", "maml/plain-loop"),
        "mtnet_cost_over_maml_batched": ratio_rounds("maml/batched", "mt-net/batched"),
        "mtnet_cost_over_maml_vmap": ratio_rounds("maml/vmap", "mt-net/vmap"),
        "eval_600x3x10_seconds_median": statistics.median(eval_times),
    }
    print(f"speed-up over the plain per-task loop (median of per-round ratios): batched "
          f"{results['batched_vs_plain_loop']:.1f}x, vmap {results['vmap_vs_plain_loop']:.1f}x")
    print(f"MT-net cost / MAML cost: batched {results['mtnet_cost_over_maml_batched']:.2f}x, "
          f"vmap {results['mtnet_cost_over_maml_vmap']:.2f}x")
    print(f"evaluation, 600 tasks x 3 shot counts x 10 inner steps (MT-net): "
          f"{results['eval_600x3x10_seconds_median']:.2f} s (median of 3)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
