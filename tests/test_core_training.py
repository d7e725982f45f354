"""Training behaviour: seeding, shared evaluation tasks, exact resume, learning, divergence."""

import numpy as np
import pytest
import torch

from metasweep.analysis.summary import summarize
from metasweep.core import HParams, get_variant
from metasweep.core.evaluate import evaluate
from metasweep.core.setup import Setup
from metasweep.core.state import init_state, load_state, state_from_bytes
from metasweep.core.tasks import Polynomial, Sine, task_seed
from metasweep.core.train import train


def setup_for(name="maml", **hp):
    return Setup(Sine(), get_variant(name), HParams(meta_batch=5, **hp))


# ---------------------------------------------------------------- tasks


def test_sine_parameters_and_inputs_lie_in_the_papers_ranges():
    b = Sine().sample(torch.Generator().manual_seed(0), 2000, 10, 10)
    x = torch.cat([b.x_support, b.x_query], 1)
    y = torch.cat([b.y_support, b.y_query], 1)
    assert x.min() >= -5 and x.max() <= 5 and x.min() < -4.9 and x.max() > 4.9
    amp = y.abs().amax(1)
    assert amp.max() <= 5.0 + 1e-5 and amp.max() > 4.8  # A ~ U[0.1, 5]


def test_polynomial_is_a_polynomial_of_its_order():
    fam = Polynomial(order=2)
    b = fam.sample(torch.Generator().manual_seed(0), 3, 10, 10)
    for t in range(3):
        x, y = b.x_support[t, :, 0].double(), b.y_support[t, :, 0].double()
        coef = np.polyfit(x.numpy(), y.numpy(), 2)
        np.testing.assert_allclose(np.polyval(coef, x.numpy()), y.numpy(), atol=1e-5)
        assert (np.abs(coef) <= 1 + 1e-6).all()


def test_eval_task_is_a_pure_function_of_family_split_seed_and_index():
    fam = Sine()
    a = fam.eval_tasks("test", 1, [0, 1, 2, 3], 20, 10)
    b = fam.eval_tasks("test", 1, [3, 2], 20, 10)
    torch.testing.assert_close(a.x_support[3], b.x_support[0], rtol=0, atol=0)
    torch.testing.assert_close(a.y_query[2], b.y_query[1], rtol=0, atol=0)
    c = fam.eval_tasks("val", 1, [0], 20, 10)
    assert not torch.equal(a.x_support[0], c.x_support[0])  # val and test tasks differ
    d = Polynomial().eval_tasks("test", 1, [0], 20, 10)
    assert not torch.equal(a.x_support[0], d.x_support[0])
    assert task_seed(fam.key(), "test", 1, 0) != task_seed(fam.key(), "test", 2, 0)


def test_support_sets_are_nested_over_shots():
    fam = Sine()
    t20 = fam.eval_tasks("test", 1, range(5), 20, 10)
    t5 = t20.shots(5)
    torch.testing.assert_close(t5.x_support, t20.x_support[:, :5], rtol=0, atol=0)
    torch.testing.assert_close(t5.x_query, t20.x_query, rtol=0, atol=0)


# ---------------------------------------------------------------- reproducibility


def test_same_seed_same_result_twice():
    s = setup_for("mt-net")
    a, b = init_state(s, 7), init_state(s, 7)
    train(s, a, 20, report_every=10, val_tasks=10)
    train(s, b, 20, report_every=10, val_tasks=10)
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])
    drop_wall = lambda rows: [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rows]  # noqa: E731
    assert drop_wall(a.curves) == drop_wall(b.curves)
    c = init_state(s, 8)
    train(s, c, 20, report_every=10, val_tasks=10)
    assert not torch.equal(a.params["c0.W"], c.params["c0.W"])


