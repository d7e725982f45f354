"""Meta-RL learners end to end on 2D navigation: the environment in closed form, training improves the
adapted return, evaluation tasks are fixed and shared across variants (nested shots), a checkpoint
resumes bit for bit, a NaN policy is `diverged`, and bad input fails before training."""

import numpy as np
import pytest
import torch
from rlutil import nav_setup

from metasweep.core import HParams, registry
from metasweep.core.bundle import check_bundle
from metasweep.core.evaluate import evaluate
from metasweep.core.rl.navigation import Navigation2D
from metasweep.core.setup import Setup, check_sizes
from metasweep.core.state import init_state, state_from_bytes
from metasweep.core.tasks import Sine
from metasweep.core.train import train


def rows(cols, shots, steps, metric="return"):
    sel = (cols["shots"] == shots) & (cols["inner_steps"] == steps)
    return cols[metric][sel][np.argsort(cols["task_index"][sel])]


def test_navigation_in_closed_form():
    """Actions clipped to 0.1 per coordinate, reward -distance after the move, done within 0.01 of the goal."""
    env = Navigation2D(horizon=6)
    goal = torch.tensor([[0.3, 0.0], [-0.2, 0.45]], dtype=torch.float64)
    seeds = torch.zeros(2, 1, dtype=torch.int64)
    act = lambda obs, t: torch.tensor([0.7, -0.0], dtype=torch.float64).expand_as(obs)  # clipped to (0.1, 0)
    traj = env.rollout(act, goal, seeds, dtype=torch.float64)
    x = 0.1 * torch.arange(1, 7, dtype=torch.float64)
    d0 = (x - 0.3).abs()
    assert torch.allclose(traj.mask[0, 0], torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.float64))  # at the goal after 3
    assert torch.allclose(traj.rewards[0, 0], -d0 * traj.mask[0, 0])
    d1 = torch.sqrt((x + 0.2) ** 2 + 0.45**2)
    assert torch.allclose(traj.rewards[1, 0], -d1) and bool(traj.mask[1, 0].all())
    assert torch.allclose(traj.obs[0, 0, :3, 0], torch.tensor([0.0, 0.1, 0.2], dtype=torch.float64))
    assert float(traj.returns()[0, 0]) == pytest.approx(-(0.2 + 0.1 + 0.0))
    g = torch.Generator().manual_seed(0)
    goals = env.draw_tasks(g, 1000)
    assert goals.min() >= -0.5 and goals.max() <= 0.5 and goals.std() > 0.25


@pytest.fixture(scope="module")
def trained():
    """maml-trpo and anil-trpo (a 2-32-32-2 policy), 12 meta-iterations on small batches (the same init:
    one seed)."""
    out = {}
    for preset in ("maml-trpo", "anil-trpo"):
        setup = nav_setup(preset, hidden=(32, 32), meta_batch=10, shots=10, queries=10)
        state = init_state(setup, 0)
        init = {k: v.clone() for k, v in state.params.items()}
        assert train(setup, state, 12, report_every=6, val_tasks=5) == "completed"
        out[preset] = setup, init, state
    return out


def test_training_improves_the_adapted_return_and_adaptation_helps(trained):
    for preset, (setup, init, state) in trained.items():
        before = evaluate(setup, init, n_tasks=30, shots=(10,), steps=(0, 1))
        after = evaluate(setup, state.params, n_tasks=30, shots=(10,), steps=(0, 1))
        assert rows(after, 10, 1).mean() > rows(before, 10, 1).mean() + 15, preset
        assert rows(after, 10, 1).mean() > rows(after, 10, 0).mean() + 2, preset  # one inner step helps
        assert np.array_equal(after["loss"], -after["return"]) and np.isnan(after["accuracy"]).all()
        curve = [-r["meta_train_loss"] for r in state.curves]
        assert curve[-1] > curve[0] and all(r["val_loss"] == r["val_loss"] for r in state.curves)


