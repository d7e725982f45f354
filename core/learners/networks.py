"""A table of learner classes selected by a `network` switch: what the metric-based and the
black-box learner kinds share. Each class is a frozen dataclass of switches (`name` plus fields),
registered under its `network` name with the table's decorator; the learner kind's factory is
`table.make` and its switches `table.kind_switches(classes)`."""

from __future__ import annotations

from dataclasses import fields

import torch


def network_switches(cls: type) -> tuple[str, ...]:
    """The switches of one network class (its dataclass fields but the name)."""
    return tuple(f.name for f in fields(cls) if f.name != "name")


def onehot(labels: torch.Tensor, ways: int, dtype: torch.dtype) -> torch.Tensor:
    """[..., N] int labels -> [..., N, ways] one-hot (a comparison, so it maps under vmap)."""
    return (labels.unsqueeze(-1) == torch.arange(ways, device=labels.device)).to(dtype)


class NetworkTable:
    """network name -> learner class, for one learner kind. `label` formats a network's name in
    errors (e.g. "{} network" -> "(prototypical network)")."""

    def __init__(self, label: str = "{}"):
        self.classes: dict[str, type] = {}
        self.label = label

    def register(self, cls: type) -> type:
        """Class decorator: register a learner class under its `network` name."""
        self.classes[cls.network] = cls
        return cls

    def kind_switches(self, classes) -> tuple[str, ...]:
        """Every switch a preset of the kind may set: `network`, then each class's own, in order."""
        out = ["network"]
        for cls in classes:
            out += [s for s in network_switches(cls) if s not in out]
        return tuple(out)

    def make(self, name: str, network: str | None = None, **switches):
        """The learner `network` with its switches; ValueError for an unknown network or for a switch
        it does not have (naming what is allowed)."""
        if network not in self.classes:
            raise ValueError(f"learner {name!r}: network must be one of {', '.join(sorted(self.classes))} "
                             f"(got {network!r})")
        cls = self.classes[network]
        allowed = network_switches(cls)
        unknown = sorted(set(switches) - set(allowed))
        if unknown:
            raise ValueError(f"learner {name!r} ({self.label.format(network)}) has no switch {', '.join(unknown)}; "
                             f"its switches: {', '.join(allowed) or 'none'}")
        return cls(name, **switches)
