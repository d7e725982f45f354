"""The CUDA paths: the same math on the GPU as on the CPU, exact resume, a trial on real images.

Skipped where there is no GPU (CI has none). Run on a GPU machine with
`python3 -m pytest -q tests/test_cuda.py`; docs/BENCHMARKS.md records the last such run."""

from dataclasses import replace

import pytest
import torch
from omniglotdata import unzip_omniglot
from test_conv import problem as conv_problem

from metasweep.core import HParams, get_variant
from metasweep.core.meta import meta_gradient, sample_noise
from metasweep.core.setup import Setup
from metasweep.core.state import init_state, load_state
from metasweep.core.tasks import Sine
from metasweep.core.tasks.synthetic import SyntheticImages
from metasweep.core.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

D = torch.float64


def to_cuda(tree):
    return {k: v.to("cuda") for k, v in tree.items()}


def assert_grads_close(got, ref, atol, rtol, msg=""):
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].device.type == "cuda", k
        torch.testing.assert_close(got[k].cpu(), ref[k], atol=atol, rtol=rtol, msg=f"{msg} {k}")


@pytest.mark.parametrize("engine", ["batched", "vmap", "loop"])
@pytest.mark.parametrize("name", ["maml", "t-net", "mt-net", "mt-net-full", "meta-sgd", "anil", "m-net"])
def test_conv_meta_gradient_on_cuda_equals_cpu_float64(name, engine):
    """Second-order meta-gradient of the conv net (batch norm with per-task batch statistics, two
    inner steps, Gumbel mask noise) on the GPU in float64 = the CPU per-task loop in float64."""
    setup, params, batch, noise = conv_problem(name, "maxpool" if name in ("maml", "mt-net") else "stride",
                                               inner_steps=2, dtype=D)
    ref, ref_loss = meta_gradient(params, batch, noise, setup, engine="loop")
    cuda = replace(setup, device="cuda")
    got, loss = meta_gradient(to_cuda(params), batch.to("cuda", D), to_cuda(noise), cuda, engine=engine)
    torch.testing.assert_close(loss.cpu(), ref_loss, atol=1e-12, rtol=1e-10)
    assert_grads_close(got, ref, atol=1e-11, rtol=1e-9, msg=f"{name} {engine}")


@pytest.mark.parametrize("engine", ["batched", "vmap"])
@pytest.mark.parametrize("name", ["maml", "mt-net", "meta-sgd"])
def test_dense_meta_gradient_on_cuda_equals_cpu_float64(name, engine):
    hp = HParams(inner_steps=2, meta_batch=5, alpha=0.01)
    setup = Setup(Sine(), get_variant(name), hp, train_shots=5, queries=5, dtype=D)
    g = torch.Generator().manual_seed(2)
    params = init_state(setup, 2).params
    batch = setup.family.sample(g, 5, 5, 5).to(dtype=D)
    noise = sample_noise(params, setup, g, 5, 2)
    ref, _ = meta_gradient(params, batch, noise, setup, engine="vmap")
    got, _ = meta_gradient(to_cuda(params), batch.to("cuda", D), to_cuda(noise), replace(setup, device="cuda"),
                           engine=engine)
    assert_grads_close(got, ref, atol=1e-11, rtol=1e-9, msg=f"{name} {engine}")


def omniglot_problem(name, meta_batch=8, **setup_kw):
    from metasweep.core.conv import ConvNet

    hp = HParams(alpha=0.4, inner_steps=1, meta_batch=meta_batch)
    base = Setup(SyntheticImages(), get_variant(name), hp, ConvNet.omniglot(5), 1, 15, device="cuda",
                 engine="batched", **setup_kw)
    g = torch.Generator().manual_seed(0)
    params = init_state(replace(base, device="cpu", dtype=D), 0).params
    batch = base.family.sample(g, meta_batch, 1, 15)
    noise = sample_noise(params, replace(base, device="cpu", dtype=D), g, meta_batch, 1)
    return base, params, batch, noise


def relative_error(got, ref):
    num = sum(float((got[k].double() - ref[k]).norm() ** 2) for k in ref) ** 0.5
    den = sum(float(ref[k].norm() ** 2) for k in ref) ** 0.5
    assert den > 0
    return num / den


@pytest.mark.parametrize("name", ["maml", "mt-net"])
def test_float32_cuda_meta_gradient_of_the_omniglot_net_is_float32_accurate(name):
    """The real Omniglot net (64 filters, 28x28, 5-way) in float32 on the GPU against float64 on the
    same GPU. By default (Setup.tf32 False) the whole meta-gradient is float32-accurate (1e-4 to 3e-3:
    cuDNN's float32 convolution algorithms are less exact than the CPU's). PyTorch's own default runs
    cuDNN convolutions in TF32, which put this meta-gradient 7-16 % away on an H100: the switch must
    reach cuDNN both ways."""
    base, params, batch, noise = omniglot_problem(name)
    ref, _ = meta_gradient(to_cuda(params), batch.to("cuda", D), to_cuda(noise), replace(base, dtype=D))
    f32 = ({k: v.float().cuda() for k, v in params.items()}, batch.to("cuda", torch.float32),
           {k: v.float().cuda() for k, v in noise.items()})
    exact = relative_error(meta_gradient(*f32, base)[0], ref)
    # measured on an H100 (bench/conv_precision.py): MAML 2.8e-4, MT-net 2.8e-3 - cuDNN's float32
    # algorithms (PyTorch's own convolutions: 4e-4; the CPU: 6e-5); TF32: 7e-2 and 1.6e-1
    assert exact < 5e-3, exact
    assert torch.backends.cudnn.allow_tf32  # PyTorch's default, restored after our computation
    if torch.cuda.get_device_capability() >= (8, 0):  # TF32 exists from Ampere on
        tf32 = relative_error(meta_gradient(*f32, replace(base, tf32=True))[0], ref)
        assert tf32 > 10 * exact, (tf32, exact)


