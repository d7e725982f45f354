"""Spec files: one YAML file describes a whole sweep (docs/SPEC.md).

A spec is the run's config model (`sweeps.config.RunSpec`: plugins, task, model, variants, train
shots, budget, evaluation, defaults) plus the sweep's own fields (search, test, grid, scheduler,
resources, storage). Unknown fields are errors (a typo is never ignored); every error names the file
and the field and says what is allowed. Paths (`storage`, a family's path options such as
`data_root`, `cache_dir`) are resolved when the spec is loaded: relative to the spec file's folder
(a shipped spec's, used by name, relative to the working directory); `~` and `$VARS` are expanded
and an unset variable is an error naming it.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from metasweep.core.hparams import HPARAMS, hparam_def

from .config import ConfigError, Index, RunSpec, Strict, as_number, check_hparam, did_you_mean, dotted, format_error
from .config import resolve_path as _resolve_path
from .errors import UserError


class Range(Strict):
    """A search domain: the range [low, high], on a log scale unless `log: false`; or `choices`, a list
    of values (a YAML list in a spec, `alpha: [0.01, 0.04, 0.1]`; one value fixes the hyper-parameter).
    A variant whose every searched hyper-parameter is a list is tuned on the grid of their
    combinations (Optuna's GridSampler, each once); lists beside ranges are categorical for TPE."""

    log: bool = True
    low: float | None = None
    high: float | None = None
    choices: list[bool | int | float | str] | None = None  # bool kept as given, to refuse it by name

    @model_validator(mode="before")
    @classmethod
    def _listed(cls, data):
        if isinstance(data, list):
            return {"choices": data}
        if not isinstance(data, dict) and not isinstance(data, Range):
            raise ValueError("a search entry is a range {low: ..., high: ...} or a list of values such as [0.01]; "
                             "to give every trial one value, list it alone or set it under defaults:")
        return data

    @field_validator("low")
    @classmethod
    def _low(cls, v, info):
        if v is None:
            return v
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        if info.data.get("log", True) and v <= 0:
            raise ValueError("must be > 0 (the range is on a log scale; set log: false for a linear one)")
        return v

    @field_validator("high")
    @classmethod
    def _high(cls, v, info):
        if v is None:
            return v
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        low = info.data.get("low")
        if low is not None and v <= low:
            raise ValueError(f"must be > low ({low})")
        return v

    @model_validator(mode="after")
    def _one_kind(self):
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either low and high, or a list of values (choices), not both")
            if not self.choices:
                raise ValueError("list at least one value")
        elif self.low is None or self.high is None:
            raise ValueError("give low and high (a range), or a list of values")
        return self

    @property
    def grid(self) -> bool:
        return self.choices is not None


class SearchSpec(BaseModel):
    """The tune stage: Optuna trials per (variant, train shots) cell, and ranges by hyper-parameter
    name (`alpha: {low, high, log}`, a learner's own such as `nn_scale`) or lists of values
    (`alpha: [0.01, 0.04, 0.1]`), replacing the declared default ranges; `overrides` replace them per
    variant. A variant whose every searched hyper-parameter is a list is tuned on the whole grid, each
    combination once; `trials_per_variant` is the number of TPE trials of the other variants."""

    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[str, Range] = Field(init=False)

    trials_per_variant: int = Field(8, ge=1)
    overrides: dict[str, dict[str, Range]] = Field(default_factory=dict)
    seed: Index = 0  # training seed of every tune trial
    sampler_seed: Index = 0  # Optuna TPE seed (shared by the cells: they share their first random candidates)

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data):
        if not isinstance(data, dict):
            return data
        own = set(cls.model_fields)
        for key in data:
            if key not in own and key not in HPARAMS:
                raise ConfigError(("search", key), f"unknown field; {did_you_mean(key, [*own, *HPARAMS])}fields: "
                                                  f"{', '.join(sorted(own))}, or the range of a "
                                                  f"hyper-parameter: {', '.join(HPARAMS)}")
        for variant, ranges in (data.get("overrides") or {}).items():
            for key in ranges if isinstance(ranges, dict) else ():
                if key not in HPARAMS:
                    raise ConfigError(("search", "overrides", variant, key),
                                      f"unknown hyper-parameter; {did_you_mean(key, HPARAMS)}declared: "
                                      f"{', '.join(HPARAMS)}")
        return data

    def ranges(self) -> dict[str, Range]:
        return dict(self.__pydantic_extra__ or {})


