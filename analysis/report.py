"""An experiment's report as Markdown (`metasweep report`): where and how long it ran, the ranking
with paired tests at every evaluated number of inner steps, each seed's value, and the spec as run.
Everything comes from the dataset itself (trials, eval_tasks, spec.yaml), so a report can be
regenerated from any copy of the results."""

from __future__ import annotations

import json
import statistics

import yaml

from .evaldata import load_matrices, stage_trials
from .metrics import get_metric
from .ranking import compute_ranking, require_baseline
from .render import render
from .store import read_text, read_trials


def per_seed_table(exp_uri: str, *, metric: str = "loss", stage: str | None = None, inner_steps: int | None = None) -> str:
    """Markdown: each row's mean `metric` over the shared tasks, per seed and evaluated shot count
    (the values the ranking pools), with the spread across seeds (max - min). ValueError as
    `load_matrices` (no such stage, inner steps not evaluated)."""
    m = load_matrices(exp_uri, metric=metric, stage=stage, inner_steps=inner_steps)
    _, trials = stage_trials(exp_uri, m.stage)
    seeds: dict = {}
    for t in trials:
        if t["status"] == "completed":
            seeds.setdefault((t["label"], t["train_shots"]), set()).add(t["seed"])
    columns = sorted({s for v in seeds.values() for s in v})
    lines = ["| row | shots | " + " | ".join(f"seed {s}" for s in columns) + " | spread |",
             "|---|---|" + "---|" * (len(columns) + 1)]
    for row in m.rows:
        for train, shots in m.settings:
            mat = m.values.get((row, (train, shots)))
            mine = sorted(seeds.get((row, train), ()))
            if mat is None or len(mine) != mat.shape[0]:
                continue
            per_seed = dict(zip(mine, mat.mean(axis=1).tolist()))
            cells = [f"{per_seed[s]:.3f}" if s in per_seed else "-" for s in columns]
            spread = max(per_seed.values()) - min(per_seed.values())
            lines.append(f"| {row} | {shots} | " + " | ".join(cells) + f" | {spread:.3f} |")
    return "\n".join(lines) + "\n"


def provenance(t: list[dict]) -> list[str]:
    """Markdown lines from the trials' rows: trials per stage and status, the wall time from the first
    trial's start to the last one's end, the trials' summed wall time, and the code versions, devices
    and nodes they ran on."""
    counts: dict = {}
    for r in t:
        counts.setdefault(r["stage"], {}).setdefault(r["status"], 0)
        counts[r["stage"]][r["status"]] += 1
    started = [r["started_at"] for r in t if r["started_at"] is not None]
    ended = [r["ended_at"] for r in t if r["ended_at"] is not None]
    lines = ["Trials: " + "; ".join(f"{stage} " + ", ".join(f"{n} {status}" for status, n in sorted(c.items()))
                                    for stage, c in sorted(counts.items())) + "  "]
    if started and ended:
        wall = (max(ended) - min(started)).total_seconds()
        lines.append(f"Wall time: {wall / 60:.1f} min ({wall:.0f} s) from the first trial's start "
                     f"({min(started):%Y-%m-%d %H:%M} UTC) to the last one's end; the trials' own wall times sum "
                     f"to {sum(r['wall_seconds'] or 0 for r in t) / 3600:.2f} h (bundled members share theirs)  ")

    def distinct(key: str) -> str:
        return ", ".join(sorted({str(r[key]) for r in t if r.get(key) is not None})) or "-"

    nodes = {r["node"] for r in t if r["node"]}
    hosts = {n.split("/")[0] for n in nodes}  # a node is "host/Ray node id"; each local Ray start is a new id
    lines.append(f"Code: metasweep {distinct('package_version')}, git {distinct('git_sha')}; devices: "
                 f"{distinct('device')}; Ray nodes: {len(nodes)} on {len(hosts)} host{'s' * (len(hosts) != 1)}  ")
    selects = sorted({json.loads(r["config"]).get("select", "last") for r in t if r.get("config")})
    steps = sorted(r["selected_step"] for r in t if r.get("selected_step") is not None)
    if set(selects) - {"last"} and steps:
        lines.append(f"Evaluated iterate: {', '.join(selects)} (eval.select); the meta-step each of the {len(steps)} "
                     f"evaluated trials was tested at: {steps[0]}-{steps[-1]} (median {statistics.median(steps):g}), "
                     f"of {max(r['meta_steps'] for r in t)}")
    return lines


