"""Meta-RL math checked in closed form and by finite differences: the policy-gradient estimator on a
one-step bandit, returns / GAE / the linear baseline, TRPO's step and its Fisher products, the
meta-gradient through the inner policy-gradient step, ANIL's head-only inner loop."""

import math

import numpy as np
import pytest
import torch
from coreutil import central_fd
from rlutil import D, tiny_meta_batch

from metasweep.core.rl.advantages import (
    baseline_features,
    discounted_returns,
    fit_linear_baseline,
    gae,
    normalize,
)
from metasweep.core.rl.outer import query_dist
from metasweep.core.rl.pg import kl_metric, lvc, mean_kl, pack, reinforce, surrogate
from metasweep.core.rl.policy import kl, log_prob
from metasweep.core.rl.sampling import inner_step
from metasweep.core.rl.trpo import flat, gauss_newton_fvp, hessian_fvp, trpo_step

# ---------------------------------------------------------------- the policy-gradient estimator


def bandit_gradient_estimate(mu, log_std, c, n, seed=0):
    """-grad of the REINFORCE loss on n one-step episodes of the bandit r(a) = -(a - c)^2 with the
    Gaussian policy N(mu, sigma^2), advantage = reward, weight 1/n (the estimator MAML's inner step uses),
    and the per-episode scores r * grad log pi in closed form (their mean is the estimate)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.tensor([mu, log_std], dtype=D, requires_grad=True)
    sigma = math.exp(log_std)
    with torch.no_grad():
        a = mu + sigma * torch.randn((n, 1), generator=g, dtype=D)
        r = -((a[:, 0] - c) ** 2)
    y = pack(a, r, torch.full((n,), 1.0 / n, dtype=D), torch.zeros(n, dtype=D))
    loss = reinforce(out.expand(n, 2), y)
    z = (a[:, 0] - mu) / sigma
    scores = torch.stack([r * z / sigma, r * (z * z - 1)], 1)  # r grad_mu log pi, r grad_{log sigma} log pi
    return -torch.autograd.grad(loss, out)[0].numpy(), scores.numpy()


def test_reinforce_estimates_the_bandit_gradient_in_closed_form():
    """J(mu, sigma) = E[-(a - c)^2] = -((mu - c)^2 + sigma^2): dJ/dmu = -2 (mu - c), dJ/dlog sigma = -2 sigma^2.
    The estimator is the mean of the per-episode scores (to rounding), and it is unbiased: within 4
    standard errors of the closed form, at two sample sizes and seeds."""
    mu, log_std, c = 0.3, math.log(0.7), -0.5
    exact = np.array([-2 * (mu - c), -2 * 0.7**2])
    for n, seed in ((400_000, 0), (20_000, 1)):
        est, scores = bandit_gradient_estimate(mu, log_std, c, n, seed)
        assert np.allclose(est, scores.mean(0), rtol=1e-10)
        se = scores.std(0) / math.sqrt(n)
        assert (np.abs(est - exact) < 4 * se).all(), (est, exact, se)
    assert (se < 0.05 * np.abs(exact)).all()  # and 4 SE is a tight check, not a vacuous one


def test_lvc_has_the_reinforce_gradient_at_the_sampling_policy():
    """ProMP's LVC objective and REINFORCE differ in value and curvature, not in their gradient at pi_old."""
    g = torch.Generator().manual_seed(1)
    out = torch.randn(7, 4, generator=g, dtype=D)
    a = torch.randn(7, 2, generator=g, dtype=D)
    y = pack(a, torch.randn(7, generator=g, dtype=D), torch.rand(7, generator=g, dtype=D), log_prob(out, a))
    o1, o2 = out.clone().requires_grad_(True), out.clone().requires_grad_(True)
    g1 = torch.autograd.grad(reinforce(o1, y), o1)[0]
    g2 = torch.autograd.grad(lvc(o2, y), o2)[0]
    assert torch.allclose(g1, g2, atol=1e-12)
    assert torch.allclose(surrogate(out, y), (y[:, 2] * y[:, 3]).sum())  # ratio 1 at pi_old


def test_gaussian_log_prob_and_kl_match_torch_distributions():
    g = torch.Generator().manual_seed(2)
    p, q, a = (torch.randn(5, 6, generator=g, dtype=D) for _ in range(3))
    P = torch.distributions.Normal(p[:, :3], p[:, 3:].exp())
    Q = torch.distributions.Normal(q[:, :3], q[:, 3:].exp())
    assert torch.allclose(log_prob(p, a[:, :3]), P.log_prob(a[:, :3]).sum(-1))
    assert torch.allclose(kl(p, q), torch.distributions.kl_divergence(P, Q).sum(-1))


