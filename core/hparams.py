"""Hyper-parameters: the one owner of their names, defaults, domains and default search ranges.

Every hyper-parameter a learner can read is an `HParamDef` in `HPARAMS` (the common ones below;
a learner family registers its own with `register_hparam`). The spec file, the CLI, the Optuna
search space and the trials row all read these definitions: a default or a validity rule is written
here once.

`HParams` is the value object one trial trains with: the common hyper-parameters as fields and a
learner's own ones in `extra`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class HParamDef:
    """One hyper-parameter: its default, its domain, and the range a tune stage searches by default.

    kind: "float" | "int" | "choice". For numbers the domain is `low < x` (or `low <= x` when
    `low_inclusive`) and `x <= high`, finite; for choices, one of `choices`. `search` is the default
    Optuna range `(low, high, log)`; None: not searched unless a spec gives a range."""

    name: str
    default: Any
    kind: str = "float"
    low: float | None = None
    low_inclusive: bool = False
    high: float | None = None
    choices: tuple = ()
    search: tuple[float, float, bool] | None = None
    help: str = ""

    def domain(self) -> str:
        """The allowed values in words, for error messages ("a positive finite number")."""
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        what = "an integer" if self.kind == "int" else "a finite number"
        if self.low == 0 and not self.low_inclusive and self.high is None:
            return "a positive integer" if self.kind == "int" else "a positive finite number"
        parts = []
        if self.low is not None:
            parts.append(f"{'>=' if self.low_inclusive else '>'} {self.low:g}")
        if self.high is not None:
            parts.append(f"<= {self.high:g}")
        return what + (" " + " and ".join(parts) if parts else "")

    def allows(self, value) -> bool:
        if self.kind == "choice":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and int(value) != value:
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return False
        return self.high is None or value <= self.high

    def check(self, value):
        """The value, converted to the kind (1.0 -> 1 for integers); ValueError naming the domain."""
        if not self.allows(value):
            raise ValueError(f"{self.name} must be {self.domain()} (got {value!r})")
        if self.kind == "int":
            return int(value)
        if self.kind == "float":
            return float(value)
        return value

    def check_range(self, low: float, high: float) -> None:
        """A search range [low, high] must lie inside the domain and be non-empty (else no trial could
        be valid: issue 11 case 1). ValueError naming what is allowed."""
        if self.kind == "choice":
            raise ValueError(f"{self.name} is a choice ({self.domain()}), not a range to search")
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"the range of {self.name} must be finite (got [{low!r}, {high!r}])")
        if not low < high:
            raise ValueError(f"the range of {self.name} is empty: low ({low!r}) must be < high ({high!r})")
        for end in (low, high):
            if not self.allows(end if self.kind != "int" else round(end)):
                raise ValueError(f"the range of {self.name} [{low!r}, {high!r}] leaves its domain: {self.name} must "
                                 f"be {self.domain()}")


HPARAMS: dict[str, HParamDef] = {}


def register_hparam(d: HParamDef) -> HParamDef:
    """Declare a hyper-parameter (a learner family's own, e.g. a distance scale). A name is declared
    once; declaring the same definition again is a no-op (a module imported twice)."""
    old = HPARAMS.get(d.name)
    if old is not None and old != d:
        raise ValueError(f"hyper-parameter {d.name!r} is already declared differently")
    HPARAMS[d.name] = d
    return d


for _d in (
    HParamDef("alpha", 1e-2, low=0, search=(1e-3, 1.0, True),
              help="inner step size α, eq. (1); Meta-SGD's initial α"),
    HParamDef("beta", 1e-3, low=0, search=(1e-4, 1e-2, True),
              help="outer (Adam) step size β, eq. (2); Reptile's ε"),
    HParamDef("temperature", 1.0, low=0, search=(0.1, 10.0, True),
              help="Gumbel-Softmax temperature c, eq. (10)-(11); masked variants only"),
    HParamDef("inner_steps", 1, kind="int", low=1, low_inclusive=True, help="inner steps k during meta-training"),
    HParamDef("meta_batch", 25, kind="int", low=1, low_inclusive=True, help="tasks per outer step"),
    HParamDef("mask_eval", "sample", kind="choice", choices=("sample", "threshold"),
              help="masks at evaluation: sampled (authors' code) or thresholded at P = 1/2"),
    HParamDef("zeta_init", 0.0, help="initial mask logits ζ (section 6.1: 0)"),
):
    register_hparam(_d)

COMMON = ("alpha", "beta", "temperature", "inner_steps", "meta_batch", "mask_eval", "zeta_init")


def default(name: str):
    """The default of a declared hyper-parameter."""
    return hparam_def(name).default


def hparam_def(name: str) -> HParamDef:
    if name not in HPARAMS:
        raise KeyError(f"unknown hyper-parameter {name!r}; declared: {', '.join(HPARAMS)}")
    return HPARAMS[name]


@dataclass(frozen=True)
class HParams:
    """Hyper-parameters of one meta-training run (the things a sweep searches over). Defaults and
    validity rules come from `HPARAMS`; `extra` holds a learner family's own, by name."""

    alpha: float = HPARAMS["alpha"].default
    beta: float = HPARAMS["beta"].default
    temperature: float = HPARAMS["temperature"].default
    inner_steps: int = HPARAMS["inner_steps"].default
    meta_batch: int = HPARAMS["meta_batch"].default
    mask_eval: str = HPARAMS["mask_eval"].default
    zeta_init: float = HPARAMS["zeta_init"].default
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in COMMON:
            object.__setattr__(self, name, HPARAMS[name].check(getattr(self, name)))
        extra = {}
        for name, value in self.extra.items():
            if name in COMMON:
                raise ValueError(f"{name} is a common hyper-parameter: pass it as a field, not in extra")
            extra[name] = hparam_def(name).check(value)
        object.__setattr__(self, "extra", extra)

    def get(self, name: str):
        """A hyper-parameter by name: a field, else `extra`, else its declared default."""
        if name in COMMON:
            return getattr(self, name)
        return self.extra.get(name, default(name))

    def as_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        return {**d, **extra}

    def __hash__(self) -> int:
        return hash((*(getattr(self, n) for n in COMMON), tuple(sorted(self.extra.items()))))


class TensorHParams:
    """HParams whose float hyper-parameters are 0-dim tensors (a member's slice under vmap); every
    other attribute is the shared HParams'."""

    def __init__(self, base: HParams, values: dict):
        self._base, self._values = base, values

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        values = self._values
        return values[name] if name in values else getattr(self._base, name)

    def get(self, name: str):
        return self._values[name] if name in self._values else self._base.get(name)
