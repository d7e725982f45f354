"""The data of a ranking: a stage's trials with their row labels (analysis.labels), and their
evaluation rows as one [seeds, tasks] matrix per (row, setting). Shared with the plots.

How it is read (this runs on tens of millions of evaluation rows):

- trials come from the store (latest committed attempt of each trial); the evaluation rows of the
  stage's completed trials from their attempt files or from SQL (analysis.evalrows);
- rows land in a dense [seed, shots, task] array of sums and counts, one ``np.bincount`` per trial
  (no sort, no Python loop over rows); duplicate rows of a (trial, task) are averaged, as ``avg()``
  would, and so are trials of one row that share a seed (with a note);
- a task enters a cell when every seed of the cell evaluated it (a note says when that drops tasks);
- a learner without an inner loop (trials' ``inner_loop`` false) has only ``inner_steps = 0`` rows:
  they stand for every number of inner steps, with a note.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import duckdb
import numpy as np

from . import labels as lb
from .evalrows import Part, parts_from_con, parts_from_files, small_unique, union
from .metrics import get_metric
from .store import read_trials

Setting = tuple[int, int]  # (train shots, evaluation shots)


@dataclass
class CellConfig:
    """The hyper-parameters one (row, train shots) cell of a test stage ran with, and their source."""

    row: str
    train_shots: int
    hparams: dict
    hp_source: str | None
    hp_source_trial: str | None
    n_trials: int


@dataclass
class EvalMatrices:
    """A stage's evaluation at one number of inner steps, ready to rank (all rows' tasks on one axis).

    values[(row, setting)]: [seeds, k] per-task values (duplicates averaged), every seed of the cell
    evaluated each of its k tasks; tasks[(row, setting)]: [k] positions of those tasks on the common
    task axis of length n_tasks (sorted). Non-finite values are kept (a diverged adaptation).
    """

    metric: str
    stage: str
    inner_steps: int
    rows: list[str]  # every row label of the stage (variant + grid point), with evaluation rows or not
    row_variant: dict[str, str]
    row_point: dict[str, dict]  # the values that name the row (`maml alpha=0.1` -> {"alpha": 0.1})
    row_config: dict[str, dict]  # every configuration value of the row (labels.configuration)
    settings: list[Setting]
    values: dict[tuple[str, Setting], np.ndarray]
    tasks: dict[tuple[str, Setting], np.ndarray]
    n_tasks: int
    status_counts: dict[str, dict[str, int]]  # row -> status -> trials
    configs: list[CellConfig] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ trials


def stage_trials(exp_uri: str, stage: str | None, con: duckdb.DuckDBPyConnection | None = None) -> tuple[str, list[dict]]:
    """(stage, its trials as dicts sorted by trial_id, each labelled by labels.label_trials): the
    stage asked for, or the default one (labels.choose_stage)."""
    if con is not None:
        cols = ", ".join(lb.TRIAL_COLUMNS)
        all_trials = [dict(zip(lb.TRIAL_COLUMNS, r)) for r in con.execute(f"select {cols} from trials").fetchall()]
    else:
        all_trials = read_trials(exp_uri).select(list(lb.TRIAL_COLUMNS)).to_pylist()
    stage = lb.choose_stage((t["stage"] for t in all_trials), stage, exp_uri)
    trials = sorted((t for t in all_trials if t["stage"] == stage), key=lambda t: t["trial_id"])
    lb.label_trials(trials)
    return stage, trials


def cell_configs(trials: list[dict]) -> tuple[list[CellConfig], list[str]]:
    """Per (row, train shots) cell whose hyper-parameters were chosen per cell, the configuration(s)
    its trials ran with; notes for cells that ran on defaults instead of tuned values and for cells
    whose trials disagree."""
    groups: dict[tuple, dict[tuple, list[dict]]] = {}
    for t in trials:
        if lb.per_cell_hparams(t):
            key = (json.dumps(lb.hparams_of(t), sort_keys=True), t.get("hp_source"), t.get("hp_source_trial"))
            groups.setdefault((t["label"], t["train_shots"]), {}).setdefault(key, []).append(t)
    configs, notes = [], []
    for (row, shots), by_config in sorted(groups.items()):
        for (hp, source, source_trial), ts in by_config.items():
            configs.append(CellConfig(row, shots, json.loads(hp), source, source_trial, len(ts)))
        if len(by_config) > 1:
            notes.append(f"{lb.cell_text(row, shots)} ran with {len(by_config)} different configurations "
                         "(see the hyper-parameter table); their seeds are averaged together")
    untuned = [c for c in configs if untuned_note(c)]
    if untuned and len(untuned) == len(configs) and len({c.hp_source for c in untuned}) == 1:
        notes.append(f"every variant ran on the spec's defaults: {_WHY_UNTUNED[untuned[0].hp_source]}")
    else:
        notes += [untuned_note(c) for c in untuned]
    return configs, notes


_WHY_UNTUNED = {"fallback": "its tune stage had no finite result", "defaults": "there was no tune stage"}


def untuned_note(c: CellConfig) -> str:
    """`mt-net (train 10-shot) ran on the spec's defaults: ...` for a cell that was not tuned, else ""."""
    why = _WHY_UNTUNED.get(c.hp_source or "")
    return f"{lb.cell_text(c.row, c.train_shots)} ran on the spec's defaults: {why}" if why else ""


def _per_row(p: Part, per_trial: np.ndarray) -> np.ndarray:
    """A per-trial array (indexed by `code`) spread over a part's rows."""
    return np.broadcast_to(per_trial[p.code], p.v.shape)


