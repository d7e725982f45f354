"""Metric-based learners (issue 13): Prototypical, Matching (with full context embeddings), Relation
and Siamese networks. Their math against hand computations on tiny inputs, invariance to the order
of the support set (and FCE's documented dependence on it), meta-gradients against finite
differences in float64, the three engines against each other, training on the minimal Omniglot
sets, the evaluation tasks shared with MAML, and clear errors before training."""

import math

import numpy as np
import pytest
import torch
from coreutil import central_fd

from metasweep.core import HParams, registry
from metasweep.core.conv import ConvNet
from metasweep.core.evaluate import evaluate
from metasweep.core.learners.matching import attention, fce_query, fce_support, matching_log_probs
from metasweep.core.learners.protonet import prototype_logits, prototypes
from metasweep.core.learners.relation import relation_logits, relation_module, relation_objective, relation_pairs
from metasweep.core.learners.siamese import one_shot_logits, pair_logits, pair_loss, verification_pairs
from metasweep.core.losses import cross_entropy_per_task
from metasweep.core.meta import meta_gradient, meta_loss
from metasweep.core.setup import Setup, check_sizes
from metasweep.core.state import init_state
from metasweep.core.tasks import Batch, Omniglot, Sine
from metasweep.core.tasks.synthetic import SyntheticImages
from metasweep.core.train import train

D = torch.float64
# (preset, switch overrides, own hyper-parameters): every network and every switch that changes the math
LEARNERS = [
    ("protonet", {}, {}),
    ("protonet", {"distance": "cosine"}, {"cosine_scale": 5.0}),
    ("matching", {}, {"attention_scale": 3.0}),
    ("matching-fce", {}, {"attention_scale": 3.0, "fce_steps": 2}),
    ("relation", {}, {}),
    ("siamese", {}, {}),
]
IDS = ["protonet", "protonet-cosine", "matching", "matching-fce", "relation", "siamese"]


def tiny_setup(preset, switches, extra, dtype=D, engine="batched"):
    """3-way 2-shot 2-query tasks of 16x16 synthetic images, a 2-cell conv net of 3 filters (the
    relation module then reads the first cell's 8x8 maps)."""
    learner = registry.make_learner(preset, **switches)
    return Setup(SyntheticImages(ways=3, channels=1, size=16), learner, HParams(beta=1e-3, meta_batch=2, extra=extra),
                 ConvNet(1, 16, 3, 3, 2, "stride", "mean"), train_shots=2, queries=2, dtype=dtype, engine=engine)


def tiny_problem(preset, switches, extra, seed=0):
    """Parameters moved off their init (no symmetric gamma = 1, beta = 0) and a training batch."""
    setup = tiny_setup(preset, switches, extra)
    g = torch.Generator().manual_seed(seed)
    params = {k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=D) for k, v in init_state(setup, seed).params.items()}
    batch = setup.learner.train_batch(setup, g).to(dtype=D)
    return setup, params, batch


# ---------------------------------------------------------------- hand computations


def test_prototypes_and_their_logits_by_hand():
    fs = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    ys = torch.tensor([0, 0, 1, 1])
    fq = torch.tensor([[1.0, 1.0], [3.0, 1.0]])
    torch.testing.assert_close(prototypes(fs, ys, 2), torch.tensor([[1.0, 0.0], [0.0, 3.0]]))  # eq. (1)
    # -||q - c_k||^2: q = (1, 1): 1 and 1 + 4; q = (3, 1): 4 + 1 and 9 + 4
    torch.testing.assert_close(prototype_logits(fs, ys, fq, 2), torch.tensor([[-1.0, -5.0], [-5.0, -13.0]]))
    # 2 cos(q, c_k): (1, 1) vs (1, 0) and (0, 3): 1/sqrt(2) both; (3, 1): 3/sqrt(10) and 1/sqrt(10)
    r2, r10 = math.sqrt(2), math.sqrt(10)
    torch.testing.assert_close(prototype_logits(fs, ys, fq, 2, "cosine", 2.0),
                               torch.tensor([[2 / r2, 2 / r2], [6 / r10, 2 / r10]]))
    # a task dimension in front changes nothing
    batched = prototype_logits(fs.expand(3, 4, 2), ys.expand(3, 4), fq.expand(3, 2, 2), 2)
    torch.testing.assert_close(batched, prototype_logits(fs, ys, fq, 2).expand(3, 2, 2))


