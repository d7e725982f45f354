"""A spec becomes stages: tune (Optuna per variant x train-shots cell, on meta-validation tasks),
test (each cell's best configuration retrained on the spec's seeds, evaluated on meta-test
tasks), or a plain grid. Pure functions from the config to trial configurations, and the inputs a
stage remembers (a hash of each cell's trial configurations)."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass

from metasweep.core.hparams import COMMON, hparam_def

from .config import RunSpec, check_hparam
from .spec import Range, Spec
from .trial import TrialConfig


@dataclass(frozen=True)
class Cell:
    variant: str
    shots: int

    @property
    def name(self) -> str:
        return f"{self.variant}-k{self.shots}"


TRIAL_FIELDS = set(TrialConfig.__dataclass_fields__) - set(COMMON)


def cells(spec: RunSpec) -> list[Cell]:
    return [Cell(v, k) for v in spec.variant_names() for k in spec.train_shots]


def learner_of(spec: RunSpec, variant: str):
    """The learner a variant of the spec names (its preset with its switches)."""
    return spec.learner(variant)


def trial_config(spec: RunSpec, cell: Cell, *, split: str, seed: int, **overrides) -> TrialConfig:
    """One trial of a cell: the config's budget (the variant's own where it has one) and evaluation,
    its hyper-parameters' defaults (the common ones, and a learner's own where `defaults:` gives
    them; the variant's `defaults:` first), then `overrides` (a search's or
    a grid's values, by field or hyper-parameter name)."""
    preset, switches = spec.variant_of(cell.variant)
    b, e = spec.budget_of(cell.variant), spec.eval
    cfg = TrialConfig(
        task=spec.task.family, task_options=dict(spec.task.options), variant=preset, variant_overrides=switches,
        hidden=tuple(spec.model.hidden), train_shots=cell.shots, queries=spec.task.queries,
        train_shots_range=spec.variant(cell.variant).train_shots_range,
        meta_steps=b.meta_steps, report_every=b.report_every, val_tasks=e.val_tasks, val_seed=e.val_seed,
        eval_split=split, eval_seed=e.seed, eval_tasks=e.tasks, eval_shots=tuple(e.shots),
        eval_steps=tuple(e.inner_steps), seed=seed, cka_tasks=e.cka_tasks, select=e.select, plugins=tuple(spec.plugins))
    reads = spec.learner(cell.variant).reads()
    own = spec.variant(cell.variant).defaults
    for name in (*COMMON, *(h for h in {**spec.defaults, **own} if h not in COMMON and h in reads)):
        cfg.set_hparam(name, spec.hparam_default(name, cell.variant))
    for k, v in overrides.items():
        if k in TRIAL_FIELDS:
            setattr(cfg, k, v)
        else:
            cfg.set_hparam(k, v)
    return cfg


def search_space(spec: Spec, variant: str) -> dict[str, Range]:
    """The ranges Optuna searches for one variant: exactly the hyper-parameters its learner searches
    (for a gradient learner alpha, beta, and c only with a mask), each from the variant's override,
    else the spec's `search:`, else the hyper-parameter's declared default range."""
    space = {}
    override = spec.search.overrides.get(variant, {})
    for name in spec.learner(variant).searched():
        rng = override.get(name) or spec.search.ranges().get(name)
        if rng is None:
            low, high, log = hparam_def(name).search
            rng = Range(low=low, high=high, log=log)
        elif rng.grid:
            rng = Range(choices=[check_hparam(name, x) for x in rng.choices])  # typed by the domain
        space[name] = rng
    return space


def grid_size(space: dict[str, Range]) -> int | None:
    """The number of combinations when every entry of `space` is a list of values, else None."""
    if not space or not all(r.grid for r in space.values()):
        return None
    return math.prod(len(r.choices) for r in space.values())


def tune_trials(spec: Spec, variant: str) -> int:
    """Optuna trials of a variant's tune cell: its grid's size (every searched hyper-parameter a list
    of values: each combination once), else `search.trials_per_variant` (TPE)."""
    return grid_size(search_space(spec, variant)) or spec.search.trials_per_variant


def space_inputs(space: dict[str, Range]) -> dict:
    """A search space as plain data (what a tune cell's inputs hash records)."""
    return {k: ({"choices": r.choices} if r.grid else [r.low, r.high, r.log]) for k, r in space.items()}


def tune_trial_base(spec: Spec, cell: Cell) -> TrialConfig:
    """Tune trials are scored on meta-validation tasks only; the test tasks stay untouched. Their
    hyper-parameters are drawn by the search (hp_source None)."""
    cfg = trial_config(spec, cell, split="val", seed=spec.search.seed)
    cfg.hp_source = None
    return cfg


