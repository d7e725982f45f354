"""The conv cells: T = I equivalence, per-task batch norm, engines agree, meta-gradients against
finite differences in float64 (vmapped, looped and batched). Tiny: 8x8 images, 3 filters, 2 ways."""

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from coreutil import learner_params

from metasweep.core import PRESETS, HParams, get_variant
from metasweep.core.adapt import adapt, adapted_names, meta_only_names
from metasweep.core.conv import BN_EPS, ConvNet, batch_norm
from metasweep.core.losses import cross_entropy
from metasweep.core.meta import meta_gradient, meta_loss, reptile_direction, sample_noise
from metasweep.core.setup import Setup
from metasweep.core.state import init_state
from metasweep.core.tasks import Batch

D = torch.float64
WAYS = 2


@dataclass(frozen=True)
class RandomImages:
    """Random 1x8x8 images with shot-major labels: enough to exercise the math."""

    ways: int = WAYS
    name = "random-images"
    loss = "cross_entropy"
    input_shape = (1, 8, 8)

    @property
    def output_dim(self):
        return self.ways

    def key(self):
        return self.name

    def sample(self, g, n_tasks, shots, queries):
        def part(k):
            x = torch.randn(n_tasks, k * self.ways, 1, 8, 8, generator=g)
            y = torch.arange(self.ways).repeat(k).expand(n_tasks, -1).contiguous()
            return x + 0.5 * y.view(n_tasks, -1, 1, 1, 1), y

        return Batch(*part(shots), *part(queries))


MODELS = {
    "stride": ConvNet(1, 8, 3, WAYS, 2, "stride", "mean"),
    "maxpool": ConvNet(1, 8, 3, WAYS, 2, "maxpool", "flatten"),
}


def setup_for(name, model="stride", engine="batched", inner_steps=1, dtype=D):
    hp = HParams(inner_steps=inner_steps, meta_batch=3, alpha=0.1)
    return Setup(RandomImages(), get_variant(name), hp, model=MODELS[model], train_shots=2, queries=2,
                 dtype=dtype, engine=engine)


def randomize(params, g):
    out = {}
    for k, v in params.items():
        if k.startswith("alpha."):
            out[k] = v + 0.01 * torch.rand(v.shape, generator=g, dtype=v.dtype)
        elif ".zeta" in k:
            out[k] = 0.5 * torch.randn(v.shape, generator=g, dtype=v.dtype)
        else:
            out[k] = v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype)
    return out


