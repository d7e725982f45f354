"""The meta-gradient captured once in a CUDA graph and replayed every outer step.

Why: on a GPU the conv net's meta-step at meta-batch 32 is a few hundred tiny kernels (forward,
inner gradient with create_graph, query forward, second-order backward) whose launches, not their
arithmetic, set the pace (docs/BENCHMARKS.md, "Conv net on CUDA"). A CUDA graph launches them all
at once. The math is unchanged - the replay runs the very kernels of the eager call (tests/test_cuda.py
checks graphed = eager) - so this is purely a speed switch (`Setup.cuda_graphs`).

How: the graph reads the live parameter tensors (the optimizer updates them in place, so each
replay sees the current meta-parameters) and fixed input buffers that each step's batch and mask
noise are copied into; it writes fixed gradient and loss tensors. A new capture happens when the
parameter tensors or the shapes change (e.g. after `load_state`, which makes new tensors).
"""

from __future__ import annotations

import torch

from .meta import meta_gradient
from .setup import Setup
from .tasks import Batch


class CapturedMetaGradient:
    def __init__(self, setup: Setup, params: dict, batch: Batch, noise: dict, warmup: int = 2):
        self.key = capture_key(params, batch, noise)
        self.batch = Batch(*(t.clone() for t in batch))
        self.noise = {k: v.clone() for k, v in noise.items()}
        # warm-up on a side stream (lazy cuBLAS/cuDNN initialisation must not be captured), as the
        # CUDA-graphs notes of PyTorch prescribe
        side = torch.cuda.Stream(device=self.batch.x_support.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                meta_gradient(params, self.batch, self.noise, setup)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.grads, self.loss = meta_gradient(params, self.batch, self.noise, setup)

    def __call__(self, batch: Batch, noise: dict):
        for static, fresh in zip(self.batch, batch):
            static.copy_(fresh, non_blocking=True)
        for k, v in noise.items():
            self.noise[k].copy_(v, non_blocking=True)
        self.graph.replay()
        # the loss is copied out: the caller may read it after the next replay has overwritten the
        # static one (core.train reads each loss one step late); the gradients are consumed by the
        # optimizer step queued before the next replay
        return self.grads, self.loss.clone()


def capture_key(params: dict, batch: Batch, noise: dict) -> tuple:
    return (tuple((k, v.data_ptr(), tuple(v.shape), v.dtype) for k, v in params.items()),
            tuple((tuple(t.shape), t.dtype) for t in batch),
            tuple((k, tuple(v.shape)) for k, v in noise.items()))


def graphed_meta_gradient(setup: Setup, params: dict, batch: Batch, noise: dict, cache: dict):
    """meta_gradient(params, batch, noise, setup) through a graph kept in `cache` (a TrainState's
    runtime dict: never saved, rebuilt when stale)."""
    captured = cache.get("meta_gradient_graph")
    if captured is None or captured.key != capture_key(params, batch, noise):
        cache.pop("meta_gradient_graph", None)
        captured = cache["meta_gradient_graph"] = CapturedMetaGradient(setup, params, batch, noise)
    return captured(batch, noise)
