"""Black-box learners (MANN, SNAIL, Meta Networks, the LSTM meta-learner, a neural process): LRUA memory
addressing by hand, causality of the sequence models, per-episode shuffling, the LSTM meta-learner as
SGD, finite-difference meta-gradients, engines, training beyond the zero predictor / chance, shared
evaluation tasks, and errors before training (`train_shots_range`: tests/test_train_shots_range.py)."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metasweep.core import HParams, registry
from metasweep.core.evaluate import evaluate
from metasweep.core.learners.blackbox.common import shuffle_episode
from metasweep.core.learners.blackbox.mann import least_used, lrua_access
from metasweep.core.learners.blackbox.metalstm import meta_lstm_update
from metasweep.core.learners.blackbox.nn import preprocess
from metasweep.core.learners.blackbox.snail import snail_trunk
from metasweep.core.losses import PER_TASK
from metasweep.core.meta import meta_gradient, meta_loss, sample_noise
from metasweep.core.setup import Setup
from metasweep.core.state import init_state
from metasweep.core.tasks import Sine
from metasweep.core.tasks.synthetic import SyntheticImages
from metasweep.core.train import train

D = torch.float64
PLUGINS = Path(__file__).parent / "plugins"
TINY = {"mann_controller": 5, "mann_memory_slots": 6, "mann_memory_width": 3, "mann_read_heads": 2,
        "snail_filters": 3, "cnp_hidden": 5, "meta_lstm_hidden": 3, "metanet_hidden": 4, "metanet_pairs": 3}


@pytest.fixture(scope="module")
def quadrants():
    """The toy 8x8 classification family of tests/plugins (a 2-layer, 4-filter conv net)."""
    sys.path.insert(0, str(PLUGINS))
    registry.load_plugins(["toyfamily"])
    yield registry.make_family("quadrants", ways=3)
    sys.path.remove(str(PLUGINS))


def tiny_setup(preset, family=None, inner_steps=2, shots=4, queries=3, **switches):
    """A float64 setup of tiny sizes (the hyper-parameters in TINY; a 4-unit MLP embedding on sine)."""
    family = family or Sine()
    learner = registry.make_learner(preset, **switches)
    hp = HParams(alpha=0.05, inner_steps=inner_steps, meta_batch=3, extra=TINY)
    return Setup(family, learner, hp, learner.make_model(family, (4,)), train_shots=shots, queries=queries, dtype=D)


def tiny_problem(preset, family=None, seed=1, **switches):
    setup = tiny_setup(preset, family, **switches)
    g = torch.Generator().manual_seed(seed)
    params = init_state(setup, seed).params
    batch = setup.learner.train_batch(setup, g).to(dtype=D)
    noise = sample_noise(params, setup, g, 3, setup.hp.inner_steps)
    return setup, params, batch, noise


# ---------------------------------------------------------------- MANN: LRUA memory by hand


def test_least_used_marks_the_n_least_used_slots_ties_to_the_lower_index():
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.1, 0.3], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert least_used(usage, 2).tolist() == [[0, 1, 0, 1, 0], [1, 1, 0, 0, 0]]
    assert least_used(usage, 3).tolist() == [[0, 1, 0, 1, 1], [1, 1, 1, 0, 0]]
    assert least_used(usage, 1).tolist() == [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]  # exactly n, even on ties


def test_one_lrua_write_and_read_by_hand():
    """Santoro et al.: w^w = s(a) w^r_prev + (1 - s(a)) w^lu_prev; the least used slot zeroed, then
    M += w^w k; w^r = softmax cos(k, M); r = w^r M; w^u = gamma w^u_prev + w^r + w^w."""
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=D)
    usage = torch.tensor([0.2, 0.9, 0.5], dtype=D)
    read_prev = torch.tensor([[0.1, 0.7, 0.2]], dtype=D)
    keys = torch.tensor([[0.6, -0.8]], dtype=D)
    alpha, gamma = torch.tensor([0.3], dtype=D), 0.9
    m, r, w_r, u = lrua_access(memory, usage, read_prev, keys, alpha, gamma)

    s = 1 / (1 + math.exp(-0.3))
    w_w = np.array([s * 0.1 + (1 - s), s * 0.7, s * 0.2])  # slot 0 is the least used one
    m_hand = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]]) + np.outer(w_w, [0.6, -0.8])
    k = np.array([0.6, -0.8])
    cos = m_hand @ k / (np.sqrt((m_hand ** 2).sum(1) + 1e-8) * np.sqrt(k @ k + 1e-8))
    w_r_hand = np.exp(cos) / np.exp(cos).sum()
    np.testing.assert_allclose(m.numpy(), m_hand, rtol=1e-12)
    np.testing.assert_allclose(w_r[0].numpy(), w_r_hand, rtol=1e-12)
    np.testing.assert_allclose(r[0].numpy(), w_r_hand @ m_hand, rtol=1e-12)
    np.testing.assert_allclose(u.numpy(), 0.9 * np.array([0.2, 0.9, 0.5]) + w_r_hand + w_w, rtol=1e-12)


def test_two_heads_write_to_the_two_least_used_slots():
    memory = torch.zeros(4, 2, dtype=D)
    usage = torch.tensor([0.3, 0.0, 0.8, 0.1], dtype=D)
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D)
    m, _, _, _ = lrua_access(memory, usage, torch.zeros(2, 4, dtype=D), keys, torch.full((2,), -50.0, dtype=D), 0.95)
    # write gate sigmoid(-50) ~ 0: every head writes its key to both least-used slots (1 and 3)
    np.testing.assert_allclose(m.numpy(), [[0, 0], [1, 1], [0, 0], [1, 1]], atol=1e-20)


# ---------------------------------------------------------------- causality


def mann_episode(setup, params, xs, ys, xq):
    return setup.learner.episode(setup, params, xs, ys, xq)


def test_mann_predicts_each_label_before_reading_it_and_queries_independently():
    setup, params, batch, _ = tiny_problem("mann", shots=6)
    xs, ys, xq = batch.x_support[0], batch.y_support[0], batch.x_query[0]
    sup, qry = mann_episode(setup, params, xs, ys, xq)
    t = 3
    later_x, later_y = xs.clone(), ys.clone()
    later_x[t + 1:] += 1.0
    later_y[t:] += 1.0  # the label of position t itself, and every later one
    sup2, _ = mann_episode(setup, params, later_x, later_y, xq)
    torch.testing.assert_close(sup2[: t + 1], sup[: t + 1], rtol=0, atol=0)
    assert (sup2[t + 1:] != sup[t + 1:]).all()  # y_t reaches position t + 1
    other_q = xq.clone()
    other_q[1] += 2.0
    sup3, qry3 = mann_episode(setup, params, xs, ys, other_q)
    torch.testing.assert_close(sup3, sup, rtol=0, atol=0)
    torch.testing.assert_close(qry3[[0, 2]], qry[[0, 2]], rtol=0, atol=0)
    assert (qry3[1] != qry[1]).all()


def test_snail_support_position_sees_no_later_input_label_or_query():
    setup, params, batch, _ = tiny_problem("snail", shots=6)
    hs, hq = setup.learner.sequences(setup, params, batch.x_support[0], batch.y_support[0], batch.x_query[0])
    fs, fq = snail_trunk(params, hs, hq)
    t = 2
    later = hs.clone()
    later[t + 1:] += torch.randn(later[t + 1:].shape, dtype=D)  # later inputs and labels
    fs2, fq2 = snail_trunk(params, later, hq)
    torch.testing.assert_close(fs2[: t + 1], fs[: t + 1], rtol=0, atol=0)
    assert (fs2[t + 1] != fs[t + 1]).any() and (fq2 != fq).any(-1).all()  # a query reads all of the support
    other_q = hq.clone()
    other_q[0] += 1.0
    fs3, fq3 = snail_trunk(params, hs, other_q)
    torch.testing.assert_close(fs3, fs, rtol=0, atol=0)
    torch.testing.assert_close(fq3[1:], fq[1:], rtol=0, atol=0)


def test_snail_learner_query_sees_only_the_support_labels_given_and_not_other_queries():
    setup, params, batch, _ = tiny_problem("snail")
    learner = setup.learner
    out = learner.predict(setup, params, batch.x_support, batch.y_support, batch.x_query, {}, batched=True)
    xq = batch.x_query.clone()
    xq[:, -1] += 3.0
    out2 = learner.predict(setup, params, batch.x_support, batch.y_support, xq, {}, batched=True)
    torch.testing.assert_close(out2[:, :-1], out[:, :-1], rtol=0, atol=0)
    ys = batch.y_support.clone()
    ys[:, 0] += 1.0
    out3 = learner.predict(setup, params, batch.x_support, ys, batch.x_query, {}, batched=True)
    assert (out3 != out).all()  # every query reads the labels of the support set


# ---------------------------------------------------------------- episode shuffling


def test_episode_shuffling_relabels_consistently_and_is_reproducible():
    family = SyntheticImages(ways=5, size=4)
    setup = Setup(family, registry.make_learner("mann"), HParams(meta_batch=25), train_shots=2, queries=3)
    plain = Setup(family, registry.make_learner("mann", shuffle=False), HParams(meta_batch=25), train_shots=2,
                  queries=3)
    a = setup.learner.train_batch(setup, torch.Generator().manual_seed(7))
    b = setup.learner.train_batch(setup, torch.Generator().manual_seed(7))
    raw = plain.learner.train_batch(plain, torch.Generator().manual_seed(7))  # the same episodes, unshuffled
    for t_new, t_again in zip(a, b):
        torch.testing.assert_close(t_new, t_again, rtol=0, atol=0)
    torch.testing.assert_close(a.x_query, raw.x_query, rtol=0, atol=0)
    identity_orders = identity_labels = 0
    for i in range(25):
        # each shuffled support example is an original one; one permutation pi maps every original label
        match = (a.x_support[i].flatten(1)[:, None] == raw.x_support[i].flatten(1)[None]).all(-1)  # [new, old]
        assert (match.sum(1) == 1).all()
        order = match.float().argmax(1)
        pi = {}
        for new, old in zip(a.y_support[i].tolist(), raw.y_support[i][order].tolist()):
            assert pi.setdefault(old, new) == new
        assert sorted(pi) == sorted(pi.values()) == list(range(5))
        assert a.y_query[i].tolist() == [pi[c] for c in raw.y_query[i].tolist()]
        identity_orders += order.tolist() == list(range(10))
        identity_labels += all(k == v for k, v in pi.items())
    assert identity_orders < 3 and identity_labels < 3  # every episode gets its own order and labels
    c = setup.learner.train_batch(setup, torch.Generator().manual_seed(8))
    assert not torch.equal(c.y_support, a.y_support)


def test_regression_episodes_shuffle_the_support_order_only():
    batch = Sine().sample(torch.Generator().manual_seed(0), 4, 6, 2)
    out = shuffle_episode(batch, torch.Generator().manual_seed(1), Sine())
    for i in range(4):
        pairs = {(float(x), float(y)) for x, y in zip(batch.x_support[i, :, 0], batch.y_support[i, :, 0])}
        assert pairs == {(float(x), float(y)) for x, y in zip(out.x_support[i, :, 0], out.y_support[i, :, 0])}
    torch.testing.assert_close(out.y_query, batch.y_query, rtol=0, atol=0)


# ---------------------------------------------------------------- the LSTM meta-learner


def test_preprocessing_by_hand():
    x = torch.tensor([1.0, -math.exp(-5), 1e-6, 0.0], dtype=D)
    expected = [[0.0, 1.0], [-0.5, -1.0], [-1.0, math.exp(10) * 1e-6], [-1.0, 0.0]]
    np.testing.assert_allclose(preprocess(x).numpy(), expected, rtol=1e-12, atol=1e-15)


def test_meta_lstm_update_is_sgd_with_forget_one_and_input_alpha():
    setup, params, batch, noise = tiny_problem("meta-lstm", inner_steps=3)
    alpha = 0.05
    p = {**params, "metalstm.WF": torch.zeros_like(params["metalstm.WF"]),
         "metalstm.WI": torch.zeros_like(params["metalstm.WI"]),
         "metalstm.bF": torch.full((1,), 40.0, dtype=D),  # sigmoid(40) == 1.0 in float64
         "metalstm.bI": torch.full((1,), math.log(alpha / (1 - alpha)), dtype=D)}
    xs, ys, xq = batch.x_support[0], batch.y_support[0], batch.x_query[0]
    outs = setup.learner.outputs(setup, p, xs, ys, xq, {}, steps=3, every_step=True)
    model, names = setup.model, [f"{c}.{w}" for c in setup.model.cell_names() for w in ("W", "b")]
    fast = {n: p[n] for n in names}
    for k in range(4):
        torch.testing.assert_close(outs[k], model.forward({**p, **fast}, xq), rtol=1e-12, atol=1e-12)
        g = torch.func.grad(lambda f: setup.loss_fn(model.forward({**p, **f}, xs), ys))(fast)
        fast = {n: fast[n] - alpha * g[n] for n in names}
    theta, grad = torch.randn(5, dtype=D), torch.randn(5, dtype=D)
    torch.testing.assert_close(meta_lstm_update(theta, grad, torch.ones(5, dtype=D), 0.1 * torch.ones(5, dtype=D)),
                               theta - 0.1 * grad, rtol=0, atol=0)


# ---------------------------------------------------------------- meta-gradients and engines

CASES = [("mann", None, {}), ("mann", "quadrants", {"embedding": "conv", "train_on": "query"}), ("snail", None, {}),
         ("snail", "quadrants", {}), ("cnp", None, {}), ("cnp", "quadrants", {}), ("cnp", None, {"objective": "family"}),
         ("meta-lstm", None, {"order": "second"}), ("meta-lstm", "quadrants", {"order": "second"}),
         ("metanet", "quadrants", {"order": "second"})]


def case_problem(request, preset, family, switches):
    fam = request.getfixturevalue("quadrants") if family == "quadrants" else None
    return tiny_problem(preset, fam, **switches)


@pytest.mark.parametrize("preset,family,switches", CASES)
def test_meta_gradient_matches_finite_differences(request, preset, family, switches):
    """Per parameter tensor, the directional derivative along a random direction: autograd against
    central differences of the meta-loss (float64)."""
    setup, params, batch, noise = case_problem(request, preset, family, switches)
    grads, _ = meta_gradient(params, batch, noise, setup)
    g = torch.Generator().manual_seed(3)
    h = 1e-6
    for name in params:
        v = torch.randn(params[name].shape, generator=g, dtype=D)
        plus = meta_loss({**params, name: params[name] + h * v}, batch, noise, setup)
        minus = meta_loss({**params, name: params[name] - h * v}, batch, noise, setup)
        fd = float((plus - minus) / (2 * h))
        auto = float((grads[name] * v).sum())
        assert abs(auto - fd) <= 1e-5 * max(1.0, abs(fd)), (name, auto, fd)
    assert all(float(grads[k].abs().sum()) > 0 for k in params if not k.endswith(".b")), \
        [k for k in params if float(grads[k].abs().sum()) == 0]


@pytest.mark.parametrize("preset,family,switches", CASES)
def test_engines_agree(request, preset, family, switches):
    setup, params, batch, noise = case_problem(request, preset, family, switches)
    ref, ref_loss = meta_gradient(params, batch, noise, setup, engine="loop")
    for engine in ("batched", "vmap"):
        grads, loss = meta_gradient(params, batch, noise, setup, engine=engine)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
        for k in params:
            torch.testing.assert_close(grads[k], ref[k], rtol=1e-8, atol=1e-10, msg=f"{engine} {k}")


def test_first_order_drops_only_the_derivatives_through_the_gradients():
    """Same forward values; `order: first` differs from second order, as detaching the inner
    gradients should make it."""
    for preset, fam in (("meta-lstm", None),):
        s1, p, b, n = tiny_problem(preset, fam, order="first")
        s2 = tiny_setup(preset, fam, order="second")
        g1, l1 = meta_gradient(p, b, n, s1)
        g2, l2 = meta_gradient(p, b, n, s2)
        torch.testing.assert_close(l1, l2, rtol=0, atol=0)
        assert any(not torch.allclose(g1[k], g2[k]) for k in p)


def test_neural_process_ignores_the_order_of_the_support_set(quadrants):
    for family in (None, quadrants):
        setup, params, batch, _ = tiny_problem("cnp", family)
        perm = torch.randperm(batch.x_support.shape[1], generator=torch.Generator().manual_seed(0))
        a = setup.learner.predict(setup, params, batch.x_support, batch.y_support, batch.x_query, {}, batched=True)
        b = setup.learner.predict(setup, params, batch.x_support[:, perm], batch.y_support[:, perm], batch.x_query,
                                  {}, batched=True)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- learning


def zero_predictor_loss(setup, n_tasks=200):
    batch = setup.family.eval_tasks("test", 1, range(n_tasks), 10, setup.queries)
    return float(PER_TASK["mse"](torch.zeros_like(batch.y_query), batch.y_query).mean())


SINE_RUNS = {  # preset: (meta-steps, meta-batch, beta, hyper-parameters) - small sizes, seconds on one core
    "cnp": (400, 25, 3e-3, {}),
    "mann": (500, 10, 1e-2, {"mann_controller": 64, "mann_memory_slots": 32, "mann_memory_width": 16,
                             "mann_read_heads": 2}),
    "snail": (200, 10, 3e-3, {"snail_filters": 32}),
    "meta-lstm": (200, 10, 1e-2, {"meta_lstm_hidden": 8}),
}


@pytest.mark.parametrize("preset", list(SINE_RUNS))
def test_learns_sine_beyond_the_zero_predictor(preset):
    steps, meta_batch, beta, extra = SINE_RUNS[preset]
    learner = registry.make_learner(preset)
    hp = HParams(beta=beta, meta_batch=meta_batch, inner_steps=2, alpha=0.1, extra=extra)
    setup = Setup(Sine(), learner, hp, train_shots=10, queries=10)
    state = init_state(setup, 0)
    assert train(setup, state, steps, report_every=steps, val_tasks=20) == "completed"
    cols = evaluate(setup, state.params, n_tasks=200, shots=(10,), steps=(2,))
    zero = zero_predictor_loss(setup)
    assert cols["loss"].mean() < 0.75 * zero, (cols["loss"].mean(), zero)
    assert set(cols["inner_steps"].tolist()) == ({2} if learner.inner_loop else {0})


TOY_RUNS = {  # preset: (meta-steps, beta, hyper-parameters on top of TINY)
    "mann": (300, 1e-2, {"mann_controller": 32, "mann_memory_slots": 16, "mann_memory_width": 8}),
    "snail": (150, 3e-3, {}),
    "cnp": (300, 1e-3, {"cnp_hidden": 64}),
    "metanet": (150, 3e-3, {"metanet_hidden": 16}),
    "meta-lstm": (150, 3e-3, {}),
}


@pytest.mark.parametrize("preset", list(TOY_RUNS))
def test_learns_toy_classification_beyond_chance(quadrants, preset):
    steps, beta, extra = TOY_RUNS[preset]
    learner = registry.make_learner(preset)
    hp = HParams(beta=beta, meta_batch=8, inner_steps=2, alpha=0.3, extra=TINY | extra)
    setup = Setup(quadrants, learner, hp, train_shots=2, queries=3)
    state = init_state(setup, 0)
    assert train(setup, state, steps, report_every=steps, val_tasks=20) == "completed"
    acc = evaluate(setup, state.params, n_tasks=100, shots=(2,), steps=(2,))["accuracy"].mean()
    assert acc > 0.5, acc  # chance is 1/3


OMNIGLOT_RUNS = {  # preset: (meta-steps, meta-batch, beta, hyper-parameters); a minute or two each here
    "snail": (300, 4, 3e-3, {"snail_filters": 32}),
    "cnp": (300, 4, 1e-3, {"cnp_hidden": 64}),
    "metanet": (150, 4, 1e-3, {}),
    "meta-lstm": (60, 2, 3e-3, {"meta_lstm_hidden": 8}),
    # MANN leaves chance only after thousands of episodes (raw pixels, a sharper read than the paper's)
    "mann": (600, 16, 1e-3, {"mann_read_scale": 10.0}),
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(OMNIGLOT_RUNS))
def test_learns_omniglot_5way_beyond_chance(omniglot_root, tmp_path, preset):
    steps, meta_batch, beta, extra = OMNIGLOT_RUNS[preset]
    family = registry.make_family("omniglot", data_root=str(omniglot_root), ways=5, splits=[200, 40, 52],
                                  cache_dir=str(tmp_path / "cache"))
    learner = registry.make_learner(preset)
    hp = HParams(beta=beta, meta_batch=meta_batch, inner_steps=1, alpha=0.4, extra=extra)
    setup = Setup(family, learner, hp, train_shots=1, queries=5)
    state = init_state(setup, 0)
    assert train(setup, state, steps, report_every=steps, val_tasks=20) == "completed"
    acc = evaluate(setup, state.params, n_tasks=100, shots=(1,), steps=(1,))["accuracy"].mean()
    assert acc > 0.3, acc  # chance is 0.2; 100 tasks x 25 queries: the 95% interval is about +-0.02


# ---------------------------------------------------------------- shared evaluation tasks and rows


def test_evaluation_rows_are_computed_on_the_same_tasks_as_maml():
    setup, params, _, _ = tiny_problem("cnp")
    maml = Setup(Sine(), registry.make_learner("maml"), HParams(), train_shots=4, queries=3, dtype=D)
    ours = evaluate(setup, params, n_tasks=12, shots=(2, 5), steps=(0, 1))
    theirs = evaluate(maml, init_state(maml, 0).params, n_tasks=12, shots=(2, 5), steps=(0, 1))
    at0 = theirs["inner_steps"] == 0
    np.testing.assert_array_equal(ours["task_index"], theirs["task_index"][at0])
    np.testing.assert_array_equal(ours["shots"], theirs["shots"][at0])
    assert set(ours["inner_steps"].tolist()) == {0}
    # the row of task i at k shots is the learner's loss on the family's evaluation task i
    tasks = setup.family.eval_tasks("test", 1, range(12), 5, 3).to(dtype=D)
    for k in (2, 5):
        b = tasks.shots(k)
        out = setup.learner.predict(setup, params, b.x_support, b.y_support, b.x_query, {}, batched=True)
        np.testing.assert_allclose(ours["loss"][ours["shots"] == k], PER_TASK["mse"](out, b.y_query).numpy(),
                                   rtol=1e-12)
    fewer = evaluate(setup, params, n_tasks=5, shots=(5,), steps=(0,))
    np.testing.assert_array_equal(fewer["loss"], ours["loss"][(ours["shots"] == 5) & (ours["task_index"] < 5)])


def test_metanet_evaluation_noise_is_fixed_per_task(quadrants):
    setup, params, _, _ = tiny_problem("metanet", quadrants)
    one = evaluate(setup, params, n_tasks=6, shots=(1,), steps=(0,))
    two = evaluate(setup, params, n_tasks=10, shots=(2, 1), steps=(0,))
    np.testing.assert_array_equal(one["loss"], two["loss"][(two["shots"] == 1) & (two["task_index"] < 6)])


def test_trial_rows_leave_what_a_learner_does_not_read_null():
    from metasweep.sweeps.trial import TrialConfig, run_trial

    cfg = TrialConfig(task="sine", variant="cnp", meta_steps=10, report_every=10, meta_batch=4, val_tasks=5,
                      eval_tasks=5, eval_shots=(5, 10), eval_steps=(1, 10), extra_hparams={"cnp_hidden": 8})
    result = run_trial(cfg, trial_id="t")
    row = result.trial_row
    assert result.status == "completed", row["error"]
    assert row["alpha"] is None and row["temperature"] is None and row["inner_steps"] is None
    assert row["beta"] == cfg.beta and row["learner_kind"] == "black-box" and row["inner_loop"] is False
    assert '"cnp_hidden": 8' in row["hparams"] and '"network": "cnp"' in row["variant_switches"]
    assert set(result.eval_tasks["inner_steps"].tolist()) == {0}


# ---------------------------------------------------------------- errors before training


def test_what_a_learner_cannot_do_is_a_clear_error(quadrants):
    with pytest.raises(ValueError, match="learns classification tasks only: task sine is regression"):
        Setup(Sine(), registry.make_learner("metanet"))
    with pytest.raises(ValueError, match="embedding=conv needs an image task"):
        Setup(Sine(), registry.make_learner("mann", embedding="conv"))
    with pytest.raises(ValueError, match="train_on must be episode or query"):
        registry.make_learner("mann", train_on="all")
    with pytest.raises(ValueError, match=r"\(snail\) has no switch order; its switches: shuffle"):
        registry.make_learner("snail", order="first")
    with pytest.raises(registry.RegistryError, match="unknown switch.*allowed: network, embedding"):
        registry.make_learner("cnp", masks="row")
    with pytest.raises(ValueError, match=r"network must be one of (\w|-|, )*snail"):
        registry.make_learner("cnp", network="ntm")
    with pytest.raises(ValueError, match="alpha is the input gate's initial value"):
        Setup(Sine(), registry.make_learner("meta-lstm"), HParams(alpha=1.5))
    with pytest.raises(ValueError, match=r"mann_read_heads \(8\) must be <= mann_memory_slots \(4\)"):
        Setup(quadrants, registry.make_learner("mann"), HParams(extra={"mann_read_heads": 8, "mann_memory_slots": 4}))
    with pytest.raises(ValueError, match="mann_controller must be an integer >= 1"):
        HParams(extra={"mann_controller": 0})