def problem(name, model="stride", inner_steps=1, seed=1, dtype=D):
    setup = setup_for(name, model, inner_steps=inner_steps, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    params = randomize(init_state(setup, seed).params, g)
    batch = setup.family.sample(g, 3, 2, 2).to(dtype=dtype)
    noise = sample_noise(params, setup, g, 3, inner_steps)
    return setup, params, batch, noise


def test_shapes_presets_and_masks():
    net = ConvNet.omniglot(5)
    assert net.spatial() == 2 and net.feature_dim() == 64
    assert ConvNet.miniimagenet(5).spatial() == 5 and ConvNet.miniimagenet(5).feature_dim() == 800
    g = torch.Generator().manual_seed(0)
    p = learner_params(net, get_variant("mt-net"), g)
    assert p["c0.W"].shape == (64, 1, 3, 3) and p["c0.T"].shape == (64, 64) and p["c0.zeta"].shape == (64,)
    assert p["c4.W"].shape == (5, 64) and p["c4.zeta"].shape == (5,)
    full = learner_params(net, get_variant("mt-net-full"), g)
    assert full["c1.zeta_W"].shape == full["c1.W"].shape == (64, 64, 3, 3)
    assert net.forward(p, torch.rand(7, 1, 28, 28)).shape == (7, 5)
    assert net.forward(p, torch.rand(2, 7, 1, 28, 28)).shape == (2, 7, 5)
    # batch norm's gamma/beta are outer-only
    assert "c0.gamma" not in adapted_names(net, get_variant("maml"))
    assert {"c0.gamma", "c0.beta_bn"} <= set(meta_only_names(p))
    assert adapted_names(net, get_variant("anil")) == ["c4.W", "c4.b"]


def test_batch_norm_matches_torch_in_forward(float64):
    h = torch.randn(6, 2, 3, 4, 4)
    gamma, beta = torch.rand(3) + 0.5, torch.randn(3)
    for t in range(2):
        ref = F.batch_norm(h[:, t], None, None, gamma, beta, training=True, eps=BN_EPS)
        torch.testing.assert_close(batch_norm(h, gamma, beta)[:, t], ref)


@pytest.mark.parametrize("model", ["stride", "maxpool"])
def test_tnet_with_identity_T_equals_plain_conv_net(model, float64):
    """T = I: same logits, same adapted weights, same meta-loss as the plain conv net."""
    _, params, batch, _ = problem("t-net", model)
    params = {k: (torch.eye(v.shape[0]) if k.endswith(".T") else v) for k, v in params.items()}
    plain = {k: v for k, v in params.items() if not k.endswith(".T")}
    net = MODELS[model]
    torch.testing.assert_close(net.forward(params, batch.x_query), net.forward(plain, batch.x_query))
    tnet, maml = setup_for("t-net", model), setup_for("maml", model)
    torch.testing.assert_close(meta_loss(params, batch, {}, tnet), meta_loss(plain, batch, {}, maml))
    ga, _ = meta_gradient(params, batch, {}, tnet)
    gb, _ = meta_gradient(plain, batch, {}, maml)
    for k in plain:
        torch.testing.assert_close(ga[k], gb[k])
    # and a T != I does change the function
    moved = {**params, "c0.T": params["c0.T"] + 0.3}
    assert not torch.allclose(net.forward(moved, batch.x_query), net.forward(params, batch.x_query))


@pytest.mark.parametrize("model", ["stride", "maxpool"])
def test_batched_forward_uses_each_tasks_own_batch_statistics(model, float64):
    """Batched weights and inputs [tasks, ...] give, task by task, the unbatched forward (BN over
    that task's examples only)."""
    setup, params, batch, _ = problem("mt-net", model)
    net = MODELS[model]
    fast = {k: torch.stack([v + 0.1 * i for i in range(3)]) if k in adapted_names(net, setup.variant) else v
            for k, v in params.items()}
    out = net.forward(fast, batch.x_support)
    for i in range(3):
        one = {k: (v[i] if k in adapted_names(net, setup.variant) else v) for k, v in fast.items()}
        torch.testing.assert_close(out[i], net.forward(one, batch.x_support[i]))
        for upto in (1, net.n_conv):
            torch.testing.assert_close(net.forward(fast, batch.x_support, upto=upto)[i],
                                       net.forward(one, batch.x_support[i], upto=upto))


@pytest.mark.parametrize("name", [n for n in PRESETS if n != "reptile"])
def test_engines_agree_on_conv_meta_gradient(name):
    """vmap (BN under vmap(grad)), loop and batched: same meta-loss and meta-gradient, float32 to 1e-5."""
    setup, params, batch, noise = problem(name, "maxpool" if name in ("maml", "mt-net") else "stride",
                                          inner_steps=2, dtype=torch.float32)
    ref, ref_loss = meta_gradient(params, batch, noise, setup, engine="loop")
    for engine in ("vmap", "batched"):
        g, loss = meta_gradient(params, batch, noise, setup, engine=engine)
        torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
        for k in ref:
            torch.testing.assert_close(g[k], ref[k], atol=1e-5, rtol=1e-4, msg=f"{name} {engine} {k}")
    assert sum(float(v.abs().sum()) for v in ref.values()) > 0


def test_reptile_direction_conv_engines_agree(float64):
    setup, params, batch, noise = problem("reptile")
    a, la = reptile_direction(params, batch, noise, setup)
    b, lb = reptile_direction(params, batch, noise, setup_for("reptile", engine="vmap"))
    torch.testing.assert_close(la, lb)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


@pytest.mark.parametrize("name,model", [("maml", "stride"), ("maml", "maxpool"), ("t-net", "stride"),
                                        ("meta-sgd", "stride"), ("anil", "maxpool")])
def test_conv_meta_gradient_matches_finite_differences(name, model, float64):
    """Second-order meta-gradient of every engine vs central differences along random directions."""
    setup, params, batch, noise = problem(name, model, inner_steps=2)
    g = torch.Generator().manual_seed(5)
    directions = [{k: torch.randn(v.shape, generator=g) for k, v in params.items()} for _ in range(2)]
    eps = 1e-5
    for engine in ("loop", "vmap", "batched"):
        grads, _ = meta_gradient(params, batch, noise, setup, engine=engine)
        for d in directions:
            plus = meta_loss({k: v + eps * d[k] for k, v in params.items()}, batch, noise, setup, engine)
            minus = meta_loss({k: v - eps * d[k] for k, v in params.items()}, batch, noise, setup, engine)
            fd = (plus - minus) / (2 * eps)
            analytic = sum((grads[k] * d[k]).sum() for k in params)
            torch.testing.assert_close(analytic, fd, atol=1e-7, rtol=1e-6, msg=f"{engine}")


def test_inner_step_with_batch_norm_moves_only_adapted(float64):
    setup, params, batch, noise = problem("mt-net")
    fast = adapt(params, batch.x_support[0], batch.y_support[0], model=setup.model, variant=setup.variant,
                 alpha=0.1, temperature=1.0, steps=1, loss_fn=cross_entropy, noise={k: v[0] for k, v in noise.items()})
    for k in params:
        assert (k in adapted_names(setup.model, setup.variant)) or torch.equal(fast[k], params[k])


def test_auto_engine_is_one_switch_per_model_and_device():
    from metasweep.core.cells import DenseNet
    from metasweep.core.setup import auto_engine
    from metasweep.core.tasks import Sine

    assert setup_for("maml", engine="auto").engine == auto_engine(NET_FOR_AUTO, "cpu") == "loop"
    assert auto_engine(NET_FOR_AUTO, "cuda") == "batched"
    assert Setup(Sine(), get_variant("maml"), engine="auto").engine == "batched" == auto_engine(DenseNet(), "cpu")


NET_FOR_AUTO = MODELS["stride"]


def test_synthetic_images_have_the_real_shapes_labels_and_fixed_eval_tasks():
    """The benchmark/device-check family: Omniglot's and MiniImagenet's shapes, shot-major labels,
    a class signal, and evaluation tasks fixed by seed like every family."""
    from metasweep.core.tasks.synthetic import SyntheticImages

    fam, mini = SyntheticImages(), SyntheticImages(5, 3, 84)
    b = fam.sample(torch.Generator().manual_seed(0), 2, 1, 3)
    assert b.x_support.shape == (2, 5, 1, 28, 28) and b.x_query.shape == (2, 15, 1, 28, 28)
    assert b.y_query[0].tolist() == [0, 1, 2, 3, 4] * 3
    means = [float(b.x_query[:, b.y_query[0] == c].mean()) for c in range(5)]
    assert means == sorted(means) and means[4] - means[0] > 0.6  # 0.2 brighter per class
    assert ConvNet.omniglot(5).forward(ConvNet.omniglot(5).init(torch.Generator()),
                                       b.x_query).shape == (2, 15, 5)
    assert mini.sample(torch.Generator(), 1, 1, 1).x_support.shape == (1, 5, 3, 84, 84)
    a, c = fam.eval_tasks("test", 1, range(3), 1, 2), fam.eval_tasks("test", 1, range(3), 1, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, c)) and fam.key() != mini.key()
