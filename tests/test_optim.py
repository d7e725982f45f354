"""Optimiser steps (core.optim) against torch's plain, per-tensor Adam: the outer loop moves every
meta-parameter by Adam on *its own* meta-gradient, whatever memory layout autograd gives that gradient.

torch's fused Adam on the CPU reads a gradient as if laid out like its parameter; autograd returns a
transposed view for a weight used as W^T in a batched product (core.cells.affine), and the fused step
then silently moved each element by another element's gradient. These tests compare against the
reference implementation (foreach=False, fused=False), which honours strides."""

import pytest
import torch

from metasweep.core import PRESETS, HParams, get_variant
from metasweep.core.bundle import Member, fold_gradients
from metasweep.core.meta import meta_gradient, outer_step, sample_noise
from metasweep.core.optim import step_optimizers
from metasweep.core.setup import Setup
from metasweep.core.state import init_state
from metasweep.core.tasks import Sine


def plain_adam(params, lr):
    return torch.optim.Adam(params, lr=lr, foreach=False, fused=False)


def test_a_fused_step_on_transposed_gradients_is_adam_on_those_gradients():
    """Gradients that are transposed views (and a strided slice of a stacked gradient, as a bundle member's),
    over three steps: the first through Optimizer.step (no state yet), then torch's functional fused Adam."""
    g = torch.Generator().manual_seed(0)
    shapes = ((40, 1), (40,), (40, 40), (1, 40), (5, 3))
    ps = [torch.randn(s, generator=g).requires_grad_(True) for s in shapes]
    ref = [p.detach().clone().requires_grad_(True) for p in ps]
    fused, plain = torch.optim.Adam(ps, lr=1e-2, fused=True), plain_adam(ref, 1e-2)
    for _ in range(3):
        for p, r in zip(ps, ref):
            full = torch.randn((2, *p.shape[::-1]), generator=g)  # stacked, then each one's transposed slice
            p.grad = full[1].transpose(0, -1) if p.dim() == 2 else full[1]
            r.grad = p.grad.clone()
        assert any(not p.grad.is_contiguous() for p in ps)
        step_optimizers([fused])
        plain.step()
        for p, r in zip(ps, ref):
            torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7)


SECOND = [n for n, v in PRESETS.items() if v.outer == "maml"]


@pytest.mark.parametrize("engine", ["batched", "vmap"])
@pytest.mark.parametrize("name", SECOND)
def test_an_outer_step_is_adam_on_the_meta_gradient(name, engine):
    """Two outer steps of a trial (core.meta.outer_step) against meta_gradient on the same meta-batch and
    noise followed by a plain Adam step, for every preset with a meta-gradient and both engines."""
    setup = Setup(Sine(), get_variant(name), HParams(meta_batch=4, beta=1e-2), train_shots=5, queries=4,
                  engine=engine)
    st = init_state(setup, 1)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in st.params.items()}
    plain = plain_adam(list(params.values()), 1e-2)
    gen = torch.Generator()
    for _ in range(2):
        gen.set_state(st.generator.get_state())
        batch = setup.learner.train_batch(setup, gen)
        noise = sample_noise(params, setup, gen, 4, setup.hp.inner_steps)
        grads, _ = meta_gradient({k: v.detach() for k, v in params.items()}, batch, noise, setup)
        for k, p in params.items():
            p.grad = grads[k].clone()
        plain.step()
        outer_step(setup, st)
        for k in params:
            torch.testing.assert_close(st.params[k], params[k], rtol=1e-5, atol=1e-7, msg=f"{name} {engine} {k}")


@pytest.mark.parametrize("name", ["maml", "t-net", "mt-net", "anil"])
def test_a_fold_bundle_steps_each_member_by_adam_on_its_own_gradient(name):
    """A fold bundle's step (core.bundle): each member moves by a plain Adam on its slice of the stacked
    gradients the fold computes (members with their own step sizes)."""
    from metasweep.core.bundle import bundle_step

    setups = [Setup(Sine(), get_variant(name), HParams(meta_batch=4, beta=b), train_shots=5, queries=4)
              for b in (1e-2, 3e-2)]
    members = [Member(s, init_state(s, seed)) for s, seed in zip(setups, (1, 2))]
    refs = [{k: v.detach().clone().requires_grad_(True) for k, v in m.state.params.items()} for m in members]
    plains = [plain_adam(list(r.values()), s.hp.beta) for r, s in zip(refs, setups)]
    floats = ("alpha", "beta", "temperature", "zeta_init")
    for _ in range(2):
        states = [m.state.generator.get_state() for m in members]
        grads, _ = fold_gradients(members, floats)
        for m, st in zip(members, states):
            m.state.generator.set_state(st)
        for i, (r, plain) in enumerate(zip(refs, plains)):
            for k, p in r.items():
                p.grad = grads[k][i].clone()
            plain.step()
        bundle_step(members, "fold", floats)
        for m, r in zip(members, refs):
            for k in r:
                torch.testing.assert_close(m.state.params[k], r[k], rtol=1e-5, atol=1e-7, msg=f"{name} {k}")