# ---------------------------------------------------------------- returns, GAE, the linear baseline


def test_discounted_returns_and_gae_in_closed_form():
    r = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]], dtype=D)
    mask = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]], dtype=D)  # the episode ends after step 2
    gamma = 0.5
    R = discounted_returns(r, mask, gamma)
    assert torch.allclose(R, torch.tensor([[[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0.0]]], dtype=D))
    v = torch.tensor([[[0.5, -1.0, 2.0, 7.0]]], dtype=D)
    assert torch.allclose(gae(r, v, mask, gamma, 1.0), (R - v) * mask)  # lambda = 1: R_t - V(s_t)
    delta = torch.tensor([[[1 + 0.5 * -1.0 - 0.5, 2 + 0.5 * 2.0 + 1.0, 3 - 2.0, 0.0]]], dtype=D)
    assert torch.allclose(gae(r, v, mask, gamma, 0.0), delta)  # lambda = 0: the TD error (V = 0 after the end)
    adv = normalize(gae(r, v, mask, gamma, 1.0), mask)
    valid = adv[mask > 0]
    assert abs(float(valid.mean())) < 1e-12 and abs(float(valid.std(unbiased=False)) - 1) < 1e-6
    assert float(adv[mask == 0].abs().sum()) == 0


def test_linear_baseline_recovers_a_linear_target_and_ignores_steps_after_the_end():
    g = torch.Generator().manual_seed(3)
    obs = torch.randn(2, 6, 100, 3, generator=g, dtype=D)
    mask = torch.ones(2, 6, 100, dtype=D)
    mask[:, :, 70:] = 0
    mask[1, 2, 40:] = 0
    phi = baseline_features(obs, torch.ones_like(mask))
    w = torch.randn(2, 1, 1, phi.shape[-1], generator=g, dtype=D)  # one weight vector per task
    target = (phi * w).sum(-1)
    garbage = target + 100 * (1 - mask) * torch.randn(target.shape, generator=g, dtype=D)
    fit = fit_linear_baseline(baseline_features(obs, mask), garbage, mask, reg=1e-12)
    assert torch.allclose(fit * mask, target * mask, atol=1e-6)
    assert float(fit[mask == 0].abs().sum()) == 0
    # on noisy targets: rllab's ridge solution (X^T X + 1e-5 I) w = X^T y on each task's valid steps
    noisy = target + torch.randn(target.shape, generator=g, dtype=D)
    fit = fit_linear_baseline(baseline_features(obs, mask), noisy, mask)
    for t in range(2):
        X, yv = phi[t][mask[t] > 0].numpy(), noisy[t][mask[t] > 0].numpy()
        coef = np.linalg.solve(X.T @ X + 1e-5 * np.eye(X.shape[1]), X.T @ yv)
        assert np.allclose(fit[t][mask[t] > 0].numpy(), X @ coef, atol=1e-8)
        assert np.mean((X @ coef - yv) ** 2) < np.mean((yv - yv.mean()) ** 2)  # it explains something


# ---------------------------------------------------------------- TRPO


