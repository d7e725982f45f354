"""Spec files: one YAML file describes a whole sweep. Validated with pydantic; unknown fields are
errors (a typo must never be silently ignored); every error names the file and the field path."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from metasweep.core import registry

from .errors import UserError


def _int_list(values: list[int], minimum: int) -> list[int]:
    if not values or any(x < minimum for x in values):
        raise ValueError(f"must be a non-empty list of integers >= {minimum}")
    return values


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSpec(Strict):
    """The task family and its options. Image families (omniglot, miniimagenet) take
    data_root (required; ~ and $VARS are expanded when the data is read), ways, cache_dir, and for
    Omniglot splits [train, val, test] and split_seed; queries are then per class."""

    family: str = "sine"
    options: dict[str, int | float | str | list[int] | list[float]] = Field(default_factory=dict)
    queries: int = Field(10, ge=1)

    @field_validator("family")
    @classmethod
    def _family(cls, v):
        if v not in registry.family_names():
            raise ValueError(f"unknown task family {v!r}; available: {', '.join(registry.family_names())}")
        return v

    @field_validator("options")
    @classmethod
    def _options_exist(cls, v, info):
        family = info.data.get("family")
        if family not in registry.family_names():
            return v
        try:
            registry.make_family(family, **v)
        except (TypeError, ValueError) as e:
            raise ValueError(str(e)) from None
        return v


class ModelSpec(Strict):
    hidden: list[int] = Field(default_factory=lambda: [40, 40])

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v):
        if not v or any(h < 1 for h in v):
            raise ValueError("hidden sizes must be a non-empty list of integers >= 1")
        return v


class VariantSpec(Strict):
    """A preset, optionally with switches overridden: {name: mt-net-fo, preset: mt-net, switches: {order: first}}.
    A plain string `mt-net` in the spec means {name: mt-net, preset: mt-net}."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    preset: str
    switches: dict[str, bool | str] = Field(default_factory=dict)

    @field_validator("preset")
    @classmethod
    def _preset(cls, v):
        if v not in registry.preset_names():
            raise ValueError(f"unknown preset {v!r}; presets: {', '.join(registry.preset_names())}")
        return v

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


class Budget(Strict):
    meta_steps: int = Field(1000, ge=1)
    report_every: int = Field(100, ge=1)
    meta_batch: int = Field(25, ge=1)
    inner_steps: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _report_fits(self):
        if self.report_every > self.meta_steps:
            raise ValueError(f"report_every ({self.report_every}) must be <= meta_steps ({self.meta_steps})")
        return self


class EvalSpec(Strict):
    shots: list[int] = Field(default_factory=lambda: [5, 10, 20])
    inner_steps: list[int] = Field(default_factory=lambda: [1, 10])
    tasks: int = Field(600, ge=1)
    seed: int = Field(1, ge=0)
    val_tasks: int = Field(100, ge=1)
    val_seed: int = Field(0, ge=0)
    mask_eval: Literal["sample", "threshold"] = "sample"
    cka_tasks: int = Field(0, ge=0)  # image tasks: per-layer CKA/SVCCA before/after the inner loop (table cka)

    @field_validator("shots")
    @classmethod
    def _shots(cls, v):
        return _int_list(v, 1)

    @field_validator("inner_steps")
    @classmethod
    def _steps(cls, v):
        return _int_list(v, 0)


class Range(Strict):
    log: bool = True
    low: float
    high: float

    @field_validator("low")
    @classmethod
    def _low(cls, v, info):
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        if info.data.get("log", True) and v <= 0:
            raise ValueError("must be > 0 (the range is on a log scale; set log: false for a linear one)")
        return v

    @field_validator("high")
    @classmethod
    def _high(cls, v, info):
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        low = info.data.get("low")
        if low is not None and v <= low:
            raise ValueError(f"must be > low ({low})")
        return v


class HyperParams(Strict):
    alpha: float = Field(1e-2, gt=0)
    beta: float = Field(1e-3, gt=0)
    temperature: float = Field(1.0, gt=0)


class SearchOverride(Strict):
    alpha: Range | None = None
    beta: Range | None = None
    temperature: Range | None = None


class SearchSpec(Strict):
    trials_per_variant: int = Field(8, ge=1)
    alpha: Range | None = Range(low=1e-3, high=1.0)
    beta: Range | None = Range(low=1e-4, high=1e-2)
    temperature: Range | None = Range(low=0.1, high=10.0)
    overrides: dict[str, SearchOverride] = Field(default_factory=dict)
    seed: int = Field(0, ge=0)  # training seed of every tune trial
    sampler_seed: int = Field(0, ge=0)  # Optuna TPE seed


class TestSpec(Strict):
    __test__ = False  # not a pytest class
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])

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