class TestSpec(Strict):
    __test__ = False  # not a pytest class
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    # a cell whose tune stage had no finite result: fail the sweep (default) or test it on the defaults
    untuned: Literal["fail", "fallback"] = "fail"

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if not v or len(set(v)) != len(v) or any(s < 0 for s in v):
            raise ValueError("must be a non-empty list of distinct integers >= 0")
        return v


class Scheduler(Strict):
    type: Literal["none", "asha"] = "none"
    grace_period: int = Field(1, ge=1)  # in reports
    reduction_factor: float = Field(3.0, gt=1)


class BundleSpec(Strict):
    """Trials computed together (core.bundle): members of a bundle share a cell and differ in seed and
    float hyper-parameters; each is still its own trial with its own rows. size: members per bundle
    ("auto": sweeps.plan.bundle_size); mode: how a bundle computes (core.bundle.MODES, or auto)."""

    size: int | Literal["auto"] = "auto"
    mode: Literal["auto", "fold", "vmap", "loop"] = "auto"

    @field_validator("size")
    @classmethod
    def _size(cls, v):
        if v != "auto" and (isinstance(v, bool) or v < 1):
            raise ValueError("must be an integer >= 1 or auto")
        return v


class Resources(Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


GRID_BUDGET = ("meta_steps",)  # grid fields that are not hyper-parameters (besides task.OPTION)


class Spec(RunSpec):
    experiment: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    mode: Literal["tune+test", "grid"] = "tune+test"
    search: SearchSpec = SearchSpec()
    test: TestSpec = TestSpec()
    grid: dict[str, list[float | int | str]] = Field(default_factory=dict)
    scheduler: Scheduler = Scheduler()
    resources: Resources = Resources()
    bundle: BundleSpec = BundleSpec()
    max_concurrent: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0)
    storage: str = "results"  # a folder (relative to the spec file) or a pyarrow filesystem URI

    @field_validator("storage")
    @classmethod
    def _storage(cls, v, info):
        try:
            return _resolve_path(v, (info.context or {}).get("base"))
        except ValueError as e:
            raise ValueError(str(e)) from None

    @field_validator("grid")
    @classmethod
    def _grid(cls, v):
        """Values typed by their field: a hyper-parameter's domain, meta_steps >= 1; task options are
        checked by the family (below)."""
        out = {}
        for key, values in v.items():
            if not values:
                raise ConfigError(("grid", key), "list at least one value")
            if key.startswith("task."):
                out[key] = list(values)
            elif key in GRID_BUDGET or key in HPARAMS:
                out[key] = [_grid_value(key, x) for x in values]
            else:
                out[key] = values  # named in _consistent, which knows what the variants read
        return out

    @model_validator(mode="after")
    def _consistent(self):
        check_search(self)
        check_grid(self)
        return self


def _grid_value(key: str, x):
    try:
        if key in GRID_BUDGET:
            x = as_number(x)
            if isinstance(x, bool) or not isinstance(x, int) or x < 1:
                raise ValueError("must be an integer >= 1")
            return x
        return check_hparam(key, x)
    except ValueError as e:
        raise ConfigError(("grid", key), str(e), x) from None


def check_search(spec: Spec) -> None:
    """Ranges that can produce a valid trial: each names a hyper-parameter some variant searches (an
    override: that variant), lies inside its domain and is not empty; overrides name variants."""
    names = spec.variant_names()
    unknown = sorted(set(spec.search.overrides) - set(names))
    if unknown:
        raise ConfigError(("search", "overrides"), f"search.overrides names variants not in the spec: "
                                                   f"{', '.join(unknown)}; variants: {', '.join(names)}")
    searched = {v: spec.learner(v).searched() for v in names}
    everything = [h for h in HPARAMS if any(h in s for s in searched.values())]
    for name, r in spec.search.ranges().items():
        if name not in everything:
            raise ConfigError(("search", name), f"no variant of the spec searches {name}; they search: "
                                                f"{', '.join(everything)}")
        _check_range(("search", name), name, r)
    for variant, ranges in spec.search.overrides.items():
        for name, r in ranges.items():
            if name not in searched[variant]:
                raise ConfigError(("search", "overrides", variant, name),
                                  f"{variant} does not search {name}; it searches: {', '.join(searched[variant])}")
            _check_range(("search", "overrides", variant, name), name, r)
    if spec.mode == "grid" and "search" in spec.model_fields_set:
        raise ConfigError(("search",), "applies to mode tune+test only; in mode grid the `grid:` mapping gives the "
                                       "values every trial runs with")
    if spec.mode == "tune+test":
        for variant, hps in searched.items():
            for name in hps:
                if name not in spec.search.ranges() and name not in spec.search.overrides.get(variant, {}) \
                        and hparam_def(name).search is None:
                    raise ConfigError(("search", name), f"{variant} searches {name}, which declares no default range: "
                                                        "give one as {low: ..., high: ...}")