def test_evaluation_tasks_are_identical_across_variants_and_shots(trained):
    """Same parameters, two variants: identical returns before adaptation (same tasks, same
    trajectories), different after (ANIL adapts the head only). One variant: the 5-shot rows do not move
    when 10 shots are evaluated too, nor with the number of tasks or steps evaluated."""
    (m, init, _), (a, _, _) = trained["maml-trpo"], trained["anil-trpo"]
    em = evaluate(m, init, n_tasks=12, shots=(5,), steps=(0, 1))
    ea = evaluate(a, init, n_tasks=12, shots=(5,), steps=(0, 1))
    assert np.array_equal(rows(em, 5, 0), rows(ea, 5, 0))
    assert not np.array_equal(rows(em, 5, 1), rows(ea, 5, 1))
    more = evaluate(m, init, n_tasks=20, shots=(10, 5), steps=(2, 1, 0), chunk=7)
    for steps in (0, 1):
        assert np.array_equal(rows(em, 5, steps), rows(more, 5, steps)[:12])
    assert not np.array_equal(rows(more, 5, 1), rows(more, 10, 1))
    val = evaluate(m, init, split="val", n_tasks=12, shots=(5,), steps=(0,))
    assert not np.array_equal(rows(val, 5, 0), rows(em, 5, 0))


@pytest.mark.parametrize("preset", ["maml-trpo", "promp"])
def test_a_checkpoint_resumes_bit_for_bit(preset):
    setup = nav_setup(preset, hidden=(16, 16), meta_batch=3, shots=4, queries=3, horizon=20)
    straight = init_state(setup, 3)
    train(setup, straight, 4, report_every=2, val_tasks=2)
    first = init_state(setup, 3)
    train(setup, first, 2, report_every=2, val_tasks=2)
    resumed = state_from_bytes(setup, first.to_bytes())
    train(setup, resumed, 4, report_every=2, val_tasks=2)
    for k in straight.params:
        assert torch.equal(straight.params[k], resumed.params[k]), k
    assert [r["meta_train_loss"] for r in straight.curves] == [r["meta_train_loss"] for r in resumed.curves]
    assert not torch.equal(straight.params["c0.W"], init_state(setup, 3).params["c0.W"])


def test_a_nan_policy_is_diverged():
    setup = nav_setup("maml-trpo", hidden=(8,), meta_batch=2, shots=3, queries=2, horizon=10)
    state = init_state(setup, 0)
    state.params["c0.W"][0, 0] = float("nan")
    assert train(setup, state, 5, report_every=5, val_tasks=2) == "diverged"
    assert state.curves and state.curves[-1]["meta_train_loss"] != state.curves[-1]["meta_train_loss"]


def test_bad_input_fails_before_training():
    nav = registry.make_family("navigation2d")
    with pytest.raises(ValueError, match="task family navigation2d is reinforcement learning.*maml-trpo"):
        Setup(nav, registry.make_learner("maml"))
    with pytest.raises(ValueError, match="learner 'maml-trpo' learns reinforcement learning.*sine is supervised"):
        Setup(Sine(), registry.make_learner("maml-trpo"))
    with pytest.raises(ValueError, match="outer must be one of trpo, promp"):
        registry.make_learner("maml-trpo", outer="reptile")
    with pytest.raises(ValueError, match="inner_loss must be one of reinforce, lvc"):
        registry.make_learner("promp", inner_loss="dice")
    with pytest.raises(ValueError, match="an inner step needs >= 2 trajectories"):
        check_sizes(nav_setup(shots=1))
    with pytest.raises(ValueError, match="horizon must be an integer >= 1"):
        registry.make_family("navigation2d", horizon=0)
    with pytest.raises(ValueError, match="max_kl must be a positive finite number"):
        HParams(extra={"max_kl": -0.1})
    with pytest.raises(ValueError, match="no batched meta-gradient.*use mode loop"):
        check_bundle([nav_setup(), nav_setup()], "vmap")
    check_bundle([nav_setup(), nav_setup()], "loop")


def test_presets_switches_and_hyper_parameters():
    maml, anil, fo, promp = (registry.make_learner(n) for n in ("maml-trpo", "anil-trpo", "fomaml-trpo", "promp"))
    assert maml.kind == "rl" and maml.inner_loop and maml.outer == "trpo"
    assert anil.variant.inner_params == "head" and fo.variant.order == "first"
    assert promp.outer == "promp" and promp.inner_loss == "lvc"
    assert maml.searched() == ("alpha", "max_kl") and set(maml.searched()) <= set(maml.reads())
    assert "beta" not in maml.reads() and "beta" in promp.reads() and promp.searched() == ("alpha", "beta")
    sw = registry.make_learner("anil-trpo", name="anil-fo", order="first").switches()
    assert sw["name"] == "anil-fo" and sw["order"] == "first" and sw["inner_params"] == "head" and sw["outer"] == "trpo"
