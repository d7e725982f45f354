"""MANN: a memory-augmented neural network with least-recently-used access (Santoro et al., ICML 2016).

An episode is a sequence: input x_t arrives with the *previous* input's label y_{t-1} (zeros at
t = 0), so the network must predict y_t before it sees it - it binds each input to its label in an
external memory and recalls it when the class comes again. Labels are shuffled every episode
(`shuffle`, core.learners.blackbox.common.shuffle_episode). Per step t:

    controller   (h_t, c_t) = LSTM([e(x_t), y_{t-1}, r_{t-1}], h_{t-1}, c_{t-1})      (r: last reads)
    per head     k_t = tanh(W_k h_t + b_k),  alpha_t = W_a h_t + b_a                  (key, write gate)
    LRUA write   w^lu_{t-1}(i) = 1 for the n least-used slots of w^u_{t-1}, else 0   (n = heads)
                 w^w_t = sigmoid(alpha_t) w^r_{t-1} + (1 - sigmoid(alpha_t)) w^lu_{t-1}
                 M_t(i) = M_{t-1}(i) + sum over heads w^w_t(i) k_t, after zeroing the least used slot
    read         w^r_t(i) = softmax_i cos(k_t, M_t(i)),   r_t = sum_i w^r_t(i) M_t(i)
    usage        w^u_t = gamma w^u_{t-1} + sum over heads (w^r_t + w^w_t)
    output       o_t = W_o [h_t, r_t] + b_o                    (logits, or the regression value)

The paper defines w^lu through the n-th smallest usage m(w^u, n) (w^lu(i) = 1 iff w^u(i) <= m);
we break ties by slot index so that exactly n slots are least used (at the start every usage is 0;
the reference implementation tristandeleu/ntm-one-shot does the same with an argsort, but gives head
j the j-th least-used slot where the paper gives every head all n). M_0 = 1e-6 (cosine similarity
needs non-zero rows), h, c, r, w^r, w^u start at 0.

Our protocol: the support set is the sequence; each query continues the episode from the state
after the support set (input: the query with the last support label), independently of the other
queries. Its output is the row's prediction (eval rows: the family's loss of the query outputs at
inner_steps = 0). Meta-training objective (`train_on`): "episode" (the paper: the loss of every
prediction of the episode, support positions - each made before its label was seen - and queries),
or "query". Defaults (the paper's Omniglot model): 200 LSTM units, memory 128 x 40, 4 read heads;
gamma = 0.95 (the reference implementation's; we did not find the paper's value); raw inputs
(`embedding: raw`: flattened pixels; the paper downsampled Omniglot to 20 x 20, we keep 28 x 28),
or the conv-4 embedding (`embedding: conv`, images only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ...hparams import HParamDef, register_hparam
from ...losses import LOSSES, PER_TASK
from ...lstm import lstm_cell, lstm_init
from ...model import Params
from .common import BlackBoxLearner, blackbox_network, check_choice, label_dim, label_features
from .embedding import make_embedding
from .nn import cosine, linear, linear_init

for _d in (
    HParamDef("mann_controller", 200, kind="int", low=1, low_inclusive=True, help="MANN: LSTM controller units (200)"),
    HParamDef("mann_memory_slots", 128, kind="int", low=1, low_inclusive=True, help="MANN: memory rows (128)"),
    HParamDef("mann_memory_width", 40, kind="int", low=1, low_inclusive=True, help="MANN: memory row width (40)"),
    HParamDef("mann_read_heads", 4, kind="int", low=1, low_inclusive=True, help="MANN: read heads n (4)"),
    HParamDef("mann_gamma", 0.95, low=0, high=1.0, help="MANN: usage decay gamma of LRUA (0.95)"),
    HParamDef("mann_read_scale", 1.0, low=0, search=(1.0, 30.0, True),
              help="MANN: inverse temperature of the read softmax(s * cos) (the paper: 1)"),
):
    register_hparam(_d)

MEMORY_INIT = 1e-6


def least_used(usage: torch.Tensor, n: int) -> torch.Tensor:
    """w^lu [..., S]: 1 on the n least-used slots of usage [..., S], 0 elsewhere; ties go to the lower
    slot index (a stable sort), so exactly n slots are chosen."""
    ranks = usage.argsort(dim=-1, stable=True).argsort(dim=-1)
    return (ranks < n).to(usage.dtype)


def write_weights(alpha: torch.Tensor, read_prev: torch.Tensor, lu_prev: torch.Tensor) -> torch.Tensor:
    """w^w_t [..., R, S] = sigmoid(alpha) w^r_{t-1} + (1 - sigmoid(alpha)) w^lu_{t-1}; alpha [..., R],
    read_prev [..., R, S], lu_prev [..., S]."""
    gate = torch.sigmoid(alpha).unsqueeze(-1)
    return gate * read_prev + (1 - gate) * lu_prev.unsqueeze(-2)


def usage_update(usage_prev: torch.Tensor, read: torch.Tensor, write: torch.Tensor, gamma) -> torch.Tensor:
    """w^u_t [..., S] = gamma w^u_{t-1} + sum over heads of w^r_t + w^w_t."""
    return gamma * usage_prev + read.sum(-2) + write.sum(-2)


def lrua_access(memory, usage_prev, read_prev, keys, alpha, gamma, scale=1.0):
    """One LRUA write then read. memory [..., S, W], usage_prev [..., S], read_prev [..., R, S], keys
    [..., R, W], alpha [..., R] -> (memory [..., S, W], reads [..., R, W], read weights [..., R, S],
    usage [..., S]). `scale` multiplies the cosines in the read softmax (1: the paper)."""
    n_heads = keys.shape[-2]
    write = write_weights(alpha, read_prev, least_used(usage_prev, n_heads))
    keep = 1 - least_used(usage_prev, 1)  # the least used slot is zeroed before writing
    memory = memory * keep.unsqueeze(-1) + write.transpose(-1, -2) @ keys
    read = torch.softmax(scale * cosine(keys.unsqueeze(-2), memory.unsqueeze(-3)), dim=-1)
    return memory, read @ memory, read, usage_update(usage_prev, read, write, gamma)


class State(NamedTuple):
    h: torch.Tensor  # [..., H]
    c: torch.Tensor  # [..., H]
    memory: torch.Tensor  # [..., S, W]
    reads: torch.Tensor  # [..., R, W]
    read_w: torch.Tensor  # [..., R, S]
    usage: torch.Tensor  # [..., S]


CORE_DIMS = State(1, 1, 2, 2, 2, 1)  # trailing dimensions of each state tensor


def initial_state(lead: tuple, hidden: int, slots: int, width: int, heads: int, like: torch.Tensor) -> State:
    z = lambda *s: like.new_zeros(*lead, *s)
    return State(z(hidden), z(hidden), like.new_full((*lead, slots, width), MEMORY_INIT), z(heads, width),
                 z(heads, slots), z(slots))


def step(p: Params, x: torch.Tensor, state: State, gamma, scale) -> tuple[torch.Tensor, State]:
    """One time step: x [..., D] (the input with the previous label) -> (output [..., out], state)."""
    heads, width = state.reads.shape[-2:]
    h, c = lstm_cell(p, "mann.ctrl", torch.cat([x, state.reads.flatten(-2)], -1), state.h, state.c)
    keys = torch.tanh(linear(p, "mann.key", h)).unflatten(-1, (heads, width))
    alpha = linear(p, "mann.alpha", h)
    memory, reads, read_w, usage = lrua_access(state.memory, state.usage, state.read_w, keys, alpha, gamma, scale)
    out = linear(p, "mann.out", torch.cat([h, reads.flatten(-2)], -1))
    return out, State(h, c, memory, reads, read_w, usage)


def per_query(state: State, n_queries: int) -> State:
    """The state copied for each of n queries: every tensor [..., core] -> [..., Nq, core]."""
    return State(*(s.unsqueeze(-d - 1).expand(*s.shape[:-d], n_queries, *s.shape[-d:])
                   for s, d in zip(state, CORE_DIMS)))


@blackbox_network
@dataclass(frozen=True)
class MANN(BlackBoxLearner):
    embedding: str = "raw"  # raw (flattened inputs, the paper) | conv (the conv-4 embedding; images only)
    train_on: str = "episode"  # episode (every prediction of the sequence, the paper) | query
    shuffle: bool = True  # support order and class labels shuffled every meta-training episode
    network = "mann"
    own_hparams = ("mann_controller", "mann_memory_slots", "mann_memory_width", "mann_read_heads", "mann_gamma",
                   "mann_read_scale")

    def __post_init__(self) -> None:
        check_choice(self, "embedding", ("raw", "conv"))
        check_choice(self, "train_on", ("episode", "query"))
        check_choice(self, "shuffle", (True, False))

    def make_model(self, family, hidden: tuple[int, ...]):
        if self.embedding == "conv" and family.loss != "cross_entropy":
            raise ValueError(f"learner {self.name!r} (mann): embedding=conv needs an image task (task {family.name} "
                             "is regression); use embedding=raw")
        return make_embedding(family, "conv" if self.embedding == "conv" else "flat", hidden)

    def check(self, setup) -> None:
        super().check(setup)
        heads, slots = setup.hp.get("mann_read_heads"), setup.hp.get("mann_memory_slots")
        if heads > slots:
            raise ValueError(f"learner {self.name!r} (mann): mann_read_heads ({heads}) must be <= mann_memory_slots "
                             f"({slots}): LRUA writes to as many least-used slots as there are heads")

    def init_own(self, setup, generator: torch.Generator) -> Params:
        hp = setup.hp
        hidden, width, heads = hp.get("mann_controller"), hp.get("mann_memory_width"), hp.get("mann_read_heads")
        d_in = setup.model.dim + label_dim(setup.family) + heads * width
        p = lstm_init("mann.ctrl", d_in, hidden, generator)
        p.update(linear_init("mann.key", hidden, heads * width, generator))
        p.update(linear_init("mann.alpha", hidden, heads, generator))
        p.update(linear_init("mann.out", hidden + heads * width, setup.family.output_dim, generator))
        return p

    def episode(self, setup, params: Params, x_support, y_support, x_query):
        """(support outputs [..., Ns, out], each made before its label was read; query outputs [..., Nq, out])."""
        hp, family = setup.hp, setup.family
        es, eq = setup.model.embed(params, x_support, x_query)
        labels = label_features(y_support, family, es.dtype)
        previous = torch.cat([torch.zeros_like(labels[..., :1, :]), labels[..., :-1, :]], dim=-2)
        inputs = torch.cat([es, previous], dim=-1)
        heads = params["mann.alpha.W"].shape[0]
        state = initial_state(es.shape[:-2], params["mann.ctrl.W_hh"].shape[-1], hp.get("mann_memory_slots"),
                              params["mann.key.W"].shape[0] // heads, heads, es)
        gamma, scale = hp.get("mann_gamma"), hp.get("mann_read_scale")
        outs = []
        for t in range(inputs.shape[-2]):
            out, state = step(params, inputs[..., t, :], state, gamma, scale)
            outs.append(out)
        last = labels[..., -1:, :].expand(*eq.shape[:-1], labels.shape[-1])
        query_out, _ = step(params, torch.cat([eq, last], dim=-1), per_query(state, eq.shape[-2]), gamma, scale)
        return torch.stack(outs, dim=-2), query_out

    def predict(self, setup, params: Params, x_support, y_support, x_query, noise: dict, *, batched: bool):
        return self.episode(setup, params, x_support, y_support, x_query)[1]

    def query_loss(self, setup, params: Params, batch, noise: dict, *, batched: bool,
                   task_params: bool = False) -> torch.Tensor:
        """train_on=episode: the family's loss over every prediction of the episode (support positions
        and queries); train_on=query: over the queries only."""
        loss = (PER_TASK if batched else LOSSES)[setup.family.loss]
        support_out, query_out = self.episode(setup, params, batch.x_support, batch.y_support, batch.x_query)
        if self.train_on == "query":
            return loss(query_out, batch.y_query)
        label_dim_ = -1 if setup.family.loss == "cross_entropy" else -2
        return loss(torch.cat([support_out, query_out], dim=-2),
                    torch.cat([batch.y_support, batch.y_query], dim=label_dim_))
