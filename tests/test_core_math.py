"""The papers' math, checked numerically: eq. (16), Proposition 1, masks, meta-gradients."""


import pytest
import torch
from coreutil import central_fd, learner_params
from torch.func import grad

from metasweep.core import PRESETS, HParams, VariantError, get_variant
from metasweep.core.adapt import adapt, adapted_names, gumbel_mask, logistic_noise, mask_noise, meta_only_names
from metasweep.core.cells import DenseNet
from metasweep.core.losses import PER_TASK, PER_TASK_GRAD, mse
from metasweep.core.meta import meta_gradient, meta_loss, reptile_direction, sample_noise
from metasweep.core.setup import Setup
from metasweep.core.state import init_state
from metasweep.core.tasks import Sine

D = torch.float64


def tiny_setup(name, inner_steps=1, **hp):
    hp = HParams(inner_steps=inner_steps, meta_batch=3, **hp)
    return Setup(Sine(), get_variant(name), hp, model=DenseNet((1, 4, 3, 1), init_std=0.5),
                 train_shots=4, queries=3, dtype=D)


def randomize(params, g):
    """Move every parameter off its init so that no gradient is trivially zero."""
    out = {}
    for k, v in params.items():
        if k.startswith("alpha."):
            out[k] = v + 0.01 * torch.rand(v.shape, generator=g, dtype=D)
        elif ".zeta" in k:
            out[k] = 0.5 * torch.randn(v.shape, generator=g, dtype=D)
        else:
            out[k] = v + 0.3 * torch.randn(v.shape, generator=g, dtype=D)
    return out


def tiny_problem(name, inner_steps=1, seed=1, **hp):
    """Seed 1 gives a net with live ReLUs in every cell (seed 0 happens to kill most of them)."""
    setup = tiny_setup(name, inner_steps, **hp)
    g = torch.Generator().manual_seed(seed)
    params = randomize(init_state(setup, seed).params, g)
    batch = setup.family.sample(g, 3, setup.train_shots, setup.queries).to(dtype=D)
    noise = sample_noise(params, setup, g, 3, max(inner_steps, 1))
    return setup, params, batch, noise


# ---------------------------------------------------------------- eq. (16) and Proposition 1


def test_eq16_one_tnet_step_moves_output_by_T_Tt_gradA_x(float64):
    """y_new = y - alpha (T T^T) grad_A L x for A = T W (MT-net eq. 16), random T, W, x, loss."""
    g = torch.Generator().manual_seed(3)
    n_in, n_out, alpha = 5, 4, 0.07
    W = torch.randn(n_out, n_in, generator=g)
    T = torch.randn(n_out, n_out, generator=g)
    x = torch.randn(n_in, generator=g)
    target = torch.randn(n_out, generator=g)
    x_train = torch.randn(7, n_in, generator=g)
    y_train = torch.randn(7, n_out, generator=g)

    def loss_of_A(A):  # any differentiable loss of the cell output
        return (torch.tanh(x_train @ A.T) - y_train).pow(2).sum() + (A @ x - target).pow(3).sum()

    def loss_of_W(W_):
        return loss_of_A(T @ W_)

    W_new = W - alpha * grad(loss_of_W)(W)  # the T-net inner step (eq. 4): only W moves
    y, y_new = T @ W @ x, T @ W_new @ x
    grad_A = grad(loss_of_A)(T @ W)
    predicted = y - alpha * (T @ T.T) @ grad_A @ x
    torch.testing.assert_close(y_new, predicted, atol=1e-5, rtol=0)
    assert (y_new - y).abs().max() > 1e-3  # the step did move y


