"""Setup.train_shots_range: each meta-training batch draws its shots from lo..hi with the trial's
generator (reproducible, covering the range, one K per meta-batch), None keeps today's draws bit for bit,
every learner's training batches honour it, and what cannot use it says so."""

import dataclasses

import pytest
import torch

from metasweep.core import HParams, registry
from metasweep.core.bundle import auto_mode, check_bundle
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
    maml = Setup(Sine(), registry.make_learner("maml"), HParams(meta_batch=4))
    assert (auto_mode(s), auto_mode(maml), auto_mode(dataclasses.replace(maml, train_shots_range=(2, 4)))) == (
        "loop", "fold", "loop")
    big = dataclasses.replace(maml, hp=HParams(meta_batch=25))
    assert auto_mode(big) == "fold"  # the dense net takes each member's parameters once: fold at every meta-batch
    from metasweep.core.conv import ConvNet
    from metasweep.core.tasks.synthetic import SyntheticImages
    conv = Setup(SyntheticImages(ways=2, channels=1, size=8), registry.make_learner("maml"), HParams(meta_batch=25),
                 ConvNet(1, 8, 3, 2, 2, "stride", "mean"), train_shots=1, queries=2)
    assert auto_mode(conv) == "vmap"  # per-task copies of a conv net's weights above 12 tasks
    assert auto_mode(dataclasses.replace(conv, hp=HParams(meta_batch=4))) == "fold"
    with pytest.raises(ValueError, match="bundle them with mode loop"):
        check_bundle([s, s], "vmap")


# ------------------------------------------------------------------ the option in specs and on the command line

SPEC = """experiment: ranged
variants: [maml, {name: cnp-k2-12, preset: cnp, train_shots_range: [2, 12]}]
train_shots: [5]
budget: {meta_steps: 20, report_every: 10, meta_batch: 4}
eval: {shots: [5], inner_steps: [1], tasks: 10, val_tasks: 5}
"""


def test_a_spec_variant_meta_trains_on_its_range_and_keeps_the_cells_shots(tmp_path):
    from metasweep.sweeps.plan import Cell, bundle_size, stage_test_configs
    from metasweep.sweeps.spec import load_spec
    from metasweep.sweeps.trial import TrialConfig, build_setup

    path = tmp_path / "s.yaml"
    path.write_text(SPEC)
    spec = load_spec(path)[0]
    configs = dict((cell.variant, cfg) for cell, cfg in stage_test_configs(spec, {}))
    assert configs["maml"].train_shots_range is None
    ranged = configs["cnp-k2-12"]
    assert (ranged.train_shots, ranged.train_shots_range) == (5, (2, 12))
    back = TrialConfig.from_dict(ranged.to_dict())  # the row's config JSON and a checkpoint round-trip
    assert back.train_shots_range == (2, 12) and back == ranged
    setup = build_setup(back)
    assert (setup.train_shots, setup.train_shots_range) == (5, (2, 12))
    assert bundle_size(spec, Cell("cnp-k2-12", 5)) == 1  # ranged members would run one after another
    assert bundle_size(spec, Cell("maml", 5)) == 8
    # "auto" fills the slots that run at once: a 4-trial cell on 2 slots is 2 bundles of 2 (not 1 of 4
    # and an idle core), 12 trials on 8 slots 6 bundles of 2; at most 8 members, at least 1
    assert [bundle_size(spec, Cell("maml", 5), members=m, slots=k) for m, k in
            ((4, 2), (12, 8), (12, 2), (42, 2), (3, 8), (1, 1))] == [2, 2, 6, 8, 1, 1]
    assert bundle_size(spec, Cell("cnp-k2-12", 5), members=12, slots=2) == 1


@pytest.mark.parametrize("value, words", [
    ("[5, 2]", "must be two integers [lo, hi] with 1 <= lo <= hi (got [5, 2])"),
    ("[0, 3]", "must be two integers [lo, hi] with 1 <= lo <= hi (got [0, 3])"),
    ("[3]", "must be two integers [lo, hi] with 1 <= lo <= hi (got [3])"),
    ("five", "must be two integers [lo, hi] with 1 <= lo <= hi (got 'five')"),
])
def test_bad_spec_ranges_name_the_file_and_the_field(tmp_path, value, words):
    from metasweep.sweeps.errors import UserError
    from metasweep.sweeps.spec import load_spec

    path = tmp_path / "bad.yaml"
    path.write_text(f"experiment: x\nvariants: [{{name: c, preset: cnp, train_shots_range: {value}}}]\n")
    with pytest.raises(UserError) as e:
        load_spec(path)
    assert str(e.value).startswith(f"spec {path}") and "field variants[0].train_shots_range" in str(e.value)
    assert words in str(e.value)


def test_a_range_beyond_what_the_images_hold_is_stopped_before_training(tmp_path, omniglot_root):
    """The top of the range must fit the training split's episodes (20 drawings per Omniglot character:
    25 shots + 2 queries do not), stopped by the preflight before any trial; its bottom alone would fit."""
    from metasweep.sweeps.config import ConfigError
    from metasweep.sweeps.plan import stage_test_configs
    from metasweep.sweeps.preflight import preflight
    from metasweep.sweeps.spec import load_spec

    path = tmp_path / "s.yaml"
    task = (f"task: {{family: omniglot, queries: 2, options: {{data_root: {omniglot_root}, ways: 5, "
            "splits: [200, 40, 52]}}\n")
    for top, fits in ((5, True), (25, False)):
        path.write_text(f"experiment: x\n{task}variants: [{{name: p, preset: protonet, train_shots_range: [1, {top}]}}]\n"
                        "train_shots: [1]\neval: {shots: [1]}\n")
        spec = load_spec(path)[0]
        if fits:
            preflight(spec, stage_test_configs(spec, {}))
        else:
            with pytest.raises(ConfigError, match=r"a class has 20 images, fewer than shots \+ queries = 25 \+ 2") as e:
                preflight(spec, stage_test_configs(spec, {}))
            assert e.value.loc == ("variants", 0, "train_shots_range")


def test_train_takes_the_range_and_records_it(tmp_path):
    import subprocess
    import sys

    from metasweep.analysis.store import read_dataset

    out = tmp_path / "t"
    r = subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", "train", "--variant", "cnp",
                        "--train-shots-range", "2,12", "--train-shots", "5", "--meta-steps", "20",
                        "--report-every", "10", "--val-tasks", "5", "--eval-tasks", "5", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    import json

    row = read_dataset(str(out))["trials"].to_pylist()[0]
    assert json.loads(row["config"])["train_shots_range"] == [2, 12] and row["train_shots"] == 5
    bad = subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", "train", "--variant", "cnp",
                          "--train-shots-range", "12,2", "--out", str(tmp_path / "b")],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--train-shots-range: must be two integers [lo, hi] with 1 <= lo <= hi (got [12, 2])" in bad.stderr
