"""The one config model of a run, built from a spec file (`sweeps.spec`) and from the options of
`metasweep train` (`sweeps.cli`), and its one error formatter.

pydantic holds the shape and the plain rules (types, counts >= 1); `check_run` holds the rules that
need the registry (which hyper-parameters each variant reads, task options and their paths). The
defaults and domains of hyper-parameters come from `core.hparams.HPARAMS`; the names of task
families, presets, switches and options from `core.registry`, so a plugin's learner or family works
here with no edit. A broken rule is a `ConfigError` (or pydantic's ValidationError) at one field;
`format_error` turns either into one line, naming the field the way its source names it (a spec
file's `field search.alpha.low`, the command line's `--alpha`).
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from metasweep.core import registry
from metasweep.core.hparams import HPARAMS, hparam_def
from metasweep.core.hparams import default as hp_default
from metasweep.core.train import SELECTIONS

_NO_VALUE = object()


class ConfigError(Exception):
    """A rule broken at one field: `loc` (the field's path), what is allowed, the value given."""

    def __init__(self, loc: tuple, message: str, got: Any = _NO_VALUE):
        super().__init__(message)
        self.loc, self.message, self.got = tuple(loc), message, got


# ------------------------------------------------------------------------------------------ the formatter


def dotted(loc: tuple) -> str:
    """('variants', 0, 'preset') -> 'variants[0].preset'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "(top level)"


def format_error(err: ValidationError | ConfigError, name: Callable[[tuple], str]) -> str:
    """One line: `name(loc)` (where the field is, as its source calls it), what is allowed, and the
    value given. For a ValidationError, its first error (fix one thing at a time)."""
    if isinstance(err, ConfigError):
        loc, msg, got = err.loc, err.message, err.got
    else:
        errors = err.errors()
        # a misspelt field also leaves the one meant missing: the misspelling says more
        e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
        loc, msg, got = e["loc"], e["msg"].removeprefix("Value error, "), e.get("input", _NO_VALUE)
        if e["type"] == "extra_forbidden":
            msg, got = unknown_field(err.title, tuple(loc)), _NO_VALUE
        elif e["type"] == "missing":
            msg, got = "required field is missing", _NO_VALUE
    line = f"{name(loc)}: {msg}"
    if got is not _NO_VALUE and got is not None and not isinstance(got, (dict, list)):
        line += f" (got {got!r})"
    return line


def unknown_field(title: str, loc: tuple) -> str:
    """What to say of an unknown field at `loc` of the model named `title`: the closest known field
    of its place (a typo), else the fields there."""
    known = fields_at(title, loc[:-1])
    if not known:
        return "unknown field (check the spelling; see docs/SPEC.md for the fields)"
    return f"unknown field; {did_you_mean(loc[-1], known)}fields here: {', '.join(known)} (docs/SPEC.md)"


def fields_at(title: str, loc: tuple) -> list[str]:
    """The field names of the config model at `loc` inside the model class named `title` (a
    subclass of Strict), or [] where `loc` is not a model (a dict of options, an unknown class)."""
    def subclasses(c):
        return [c, *(d for sub in c.__subclasses__() for d in subclasses(sub))]

    def model_in(annotation):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        return next((m for a in typing.get_args(annotation) if (m := model_in(a)) is not None), None)

    model = next((c for c in subclasses(Strict) if c.__name__ == title), None)
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = model_in(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


# ------------------------------------------------------------------------------------------ value types


def as_number(value):
    """Numeric strings as numbers (PyYAML reads `1.0e25`, no sign in the exponent, as a string)."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def check_hparam(name: str, value):
    """The value of a declared hyper-parameter, checked against its domain (ValueError: what is allowed)."""
    d = hparam_def(name)
    value = as_number(value) if d.kind != "choice" else value
    if not d.allows(value):
        raise ValueError(f"must be {d.domain()}")
    return d.check(value)


def _at_least(n: int):
    def check(value: int) -> int:
        if value < n:
            raise ValueError(f"must be >= {n}")
        return value

    return AfterValidator(check)


def _hparam(name: str):
    return AfterValidator(lambda value: check_hparam(name, value))


Count = Annotated[int, _at_least(1)]
Index = Annotated[int, _at_least(0)]
Counts = Annotated[list[int], AfterValidator(lambda v: _int_list(v, 1))]
Steps = Annotated[list[int], AfterValidator(lambda v: _int_list(v, 0))]
MaskEval = Literal[hparam_def("mask_eval").choices]
Select = Literal[tuple(SELECTIONS)]


def did_you_mean(name, names) -> str:
    """"did you mean 'x'? " for the closest of `names` to a misspelt `name`, or ""."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(n) for n in names], n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def known(name: str, names: list[str], what: str, listed: str) -> str:
    """`name` if the registry has it; else ValueError naming the closest and listing what it has."""
    if name not in names:
        raise ValueError(f"unknown {what} {name!r}; {did_you_mean(name, names)}{listed}: {', '.join(names)}")
    return name


def _registered(names: Callable[[], list[str]], what: str, listed: str):
    return AfterValidator(lambda name: known(name, names(), what, listed))


def _int_list(values: list[int], minimum: int) -> list[int]:
    if not values or any(x < minimum for x in values):
        raise ValueError(f"must be a non-empty list of integers >= {minimum}")
    return values


_VAR = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def resolve_path(value: str, base: str | None) -> str:
    """A path as given (~ and $VARS expanded; an unset variable is an error naming it), relative to
    `base` (a spec file's folder; the working directory when None). URIs are kept as they are."""
    for m in _VAR.finditer(value):
        var = m.group(1) or m.group(2)
        if var not in os.environ:
            raise ValueError(f"${var} is not set (the path {value!r} reads it)")
    path = os.path.expanduser(os.path.expandvars(value))
    if "://" in path:
        return path
    return os.path.normpath(os.path.join(base or os.getcwd(), path))


# ------------------------------------------------------------------------------------------ the models


def check_defaults(values: dict, loc: tuple) -> dict:
    """`defaults:` entries: declared hyper-parameters (not those with a home of their own), each
    inside its domain. ConfigError at `loc` + the name."""
    out = {}
    for name, value in values.items():
        where = (*loc, name)
        if name in HOMES:
            home = (*loc[:-1], *HOMES[name]) if loc[:1] == ("variants",) and HOMES[name][0] == "budget" else HOMES[name]
            raise ConfigError(where, f"set it as {dotted(home)}")
        if name not in HPARAMS:
            raise ConfigError(where, f"unknown hyper-parameter; {did_you_mean(name, HPARAMS)}declared: "
                                     f"{', '.join(HPARAMS)}")
        try:
            out[name] = check_hparam(name, value)
        except ValueError as e:
            raise ConfigError(where, str(e), value) from None
    return out


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSpec(Strict):
    """A task family of the registry and its options (the family's dataclass fields). Options that
    are paths (an image family's data_root, cache_dir) are resolved when the config is built."""

    family: Annotated[str, _registered(registry.family_names, "task family", "available")] = "sine"
    options: dict[str, int | float | str | list[int] | list[float]] = Field(default_factory=dict, validate_default=True)
    queries: Count = 10

    @field_validator("options")
    @classmethod
    def _options(cls, v, info):
        family = info.data.get("family")
        if family is None:
            return v
        return task_options(family, v, (info.context or {}).get("base"))


def task_options(family: str, options: dict, base: str | None) -> dict:
    """The options checked by the family itself, paths resolved against `base`. ConfigError at the option."""
    unknown = sorted(set(options) - set(registry.family_options(family)))
    if unknown:
        try:
            registry.make_family(family, **{k: options[k] for k in unknown})
        except ValueError as e:  # the registry's message: the unknown option and the allowed ones
            raise ConfigError(("task", "options"), str(e)) from None
    cls = registry.family_class(family)
    out = dict(options)
    for name in getattr(cls, "path_options", ()):
        loc = ("task", "options", name)
        if out.get(name) in (None, ""):
            if name in getattr(cls, "required_options", ()):
                raise ConfigError(loc, f"required for task family {family} (a folder; nothing is downloaded)")
            continue
        try:
            out[name] = resolve_path(str(out[name]), base)
        except ValueError as e:
            raise ConfigError(loc, str(e)) from None
    try:
        registry.make_family(family, **out)
    except (TypeError, ValueError) as e:
        raise ValueError(str(e)) from None
    return out


class ModelSpec(Strict):
    hidden: list[int] = Field(default_factory=lambda: [40, 40])

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v):
        if not v or any(h < 1 for h in v):
            raise ValueError("hidden sizes must be a non-empty list of integers >= 1")
        return v


class BudgetOverride(Strict):
    """A variant's own budget: the fields given replace the spec's `budget:` for that variant."""

    meta_steps: Count | None = None
    report_every: Count | None = None
    meta_batch: Annotated[int, _hparam("meta_batch")] | None = None
    inner_steps: Annotated[int, _hparam("inner_steps")] | None = None


class VariantSpec(Strict):
    """A preset, optionally with switches overridden: {name: mt-net-fo, preset: mt-net, switches: {order: first}}.
    A plain string `mt-net` means {name: mt-net, preset: mt-net}. Switch values: booleans, integers
    (e.g. a metric learner's train_ways) or strings. `train_shots_range: [lo, hi]` meta-trains this
    variant on support sizes K drawn uniformly from lo..hi per meta-batch (core.setup.draw_train_shots);
    its meta-validation and its cell keep the spec's train_shots. `budget:` (any of the budget's
    fields) and `defaults:` (hyper-parameters this variant reads) override the spec's for this
    variant only, e.g. a learner at its own paper's meta-batch (checked by RunSpec)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    preset: Annotated[str, _registered(registry.preset_names, "preset", "presets")]
    switches: dict[str, bool | int | str] = Field(default_factory=dict)
    train_shots_range: tuple[int, int] | None = None
    budget: BudgetOverride = Field(default_factory=lambda: BudgetOverride())
    defaults: dict[str, float | int | str] = Field(default_factory=dict)

    @field_validator("train_shots_range", mode="before")
    @classmethod
    def _shots_range(cls, v):
        if v is None:
            return v
        from metasweep.core.setup import check_shots_range

        try:
            return check_shots_range(tuple(v) if isinstance(v, list) else v)
        except ValueError:
            raise ValueError(f"must be two integers [lo, hi] with 1 <= lo <= hi (got {v!r})") from None

    @field_validator("switches")
    @classmethod
    def _switches(cls, v, info):
        preset = info.data.get("preset")
        if preset in registry.preset_names():
            try:
                registry.make_learner(preset, **v)
            except ValueError as e:
                raise ValueError(str(e)) from None
        return v

    def learner(self):
        return registry.make_learner(self.preset, name=self.name, **self.switches)


class Budget(Strict):
    meta_steps: Count = 1000
    report_every: Count = 100  # validation + curve row + checkpoint every K meta-steps
    meta_batch: Annotated[int, _hparam("meta_batch")] = hp_default("meta_batch")
    inner_steps: Annotated[int, _hparam("inner_steps")] = hp_default("inner_steps")

    @model_validator(mode="after")
    def _report_fits(self):
        if self.report_every > self.meta_steps:
            raise ValueError(f"report_every ({self.report_every}) must be <= meta_steps ({self.meta_steps})")
        return self


class EvalSpec(Strict):
    shots: Counts = Field(default_factory=lambda: [5, 10, 20])
    inner_steps: Steps = Field(default_factory=lambda: [1, 10])  # 0 = before adaptation
    tasks: Count = 600
    seed: Index = 1
    val_tasks: Count = 100
    val_seed: Index = 0
    mask_eval: MaskEval = hp_default("mask_eval")
    cka_tasks: Index = 0  # per-layer CKA/SVCCA before/after the inner loop on that many tasks (table cka)
    select: Select = "last"  # which iterate is evaluated: last | best_val | best_train (core.train.SELECTIONS)


# hyper-parameters with a home of their own in the config (not in `defaults:`)
HOMES = {"meta_batch": ("budget", "meta_batch"), "inner_steps": ("budget", "inner_steps"),
         "mask_eval": ("eval", "mask_eval")}


class RunSpec(Strict):
    """What one trial needs: plugins, the task family, the model, the variants, train shots, the
    budget, the evaluation and the defaults of hyper-parameters. A spec file adds the sweep's own
    fields (`sweeps.spec.Spec`); `metasweep train` builds one from its options."""

    plugins: list[str] = Field(default_factory=list)  # modules that register learners / families; first
    task: TaskSpec = TaskSpec()
    model: ModelSpec = ModelSpec()
    variants: list[VariantSpec]
    train_shots: Counts = Field(default_factory=lambda: [10])
    budget: Budget = Budget()
    eval: EvalSpec = EvalSpec()
    defaults: dict[str, float | int | str] = Field(default_factory=dict)

    @field_validator("plugins")
    @classmethod
    def _plugins(cls, v):
        """Imported before anything else is validated (a plugin's presets, families, hyper-parameters)."""
        for i, module in enumerate(v):
            try:
                registry.load_plugins([module])
            except ValueError as e:
                raise ConfigError(("plugins", i), str(e)) from None
        return v

    @field_validator("variants", mode="before")
    @classmethod
    def _preset_names(cls, v):
        if isinstance(v, list):
            return [{"name": x, "preset": x} if isinstance(x, str) else x for x in v]
        return v

    @field_validator("variants")
    @classmethod
    def _variants(cls, v):
        if not v:
            raise ValueError("list at least one variant")
        names = [item.name for item in v]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique (got {names})")
        return v

    @field_validator("defaults")
    @classmethod
    def _defaults(cls, v):
        return check_defaults(v, ("defaults",))

    @model_validator(mode="after")
    def _defaults_read(self):
        read = [h for h in self.read_by_any() if h not in HOMES]  # what `defaults:` can set
        for name in self.defaults:
            if name not in read:
                raise ConfigError(("defaults", name), f"no variant reads {name}; they read: {', '.join(read)}")
        for i, v in enumerate(self.variants):
            loc = ("variants", i)
            check_defaults(v.defaults, (*loc, "defaults"))
            reads = [h for h in HPARAMS if h in v.learner().reads() and h not in HOMES]
            for name in v.defaults:
                if name not in reads:
                    raise ConfigError((*loc, "defaults", name), f"variant {v.name} does not read {name}; it reads: "
                                                                f"{', '.join(reads)}")
            try:
                self.budget_of(v.name)
            except ValidationError as e:
                message = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
                inherited = [f for f in Budget.model_fields if f in message and getattr(v.budget, f) is None]
                raise ConfigError((*loc, "budget"), message + (f" ({', '.join(inherited)}: the spec's budget)"
                                                               if inherited else "")) from None
        return self

    # ---------------------------------------------------------------- what the variants are

    def variant_names(self) -> list[str]:
        return [v.name for v in self.variants]

    def variant(self, name: str) -> VariantSpec:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def variant_of(self, name: str) -> tuple[str, dict]:
        """(preset, switch overrides) of a variant named in the config."""
        v = self.variant(name)
        return v.preset, dict(v.switches)

    def learner(self, name: str):
        """The learner a variant names (its preset with its switches)."""
        return self.variant(name).learner()

    def read_by_any(self) -> list[str]:
        """Every hyper-parameter some variant reads, in declaration order."""
        reads = {h for v in self.variants for h in v.learner().reads()}
        return [h for h in HPARAMS if h in reads]

    def budget_of(self, variant: str) -> Budget:
        """The spec's budget with the variant's own `budget:` fields over it (pydantic ValidationError
        if they do not fit together, e.g. report_every > meta_steps)."""
        own = self.variant(variant).budget.model_dump(exclude_none=True)
        return Budget(**{**self.budget.model_dump(), **own}) if own else self.budget

    def hparam_default(self, name: str, variant: str | None = None):
        """The value a trial of `variant` uses where nothing searched or gridded it: the variant's
        `defaults:`, the spec's, the field that is its home (budget.meta_batch, budget.inner_steps -
        the variant's budget where it sets them - eval.mask_eval), else its declared default."""
        own = self.variant(variant).defaults if variant is not None else {}
        if name in own:
            return own[name]
        if name in HOMES:
            section, field = HOMES[name]
            home = self.budget_of(variant) if section == "budget" and variant is not None else getattr(self, section)
            return getattr(home, field)
        return self.defaults.get(name, hp_default(name))


def field_default(model: type[BaseModel], name: str):
    """A model field's default (for code that must agree with the config, e.g. TrialConfig)."""
    f = model.model_fields[name]
    return f.get_default(call_default_factory=True)
