"""Conv-net speed: meta-steps/s of the three engines (batched, vmap, loop) on the authors' CNN.

Synthetic images of the real sizes (no dataset needed): Omniglot 28x28 grey, 64 filters, stride 2;
or MiniImagenet 84x84 RGB, 32 filters, max-pool. Second-order MAML (or any preset), interleaved
round by round (this machine is noisy); prints medians and which engine won - the measurement
behind the `engine: auto` rule (core.setup.AUTO_ENGINE).

    python bench/bench_conv.py [--task omniglot] [--ways 5] [--shots 1] [--queries 15]
                               [--meta-batch 32] [--steps 3] [--rounds 3] [--threads 1] [--device cpu]
                               [--engines batched-graph,batched,vmap,loop] [--tf32]
                               [--data-root DIR --splits 200,40,52 --cache-dir DIR]

With --data-root (Omniglot) the steps train on real episodes drawn from the decoded cache, and the
episode sampling rate (episodes/s, meta-batches of --meta-batch tasks, CPU side) is reported too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from metasweep.core import HParams, get_variant
from metasweep.core.conv import ConvNet
from metasweep.core.meta import outer_step
from metasweep.core.setup import Setup
from metasweep.core.state import init_state
from metasweep.core.tasks.synthetic import SyntheticImages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("omniglot", "miniimagenet"), default="omniglot")
    ap.add_argument("--variant", default="maml")
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--queries", type=int, default=15)
    ap.add_argument("--meta-batch", type=int, default=32)
    ap.add_argument("--inner-steps", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="outer steps per timing")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--engines", default="batched,vmap,loop",
                    help="comma list of batched | vmap | loop, each optionally with -graph (CUDA graphs, on cuda)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 convolutions and matmuls on CUDA")
    ap.add_argument("--nondeterministic", action="store_true", help="let cuDNN pick nondeterministic algorithms")
    ap.add_argument("--data-root", default=None, help="Omniglot folder: train on real episodes from the cache")
    ap.add_argument("--splits", default=None, help="train,val,test character counts (minimal sets: 200,40,52)")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sampling = None
    if args.task == "omniglot":
        family, model = SyntheticImages(args.ways, 1, 28), ConvNet.omniglot(args.ways)
    else:
        family, model = SyntheticImages(args.ways, 3, 84), ConvNet.miniimagenet(args.ways)
    if args.data_root:
        from metasweep.core.tasks import Omniglot

        opts = dict(data_root=args.data_root, ways=args.ways, cache_dir=args.cache_dir)
        if args.splits:
            opts["splits"] = tuple(int(n) for n in args.splits.split(","))
        family = Omniglot(**opts)
        family.sample(torch.Generator().manual_seed(0), 1, args.shots, args.queries)  # builds the cache
        sampling = episode_rate(family, args)
    hp = HParams(alpha=0.4, inner_steps=args.inner_steps, meta_batch=args.meta_batch)
    engines = args.engines.split(",")
    # "<engine>-graph": that engine with the meta-gradient replayed from a CUDA graph (core/graphs.py)
    setups = {e: Setup(family, get_variant(args.variant), hp, model, args.shots, args.queries, device=args.device,
                       engine=e.removesuffix("-graph"), cuda_graphs=e.endswith("-graph"), tf32=args.tf32,
                       deterministic=not args.nondeterministic)
              for e in engines}
    states = {e: init_state(s, 0) for e, s in setups.items()}
    for e in engines:  # warm-up
        outer_step(setups[e], states[e])
    times: dict[str, list[float]] = {e: [] for e in engines}
    for _ in range(args.rounds):
        for e in engines:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                outer_step(setups[e], states[e])
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[e].append(args.steps / (time.perf_counter() - t0))
    result = {e: statistics.median(v) for e, v in times.items()}
    print(json.dumps({"task": args.task, "data": "real" if args.data_root else "synthetic", "tf32": args.tf32,
                      "deterministic": not args.nondeterministic,
                      "episodes_per_s": sampling, "variant": args.variant, "ways": args.ways, "shots": args.shots,
                      "queries": args.queries, "meta_batch": args.meta_batch, "threads": args.threads,
                      "device": args.device, "meta_steps_per_s": {e: round(v, 3) for e, v in result.items()},
                      "fastest": max(result, key=result.get)}))


def episode_rate(family, args, batches: int = 50) -> float:
    """Median over 5 rounds of episodes/s for sampling meta-batches from the memory-mapped cache."""
    g = torch.Generator().manual_seed(1)
    rates = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(batches):
            family.sample(g, args.meta_batch, args.shots, args.queries)
        rates.append(batches * args.meta_batch / (time.perf_counter() - t0))
    return round(statistics.median(rates), 1)


if __name__ == "__main__":
    main()