def test_eq16_holds_for_the_cells_inner_step(float64):
    """The same identity through the library's own cell and adapt(). The cell also adapts its bias,
    so eq. (16) applies to the augmented A = T [W b] acting on [x; 1]."""
    model = DenseNet((3, 4), init_std=0.5)
    variant = get_variant("t-net")
    g = torch.Generator().manual_seed(0)
    params = randomize(learner_params(model, variant, g, dtype=D), g)
    xs, ys = torch.randn(6, 3, generator=g), torch.randn(6, 4, generator=g)
    x = torch.randn(1, 3, generator=g)
    alpha = 0.05
    fast = adapt(params, xs, ys, model=model, variant=variant, alpha=alpha, temperature=1.0, steps=1,
                 loss_fn=mse)
    T, W, b = params["c0.T"], params["c0.W"], params["c0.b"]
    ones = torch.ones(6, 1)
    grad_A = grad(lambda A: mse(torch.cat([xs, ones], 1) @ A.T, ys))(T @ torch.cat([W, b[:, None]], 1))
    x_aug = torch.cat([x, torch.ones(1, 1)], 1)
    predicted = model.forward(params, x) - alpha * (x_aug @ (T @ T.T @ grad_A).T)
    torch.testing.assert_close(model.forward(fast, x), predicted, atol=1e-5, rtol=0)
    assert torch.equal(fast["c0.T"], T)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_proposition1_update_lies_in_chosen_subspace(float64, d):
    """With zeta -> +inf on d rows, -inf on the rest, and T's first d columns spanning U, every
    task-specific update y_new - y lies in U (MT-net Proposition 1)."""
    g = torch.Generator().manual_seed(d)
    n_in, n_out = 6, 5
    model = DenseNet((n_in, n_out), init_std=0.5)
    variant = get_variant("mt-net")
    U = torch.linalg.qr(torch.randn(n_out, d, generator=g))[0]  # orthonormal basis of U
    T = torch.cat([U, torch.randn(n_out, n_out - d, generator=g)], dim=1)
    params = learner_params(model, variant, g, dtype=D)
    params.update({"c0.T": T, "c0.W": torch.randn(n_out, n_in, generator=g),
                   "c0.zeta": torch.tensor([1e4] * d + [-1e4] * (n_out - d))})
    noise = mask_noise(params, model, variant, g, 1, 3)
    proj_out = torch.eye(n_out) - U @ U.T
    for _ in range(5):
        xs, ys = torch.randn(8, n_in, generator=g), torch.randn(8, n_out, generator=g)
        fast = adapt(params, xs, ys, model=model, variant=variant, alpha=0.3, temperature=1.0, steps=3,
                     loss_fn=mse, noise={k: v[0] for k, v in noise.items()})
        x = torch.randn(10, n_in, generator=g)
        delta = model.forward(fast, x) - model.forward(params, x)
        assert delta.norm() > 1e-3
        assert (delta @ proj_out).norm() < 1e-8 * delta.norm() + 1e-10


# ---------------------------------------------------------------- masks


def test_mask_on_probability_is_sigmoid_zeta():
    g = torch.Generator().manual_seed(0)
    zeta = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0])
    noise = logistic_noise((200_000, 5), g)
    hard = gumbel_mask(zeta, noise, temperature=1.0)
    empirical = hard.mean(0)
    torch.testing.assert_close(empirical, torch.sigmoid(zeta), atol=4e-3, rtol=0)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}  # hard in the forward pass


def test_mask_is_straight_through_gradient_reaches_zeta():
    zeta = torch.tensor([0.3, -0.2], requires_grad=True)
    noise = torch.tensor([0.1, 0.5])
    m = gumbel_mask(zeta, noise, temperature=0.7)
    assert m.tolist() == [1.0, 1.0]
    (m * torch.tensor([2.0, 3.0])).sum().backward()
    soft = torch.sigmoid((zeta.detach() + noise) / 0.7)
    torch.testing.assert_close(zeta.grad, torch.tensor([2.0, 3.0]) * soft * (1 - soft) / 0.7)


def test_mask_equals_the_authors_tensorflow_formulation():
    """yoonholee/MT-net maml.py: y = softmax(([zeta, 0] + two Gumbels) / c); hard = (y == max y); the
    mask is stop_gradient(hard - y) + y, its first entry. Ours draws g1 - g2 as one Logistic sample
    (`logistic_noise`): the same value and the same gradient (issue 16: straight-through estimator)."""
    g = torch.Generator().manual_seed(3)
    zeta = torch.randn(64, generator=g, requires_grad=True)
    u1, u2 = torch.rand(64, generator=g), torch.rand(64, generator=g)
    g1, g2 = -torch.log(-torch.log(u1 + 1e-20) + 1e-20), -torch.log(-torch.log(u2 + 1e-20) + 1e-20)
    c = 0.7
    y = torch.softmax(torch.stack([zeta + g1, torch.zeros(64) + g2], 1) / c, 1)
    hard = (y == y.max(1, keepdim=True).values).float()
    theirs = ((hard - y).detach() + y)[:, 0]
    weights = torch.randn(64, generator=g)
    (grad_theirs,) = torch.autograd.grad((theirs * weights).sum(), zeta)
    ours = gumbel_mask(zeta, g1 - g2, temperature=c)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), zeta)
    assert torch.equal(ours.detach(), theirs.detach()) and set(ours.tolist()) == {0.0, 1.0}
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-5, atol=1e-7)