def _at_inner_steps(parts: list[Part], done: list[dict], inner_steps: int | None,
                    where: str) -> tuple[list[Part], int, list[str]]:
    """The rows at `inner_steps` (default: the smallest > 0 evaluated); a learner without an inner
    loop contributes its inner_steps = 0 rows at every number of steps (with a note). At 0 the
    learners without an inner loop are always available (ranked among themselves and with any
    gradient learner evaluated before adaptation)."""
    loops = np.array([lb.inner_loop(t) for t in done] or [True])
    steps_of = [p.inner_steps[_per_row(p, loops)] if loops.any() else p.inner_steps for p in parts]
    steps_avail = union([small_unique(s) for s in steps_of]).tolist()
    loop_steps = steps_avail if loops.any() else []
    if not loops.all() and 0 not in steps_avail:  # the learners without an inner loop are evaluated at 0
        steps_avail = [0, *steps_avail]
    if not steps_avail:
        raise ValueError(f"{where} has no completed trial with evaluation rows")
    if inner_steps is None:
        positive = [s for s in steps_avail if s > 0]
        inner_steps = positive[0] if positive else steps_avail[0]
    elif inner_steps not in steps_avail:
        raise ValueError(f"inner steps {inner_steps} were not evaluated; available: {steps_avail}")
    wanted = np.where(loops, inner_steps, 0)
    parts = [p.keep(p.inner_steps == _per_row(p, wanted)) for p in parts]
    no_loop = sorted({t["label"] for t, loop in zip(done, loops) if not loop}) if inner_steps else []
    notes = [f"{row}: no inner loop; its inner_steps = 0 rows stand for every number of inner steps"
             for row in no_loop]
    if loops.any() and inner_steps not in loop_steps:
        unranked = sorted({t["label"] for t, loop in zip(done, loops) if loop})
        notes.append(f"{', '.join(unranked)}: not evaluated at {inner_steps} inner steps (evaluated at "
                     f"{', '.join(map(str, loop_steps))}): not ranked here")
    return parts, int(inner_steps), notes


def _one_split(parts: list[Part]) -> tuple[list[Part], list[str]]:
    """One stage evaluates on one split; never average val and test rows together."""
    splits = set().union(*(p.splits_present() for p in parts))
    if len(splits) <= 1:
        return parts, []
    use = "test" if "test" in splits else min(splits)
    return ([p.only_split(use) for p in parts],
            [f"evaluation rows of several splits ({', '.join(sorted(splits))}): the {use} rows are used"])


@dataclass
class _Dense:
    """Sums and counts of values on a [slot, shots, task] grid; a slot is one seed of one cell."""

    sums: np.ndarray
    counts: np.ndarray
    shots: np.ndarray  # [n_shot] the evaluated shot counts
    cell_slots: dict[tuple[str, int], list[int]]  # (row, train shots) -> its seeds' slots