def tiny_policy_problem(seed=4):
    """A linear-Gaussian policy out = [x W^T, log sigma] on fixed samples with advantages."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, generator=g, dtype=D)
    params = {"W": 0.5 * torch.randn(2, 3, generator=g, dtype=D), "log_std": torch.full((2,), -0.3, dtype=D)}

    def out_fn(p):
        mean = x @ p["W"].T
        return torch.cat([mean, p["log_std"].expand_as(mean)], -1)

    with torch.no_grad():
        old = out_fn(params)
        a = old[:, :2] + old[:, 2:].exp() * torch.randn(64, 2, generator=g, dtype=D)
        y = pack(a, torch.randn(64, generator=g, dtype=D), torch.full((64,), 1 / 64, dtype=D), log_prob(old, a))
    return params, out_fn, old, y


@pytest.mark.parametrize("max_kl", [1e-3, 1e-2, 0.1])
def test_trpo_step_keeps_the_kl_bound_and_improves_the_surrogate(max_kl):
    params, out_fn, old, y = tiny_policy_problem()
    new, info = trpo_step(params, out_fn, lambda o: -surrogate(o, y), lambda o: mean_kl(old, o, y),
                          kl_metric(old, y, 1), max_kl=max_kl)
    with torch.no_grad():
        got_kl = float(mean_kl(old, out_fn(new), y))
        gain = float(surrogate(out_fn(new), y) - surrogate(old, y))
    assert 0 < got_kl <= max_kl and gain > 0, (got_kl, gain)
    assert info["step_fraction"] > 0 and abs(info["kl"] - got_kl) < 1e-12
    # the quadratic model: a full step lands near the bound (0.5 d^T F d = delta), small steps exactly
    if info["step_fraction"] == 1.0 and max_kl <= 1e-2:
        assert got_kl == pytest.approx(max_kl, rel=0.15)


def test_gauss_newton_fisher_products_equal_the_kl_hessian_through_the_inner_step():
    """F v = J^T M J v (no third-order derivatives) equals the double-backward Hessian-vector product of
    the mean KL of the adapted policy (through MAML's second-order inner step) at the current parameters."""
    setup, params, mb = tiny_meta_batch("maml-trpo")
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    out = query_dist(setup, leaves, mb)
    q = mb.query
    gn = gauss_newton_fvp(out, leaves, kl_metric(q.dist, q.y, q.x.shape[0]), damping=0.0)
    hess = hessian_fvp(lambda p: mean_kl(q.dist, query_dist(setup, p, mb), q.y).mean(), damping=0.0)(leaves)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        v = torch.randn(sum(t.numel() for t in params.values()), generator=g, dtype=D)
        a, b = gn(v), hess(v)
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9 * float(b.abs().max())), float((a - b).abs().max())


# ---------------------------------------------------------------- the meta-gradient through the inner step


@pytest.mark.parametrize("preset", ["maml-trpo", "anil-trpo", "fomaml-trpo", "promp"])
def test_meta_gradient_through_the_inner_policy_gradient_step_matches_finite_differences(preset):
    """With the sampled trajectories fixed, the surrogate of the adapted policy is a deterministic
    function of the meta-parameters: autograd's gradient through the inner step (second order, or
    first order for fomaml-trpo, head only for anil-trpo, the LVC inner loss for promp) equals central
    finite differences of that same function."""
    setup, params, mb = tiny_meta_batch(preset)
    q = mb.query

    def objective(p):
        return surrogate(query_dist(setup, p, mb), q.y).mean()

    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    auto = dict(zip(leaves, torch.autograd.grad(objective(leaves), list(leaves.values()))))
    if preset == "fomaml-trpo":  # first order: the inner gradient is a constant of theta
        from metasweep.core.rl.sampling import adapt_through

        fixed = {k: v.detach() for k, v in adapt_through(setup.learner, setup, params, mb.support, mb.noise).items()}
        shift = {k: fixed[k] - params[k] for k in fixed}

        def objective(p):  # noqa: F811 - the first-order objective: theta' = theta + const
            fast = {k: p[k] + shift[k] for k in p}
            return surrogate(setup.model.forward(fast, q.x), q.y).mean()

    with torch.no_grad():
        fd = central_fd(lambda p: float(objective(p)), params, h=1e-6)
    for k in params:
        assert torch.allclose(auto[k], fd[k], rtol=1e-5, atol=1e-8), (k, (auto[k] - fd[k]).abs().max())


def test_second_order_terms_matter():
    """MAML's meta-gradient differs from the first-order one on the same trajectories."""
    setup, params, mb = tiny_meta_batch("maml-trpo")
    first, _, mb1 = tiny_meta_batch("fomaml-trpo")
    grads = []
    for s, m in ((setup, mb), (first, mb1)):
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        obj = surrogate(query_dist(s, leaves, m), m.query.y).mean()
        grads.append(flat(torch.autograd.grad(obj, list(leaves.values()))))
    assert not torch.allclose(grads[0], grads[1], rtol=1e-3)


def test_anil_adapts_only_the_head():
    for preset, moved in (("anil-trpo", {"c2.W", "c2.b"}), ("maml-trpo", {"c0.W", "c0.b", "c1.W", "c1.b", "c2.W", "c2.b"})):
        setup, params, mb = tiny_meta_batch(preset)
        fast = inner_step(setup.learner, setup, params, mb.support[0], mb.noise, 0)
        changed = {k for k in params if not torch.equal(fast[k].expand_as(fast[k]), params[k].expand_as(fast[k]))}
        assert changed == moved, (preset, changed)
        assert all(fast[k].shape[0] == 3 for k in moved)  # one adapted copy per task
        assert torch.equal(fast["log_std"], params["log_std"])  # the policy's sigma is outer-loop only