@pytest.mark.parametrize("name", ["maml", "mt-net", "meta-sgd", "anil", "fomaml"])
def test_graphed_meta_gradient_equals_eager(name):
    """The CUDA graph replays the eager kernels: same gradients and loss, step after step, with the
    parameters moving in place between replays (as the optimizer moves them)."""
    from metasweep.core.graphs import graphed_meta_gradient

    base, params, _, _ = omniglot_problem(name)
    params = {k: v.float().cuda() for k, v in params.items()}
    cache: dict = {}
    g = torch.Generator().manual_seed(3)
    for step in range(3):
        batch = base.family.sample(g, 8, 1, 15).to("cuda", torch.float32)
        noise = sample_noise(params, base, g, 8, 1)
        eager, eager_loss = meta_gradient(params, batch, noise, base)
        graphed, loss = graphed_meta_gradient(base, params, batch, noise, cache)
        torch.testing.assert_close(loss, eager_loss, atol=0, rtol=1e-6)
        for k in eager:
            torch.testing.assert_close(graphed[k], eager[k], atol=1e-9, rtol=1e-6, msg=f"step {step} {k}")
        with torch.no_grad():
            for k, v in params.items():
                v.sub_(0.01 * eager[k])
    assert len(cache) == 1  # captured once, replayed three times


def test_cuda_training_reads_each_loss_one_step_late_without_mixing_them_up():
    """On CUDA `train` reads each step's loss one step late (the CPU samples the next batch while the
    GPU works) and the graphed loss is a static buffer overwritten by every replay: the curve rows
    must still hold each step's own loss - the same as an eager run's, and the same as the losses of
    the steps taken one by one."""
    base, _, _, _ = omniglot_problem("maml", meta_batch=4)
    s = replace(base, queries=2)
    graphed, eager, single = init_state(s, 5), init_state(replace(s, cuda_graphs=False), 5), init_state(s, 5)
    train(s, graphed, 12, report_every=4, val_tasks=4)
    train(replace(s, cuda_graphs=False), eager, 12, report_every=4, val_tasks=4)
    per_step = [float(train_one(s, single)) for _ in range(12)]
    windows = [sum(per_step[i:i + 4]) / 4 for i in (0, 4, 8)]
    for rows in (graphed.curves, eager.curves):
        assert [r["meta_step"] for r in rows] == [4, 8, 12]
        torch.testing.assert_close([r["meta_train_loss"] for r in rows], windows, atol=1e-6, rtol=1e-5)
    assert len(set(per_step)) == 12  # the losses do differ step to step, so a mix-up would show


def train_one(setup, state):
    from metasweep.core.meta import outer_step

    return outer_step(setup, state).item()


@pytest.mark.parametrize("graphs", [True, False])
def test_conv_training_on_cuda_resumes_bit_identically(tmp_path, graphs):
    """Train on the GPU, lose the run after a checkpoint, resume: the same parameters as the run
    that never stopped (task sampling and mask noise come from the CPU generator in the state; a
    resumed state has new tensors, so the CUDA graph is captured afresh)."""
    base, _, _, _ = omniglot_problem("mt-net", meta_batch=4, cuda_graphs=graphs)
    s = replace(base, hp=replace(base.hp, meta_batch=4), queries=2)
    full = init_state(s, 3)
    train(s, full, 20, report_every=5, val_tasks=6)
    part = init_state(s, 3)

    def checkpoint_then_die(state, row):
        state.save(tmp_path / "ckpt.pt")
        return state.step >= 10

    train(s, part, 20, report_every=5, val_tasks=6, on_report=checkpoint_then_die)
    resumed = load_state(s, tmp_path / "ckpt.pt")
    assert resumed.step == 10 and all(v.device.type == "cuda" for v in resumed.params.values())
    train(s, resumed, 20, report_every=5, val_tasks=6)
    for k in full.params:
        assert torch.equal(full.params[k], resumed.params[k]), k
    assert [r["val_loss"] for r in resumed.curves] == [r["val_loss"] for r in full.curves]
    assert ("meta_gradient_graph" in full.runtime) == graphs


def test_omniglot_trial_on_cuda_beats_chance(tmp_path):
    """A whole trial on the GPU (device auto -> cuda, engine auto -> batched) on the minimal
    Omniglot sets: its rows say cuda, and the adapted accuracy is far above chance (0.2)."""
    from metasweep.sweeps.trial import TrialConfig, build_setup, run_trial

    root = unzip_omniglot(tmp_path / "omniglot")
    cfg = TrialConfig(task="omniglot", task_options=dict(data_root=str(root), ways=5, splits=[200, 40, 52],
                                                          cache_dir=str(tmp_path / "cache")),
                      variant="mt-net", train_shots=1, queries=5, alpha=0.4, beta=0.003, meta_batch=16,
                      meta_steps=150, report_every=50, val_tasks=20, eval_tasks=100, eval_shots=(1,),
                      eval_steps=(0, 1), cka_tasks=4)
    assert build_setup(cfg).engine == "batched"
    result = run_trial(cfg, trial_id="cuda-omniglot")
    assert result.trial_row["status"] == "completed", result.trial_row
    assert result.trial_row["device"] == "cuda"
    acc = {}
    for steps, a in zip(result.eval_tasks["inner_steps"].tolist(), result.eval_tasks["accuracy"].tolist()):
        acc.setdefault(steps, []).append(a)
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    assert abs(mean[0] - 0.2) < 0.1 and mean[1] > 0.5, mean
