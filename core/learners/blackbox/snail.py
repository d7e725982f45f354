"""SNAIL: a simple neural attentive meta-learner (Mishra et al., ICLR 2018).

The episode is the sequence of the support set's (embedded input, label) pairs followed by the
unlabeled query; the network reads it with temporal convolutions and soft attention that are both
causal (position t sees positions <= t only) and predicts the query's label at the last position.

    DenseBlock(d, D):  a = tanh(conv_f(h)) * sigmoid(conv_g(h)),  out = [h, a]
                       conv: kernel 2, dilation d, causal: conv(h)_t = W_0 h_{t-d} + W_1 h_t + b  (h_{<0} = 0)
    TCBlock(T, D):     DenseBlock(1, D), DenseBlock(2, D), ..., DenseBlock(2^(L-1), D),  L = ceil(log2 T)
    AttentionBlock(K, V): q, k, v = h W_q, h W_k, h W_v;  read_t = softmax_{j <= t}(q_t . k_j / sqrt K) v_j;
                       out = [h, read]
    network (the paper's Omniglot / MiniImagenet one): Attention(64, 32), TC(T, D), Attention(256, 128),
                       TC(T, D), Attention(512, 256), then a 1x1 convolution to the outputs.

Inputs: [e(x_t), label features of y_t] for support position t, [e(x_q), 0] for the query (labels:
one-hot, or (y, 1) on regression; common.label_features); e is the conv-4 embedding on images and
an MLP (sizes `model.hidden`, default 40-40) on regression. Support sets are shuffled every
meta-training episode (`shuffle`).

Our protocol has many queries per task: each is the last element of its own sequence (support,
then that query), computed at once - the support positions are shared (they never see a query:
causality), and each query position reads the support features and itself only, so a query's
prediction does not depend on the other queries. The number of dense blocks L is fixed at init
from the longest training sequence (train shots x ways + 1, the top of `train_shots_range` if set);
at evaluation on longer supports the convolutions' receptive field is shorter than the sequence
(the attention still reads all of it) - part of the known weakness of black-box learners at shot
counts they were not trained on. Eval rows: the family's loss of the query outputs at
inner_steps = 0. Meta-training objective: the query loss (the paper's: the last position only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...hparams import HParamDef, register_hparam
from ...model import Params
from ...setup import max_train_shots
from .common import BlackBoxLearner, blackbox_network, check_choice, label_dim, label_features
from .embedding import make_embedding
from .nn import linear, linear_init, uniform

register_hparam(HParamDef("snail_filters", 128, kind="int", low=1, low_inclusive=True,
                          help="SNAIL: filters D of each dense block of the TC blocks (128)"))

ATTENTION = ((64, 32), (256, 128), (512, 256))  # (key size K, value size V) of the three attention blocks


def causal_shift(h: torch.Tensor, d: int) -> torch.Tensor:
    """h [..., T, C] -> h_{t-d} at position t, zeros for t < d."""
    t = h.shape[-2]
    if d >= t:
        return torch.zeros_like(h)
    return torch.cat([torch.zeros_like(h[..., :d, :]), h[..., : t - d, :]], dim=-2)


def dense_block(p: Params, prefix: str, hs: torch.Tensor, hq: torch.Tensor, d: int):
    """A causal dilated DenseBlock on the support sequence hs [..., T, C] and on queries hq [..., Q, C],
    each query at position T (its delayed input is support position T - d). Returns both with D
    channels appended."""
    t = hs.shape[-2]
    W0, W1, b = p[f"{prefix}.W0"], p[f"{prefix}.W1"], p[f"{prefix}.b"]
    delayed_q = hs[..., t - d: t - d + 1, :] if d <= t else torch.zeros_like(hs[..., :1, :])
    pre_s = causal_shift(hs, d) @ W0.T + hs @ W1.T + b
    pre_q = delayed_q @ W0.T + hq @ W1.T + b
    n = W0.shape[0] // 2

    def gated(pre):
        return torch.tanh(pre[..., :n]) * torch.sigmoid(pre[..., n:])

    return torch.cat([hs, gated(pre_s)], -1), torch.cat([hq, gated(pre_q)], -1)


def attention_block(p: Params, prefix: str, hs: torch.Tensor, hq: torch.Tensor):
    """Causal single-head soft attention: support position t reads positions <= t; each query reads
    every support position and itself. Returns both with the V read channels appended."""
    qs, ks, vs = (linear(p, f"{prefix}.{w}", hs) for w in "qkv")
    qq, kq, vq = (linear(p, f"{prefix}.{w}", hq) for w in "qkv")
    scale = 1.0 / math.sqrt(qs.shape[-1])
    t = hs.shape[-2]
    future = torch.ones(t, t, dtype=torch.bool, device=hs.device).triu(1)
    logits = (qs @ ks.transpose(-1, -2) * scale).masked_fill(future, float("-inf"))
    read_s = torch.softmax(logits, -1) @ vs
    logits_q = torch.cat([qq @ ks.transpose(-1, -2), (qq * kq).sum(-1, keepdim=True)], -1) * scale
    w = torch.softmax(logits_q, -1)
    read_q = w[..., :t] @ vs + w[..., t:] * vq
    return torch.cat([hs, read_s], -1), torch.cat([hq, read_q], -1)


def tc_layers(sequence_length: int) -> int:
    """L = ceil(log2 T) dense blocks, dilations 1, 2, ..., 2^(L-1) (at least one)."""
    return max(1, math.ceil(math.log2(sequence_length)))


def _conv_init(prefix: str, c: int, filters: int, g: torch.Generator) -> Params:
    bound = 1.0 / math.sqrt(2 * c)  # kernel 2: fan-in 2c
    return {f"{prefix}.W0": uniform((2 * filters, c), bound, g), f"{prefix}.W1": uniform((2 * filters, c), bound, g),
            f"{prefix}.b": uniform((2 * filters,), bound, g)}


def snail_init(c: int, out_dim: int, layers: int, filters: int, g: torch.Generator) -> Params:
    """Parameters of the SNAIL network on c input channels (names snail.a{i}.{q,k,v}, snail.tc{j}.l{l})."""
    p: Params = {}
    for i, (key, value) in enumerate(ATTENTION):
        for w, size in (("q", key), ("k", key), ("v", value)):
            p.update(linear_init(f"snail.a{i}.{w}", c, size, g))
        c += value
        if i < 2:
            for l in range(layers):
                p.update(_conv_init(f"snail.tc{i}.l{l}", c, filters, g))
                c += filters
    p.update(linear_init("snail.out", c, out_dim, g))
    return p


def snail_trunk(p: Params, hs: torch.Tensor, hq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last features of every support position [..., T, C] and of every query [..., Q, C], from
    the support sequence hs [..., T, c] and the queries hq [..., Q, c]."""
    for i in range(len(ATTENTION)):
        hs, hq = attention_block(p, f"snail.a{i}", hs, hq)
        l = 0
        while f"snail.tc{i}.l{l}.W0" in p:
            hs, hq = dense_block(p, f"snail.tc{i}.l{l}", hs, hq, 2 ** l)
            l += 1
    return hs, hq


