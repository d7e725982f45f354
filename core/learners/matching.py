"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

A query x^ is labelled by attention over the support set S = {(x_i, y_i)} (eq. 1-2):

    y^ = sum_i a(x^, x_i) y_i,    a(x^, x_i) = exp(c(f(x^), g(x_i))) / sum_j exp(c(f(x^), g(x_j)))

with c = s * cosine similarity (s = the hyper-parameter `attention_scale`, default 1: the paper's
plain cosine). The outputs are log y^ [(tasks,) Nq, ways] (a log-probability vector, so its
cross-entropy - the training objective and the loss in evaluation rows - is -log y^_y, the paper's
objective); the prediction is argmax y^.

Embeddings: without full context embeddings (`fce: false`, the paper's Omniglot setting) f = g =
the conv embedding f'. With `fce: true` (section 2.1.5, appendix A.1-A.2):

- g(x_i, S) = h->_i + h<-_i + g'(x_i): a bidirectional LSTM (hidden size D) reads the support
  embeddings g'(x_i) in the order the support set is given, forward and backward;
- f(x^, S) = attLSTM(f'(x^), g(S), K): K read steps, from h_0 = c_0 = 0,
      r_{k-1} = sum_i softmax_i(h_{k-1}^T g(x_i)) g(x_i)
      h^_k, c_k = LSTM(f'(x^), [h_{k-1}, r_{k-1}], c_{k-1}),   h_k = h^_k + f'(x^)
  and f(x^, S) = h_K (K = the hyper-parameter `fce_steps`, default 5: the paper does not give K).

So the prediction without FCE does not depend on the order of the support set; with FCE it does,
through the bidirectional LSTM only (the attention LSTM reads g(S) through a softmax-weighted sum,
which is order-free): the support is given shot-major, class-minor (core.tasks.images), the same
order for every learner. Where ours differs from the paper: the conv-4 embedding of the project
(see core.learners.protonet), f' = g' share their weights, Adam with a constant step beta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..hparams import HParamDef, register_hparam
from ..lstm import lstm_cell, lstm_init, lstm_sequence
from ..model import Params
from .metric import MetricLearner, class_onehot, metric_network

register_hparam(HParamDef("attention_scale", 1.0, low=0, search=(1.0, 50.0, True),
                          help="scale s of Matching Networks' attention softmax(s * cos(f(x^), g(x_i))); paper: 1"))
register_hparam(HParamDef("fce_steps", 5, kind="int", low=1, low_inclusive=True,
                          help="K, read steps of Matching Networks' attention LSTM (fce: true)"))


def attention(f_query: torch.Tensor, g_support: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Log attention weights log a(x^, x_i) [..., Nq, Ns]: log-softmax over the support of
    scale * cos(f(x^), g(x_i)), for f_query [..., Nq, D], g_support [..., Ns, D]."""
    cos = F.normalize(f_query, dim=-1) @ F.normalize(g_support, dim=-1).transpose(-1, -2)
    return (scale * cos).log_softmax(-1)


def matching_log_probs(g_support: torch.Tensor, y_support: torch.Tensor, f_query: torch.Tensor, ways: int,
                       scale: float = 1.0) -> torch.Tensor:
    """log y^ [..., Nq, ways] with y^_k = sum over support i of class k of a(x^, x_i) (eq. 1), as a
    log-sum-exp of log-weights (no underflow to log 0 at large scales)."""
    log_a = attention(f_query, g_support, scale)  # [..., Nq, Ns]
    log_y = class_onehot(y_support, ways, log_a.dtype).log()  # [..., Ns, ways]: 0 or -inf
    return torch.logsumexp(log_a.unsqueeze(-1) + log_y.unsqueeze(-3), dim=-2)


def fce_support(p: Params, g_prime: torch.Tensor) -> torch.Tensor:
    """g(x_i, S) = h->_i + h<-_i + g'(x_i) for support embeddings g' [..., Ns, D] in their order."""
    forward = lstm_sequence(p, "fce.g.fw", g_prime)
    backward = lstm_sequence(p, "fce.g.bw", g_prime, reverse=True)
    return forward + backward + g_prime


def fce_query(p: Params, f_prime: torch.Tensor, g: torch.Tensor, steps: int) -> torch.Tensor:
    """f(x^, S) = attLSTM(f'(x^), g(S), K): query embeddings f' [..., Nq, D], g [..., Ns, D]."""
    h = torch.zeros_like(f_prime)
    c = torch.zeros_like(f_prime)
    for _ in range(steps):
        r = (h @ g.transpose(-1, -2)).softmax(-1) @ g  # read with h_{k-1}: [..., Nq, D]
        h_hat, c = lstm_cell(p, "fce.f", f_prime, torch.cat([h, r], dim=-1), c)
        h = h_hat + f_prime
    return h


@metric_network
@dataclass(frozen=True)
class MatchingNetwork(MetricLearner):
    fce: bool = False  # full context embeddings (bidirectional LSTM g, attention LSTM f)
    network: ClassVar[str] = "matching"
    PRESETS: ClassVar[dict[str, dict]] = {"matching": {"fce": False}, "matching-fce": {"fce": True}}

    def __post_init__(self) -> None:
        if not isinstance(self.fce, bool):
            raise ValueError(f"learner {self.name!r}: fce must be true or false (got {self.fce!r})")

    def own_hparams(self) -> tuple[str, ...]:
        return ("attention_scale",) + (("fce_steps",) if self.fce else ())

    def check(self, setup) -> None:
        super().check(setup)
        if self.fce and not hasattr(setup.model, "feature_dim"):
            raise ValueError(f"learner {self.name!r}: fce needs a model that states its feature_dim() "
                             f"({type(setup.model).__name__} does not)")

    def own_params(self, setup, generator: torch.Generator) -> Params:
        """The three LSTMs of the full context embeddings (D = the embedding's size)."""
        if not self.fce:
            return {}
        d = setup.model.feature_dim()
        return {**lstm_init("fce.g.fw", d, d, generator), **lstm_init("fce.g.bw", d, d, generator),
                **lstm_init("fce.f", d, d, generator, state_size=2 * d)}

    def embeddings(self, setup, params: Params, x_support, x_query):
        """(g(S) [..., Ns, D], f(x^) [..., Nq, D])."""
        g, f = self.embed(setup, params, x_support), self.embed(setup, params, x_query)
        if self.fce:
            g = fce_support(params, g)
            f = fce_query(params, f, g, setup.hp.get("fce_steps"))
        return g, f

    def outputs(self, setup, params: Params, x_support, y_support, x_query, noise: dict, *, steps: int,
                every_step: bool, mask_mode: str = "sample", batched: bool = False) -> list[torch.Tensor]:
        g, f = self.embeddings(setup, params, x_support, x_query)
        return [matching_log_probs(g, y_support, f, self.ways(setup), setup.hp.get("attention_scale"))]