def test_row_masks_share_one_value_per_row_and_its_bias(float64):
    setup, params, batch, noise = tiny_problem("mt-net", inner_steps=2)
    params["c1.zeta"] = torch.tensor([50.0, -50.0, 50.0])  # rows 0, 2 always on; row 1 always off
    fast = adapt(params, batch.x_support[0], batch.y_support[0], model=setup.model, variant=setup.variant,
                 alpha=0.1, temperature=1.0, steps=2, loss_fn=mse, noise={k: v[0] for k, v in noise.items()})
    moved_W = (fast["c1.W"] != params["c1.W"]).any(dim=1)
    moved_b = fast["c1.b"] != params["c1.b"]
    assert moved_W.tolist() == [True, False, True]
    assert moved_b.tolist() == [True, False, True]
    assert noise["c1.zeta"].shape == (3, 1, 3)  # one draw per task, reused at every step


def test_full_masks_resample_every_step(float64):
    setup, params, batch, noise = tiny_problem("mt-net-full", inner_steps=3)
    assert noise["c0.zeta_W"].shape == (3, 3, 4, 1)  # [tasks, steps, out, in]
    assert not torch.equal(noise["c0.zeta_W"][:, 0], noise["c0.zeta_W"][:, 1])


def test_threshold_mask_at_evaluation_is_deterministic(float64):
    setup, params, batch, noise = tiny_problem("mt-net")
    params["c0.zeta"] = torch.tensor([1.0, -1.0, 2.0, -3.0])
    fast = adapt(params, batch.x_support[0], batch.y_support[0], model=setup.model, variant=setup.variant,
                 alpha=0.1, temperature=1.0, steps=1, loss_fn=mse, mask_mode="threshold")
    assert (fast["c0.W"] != params["c0.W"]).any(dim=1).tolist() == [True, False, True, False]


# ---------------------------------------------------------------- which parameters move


def test_T_and_zeta_never_move_in_the_inner_loop(float64):
    for name in ("t-net", "mt-net", "mt-net-full", "m-net", "meta-sgd"):
        setup, params, batch, noise = tiny_problem(name, inner_steps=3)
        fast = adapt(params, batch.x_support[0], batch.y_support[0], model=setup.model,
                     variant=setup.variant, alpha=0.1, temperature=1.0, steps=3, loss_fn=mse,
                     noise={k: v[0] for k, v in noise.items()})
        frozen = meta_only_names(params)
        assert frozen, name
        for k in frozen:
            assert torch.equal(fast[k], params[k]), (name, k)
        assert any(not torch.equal(fast[k], params[k]) for k in adapted_names(setup.model, setup.variant))


def test_anil_changes_only_the_head(float64):
    setup, params, batch, noise = tiny_problem("anil", inner_steps=2)
    fast = adapt(params, batch.x_support[0], batch.y_support[0], model=setup.model, variant=setup.variant,
                 alpha=0.1, temperature=1.0, steps=2, loss_fn=mse)
    for k in params:
        changed = not torch.equal(fast[k], params[k])
        assert changed == k.startswith("c2."), k


def test_meta_sgd_has_one_alpha_per_adapted_parameter_and_it_gets_gradient(float64):
    setup, params, batch, noise = tiny_problem("meta-sgd")
    alphas = {k for k in params if k.startswith("alpha.")}
    assert alphas == {f"alpha.{n}" for n in adapted_names(setup.model, setup.variant)}
    for n in adapted_names(setup.model, setup.variant):
        assert params[f"alpha.{n}"].shape == params[n].shape
    grads, _ = meta_gradient(params, batch, noise, setup)
    for k in alphas:
        assert grads[k].abs().sum() > 0, k


