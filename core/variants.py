"""The meta-learner family as data.

A `Variant` is a frozen set of switches. MAML, FOMAML, Reptile, Meta-SGD, ANIL, T-net, M-net,
M-net-full, MT-net and MT-net-full are rows of one table (`PRESETS`); the training loop asks the
variant what to do and never branches on its name. A new ablation is a new row, e.g.
`Variant("mt-net-fo", transform=True, mask="row", order="first")`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal


class VariantError(ValueError):
    """A switch combination that makes no sense; the message says which and why."""


@dataclass(frozen=True)
class Variant:
    name: str
    transform: bool = False  # T in every cell, y = T(Wx + b): T-net / MT-net, eq. (3)-(5)
    mask: Literal["none", "row", "full"] = "none"  # eq. (8)-(11); "full": one zeta per weight
    learned_alpha: bool = False  # Meta-SGD: alpha is a meta-learned tensor per adapted parameter
    inner_params: Literal["all", "head"] = "all"  # ANIL adapts the head (last cell) only
    order: Literal["second", "first"] = "second"  # "first": FOMAML, inner gradient detached
    outer: Literal["maml", "reptile"] = "maml"  # Reptile: theta <- theta + eps (theta~ - theta)
    eval_head: Literal["adapt", "nil"] = "adapt"  # NIL: no head at test time (classification only)

    def __post_init__(self) -> None:
        allowed = {
            "mask": ("none", "row", "full"),
            "inner_params": ("all", "head"),
            "order": ("second", "first"),
            "outer": ("maml", "reptile"),
            "eval_head": ("adapt", "nil"),
        }
        for field, values in allowed.items():
            value = getattr(self, field)
            if value not in values:
                raise VariantError(
                    f"variant {self.name!r}: {field} must be one of {', '.join(values)} (got {value!r})"
                )
        for field in ("transform", "learned_alpha"):
            if not isinstance(getattr(self, field), bool):
                raise VariantError(f"variant {self.name!r}: {field} must be true or false")
        if self.outer == "reptile":
            if self.transform or self.mask != "none" or self.learned_alpha:
                raise VariantError(
                    f"variant {self.name!r}: outer=reptile moves only what the inner loop moves "
                    "(theta + eps (theta~ - theta)), so T, zeta and a learned alpha would never be "
                    "meta-learned; use outer=maml for transform/mask/learned_alpha"
                )
            if self.order != "first":
                raise VariantError(
                    f"variant {self.name!r}: outer=reptile is first-order by definition; set order=first"
                )
        if self.inner_params == "head" and self.mask != "none":
            raise VariantError(
                f"variant {self.name!r}: a mask selects which weights the inner loop updates in every "
                "cell; with inner_params=head only the head is updated, use mask=none"
            )

    @property
    def masked(self) -> bool:
        return self.mask != "none"

    def with_overrides(self, **switches) -> Variant:
        """A preset with some switches changed, e.g. `PRESETS['mt-net'].with_overrides(order='first')`."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(switches) - known)
        if unknown:
            raise VariantError(
                f"variant {self.name!r}: unknown switch(es) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(known - {'name'}))}"
            )
        return replace(self, **switches)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


PRESETS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("maml"),
        Variant("fomaml", order="first"),
        Variant("reptile", order="first", outer="reptile"),
        Variant("meta-sgd", learned_alpha=True),
        Variant("anil", inner_params="head"),
        Variant("t-net", transform=True),
        Variant("m-net", mask="row"),
        Variant("m-net-full", mask="full"),
        Variant("mt-net", transform=True, mask="row"),
        Variant("mt-net-full", transform=True, mask="full"),
    )
}


def get_variant(name: str, **overrides) -> Variant:
    if name not in PRESETS:
        raise VariantError(f"unknown variant {name!r}; presets: {', '.join(PRESETS)}")
    variant = PRESETS[name]
    return variant.with_overrides(**overrides) if overrides else variant
