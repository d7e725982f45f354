"""The LSTM meta-learner (Ravi & Larochelle, ICLR 2017): a learned optimizer whose cell state is the
learner's parameters.

The learner is the family's usual network (MAML's: 1-40-40-1 on regression, conv-4 on images); its
adapted parameters theta (every cell's W and b, flattened to one vector of P coordinates; batch-norm
gamma / beta are meta-parameters, as for MAML here) are the cell state of a coordinate-wise
two-layer LSTM - the same small network applied to every coordinate:

    layer 1:  (h_t, c_t) = LSTM([pre(grad_t), pre(L_t)], h_{t-1}, c_{t-1})      per coordinate, H units
    layer 2:  f_t = sigmoid(W_F . [h_t, theta_{t-1}, f_{t-1}] + b_F)            forget gate
              i_t = sigmoid(W_I . [h_t, theta_{t-1}, i_{t-1}] + b_I)            input gate (learned step)
              theta_t = f_t * theta_{t-1} - i_t * grad_t                        (Ravi & Larochelle eq. 2)

grad_t and L_t are the support loss's gradient and value at theta_{t-1}; pre(.) is Andrychowicz et
al.'s preprocessing (nn.preprocess, p = 10). With f = 1 and i = alpha the update is SGD with step
alpha (tests check it). theta_0 (the cell state's initial value) is meta-learned with the LSTM.
Init: layer 1 as torch.nn.LSTM, W_F, W_I ~ U(-0.01, 0.01), b_F ~ U(4, 6) (forget gate near 1, the
paper's), b_I = logit(alpha) (the input gate starts near the step alpha; the paper draws
U(-5, -4), i.e. alpha ~ 0.007-0.018, and the project's default alpha 0.01 lies inside).
`order: first` (the paper's) treats grad_t and L_t as inputs without derivatives (their second-order
terms are dropped); `order: second` differentiates through them.

It has an inner loop: its query predictions after each of its steps go in the rows, like MAML's
(the eval row loss after k steps is the family's loss of the learner with theta_k); the
meta-training objective is the query loss after hp.inner_steps steps. The paper runs its steps over
minibatches of the support set; we take each step on the whole support set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.func import grad_and_value, vmap

from ...hparams import HParamDef, register_hparam
from ...lstm import lstm_cell, lstm_init
from ...model import Params
from .common import BlackBoxLearner, blackbox_network, check_choice
from .nn import preprocess, uniform

register_hparam(HParamDef("meta_lstm_hidden", 20, kind="int", low=1, low_inclusive=True,
                          help="LSTM meta-learner: units of its first (coordinate-wise) LSTM layer (20)"))


def adapted_names(model) -> list[str]:
    return [f"{c}.{w}" for c in model.cell_names() for w in ("W", "b")]


def flatten(params: Params, names: list[str]) -> torch.Tensor:
    return torch.cat([params[n].reshape(-1) for n in names])


def unflatten(theta: torch.Tensor, params: Params, names: list[str]) -> Params:
    out, start = {}, 0
    for n in names:
        size = params[n].numel()
        out[n] = theta[start: start + size].reshape(params[n].shape)
        start += size
    return out


def gates(p: Params, h: torch.Tensor, theta: torch.Tensor, f_prev: torch.Tensor, i_prev: torch.Tensor):
    """f_t, i_t [P] from the first layer's h [P, H], theta_{t-1} [P] and the previous gates [P]."""
    f = torch.sigmoid(torch.cat([h, theta.unsqueeze(-1), f_prev.unsqueeze(-1)], -1) @ p["metalstm.WF"] + p["metalstm.bF"])
    i = torch.sigmoid(torch.cat([h, theta.unsqueeze(-1), i_prev.unsqueeze(-1)], -1) @ p["metalstm.WI"] + p["metalstm.bI"])
    return f, i


