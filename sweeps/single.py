"""`metasweep train`: one trial from command-line options, through the same config model as a spec
file (`sweeps.config.RunSpec`: the same defaults, the same rules, the same checks before training)
and the same error formatter, naming the option instead of the field."""

from __future__ import annotations

from pydantic import ValidationError

from .config import ConfigError, RunSpec, format_error
from .errors import UserError

# option -> the config field it sets (its error is named after the option)
FIELDS = {
    "plugin": ("plugins",), "task": ("task",), "queries": ("task", "queries"),
    "order": ("task", "options", "order"), "data_root": ("task", "options", "data_root"),
    "ways": ("task", "options", "ways"), "splits": ("task", "options", "splits"),
    "cache_dir": ("task", "options", "cache_dir"), "variant": ("variants",), "switch": ("variants", 0, "switches"),
    "train_shots_range": ("variants", 0, "train_shots_range"),
    "train_shots": ("train_shots",), "report_every": ("budget",), "meta_steps": ("budget", "meta_steps"),
    "meta_batch": ("budget", "meta_batch"), "inner_steps": ("budget", "inner_steps"), "eval_shots": ("eval", "shots"),
    "eval_steps": ("eval", "inner_steps"), "eval_tasks": ("eval", "tasks"), "eval_seed": ("eval", "seed"),
    "val_tasks": ("eval", "val_tasks"), "mask_eval": ("eval", "mask_eval"), "cka_tasks": ("eval", "cka_tasks"),
    "select": ("eval", "select"), "hparam": ("defaults",), "alpha": ("defaults", "alpha"), "beta": ("defaults", "beta"),
    "temperature": ("defaults", "temperature"),
}


def flag(loc: tuple) -> str:
    """The option that sets a config field (the longest match): ('defaults', 'alpha') -> --alpha."""
    best = max((o for o, f in FIELDS.items() if tuple(loc[:len(f)]) == f), key=lambda o: len(FIELDS[o]), default=None)
    return "--" + (best or "task").replace("_", "-")


def int_list(text: str, option: str, example: str = "5,10,20") -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"{option}: expected comma-separated integers like {example} (got {text!r})") from None
    if not values:
        raise UserError(f"{option}: expected comma-separated integers like {example} (got {text!r})")
    return values


def pairs(items: list[str], option: str) -> dict:
    """KEY=VALUE options (repeatable) as a dict; numbers become numbers, true/false booleans."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{option}: expected KEY=VALUE (got {item!r})")
        out[key.strip()] = _scalar(value.strip())
    return out


def _scalar(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _given(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None and v != {}}


def config_data(o: dict) -> dict:
    """The config model's input from the options `o` (options not given are left out: the model's
    defaults apply). Image options are task options; a classification family evaluates at its
    training shots unless --eval-shots says otherwise."""
    options = {**pairs(o["task_option"], "--task-option"),
               **_given({k: o[k] for k in ("order", "ways", "cache_dir")}),
               **_given({"data_root": o["data_root"], "splits": int_list(o["splits"], "--splits") if o["splits"] else None})}
    eval_shots = int_list(o["eval_shots"], "--eval-shots") if o["eval_shots"] else _classification_shots(o)
    budget = _given({k: o[k] for k in ("meta_steps", "meta_batch", "inner_steps")})
    if o["report_every"] is not None or o["meta_steps"] is not None:
        from .config import Budget, field_default

        every = o["report_every"] if o["report_every"] is not None else field_default(Budget, "report_every")
        budget["report_every"] = min(every, o["meta_steps"] or field_default(Budget, "meta_steps"))
    return _given({
        "plugins": list(o["plugin"]) or None,
        "task": _given({"family": o["task"], "queries": o["queries"], "options": options}),
        "variants": [_given({"name": o["variant"], "preset": o["variant"], "switches": pairs(o["switch"], "--switch"),
                             "train_shots_range": (int_list(o["train_shots_range"], "--train-shots-range", "5,20")
                                                   if o["train_shots_range"] else None)})],
        "train_shots": [o["train_shots"]] if o["train_shots"] is not None else None,
        "budget": budget,
        "eval": _given({"shots": eval_shots, "tasks": o["eval_tasks"], "seed": o["eval_seed"],
                        "val_tasks": o["val_tasks"], "mask_eval": o["mask_eval"], "cka_tasks": o["cka_tasks"],
                        "select": o["select"],
                        "inner_steps": int_list(o["eval_steps"], "--eval-steps") if o["eval_steps"] else None}),
        "defaults": {**pairs(o["hparam"], "--hparam"), **_given({k: o[k] for k in ("alpha", "beta", "temperature")})},
    })


def _classification_shots(o: dict) -> list[int] | None:
    from metasweep.core import registry

    try:
        family = registry.family_class(o["task"] or "sine")
    except ValueError:
        return None
    if getattr(family, "loss", "") != "cross_entropy":
        return None
    return [o["train_shots"] or 1]


def check_device(device: str) -> None:
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UserError(f"--device: must be auto, cpu, cuda or cuda:N (got {device!r})")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine")


def build(o: dict):
    """(config, the trial's TrialConfig): validated, and every folder and size checked before training.
    UserError naming the option."""
    from .plan import Cell, trial_config
    from .preflight import preflight

    check_device(o["device"])
    try:
        run = RunSpec.model_validate(config_data(o), context={"base": None})
        cell = Cell(run.variant_names()[0], run.train_shots[0])
        cfg = trial_config(run, cell, split="test", seed=o["seed"])
        cfg.device, cfg.cuda_graphs, cfg.tf32 = o["device"], o["cuda_graphs"], o["tf32"]
        preflight(run, [(cell, cfg)])
    except (ValidationError, ConfigError) as e:
        raise UserError(format_error(e, flag)) from None
    return run, cfg
