"""Gradient-based meta-learners: one learner for every row of the variant table (core.variants).

MAML, FOMAML, Reptile, Meta-SGD, ANIL, T-net, M-net, M-net-full, MT-net and MT-net-full differ only
in the switches of their `Variant`; this learner reads the switches, never the name:

- `init`: the model's W, b (and batch norm), plus T = I per cell (transform; MT-net eq. 3), mask
  logits ζ = zeta_init (one per row, or per weight for "-full" masks; eq. 9) and Meta-SGD's learned
  α (one per adapted parameter, initialised to the hyper-parameter α);
- `noise`: the Logistic(0, 1) noise of the Gumbel-Softmax masks (core.adapt.mask_noise);
- `outputs`: the query outputs along the inner loop of core.adapt (eq. 1, 4, 8);
- `frozen`: cells left out of the inner loop (the freezing study of Raghu et al.; an evaluation
  mode, `with_frozen`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..adapt import adapt, adapted_names, mask_noise
from ..model import Params
from ..variants import Variant
from .base import LearnerBase


@dataclass(frozen=True)
class GradientLearner(LearnerBase):
    variant: Variant
    frozen: tuple[str, ...] = ()  # cells the inner loop leaves untouched (evaluation of the freezing study)
    kind = "gradient"
    inner_loop = True

    @property
    def name(self) -> str:
        return self.variant.name

    @property
    def outer(self) -> str:  # type: ignore[override]
        return "reptile" if self.variant.outer == "reptile" else "gradient"

    def reads(self) -> tuple[str, ...]:
        hp = ("alpha", "beta", "inner_steps", "meta_batch")
        return hp + (("temperature", "mask_eval", "zeta_init") if self.variant.masked else ())

    def searched(self) -> tuple[str, ...]:
        """alpha, beta, and the temperature c only where there is a mask (c does nothing without one)."""
        return ("alpha", "beta") + (("temperature",) if self.variant.masked else ())

    def switches(self) -> dict:
        return self.variant.as_dict()

    def with_frozen(self, cells: tuple[str, ...]) -> GradientLearner:
        return replace(self, frozen=tuple(cells))

    def check(self, setup) -> None:
        if not self.adapted_names(setup.model):
            raise ValueError(f"frozen cells {', '.join(self.frozen)} leave the inner loop of {self.name!r} nothing to "
                             "adapt (for no adaptation at all, evaluate at inner step 0)")

    def adapted_names(self, model) -> list[str]:
        return adapted_names(model, self.variant, self.frozen)

    def init(self, setup, generator: torch.Generator) -> Params:
        """T = I, ζ = zeta_init, Meta-SGD's α = hp.alpha, added to the model's parameters (section 6.1)."""
        v, hp, model = self.variant, setup.hp, setup.model
        p = model.init(generator, dtype=torch.float64)
        for c in model.cell_names():
            w = p[f"{c}.W"]
            if v.transform:
                p[f"{c}.T"] = torch.eye(w.shape[0], dtype=torch.float64)
            if v.mask == "row":
                p[f"{c}.zeta"] = torch.full((w.shape[0],), hp.zeta_init, dtype=torch.float64)
            elif v.mask == "full":
                p[f"{c}.zeta_W"] = torch.full(w.shape, hp.zeta_init, dtype=torch.float64)
                p[f"{c}.zeta_b"] = torch.full((w.shape[0],), hp.zeta_init, dtype=torch.float64)
        if v.learned_alpha:
            for name in adapted_names(model, v):
                p[f"alpha.{name}"] = torch.full_like(p[name], hp.alpha)
        return {k: t.to(dtype=setup.dtype, device=setup.device) for k, t in p.items()}

    def noise(self, setup, params: Params, generator: torch.Generator, n_tasks: int, steps: int) -> dict:
        noise = mask_noise(params, setup.model, self.variant, generator, n_tasks, max(steps, 1), self.frozen)
        if not noise:
            return noise
        device = torch.device(setup.device)

        def placed(t: torch.Tensor) -> bool:  # "cuda" is any index's device
            return t.device.type == device.type and device.index in (None, t.device.index)
        return {k: t if t.dtype == setup.dtype and placed(t) else t.to(device=device, dtype=setup.dtype)
                for k, t in noise.items()}

    fold = True  # batched outputs accept per-task parameters (core.bundle's fold mode)

    def _adapt(self, setup, params: Params, x_support, y_support, noise: dict, **kw):
        hp = setup.hp
        return adapt(params, x_support, y_support, model=setup.model, variant=self.variant, alpha=hp.alpha,
                     temperature=hp.temperature, loss_fn=setup.loss_fn, noise=noise, frozen=self.frozen, **kw)

    def trajectory(self, setup, params: Params, x_support, y_support, noise: dict, *, steps: int,
                   every_step: bool = True, mask_mode: str = "sample", batched: bool = False,
                   task_params: bool = False):
        """The fast parameters after 0..steps inner steps (or only after `steps`)."""
        out = self._adapt(setup, params, x_support, y_support, noise, steps=steps, mask_mode=mask_mode,
                          all_steps=every_step, batched=batched, task_params=task_params)
        return out if every_step else [out]

    def outputs(self, setup, params: Params, x_support, y_support, x_query, noise: dict, *, steps: int,
                every_step: bool, mask_mode: str = "sample", batched: bool = False,
                task_params: bool = False) -> list[torch.Tensor]:
        if not every_step:  # after the last step only: adapt may compute them without forming that step
            return [self._adapt(setup, params, x_support, y_support, noise, steps=steps, mask_mode=mask_mode,
                                batched=batched, task_params=task_params, x_query=x_query)]
        fast = self.trajectory(setup, params, x_support, y_support, noise, steps=steps, every_step=True,
                               mask_mode=mask_mode, batched=batched, task_params=task_params)
        return [setup.model.forward(f, x_query) for f in fast]

    def diagnostics(self, setup, params: Params) -> dict:
        """mask_fraction: the expected fraction of weights the task learner updates, mean of
        P(m = 1) = sigmoid(ζ) over all ζ (MT-net Fig. 4), overall and per cell; alpha_mean: the mean
        of Meta-SGD's learned α."""
        out = {"mask_fraction": None, "mask_fraction_per_cell": None, "alpha_mean": None}
        if self.variant.masked:
            per_cell, all_probs = [], []
            for c in setup.model.cell_names():
                probs = [torch.sigmoid(v.detach()).flatten() for k, v in params.items() if k.startswith(f"{c}.zeta")]
                if probs:
                    p = torch.cat(probs)
                    per_cell.append(float(p.mean()))
                    all_probs.append(p)
            out["mask_fraction"] = float(torch.cat(all_probs).mean())
            out["mask_fraction_per_cell"] = per_cell
        alphas = [v.detach().flatten() for k, v in params.items() if k.startswith("alpha.")]
        if alphas:
            out["alpha_mean"] = float(torch.cat(alphas).mean())
        return out