def test_matching_attention_and_label_weighting_by_hand():
    gs = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    ys = torch.tensor([0, 1, 1])
    fq = torch.tensor([[5.0, 0.0]])
    cos = torch.tensor([1.0, 0.0, 1 / math.sqrt(2)])
    for s in (1.0, 4.0):
        a = torch.exp(s * cos) / torch.exp(s * cos).sum()  # eq. (2)
        torch.testing.assert_close(attention(fq, gs, s)[0].exp(), a)
        y_hat = torch.stack([a[0], a[1] + a[2]])  # eq. (1): sum_i a_i y_i
        torch.testing.assert_close(matching_log_probs(gs, ys, fq, 2, s)[0], y_hat.log())
    # far apart classes at a large scale: log y^ stays finite (no log 0)
    assert torch.isfinite(matching_log_probs(gs, ys, -fq, 2, 200.0)).all()


def test_relation_pairs_scores_and_objective_by_hand():
    g = torch.Generator().manual_seed(0)
    model = ConvNet(1, 16, 3, 3, 2, "stride", "mean")
    module = relation_module(model)
    assert module.in_channels == 6 and module.image_size == 8  # maps after the first cell: 8x8x3
    maps_s = torch.randn(4, 3, 8, 8, generator=g, dtype=D)  # 2 ways x 2 shots, shot-major
    ys = torch.tensor([0, 1, 0, 1])
    maps_q = torch.randn(3, 3, 8, 8, generator=g, dtype=D)
    pairs = relation_pairs(maps_s, ys, maps_q, 2)
    assert pairs.shape == (6, 6, 8, 8)
    for i in range(3):
        for j in range(2):
            class_sum = maps_s[0 + j] + maps_s[2 + j]  # K-shot: the class's maps summed
            torch.testing.assert_close(pairs[i * 2 + j], torch.cat([class_sum, maps_q[i]]))  # C(f(x_j), f(x_i))
    p = {f"rel.{k}": v for k, v in module.init(g, dtype=D).items()}
    p["rel.fc.W"], p["rel.fc.b"] = torch.randn(1, 8, generator=g, dtype=D), torch.tensor([0.3], dtype=D)
    z = relation_logits(p, module, pairs, 2)
    # the module by hand: conv blocks -> dense 8 -> ReLU -> dense 1, on the same 6 pairs (one batch-norm batch)
    rel = {k.removeprefix("rel."): v for k, v in p.items()}
    h = torch.relu(module.forward(rel, pairs)) @ p["rel.fc.W"].T + p["rel.fc.b"]
    torch.testing.assert_close(z, h.view(3, 2))
    yq = torch.tensor([1, 0, 1])
    onehot = torch.tensor([[0, 1], [1, 0], [0, 1]], dtype=D)
    expected = ((torch.sigmoid(z) - onehot) ** 2).mean()  # eq. (3), as a mean over the 3 x 2 scores
    torch.testing.assert_close(relation_objective(z[None], yq[None], 2), expected[None])


def test_siamese_pair_logit_loss_and_one_shot_readout_by_hand():
    h1, h2 = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 4.0])
    alpha, b = torch.tensor([0.3, -0.2]), torch.tensor([0.1])
    z = pair_logits(h1, h2, alpha, b)  # 0.3 * 0.5 - 0.2 * 2 + 0.1
    torch.testing.assert_close(z, torch.tensor(-0.15))
    p = 1 / (1 + math.exp(0.15))
    torch.testing.assert_close(pair_loss(z[None], torch.tensor([True])), torch.tensor(-math.log(p)))
    torch.testing.assert_close(pair_loss(z[None], torch.tensor([False])), torch.tensor(-math.log(1 - p)))
    # one-shot: a class's logit is its most similar support image's pair logit
    fs = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0]])
    ys = torch.tensor([0, 1, 0])
    fq = torch.tensor([[2.5, 0.5]])
    alpha, b = torch.tensor([-1.0, -1.0]), torch.tensor([0.0])
    # z to the supports: -(2.5 + 0.5), -(1.5 + 0.5), -(0.5 + 0.5)
    torch.testing.assert_close(one_shot_logits(fs, ys, fq, alpha, b, 2), torch.tensor([[-1.0, -2.0]]))


