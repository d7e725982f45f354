"""Everything static about one meta-training run: task family, learner, model, hyper-parameters."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .hparams import HParams
from .losses import LOSSES
from .tasks import TaskFamily
from .variants import Variant

ENGINES = ("batched", "vmap", "loop")  # how the tasks of a meta-batch are computed (core.meta)
# what a family's tasks are and what a learner learns (`problem` of both; default supervised)
PROBLEMS = {"supervised": "supervised tasks (support and query sets)",
            "rl": "reinforcement learning (a policy rolled out in each task)"}


@dataclass(frozen=True)
class Setup:
    """`learner`: a Learner (core.learners), or a Variant (the gradient-based learner of that row).
    `model`: default the learner's model for the family (core.registry.default_model).

    `train_shots`: the support size K of meta-training and of meta-validation. `train_shots_range`
    (lo, hi): meta-train on varying shots instead - each meta-batch draws its K uniformly from
    lo..hi (inclusive) with the trial's generator (`draw_train_shots`; every task of one meta-batch
    shares it, since the batch is one tensor); validation stays at `train_shots`. None (default):
    every meta-batch has `train_shots`, and no extra number is drawn (the draws are those of a
    setup without the option, bit for bit)."""

    family: TaskFamily
    learner: object
    hp: HParams = field(default_factory=HParams)
    model: object = None
    train_shots: int = 10
    queries: int = 10
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    engine: str = "batched"  # how tasks of a meta-batch are processed together (ENGINES), or "auto"
    cuda_graphs: bool = True  # on CUDA, replay the meta-gradient from a captured CUDA graph (core/graphs.py)
    tf32: bool = False  # on CUDA, allow TF32 convolutions/matmuls (see math_mode)
    deterministic: bool = True  # on CUDA, deterministic cuDNN algorithms (exact resume; see math_mode)
    train_shots_range: tuple[int, int] | None = None  # meta-train on K ~ U{lo..hi} per meta-batch (draw_train_shots)

    def __post_init__(self) -> None:
        if self.train_shots_range is not None:
            object.__setattr__(self, "train_shots_range", check_shots_range(self.train_shots_range))
        if isinstance(self.learner, Variant):
            from .learners import make_gradient_learner

            v = self.learner
            object.__setattr__(self, "learner", make_gradient_learner(v.name, **{k: x for k, x in v.as_dict().items()
                                                                                  if k != "name"}))
        problem, learns = getattr(self.family, "problem", "supervised"), getattr(self.learner, "problem", "supervised")
        if problem != learns:
            raise ValueError(f"learner {self.learner.name!r} learns {PROBLEMS[learns]}, but task family "
                             f"{self.family.name} is {PROBLEMS[problem]}: use a learner of kind "
                             f"{'rl (e.g. maml-trpo, anil-trpo)' if problem == 'rl' else 'gradient, metric, ...'}")
        if self.model is None:
            object.__setattr__(self, "model", self.learner.make_model(self.family, (40, 40)))
        if self.engine == "auto":
            object.__setattr__(self, "engine", auto_engine(self.model, self.device))
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be {', '.join(ENGINES)} or auto (got {self.engine!r})")
        self.learner.check(self)

    def with_hp(self, hp) -> Setup:
        """A copy with other hyper-parameters (e.g. core.hparams.TensorHParams: a bundle's per-member
        values as tensors), without re-validating: the copy is for computing."""
        out = copy.copy(self)
        object.__setattr__(out, "hp", hp)
        return out

    @property
    def variant(self) -> Variant | None:
        """The variant of a gradient-based learner (None for other families)."""
        learner = getattr(self.learner, "base", self.learner)
        return getattr(learner, "variant", None)

    @property
    def loss_fn(self):
        return LOSSES[self.family.loss]

    @contextmanager
    def math_mode(self):
        """Full float32 arithmetic on CUDA unless `tf32` is asked for. PyTorch's default lets cuDNN
        convolutions run in TF32 (10-bit mantissa); on an H100 that put the conv net's second-order
        meta-gradient 7-9 % (relative norm) away from float64, against 1e-5 for float32 - for no
        speed gain at these sizes (docs/BENCHMARKS.md).

        `deterministic`: cuDNN's fastest convolution-gradient algorithms accumulate with atomics, so
        two identical runs drift apart in the last bits (seen on an H100: the first conv layer's
        weights differed after 20 steps) and a resumed run would not continue exactly.

        The flags are process-wide, so they are set around each computation and restored after."""
        cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
        old = cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark
        cudnn.allow_tf32 = matmul.allow_tf32 = bool(self.tf32)
        if self.deterministic:
            cudnn.deterministic, cudnn.benchmark = True, False
        try:
            yield
        finally:
            cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark = old


def check_shots_range(value) -> tuple[int, int]:
    """(lo, hi) as two integers with 1 <= lo <= hi; ValueError naming what is allowed."""
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(k, int) and not isinstance(k, bool) for k in value)
    if not ok or not 1 <= value[0] <= value[1]:
        raise ValueError(f"train_shots_range must be two integers (lo, hi) with 1 <= lo <= hi (got {value!r})")
    return int(value[0]), int(value[1])


def draw_train_shots(setup: Setup, generator: torch.Generator) -> int:
    """The support size K of the next meta-training batch: `train_shots`, or with `train_shots_range`
    (lo, hi) a uniform draw from lo..hi (inclusive) from the trial's generator (so a resumed trial
    draws the same sequence)."""
    if setup.train_shots_range is None:
        return setup.train_shots
    lo, hi = setup.train_shots_range
    return lo + int(torch.randint(hi - lo + 1, (1,), generator=generator))


def max_train_shots(setup: Setup) -> int:
    """The largest support size meta-training can draw (e.g. a sequence model's receptive field)."""
    return setup.train_shots if setup.train_shots_range is None else max(setup.train_shots, setup.train_shots_range[1])


def auto_engine(model, device: str) -> str:
    """The engine measured fastest for a model on a device (one switch, `engine: auto`).

    Dense nets: "batched" everywhere (bench/bench_core.py). The conv net on CPU: "loop" - per-task
    convolutions beat one grouped convolution and vmap at meta-batch 32 (bench/bench_conv.py on the
    2-core CI machine: loop 0.55, batched 0.42, vmap 0.41 meta-steps/s, Omniglot 5-way 1-shot, 15
    queries). On CUDA "batched": one grouped conv kernel per layer for all tasks (H100, Omniglot
    5-way 1-shot, 1 query, meta-batch 32, MAML: batched 27, vmap 21, loop 1.3 meta-steps/s; with the
    meta-gradient replayed from a CUDA graph, core/graphs.py, batched runs at 93)."""
    is_conv = hasattr(model, "filters")
    if is_conv and not str(device).startswith("cuda"):
        return "loop"
    return "batched"


def check_sizes(setup: Setup, *, eval_split: str = "test", eval_shots=(), val: bool = True) -> None:
    """Every constraint the data or the learner imposes on a trial, checked before any training:
    training episodes (train shots, or the top of train_shots_range, + queries per class) from the
    train split, validation ones from the val split, evaluation ones (the largest evaluated shot
    count + queries) from `eval_split`, ways against each split's classes; then the learner's own
    `check`. Raises ValueError (the family's DataError) naming the split, the sizes and what to lower."""
    family = setup.family
    family.check_episode("train", max_train_shots(setup), setup.queries)
    if val:
        family.check_episode("val", setup.train_shots, setup.queries)
    if eval_shots:
        family.check_episode(eval_split, max(int(k) for k in eval_shots), setup.queries)
    setup.learner.check(setup)
