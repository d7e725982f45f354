"""The Learner protocol and the registry: built-in presets resolve through one table, a learner and a
task family from outside the package plug in by registering (tests/plugins), train, evaluate (rows at
inner step 0 for a learner without an inner loop) and declare their own hyper-parameters."""

import sys
from pathlib import Path

import numpy as np
import pytest

from metasweep.core import HParams, registry
from metasweep.core.evaluate import evaluate
from metasweep.core.hparams import HPARAMS
from metasweep.core.learners import CosineReadout, GradientLearner, Learner
from metasweep.core.setup import Setup, check_sizes
from metasweep.core.state import init_state
from metasweep.core.tasks import Sine
from metasweep.core.train import train

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture(scope="module")
def plugins():
    sys.path.insert(0, str(PLUGINS))
    registry.load_plugins(["toyfamily", "toylearner"])
    yield
    sys.path.remove(str(PLUGINS))


def test_every_preset_is_a_learner_of_the_protocol():
    names = registry.preset_names()
    assert names[:10] == ["maml", "fomaml", "reptile", "meta-sgd", "anil", "t-net", "m-net", "m-net-full", "mt-net",
                          "mt-net-full"]
    for name in names[:10]:
        learner = registry.make_learner(name)
        assert isinstance(learner, Learner) and isinstance(learner, GradientLearner) and learner.name == name
        assert learner.inner_loop and set(learner.searched()) <= set(learner.reads())
    assert "temperature" in registry.make_learner("mt-net").searched()
    assert "temperature" not in registry.make_learner("t-net").reads()  # c does nothing without a mask
    assert registry.make_learner("reptile").outer == "reptile" and registry.make_learner("maml").outer == "gradient"
    named = registry.make_learner("mt-net", name="mt-net-fo", order="first")
    assert named.name == "mt-net-fo" and named.switches()["order"] == "first"
    nil = registry.make_learner("anil", eval_head="nil")
    assert isinstance(nil, CosineReadout) and nil.reads() == registry.make_learner("anil").reads()


def test_unknown_names_and_switches_are_clear_errors():
    with pytest.raises(registry.RegistryError, match="unknown variant 'mtnet'; presets: maml"):
        registry.make_learner("mtnet")
    with pytest.raises(registry.RegistryError, match=r"unknown switch\(es\) masks; allowed: transform, mask"):
        registry.make_learner("maml", masks="row")
    with pytest.raises(ValueError, match="outer=reptile moves only what the inner loop moves"):
        registry.make_learner("reptile", transform=True)
    with pytest.raises(registry.RegistryError, match="unknown task family 'sin'; available: sine"):
        registry.make_family("sin")
    with pytest.raises(registry.RegistryError, match="unknown option 'amplitudes' for task family sine; allowed: amplitude"):
        registry.make_family("sine", amplitudes=[1, 2])
    with pytest.raises(ValueError, match="needs a classification task"):
        Setup(Sine(), registry.make_learner("maml", eval_head="nil"))


def test_a_plugin_learner_and_family_train_and_evaluate_through_the_protocol(plugins):
    assert "quadrants" in registry.family_names() and "soft-nn" in registry.preset_names()
    assert HPARAMS["nn_scale"].default == 10.0
    family = registry.make_family("quadrants", ways=3)
    learner = registry.make_learner("soft-nn")
    model = learner.make_model(family, (40, 40))
    assert model.filters == 4  # the family's own model, from the registry
    setup = Setup(family, learner, HParams(beta=3e-3, meta_batch=8, extra={"nn_scale": 8.0}), model,
                  train_shots=2, queries=3)
    check_sizes(setup, eval_shots=(1, 2))
    state = init_state(setup, 0)
    before = evaluate(setup, state.params, n_tasks=60, shots=(1, 2), steps=(0, 1, 5))
    assert sorted(set(before["inner_steps"].tolist())) == [0]  # no inner loop: one row per task and shots
    assert train(setup, state, 60, report_every=30, val_tasks=20) == "completed"
    after = evaluate(setup, state.params, n_tasks=60, shots=(2,), steps=(1,))
    acc = after["accuracy"].mean()
    assert acc > 0.8, acc  # 3-way: chance is 1/3
    assert acc > before["accuracy"][before["shots"] == 2].mean() + 0.2
    with pytest.raises(ValueError, match="nn_scale must be a positive finite number"):
        HParams(extra={"nn_scale": -1.0})
    with pytest.raises(ValueError, match="learner 'soft-nn' classifies"):
        Setup(Sine(), learner)
    # evaluation of a plugin family's task i is fixed whatever else is evaluated
    one = evaluate(setup, state.params, n_tasks=10, shots=(1,), steps=(0,))
    two = evaluate(setup, state.params, n_tasks=20, shots=(2, 1), steps=(0, 3))
    np.testing.assert_array_equal(one["loss"], two["loss"][(two["shots"] == 1) & (two["task_index"] < 10)])
