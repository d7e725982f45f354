"""Meta Networks (Munkhdalai & Yu, ICML 2017), kept small: slow weights, plus fast weights that
meta-networks generate from loss gradients, combined layer by layer, read from a memory of the
support set by attention. Classification only (its representation loss compares class labels).

Networks (e = the conv-4 embedding, slow weights only - see "Where ours differs" below):
    representation u:  r(x) = ReLU(Q e(x) + b_Q) + ReLU(Q+ e(x))              (layer augmentation)
    base learner b:    z = ReLU(W1 e + b1) + ReLU(W1+ e);  logits = W2 z + b2 + W2+ z
    meta-networks:     F (task level): a coordinate-wise LSTM (20 units) over T gradients, then a
                       linear read of its last state and of the mean input (ours: a skip that keeps
                       Q+'s signs mixed at init);  G (example level): a coordinate-wise MLP
                       2-20-1; both read gradients through nn.preprocess (Andrychowicz et al.).
Per task (the paper's Algorithm 1):
    1. T support pairs (i, j) (drawn in `noise`); L_t = BCE(P_t, [y_i = y_j]),
       P_t = sigmoid(w . |u_Q(x_i) - u_Q(x_j)| + c)  with slow Q only;  Q+ = F(grad_Q L_1, ..., grad_Q L_T)
    2. every support example i: L_i = CE(b_W(e(x_i)), y_i) with slow weights only;
       W+_i = G(grad_W L_i) for W = (W1, W2);  memory: key r(x_i) (with Q+), value W+_i
    3. query q: a_q = softmax_i cos(r(x_q), r(x_i));  W+_q = sum_i a_qi W+_i;  logits = b_{W, W+_q}(e(x_q))
Meta-training objective: the queries' cross-entropy; eval rows: their cross-entropy / accuracy at
inner_steps = 0. `order: first` (default) feeds the gradients to F and G as inputs without
derivatives through them; `order: second` differentiates through them.

Where ours differs (to keep it small; the paper's u and b are each a 5-layer CNN with fast weights
in every layer): one shared slow conv-4 embedding e, fast weights only in u's one dense layer and
in b's two dense layers (width `metanet_hidden`); fast weights for the weight matrices, not the
biases; T (`metanet_pairs`) pairs drawn uniformly with replacement (a pair may repeat an example).
We did not find the paper's T, nor its F / G sizes; 20-unit meta-networks follow the LSTM
meta-learner's sizes. The paper's results came from its larger networks: ours is a structural
re-implementation, not a reproduction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from ...hparams import HParamDef, register_hparam
from ...lstm import lstm_cell, lstm_init
from ...model import Params
from .common import BlackBoxLearner, blackbox_network, check_choice, per_task
from .embedding import make_embedding
from .nn import cosine, linear, linear_init, mlp, mlp_init, preprocess, uniform

for _d in (
    HParamDef("metanet_hidden", 64, kind="int", low=1, low_inclusive=True,
              help="Meta Networks: width of the representation layer and of the base learner's hidden layer (64)"),
    HParamDef("metanet_pairs", 10, kind="int", low=1, low_inclusive=True,
              help="Meta Networks: support pairs T of the representation loss (10)"),
    HParamDef("metanet_attention_scale", 1.0, low=0, search=(1.0, 30.0, True),
              help="Meta Networks: inverse temperature of the memory read softmax(s * cos) (the paper: 1)"),
):
    register_hparam(_d)

META_HIDDEN = 20  # units of the meta-networks F and G


def task_fast_weights(p: Params, grads: torch.Tensor) -> torch.Tensor:
    """Q+ [H, E] from the T per-pair gradients grads [T, H, E]: F reads them in order, coordinate-wise."""
    t, shape = grads.shape[0], grads.shape[1:]
    x = preprocess(grads.reshape(t, -1))  # [T, P, 2]
    h = x.new_zeros(x.shape[1], META_HIDDEN)
    c = h
    for k in range(t):
        h, c = lstm_cell(p, "metanet.F", x[k], h, c)
    # the read also sees the mean preprocessed gradient (its sign): without it the LSTM states of all
    # coordinates start alike, Q+ gets one sign everywhere and ReLU(Q+ e) of a non-negative e is dead
    return linear(p, "metanet.Fout", torch.cat([h, x.mean(0)], -1)).reshape(shape)


def example_fast_weights(p: Params, g: torch.Tensor) -> torch.Tensor:
    """W+_i = G(grad_i): [N, *shape] -> [N, *shape], one small MLP on every coordinate."""
    return mlp(p, "metanet.G", preprocess(g)).squeeze(-1)


def representation(p: Params, e: torch.Tensor, q_fast: torch.Tensor | None) -> torch.Tensor:
    r = torch.relu(linear(p, "metanet.u", e))
    return r if q_fast is None else r + torch.relu(e @ q_fast.transpose(-1, -2))


def base_logits(p: Params, e: torch.Tensor, w1_fast=None, w2_fast=None) -> torch.Tensor:
    """b on e [..., E]; fast weights (if given) [..., H, E] and [..., ways, H] per example."""
    z = torch.relu(linear(p, "metanet.b1", e))
    if w1_fast is not None:
        z = z + torch.relu((w1_fast @ e.unsqueeze(-1)).squeeze(-1))
    out = linear(p, "metanet.b2", z)
    if w2_fast is not None:
        out = out + (w2_fast @ z.unsqueeze(-1)).squeeze(-1)
    return out


@blackbox_network
@dataclass(frozen=True)
class MetaNetwork(BlackBoxLearner):
    order: str = "first"  # first: gradients enter F and G as plain inputs | second: differentiate through them
    network = "metanet"
    own_hparams = ("metanet_hidden", "metanet_pairs", "metanet_attention_scale")
    losses = ("cross_entropy",)

    def __post_init__(self) -> None:
        check_choice(self, "order", ("first", "second"))

    def make_model(self, family, hidden: tuple[int, ...]):
        return make_embedding(family, "conv" if family.loss == "cross_entropy" else "mlp", hidden)

    def init_own(self, setup, generator: torch.Generator) -> Params:
        e, h, ways = setup.model.dim, setup.hp.get("metanet_hidden"), setup.family.output_dim
        p = linear_init("metanet.u", e, h, generator)
        p.update(linear_init("metanet.pair", h, 1, generator))
        p.update(linear_init("metanet.b1", e, h, generator))
        p.update(linear_init("metanet.b2", h, ways, generator))
        p.update(lstm_init("metanet.F", 2, META_HIDDEN, generator))
        p.update(linear_init("metanet.Fout", META_HIDDEN + 2, 1, generator))
        p.update(mlp_init("metanet.G", (2, META_HIDDEN, 1), generator))
        # fast weights start small and centred on 0, on the scale of a gradient step: the default init
        # gives every coordinate an output of ~0.3 with one sign, so W+ (thousands of coordinates)
        # swamps the slow weights with one constant class ranking and ReLU(Q+ e) can start dead
        for name in ("metanet.Fout", "metanet.G.l1"):
            p[f"{name}.W"] = uniform(p[f"{name}.W"].shape, 0.01, generator)
            p[f"{name}.b"] = torch.zeros_like(p[f"{name}.b"])
        return p

    def noise(self, setup, params: Params, generator: torch.Generator, n_tasks: int, steps: int) -> dict:
        """Uniform keys [n_tasks, T, 2] that pick the T support pairs (index floor(u * Ns)) for any
        support size."""
        keys = torch.rand(n_tasks, setup.hp.get("metanet_pairs"), 2, generator=generator, dtype=torch.float64)
        return {"pairs": keys.to(device=setup.device, dtype=setup.dtype)}

    def _gradients(self, f, w: torch.Tensor, *args) -> torch.Tensor:
        """Per-item gradients of f(w, *item) w.r.t. w, items along dim 0 of args."""
        g = vmap(grad(f), in_dims=(None,) + (0,) * len(args))(w, *args)
        if self.order == "second":
            return g
        return tuple(x.detach() for x in g) if isinstance(g, tuple) else g.detach()

    def task_logits(self, p: Params, es, ys, eq, keys, scale) -> torch.Tensor:
        """One task: query logits [Nq, ways] from embeddings es [Ns, E], eq [Nq, E], labels ys [Ns]."""
        ns = es.shape[0]
        idx = (keys * ns).floor().long().clamp(0, ns - 1)  # [T, 2]
        same = (ys[idx[:, 0]] == ys[idx[:, 1]]).to(es.dtype)

        def pair_loss(q, e1, e2, s):
            r1, r2 = torch.relu(e1 @ q.T + p["metanet.u.b"]), torch.relu(e2 @ q.T + p["metanet.u.b"])
            return F.binary_cross_entropy_with_logits(linear(p, "metanet.pair", (r1 - r2).abs()).squeeze(-1), s)

        q_fast = task_fast_weights(p, self._gradients(pair_loss, p["metanet.u.W"], es[idx[:, 0]], es[idx[:, 1]], same))

        def example_loss(w, e, y):
            w1, w2 = w
            z = torch.relu(e @ w1.T + p["metanet.b1.b"])
            return F.cross_entropy((z @ w2.T + p["metanet.b2.b"]).unsqueeze(0), y.unsqueeze(0))

        g1, g2 = self._gradients(example_loss, (p["metanet.b1.W"], p["metanet.b2.W"]), es, ys)
        w1_mem, w2_mem = example_fast_weights(p, g1), example_fast_weights(p, g2)  # [Ns, H, E], [Ns, ways, H]
        keys_mem, r_q = representation(p, es, q_fast), representation(p, eq, q_fast)
        attention = torch.softmax(scale * cosine(r_q.unsqueeze(-2), keys_mem.unsqueeze(-3)), dim=-1)  # [Nq, Ns]
        w1_q = (attention @ w1_mem.flatten(1)).unflatten(-1, w1_mem.shape[1:])
        w2_q = (attention @ w2_mem.flatten(1)).unflatten(-1, w2_mem.shape[1:])
        return base_logits(p, eq, w1_q, w2_q)

    def predict(self, setup, params: Params, x_support, y_support, x_query, noise: dict, *, batched: bool):
        es, eq = setup.model.embed(params, x_support, x_query)
        scale = setup.hp.get("metanet_attention_scale")
        return per_task(lambda a, b, c, d: self.task_logits(params, a, b, c, d, scale), batched, es, y_support, eq,
                        noise["pairs"])
