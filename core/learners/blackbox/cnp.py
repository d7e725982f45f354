"""A conditional neural process (Garnelo et al., ICML 2018): the simplest black-box learner.

Encode every support pair, aggregate, decode each query given the aggregate:

    r_i = h([e(x_i), y_i])                    encoder h: an MLP (3 layers of `cnp_hidden` units)
    regression:      r = mean_i r_i;  (mu, raw) = g([e(x_q), r]);  sigma = 0.1 + 0.9 softplus(raw)
    classification:  r_c = mean_{i: y_i = c} r_i;  r = [r_1, ..., r_N];  logits = g([e(x_q), r])
                                              decoder g: an MLP (3 layers of `cnp_hidden` units)

(as we read the paper's classification experiment: class-wise means, concatenated in label order).
e is the identity on regression and the conv-4 embedding on images; y enters as label features
(common.label_features). The aggregate is a mean, so the prediction does not depend on the order
of the support set, and queries are decoded independently.

Meta-training objective (`objective`): "nll" (the paper: the negative log-likelihood of the query
targets - Gaussian N(mu, sigma^2) on regression, the categorical of the logits on classification)
or "family" (the family's loss of mu or the logits). The eval rows record the family's loss of the
prediction (regression: the MSE of mu; classification: the cross-entropy of the logits), at
inner_steps = 0. The sigma floor 0.1 + 0.9 softplus is the authors' released code's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...hparams import HParamDef, register_hparam
from ...losses import LOSSES, PER_TASK
from ...model import Params
from .common import BlackBoxLearner, blackbox_network, check_choice, label_dim, label_features
from .embedding import make_embedding
from .nn import mlp, mlp_init

register_hparam(HParamDef("cnp_hidden", 128, kind="int", low=1, low_inclusive=True,
                          help="neural process: units of the encoder and decoder layers (128)"))


def gaussian_nll(mu: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor, batched: bool) -> torch.Tensor:
    """-log N(y; mu, sigma^2), mean over points (per task when batched)."""
    nll = torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2 + 0.5 * math.log(2 * math.pi)
    return nll.flatten(1).mean(1) if batched else nll.mean()


def class_means(r: torch.Tensor, y: torch.Tensor, ways: int) -> torch.Tensor:
    """r [..., N, H], y [..., N] -> the mean r of each class, concatenated [..., ways * H]."""
    onehot = (y.unsqueeze(-1) == torch.arange(ways, device=y.device)).to(r.dtype)  # [..., N, ways]
    sums = onehot.transpose(-1, -2) @ r  # [..., ways, H]
    return (sums / onehot.sum(-2).clamp_min(1).unsqueeze(-1)).flatten(-2)


@blackbox_network
@dataclass(frozen=True)
class NeuralProcess(BlackBoxLearner):
    objective: str = "nll"  # nll (the paper's likelihood) | family (the family's loss of the prediction)
    network = "cnp"
    own_hparams = ("cnp_hidden",)

    def __post_init__(self) -> None:
        check_choice(self, "objective", ("nll", "family"))

    def make_model(self, family, hidden: tuple[int, ...]):
        return make_embedding(family, "conv" if family.loss == "cross_entropy" else "flat", hidden)

    def init_own(self, setup, generator: torch.Generator) -> Params:
        family, h = setup.family, setup.hp.get("cnp_hidden")
        e = setup.model.dim
        classify = family.loss == "cross_entropy"
        p = mlp_init("cnp.enc", (e + label_dim(family), h, h, h), generator)
        r = h * family.output_dim if classify else h
        p.update(mlp_init("cnp.dec", (e + r, h, h, family.output_dim if classify else 2), generator))
        return p

    def decode(self, setup, params: Params, x_support, y_support, x_query):
        """Decoder outputs [..., Nq, 2] (regression: mu and the raw scale) or logits [..., Nq, ways]."""
        family = setup.family
        es, eq = setup.model.embed(params, x_support, x_query)
        r = mlp(params, "cnp.enc", torch.cat([es, label_features(y_support, family, es.dtype)], -1))
        if family.loss == "cross_entropy":
            agg = class_means(r, y_support, family.output_dim)
        else:
            agg = r.mean(-2)
        agg = agg.unsqueeze(-2).expand(*eq.shape[:-1], agg.shape[-1])
        return mlp(params, "cnp.dec", torch.cat([eq, agg], -1))

    def predict(self, setup, params: Params, x_support, y_support, x_query, noise: dict, *, batched: bool):
        out = self.decode(setup, params, x_support, y_support, x_query)
        return out if setup.family.loss == "cross_entropy" else out[..., :1]

    def query_loss(self, setup, params: Params, batch, noise: dict, *, batched: bool,
                   task_params: bool = False) -> torch.Tensor:
        out = self.decode(setup, params, batch.x_support, batch.y_support, batch.x_query)
        if setup.family.loss == "mse" and self.objective == "nll":
            sigma = 0.1 + 0.9 * F.softplus(out[..., 1:])
            return gaussian_nll(out[..., :1], sigma, batch.y_query, batched)
        pred = out if setup.family.loss == "cross_entropy" else out[..., :1]
        return (PER_TASK if batched else LOSSES)[setup.family.loss](pred, batch.y_query)