# ---------------------------------------------------------------- meta-gradients


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("name", [n for n, v in PRESETS.items() if v.outer == "maml" and v.order == "second"])
def test_meta_gradient_matches_finite_differences(float64, name, steps):
    """For every preset trained by a meta-gradient: autograd through the inner loop (1 and 2 steps)
    equals central differences of the meta-loss. For masks, the straight-through estimator makes the
    hard forward pass piecewise constant in zeta, so the zeta check uses the relaxed (soft) mask."""
    setup, params, batch, noise = tiny_problem(name, inner_steps=steps)
    grads, _ = meta_gradient(params, batch, noise, setup)
    numeric = central_fd(lambda p: meta_loss(p, batch, noise, setup), params)
    for k in params:
        if ".zeta" in k:
            continue  # piecewise constant in the forward pass (straight-through); see below
        torch.testing.assert_close(grads[k], numeric[k], atol=1e-6, rtol=1e-5, msg=f"{name} {k}")


def test_zeta_meta_gradient_matches_finite_differences_of_relaxed_mask(float64, monkeypatch):
    """Replace the hard mask by the soft Gumbel-Softmax sample (eq. 11): the gradient that reaches
    zeta is then exactly the derivative of the meta-loss."""
    import metasweep.core.adapt as adapt_mod

    def soft_mask(zeta, noise, temperature):
        return torch.sigmoid((zeta + noise.to(zeta.dtype)) / temperature)

    monkeypatch.setattr(adapt_mod, "gumbel_mask", soft_mask)
    for name in ("mt-net", "mt-net-full", "m-net"):
        setup, params, batch, noise = tiny_problem(name, inner_steps=2)
        grads, _ = meta_gradient(params, batch, noise, setup)
        numeric = central_fd(lambda p, b=batch, n=noise, s=setup: meta_loss(p, b, n, s), params)
        for k in params:
            torch.testing.assert_close(grads[k], numeric[k], atol=1e-6, rtol=1e-5, msg=f"{name} {k}")


def test_fomaml_equals_maml_with_detached_inner_gradient(float64):
    """FOMAML's meta-gradient = gradient of the query loss at theta~ w.r.t. theta~ (the inner gradient
    treated as a constant), computed here independently with plain autograd."""
    setup, params, batch, noise = tiny_problem("fomaml", inner_steps=2)
    grads, _ = meta_gradient(params, batch, noise, setup)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    total = 0.0
    for t in range(3):
        fast = dict(leaves)
        for _ in range(2):
            loss = mse(setup.model.forward(fast, batch.x_support[t]), batch.y_support[t])
            gs = torch.autograd.grad(loss, [fast[n] for n in adapted_names(setup.model, setup.variant)])
            for n, gn in zip(adapted_names(setup.model, setup.variant), gs):
                fast[n] = fast[n] - 0.01 * gn.detach()
        total = total + mse(setup.model.forward(fast, batch.x_query[t]), batch.y_query[t]) / 3
    expected = dict(zip(leaves, torch.autograd.grad(total, list(leaves.values()))))
    maml = tiny_setup("maml", 2)
    maml_grads, _ = meta_gradient(params, batch, noise, maml)
    for k in params:
        torch.testing.assert_close(grads[k], expected[k], atol=1e-10, rtol=1e-8)
    assert any(not torch.allclose(grads[k], maml_grads[k]) for k in params)  # second order differs


def test_reptile_update_is_theta_plus_eps_times_adapted_minus_theta(float64):
    setup, params, batch, noise = tiny_problem("reptile", inner_steps=3)
    direction, _ = reptile_direction(params, batch, noise, setup)
    adapted = [adapt(params, *batch.select(t)[:2], model=setup.model, variant=setup.variant, alpha=0.01,
                     temperature=1.0, steps=3, loss_fn=mse) for t in range(3)]
    eps = 0.3
    state = init_state(tiny_setup("reptile", 3, beta=eps), 0)
    for k, p in state.params.items():
        p.data.copy_(params[k])
        p.grad = direction[k]
    state.optimizer.step()
    for k in params:
        mean_adapted = torch.stack([a[k] for a in adapted]).mean(0)
        torch.testing.assert_close(state.params[k], params[k] + eps * (mean_adapted - params[k]))