def _check_range(loc: tuple, name: str, r: Range) -> None:
    """A range inside the hyper-parameter's domain; a list of values each in it, none twice."""
    if not r.grid:
        try:
            hparam_def(name).check_range(r.low, r.high)
        except ValueError as e:
            raise ConfigError(loc, str(e)) from None
        return
    values = []
    for x in r.choices:
        if isinstance(x, bool):  # YAML's yes/no/true/false
            raise ConfigError(loc, f"must be a list of {hparam_def(name).domain()}", x)
        try:
            values.append(check_hparam(name, x))
        except ValueError as e:
            raise ConfigError(loc, str(e), x) from None
    twice = sorted({x for x in values if values.count(x) > 1}, key=str)
    if twice:
        raise ConfigError(loc, f"lists a value twice: {', '.join(map(str, twice))}")


def check_grid(spec: Spec) -> None:
    """A grid in mode grid only; its fields are meta_steps, task.OPTION or a hyper-parameter some
    variant reads; task options the family accepts."""
    from metasweep.core import registry

    if spec.mode == "grid" and not spec.grid:
        raise ConfigError(("grid",), "mode grid needs a 'grid' mapping of field -> list of values")
    if spec.mode != "grid" and spec.grid:
        raise ConfigError(("grid",), "'grid' only applies with mode: grid")
    read = spec.read_by_any()
    allowed = registry.family_options(spec.task.family)
    for key, values in spec.grid.items():
        if key.startswith("task."):
            option = key.removeprefix("task.")
            if option not in allowed:
                raise ConfigError(("grid",), f"task.{option} is not an option of task family {spec.task.family}; "
                                             f"allowed: {', '.join(allowed)}")
            for x in values:
                try:
                    registry.make_family(spec.task.family, **{**spec.task.options, option: x})
                except (TypeError, ValueError) as e:
                    raise ConfigError(("grid",), f"grid: task.{option}={x!r}: {e}") from None
        elif key not in GRID_BUDGET and key not in read:
            raise ConfigError(("grid",), f"cannot grid over {key!r}; allowed: {', '.join(GRID_BUDGET)}, task.OPTION "
                                         f"(e.g. task.order), or a hyper-parameter the variants read: {', '.join(read)}")


# ------------------------------------------------------------------------------------------ loading

SHIPPED = Path(__file__).parent / "specs"


def shipped_specs() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def load_spec(path: str | Path) -> tuple[Spec, str, str]:
    """(spec, raw text, sha256 of the text); UserError with file and field on any problem.
    A bare name of a shipped spec (`quickstart`, `table1`, ...) works from any folder."""
    path = str(path)
    if not Path(path).exists() and "/" not in path and (SHIPPED / f"{path.removesuffix('.yaml')}.yaml").exists():
        path = str(SHIPPED / f"{path.removesuffix('.yaml')}.yaml")
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"spec {path}: no such file (shipped specs, usable by name: "
                        f"{', '.join(shipped_specs())})") from None
    except OSError as e:
        raise UserError(f"spec {path}: cannot read ({e.strerror})") from None
    return parse_spec(text, path, base=spec_base(path))


def spec_base(path: str) -> str | None:
    """The folder a spec's relative paths are relative to: the spec file's, except for the shipped
    specs (templates inside the package), whose paths are relative to the working directory."""
    folder = Path(path).resolve().parent
    return None if folder == SHIPPED.resolve() else str(folder)


def parse_spec(text: str, path: str, base: str | None = None) -> tuple[Spec, str, str]:
    """Validate spec text; `path` names it in errors; relative paths are relative to `base` (None:
    the working directory)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"spec {path}: not valid YAML{where} ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"spec {path}: expected a mapping of fields at the top level (got {type(data).__name__})")
    try:
        spec = Spec.model_validate(data, context={"base": base})
    except (ValidationError, ConfigError) as e:
        raise UserError(format_error(e, lambda loc: f"spec {path}, field {dotted(loc)}")) from None
    return spec, text, hashlib.sha256(text.encode()).hexdigest()[:16]