class Resources(Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


GRID_FIELDS = {"alpha": float, "beta": float, "temperature": float, "meta_batch": int, "inner_steps": int,
               "meta_steps": int, "mask_eval": str}


class Spec(Strict):
    experiment: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    mode: Literal["tune+test", "grid"] = "tune+test"
    task: TaskSpec = TaskSpec()
    model: ModelSpec = ModelSpec()
    variants: list[VariantSpec]
    train_shots: list[int] = Field(default_factory=lambda: [10])
    budget: Budget = Budget()
    eval: EvalSpec = EvalSpec()
    defaults: HyperParams = HyperParams()
    search: SearchSpec = SearchSpec()
    test: TestSpec = TestSpec()
    grid: dict[str, list[float | int | str]] = Field(default_factory=dict)
    scheduler: Scheduler = Scheduler()
    resources: Resources = Resources()
    max_concurrent: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0)
    storage: str = "results"

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

    @field_validator("train_shots")
    @classmethod
    def _train_shots(cls, v):
        return _int_list(v, 1)

    @field_validator("grid")
    @classmethod
    def _grid(cls, v):
        """Values are typed per field (YAML 1.1 reads `1.0e25` as a string: it becomes a float here)."""
        from pydantic import TypeAdapter

        out = {}
        for key, values in v.items():
            if key not in GRID_FIELDS and not key.startswith("task."):
                raise ValueError(f"cannot grid over {key!r}; allowed: {', '.join(GRID_FIELDS)}, "
                                 "or task.OPTION (e.g. task.order)")
            if not values:
                raise ValueError(f"{key}: list at least one value")
            if key.startswith("task."):
                out[key] = list(values)  # checked against the task family in _consistent
                continue
            kind = GRID_FIELDS[key]
            typed = []
            for x in values:
                try:
                    typed.append(TypeAdapter(kind).validate_python(x, strict=False))
                except ValidationError:
                    raise ValueError(f"{key}: {x!r} is not a valid {kind.__name__}") from None
            if kind is float and any(not (x > 0 and math.isfinite(x)) for x in typed):
                raise ValueError(f"{key}: values must be positive finite numbers (got {values})")
            if kind is int and any(x < 1 for x in typed):
                raise ValueError(f"{key}: values must be integers >= 1 (got {values})")
            if key == "mask_eval" and any(x not in ("sample", "threshold") for x in typed):
                raise ValueError(f"mask_eval: values must be sample or threshold (got {values})")
            out[key] = typed
        return out

    @model_validator(mode="after")
    def _consistent(self):
        names = self.variant_names()
        unknown = sorted(set(self.search.overrides) - set(names))
        if unknown:
            raise ValueError(f"search.overrides names variants not in the spec: {', '.join(unknown)}")
        if self.mode == "grid" and not self.grid:
            raise ValueError("mode grid needs a 'grid' mapping of field -> list of values")
        if self.mode != "grid" and self.grid:
            raise ValueError("'grid' only applies with mode: grid")
        allowed = registry.family_options(self.task.family)
        for key, values in self.grid.items():
            if key.startswith("task."):
                option = key.removeprefix("task.")
                if option not in allowed:
                    raise ValueError(f"grid: task.{option} is not an option of task family {self.task.family}; "
                                     f"allowed: {', '.join(allowed)}")
                for x in values:
                    try:
                        registry.make_family(self.task.family, **{**self.task.options, option: x})
                    except (TypeError, ValueError) as e:
                        raise ValueError(f"grid: task.{option}={x!r}: {e}") from None
        return self

    def variant_names(self) -> list[str]:
        return [v.name for v in self.variants]

    def variant_of(self, name: str) -> tuple[str, dict]:
        """(preset, switch overrides) of a variant named in the spec."""
        for v in self.variants:
            if v.name == name:
                return v.preset, dict(v.switches)
        raise KeyError(name)


def _loc(loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(path: str, err: ValidationError) -> str:
    lines = []
    seen = set()
    for e in err.errors():
        field = _loc(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see docs/SPEC.md for the fields)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        got = e.get("input")
        line = f"spec {path}, field {field}: {msg}"
        if e["type"] not in ("extra_forbidden", "missing") and not isinstance(got, (dict, list)) and got is not None:
            line += f" (got {got!r})"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    # a union of str | VariantSpec reports both branches; keep the most specific
    return "\n".join(lines[:5])


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
    return parse_spec(text, path)


def parse_spec(text: str, path: str) -> tuple[Spec, str, str]:
    """Validate spec text; `path` names it in errors."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"spec {path}: not valid YAML{where} ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"spec {path}: expected a mapping of fields at the top level (got {type(data).__name__})")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(path, e)) from None
    return spec, text, hashlib.sha256(text.encode()).hexdigest()[:16]