@pytest.mark.parametrize("name", list(PRESETS))
def test_vmapped_and_batched_meta_batch_equal_per_task_loop(name):
    setup, params, batch, noise = tiny_problem(name, inner_steps=2)
    setup32 = Setup(setup.family, setup.variant, setup.hp, setup.model, 4, 3, dtype=torch.float32)
    p32 = {k: v.float() for k, v in params.items()}
    b32 = batch.to(dtype=torch.float32)
    n32 = {k: v.float() for k, v in noise.items()}
    if setup.variant.outer == "reptile":
        dv, lv = reptile_direction(p32, b32, n32, setup32)
        dvm, lvm = reptile_direction(p32, b32, n32, Setup(setup.family, setup.variant, setup.hp, setup.model, 4, 3,
                                                          engine="vmap"))
        for k in p32:
            torch.testing.assert_close(dv[k], dvm[k], atol=1e-6, rtol=1e-6)
        # the loop of the same math
        fasts = [adapt(p32, *b32.select(t)[:2], model=setup.model, variant=setup.variant, alpha=0.01,
                       temperature=1.0, steps=2, loss_fn=mse) for t in range(3)]
        for k in p32:
            torch.testing.assert_close(dv[k], p32[k] - torch.stack([f[k] for f in fasts]).mean(0), atol=1e-6,
                                       rtol=1e-6)
        return
    gl, ll = meta_gradient(p32, b32, n32, setup32, engine="loop")
    for engine in ("vmap", "batched"):
        gv, lv = meta_gradient(p32, b32, n32, setup32, engine=engine)
        torch.testing.assert_close(lv, ll, atol=1e-6, rtol=1e-6)
        for k in p32:
            torch.testing.assert_close(gv[k], gl[k], atol=1e-6, rtol=1e-5, msg=f"{engine} {k}")


# ---------------------------------------------------------------- the dense net's written-out backprop


def autograd_task_gradients(model, params, x, y, loss, names, shared):
    """Every task's gradient the autograd way: parameters expanded to [tasks, ...] (or already per
    task), the per-task losses summed, differentiated with create_graph (second order possible)."""
    n = x.shape[0]
    fast = {k: (v.expand(n, *v.shape) if shared else v) for k, v in params.items() if k in names}
    total = PER_TASK[loss](model.forward({**params, **fast}, x), y).sum()
    return dict(zip(names, torch.autograd.grad(total, [fast[k] for k in names], create_graph=True)))


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("name,frozen", [("maml", ()), ("t-net", ()), ("anil", ()), ("maml", ("c0",)),
                                         ("t-net", ("c1",))])
@pytest.mark.parametrize("shared", [True, False])
def test_dense_task_gradients_equal_autograd_and_so_do_their_derivatives(float64, loss, name, frozen, shared):
    """DenseNet.task_gradients (the batched engine's inner gradient) against autograd: the gradients
    themselves (shared parameters, or one set per task as in a bundle; T-nets' T; ANIL's head only;
    a frozen cell), and the gradient of a random linear function of them w.r.t. every parameter -
    the second-order term of MAML's meta-gradient."""
    g = torch.Generator().manual_seed(3)
    model = DenseNet((2, 5, 4, 3), init_std=0.7)
    variant = get_variant(name)
    params = learner_params(model, variant, g, dtype=D)
    params = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=D) for k, v in params.items()}
    n_tasks = 4
    if not shared:
        params = {k: v + 0.1 * torch.randn((n_tasks, *v.shape), generator=g, dtype=D) for k, v in params.items()}
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    x = torch.randn(n_tasks, 6, 2, generator=g, dtype=D)
    y = (torch.randn(n_tasks, 6, 3, generator=g, dtype=D) if loss == "mse" else
         torch.randint(0, 3, (n_tasks, 6), generator=g))
    names = adapted_names(model, variant, frozen)
    ours = model.task_gradients(params, x, y, PER_TASK_GRAD[loss], names)
    ref = autograd_task_gradients(model, params, x, y, loss, names, shared)
    assert list(ours) == names
    probes = {k: torch.randn(ref[k].shape, generator=g, dtype=D) for k in names}
    for k in names:
        assert ours[k].shape == (n_tasks, *model_shape(params[k], shared)), k
        torch.testing.assert_close(ours[k], ref[k], atol=1e-12, rtol=1e-10, msg=k)
    leaves = list(params.values())
    second = torch.autograd.grad(sum((ours[k] * probes[k]).sum() for k in names), leaves, allow_unused=True)
    second_ref = torch.autograd.grad(sum((ref[k] * probes[k]).sum() for k in names), leaves, allow_unused=True)
    for k, a, b in zip(params, second, second_ref):
        a = torch.zeros_like(params[k]) if a is None else a
        b = torch.zeros_like(params[k]) if b is None else b
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=f"second order {k}")
    assert any(a is not None and a.abs().sum() > 0 for a in second)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("layout", ["shared", "per_task", "grouped"])
