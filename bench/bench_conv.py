"""Conv-net speed: meta-steps/s of the three engines (batched, vmap, loop) on the authors' CNN.

Synthetic images of the real sizes (no dataset needed): Omniglot 28x28 grey, 64 filters, stride 2;
or MiniImagenet 84x84 RGB, 32 filters, max-pool. Second-order MAML (or any preset), interleaved
round by round (this machine is noisy); prints medians and which engine won - the measurement
behind the `engine: auto` rule (core.setup.AUTO_ENGINE).

    python bench/bench_conv.py [--task omniglot] [--ways 5] [--shots 1] [--queries 15]
                               [--meta-batch 32] [--steps 3] [--rounds 3] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass

import torch

from metasweep.core import HParams, get_variant
from metasweep.core.conv import ConvNet
from metasweep.core.meta import outer_step
from metasweep.core.setup import Setup
from metasweep.core.state import init_state
from metasweep.core.tasks import Batch


@dataclass(frozen=True)
class SyntheticImages:
    ways: int = 5
    channels: int = 1
    size: int = 28
    name = "synthetic-images"
    loss = "cross_entropy"

    @property
    def input_shape(self):
        return (self.channels, self.size, self.size)

    @property
    def output_dim(self):
        return self.ways

    def key(self):
        return self.name

    def sample(self, g, n_tasks, shots, queries):
        def part(k):
            x = torch.rand(n_tasks, k * self.ways, self.channels, self.size, self.size, generator=g)
            return x, torch.arange(self.ways).repeat(k).expand(n_tasks, -1).contiguous()

        return Batch(*part(shots), *part(queries))


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
    ap.add_argument("--engines", default="batched,vmap,loop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.task == "omniglot":
        family, model = SyntheticImages(args.ways, 1, 28), ConvNet.omniglot(args.ways)
    else:
        family, model = SyntheticImages(args.ways, 3, 84), ConvNet.miniimagenet(args.ways)
    hp = HParams(alpha=0.4, inner_steps=args.inner_steps, meta_batch=args.meta_batch)
    engines = args.engines.split(",")
    setups = {e: Setup(family, get_variant(args.variant), hp, model, args.shots, args.queries, device=args.device,
                       engine=e) for e in engines}
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
    print(json.dumps({"task": args.task, "variant": args.variant, "ways": args.ways, "shots": args.shots,
                      "queries": args.queries, "meta_batch": args.meta_batch, "threads": args.threads,
                      "device": args.device, "meta_steps_per_s": {e: round(v, 3) for e, v in result.items()},
                      "fastest": max(result, key=result.get)}))


if __name__ == "__main__":
    main()