def tune_table(trials: list[dict]) -> list[str]:
    """Markdown lines: every tune-stage trial with the hyper-parameters that vary among them and its
    meta-validation loss, the tune trial each test configuration came from (its `hp_source_trial`)
    marked; nothing when there is no tune stage."""
    rows = [t for t in trials if t["stage"] == "tune"]
    if not rows:
        return []
    chosen = {t["hp_source_trial"] for t in trials if t["stage"] == "test" and t["hp_source"] == "tuned"}
    hps = [json.loads(t["hparams"] or "{}") for t in rows]
    cells: dict = {}
    for t, h in zip(rows, hps):
        cells.setdefault((t["variant"], t["train_shots"]), []).append(h)
    # what the search varied: values that differ among one cell's trials
    names = sorted({k for hs in cells.values() for h in hs for k in h if len({json.dumps(x.get(k)) for x in hs}) > 1})
    out = ["## Tune stage: meta-validation loss of every configuration", "",
           "What the test stage's configurations were chosen by (the lowest per variant and train shots); ✓ marks "
           "the tune trial each tested configuration came from. The test tasks play no part in it.", "",
           "| variant | train shots | " + " | ".join(names) + " | val loss | status | tested |",
           "|---|---|" + "---|" * (len(names) + 3)]
    order = sorted(zip(rows, hps), key=lambda th: (th[0]["variant"], th[0]["train_shots"],
                                                   th[0]["final_val_loss"] if th[0]["final_val_loss"] is not None
                                                   else float("inf")))
    for t, h in order:
        vals = ["-" if h.get(k) is None else (f"{h[k]:.4g}" if isinstance(h[k], float) else str(h[k])) for k in names]
        loss = "-" if t["final_val_loss"] is None else f"{t['final_val_loss']:.4f}"
        out.append(f"| {t['variant']} | {t['train_shots']} | " + " | ".join(vals)
                   + f" | {loss} | {t['status']} | {'✓' if t['trial_id'] in chosen else ''} |")
    return out + [""]


def experiment_report(exp_uri: str, *, metric: str = "loss", stage: str | None = None, baseline: str | None = None,
                      command: str | None = None) -> str:
    """The report (Markdown) of the experiment at `exp_uri`; paired tests against `baseline` (a variant
    of the stage: ValueError otherwise), or against maml where there is one. ValueError naming what is
    missing."""
    named, baseline = baseline is not None, baseline or "maml"
    get_metric(metric)
    spec_text = read_text(exp_uri, "spec.yaml") or ""
    spec = yaml.safe_load(spec_text) if spec_text else {}
    spec = spec if isinstance(spec, dict) else {}
    title = spec.get("experiment") or exp_uri.rstrip("/").rsplit("/", 1)[-1]
    lines = [f"# {title}" + (f": {spec['description']}" if spec.get("description") else ""), ""]
    if command:
        lines.append(f"Command: `{command}`  ")
    trials = read_trials(exp_uri).to_pylist()
    if not trials:
        raise ValueError(f"{exp_uri}: no trials")
    lines += provenance(trials) + [""]
    steps = sorted({int(s) for s in ((spec.get("eval") or {}).get("inner_steps") or [1])})
    # the first ranking is computed unguarded: a stage, metric or dataset it cannot rank is the
    # command's error (ValueError naming it), not a report of error notes
    first = compute_ranking(exp_uri, metric=metric, stage=stage, inner_steps=None, baseline=baseline)
    if named:
        require_baseline(first, baseline, exp_uri)
    ranked = [first.inner_steps]
    sections = {first.inner_steps: first}
    for k in steps:
        if k in sections or (k == 0 and first.inner_steps != 0):
            continue
        try:
            sections[k] = compute_ranking(exp_uri, metric=metric, stage=stage, inner_steps=k, baseline=baseline)
            ranked.append(k)
        except ValueError as e:
            sections[k] = str(e)
    configs_shown = False  # every section ranks the same trials: their hyper-parameters are shown once
    for k in sorted(sections):
        r = sections[k]
        title = f"{k} inner step{'s' if k != 1 else ''}"
        if isinstance(r, str):
            lines += [f"## Ranking and paired tests ({title})", "", f"(not ranked: {r})", ""]
            continue
        lines += [f"## Ranking and paired tests ({title})", "", render(r, "markdown", configs=not configs_shown), ""]
        if configs_shown:
            lines[-1:-1] = ["(Hyper-parameters per cell: as in the first ranking above.)"]
        configs_shown = True
    k = ranked[0]
    lines += [f"## Per seed ({k} inner step{'s' if k != 1 else ''})", "",
              f"Each seed's mean {metric} over the shared evaluation tasks (the tables above pool these; a seed "
              "is one meta-training run); spread = the largest minus the smallest seed.", "",
              per_seed_table(exp_uri, metric=metric, stage=stage, inner_steps=k), ""]
    lines += tune_table(trials)
    if spec_text:
        lines += ["## Spec as run", "", "```yaml", spec_text.rstrip(), "```", ""]
    return "\n".join(lines)