def test_verification_pairs_are_half_same_and_labelled_by_their_images():
    ways, shots, queries, tasks = 4, 2, 3, 2
    ys = torch.arange(ways).repeat(shots).expand(tasks, -1)  # shot-major
    yq = torch.arange(ways).repeat(queries).expand(tasks, -1)
    xs = torch.arange(tasks * ways * shots, dtype=torch.float32).view(tasks, -1, 1, 1, 1)  # image = its index
    xq = -1 - torch.arange(tasks * ways * queries, dtype=torch.float32).view(tasks, -1, 1, 1, 1)
    pairs = verification_pairs(Batch(xs, ys, xq, yq), ways, torch.Generator().manual_seed(0))
    n = ways * queries
    assert pairs.x_support.shape == (tasks, 2 * n, 1, 1, 1)
    same = pairs.y_support == pairs.y_query
    assert same[:, :n].all() and not same[:, n:].any()  # n same pairs, then n different ones
    for t in range(tasks):
        for j in range(2 * n):
            assert pairs.x_support[t, j].item() == xq[t, j % n].item() and pairs.y_support[t, j] == yq[t, j % n]
            k = int(pairs.x_query[t, j].item()) - t * ways * shots  # which support image it is
            assert pairs.y_query[t, j] == ys[t, k]


