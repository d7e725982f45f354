"""A Ray Tune callback that prints one line per ended trial (module level, so Tune can pickle it)."""

from __future__ import annotations

from ray.tune import Callback


def _reads(cfg: dict) -> tuple[str, ...]:
    """The hyper-parameters the trial's learner reads (print only those: c matters with a mask only)."""
    from metasweep.core.registry import make_learner

    try:
        return make_learner(cfg.get("variant", "maml"), **cfg.get("variant_overrides", {})).reads()
    except Exception:
        return ("alpha", "beta", "temperature")


class TrialProgress(Callback):
    def __init__(self, stage_name: str):
        self.stage_name = stage_name
        self.done = 0

    def _print(self, text: str) -> None:
        from rich.console import Console

        Console(stderr=True).print(text, highlight=False)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        r = trial.last_result or {}
        point = trial.config.get("point", trial.config)
        cfg = {**point.get("trial", {}), **{k: v for k, v in trial.config.items() if k in ("alpha", "beta", "temperature")}}
        variant = point.get("meta", {}).get("variant", "")
        keys = [k for k in ("alpha", "beta", "temperature") if k in _reads(cfg)]
        hp = ", ".join(f"{k}={cfg[k]:.3g}" for k in keys if k in cfg)
        val = r.get("val_loss")
        val = f"{val:.4f}" if isinstance(val, float) else "-"
        self._print(f"  [{self.stage_name}] {variant} seed={cfg.get('seed', '?')} {r.get('status', 'stopped')}: "
                    f"val_loss {val}  {hp}  ({self.done} ended)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(f"  [{self.stage_name}] trial {trial.trial_id} failed; Ray restarts it from its last "
                    "checkpoint up to max_failures times")