def snail_forward(p: Params, hs: torch.Tensor, hq: torch.Tensor) -> torch.Tensor:
    """Query outputs [..., Q, out]: the 1x1 output convolution on the queries' last features."""
    return linear(p, "snail.out", snail_trunk(p, hs, hq)[1])


@blackbox_network
@dataclass(frozen=True)
class SNAIL(BlackBoxLearner):
    shuffle: bool = True  # support order and class labels shuffled every meta-training episode
    network = "snail"
    own_hparams = ("snail_filters",)

    def __post_init__(self) -> None:
        check_choice(self, "shuffle", (True, False))

    def make_model(self, family, hidden: tuple[int, ...]):
        return make_embedding(family, "conv" if family.loss == "cross_entropy" else "mlp", hidden)

    def init_own(self, setup, generator: torch.Generator) -> Params:
        ways = getattr(setup.family, "ways", 1)
        layers = tc_layers(max_train_shots(setup) * ways + 1)
        c = setup.model.dim + label_dim(setup.family)
        return snail_init(c, setup.family.output_dim, layers, setup.hp.get("snail_filters"), generator)

    def sequences(self, setup, params: Params, x_support, y_support, x_query):
        """The network's inputs: support [..., Ns, c] = [e(x), label], queries [..., Nq, c] = [e(x), 0]."""
        es, eq = setup.model.embed(params, x_support, x_query)
        labels = label_features(y_support, setup.family, es.dtype)
        none = torch.zeros(*eq.shape[:-1], labels.shape[-1], dtype=es.dtype, device=es.device)
        return torch.cat([es, labels], -1), torch.cat([eq, none], -1)

    def predict(self, setup, params: Params, x_support, y_support, x_query, noise: dict, *, batched: bool):
        return snail_forward(params, *self.sequences(setup, params, x_support, y_support, x_query))