@pytest.mark.parametrize("name,frozen,mask_mode", [
    ("maml", (), "sample"), ("fomaml", (), "sample"), ("t-net", (), "sample"), ("mt-net", (), "sample"),
    ("mt-net", (), "threshold"), ("m-net", (), "sample"), ("anil", (), "sample"), ("maml", ("c1",), "sample"),
    ("mt-net-full", (), "sample"), ("meta-sgd", (), "sample")])
def test_query_outputs_of_the_unformed_last_step_equal_those_of_the_formed_one(float64, name, frozen, mask_mode,
                                                                                layout, steps):
    """adapt(..., x_query=...) computes the last inner step's query outputs from its factors
    (DenseNet.forward_updated: per-task kernels, no per-task weights) where each cell moves by one
    step size per row; its outputs and their derivatives w.r.t. every meta-parameter (MAML's second
    order, zeta's straight-through path) equal the forward pass on the formed fast parameters. Parameters
    shared by all tasks, one set per task, or one per group of consecutive tasks (core.bundle's fold:
    core.cells.affine) - with a per-task alpha and temperature - and the grouped layout equals the same
    parameters copied to every task of the group. The variants where the step is formed (full masks,
    Meta-SGD) give the same values by definition."""
    g = torch.Generator().manual_seed(5)
    model = DenseNet((2, 5, 4, 3), init_std=0.7)
    variant = get_variant(name)
    params = learner_params(model, variant, g, dtype=D)
    params = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=D) for k, v in params.items()}
    n_tasks, lead = 4, {"shared": 0, "per_task": 4, "grouped": 2}[layout]
    alpha, temperature = 0.05, 0.7
    if lead:
        params = {k: v + 0.1 * torch.randn((lead, *v.shape), generator=g, dtype=D) for k, v in params.items()}
        alpha = torch.tensor([0.05, 0.1, 0.02, 0.07], dtype=D)
        temperature = torch.tensor([0.7, 1.0, 0.5, 2.0], dtype=D)
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    xs, xq = torch.randn(n_tasks, 6, 2, generator=g, dtype=D), torch.randn(n_tasks, 5, 2, generator=g, dtype=D)
    ys = torch.randn(n_tasks, 6, 3, generator=g, dtype=D)
    noise = {k: torch.randn((n_tasks, steps, *v.shape[int(bool(lead)):]), generator=g, dtype=D)
             for k, v in params.items() if ".zeta" in k}
    kw = dict(model=model, variant=variant, alpha=alpha, temperature=temperature, steps=steps, loss_fn=mse,
              noise=noise, mask_mode=mask_mode, batched=True, frozen=frozen, task_params=bool(lead))
    ours = adapt(params, xs, ys, x_query=xq, **kw)
    refs = [model.forward(adapt(params, xs, ys, **kw), xq)]
    if layout == "grouped":
        copied = {k: v.repeat_interleave(2, 0) for k, v in params.items()}
        refs.append(model.forward(adapt(copied, xs, ys, **kw), xq))
    probe = torch.randn(ours.shape, generator=g, dtype=D)
    leaves = list(params.values())
    a = torch.autograd.grad((ours * probe).sum(), leaves, allow_unused=True, retain_graph=True)
    for ref in refs:
        torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-10)
        b = torch.autograd.grad((ref * probe).sum(), leaves, allow_unused=True)
        for k, x, y in zip(params, a, b):
            assert (x is None) == (y is None), k
            if x is not None:
                torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-10, msg=k)
    assert any(x is not None and ".zeta" in k and x.abs().sum() > 0 for k, x in zip(params, a)) == (
        variant.masked and mask_mode == "sample")  # a threshold mask passes no gradient to zeta


