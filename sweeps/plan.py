"""A spec becomes stages: tune (Optuna per variant x train-shots cell, on meta-validation tasks),
test (each cell's best configuration retrained on the spec's seeds, evaluated on meta-test
tasks), or a plain grid. Pure functions from the spec to trial configurations."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from metasweep.core.hparams import hparam_def
from metasweep.core.registry import make_learner

from .spec import Range, Spec
from .trial import TrialConfig


@dataclass(frozen=True)
class Cell:
    variant: str
    shots: int

    @property
    def name(self) -> str:
        return f"{self.variant}-k{self.shots}"


TRIAL_FIELDS = set(TrialConfig.__dataclass_fields__) - {"alpha", "beta", "temperature", "inner_steps", "meta_batch",
                                                        "mask_eval", "zeta_init"}


def cells(spec: Spec) -> list[Cell]:
    return [Cell(v, k) for v in spec.variant_names() for k in spec.train_shots]


def learner_of(spec: Spec, variant: str):
    """The learner a variant of the spec names (its preset with its switches)."""
    preset, switches = spec.variant_of(variant)
    return make_learner(preset, name=variant, **switches)


def trial_config(spec: Spec, cell: Cell, *, split: str, seed: int, **overrides) -> TrialConfig:
    preset, switches = spec.variant_of(cell.variant)
    b, e = spec.budget, spec.eval
    cfg = TrialConfig(
        task=spec.task.family, task_options=dict(spec.task.options), variant=preset, variant_overrides=switches,
        hidden=tuple(spec.model.hidden), train_shots=cell.shots, queries=spec.task.queries,
        alpha=spec.defaults.alpha, beta=spec.defaults.beta, temperature=spec.defaults.temperature,
        inner_steps=b.inner_steps, meta_batch=b.meta_batch, meta_steps=b.meta_steps,
        report_every=b.report_every, val_tasks=e.val_tasks, val_seed=e.val_seed, eval_split=split,
        eval_seed=e.seed, eval_tasks=e.tasks, eval_shots=tuple(e.shots), eval_steps=tuple(e.inner_steps),
        mask_eval=e.mask_eval, seed=seed, cka_tasks=e.cka_tasks)
    for k, v in overrides.items():
        if k in TRIAL_FIELDS:
            setattr(cfg, k, v)
        else:
            cfg.set_hparam(k, v)
    return cfg


def search_space(spec: Spec, variant: str) -> dict[str, Range]:
    """The ranges Optuna searches for one variant: the hyper-parameters its learner searches (for a
    gradient learner alpha, beta, and c only with a mask: the temperature does nothing without one).
    Per-variant overrides replace a range."""
    space = {}
    override = spec.search.overrides.get(variant)
    for name in learner_of(spec, variant).searched():
        rng = getattr(override, name, None) if override else None
        if rng is None and not hasattr(spec.search, name):  # a learner's own: its declared default range
            low, high, log = hparam_def(name).search
            rng = Range(low=low, high=high, log=log)
        rng = rng or getattr(spec.search, name)
        if rng is not None:
            space[name] = rng
    return space


def tune_trial_base(spec: Spec, cell: Cell) -> TrialConfig:
    """Tune trials are scored on meta-validation tasks only; the test tasks stay untouched."""
    return trial_config(spec, cell, split="val", seed=spec.search.seed)


def stage_test_configs(spec: Spec, best: dict[str, dict]) -> list[tuple[Cell, TrialConfig]]:
    """Every cell's best hyper-parameters (from the tune stage, or the spec's defaults) on every seed."""
    out = []
    for cell in cells(spec):
        hp = best.get(cell.name, {})
        for seed in spec.test.seeds:
            out.append((cell, trial_config(spec, cell, split="test", seed=seed, **hp)))
    return out


def grid_trial_configs(spec: Spec) -> list[tuple[Cell, TrialConfig]]:
    """Variants x train shots x seeds x the product of the spec's grid fields, on meta-test tasks."""
    keys = list(spec.grid)
    out = []
    for cell in cells(spec):
        for values in itertools.product(*(spec.grid[k] for k in keys)):
            for seed in spec.test.seeds:
                over = {k: x for k, x in zip(keys, values) if not k.startswith("task.")}
                cfg = trial_config(spec, cell, split="test", seed=seed, **over)
                cfg.task_options = {**cfg.task_options,
                                    **{k.removeprefix("task."): x for k, x in zip(keys, values) if k.startswith("task.")}}
                out.append((cell, cfg))
    return out
