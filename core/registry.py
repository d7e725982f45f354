"""The single source of names: learner kinds, presets, models and task families.

Everything that lists or resolves a name (the spec validator, the CLI's help, the trial builder,
the docs) asks this module; adding a learner family or a task family is one module that registers
itself here, plus its test (docs/EXTENDING.md):

    from metasweep.core.registry import register_family, register_learner_kind, register_preset

    register_learner_kind("metric", make_metric_learner, switches=("distance", ...))
    register_preset("protonet", "metric", distance="euclidean")
    register_family(MyTasks)            # a dataclass with `name`, `loss`, `sample`, ...

Modules outside the package are loaded by name with `load_plugins` (a spec's `plugins:` list, the
environment variable METASWEEP_PLUGINS=mod1,mod2); they register the same way.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, fields


class RegistryError(ValueError):
    """An unknown or clashing name; the message lists what is available."""


@dataclass(frozen=True)
class LearnerKind:
    name: str
    make: Callable[..., object]  # make(name, **switches) -> Learner; raises ValueError on a bad switch
    switches: tuple[str, ...]  # the switch names a preset of this kind may set
    doc: str = ""


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str
    switches: dict


LEARNER_KINDS: dict[str, LearnerKind] = {}
PRESETS: dict[str, Preset] = {}
FAMILIES: dict[str, type] = {}
MODELS: dict[str, Callable] = {}  # model name -> make(family, hidden) -> Model
_loaded: list[bool] = []


def _builtins() -> None:
    """Import the built-in families once (they register on import), then env plugins."""
    if _loaded:
        return
    _loaded.append(True)
    for module in ("tasks", "cells", "conv", "learners"):
        importlib.import_module(f"metasweep.core.{module}")
    load_plugins([m for m in os.environ.get("METASWEEP_PLUGINS", "").split(",") if m.strip()])


def _clash(table: dict, name: str, value, what: str) -> None:
    old = table.get(name)
    if old is not None and old != value:
        raise RegistryError(f"{what} {name!r} is already registered differently")


def register_learner_kind(name: str, make: Callable[..., object], switches: tuple[str, ...], doc: str = "") -> None:
    kind = LearnerKind(name, make, tuple(switches), doc)
    _clash(LEARNER_KINDS, name, kind, "learner kind")
    LEARNER_KINDS[name] = kind


def register_preset(name: str, kind: str, **switches) -> None:
    if kind not in LEARNER_KINDS:
        raise RegistryError(f"preset {name!r}: unknown learner kind {kind!r}")
    preset = Preset(name, kind, dict(switches))
    _clash(PRESETS, name, preset, "preset")
    PRESETS[name] = preset


def register_family(cls: type) -> type:
    """Register a task family class by its `name` (usable as a decorator)."""
    _clash(FAMILIES, cls.name, cls, "task family")
    FAMILIES[cls.name] = cls
    return cls


def register_model(name: str, make: Callable) -> None:
    _clash(MODELS, name, make, "model")
    MODELS[name] = make


def load_plugins(modules) -> None:
    """Import modules that register learners, presets, families or models; RegistryError naming the
    module when one cannot be imported."""
    for m in modules:
        try:
            importlib.import_module(m.strip())
        except ImportError as e:
            raise RegistryError(f"plugin {m.strip()!r} cannot be imported ({e}); is it on PYTHONPATH?") from None


def preset_names() -> list[str]:
    _builtins()
    return list(PRESETS)


def family_names() -> list[str]:
    _builtins()
    return list(FAMILIES)


def get_preset(name: str) -> Preset:
    _builtins()
    if name not in PRESETS:
        raise RegistryError(f"unknown variant {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def make_learner(preset: str, name: str | None = None, **switches):
    """The learner of a preset with some switches overridden, named `name` (default the preset's).
    RegistryError for an unknown preset or switch; the kind's own ValueError for a bad combination."""
    p = get_preset(preset)
    kind = LEARNER_KINDS[p.kind]
    unknown = sorted(set(switches) - set(kind.switches))
    if unknown:
        raise RegistryError(f"preset {preset!r} ({p.kind} learner): unknown switch(es) {', '.join(unknown)}; "
                            f"allowed: {', '.join(kind.switches)}")
    return kind.make(name or preset, **{**p.switches, **switches})


def family_options(name: str) -> list[str]:
    """The option names a task family takes (its dataclass fields)."""
    return [f.name for f in fields(family_class(name))]


def family_class(name: str) -> type:
    _builtins()
    if name not in FAMILIES:
        raise RegistryError(f"unknown task family {name!r}; available: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def make_family(name: str, **options):
    """A task family with options (lists become tuples); RegistryError for an unknown family or
    option, the family's ValueError for a bad value."""
    cls = family_class(name)
    allowed = family_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        what = f"option {unknown[0]!r}" if len(unknown) == 1 else f"options {', '.join(map(repr, unknown))}"
        raise RegistryError(f"unknown {what} for task family {name}; allowed: {', '.join(allowed)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})


def default_model(family, hidden: tuple[int, ...] = (40, 40)):
    """The network a family's tasks are learned with (`family.model` names it in MODELS)."""
    _builtins()
    name = getattr(family, "model", None)
    if name not in MODELS:
        raise RegistryError(f"task family {family.name}: unknown model {name!r}; models: {', '.join(MODELS)}")
    return MODELS[name](family, tuple(hidden))