def _dense(parts: list[Part], done: list[dict]) -> tuple[_Dense, list[str]]:
    """Accumulate the rows: one slot per (row, train shots, seed); trials sharing a slot (the same
    configuration run twice) are averaged per task, like one seed (with a note)."""
    slot_of: dict[tuple, int] = {}
    cell_slots: dict[tuple[str, int], list[int]] = {}
    for key in sorted({(t["label"], t["train_shots"], t["seed"]) for t in done}):
        slot_of[key] = len(slot_of)
        cell_slots.setdefault(key[:2], []).append(slot_of[key])
    trial_slot = np.array([slot_of[(t["label"], t["train_shots"], t["seed"])] for t in done] or [0], np.int64)
    shared: dict[str, set] = {}
    for key, n in Counter((t["label"], t["train_shots"], t["seed"]) for t in done).items():
        if n > 1:
            shared.setdefault(key[0], set()).add(key[2])
    notes = [f"{row}: several trials share seed(s) {', '.join(map(str, sorted(seeds)))}; their per-task values "
             "are averaged as one seed" for row, seeds in sorted(shared.items())]
    shots_u = union([small_unique(p.shots) for p in parts])
    tasks_u = union([small_unique(p.task_index) for p in parts])
    n_slot, n_shot, n_task = len(slot_of), len(shots_u), len(tasks_u)
    dense_tasks = n_task == 0 or (tasks_u[0] == 0 and tasks_u[-1] == n_task - 1)
    block = n_shot * n_task
    sums = np.zeros((n_slot, block))
    counts = np.zeros((n_slot, block), np.int64)
    for p in parts:  # one bincount per trial's rows: no sort, no per-row Python
        local = np.searchsorted(shots_u, p.shots) * n_task
        local += p.task_index if dense_tasks else np.searchsorted(tasks_u, p.task_index)
        if np.isscalar(p.code):  # one trial: its rows fall in one slot's block
            s = trial_slot[p.code]
            sums[s] += np.bincount(local, weights=p.v, minlength=block)
            counts[s] += np.bincount(local, minlength=block)
        else:
            flat = trial_slot[p.code] * block + local
            sums += np.bincount(flat, weights=p.v, minlength=n_slot * block).reshape(n_slot, block)
            counts += np.bincount(flat, minlength=n_slot * block).reshape(n_slot, block)
    shape = (n_slot, n_shot, n_task)
    return _Dense(sums.reshape(shape), counts.reshape(shape), shots_u, cell_slots), notes


def _cell_matrices(d: _Dense) -> tuple[dict, dict, list[Setting], list[str]]:
    """values and tasks per (row, setting) (see EvalMatrices); a task enters a cell when every seed
    of the cell evaluated it."""
    values, tasks, notes = {}, {}, []
    for (row, train), slots in sorted(d.cell_slots.items()):
        for k, shots in enumerate(d.shots.tolist()):
            c = d.counts[slots, k]
            seeds_in = c.any(axis=1)
            if not seeds_in.any():
                continue
            c = c[seeds_in]
            full = c.all(axis=0)
            partial = int((c.any(axis=0) & ~full).sum())
            if partial:
                notes.append(f"{row} at {shots}-shot: {partial} task(s) not evaluated for every seed are left out")
            if full.any():
                values[(row, (train, shots))] = d.sums[slots, k][seeds_in][:, full] / c[:, full]
                tasks[(row, (train, shots))] = np.flatnonzero(full)
    settings = sorted({st for _, st in values})
    return values, tasks, settings, notes


def load_matrices(exp_uri: str, *, metric: str = "loss", stage: str | None = None, inner_steps: int | None = None,
                  con: duckdb.DuckDBPyConnection | None = None) -> EvalMatrices:
    """A stage's trials and evaluation rows at one number of inner steps, as EvalMatrices.
    ValueError naming what is missing (stage, inner steps, accuracy of a regression task)."""
    m = get_metric(metric)
    stage, trials = stage_trials(exp_uri, stage, con)
    counts: dict[str, dict[str, int]] = {}
    for t in trials:
        c = counts.setdefault(t["label"], {})
        c[t["status"]] = c.get(t["status"], 0) + 1
    done = [t for t in trials if t["status"] == "completed"]
    parts = parts_from_files(exp_uri, done, metric) if con is None else parts_from_con(con, done, metric)
    parts, inner_steps, notes = _at_inner_steps(parts, done, inner_steps, f"{exp_uri}: stage {stage!r}")
    parts, split_notes = _one_split(parts)
    parts = [p for p in parts if p.v.size]
    if metric != "loss" and all(np.isnan(p.v).all() for p in parts):
        raise ValueError(f"this dataset has {m.absent}")
    dense, seed_notes = _dense(parts, done)
    del parts
    values, tasks, settings, cell_notes = _cell_matrices(dense)
    configs, config_notes = cell_configs(trials)
    rows = sorted({t["label"] for t in trials})
    first = {t["label"]: t for t in reversed(trials)}
    return EvalMatrices(
        metric, stage, inner_steps, rows, {r: first[r]["variant"] for r in rows}, {r: first[r]["point"] for r in rows},
        {r: first[r]["configuration"] for r in rows}, settings, values, tasks, dense.sums.shape[2],
        counts, configs, [*split_notes, *seed_notes, *cell_notes, *notes, *config_notes])
