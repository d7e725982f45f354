"""Bundles (core.bundle): members trained as one computation equal the same configurations trained
alone - bit for bit in "loop" mode, to float rounding in "fold" and "vmap" modes - with their own
seeds, step sizes, Adam states, statuses and exact resume."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from metasweep.core import HParams, get_variant
from metasweep.core.bundle import Member, check_bundle, fold_gradients, train_bundle, vmap_gradients
from metasweep.core.conv import ConvNet
from metasweep.core.meta import meta_gradient, reptile_direction
from metasweep.core.setup import Setup
from metasweep.core.state import init_state, state_from_bytes
from metasweep.core.tasks import Sine
from metasweep.core.tasks.synthetic import SyntheticImages
from metasweep.core.train import train

STEPS, REPORT = 12, 6


def sine(name, engine="vmap", **hp):
    return Setup(Sine(), get_variant(name), HParams(**{"meta_batch": 3, **hp}), train_shots=5, queries=4, engine=engine)


def alone(setup, seed):
    st = init_state(setup, seed)
    status = train(setup, st, STEPS, report_every=REPORT, val_tasks=4)
    return status, st


ENGINE = {"fold": "batched", "vmap": "vmap"}  # the single-trial engine each mode's numbers follow


def bundle(setups, seeds, mode):
    members = [Member(s, init_state(s, seed)) for s, seed in zip(setups, seeds)]
    return train_bundle(members, STEPS, report_every=REPORT, val_tasks=4, mode=mode), members


def assert_same(a, b, exact, rtol=1e-5, atol=1e-6, skip=()):
    for k in a.params:
        if k in skip:
            continue
        if exact:
            assert torch.equal(a.params[k], b.params[k]), k
        else:
            torch.testing.assert_close(a.params[k], b.params[k], rtol=rtol, atol=atol, msg=k)
    assert [r["meta_step"] for r in a.curves] == [r["meta_step"] for r in b.curves]
    for ra, rb in zip(a.curves, b.curves):
        if exact:
            assert ra["val_loss"] == rb["val_loss"] and ra["meta_train_loss"] == rb["meta_train_loss"]
        else:
            assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=rtol * 10, abs=atol)


@pytest.mark.parametrize("name", ["maml", "mt-net", "mt-net-full", "meta-sgd", "reptile", "anil"])
def test_loop_mode_is_bit_identical_to_training_alone(name):
    setups = [sine(name, engine="batched", alpha=a, beta=b) for a, b in ((0.01, 1e-3), (0.03, 3e-3), (0.02, 2e-3))]
    statuses, members = bundle(setups, [0, 1, 2], "loop")
    assert statuses == ["completed"] * 3
    for s, seed, m in zip(setups, [0, 1, 2], members):
        status, st = alone(s, seed)
        assert status == "completed"
        assert_same(st, m.state, exact=True)


@pytest.mark.parametrize("mode", ["fold", "vmap"])
@pytest.mark.parametrize("name", ["maml", "t-net", "mt-net", "mt-net-full", "meta-sgd", "reptile", "fomaml", "anil"])
def test_bundled_members_equal_each_member_alone(name, mode):
    """Seeds, alpha, beta and c differ per member; each member's trajectory equals its configuration
    trained alone with the vmap engine to float rounding."""
    hps = [dict(alpha=0.01, beta=1e-3, temperature=1.0), dict(alpha=0.05, beta=3e-3, temperature=0.5),
           dict(alpha=0.02, beta=2e-3, temperature=2.0)]
    setups = [sine(name, engine=ENGINE[mode], **hp) for hp in hps]
    statuses, members = bundle(setups, [3, 4, 5], mode)
    assert statuses == ["completed"] * 3
    for s, seed, m in zip(setups, [3, 4, 5], members):
        _, st = alone(s, seed)
        assert_same(st, m.state, exact=False)


@pytest.mark.parametrize("mode", ["fold", "vmap"])
@pytest.mark.parametrize("name", ["maml", "mt-net", "mt-net-full", "meta-sgd", "reptile"])
def test_bundle_gradients_equal_every_engine_alone(name, mode, float64):
    """One bundled meta-gradient against each member's own with the batched, vmap and loop engines
    (float64: 1e-10; over many steps a masked variant's hard masks can flip on rounding, so trajectories
    are compared with the vmap engine above)."""
    setups = [sine(name, alpha=a, temperature=c) for a, c in ((0.01, 1.0), (0.05, 0.5))]
    setups = [replace(s, dtype=torch.float64) for s in setups]
    members = [Member(s, init_state(s, seed)) for s, seed in zip(setups, [1, 2])]
    floats = ("alpha", "beta", "temperature", "zeta_init")
    before = [m.state.generator.get_state() for m in members]
    grads, losses = (fold_gradients if mode == "fold" else vmap_gradients)(members, floats)
    for i, (s, m) in enumerate(zip(setups, members)):
        for engine in ("batched", "vmap", "loop"):
            g = torch.Generator()
            g.set_state(before[i])
            params = m.state.params
            batch = s.learner.train_batch(s, g).to(dtype=torch.float64)
            noise = s.learner.noise(s, params, g, s.hp.meta_batch, s.hp.inner_steps)
            s_e = replace(s, engine=engine)
            if s.learner.outer == "reptile":
                ref, loss = reptile_direction(params, batch, noise, s_e)
            else:
                ref, loss = meta_gradient(params, batch, noise, s_e)
            assert float(loss) == pytest.approx(float(losses[i]), rel=1e-10)
            for k in ref:
                torch.testing.assert_close(grads[k][i], ref[k], rtol=1e-9, atol=1e-12, msg=f"{engine} {k}")


@pytest.mark.parametrize("mode", ["fold", "vmap"])
@pytest.mark.parametrize("downsample", ["stride", "maxpool"])
def test_conv_net_bundle_equals_members_alone(mode, downsample):
    fam = SyntheticImages(ways=2, channels=1, size=8)
    net = ConvNet(1, 8, 3, 2, 2, downsample, "mean" if downsample == "stride" else "flatten")
    setups = [Setup(fam, get_variant("mt-net"), HParams(alpha=a, beta=1e-3, meta_batch=2), net, train_shots=1,
                    queries=2, engine=ENGINE[mode]) for a in (0.4, 0.1)]
    statuses, members = bundle(setups, [0, 1], mode)
    assert statuses == ["completed", "completed"]
    # a conv bias right before batch norm has an exact gradient of 0 (the normalisation removes it): what
    # Adam does with its rounding noise (steps of +-beta) differs between any two computations, and the
    # bias does not change the function; every other parameter and the validation losses must agree
    noise_driven = ("c0.b", "c1.b")
    for s, seed, m in zip(setups, [0, 1], members):
        _, st = alone(s, seed)
        assert_same(st, m.state, exact=False, rtol=1e-5, atol=1e-6, skip=noise_driven)
        assert any(not torch.equal(st.params[k], m.state.params[k]) for k in noise_driven)  # the caveat is real


@pytest.mark.parametrize("mode", ["fold", "vmap"])
def test_a_diverging_member_is_frozen_out_and_its_siblings_complete(mode):
    setups = [sine("maml", engine=ENGINE[mode], alpha=a) for a in (0.01, 1e25, 0.02)]
    statuses, members = bundle(setups, [0, 0, 1], mode)
    assert statuses == ["completed", "diverged", "completed"]
    lost = members[1].state
    assert lost.step < STEPS and lost.curves and lost.curves[-1]["meta_step"] == lost.step
    for i in (0, 2):
        _, st = alone(setups[i], [0, 0, 1][i])
        assert_same(st, members[i].state, exact=False)


@pytest.mark.parametrize("mode", ["fold", "vmap"])
def test_a_bundle_killed_and_resumed_continues_every_member_exactly(tmp_path, mode):
    setups = [sine(n, alpha=a) for n, a in (("mt-net", 0.01), ("mt-net", 0.03))]
    _, full = bundle(setups, [0, 1], mode)
    saved = {}

    class Lost(Exception):
        pass

    def checkpoint_then_die(i, m, row):  # what the Ray trainable does per member at each report
        saved[i] = m.state.to_bytes()
        if m.state.step >= REPORT and len(saved) == 2:
            raise Lost

    members = [Member(s, init_state(s, seed)) for s, seed in zip(setups, [0, 1])]
    reported_steps = []

    def after(step):  # every member has reported at this step: the whole bundle's checkpoint
        assert {m.state.curves[-1]["meta_step"] for m in members} == {step}
        reported_steps.append(step)

    with pytest.raises(Lost):
        train_bundle(members, STEPS, report_every=REPORT, val_tasks=4, mode=mode, on_report=checkpoint_then_die,
                     after_reports=after)
    assert reported_steps == []  # lost inside the step-6 reports, before the bundle's checkpoint
    resumed = [Member(s, state_from_bytes(s, saved[i])) for i, s in enumerate(setups)]
    resumed_steps = []

    def after_resumed(step):
        resumed_steps.append(step)

    assert [m.state.step for m in resumed] == [REPORT, REPORT]
    assert train_bundle(resumed, STEPS, report_every=REPORT, val_tasks=4, mode=mode,
                        after_reports=after_resumed) == ["completed", "completed"]
    assert resumed_steps == [2 * REPORT]
    for a, b in zip(full, resumed):
        assert_same(a.state, b.state, exact=True)


def test_members_restored_at_different_steps_catch_up_then_move_together():
    setups = [sine("maml", alpha=a) for a in (0.01, 0.02)]
    _, full = bundle(setups, [0, 1], "loop")
    first = Member(setups[0], init_state(setups[0], 0))
    train(first.setup, first.state, REPORT, report_every=REPORT, val_tasks=4)  # one member is ahead
    second = Member(setups[1], init_state(setups[1], 1))
    assert train_bundle([first, second], STEPS, report_every=REPORT, val_tasks=4, mode="loop") == ["completed"] * 2
    for a, b in zip(full, (first, second)):
        assert_same(a.state, b.state, exact=True)


def test_what_cannot_be_bundled_is_a_clear_error():
    with pytest.raises(ValueError, match="differ in inner_steps, which changes shapes"):
        check_bundle([sine("maml"), sine("maml", inner_steps=2)])
    with pytest.raises(ValueError, match="must share the learner"):
        check_bundle([sine("maml"), sine("mt-net")])
    with pytest.raises(ValueError, match="bundle mode must be one of fold, vmap, loop"):
        check_bundle([sine("maml")], mode="stack")
    check_bundle([sine("maml"), sine("maml", inner_steps=2)], mode="loop")  # loop mode runs anything


@pytest.mark.parametrize("case", ["sine-mt-net", "polynomial-maml", "images-maml", "images-siamese"])
def test_members_draw_their_batches_and_noise_as_each_alone(case):
    """core.bundle._draw: each member's meta-batch and mask noise, bit for bit what it draws alone (its
    generator, its order: batch, then noise), and its generator left where alone leaves it - where the
    family's draws are finished for all members at once (regression: draw / finish) and where each
    member's batch is its learner's own (images; siamese samples its own pairs)."""
    from metasweep.core.bundle import _draw
    from metasweep.core.registry import make_learner
    from metasweep.core.tasks.regression import Polynomial

    family_name, learner_name = case.split("-", 1)
    if family_name == "images":
        fam, model, shots = SyntheticImages(ways=2, channels=1, size=8), ConvNet(1, 8, 3, 2, 2, "stride", "mean"), 1
    else:
        fam, model, shots = (Sine() if family_name == "sine" else Polynomial(order=3)), None, 5
    learner = make_learner(learner_name)
    setups = [Setup(fam, learner, HParams(meta_batch=3, alpha=a), model, train_shots=shots, queries=4)
              for a in (0.01, 0.03, 0.02)]
    members = [Member(s, init_state(s, seed)) for s, seed in zip(setups, (4, 5, 6))]
    gens = [torch.Generator().set_state(m.state.generator.get_state()) for m in members]
    batch, noises = _draw(members)
    alone_batches = []
    for s, m, g, noise in zip(setups, members, gens, noises):
        alone_batches.append(s.learner.train_batch(s, g))
        ref = s.learner.noise(s, m.state.params, g, 3, s.hp.inner_steps)
        assert ref.keys() == noise.keys() and all(torch.equal(ref[k], noise[k]) for k in ref)
        assert torch.equal(g.get_state(), m.state.generator.get_state())
    assert bool(noises[0]) == (learner_name == "mt-net")
    for t, parts in zip(batch, zip(*alone_batches)):
        assert torch.equal(t, torch.cat(parts))


def test_a_family_that_overrides_only_sample_is_sampled_by_its_sample_in_bundles():
    """A family subclass customising only `sample` (docs/EXTENDING.md's protocol) keeps it in a bundle: the
    parent's draw / finish split is not used for it (core.tasks.base.splits_sample)."""
    from dataclasses import dataclass

    from metasweep.core.bundle import _draw
    from metasweep.core.tasks.base import Batch, splits_sample

    @dataclass(frozen=True)
    class ShiftedSine(Sine):
        def sample(self, g, n_tasks, shots, queries):
            b = super().sample(g, n_tasks, shots, queries)
            return Batch(b.x_support, b.y_support + 100.0, b.x_query, b.y_query + 100.0)

    assert splits_sample(Sine()) and not splits_sample(ShiftedSine())
    setups = [Setup(ShiftedSine(), get_variant("maml"), HParams(meta_batch=2, alpha=a), train_shots=3, queries=2)
              for a in (0.01, 0.02)]
    members = [Member(s, init_state(s, i)) for i, s in enumerate(setups)]
    gens = [torch.Generator().set_state(m.state.generator.get_state()) for m in members]
    batch, _ = _draw(members)
    alone_batches = [s.learner.train_batch(s, g) for s, g in zip(setups, gens)]
    for t, parts in zip(batch, zip(*alone_batches)):
        assert torch.equal(t, torch.cat(parts))
    assert float(batch.y_support.mean()) > 90


@pytest.mark.parametrize("mode", ["fold", "vmap"])
def test_nil_evaluated_members_bundle_in_every_mode(mode):
    """A learner whose methods are delegated by a wrapper (eval_head: nil, core.learners.readout) bundles in
    fold and vmap mode and equals its configuration alone."""
    from metasweep.core.registry import make_learner

    fam = SyntheticImages(ways=2, channels=1, size=8)
    net = ConvNet(1, 8, 3, 2, 2, "stride", "mean")
    learner = make_learner("maml", eval_head="nil")
    setups = [Setup(fam, learner, HParams(alpha=a, beta=1e-3, meta_batch=2), net, train_shots=1, queries=2,
                    engine=ENGINE[mode]) for a in (0.4, 0.1)]
    statuses, members = bundle(setups, [0, 1], mode)
    assert statuses == ["completed", "completed"]
    for s, seed, m in zip(setups, [0, 1], members):
        _, st = alone(s, seed)
        assert_same(st, m.state, exact=False, rtol=1e-5, atol=1e-6, skip=("c0.b", "c1.b"))  # see the conv test


@pytest.mark.parametrize("preset", ["protonet", "matching", "relation", "siamese"])
def test_other_learner_families_bundle_too(preset):
    """Bundles read the learner protocol only: metric-based learners (vmap mode; they do not fold) equal
    their configurations alone, and loop mode is exact."""
    from metasweep.core.registry import make_learner

    size = 28 if preset == "relation" else 8  # the relation module pools maps of at least 4x4
    fam = SyntheticImages(ways=2, channels=1, size=size)
    net = ConvNet(1, size, 3, 2, 4 if preset == "relation" else 2, "stride", "mean")
    learner = make_learner(preset)
    setups = [Setup(fam, learner, HParams(beta=b, meta_batch=2), net, train_shots=1, queries=2, engine="vmap")
              for b in (1e-3, 3e-3)]
    with pytest.raises(ValueError, match="cannot be folded"):
        check_bundle(setups, mode="fold")
    for mode, exact in (("vmap", False), ("loop", True)):
        statuses, members = bundle(setups, [0, 1], mode)
        assert statuses == ["completed", "completed"]
        for s, seed, m in zip(setups, [0, 1], members):
            _, st = alone(s, seed)
            before_bn = {k for k in st.params if k.endswith(".b") and f"{k[:-2]}.gamma" in st.params}  # see above
            assert_same(st, m.state, exact=exact, rtol=1e-4, atol=1e-5, skip=() if exact else before_bn)


@pytest.mark.parametrize("name", ["maml", "mt-net", "mt-net-full", "meta-sgd", "anil"])
def test_members_are_evaluated_in_one_pass_as_each_alone(name):
    """evaluate_members folds the members (own parameters, own alpha and c) into the task dimension on
    the shared evaluation tasks: each member's rows equal its own evaluate to float rounding."""
    from metasweep.core.evaluate import evaluate, evaluate_members

    setups = [sine(name, alpha=a, temperature=c) for a, c in ((0.01, 1.0), (0.3, 0.5), (0.05, 2.0))]
    params = [init_state(s, seed).params for s, seed in zip(setups, (0, 1, 2))]
    together = evaluate_members(setups, params, n_tasks=30, shots=(5, 10), steps=(0, 1, 3))
    for s, p, rows in zip(setups, params, together):
        alone_rows = evaluate(s, p, n_tasks=30, shots=(5, 10), steps=(0, 1, 3))
        for col in ("task_index", "shots", "inner_steps"):
            assert (rows[col] == alone_rows[col]).all()
        np.testing.assert_allclose(rows["loss"], alone_rows["loss"], rtol=1e-5, atol=1e-6)


def test_conv_and_nil_members_are_evaluated_in_one_pass():
    from metasweep.core.evaluate import evaluate, evaluate_members
    from metasweep.core.registry import make_learner

    fam = SyntheticImages(ways=2, channels=1, size=8)
    net = ConvNet(1, 8, 3, 2, 2, "stride", "mean")
    for learner in (get_variant("mt-net"), make_learner("maml", eval_head="nil")):
        setups = [Setup(fam, learner, HParams(alpha=a, meta_batch=2), net, train_shots=1, queries=2)
                  for a in (0.4, 0.1)]
        params = [init_state(s, seed).params for s, seed in zip(setups, (0, 1))]
        together = evaluate_members(setups, params, n_tasks=8, shots=(1, 2), steps=(0, 2))
        for s, p, rows in zip(setups, params, together):
            alone_rows = evaluate(s, p, n_tasks=8, shots=(1, 2), steps=(0, 2))
            np.testing.assert_allclose(rows["loss"], alone_rows["loss"], rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(rows["accuracy"], alone_rows["accuracy"])


def test_callbacks_name_members_that_differ_only_in_their_seed():
    """Members with equal setups (a test stage: one tuned configuration, several seeds) are told apart
    by identity: the report callback gets each member's own index."""
    setups = [sine("maml")] * 3
    members = [Member(s, init_state(s, seed)) for s, seed in zip(setups, (0, 1, 2))]
    seen = []
    train_bundle(members, STEPS, report_every=REPORT, val_tasks=4, on_report=lambda i, m, row: seen.append(
        (i, m.state.seed)))
    assert seen == [(0, 0), (1, 1), (2, 2)] * 2


def test_members_adams_stepped_together_equal_each_stepped_alone():
    """core.optim.step_optimizers: fused Adams with the same settings step in one call, bit for bit
    what each gives alone - over steps, with two step sizes in the bundle, from a first step (state
    not made yet) on; an SGD (Reptile's) steps on its own."""
    from metasweep.core.optim import step_optimizers

    g = torch.Generator().manual_seed(0)

    def make(lr, sgd=False):
        ps = [torch.randn(s, generator=g).requires_grad_(True) for s in ((40, 1), (40,), (40, 40), (1, 40))]
        return (torch.optim.SGD(ps, lr=lr) if sgd else torch.optim.Adam(ps, lr=lr, fused=True)), ps

    made = [make(lr) for lr in (1e-3, 1e-3, 3e-3, 1e-3)] + [make(0.1, sgd=True)]
    twins = []
    for opt, ps in made:
        copies = [p.detach().clone().requires_grad_(True) for p in ps]
        twins.append(((type(opt))(copies, **{k: opt.defaults[k] for k in ("lr",)},
                                  **({"fused": True} if isinstance(opt, torch.optim.Adam) else {})), copies))
    for _ in range(3):
        for (_, ps), (_, cs) in zip(made, twins):
            for p, c in zip(ps, cs):
                p.grad = torch.randn(p.shape, generator=g)
                c.grad = p.grad.clone()
        step_optimizers([opt for opt, _ in made])
        for opt, _ in twins:
            opt.step()
        for (opt, ps), (twin, cs) in zip(made, twins):
            for p, c in zip(ps, cs):
                assert torch.equal(p, c)
                if isinstance(opt, torch.optim.Adam):
                    for k in ("exp_avg", "exp_avg_sq", "step"):
                        assert torch.equal(opt.state[p][k], twin.state[c][k]), k
