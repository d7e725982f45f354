"""NIL evaluation, the freezing study, linear CKA and SVCCA (the feature-reuse analysis). Tiny conv nets."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from metasweep.analysis.cka import summarize_cka
from metasweep.core import HParams, get_variant
from metasweep.core.adapt import adapted_names
from metasweep.core.conv import ConvNet
from metasweep.core.evaluate import evaluate
from metasweep.core.learners import CosineReadout
from metasweep.core.nil import frozen_block, nil_scores
from metasweep.core.setup import Setup
from metasweep.core.similarity import cka_before_after, linear_cka, svcca
from metasweep.core.state import init_state
from metasweep.core.tasks.base import Batch, FamilyBase


@dataclass(frozen=True)
class Blobs(FamilyBase):
    """2-way tasks of 1x8x8 images: class c is a bright quadrant (random per task) plus noise."""

    ways: int = 2
    name = "blobs"
    loss = "cross_entropy"
    input_shape = (1, 8, 8)

    @property
    def output_dim(self):
        return self.ways

    def _part(self, g, quad, k):
        n_tasks = quad.shape[0]
        y = torch.arange(self.ways).repeat(k).expand(n_tasks, -1).contiguous()
        x = 0.3 * torch.randn(n_tasks, k * self.ways, 1, 8, 8, generator=g)
        q = quad.gather(1, y)
        for t in range(n_tasks):
            for i in range(k * self.ways):
                r, c = divmod(int(q[t, i]), 2)
                x[t, i, 0, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 1.0
        return x, y

    def _quadrants(self, g, n_tasks):
        return torch.rand(n_tasks, 4, generator=g).argsort(1)[:, : self.ways]  # [tasks, ways]

    def sample(self, g, n_tasks, shots, queries):
        quad = self._quadrants(g, n_tasks)
        support = self._part(g, quad, shots)
        return Batch(*support, *self._part(g, quad, queries))

    def eval_task(self, g, max_shots, queries, split="test"):
        quad = self._quadrants(g, 1)
        query = self._part(g, quad, queries)
        return Batch(*self._part(g, quad, max_shots), *query)


NET = ConvNet(1, 8, 4, 2, 2, "stride", "mean")


def setup_for(name, **switches):
    return Setup(Blobs(), get_variant(name, **switches), HParams(alpha=0.5, inner_steps=1, meta_batch=4),
                 model=NET, train_shots=2, queries=3)


def test_nil_is_perfect_on_separable_features():
    g = torch.Generator().manual_seed(0)
    ways, centres = 4, 5 * torch.randn(4, 16, generator=g)
    ys, yq = torch.arange(ways).repeat(3), torch.arange(ways).repeat(5)
    fs = centres[ys] + 0.1 * torch.randn(len(ys), 16, generator=g)
    fq = centres[yq] + 0.1 * torch.randn(len(yq), 16, generator=g)
    scores = nil_scores(fs, ys, fq, ways)
    assert (scores.argmax(-1) == yq).all()
    batched = nil_scores(torch.stack([fs, fs]), torch.stack([ys, ys]), torch.stack([fq, fq]), ways)
    torch.testing.assert_close(batched[1], scores)


def test_nil_evaluation_mode_of_a_trained_model():
    setup = setup_for("anil")
    params = init_state(setup, 0).params
    nil = evaluate(setup, params, n_tasks=6, shots=(2,), steps=(0, 1), learner=CosineReadout(setup.learner))
    assert np.isfinite(nil["loss"]).all() and ((0 <= nil["accuracy"]) & (nil["accuracy"] <= 1)).all()
    # ANIL never moves the body: NIL accuracy is the same before and after the inner loop
    np.testing.assert_allclose(nil["accuracy"][nil["inner_steps"] == 0], nil["accuracy"][nil["inner_steps"] == 1])
    via_switch = evaluate(setup_for("anil", eval_head="nil"), params, n_tasks=6, shots=(2,), steps=(0, 1))
    np.testing.assert_allclose(via_switch["accuracy"], nil["accuracy"])
    adapted = evaluate(setup, params, n_tasks=6, shots=(2,), steps=(0, 1))
    assert not np.allclose(adapted["loss"], nil["loss"])


def test_freezing_a_block_of_layers():
    maml, anil = setup_for("maml"), setup_for("anil")
    params = init_state(maml, 0).params
    assert adapted_names(NET, maml.variant, frozen_block(NET, 0, 2)) == ["c2.W", "c2.b"]
    assert adapted_names(NET, maml.variant, frozen_block(NET, 1, 2)) == ["c0.W", "c0.b", "c2.W", "c2.b"]

    def frozen(setup, lo, hi):
        return setup.learner.with_frozen(frozen_block(setup.model, lo, hi))

    # MAML with the whole body frozen is ANIL's evaluation
    frozen_eval = evaluate(maml, params, n_tasks=5, shots=(2,), steps=(1, 3), learner=frozen(maml, 0, 2))
    head_only = evaluate(anil, params, n_tasks=5, shots=(2,), steps=(1, 3))
    np.testing.assert_allclose(frozen_eval["loss"], head_only["loss"], rtol=1e-6)
    full = evaluate(maml, params, n_tasks=5, shots=(2,), steps=(1, 3))
    assert not np.allclose(full["loss"], frozen_eval["loss"])
    with pytest.raises(ValueError, match="nothing to adapt"):
        evaluate(anil, params, n_tasks=2, shots=(2,), steps=(1,), learner=frozen(anil, 2, 3))
    with pytest.raises(ValueError, match="must lie within"):
        evaluate(maml, params, n_tasks=2, shots=(2,), steps=(1,), learner=frozen(maml, 1, 4))


def test_linear_cka_identity_orthogonal_and_scaling_invariance(float64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20, 7, generator=g)
    q, _ = torch.linalg.qr(torch.randn(7, 7, generator=g))
    torch.testing.assert_close(linear_cka(x, x), torch.tensor(1.0))
    torch.testing.assert_close(linear_cka(x, 3.5 * x @ q), torch.tensor(1.0))
    y = torch.randn(20, 5, generator=g)
    torch.testing.assert_close(linear_cka(x, y), linear_cka(2.0 * x @ q, 0.1 * y))
    assert 0 < float(linear_cka(x, y)) < 0.9
    y7 = torch.randn(20, 7, generator=g)
    batched = linear_cka(torch.stack([x, x]), torch.stack([x @ q, y7]))
    torch.testing.assert_close(batched, torch.stack([torch.tensor(1.0), linear_cka(x, y7)]))


def test_cka_before_after_per_layer():
    maml, anil = setup_for("maml"), setup_for("anil")
    params = init_state(maml, 0).params
    cols = cka_before_after(maml, params, n_tasks=4, chunk=3)
    assert len(cols["cka"]) == 4 * NET.n_cells and set(cols["layer"].tolist()) == {0, 1, 2}
    assert ((cols["cka"] > 0) & (cols["cka"] <= 1 + 1e-9)).all()
    # ANIL: the body does not move, so every body layer has CKA 1
    a = cka_before_after(anil, params, n_tasks=4)
    np.testing.assert_allclose(a["cka"][a["layer"] < 2], 1.0, atol=1e-9)
    rows = summarize_cka(a)
    assert [r["layer"] for r in rows] == [0, 1, 2] and rows[0]["mean"] == pytest.approx(1.0)
    # SVCCA: the first conv layer has 4x4 positions x 6 query images = 96 data points of 4 channels:
    # ANIL's is unchanged (1), MAML's moves a little. The second is spatially pooled (6 points of 4
    # channels, 4 + 4 kept directions > 5): undefined, NaN - not a trivial 1
    np.testing.assert_allclose(a["cca"][a["layer"] == 0], 1.0, atol=1e-9)
    first = cols["cca"][cols["layer"] == 0]
    assert np.isfinite(first).all() and (first > 0.5).all() and (first <= 1 + 1e-9).all()
    assert np.isnan(cols["cca"][cols["layer"] == 1]).all()
    assert summarize_cka(a, "cca")[0]["mean"] == pytest.approx(1.0)


def test_svcca_is_mean_canonical_correlation_and_invariant(float64):
    """Known canonical correlations 0.9, 0.5, 0 give a mean of ~0.467; CCA of a representation with
    any invertible linear map of itself is 1; SVCCA's 99 % cut drops the low-variance directions;
    too few data points for the kept directions is NaN, not a trivial 1."""
    g = torch.Generator().manual_seed(0)
    n = 40_000
    z, e = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)
    rho = torch.tensor([0.9, 0.5, 0.0])
    x, y = z, rho * z + torch.sqrt(1 - rho**2) * e
    mix = torch.randn(3, 3, generator=g)
    assert svcca(x @ mix, y, keep=1.0) == pytest.approx(float(rho.mean()), abs=0.01)
    assert svcca(x, 5.0 * x @ mix + 2.0, keep=1.0) == pytest.approx(1.0, abs=1e-9)
    # one direction carries > 99 % of the variance of both: SVCCA keeps only it
    big = torch.randn(2000, 1, generator=g)
    xa = torch.cat([10 * big, 0.01 * torch.randn(2000, 4, generator=g)], 1)
    ya = torch.cat([-3 * big, 0.01 * torch.randn(2000, 4, generator=g)], 1)
    assert svcca(xa, ya) == pytest.approx(1.0, abs=1e-6)
    assert svcca(xa, ya, keep=1.0) < 0.5  # all five: four of them are unrelated noise
    assert np.isnan(svcca(torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)))
    assert np.isnan(svcca(torch.ones(50, 3), torch.randn(50, 3, generator=g)))
