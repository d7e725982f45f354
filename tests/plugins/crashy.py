"""Learners that crash on purpose, in each part of a trial (tests of issue 11 case 4): MAML whose
`outputs` raise (training fails), whose diagnostics cannot be written (a curve value of the wrong
type: the write of the trial's rows fails), or whose process dies at the second report of every
attempt (Ray restarts it from its checkpoint until max_failures, then gives up)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from metasweep.core.learners.gradient import GradientLearner
from metasweep.core.registry import register_learner_kind, register_preset
from metasweep.core.variants import Variant

_reports: dict[int, int] = {}  # reports seen by each trial attempt (its setup) in this process


@dataclass(frozen=True)
class Crashy(GradientLearner):
    crash: str = "outputs"  # outputs | write | exit
    kind = "crashy"

    def switches(self) -> dict:
        return {**super().switches(), "crash": self.crash}

    def outputs(self, *args, **kwargs):
        if self.crash == "outputs":
            raise RuntimeError("boom: this learner always fails")
        return super().outputs(*args, **kwargs)

    def diagnostics(self, setup, params) -> dict:
        _reports[id(setup)] = _reports.get(id(setup), 0) + 1
        if self.crash == "exit" and _reports[id(setup)] >= 2:
            os._exit(3)
        if self.crash == "write":
            return {"mask_fraction": "not a number"}
        return super().diagnostics(setup, params)


register_learner_kind("crashy", lambda name, **sw: Crashy(variant=Variant(name), **sw), switches=("crash",))
for _crash in ("outputs", "write", "exit"):
    register_preset(f"crash-{_crash}", "crashy", crash=_crash)
