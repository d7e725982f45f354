"""Meta-reinforcement-learning learners: MAML-TRPO, ANIL-TRPO and their variants (learner kind "rl").

The inner loop is the gradient-based family's, unchanged (core.adapt through core.rl.sampling): the
switches of core.variants (inner_params all | head: ANIL; order second | first; transform, mask,
learned_alpha) apply to a Gaussian MLP policy, and its step is one of vanilla policy gradient on
`shots` trajectories per task (MAML eq. 1 with the REINFORCE loss of core.rl.pg, GAE advantages over a
linear baseline). Two RL switches: `outer` - the outer rule (core.rl.outer: "trpo", MAML's; "promp",
PPO-style) - and `inner_loss` ("reinforce", MAML's; "lvc", ProMP's).

Evaluation (`task_metrics`): for each evaluation task, the return of `queries` fresh trajectories of
the policy after 0, 1, ..., k inner steps, each step adapting on `shots` fresh trajectories of the
policy before it; loss = -return. Its noise is one seed per task (core.evaluate's stream 1), from
which each inner step's trajectories are drawn (core.rl.sampling.eval_noise).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..adapt import adapted_names, mask_noise
from ..hparams import HParamDef, register_hparam
from ..model import Params
from ..rl.outer import READS, SEARCHED
from ..rl.pg import INNER_LOSSES
from ..rl.sampling import SEED_HIGH, episodes, eval_noise, inner_step, rollout, split
from ..variants import Variant, VariantError
from .base import LearnerBase
from .gradient import GradientLearner

for _d in (
    HParamDef("max_kl", 1e-2, low=0, search=(1e-3, 1e-1, True), help="TRPO's trust region delta: mean KL bound of "
              "the outer step (MAML: 0.01)"),
    HParamDef("gamma", 0.99, low=0, high=1.0, help="discount of the returns the baseline fits and GAE uses"),
    HParamDef("gae_lambda", 1.0, low=0, low_inclusive=True, high=1.0, help="GAE's lambda (MAML's code: 1.0)"),
    HParamDef("ppo_clip", 0.3, low=0, high=1.0, help="ProMP's clipping epsilon of the outer surrogate"),
    HParamDef("ppo_epochs", 5, kind="int", low=1, low_inclusive=True, help="ProMP's Adam steps per meta-batch"),
    HParamDef("inner_kl_coef", 5e-4, low=0, low_inclusive=True, help="ProMP's KL penalty on the pre-update policy"),
):
    register_hparam(_d)

# the inner loop's switches are the variant table's (less its own outer rule and NIL's readout), plus two of RL's
RL_SWITCHES = (*(f.name for f in fields(Variant) if f.name not in ("name", "outer", "eval_head")), "outer", "inner_loss")


@dataclass(frozen=True)
class RLLearner(LearnerBase):
    variant: Variant  # the inner loop's switches (its `outer` stays "maml": the RL outer rule is `outer`)
    outer: str = "trpo"
    inner_loss: str = "reinforce"
    kind = "rl"
    problem = "rl"
    inner_loop = True

    def __post_init__(self) -> None:
        if self.outer not in READS:
            raise VariantError(f"variant {self.name!r}: outer must be one of {', '.join(READS)} for an RL learner "
                               f"(got {self.outer!r})")
        if self.inner_loss not in INNER_LOSSES:
            raise VariantError(f"variant {self.name!r}: inner_loss must be one of {', '.join(INNER_LOSSES)} "
                               f"(got {self.inner_loss!r})")

    @property
    def name(self) -> str:
        return self.variant.name

    @property
    def gradient(self) -> GradientLearner:
        return GradientLearner(self.variant)

    def reads(self) -> tuple[str, ...]:
        masked = ("temperature", "mask_eval", "zeta_init") if self.variant.masked else ()
        return ("alpha", "inner_steps", "meta_batch", "gamma", "gae_lambda", *READS[self.outer], *masked)

    def searched(self) -> tuple[str, ...]:
        return SEARCHED[self.outer] + (("temperature",) if self.variant.masked else ())

    def switches(self) -> dict:
        v = {k: x for k, x in self.variant.as_dict().items() if k in RL_SWITCHES}
        return {"name": self.name, **v, "outer": self.outer, "inner_loss": self.inner_loss}

    def check(self, setup) -> None:
        if not hasattr(setup.family, "rollout"):
            raise ValueError(f"learner {self.name!r} needs a reinforcement-learning task family (navigation2d, "
                             f"cheetah-dir, cheetah-vel; got {setup.family.name})")

    def adapted_names(self, model) -> list[str]:
        return adapted_names(model, self.variant)

    def init(self, setup, generator: torch.Generator) -> Params:
        """The policy's W, b (Glorot) and log sigma, plus T, zeta, Meta-SGD's alpha as the switches ask."""
        return self.gradient.init(setup, generator)

    def mask_noise(self, setup, params: Params, generator: torch.Generator, n_tasks: int, steps: int) -> dict:
        noise = mask_noise(params, setup.model, self.variant, generator, n_tasks, max(steps, 1))
        return {k: t.to(device=setup.device, dtype=setup.dtype) for k, t in noise.items()}

    def noise(self, setup, params: Params, generator: torch.Generator, n_tasks: int, steps: int) -> dict:
        """Evaluation noise: one rollout seed per task and inner step 0..steps ("rollout" [n_tasks,
        steps + 1], from a sub-generator so that the first draws do not depend on `steps`), then the
        inner loop's mask noise."""
        sub = torch.Generator().manual_seed(int(torch.randint(0, SEED_HIGH, (1,), generator=generator)))
        seeds = torch.cat([torch.randint(0, SEED_HIGH, (n_tasks, 1), generator=sub) for _ in range(steps + 1)], 1)
        return {"rollout": seeds, **self.mask_noise(setup, params, generator, n_tasks, steps)}

    def train_batch(self, setup, generator: torch.Generator):
        return setup.family.sample(generator, setup.hp.meta_batch, setup.train_shots, setup.queries)

    def outputs(self, setup, params: Params, x_support, y_support, x_query, noise: dict, *, steps: int,
                every_step: bool, mask_mode: str = "sample", batched: bool = False) -> list[torch.Tensor]:
        """The policy's output [mu, log sigma] on observations x_query after 0..steps inner steps on the
        flattened samples (x_support, y_support) of core.rl.pg (the same samples at every step)."""
        from ..adapt import adapt

        hp = setup.hp
        fast = adapt(params, x_support, y_support, model=setup.model, variant=self.variant, alpha=hp.alpha,
                     temperature=hp.temperature, steps=steps, loss_fn=INNER_LOSSES[self.inner_loss], noise=noise,
                     mask_mode=mask_mode, all_steps=True, batched=batched)
        return [setup.model.forward(f, x_query) for f in (fast if every_step else fast[-1:])]

    def query_loss(self, setup, params: Params, batch, noise: dict, *, batched: bool) -> torch.Tensor:
        raise ValueError(f"learner {self.name!r} is trained by its outer rule {self.outer!r} (core.rl.outer), "
                         "not by a gradient of query_loss")

    def task_metrics(self, setup, params: Params, batch, noise: dict, *, steps: int, mask_mode: str = "sample") -> dict:
        """Return of `batch.query` trajectories of the policy after 0..steps inner steps, each step
        on `batch.support` trajectories of the policy before it: {"return", "loss" = -return} [T, steps + 1]."""
        fast, returns = params, []
        tasks, q, k = batch.params, batch.query, batch.support
        for s in range(steps + 1):
            eps, seeds = eval_noise(setup.family, noise["rollout"][:, s], q, k if s < steps else 0, setup.dtype)
            (query, _), (support, dists) = split(*rollout(setup, fast, tasks, eps.to(setup.device), seeds), q)
            returns.append(query.returns().mean(1))
            if s < steps:
                fast = inner_step(self, setup, fast, episodes(setup, support, dists), noise, s, mask_mode)
        ret = torch.stack(returns, 1)
        return {"return": ret, "loss": -ret}


def make_rl_learner(name: str, outer: str = "trpo", inner_loss: str = "reinforce", **switches) -> RLLearner:
    """An RL learner from inner-loop switches (core.variants.Variant's, less its own `outer` and
    `eval_head`) and the RL switches `outer`, `inner_loss`; VariantError on a bad combination."""
    return RLLearner(Variant(name, **switches), outer, inner_loss)


PRESETS = {
    "maml-trpo": {},
    "anil-trpo": {"inner_params": "head"},
    "fomaml-trpo": {"order": "first"},
    "promp": {"outer": "promp", "inner_loss": "lvc"},
    "anil-promp": {"inner_params": "head", "outer": "promp", "inner_loss": "lvc"},
}
