"""An experiment's report as Markdown (`metasweep report`): where and how long it ran, the ranking
with paired tests at every evaluated number of inner steps, each seed's value, and the spec as run.
Everything comes from the dataset itself (trials, eval_tasks, spec.yaml), so a report can be
regenerated from any copy of the results."""

from __future__ import annotations

import yaml

from .evaldata import load_matrices, stage_trials
from .metrics import get_metric
from .ranking import compute_ranking
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


def provenance(exp_uri: str) -> list[str]:
    """Markdown lines: trials per stage and status, the wall time from the first trial's start to the
    last one's end, the trials' summed wall time, and the code versions, devices and nodes they ran on."""
    t = read_trials(exp_uri).to_pylist()
    if not t:
        raise ValueError(f"{exp_uri}: no trials")
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

    lines.append(f"Code: metasweep {distinct('package_version')}, git {distinct('git_sha')}; devices: "
                 f"{distinct('device')}; nodes: {len({r['node'] for r in t})}")
    return lines


def experiment_report(exp_uri: str, *, metric: str = "loss", stage: str | None = None, baseline: str = "maml",
                      command: str | None = None) -> str:
    """The report (Markdown) of the experiment at `exp_uri`. ValueError naming what is missing."""
    get_metric(metric)
    spec_text = read_text(exp_uri, "spec.yaml") or ""
    spec = yaml.safe_load(spec_text) if spec_text else {}
    spec = spec if isinstance(spec, dict) else {}
    title = spec.get("experiment") or exp_uri.rstrip("/").rsplit("/", 1)[-1]
    lines = [f"# {title}" + (f": {spec['description']}" if spec.get("description") else ""), ""]
    if command:
        lines.append(f"Command: `{command}`  ")
    lines += provenance(exp_uri) + [""]
    steps = sorted({int(s) for s in ((spec.get("eval") or {}).get("inner_steps") or [1])})
    ranked = []
    for k in steps:
        try:
            r = compute_ranking(exp_uri, metric=metric, stage=stage, inner_steps=k, baseline=baseline)
        except ValueError as e:
            lines += [f"## After {k} inner step(s)", "", f"(not ranked: {e})", ""]
            continue
        ranked.append(k)
        lines += [f"## Ranking and paired tests ({k} inner step{'s' if k != 1 else ''})", "", render(r, "markdown"), ""]
    if ranked:
        k = ranked[0]
        lines += [f"## Per seed ({k} inner step{'s' if k != 1 else ''})", "",
                  f"Each seed's mean {metric} over the shared evaluation tasks (the tables above pool these; a seed "
                  "is one meta-training run).", "",
                  per_seed_table(exp_uri, metric=metric, stage=stage, inner_steps=k), ""]
    if spec_text:
        lines += ["## Spec as run", "", "```yaml", spec_text.rstrip(), "```", ""]
    return "\n".join(lines)
