"""HalfCheetah-Direction / -Velocity on gymnasium's MuJoCo HalfCheetah-v5 (skipped, with the reason,
where MuJoCo cannot load: install the extra `metasweep[rl]`): rewards as the MAML paper's tasks define
them, rollouts deterministic given their seeds, one meta-iteration and an evaluation."""

import numpy as np
import pytest
import torch

from metasweep.core import HParams, registry
from metasweep.core.evaluate import evaluate
from metasweep.core.rl.cheetah import ENV_ID, mujoco_problem
from metasweep.core.rl.policy import GaussianMLP
from metasweep.core.setup import Setup, check_sizes
from metasweep.core.state import init_state
from metasweep.core.train import train

PROBLEM = mujoco_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")


def constant(values):
    a = torch.tensor(values, dtype=torch.float64)
    return lambda obs, t: a.expand(*obs.shape[:-1], 6)


def reference_velocities(seed, action, steps):
    """x velocities of a plain gymnasium HalfCheetah-v5 reset with `seed`, stepping `action`."""
    import gymnasium as gym

    from metasweep.core.rl.cheetah import quiet_mujoco

    with quiet_mujoco():
        env = gym.make(ENV_ID)
    env.reset(seed=seed)
    return np.array([env.step(np.clip(action, -1, 1))[4]["x_velocity"] for _ in range(steps)])


def test_direction_and_velocity_rewards_follow_the_paper():
    action = [0.9, -0.5, 1.7, 0.0, 0.3, -2.0]  # clipped to [-1, 1] before the simulation and the control cost
    ctrl = 0.05 * float(np.sum(np.clip(action, -1, 1) ** 2))
    seeds = torch.tensor([[11, 12]])
    v = np.stack([reference_velocities(s, np.array(action), 15) for s in (11, 12)])
    d = registry.make_family("cheetah-dir", horizon=15)
    for direction in (1.0, -1.0):
        traj = d.rollout(constant(action), torch.tensor([[direction]]), seeds, dtype=torch.float64)
        assert np.allclose(traj.rewards[0].numpy(), direction * v - ctrl, atol=1e-9)
    vel = registry.make_family("cheetah-vel", horizon=15)
    traj = vel.rollout(constant(action), torch.tensor([[1.3]]), seeds, dtype=torch.float64)
    assert np.allclose(traj.rewards[0].numpy(), -np.abs(v - 1.3) - ctrl, atol=1e-9)
    assert traj.obs.shape == (1, 2, 15, 17) and bool(traj.mask.all())
    g = torch.Generator().manual_seed(0)
    dirs, goals = d.draw_tasks(g, 400), vel.draw_tasks(g, 400)
    assert set(dirs.flatten().tolist()) == {-1.0, 1.0} and 0 <= goals.min() and goals.max() <= 2


def test_a_rollout_is_a_function_of_its_seeds():
    fam = registry.make_family("cheetah-vel", horizon=20)
    policy = GaussianMLP((17, 8, 6))
    params = policy.init(torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = torch.randn(2, 3, 20, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def act(obs, t):
        out = policy.forward(params, obs)
        return out[..., :6] + out[..., 6:].exp() * eps[:, :, t]

    tasks, seeds = torch.tensor([[0.5], [1.5]]), torch.tensor([[1, 2, 3], [4, 5, 6]])
    a = fam.rollout(act, tasks, seeds, dtype=torch.float64)
    fam.rollout(act, tasks, seeds[:, [2, 0, 1]], dtype=torch.float64)  # the pool in another state
    b = fam.rollout(act, tasks, seeds, dtype=torch.float64)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.obs[0, 0], a.obs[0, 1])  # reset noise differs per trajectory


@pytest.mark.parametrize("family", ["cheetah-dir", "cheetah-vel"])
def test_one_meta_iteration_and_an_evaluation(family):
    fam = registry.make_family(family, horizon=15)
    learner = registry.make_learner("anil-trpo")
    setup = Setup(fam, learner, HParams(alpha=0.1, meta_batch=2), GaussianMLP((17, 16, 16, 6)), train_shots=3,
                  queries=2)
    check_sizes(setup, eval_shots=(3,))
    state = init_state(setup, 0)
    before = {k: v.clone() for k, v in state.params.items()}
    assert train(setup, state, 1, report_every=1, val_tasks=2) == "completed"
    assert not torch.equal(before["c2.W"], state.params["c2.W"])
    cols = evaluate(setup, state.params, n_tasks=3, shots=(3,), steps=(0, 1))
    again = evaluate(setup, state.params, n_tasks=3, shots=(3,), steps=(0, 1))
    assert np.isfinite(cols["return"]).all() and np.array_equal(cols["return"], again["return"])
