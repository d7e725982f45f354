"""Siamese networks for one-shot recognition (Koch, Zemel & Salakhutdinov, ICML 2015 workshop).

A twin embedding h (the same network for both images) and a weighted L1 distance give the
probability that two images show the same class (section 3.1):

    p(x1, x2) = sigmoid(z),   z = sum_j alpha_j |h(x1)_j - h(x2)_j| + b

trained by binary cross-entropy on verification pairs drawn from the training classes only (eq. 1,
without the paper's L2 term). One-shot classification (section 4.3): a query gets the class of the
most similar support image, so the class logits [(tasks,) Nq, ways] are the largest pair logit z
over the class's support images; the loss in evaluation rows (and the validation loss a tune stage
minimises) is the cross-entropy of those class logits (the paper reports accuracy only).

Verification pairs (`train_batch`): from N-way training episodes of the family (its classes,
rotations and sampler), every query image is paired once with a support image of its own class and
once with a support image of another class drawn uniformly: 2 * Nq pairs per episode, half of them
"same" (the paper draws same / different pairs 50:50). With the switch `distortions` (on in the
`siamese` preset, the paper's best setting) each image of each pair gets a random affine distortion
(core.distortions; the paper precomputes 8 per pair, ours are drawn afresh every step). Where ours
differs: the project's conv-4 embedding instead of the paper's four large-kernel conv layers and a
4096-unit sigmoid layer; Adam with a constant step beta instead of SGD with momentum, per-layer
learning rates and L2 regularisation. alpha ~ N(0, 0.2^2) and b ~ N(0.5, 0.01^2) as the paper's
init of its fully connected layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..distortions import distort
from ..model import Params
from ..tasks import Batch
from .metric import MetricLearner, class_onehot, metric_network


def pair_logits(h1: torch.Tensor, h2: torch.Tensor, alpha: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """z = sum_j alpha_j |h1_j - h2_j| + b for embeddings h1, h2 [..., D] (broadcast) -> [...]."""
    return (h1 - h2).abs() @ alpha + b.squeeze(-1)


def pair_loss(z: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of sigmoid(z) against same (1) / different (0), mean over the last dim."""
    return F.binary_cross_entropy_with_logits(z, same.to(z.dtype), reduction="none").mean(-1)


def one_shot_logits(f_support: torch.Tensor, y_support: torch.Tensor, f_query: torch.Tensor, alpha: torch.Tensor,
                    b: torch.Tensor, ways: int) -> torch.Tensor:
    """Class logits [..., Nq, ways]: per class, the largest pair logit z(query, support image) over
    the class's support images (the most similar one)."""
    z = pair_logits(f_query.unsqueeze(-2), f_support.unsqueeze(-3), alpha, b)  # [..., Nq, Ns]
    member = class_onehot(y_support, ways, z.dtype).unsqueeze(-3) > 0  # [..., 1, Ns, ways]
    return torch.where(member, z.unsqueeze(-1), float("-inf")).amax(dim=-2)


def verification_pairs(batch: Batch, ways: int, generator: torch.Generator) -> Batch:
    """Same / different pairs from N-way episodes [tasks, ...] (support shot-major: position
    s * ways + c is shot s of class c). Query j of class c is paired with shot (j // ways) mod K of
    class c, and of class (c + r) mod ways, r ~ U{1..ways-1}. Returns Batch(x_support = first images
    [tasks, 2 Nq, ...], y_support = their classes, x_query = second images, y_query = their classes):
    a pair is "same" where the labels are equal (labels read from the data, never assumed)."""
    xs, ys, xq, yq = batch
    tasks, nq = yq.shape
    shot = (torch.arange(nq) // ways) % (ys.shape[1] // ways)  # [Nq]
    other = (yq + torch.randint(1, ways, (tasks, nq), generator=generator)) % ways
    partner = torch.cat([shot * ways + yq, shot * ways + other], dim=1)  # [tasks, 2 Nq]
    rows = torch.arange(tasks).unsqueeze(1)
    return Batch(torch.cat([xq, xq], 1), torch.cat([yq, yq], 1), xs[rows, partner], ys.gather(1, partner))


@metric_network
@dataclass(frozen=True)
class SiameseNetwork(MetricLearner):
    distortions: bool = False  # random affine distortions of training pairs (core.distortions)
    network: ClassVar[str] = "siamese"
    PRESETS: ClassVar[dict[str, dict]] = {"siamese": {"distortions": True}}

    def __post_init__(self) -> None:
        if not isinstance(self.distortions, bool):
            raise ValueError(f"learner {self.name!r}: distortions must be true or false (got {self.distortions!r})")

    def check(self, setup) -> None:
        super().check(setup)
        if not hasattr(setup.model, "feature_dim"):
            raise ValueError(f"learner {self.name!r}: the weighted L1 distance needs a model that states its "
                             f"feature_dim() ({type(setup.model).__name__} does not)")

    def own_params(self, setup, generator: torch.Generator) -> Params:
        width = setup.model.feature_dim()
        return {"siamese.alpha": 0.2 * torch.randn(width, generator=generator, dtype=torch.float64),
                "siamese.b": 0.5 + 0.01 * torch.randn(1, generator=generator, dtype=torch.float64)}

    def train_batch(self, setup, generator: torch.Generator) -> Batch:
        from ..setup import draw_train_shots

        episodes = setup.family.sample(generator, setup.hp.meta_batch, draw_train_shots(setup, generator), setup.queries)
        pairs = verification_pairs(episodes, self.ways(setup), generator)
        if self.distortions:
            pairs = Batch(distort(pairs.x_support, generator), pairs.y_support, distort(pairs.x_query, generator),
                          pairs.y_query)
        return pairs

    def query_loss(self, setup, params: Params, batch, noise: dict, *, batched: bool) -> torch.Tensor:
        """Binary cross-entropy of the verification pairs (batch from `train_batch`), per task."""
        z = pair_logits(self.embed(setup, params, batch.x_support), self.embed(setup, params, batch.x_query),
                        params["siamese.alpha"], params["siamese.b"])
        return pair_loss(z, batch.y_support == batch.y_query)

    def outputs(self, setup, params: Params, x_support, y_support, x_query, noise: dict, *, steps: int,
                every_step: bool, mask_mode: str = "sample", batched: bool = False) -> list[torch.Tensor]:
        return [one_shot_logits(self.embed(setup, params, x_support), y_support, self.embed(setup, params, x_query),
                                params["siamese.alpha"], params["siamese.b"], self.ways(setup))]
