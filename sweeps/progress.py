"""A Ray Tune callback that prints one line per ended trial (module level, so Tune can pickle it):
the cell, the seed, the status, the validation loss and the hyper-parameters its learner searches
(a learner's own ones too, e.g. nn_scale)."""

from __future__ import annotations

from ray.tune import Callback

from .console import make_console


def searched_values(config: dict) -> dict:
    """{name: value} of the hyper-parameters the trial's learner searches, from Tune's config."""
    from .trainable import trial_config_of

    try:
        return _searched(trial_config_of(config)[1])
    except Exception:  # a config the registry refuses: the trial's row says why
        return {}


def member_values(config: dict) -> dict[str, dict]:
    """{member trial id: searched_values} of a bundle's members, from its Tune config."""
    from .bundle_trainable import members_of
    from .trial import TrialConfig

    try:
        return {m["trial_id"]: _searched(TrialConfig.from_dict(dict(m["trial"])))
                for m in members_of(config.get("bundle", config))}
    except Exception:  # as above
        return {}


def _searched(cfg) -> dict:
    from metasweep.core.registry import make_learner

    return {k: cfg.hparam(k) for k in make_learner(cfg.variant, **cfg.variant_overrides).searched()}


def shown(values: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


BY_STAGE = "stages"  # the label of a Tuner running several stages: each trial's line names its own

# lines the driver says from inside Tune's loop about a trial that has just ended (a cell's test
# bundles queued once its last tune bundle ended): Tune tells the searcher of a trial's end before
# the callbacks, so they wait here and follow that trial's own lines (TrialProgress; `flush_after`)
AFTER: list[str] = []


def say_after_trial(text: str) -> None:
    """Print `text` after the lines of the trial whose end Tune is handling (TrialProgress prints it
    then; sweeps.session.fit flushes what is left when the Tuner ends: `flush_after`)."""
    AFTER.append(text)


def flush_after() -> None:
    while AFTER:
        make_console(stderr=True).print(AFTER.pop(0), highlight=False, markup=False)


class TrialProgress(Callback):
    """`total`: the trials the Tuner runs (members of bundles counted one by one), for "(k of n
    ended)"; the count travels with Tune's saved state, so a resumed Tuner goes on counting."""

    def __init__(self, stage_name: str, total: int | None = None):
        self.stage_name = stage_name
        self.total = total
        self.done = 0

    def get_state(self) -> dict:
        return {"done": self.done}

    def set_state(self, state: dict) -> None:
        self.done = int(state.get("done", 0))

    def _ended(self) -> str:
        total = getattr(self, "total", None)  # a callback pickled before `total` existed has none
        return f"({self.done} of {total} ended)" if total else f"({self.done} ended)"

    def _print(self, text: str) -> None:
        make_console(stderr=True).print(text, highlight=False, markup=False)

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        label = self.stage_name
        if label == BY_STAGE:
            label = trial.config.get("meta", {}).get("stage", label)
        if "members" in r:  # a bundle: one line per member trial
            hps = member_values(trial.config)
            for trial_id, m in sorted(r["members"].items()):
                self.done += 1
                val = m.get("val_loss")
                val = f"{val:.4f}" if isinstance(val, float) else "-"
                self._print(f"  [{label}] {trial_id} {m.get('status')}: val_loss {val}  "
                            f"{shown(hps.get(trial_id, {}))}  {self._ended()}")
            flush_after()
            return
        self.done += 1
        point = trial.config.get("point", trial.config)
        variant = point.get("meta", {}).get("variant", "")
        seed = point.get("trial", {}).get("seed", "?")
        hp = shown(searched_values(trial.config))
        val = r.get("val_loss")
        val = f"{val:.4f}" if isinstance(val, float) else "-"
        self._print(f"  [{self.stage_name}] {variant} seed={seed} {r.get('status', 'stopped')}: "
                    f"val_loss {val}  {hp}  {self._ended()}")
        flush_after()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(f"  [{self.stage_name}] trial {trial.trial_id} failed; Ray restarts it from its last "
                    "checkpoint up to max_failures times")
        flush_after()