def test_the_fold_passes_groups_only_where_adapt_takes_them():
    """core.adapt.takes_groups: the dense net's written-out gradient takes one parameter set per group of
    tasks; a subclass with its own forward pass, a wrapper, or a loss without a written-out gradient
    get one set per task (autograd's per-task gradients need per-task leaves)."""
    from metasweep.core.adapt import takes_groups
    from metasweep.core.losses import cross_entropy

    dense = DenseNet((1, 4, 1))
    assert takes_groups(dense, mse) and takes_groups(dense, cross_entropy)
    assert not takes_groups(TanhNet((1, 4, 1)), mse)
    assert not takes_groups(Wrapped(), mse)
    assert not takes_groups(dense, lambda out, y: (out - y).abs().mean())

    class OwnGradients(TanhNet):  # its own forward pass and its own inner gradient, nothing else written out
        def task_gradients(self, p, x, y, loss_grad, names):
            return autograd_task_gradients(self, p, x, y, "mse", names, shared=p[names[0]].dim() == 2)

    own = OwnGradients((1, 4, 1))
    assert takes_groups(own, mse) is False and OwnGradients.forward_updated is None  # adapt forms its steps
    g = torch.Generator().manual_seed(2)
    params = {k: v.requires_grad_(True) for k, v in learner_params(own, get_variant("maml"), g, dtype=D).items()}
    xs, ys, xq = (torch.randn(3, 4, 1, generator=g, dtype=D) for _ in range(3))
    kw = dict(model=own, variant=get_variant("maml"), alpha=0.1, temperature=1.0, steps=1, loss_fn=mse, batched=True)
    torch.testing.assert_close(adapt(params, xs, ys, x_query=xq, **kw), own.forward(adapt(params, xs, ys, **kw), xq))


def test_a_subclass_with_its_own_inner_gradient_trains_with_it():
    """A DenseNet subclass that overrides only task_gradients (same forward pass, e.g. a rescaled inner
    gradient): the last inner step is formed with its gradient (not DenseNet's factors), and its
    parameters are not passed grouped to a fold."""
    from metasweep.core.adapt import takes_groups

    class HalfGradients(DenseNet):
        def task_gradients(self, p, x, y, loss_grad, names):
            return {n: 0.5 * g for n, g in super().task_gradients(p, x, y, loss_grad, names).items()}

    g = torch.Generator().manual_seed(0)
    model, plain = HalfGradients((2, 5, 3), init_std=0.7), DenseNet((2, 5, 3), init_std=0.7)
    assert not takes_groups(model, mse) and HalfGradients.forward_updated is None
    p = learner_params(model, get_variant("maml"), g, dtype=D)
    xs, ys, xq = (torch.randn(4, 6, k, generator=g, dtype=D) for k in (2, 3, 2))
    kw = dict(variant=get_variant("maml"), temperature=1.0, loss_fn=mse, batched=True, steps=2)
    ours = adapt(p, xs, ys, x_query=xq, model=model, alpha=0.3, **kw)
    torch.testing.assert_close(ours, model.forward(adapt(p, xs, ys, model=model, alpha=0.3, **kw), xq))
    # half the gradient at alpha 0.3 is DenseNet's own at alpha 0.15
    torch.testing.assert_close(ours, adapt(p, xs, ys, x_query=xq, model=plain, alpha=0.15, **kw))


def model_shape(p, shared):
    return p.shape if shared else p.shape[1:]


class TanhNet(DenseNet):
    """A dense net with its own forward pass (tanh): the written-out ReLU backprop is not its gradient."""

    def forward(self, p, x, upto=None):
        h = x
        for l in range(self.n_cells if upto is None else upto):
            h = h @ p[f"c{l}.W"].transpose(-1, -2) + p[f"c{l}.b"].unsqueeze(-2)
            if l != self.n_cells - 1:
                h = torch.tanh(h)
        return h


