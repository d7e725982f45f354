"""What `rank` and `plot` call a trial: the stage they read and the row label of each trial.

One owner for both, so a trial has one name everywhere. A row is a variant as the spec names it,
plus the values that vary among that variant's trials of the stage — a grid point such as
`maml alpha=0.1`, a polynomial order `mt-net order=2`. Hyper-parameters a test stage *tuned* per
cell (hp_source tuned / fallback / defaults) are not part of the row: they are an attribute of the
(variant, train shots) cell, shown in their own table. Train shots are never part of the row: they
are a setting (a column of the ranking, a series suffix in plots).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from .schema import HP_COLUMNS

STAGE_ORDER = ("test", "grid", "single", "tune")  # the stage shown when none is asked for
PER_CELL_SOURCES = ("tuned", "fallback", "defaults")  # hyper-parameters chosen per (variant, train shots) cell
TRIAL_COLUMNS = ("trial_id", "attempt", "stage", "variant", "status", "train_shots", "seed", "config", "task_family",
                 "task_options", *HP_COLUMNS, "meta_steps", "learner_kind", "inner_loop", "hparams", "hp_source",
                 "hp_source_trial")


def choose_stage(stages: Iterable[str], stage: str | None, exp_uri: str) -> str:
    """`stage` if the dataset has it, else (None) the first of STAGE_ORDER it has. ValueError
    naming what is there otherwise."""
    present = sorted(set(stages))
    if not present:
        raise ValueError(f"{exp_uri}: the dataset has no trials yet")
    if stage is None:
        return next((s for s in STAGE_ORDER if s in present), present[0])
    if stage not in present:
        raise ValueError(f"{exp_uri}: no trials of stage {stage!r}; stages present: {', '.join(present)}")
    return stage


def hparams_of(t: dict) -> dict:
    """The hyper-parameters a trial's learner read: its `hparams` JSON, or for rows written before
    that column existed, its non-null hyper-parameter columns."""
    text = t.get("hparams")
    if text:
        try:
            value = json.loads(text)
            if isinstance(value, dict):
                return value
        except ValueError:
            pass
    return {k: t[k] for k in HP_COLUMNS if t.get(k) is not None}


def per_cell_hparams(t: dict) -> bool:
    """True when the trial's hyper-parameters were chosen per cell (tuned, or defaults in place of
    tuning) rather than being a point of a grid; rows older than hp_source: the test stage's."""
    source = t.get("hp_source")
    return source in PER_CELL_SOURCES if source else t.get("stage") == "test"


def inner_loop(t: dict) -> bool:
    """Whether the trial's learner adapts by steps (rows older than the column: all did)."""
    return t.get("inner_loop") is not False


def configuration(t: dict) -> dict:
    """What tells a trial's configuration apart from its variant's other trials of the stage, in
    display order: hyper-parameters (unless chosen per cell), the configured budget, the task
    family and its options. Values are hashable (lists and dicts as sorted JSON)."""
    out: dict = {}
    if not per_cell_hparams(t):
        hp = hparams_of(t)
        out.update((k, hp[k]) for k in (*HP_COLUMNS, *sorted(set(hp) - set(HP_COLUMNS))) if k in hp)
    config = _json_dict(t.get("config"))
    out["meta_steps"] = config.get("meta_steps", t.get("meta_steps"))  # the budget, not the steps done
    out["task"] = t.get("task_family")
    options = _json_dict(t.get("task_options"), "options")
    out.update((k, options[k]) for k in sorted(options))
    return {k: _hashable(v) for k, v in out.items()}


def label_trials(trials: list[dict], exclude: Iterable[str] = (), variant_only: bool = False) -> None:
    """Give each trial its row: t["label"] (the variant plus `name=value` for what varies among
    that variant's trials, names in `exclude` left out), t["point"] ({name: value} of those) and
    t["configuration"] (every value of `configuration`). Seeds of one configuration share a row.
    Floats print with 3 significant digits, more where 3 would merge two different values."""
    exclude = set(exclude)
    by_variant: dict[str, list[dict]] = {}
    for t in trials:
        t["configuration"] = configuration(t)
        by_variant.setdefault(t["variant"], []).append(t)
    for variant, ts in by_variant.items():
        names = [] if variant_only else [n for n in _names(ts) if n not in exclude]
        varying = [n for n in names if len({t["configuration"].get(n) for t in ts}) > 1]
        digits = {n: distinct_digits({t["configuration"].get(n) for t in ts}) for n in varying}
        for t in ts:
            t["point"] = {n: t["configuration"].get(n) for n in varying}
            t["label"] = " ".join([variant] + [f"{n}={format_value(t['point'][n], digits[n])}" for n in varying])


def _names(trials: list[dict]) -> list[str]:
    """Configuration names of these trials, in the order their configurations list them."""
    seen: dict[str, None] = {}
    for t in trials:
        seen.update(dict.fromkeys(t["configuration"]))
    return list(seen)


def row_sort_key(variant: str, point: dict, baseline: str | None) -> tuple:
    """Rows in display order: the baseline first, then by variant, then by grid values (numbers
    numerically)."""
    values = tuple((v is None, isinstance(v, str), v if isinstance(v, (int, float)) else 0, str(v))
                   for v in point.values())
    return variant != baseline, variant, values


def format_value(v, digits: int = 3) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return "none" if v is None else str(v)


def distinct_digits(values: set) -> int:
    """Fewest significant digits (at least 3) that print these floats apart; 3 for other values."""
    if not values or not all(isinstance(v, float) for v in values):
        return 3
    return next((d for d in range(3, 18) if len({format_value(v, d) for v in values}) == len(values)), 17)


def setting_text(train_shots: int, eval_shots: int, several_train: bool) -> str:
    """A column of the ranking: `5-shot`, or `train 10 / eval 5-shot` when train shots vary."""
    return f"train {train_shots} / eval {eval_shots}-shot" if several_train else f"{eval_shots}-shot"


def cell_text(row: str, train_shots: int) -> str:
    """A (row, train shots) cell, as notes and plot legends name it: `mt-net (train 10-shot)`."""
    return f"{row} (train {train_shots}-shot)"


def _json_dict(text: str | None, key: str = "value") -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {key: text}
    return value if isinstance(value, dict) else {key: value}


def _hashable(v):
    return v if v is None or isinstance(v, (int, float, str, bool)) else json.dumps(v, sort_keys=True)
