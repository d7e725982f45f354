"""Evaluation task i - its support set (nested prefixes), its query set and the learner's evaluation
noise at every inner step - is a function of (family, split, eval seed, i) only: per-task values are
identical, bit for bit, whatever else one run evaluates (issue 11, case 5)."""

import numpy as np
import pytest
import torch

from metasweep.core import HParams, get_variant
from metasweep.core.conv import ConvNet
from metasweep.core.evaluate import evaluate
from metasweep.core.setup import Setup
from metasweep.core.state import init_state
from metasweep.core.tasks import Omniglot, Polynomial, Sine
from metasweep.core.train import train


def rows(cols, shots, steps, n=None):
    """(losses, accuracies) of one (shots, steps) setting in task order, the first n tasks."""
    sel = (cols["shots"] == shots) & (cols["inner_steps"] == steps)
    if n is not None:
        sel &= cols["task_index"] < n
    order = np.argsort(cols["task_index"][sel])
    return cols["loss"][sel][order], cols["accuracy"][sel][order]


def same(a, b):
    for x, y in zip(a, b):
        assert len(x) and np.array_equal(x, y, equal_nan=True)


@pytest.fixture(scope="module")
def trained_sine():
    """A MAML trained 20 steps (the issue's input: its 5-shot losses moved with the evaluated shots)."""
    s = Setup(Sine(), get_variant("maml"), HParams(meta_batch=5))
    st = init_state(s, 0)
    train(s, st, 20, report_every=20, val_tasks=5)
    return s, st.params


def test_sine_query_set_does_not_depend_on_the_evaluated_shots(trained_sine):
    s, params = trained_sine
    alone = evaluate(s, params, n_tasks=50, shots=(5,), steps=(1,))
    with_20 = evaluate(s, params, n_tasks=50, shots=(5, 20), steps=(1,))
    same(rows(alone, 5, 1), rows(with_20, 5, 1))
    # and the 20-shot tasks really are other supports of the same tasks (not the 5-shot values again)
    assert not np.array_equal(rows(with_20, 20, 1)[0], rows(with_20, 5, 1)[0])


def test_full_mask_noise_does_not_depend_on_the_evaluated_steps():
    """mt-net-full resamples its masks every inner step: step 1's noise must not move with max steps."""
    s = Setup(Sine(), get_variant("mt-net-full"), HParams(meta_batch=4))
    params = init_state(s, 1).params
    one = evaluate(s, params, n_tasks=40, shots=(10,), steps=(1,))
    many = evaluate(s, params, n_tasks=40, shots=(10,), steps=(1, 10))
    same(rows(one, 10, 1), rows(many, 10, 1))
    assert not np.array_equal(rows(many, 10, 1)[0], rows(many, 10, 10)[0])


@pytest.mark.parametrize("variant", ["mt-net", "mt-net-full", "meta-sgd"])
def test_task_i_does_not_depend_on_how_many_tasks_are_evaluated(variant):
    """A variant of the same kind: evaluating 15 tasks in chunks of 4, or 40 at once with other shot
    and step lists, leaves tasks 0..14 identical (polynomial tasks, every noisy preset)."""
    s = Setup(Polynomial(order=2), get_variant(variant), HParams(meta_batch=4))
    params = init_state(s, 2).params
    few = evaluate(s, params, n_tasks=15, shots=(5, 10), steps=(1, 3), chunk=4)
    more = evaluate(s, params, n_tasks=40, shots=(10, 5, 20), steps=(3, 1, 0))
    for k, step in ((5, 1), (10, 3)):
        same(rows(few, k, step), rows(more, k, step, n=15))


def test_validation_and_test_tasks_differ_and_each_is_fixed(trained_sine):
    s, params = trained_sine
    val = evaluate(s, params, split="val", eval_seed=0, n_tasks=10, shots=(10,), steps=(1,))
    test = evaluate(s, params, split="test", eval_seed=0, n_tasks=10, shots=(10,), steps=(1,))
    assert not np.array_equal(val["loss"], test["loss"])
    again = evaluate(s, params, split="val", eval_seed=0, n_tasks=10, shots=(5, 10), steps=(1, 2))
    same(rows(val, 10, 1), rows(again, 10, 1))


def test_image_tasks_are_fixed_whatever_else_is_evaluated(omniglot_root, tmp_path):
    """Omniglot 5-way: the query images of task i do not depend on the evaluated shots (they did: the
    query took the images after the largest support), supports nest, and MT-net-full's per-step
    mask noise does not depend on the largest step count."""
    fam = Omniglot(data_root=str(omniglot_root), ways=5, splits=(200, 40, 52), cache_dir=str(tmp_path))
    a, b = fam.eval_tasks("test", 1, range(3), 1, 2), fam.eval_tasks("test", 1, range(3), 5, 2)
    assert torch.equal(a.x_query, b.x_query) and torch.equal(a.y_query, b.y_query)
    assert torch.equal(a.x_support, b.x_support[:, :5])  # shot-major: the first 5 = one shot of each class
    s = Setup(fam, get_variant("mt-net-full"), HParams(alpha=0.4, meta_batch=2),
              model=ConvNet(1, 28, 8, 5, 2, "stride", "mean"), train_shots=1, queries=2)
    params = init_state(s, 0).params
    small = evaluate(s, params, n_tasks=6, shots=(1,), steps=(1,))
    large = evaluate(s, params, n_tasks=6, shots=(1, 5), steps=(1, 4))
    same(rows(small, 1, 1), rows(large, 1, 1))