def test_different_variants_meet_the_same_evaluation_tasks():
    """The unadapted loss (0 inner steps) of two models is computed on the same tasks: identical
    models give identical per-task losses even if they are different variants."""
    s1, s2 = setup_for("maml"), setup_for("t-net")
    p1 = init_state(s1, 0).params
    p2 = init_state(s2, 0).params  # same W, b (same seed); T = I does not change the function
    e1 = evaluate(s1, p1, n_tasks=50, shots=(5, 10), steps=(0, 1))
    e2 = evaluate(s2, p2, n_tasks=50, shots=(5, 10), steps=(0, 1))
    np.testing.assert_array_equal(e1["task_index"], e2["task_index"])
    np.testing.assert_allclose(e1["loss"], e2["loss"], rtol=1e-6)


@pytest.mark.parametrize("name", ["mt-net", "meta-sgd", "reptile", "mt-net-full"])
def test_resume_from_checkpoint_is_bit_identical(tmp_path, name):
    s = setup_for(name, inner_steps=2)
    full = init_state(s, 3)
    train(s, full, 30, report_every=10, val_tasks=10)

    part = init_state(s, 3)
    saved = {}

    class Lost(Exception):
        pass

    def checkpoint_then_die(state, row):  # what the Ray trainable does at each report
        state.save(tmp_path / "ckpt.pt")
        saved["step"] = state.step
        if state.step >= 20:
            raise Lost  # the trial is lost (its node died) after its step-20 checkpoint

    with pytest.raises(Lost):
        train(s, part, 30, report_every=10, val_tasks=10, on_report=checkpoint_then_die)
    resumed = load_state(s, tmp_path / "ckpt.pt")
    assert resumed.step == saved["step"] == 20
    train(s, resumed, 30, report_every=10, val_tasks=10)
    for k in full.params:
        assert torch.equal(full.params[k], resumed.params[k]), k
    assert [r["meta_step"] for r in resumed.curves] == [10, 20, 30]
    assert [r["val_loss"] for r in resumed.curves] == [r["val_loss"] for r in full.curves]
    assert [r["meta_train_loss"] for r in resumed.curves] == [r["meta_train_loss"] for r in full.curves]
    again = state_from_bytes(s, resumed.to_bytes())
    assert torch.equal(again.generator.get_state(), resumed.generator.get_state())


# ---------------------------------------------------------------- learning and divergence


def test_maml_learns_sine_far_below_the_mean_predictor():
    """3000 meta-steps of 10-shot sine MAML (meta-batch 25, alpha 0.01, beta 1e-3). Seen here:
    10-shot loss after 1 step 1.40 +- 0.12 vs 3.27 unadapted; the zero (mean) predictor, the
    best function that ignores the task, has E[A^2]/2 = 4.18."""
    s = Setup(Sine(), get_variant("maml"), HParams(meta_batch=25))
    st = init_state(s, 0)
    assert train(s, st, 3000, report_every=1000, val_tasks=50) == "completed"
    cols = evaluate(s, st.params, n_tasks=600, shots=(10,), steps=(0, 1, 10))
    res = {r["inner_steps"]: r for r in summarize(cols)}
    tasks = Sine().eval_tasks("test", 1, range(600), 10, 10)
    mean_predictor = float((tasks.y_query**2).mean())
    assert 3.5 < mean_predictor < 5.0
    assert res[1]["mean"] + res[1]["ci95"] < 0.5 * mean_predictor
    assert res[10]["mean"] < res[1]["mean"] < res[0]["mean"]


def test_huge_alpha_diverges_as_a_result_not_a_crash():
    s = setup_for("maml", alpha=1e25)  # Adam bounds the outer step; only a huge alpha overflows
    st = init_state(s, 0)
    assert train(s, st, 50, report_every=10, val_tasks=10) == "diverged"
    assert st.step < 50
    assert st.curves and not np.isfinite(st.curves[-1]["val_loss"])


