"""What a sweep tells: each cell's best tune configuration (its learner's own hyper-parameters too),
where each test cell's configuration came from, and the cells a tune stage left without a finite
result (which fail the sweep unless the spec says `test.untuned: fallback`)."""

from __future__ import annotations

import collections
import json
import math

from rich.table import Table

from metasweep.analysis.schema import HP_SOURCES
from metasweep.analysis.store import read_trials

from .console import make_console
from .plan import cells, search_space
from .spec import Spec
from .stages import StageFailed, error_summary
from .trial import TrialConfig

out = make_console()


def best_configs(spec: Spec, exp_uri: str, trials: list[dict] | None = None) -> dict[str, dict]:
    """Each cell's best tune trial by final meta-validation loss (completed trials only: ASHA-stopped
    ones did not get the full budget): {cell: {hyper-parameter: value, _val_loss, _trial_id}}. Cells
    without a finite result are absent. `trials`: the trials table's rows if the caller has read them."""
    trials = read_trials(exp_uri).to_pylist() if trials is None else trials
    rows = [r for r in trials if r["stage"] == "tune" and r["status"] == "completed"
            and r["final_val_loss"] is not None and math.isfinite(r["final_val_loss"])]
    best = {}
    for cell in cells(spec):
        mine = [r for r in rows if r["variant"] == cell.variant and r["train_shots"] == cell.shots]
        if not mine:
            continue
        r = min(mine, key=lambda r: r["final_val_loss"])
        conf = TrialConfig.from_dict(json.loads(r["config"]))
        hp = {k: conf.hparam(k) for k in search_space(spec, cell.variant)}
        best[cell.name] = {**hp, "_val_loss": r["final_val_loss"], "_trial_id": r["trial_id"]}
    return best


def hp_sources(spec: Spec, manifest: dict, best: dict) -> dict[str, tuple[str, str | None]]:
    """Per test-stage cell, (hp_source, hp_source_trial): "tuned" from its best tune trial,
    "fallback" when its tune stage ran without a finite result, "defaults" when it had none."""
    out_ = {}
    for cell in cells(spec):
        if cell.name in best:
            out_[cell.name] = ("tuned", best[cell.name].get("_trial_id"))
        else:
            tuned = manifest["cells"].get(f"tune-{cell.name}") == "done"
            out_[cell.name] = ("fallback" if tuned else "defaults", None)
    return out_


def check_untuned(spec: Spec, exp_uri: str, manifest: dict, best: dict) -> None:
    """A cell whose tune stage ran without a finite result fails the sweep (the rows are kept) unless
    the spec says `test.untuned: fallback` (then it is tested on the defaults, and said so)."""
    untuned = [c for c in cells(spec) if c.name not in best and manifest["cells"].get(f"tune-{c.name}") == "done"]
    if not untuned:
        return
    trials = [r for r in read_trials(exp_uri).to_pylist() if r["stage"] == "tune"]
    lines = []
    for cell in untuned:
        mine = [r for r in trials if r["variant"] == cell.variant and r["train_shots"] == cell.shots]
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(collections.Counter(r["status"] for r in mine).items()))
        lines.append(f"tune-{cell.name}: no finite result ({statuses or 'no trial'})")
        failed = [r for r in mine if r["status"] == "errored"]
        if failed:
            lines.append(error_summary(failed))
    if spec.test.untuned == "fallback":
        make_console(stderr=True).print("\n".join(lines) + "\nthese cells are tested on the spec's defaults "
                                        "(test.untuned: fallback)", markup=False)
        return
    raise StageFailed("\n".join(lines) + f"\nrows kept in {exp_uri}; the test stage does not run on untuned cells: "
                      "widen or move their search ranges, or set test.untuned: fallback to test them on the defaults")


def _hp_text(values: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def print_best(spec: Spec, best: dict) -> None:
    """The tune stage's best configuration per cell: every hyper-parameter its learner searched."""
    table = Table(title="tune stage: best configuration per variant (meta-validation loss)")
    for c in ("variant", "train shots", "searched hyper-parameters", "val loss"):
        table.add_column(c, justify="right")
    for cell in cells(spec):
        b = best.get(cell.name)
        if b is None:
            table.add_row(cell.variant, str(cell.shots), ", ".join(search_space(spec, cell.variant)),
                          "no finite result")
            continue
        table.add_row(cell.variant, str(cell.shots), _hp_text({k: v for k, v in b.items() if not k.startswith("_")}),
                      f"{b['_val_loss']:.4f}")
    out.print(table)


def print_sources(configs) -> None:
    """The test cells and where their configuration came from (hp_source), with its values."""
    table = Table(title="test stage: configuration of each cell and where it came from")
    for c in ("variant", "train shots", "source", "hyper-parameters", "from trial"):
        table.add_column(c)
    seen = set()
    for cell, cfg in configs:
        if cell in seen:
            continue
        seen.add(cell)
        table.add_row(cell.variant, str(cell.shots), f"{cfg.hp_source} ({HP_SOURCES.get(cfg.hp_source, '')})",
                      _hp_text({k: cfg.hparam(k) for k in searched(cfg)}), cfg.hp_source_trial or "-")
    out.print(table)


def searched(cfg: TrialConfig) -> tuple[str, ...]:
    """The hyper-parameters a trial's learner searches (what a tune stage chose for it)."""
    from metasweep.core.registry import make_learner

    return make_learner(cfg.variant, **cfg.variant_overrides).searched()