def meta_lstm_update(theta: torch.Tensor, grad: torch.Tensor, f: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """theta_t = f_t * theta_{t-1} - i_t * grad_t (the cell-state update; SGD when f = 1, i = alpha)."""
    return f * theta - i * grad


@blackbox_network
@dataclass(frozen=True)
class LSTMMetaLearner(BlackBoxLearner):
    order: str = "first"  # first (the paper: no derivatives through the gradient inputs) | second
    network = "meta-lstm"
    inner_loop = True
    own_hparams = ("meta_lstm_hidden",)

    def __post_init__(self) -> None:
        check_choice(self, "order", ("first", "second"))

    def reads(self) -> tuple[str, ...]:
        return ("alpha", "beta", "inner_steps", "meta_batch") + self.own_hparams

    def searched(self) -> tuple[str, ...]:
        return ("alpha", "beta")

    def make_model(self, family, hidden: tuple[int, ...]):
        from ...registry import default_model

        return default_model(family, hidden)

    def check(self, setup) -> None:
        super().check(setup)
        if not setup.hp.alpha < 1:
            raise ValueError(f"learner {self.name!r} (meta-lstm): alpha is the input gate's initial value "
                             f"sigmoid(b_I), so it must be < 1 (got {setup.hp.alpha})")

    def init_own(self, setup, generator: torch.Generator) -> Params:
        h, alpha = setup.hp.get("meta_lstm_hidden"), setup.hp.alpha
        p = lstm_init("metalstm.l1", 4, h, generator)
        p["metalstm.WF"] = uniform((h + 2,), 0.01, generator)
        p["metalstm.bF"] = uniform((1,), 6.0, generator, low=4.0)
        p["metalstm.WI"] = uniform((h + 2,), 0.01, generator)
        p["metalstm.bI"] = torch.full((1,), math.log(alpha / (1 - alpha)), dtype=torch.float64)
        return p

    def task_trajectory(self, setup, params: Params, xs, ys, xq, steps: int, every_step: bool):
        """One task: query outputs after 0..steps steps (or after `steps` only) [(steps + 1,) Nq, out]."""
        model, loss_fn = setup.model, setup.loss_fn
        names = adapted_names(model)
        theta = flatten(params, names)
        hidden = params["metalstm.l1.W_hh"].shape[-1]
        h, c = theta.new_zeros(theta.shape[0], hidden), theta.new_zeros(theta.shape[0], hidden)
        f_prev, i_prev = torch.zeros_like(theta), torch.zeros_like(theta)

        def support_loss(th):
            return loss_fn(model.forward({**params, **unflatten(th, params, names)}, xs), ys)

        def query(th):
            return model.forward({**params, **unflatten(th, params, names)}, xq)

        outs = [query(theta)] if every_step else []
        for _ in range(steps):
            grad, loss = grad_and_value(support_loss)(theta)
            if self.order == "first":
                grad, loss = grad.detach(), loss.detach()
            inputs = torch.cat([preprocess(grad), preprocess(loss).expand(theta.shape[0], 2)], -1)
            h, c = lstm_cell(params, "metalstm.l1", inputs, h, c)
            f, i = gates(params, h, theta, f_prev, i_prev)
            theta, f_prev, i_prev = meta_lstm_update(theta, grad, f, i), f, i
            if every_step:
                outs.append(query(theta))
        return torch.stack(outs if every_step else [query(theta)])

    def outputs(self, setup, params: Params, x_support, y_support, x_query, noise: dict, *, steps: int,
                every_step: bool, mask_mode: str = "sample", batched: bool = False) -> list[torch.Tensor]:
        def one(xs, ys, xq):
            return self.task_trajectory(setup, params, xs, ys, xq, steps, every_step)

        # evaluation (no autograd) maps tasks in chunks: the coordinate-wise state is P x H per task
        out = vmap(one, chunk_size=None if torch.is_grad_enabled() else 8)(x_support, y_support, x_query) \
            if batched else one(x_support, y_support, x_query)
        return list(out.unbind(1 if batched else 0))
