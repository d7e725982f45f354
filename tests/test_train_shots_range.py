"""Setup.train_shots_range: each meta-training batch draws its shots from lo..hi with the trial's
generator (reproducible, covering the range, one K per meta-batch), None keeps today's draws bit for bit,
every learner's training batches honour it, and what cannot use it says so."""

import pytest
import torch

from metasweep.core import HParams, registry
from metasweep.core.bundle import check_bundle
from metasweep.core.meta import graphs_apply
from metasweep.core.setup import Setup, draw_train_shots
from metasweep.core.state import init_state
from metasweep.core.tasks import Sine
from metasweep.core.tasks.synthetic import SyntheticImages
from metasweep.core.train import train

D = torch.float64


def test_without_a_range_training_batches_are_the_familys_draws_bit_for_bit():
    setup = Setup(Sine(), registry.make_learner("maml"), HParams(meta_batch=5), train_shots=7, queries=4)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(3):
        ours = setup.learner.train_batch(setup, g1)
        family = Sine().sample(g2, 5, 7, 4)
        for a, b in zip(ours, family):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(g1.get_state(), g2.get_state())  # no extra number drawn


def test_a_range_draws_reproducible_shot_counts_covering_it():
    setup = Setup(Sine(), registry.make_learner("cnp"), HParams(meta_batch=4), train_shots=10, queries=5,
                  train_shots_range=(3, 7))
    draws = [draw_train_shots(setup, torch.Generator().manual_seed(s)) for s in range(200)]
    assert set(draws) == {3, 4, 5, 6, 7}
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for _ in range(20):
        a, b = setup.learner.train_batch(setup, g1), setup.learner.train_batch(setup, g2)
        assert a.x_support.shape == b.x_support.shape and 3 <= a.x_support.shape[1] <= 7
        torch.testing.assert_close(a.y_support, b.y_support, rtol=0, atol=0)
    state = init_state(setup, 0)
    assert train(setup, state, 20, report_every=10, val_tasks=10) == "completed"
    assert not graphs_apply(setup)  # shapes vary: no CUDA graph


@pytest.mark.parametrize("preset", ["protonet", "snail", "maml"])
def test_learners_with_their_own_training_batches_draw_the_range_too(preset):
    family = SyntheticImages(ways=3, size=8)
    setup = Setup(family, registry.make_learner(preset), HParams(meta_batch=2), train_shots=2, queries=2,
                  train_shots_range=(1, 3))
    g = torch.Generator().manual_seed(0)
    sizes = {setup.learner.train_batch(setup, g).x_support.shape[1] for _ in range(30)}
    assert sizes == {3, 6, 9}  # 1..3 shots x 3 ways


def test_snail_receptive_field_covers_the_longest_training_sequence():
    learner = registry.make_learner("snail")
    hp = HParams(meta_batch=2, extra={"snail_filters": 2})
    plain = Setup(Sine(), learner, hp, learner.make_model(Sine(), (4,)), train_shots=10, queries=3, dtype=D)
    ranged = Setup(Sine(), learner, hp, plain.model, train_shots=10, queries=3, dtype=D, train_shots_range=(2, 20))

    def layers(setup):
        return len([k for k in init_state(setup, 0).params if k.startswith("snail.tc0.") and k.endswith(".W0")])

    assert (layers(plain), layers(ranged)) == (4, 5)  # ceil(log2(11)), ceil(log2(21))


@pytest.mark.parametrize("bad", [(0, 5), (5, 3), (1.5, 3), (2,), "3-5"])
def test_bad_ranges_are_clear_errors(bad):
    with pytest.raises(ValueError, match=r"train_shots_range must be two integers \(lo, hi\) with 1 <= lo <= hi"):
        Setup(Sine(), registry.make_learner("cnp"), train_shots_range=bad)


def test_bundles_of_ranged_members_only_in_loop_mode():
    s = Setup(Sine(), registry.make_learner("cnp"), HParams(meta_batch=4), train_shots_range=(2, 4))
    check_bundle([s, s], "loop")
    with pytest.raises(ValueError, match="bundle them with mode loop"):
        check_bundle([s, s], "vmap")