def test_mask_fraction_is_reported_for_masked_variants():
    s = setup_for("mt-net")
    st = init_state(s, 0)
    train(s, st, 10, report_every=10, val_tasks=10)
    row = st.curves[-1]
    assert 0.3 < row["mask_fraction"] < 0.7 and len(row["mask_fraction_per_cell"]) == 3
    s2 = setup_for("maml")
    st2 = init_state(s2, 0)
    train(s2, st2, 10, report_every=10, val_tasks=10)
    assert st2.curves[-1]["mask_fraction"] is None


@pytest.mark.parametrize("name", ["mt-net", "mt-net-full", "m-net"])
def test_threshold_and_sampled_masks_agree_when_zeta_is_decided(name):
    """With |zeta| huge every sampled mask equals the thresholded one: both evaluation modes give the
    same per-task losses (batched evaluation over many tasks)."""
    s = setup_for(name)
    params = init_state(s, 0).params
    g = torch.Generator().manual_seed(0)
    for k in params:
        if ".zeta" in k:
            params[k] = torch.where(torch.rand(params[k].shape, generator=g) < 0.5, -60.0, 60.0)
    a = evaluate(s, params, n_tasks=30, shots=(5, 10), steps=(1, 3), mask_eval="sample")
    b = evaluate(s, params, n_tasks=30, shots=(5, 10), steps=(1, 3), mask_eval="threshold")
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
    c = evaluate(s, {k: (v.abs() if ".zeta" in k else v) for k, v in params.items()}, n_tasks=30, shots=(5,),
                 steps=(1,), mask_eval="threshold")
    assert not np.allclose(c["loss"], a["loss"][: len(c["loss"])])  # the masks matter


# ---------------------------------------------------------------- math mode (CUDA flags)


class RecordingNet:
    """The dense net, recording the cuDNN/matmul flags in force at every forward."""

    def __init__(self):
        from metasweep.core.cells import DenseNet

        self.net, self.seen = DenseNet(), set()

    def __getattr__(self, name):
        return getattr(self.net, name)

    def forward(self, *args, **kwargs):
        cudnn = torch.backends.cudnn
        self.seen.add((cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, cudnn.deterministic))
        return self.net.forward(*args, **kwargs)


@pytest.mark.parametrize("tf32,deterministic", [(False, True), (True, False)])
def test_math_mode_holds_for_meta_gradients_and_evaluation_and_is_restored(tf32, deterministic):
    """Setup.math_mode: TF32 off and deterministic cuDNN (the defaults) inside every meta-gradient
    and evaluation, whatever the process had before, and the process's flags back afterwards -
    also when the computation raises."""
    from metasweep.core.meta import meta_gradient, sample_noise

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    old = cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic
    cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic = True, True, False  # PyTorch-like, permissive
    try:
        net = RecordingNet()
        s = Setup(Sine(), get_variant("mt-net"), HParams(meta_batch=2), model=net, train_shots=5, queries=5,
                  tf32=tf32, deterministic=deterministic)
        g = torch.Generator().manual_seed(0)
        params = init_state(s, 0).params
        meta_gradient(params, s.family.sample(g, 2, 5, 5), sample_noise(params, s, g, 2, 1), s)
        evaluate(s, params, n_tasks=3, shots=(5,), steps=(1,))
        # deterministic=False leaves the process's setting alone (here: False)
        assert net.seen == {(tf32, tf32, deterministic)}
        assert (cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic) == (True, True, False)
        with pytest.raises(RuntimeError), s.math_mode():
            raise RuntimeError("inside")
        assert (cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic) == (True, True, False)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic = old


def test_trial_config_carries_the_cuda_switches_to_the_setup():
    from metasweep.sweeps.trial import TrialConfig, build_setup

    default = build_setup(TrialConfig(device="cpu"))
    assert (default.cuda_graphs, default.tf32, default.deterministic) == (True, False, True)
    s = build_setup(TrialConfig(device="cpu", cuda_graphs=False, tf32=True))
    assert (s.cuda_graphs, s.tf32) == (False, True)
