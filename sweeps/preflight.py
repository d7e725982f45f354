"""Checks before the first trial (issue 11 cases 3 and 4): every folder a task family reads or
writes (its path options: an image family's data_root and cache_dir) and, for every cell, every
size constraint of the data and the learner (core.setup.check_sizes: shots + queries per class,
ways per split, a learner's train_ways). A failure is a ConfigError at the field to change, turned
into one line and exit 2 by the caller; never a trial that errors after training."""

from __future__ import annotations

import dataclasses
import json
import os

from metasweep.core import registry
from metasweep.core.setup import check_sizes

from .config import ConfigError, RunSpec
from .plan import Cell
from .trial import TrialConfig, build_setup


def check_folders(family: str, options: dict) -> None:
    """Each path option of the family: a data folder must exist (then the family checks its layout,
    decoding it once into its cache); a cache folder must be a folder, or creatable."""
    cls = registry.family_class(family)
    required = getattr(cls, "required_options", ())
    for name in getattr(cls, "path_options", ()):
        path = options.get(name)
        if not path:
            continue
        loc = ("task", "options", name)
        if name in required and not os.path.isdir(path):
            raise ConfigError(loc, f"{path}: no such folder" if not os.path.exists(path) else f"{path}: not a folder")
        if name not in required and not _creatable(path):
            raise ConfigError(loc, f"{path}: not a folder, and cannot be created there")
    check = getattr(registry.make_family(family, **options), "check", None)
    if check is None:
        return
    try:
        check()
    except ValueError as e:  # the family's DataError: the path and the layout it expects
        loc = ("task", "options", required[0]) if required else ("task", "options")
        raise ConfigError(loc, _without_flag(str(e), required)) from None


def _without_flag(message: str, required) -> str:
    """A family's message names its option as a command-line flag (`--data-root /x: ...`); the field
    already says which option it is."""
    for name in required:
        message = message.removeprefix(f"--{name.replace('_', '-')} ")
    return message


def _creatable(path: str) -> bool:
    if os.path.exists(path):
        return os.path.isdir(path) and os.access(path, os.W_OK)
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return os.path.isdir(parent) and os.access(parent, os.W_OK)


def check_cells(run: RunSpec, configs: list[tuple[Cell, TrialConfig]]) -> None:
    """Every distinct (cell, split, task options) of the trials to come: the learner accepts the
    setup (variants[i]), training and validation episodes fit (train_shots, or the variant's
    train_shots_range), evaluation episodes fit
    (eval.shots)."""
    seen = set()
    names = run.variant_names()
    for cell, cfg in configs:
        key = (cell, cfg.eval_split, json.dumps(cfg.task_options, sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        where, index = f"{cell.variant}, train shots {cell.shots}", names.index(cell.variant)
        try:
            setup = build_setup(cfg)
        except ValueError as e:
            raise ConfigError(_ways_field(e, index) or ("variants", index), f"{where}: {e}") from None
        try:
            check_sizes(setup, eval_shots=(), val=cfg.val_tasks > 0)
        except ValueError as e:
            raise ConfigError(_ways_field(e, index) or _training_field(setup, cfg, index), f"{where}: {e}") from None
        try:
            check_sizes(setup, eval_split=cfg.eval_split, eval_shots=cfg.eval_shots, val=False)
        except ValueError as e:
            raise ConfigError(_ways_field(e, index) or ("eval", "shots"), f"{where}: {e}") from None


def _ways_field(error: ValueError, index: int) -> tuple | None:
    """The field to change when a split has fewer classes than an episode's ways (the family's DataError
    says so in its `option`): the task's ways, or the variant's train_ways switch; None otherwise."""
    option = getattr(error, "option", None)
    if option == "ways":
        return ("task", "options", "ways")
    if option == "train_ways":
        return ("variants", index, "switches", "train_ways")
    return None


def _training_field(setup, cfg: TrialConfig, index: int) -> tuple:
    """The field to change when training episodes do not fit: the variant's train_shots_range where
    the cell's own shots would fit, else train_shots."""
    if cfg.train_shots_range is not None:
        try:
            check_sizes(dataclasses.replace(setup, train_shots_range=None), eval_shots=(), val=cfg.val_tasks > 0)
        except ValueError:
            pass
        else:
            return ("variants", index, "train_shots_range")
    return ("train_shots",)


def preflight(run: RunSpec, configs: list[tuple[Cell, TrialConfig]]) -> None:
    """The folders of every task configuration among `configs`, then every cell's sizes."""
    options = {json.dumps(cfg.task_options, sort_keys=True): cfg.task_options for _, cfg in configs}
    for opts in options.values():
        check_folders(run.task.family, opts)
    check_cells(run, configs)