def stage_test_configs(spec: Spec, best: dict[str, dict],
                       sources: dict[str, tuple[str, str | None]] | None = None) -> list[tuple[Cell, TrialConfig]]:
    """Every cell's best hyper-parameters (from the tune stage, or the spec's defaults) on every seed;
    `sources`: per cell name, where they came from (hp_source, hp_source_trial)."""
    out = []
    for cell in cells(spec):
        hp = {k: v for k, v in best.get(cell.name, {}).items() if not k.startswith("_")}
        for seed in spec.test.seeds:
            cfg = trial_config(spec, cell, split="test", seed=seed, **hp)
            cfg.hp_source, cfg.hp_source_trial = (sources or {}).get(cell.name, ("defaults", None))
            out.append((cell, cfg))
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
                cfg.hp_source = "grid"
                out.append((cell, cfg))
    return out


AUTO_BUNDLE = 8  # members per bundle where bundles pay (bench/bench_bundle.py: 8 MAML sine members 3.1x at meta-batch 4)


def slots_for(spec: Spec, cpus: float, gpus: float = 0.0) -> int:
    """How many trials (or bundles) run at once on `cpus` CPUs (and `gpus` GPUs where trials take
    them): what one takes divides them, at most the spec's `max_concurrent` - what an "auto" bundle
    size fills."""
    need = spec.resources
    fits = [cpus / need.cpu] + ([gpus / need.gpu] if need.gpu else [])
    return max(1, min(spec.max_concurrent, int(min(fits) + 1e-9)))


def bundle_size(spec: Spec, cell: Cell, *, members: int | None = None, slots: int | None = None) -> int:
    """Members per bundle of a cell: the spec's `bundle.size`, or "auto": for learners that fold on the
    dense regression nets on a CPU (where a trial is dispatch-bound and a bundle of 8 runs 1.6x the
    member-steps of separate trials at meta-batch 25, 3.1x at 4) as many as fill the `slots` trials that
    run at once with the stage's `members` (at most 8: a cell of 4 trials on 2 slots is 2 bundles of 2, not 1 of 4 and an
    idle core; 12 on 8 slots is 6 bundles of 2), 8 when those are not given; 1 (every trial its own)
    elsewhere - conv nets on a CPU are compute-bound, and other learners gain less; set a size to
    bundle them anyway."""
    if spec.bundle.size != "auto":
        return int(spec.bundle.size)
    learner = spec.learner(cell.variant)
    if spec.variant(cell.variant).train_shots_range is not None:
        return 1  # members drawing their own support sizes run one after another (core.bundle.auto_mode): no gain
    from metasweep.core.registry import make_family

    family = make_family(spec.task.family, **spec.task.options)
    dense = getattr(family, "model", None) == "dense"
    if not (dense and getattr(learner, "fold", False) and not spec.resources.gpu):
        return 1
    if members and slots:
        return max(1, min(AUTO_BUNDLE, math.ceil(members / slots)))
    return AUTO_BUNDLE


def one_tuner(tune_sizes, test_sizes) -> bool:
    """Whether the tune and test stages run in one Tuner (sweeps.pipeline), given their cells' bundle
    sizes: where every cell of both runs in bundles (a cell whose trials run alone keeps Tune's own
    scheduler, which is per Tuner)."""
    sizes = [*tune_sizes, *test_sizes]
    return bool(sizes) and min(sizes) > 1


def fixed_trial_id(stage: str, cell: Cell, cfg: TrialConfig) -> str:
    """The trial id of a test or grid trial: a function of its configuration (bundled or not alike),
    `<stage>-<cell>-s<seed>-<digest of the rest>`."""
    rest = {k: v for k, v in cfg.to_dict().items() if k not in ("seed", "hp_source", "hp_source_trial")}
    digest = hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{stage}-{cell.name}-s{cfg.seed}-{digest}"


def inputs_hash(configs) -> str:
    """What a stage cell ran with: a hash of its trial configurations (and, for a tune cell, its search)."""
    text = json.dumps([c.to_dict() if isinstance(c, TrialConfig) else c for c in configs], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tune_inputs(spec: Spec, cell: Cell) -> str:
    space = space_inputs(search_space(spec, cell.variant))
    return inputs_hash([tune_trial_base(spec, cell), {"space": space, "trials": tune_trials(spec, cell.variant),
                                                      "sampler_seed": spec.search.sampler_seed}])