class Wrapped:
    """A model that hands every attribute but its forward pass to a dense net (like a recording wrapper)."""

    def __init__(self):
        self.net = DenseNet((1, 4, 3, 1), init_std=0.5)

    def __getattr__(self, name):
        return getattr(self.net, name)

    def forward(self, p, x, upto=None):
        return 2.0 * self.net.forward(p, x, upto)


@pytest.mark.parametrize("model", [TanhNet((1, 4, 3, 1), init_std=0.5), Wrapped()], ids=["subclass", "wrapper"])
def test_a_model_with_another_forward_pass_is_differentiated_by_autograd(float64, model):
    """The batched engine's written-out gradient is only for DenseNet's own forward pass: a subclass
    that brings its own forward pass (and no task_gradients), or a wrapper delegating attributes to a
    DenseNet, gets the meta-gradient autograd gives - the loop engine's."""
    setup = Setup(Sine(), get_variant("maml"), HParams(meta_batch=3), model=model, train_shots=4, queries=3, dtype=D)
    g = torch.Generator().manual_seed(1)
    params = randomize(init_state(setup, 1).params, g)
    batch = setup.family.sample(g, 3, 4, 3).to(dtype=D)
    noise = sample_noise(params, setup, g, 3, 1)
    loop, _ = meta_gradient(params, batch, noise, setup, engine="loop")
    batched, _ = meta_gradient(params, batch, noise, setup, engine="batched")
    for k in params:
        torch.testing.assert_close(batched[k], loop[k], atol=1e-10, rtol=1e-8, msg=k)


def test_dense_net_forward_is_the_same_for_shared_and_per_task_weights(float64):
    """cell_output's three forms (addmm for shared W, baddbmm for per-task W, broadcast otherwise)
    compute T (W h + b)."""
    g = torch.Generator().manual_seed(0)
    model = DenseNet((3, 4, 2))
    p = {k: v + torch.randn(v.shape, generator=g, dtype=D) for k, v in model.init(g, dtype=D).items()}
    p["c0.T"] = torch.randn(4, 4, generator=g, dtype=D)
    x = torch.randn(5, 7, 3, generator=g, dtype=D)
    shared = model.forward(p, x)
    per_task = model.forward({k: v.expand(5, *v.shape) for k, v in p.items()}, x)
    one = torch.stack([model.forward(p, x[t]) for t in range(5)])
    by_hand = torch.relu((x @ p["c0.W"].T + p["c0.b"]) @ p["c0.T"].T) @ p["c1.W"].T + p["c1.b"]
    for out in (shared, per_task, one):
        torch.testing.assert_close(out, by_hand, atol=1e-12, rtol=1e-12)


# ---------------------------------------------------------------- variants are validated data


def test_presets_are_rows_of_switches():
    assert set(PRESETS) == {"maml", "fomaml", "reptile", "meta-sgd", "anil", "t-net", "m-net", "m-net-full",
                            "mt-net", "mt-net-full"}
    assert PRESETS["mt-net"].transform and PRESETS["mt-net"].mask == "row"
    assert PRESETS["m-net-full"].mask == "full" and not PRESETS["m-net-full"].transform
    from dataclasses import FrozenInstanceError

    with pytest.raises(FrozenInstanceError):
        PRESETS["maml"].transform = True  # frozen


@pytest.mark.parametrize("switches, words", [
    ({"outer": "reptile", "order": "first", "transform": True}, "never be meta-learned"),
    ({"outer": "reptile"}, "first-order"),
    ({"mask": "rows"}, "mask must be one of"),
    ({"inner_params": "head", "mask": "row"}, "inner_params=head"),
    ({"colour": "red"}, "unknown switch"),
])
def test_nonsense_switch_combinations_are_clear_errors(switches, words):
    with pytest.raises(VariantError, match=words):
        get_variant("maml", **switches)


def test_unknown_variant_lists_presets():
    with pytest.raises(VariantError, match="presets: maml, fomaml"):
        get_variant("mtnet")
