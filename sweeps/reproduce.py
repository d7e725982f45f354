"""`metasweep reproduce`: run a shipped spec of the MT-net paper's regression experiments and write a
report (Markdown + PNG) with our numbers beside the paper's.

Reproduction follows the paper's protocol: the paper's hyper-parameters (the spec's `defaults`),
no tuning stage; the test stage (or grid) on `seeds`. Paper numbers are those of
../shared/design/PROTOCOL.md (MT-net Table 1); sections 6.2 and 6.3 give figures, not numbers.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shlex
import sys
from pathlib import Path

import yaml

from .errors import UserError

SPECS = Path(__file__).parent / "specs"
EXPERIMENTS = ("table1", "alpha", "polynomial", "polynomial-authors")
# an experiment that is a shipped spec with other settings: (spec, {section: {field: value}})
AS_SPEC = {"polynomial-authors": ("polynomial", {"task": {"options": {"order": 2, "coef_decay": 0.5}},
                                                 "defaults": {"alpha": 0.001}})}
# polynomial-authors: the authors' script's settings (yoonholee/MT-net: alpha 1e-3, coefficients c_i / 2^i,
# x in [-2, 2]) beside the paper's stated ones (alpha 0.01, c_i ~ U[-1, 1])

# MT-net paper Table 1: loss after one adaptation step, mean +- 95% CI, meta-trained 10-shot sine.
PAPER_TABLE1 = {
    "maml": {5: (1.07, 0.11), 10: (0.71, 0.07), 20: (0.50, 0.05)},
    "meta-sgd": {5: (0.88, 0.14), 10: (0.53, 0.09), 20: (0.35, 0.06)},
    "m-net-full": {5: (0.91, 0.09), 10: (0.63, 0.07), 20: (0.38, 0.04)},
    "m-net": {5: (0.88, 0.09), 10: (0.60, 0.06), 20: (0.41, 0.04)},
    "t-net": {5: (0.83, 0.08), 10: (0.56, 0.06), 20: (0.38, 0.04)},
    "mt-net-full": {5: (0.81, 0.08), 10: (0.51, 0.05), 20: (0.35, 0.04)},
    "mt-net": {5: (0.76, 0.09), 10: (0.49, 0.05), 20: (0.33, 0.04)},
}

SMOKE = {"budget": {"meta_steps": 200, "report_every": 100}, "eval": {"tasks": 50, "val_tasks": 20}}


def reproduction_spec(name: str, scale: str, seeds: list[int] | None, out: Path) -> tuple[dict, str]:
    """The shipped spec as a dict, adapted to a reproduction: test stage at the paper's
    hyper-parameters, `seeds`, storage under `out`, and at smoke scale a tiny budget."""
    if name not in EXPERIMENTS:
        raise UserError(f"experiment must be one of {', '.join(EXPERIMENTS)} (got {name!r})")
    if scale not in ("smoke", "full"):
        raise UserError(f"--scale: must be smoke or full (got {scale!r})")
    spec_name, changes = AS_SPEC.get(name, (name, {}))
    data = yaml.safe_load((SPECS / f"{spec_name}.yaml").read_text())
    for section, values in changes.items():
        data[section] = _merged(data.get(section, {}), values)
    data["experiment"] = f"{name}-{scale}"
    data["storage"] = "results"  # beside the spec file, which is written into `out`
    data.pop("scheduler", None)
    if scale == "smoke":
        for section, values in SMOKE.items():
            data[section] = {**data.get(section, {}), **values}
        data["test"] = {"seeds": seeds or [0, 1]}
        data["max_concurrent"] = 2
    else:
        data["test"] = {"seeds": seeds or [0, 1, 2]}
        data["max_concurrent"] = os.cpu_count() or 2
    return data, yaml.safe_dump(data, sort_keys=False)


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def run(name: str, scale: str, out: Path, address: str | None, seeds: list[int] | None) -> Path:
    from .run import check_address, sweep

    data, text = reproduction_spec(name, scale, seeds, out)
    if address:
        check_address(address)
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / f"{name}-{scale}.spec.yaml"
    spec_path.write_text(text)
    exp_uri = sweep(str(spec_path), address=address, stage="test")  # a finished stage is skipped: report only
    wall = sweep_wall_seconds(exp_uri)
    command = "metasweep reproduce " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else ""
    report = write_report(name, scale, exp_uri, out, text, wall, command)
    return report


# ------------------------------------------------------------------------------------------ report


def sweep_wall_seconds(exp_uri: str) -> float:
    """From the first trial's start to the last trial's end (what the sweep took, rerun-proof)."""
    from metasweep.analysis.store import read_dataset

    trials = read_dataset(exp_uri)["trials"].to_pylist()
    if not trials:
        return 0.0
    return (max(t["ended_at"] for t in trials) - min(t["started_at"] for t in trials)).total_seconds()


def environment() -> dict:
    import pyarrow
    import ray
    import torch

    from metasweep.analysis.rows import git_sha, package_version

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = f"{names[0]} ({len(names)} logical CPUs)" if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"metasweep": package_version(), "git": git_sha(), "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "pyarrow": pyarrow.__version__,
            "cpu": cpu, "gpu": gpu, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def fmt(mean: float, ci: float) -> str:
    return f"{mean:.3f} ± {ci:.3f}"


TABLE_ROW = re.compile(r"^\| (?P<model>[\w.+-]+) \| (?P<cells>.+) \|$")
CELL = re.compile(r"(?P<mean>-?\d+\.\d+) ± (?P<ci>\d+\.\d+)(?: \[(?P<lo>-?\d+\.\d+), (?P<hi>-?\d+\.\d+)\])?")


def table1_rows(exp_uri: str) -> dict:
    """{variant: {shots: {ours, ours_ci, seeds_lo, seeds_hi, paper, paper_ci, outside}}} at 1 step."""
    from metasweep.analysis.ranking import compute_ranking

    r = compute_ranking(exp_uri, stage=None, inner_steps=1, baseline="maml")
    rows: dict = {}
    for (variant, (_train, shots)), c in r.cells.items():
        paper = PAPER_TABLE1.get(variant, {}).get(shots)
        lo, hi = c.seed_ci if c.seed_ci else (c.mean - c.ci95, c.mean + c.ci95)
        rows.setdefault(variant, {})[shots] = {
            "ours": c.mean, "ours_ci": c.ci95, "seeds_lo": lo, "seeds_hi": hi,
            "paper": paper[0] if paper else None, "paper_ci": paper[1] if paper else None,
            "outside": (paper is not None and not (lo <= paper[0] <= hi)),
        }
    return rows


def render_table1(rows: dict, shots=(5, 10, 20)) -> str:
    """Markdown: ours (mean ± task CI [seed bootstrap interval]) and the paper's, per shot count;
    ✗ marks a paper number outside our across-seed interval."""
    head = "| model | " + " | ".join(f"{k}-shot ours | {k}-shot paper" for k in shots) + " |"
    lines = [head, "|---|" + "---|---|" * len(shots)]
    order = [v for v in PAPER_TABLE1 if v in rows] + sorted(v for v in rows if v not in PAPER_TABLE1)
    for v in order:
        cells = []
        for k in shots:
            c = rows[v].get(k)
            if c is None:
                cells += ["-", "-"]
                continue
            cells.append(f"{fmt(c['ours'], c['ours_ci'])} [{c['seeds_lo']:.3f}, {c['seeds_hi']:.3f}]")
            paper = "-" if c["paper"] is None else fmt(c["paper"], c["paper_ci"]) + (" ✗" if c["outside"] else "")
            cells.append(paper)
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_table1(markdown: str, shots=(5, 10, 20)) -> dict:
    """Inverse of render_table1 (rounded to the printed digits): the report parser."""
    rows: dict = {}
    for line in markdown.splitlines():
        m = TABLE_ROW.match(line.strip())
        if not m or m["model"] == "model":
            continue
        parts = [p.strip() for p in m["cells"].split(" | ")]
        if len(parts) != 2 * len(shots):
            continue
        for i, k in enumerate(shots):
            ours, paper = parts[2 * i], parts[2 * i + 1]
            mo = CELL.match(ours)
            if not mo:
                continue
            mp = CELL.match(paper)
            rows.setdefault(m["model"], {})[k] = {
                "ours": float(mo["mean"]), "ours_ci": float(mo["ci"]), "seeds_lo": float(mo["lo"]),
                "seeds_hi": float(mo["hi"]), "paper": float(mp["mean"]) if mp else None,
                "paper_ci": float(mp["ci"]) if mp else None, "outside": paper.endswith("✗")}
    return rows


def write_report(name: str, scale: str, exp_uri: str, out: Path, spec_text: str, wall: float,
                 command: str) -> Path:
    from metasweep.analysis.plots import make_plot
    from metasweep.analysis.ranking import compute_ranking
    from metasweep.analysis.render import render
    from metasweep.analysis.report import per_seed_table

    env = environment()
    lines = [f"# Reproduction: MT-net paper, {name} ({scale} scale)", ""]
    lines += [f"Command: `{command or f'metasweep reproduce {name} --scale {scale} --out {out}'}`  ",
              f"Wall time: {wall / 60:.1f} min ({wall:.0f} s) on {env['cpu']}, GPU: {env['gpu']}  ",
              "Versions: " + ", ".join(f"{k} {env[k]}" for k in ("metasweep", "git", "python", "torch", "ray",
                                                                 "pyarrow")) + f"  \nDate: {env['date']}", ""]
    figures = []
    if name == "table1":
        rows = table1_rows(exp_uri)
        lines += ["## Table 1 (loss after one inner step; meta-trained 10-shot sine)", "",
                  f"Ours: mean ± 95% CI over the {n_tasks(exp_uri)} shared meta-test tasks (per-task loss averaged "
                  "over seeds), "
                  "then [the bootstrap 95% interval across seeds]. Paper: MT-net Table 1. "
                  "✗ = the paper's mean lies outside our across-seed interval.", "", render_table1(rows)]
        outside = [(v, k) for v, r in rows.items() for k, c in r.items() if c["outside"]]
        lines += [f"Paper numbers outside our interval: {len(outside)} of "
                  f"{sum(1 for r in rows.values() for c in r.values() if c['paper'] is not None)}"
                  + (" (" + ", ".join(f"{v} {k}-shot" for v, k in outside) + ")" if outside else ""), ""]
        lines += ["## Ranking and paired tests (1 inner step)", "",
                  render(compute_ranking(exp_uri, inner_steps=1), "markdown"), ""]
        try:
            lines += ["## After 10 inner steps", "", render(compute_ranking(exp_uri, inner_steps=10), "markdown"), ""]
        except ValueError:
            pass
        figures = [("curves", "Learning curves (meta-validation loss)")]
    elif name == "alpha":
        lines += ["## Loss vs alpha (10-shot, one inner step)", "",
                  "The paper (section 6.2) shows this as a figure without numbers: compare shapes, "
                  "not values.", "", render(compute_ranking(exp_uri, inner_steps=1), "markdown"), ""]
        figures = [("alpha", "10-shot loss vs inner step size alpha")]
    else:
        lines += ["## Fraction of weights updated by the task learner (MT-net, Fig. 4)", "",
                  "At the end of meta-training, per layer and overall: P(update) = sigmoid(zeta) (the authors' "
                  "code updates a row with that probability), the paper's formula E[sigmoid(-zeta)] = 1 - "
                  "P(update) over all logits, and the quantity the authors' code logs (sigmoid(-zeta) averaged "
                  "per layer, then over layers); the paper reports a figure (fewer updated weights for lower "
                  "orders).", "",
                  mask_fraction_table(exp_uri), "",
                  render(compute_ranking(exp_uri, inner_steps=1), "markdown"), ""]
        figures = [("mask-fraction", "Fraction of updated weights per layer vs polynomial order")]
    lines += ["## Per seed (1 inner step)", "",
              "Each seed's mean loss over the shared meta-test tasks (the tables above pool these; a seed "
              "is one meta-training run).", "", per_seed_table(exp_uri, inner_steps=1), ""]
    for kind, title in figures:
        png = out / f"{name}-{kind}.png"
        try:
            make_plot(exp_uri, kind, str(png), stage=None)
            lines += [f"![{title}]({png.name})", ""]
        except ValueError as e:
            lines += [f"(figure {kind}: {e})", ""]
    lines += ["## Spec as run", "", "```yaml", spec_text.rstrip(), "```", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def n_tasks(exp_uri: str) -> int:
    from metasweep.analysis.store import read_dataset

    ev = read_dataset(exp_uri)["eval_tasks"]
    return len(set(ev.column("task_index").to_pylist())) if ev.num_rows else 0


def mask_fraction_table(exp_uri: str) -> str:
    """Markdown: MT-net's learned masks at the end of meta-training, per polynomial order (Fig. 4),
    in both conventions found in the sources, with the seeds' range.

    P(update) = sigmoid(zeta): the authors' code samples a row's mask as the first entry of a
    softmax over [zeta, 0], so a row is updated with probability sigmoid(zeta) (our `mask_fraction`,
    per layer and over all logits). The paper's formula E[e^-zeta / (e^-zeta + 1)] = E[sigmoid(-zeta)]
    = 1 - P(update) over all logits; the authors' code logs sigmoid(-zeta) averaged per layer, then
    over layers (unweighted by rows)."""
    from metasweep.analysis.store import read_dataset

    ds = read_dataset(exp_uri)
    last: dict = {}
    for c in ds["curves"].to_pylist():
        if c["mask_fraction"] is not None and (c["trial_id"] not in last or c["meta_step"] > last[c["trial_id"]]["meta_step"]):
            last[c["trial_id"]] = c
    by_order: dict = {}
    for t in ds["trials"].to_pylist():
        if t["trial_id"] in last and t["status"] == "completed":
            order = json.loads(t["task_options"] or "{}").get("order")
            by_order.setdefault(order, []).append(last[t["trial_id"]])
    if not by_order:
        return "(no masked trial completed)"
    n_cells = max(len(r["mask_fraction_per_cell"] or []) for rs in by_order.values() for r in rs)
    head = ("| order | " + " | ".join(f"layer {i + 1}" for i in range(n_cells))
            + " | overall P(update) | seeds' range | paper's formula E[σ(−ζ)] | authors' log: layers' mean σ(−ζ) | seeds |")
    lines = [head, "|---|" + "---|" * (n_cells + 5)]
    for order in sorted(by_order, key=lambda o: (o is None, o)):
        rs = by_order[order]
        per = [sum(r["mask_fraction_per_cell"][i] for r in rs) / len(rs) for i in range(n_cells)]
        overall = [r["mask_fraction"] for r in rs]
        mean = sum(overall) / len(rs)
        logged = sum(1 - p for p in per) / n_cells
        lines.append(f"| {order} | " + " | ".join(f"{p:.3f}" for p in per)
                     + f" | {mean:.3f} | {min(overall):.3f}–{max(overall):.3f} | {1 - mean:.3f} | {logged:.3f}"
                     + f" | {len(rs)} |")
    return "\n".join(lines)