def test_affine_distortions_stay_within_koch_s_ranges():
    from metasweep.core.distortions import affine_matrices, distort

    g = torch.Generator().manual_seed(0)
    theta = affine_matrices(4000, 28, g)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=D)
    plain = (theta - identity).abs().amax((1, 2)) == 0
    assert abs(plain.double().mean().item() - 1 / 16) < 0.015  # all four components absent: (1/2)^4
    assert theta[:, :, 2].abs().max() <= 2 * 2 / 28  # shifts of at most 2 pixels (normalised coordinates)
    det = torch.linalg.det(theta[:, :, :2])  # rotation 1, shear 1 - rho_x rho_y, scale s_x s_y
    assert det.min() >= 0.8**2 * (1 - 0.3**2) and det.max() <= 1.2**2 * (1 + 0.3**2)
    images = torch.rand(4000, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    out = distort(images, torch.Generator().manual_seed(0))  # the same draws as `theta`
    assert out.shape == images.shape
    torch.testing.assert_close(out[plain], images[plain], atol=1e-5, rtol=0)
    assert (out[~plain] - images[~plain]).abs().amax((1, 2, 3)).min() > 1e-3


@pytest.mark.parametrize("preset, switches", [("siamese", {}), ("protonet", {"train_ways": 3, "train_queries": 3})])
def test_own_training_batches_resume_bit_for_bit(preset, switches):
    """Siamese pairs and their distortions, and ProtoNet's train_ways episodes, are drawn from the
    trial's generator: a run saved after 2 steps and resumed equals an uninterrupted one."""
    from metasweep.core.state import state_from_bytes

    setup = Setup(SyntheticImages(ways=2, channels=1, size=16), registry.make_learner(preset, **switches),
                  HParams(beta=1e-2, meta_batch=2), ConvNet(1, 16, 3, 2, 2, "stride", "mean"), 1, 2)
    straight = init_state(setup, 0)
    train(setup, straight, 4, report_every=2, val_tasks=2)
    half = init_state(setup, 0)
    train(setup, half, 2, report_every=2, val_tasks=2)
    resumed = state_from_bytes(setup, half.to_bytes())
    train(setup, resumed, 4, report_every=2, val_tasks=2)
    for k in straight.params:
        assert torch.equal(straight.params[k], resumed.params[k]), k
    assert not torch.equal(straight.params["c0.W"], init_state(setup, 0).params["c0.W"])


# ---------------------------------------------------------------- order of the support set


@pytest.mark.parametrize("preset, switches, extra", LEARNERS, ids=IDS)
def test_a_permuted_support_set_gives_the_same_prediction_except_with_fce(preset, switches, extra):
    setup, params, _ = tiny_problem(preset, switches, extra)
    task = setup.family.eval_tasks("test", 1, range(2), 2, 2).to(dtype=D)
    perm = torch.randperm(task.x_support.shape[1], generator=torch.Generator().manual_seed(3))

    def out(xs, ys):
        return setup.learner.outputs(setup, params, xs, ys, task.x_query, {}, steps=0, every_step=True,
                                     batched=True)[-1]

    a, b = out(task.x_support, task.y_support), out(task.x_support[:, perm], task.y_support[:, perm])
    if not setup.learner.switches().get("fce"):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
        return
    # FCE reads the support set with a bidirectional LSTM: its order matters (documented) ...
    assert (a - b).abs().max() > 1e-6
    # ... and only there: the attention LSTM reads g(S) through a softmax-weighted sum
    g = fce_support(params, setup.model.features(params, task.x_support))
    f = setup.model.features(params, task.x_query)
    torch.testing.assert_close(fce_query(params, f, g, 3), fce_query(params, f, g[:, perm], 3), atol=1e-10, rtol=1e-10)


# ---------------------------------------------------------------- meta-gradients and engines


@pytest.mark.parametrize("preset, switches, extra", LEARNERS, ids=IDS)
def test_meta_gradient_matches_finite_differences(float64, preset, switches, extra):
    setup, params, batch = tiny_problem(preset, switches, extra)
    grads, loss = meta_gradient(params, batch, {}, setup)
    numeric = central_fd(lambda p: meta_loss(p, batch, {}, setup), params)
    assert set(grads) == set(params)
    for k in params:
        torch.testing.assert_close(grads[k], numeric[k], atol=1e-6, rtol=1e-5, msg=f"{preset} {k}")
    assert all(grads[k].abs().sum() > 0 for k in params)  # every meta-parameter is read


@pytest.mark.parametrize("preset, switches, extra", LEARNERS, ids=IDS)
def test_engines_agree(preset, switches, extra):
    setup, params, batch = tiny_problem(preset, switches, extra)
    p32, b32 = {k: v.float() for k, v in params.items()}, batch.to(dtype=torch.float32)
    s32 = tiny_setup(preset, switches, extra, dtype=torch.float32)
    gl, ll = meta_gradient(p32, b32, {}, s32, engine="loop")
    for engine in ("vmap", "batched"):
        g, loss = meta_gradient(p32, b32, {}, s32, engine=engine)
        torch.testing.assert_close(loss, ll, atol=1e-6, rtol=1e-6)
        for k in p32:
            torch.testing.assert_close(g[k], gl[k], atol=1e-5, rtol=1e-4, msg=f"{engine} {k}")


# ---------------------------------------------------------------- presets, rows, errors


def test_presets_read_and_search_only_their_own_hyper_parameters():
    for name in ("protonet", "protonet-60way", "matching", "matching-fce", "relation", "siamese"):
        learner = registry.make_learner(name)
        assert learner.kind == "metric" and not learner.inner_loop
        assert "alpha" not in learner.reads() and "temperature" not in learner.reads()
        assert "inner_steps" not in learner.reads() and set(learner.searched()) <= set(learner.reads())
    assert registry.make_learner("protonet").searched() == ("beta",)
    assert registry.make_learner("protonet", distance="cosine").searched() == ("beta", "cosine_scale")
    assert registry.make_learner("matching-fce").reads() == ("beta", "meta_batch", "attention_scale", "fce_steps")
    assert registry.make_learner("matching-fce").searched() == ("beta", "attention_scale")  # K: an integer
    assert registry.make_learner("protonet-60way").switches() == {"network": "prototypical", "distance": "euclidean",
                                                                  "train_ways": 60, "train_queries": 5}
    assert registry.make_learner("siamese").switches() == {"network": "siamese", "distortions": True}


def test_a_switch_a_learner_does_not_have_is_a_clear_error():
    with pytest.raises(ValueError, match=r"learner 'protonet' \(prototypical network\) has no switch fce; its "
                                         "switches: distance, train_ways, train_queries"):
        registry.make_learner("protonet", fce=True)
    with pytest.raises(ValueError, match="learner 'relation' .relation network. has no switch distance; its switches: "
                                         "none"):
        registry.make_learner("relation", distance="cosine")
    with pytest.raises(ValueError, match="distance must be one of euclidean, cosine .got 'l2'"):
        registry.make_learner("protonet", distance="l2")
    with pytest.raises(ValueError, match="train_ways must be 0 .the task's ways. or an integer >= 2 .got 1"):
        registry.make_learner("protonet", train_ways=1)
    with pytest.raises(ValueError, match="network must be one of matching, prototypical, relation, siamese"):
        registry.make_learner("protonet", network="proto")
    with pytest.raises(ValueError, match="learner 'matching' .matching network. classifies: task sine is regression"):
        Setup(Sine(), registry.make_learner("matching"))
    with pytest.raises(ValueError, match="embedding maps of at least 4x4"):
        Setup(SyntheticImages(ways=3, size=8), registry.make_learner("relation"), model=ConvNet(1, 8, 3, 3, 3))


def test_a_spec_with_a_switch_the_learner_lacks_names_the_field():
    from metasweep.sweeps.errors import UserError
    from metasweep.sweeps.spec import parse_spec

    text = "experiment: x\nvariants:\n  - maml\n  - {name: p, preset: protonet, switches: {fce: true}}\n"
    with pytest.raises(UserError, match=r"field variants\[1\].switches: learner 'protonet' \(prototypical network\) "
                                        "has no switch fce"):
        parse_spec(text, "x.yaml")


# ---------------------------------------------------------------- on the minimal Omniglot sets


@pytest.fixture(scope="module")
def omniglot(omniglot_root, tmp_path_factory):
    fam = Omniglot(data_root=str(omniglot_root), ways=5, splits=(200, 40, 52),
                   cache_dir=str(tmp_path_factory.mktemp("cache")))
    fam.check()  # decode once for the module
    return fam


def omniglot_setup(family, preset, filters=16, **kw):
    hp = HParams(alpha=0.4, beta=3e-3, meta_batch=4, extra=kw.pop("extra", {}))
    return Setup(family, registry.make_learner(preset, **kw), hp, ConvNet(1, 28, filters, 5, 4, "stride", "mean"),
                 train_shots=1, queries=5, engine="auto")


@pytest.mark.parametrize("preset", ["protonet", "matching", "relation", "siamese"])
def test_a_short_training_run_beats_chance_by_a_clear_margin(omniglot, preset):
    """60 meta-steps of 4 episodes, 5-way 1-shot (chance 0.2), 100 fixed test tasks; measured here:
    protonet 0.68, matching 0.57, relation 0.57, siamese (with distortions) 0.51."""
    setup = omniglot_setup(omniglot, preset)
    state = init_state(setup, 0)
    before = evaluate(setup, state.params, n_tasks=100, shots=(1,), steps=(1,))
    assert set(before["inner_steps"].tolist()) == {0}  # no inner loop: rows at step 0, whatever is asked
    assert train(setup, state, 60, report_every=30, val_tasks=20) == "completed"
    after = evaluate(setup, state.params, n_tasks=100, shots=(1,), steps=(1,))["accuracy"].mean()
    assert after > 0.42 and after > before["accuracy"].mean() + 0.15, (after, before["accuracy"].mean())


def test_evaluation_tasks_are_maml_s(omniglot):
    """Every learner is evaluated on the family's fixed tasks: the rows of ProtoNet (trained with
    more ways) and of MAML are computed from the very same `eval_tasks` batch, task by task."""
    tasks = omniglot.eval_tasks("test", 1, range(6), 2, 5)
    for preset, kw in (("protonet", {"train_ways": 10}), ("maml", {})):
        setup = omniglot_setup(omniglot, preset, filters=8, **kw)
        assert setup.family is omniglot
        params = init_state(setup, 1).params
        rows = evaluate(setup, params, n_tasks=6, shots=(1, 2), steps=(0,))
        for k in (1, 2):
            task = tasks.shots(k, 5)
            out = setup.learner.outputs(setup, params, task.x_support, task.y_support, task.x_query, {}, steps=0,
                                        every_step=True, batched=True)[0]
            sel = (rows["shots"] == k) & (rows["inner_steps"] == 0)
            np.testing.assert_array_equal(rows["task_index"][sel], np.arange(6))
            np.testing.assert_allclose(rows["loss"][sel], cross_entropy_per_task(out, task.y_query).detach().numpy(),
                                       rtol=1e-6)


def test_protonet_trains_with_more_ways_and_checks_them_first(omniglot):
    setup = omniglot_setup(omniglot, "protonet", filters=8, train_ways=12, train_queries=3)
    state = init_state(setup, 0)
    batch = setup.learner.train_batch(setup, state.generator)
    assert batch.x_support.shape[:2] == (4, 12) and batch.x_query.shape[:2] == (4, 36)
    assert sorted(batch.y_query[0].unique().tolist()) == list(range(12))
    assert train(setup, state, 2, report_every=2, val_tasks=5) == "completed"
    rows = evaluate(setup, state.params, n_tasks=5, shots=(1,), steps=(0,))
    assert len(rows["loss"]) == 5  # evaluated 5-way, on the family's tasks
    with pytest.raises(ValueError, match="learner 'protonet': training episodes of train_ways=300, train shots 1, "
                                         "train_queries=5 do not fit: omniglot train split has 200 classes, fewer "
                                         "than ways=300"):
        omniglot_setup(omniglot, "protonet", train_ways=300)
    with pytest.raises(ValueError, match=r"train_queries=25 do not fit: .*a class has 20 images, fewer than "
                                         r"shots \+ queries = 1 \+ 25"):
        omniglot_setup(omniglot, "protonet", train_queries=25)


def test_sizes_are_checked_before_training(omniglot):
    setup = omniglot_setup(omniglot, "relation")
    with pytest.raises(ValueError, match="test split: a class has 20 images, fewer than shots \\+ queries = 16 \\+ 5"):
        check_sizes(setup, eval_shots=(16,))
    sixty = Omniglot(data_root=omniglot.data_root, ways=60, splits=(200, 40, 52), cache_dir=omniglot.cache_dir)
    with pytest.raises(ValueError, match="val split has 40 classes, fewer than ways=60"):
        check_sizes(Setup(sixty, registry.make_learner("siamese"), HParams(), ConvNet(1, 28, 8, 60, 4), 1, 5))


def test_trial_rows_leave_what_a_metric_learner_does_not_read_null(omniglot):
    from metasweep.sweeps.trial import TrialConfig, run_trial

    cfg = TrialConfig(task="omniglot", task_options={"data_root": omniglot.data_root, "ways": 5,
                                                     "splits": [200, 40, 52], "cache_dir": omniglot.cache_dir},
                      variant="protonet", variant_overrides={"distance": "cosine"}, train_shots=1, queries=1,
                      meta_batch=2, meta_steps=2, report_every=2, val_tasks=3, eval_tasks=4, eval_shots=(1,),
                      eval_steps=(1, 3), extra_hparams={"cosine_scale": 7.0}, device="cpu")
    result = run_trial(cfg, trial_id="t0")
    row = result.trial_row
    assert result.status == "completed", row["error"]
    assert row["learner_kind"] == "metric" and row["inner_loop"] is False
    assert row["alpha"] is None and row["temperature"] is None and row["inner_steps"] is None
    assert row["beta"] == cfg.beta and row["meta_batch"] == 2
    assert '"cosine_scale": 7.0' in row["hparams"] and '"distance": "cosine"' in row["variant_switches"]
    assert set(result.eval_tasks["inner_steps"].tolist()) == {0}


@pytest.mark.slow
def test_a_sweep_tunes_maml_and_protonet_on_their_own_spaces_and_ranks_them_paired(omniglot_root, tmp_path):
    """A real tune+test sweep on a local Ray (the CLI in a subprocess): MAML searches alpha and beta,
    a cosine ProtoNet beta and its cosine_scale (alpha NULL in its rows); both are evaluated on the
    same test tasks and ranked with paired tests at inner step 0."""
    import json
    import os
    import subprocess
    import sys

    from metasweep.analysis.store import read_dataset

    spec = tmp_path / "fam.yaml"
    spec.write_text(f"""
experiment: fam
task: {{family: omniglot, queries: 2, options: {{data_root: {omniglot_root}, ways: 5, splits: [200, 40, 52],
        cache_dir: {tmp_path / 'cache'}}}}}
variants: [maml, {{name: proto-cos, preset: protonet, switches: {{distance: cosine}}}}]
train_shots: [1]
budget: {{meta_steps: 10, report_every: 10, meta_batch: 2}}
eval: {{shots: [1], inner_steps: [0, 1], tasks: 30, val_tasks: 5}}
search: {{trials_per_variant: 2, alpha: {{low: 0.1, high: 1.0}}}}
test: {{seeds: [0, 1]}}
storage: {tmp_path / 'res'}
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", "sweep", str(spec)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = read_dataset(str(tmp_path / "res" / "fam"))["trials"].to_pylist()
    assert {t["status"] for t in trials} == {"completed"} and len(trials) == 8
    for t in trials:
        extra = json.loads(t["config"])["extra_hparams"]
        if t["variant"] == "maml":
            assert 0.1 <= t["alpha"] <= 1.0 and extra == {}
        else:
            assert t["alpha"] is None and t["inner_steps"] is None and 1.0 <= extra["cosine_scale"] <= 100.0
    tuned = [t for t in trials if t["stage"] == "tune" and t["variant"] == "proto-cos"]
    best = min(tuned, key=lambda t: t["final_val_loss"])
    for t in (t for t in trials if t["stage"] == "test" and t["variant"] == "proto-cos"):
        assert json.loads(t["config"])["extra_hparams"] == json.loads(best["config"])["extra_hparams"]
    ranked = subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", "rank", str(tmp_path / "res" / "fam"),
                             "--metric", "accuracy", "--inner-steps", "0"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert ranked.returncode == 0, ranked.stderr[-2000:]
    assert "proto-cos" in ranked.stdout and "paired tests against maml" in ranked.stdout
