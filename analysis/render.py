"""A Ranking as text (rich), Markdown, LaTeX or CSV. Formatting only: nothing here reads files or
computes a statistic.

Every format carries the same facts: the table (rows x settings, best and ties marked, average
rank, seeds), the paired tests against the baseline, the hyper-parameters each (row, train shots)
cell ran with (when a test stage chose them per cell), and the notes — among them which cells ran
on the spec's defaults instead of tuned values (a `note` column in CSV).
"""

from __future__ import annotations

import csv
import io
import json

from .labels import distinct_digits, format_value, setting_text
from .ranking import Cell, Ranking, several_train
from .schema import HP_COLUMNS

FORMATS = ("text", "markdown", "latex", "csv")
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}"}


def _cell_text(c: Cell | None, fmt: str) -> str:
    if c is None:
        return "-"
    if c.nonfinite_tasks:
        return f"not finite ({c.nonfinite_tasks}/{c.n_tasks} tasks)"  # the adapted loss; not the status diverged
    digits = 3 if abs(c.mean) < 100 else 1
    text = f"{c.mean:.{digits}f} ± {c.ci95:.{digits}f}"
    if fmt == "markdown":
        return f"**{text}**" if c.best else (text + " †" if c.tied_with_best else text)
    if fmt == "latex":
        text = text.replace("±", r"$\pm$")
        return rf"\textbf{{{text}}}" if c.best else (text + r"$^\dagger$" if c.tied_with_best else text)
    mark = "*" if c.best else ("†" if c.tied_with_best else "")
    return text + (f" {mark}" if mark else "")


def latex_escape(text: str) -> str:
    """Row labels carry hyper-parameter names such as meta_batch: escape LaTeX's specials."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _setting_label(st: tuple[int, int], r: Ranking) -> str:
    return setting_text(*st, several_train(r.settings))


def table_rows(r: Ranking, fmt: str = "text") -> tuple[list[str], list[list[str]]]:
    """The ranking table: a row per variant (+ grid point), a column per setting, then the average
    rank and `seeds` = completed seeds per cell / trials per train-shots count."""
    header = ["variant"] + [_setting_label(s, r) for s in r.settings] + ["avg rank", "seeds"]
    n_train = max(1, len({s[0] for s in r.settings}))
    body = []
    for v in r.variants:
        seeds = sorted({r.cells[(v, s)].n_seeds for s in r.settings if (v, s) in r.cells})
        total = sum(r.status_counts.get(v, {}).values())
        body.append([latex_escape(v) if fmt == "latex" else v] + [_cell_text(r.cells.get((v, s)), fmt) for s in r.settings]
                    + [f"{r.avg_rank[v]:.2f}" if v in r.avg_rank else "-",
                       f"{'/'.join(map(str, seeds)) or 0}/{total // n_train}"])
    return header, body


def paired_rows(r: Ranking) -> tuple[list[str], list[list[str]]]:
    """Each row against its baseline row, per setting; a `baseline row` column when grid points
    make the baseline's rows differ."""
    grid = any(p["baseline"] != r.baseline for p in r.paired)
    header = ["setting", "variant", *(["baseline row"] if grid else []), f"Δ vs {r.baseline}", "95% CI",
              "P(better)", "p (Wilcoxon)", "p (Holm)"]
    body = []
    for p in r.paired:
        better = p["prob_improvement"] if r.lower_is_better else 1 - p["prob_improvement"]
        body.append([_setting_label(p["setting"], r), p["variant"], *([p["baseline"]] if grid else []),
                     f"{p['mean_diff']:+.3f}", f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]", f"{better:.2f}",
                     f"{p['p_wilcoxon']:.2g}", f"{p['p_holm']:.2g}" + (" *" if p["p_holm"] < 0.05 else "")])
    return header, body


def config_rows(r: Ranking) -> tuple[list[str], list[list[str]], str]:
    """The hyper-parameters of each (row, train shots) cell: header, body, and a line with the
    values every cell shares (left out of the columns). Empty when no cell chose them."""
    if not r.configs:
        return [], [], ""
    keys = list(dict.fromkeys(k for k in (*HP_COLUMNS, *sorted({k for c in r.configs for k in c.hparams}))
                              if any(k in c.hparams for c in r.configs)))
    values = {k: [c.hparams.get(k) for c in r.configs] for k in keys}
    common = [k for k in keys if len({json.dumps(v) for v in values[k]}) == 1 and len(r.configs) > 1]
    shown = [k for k in keys if k not in common]
    digits = {k: distinct_digits({v for v in values[k] if v is not None}) for k in keys}
    same = ", ".join(f"{k}={format_value(values[k][0], digits[k])}" for k in common)
    same = f"hyper-parameters the same in every cell: {same}" if same else ""
    if not shown and not any(c.hp_source for c in r.configs):  # nothing but the shared values to show
        return [], [], same
    header = ["variant", "train shots", "source", *shown, "from trial"]
    body = [[c.row, str(c.train_shots), c.hp_source or "-",
             *(format_value(c.hparams[k], digits[k]) if k in c.hparams else "-" for k in shown), c.hp_source_trial or "-"]
            for c in r.configs]
    return header, body, same


def caption(r: Ranking) -> str:
    direction = "lower is better" if r.lower_is_better else "higher is better"
    text = (f"{r.metric} after {r.inner_steps} inner step(s), stage {r.stage}; mean ± 95% CI over evaluation "
            f"tasks (per-task values averaged over seeds; {direction}). Best per column in bold (* in plain "
            f"text); † = not significantly worse than the best (Holm-corrected Wilcoxon "
            f"signed-rank on shared tasks, α = 0.05).")
    if r.friedman:
        text += (f" Friedman test over {r.friedman['n_settings']} settings: χ² = {r.friedman['statistic']:.2f}, "
                 f"p = {r.friedman['pvalue']:.3g}.")
    return text


CONFIG_TITLE = "hyper-parameters per (variant, train shots) cell"


def render(r: Ranking, fmt: str = "text", configs: bool = True) -> str | None:
    """The ranking as Markdown, LaTeX or CSV text (None for "text": print_ranking prints it);
    `configs=False` (Markdown): without the hyper-parameter table (a report prints it once)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be text, markdown, latex or csv (got {fmt!r})")
    if fmt == "markdown":
        return _markdown(r, configs)
    return {"csv": _csv, "latex": _latex, "text": lambda _: None}[fmt](r)


def _csv(r: Ranking) -> str:
    """One line per (row, setting) cell, with the cell's hyper-parameters and its note."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["variant", "train_shots", "eval_shots", "inner_steps", "mean", "ci95", "n_tasks", "n_seeds",
                "seed_ci_low", "seed_ci_high", "best", "tied_with_best", "avg_rank", "hp_source", "hp_source_trial",
                "hparams", "note"])
    for (v, st), c in sorted(r.cells.items()):
        configs = [cf for cf in r.configs if (cf.row, cf.train_shots) == (v, st[0])]
        hp = [cf.hparams for cf in configs]
        w.writerow([v, st[0], st[1], r.inner_steps, c.mean, c.ci95, c.n_tasks, c.n_seeds,
                    c.seed_ci[0] if c.seed_ci else "", c.seed_ci[1] if c.seed_ci else "", c.best,
                    c.tied_with_best, r.avg_rank.get(v, ""), "|".join(cf.hp_source or "" for cf in configs),
                    "|".join(cf.hp_source_trial or "" for cf in configs),
                    json.dumps(hp[0] if len(hp) == 1 else hp, sort_keys=True) if hp else "",
                    r.untuned.get((v, st[0]), "")])
    return buf.getvalue()


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(row) + " |" for row in body)]


def _markdown(r: Ranking, configs: bool = True) -> str:
    lines = [*_md_table(*table_rows(r, "markdown")), "", caption(r)]
    pheader, pbody = paired_rows(r)
    if pbody:
        lines += ["", *_md_table(pheader, pbody)]
    cheader, cbody, common = config_rows(r) if configs else ([], [], "")
    if cbody:
        lines += ["", f"{CONFIG_TITLE}:", "", *_md_table(cheader, cbody)]
    if common:
        lines += ["", common]
    lines += [f"- {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


def _latex_table(header: list[str], body: list[list[str]], text: str) -> list[str]:
    """A table environment; `text` (the caption) is escaped here, header and body already are."""
    text = (latex_escape(text).replace("α", r"$\alpha$").replace("χ²", r"$\chi^2$").replace("±", r"$\pm$")
            .replace("†", r"$^\dagger$"))
    return [r"\begin{table}[t]", r"\centering", rf"\begin{{tabular}}{{l{'c' * (len(header) - 1)}}}", r"\toprule",
            " & ".join(header) + r" \\", r"\midrule", *(" & ".join(row) + r" \\" for row in body), r"\bottomrule",
            r"\end{tabular}", rf"\caption{{{text}}}", r"\end{table}"]


def _latex(r: Ranking) -> str:
    text = caption(r) + "".join(f" Note: {n}." for n in r.untuned.values())
    cheader, cbody, common = config_rows(r)
    lines = _latex_table(*table_rows(r, "latex"), text + (f" {common}." if common and not cbody else ""))
    if cbody:
        escaped = [[latex_escape(x) for x in row] for row in cbody]
        lines += _latex_table([latex_escape(h) for h in cheader], escaped,
                              CONFIG_TITLE + (f"; {common}" if common else ""))
    lines += [f"% note: {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


def print_ranking(r: Ranking, console) -> None:
    """The ranking, the paired tests, the per-cell hyper-parameters and the notes on a rich Console
    (sweeps.console.make_console: never cut when the output is a file or a pipe)."""
    from rich.table import Table
    from rich.text import Text

    def table(title: str, header: list[str], body: list[list[str]], left: int, caption_text: str | None = None):
        t = Table(title=title, caption=caption_text)
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i < left else "right")
        for row in body:
            t.add_row(*(Text(x) for x in row))
        console.print(t)

    table(f"ranking: {r.metric} (stage {r.stage}, {r.inner_steps} inner step(s))", *table_rows(r, "text"), 1,
          caption(r))
    pheader, pbody = paired_rows(r)
    if pbody:
        table(f"paired tests against {r.baseline} on shared tasks (Δ = row − {r.baseline}; {r.metric}: "
              f"{'lower' if r.lower_is_better else 'higher'} is better)", pheader, pbody,
              pheader.index(f"Δ vs {r.baseline}"))
    cheader, cbody, common = config_rows(r)
    if cbody:
        table(CONFIG_TITLE, cheader, cbody, 3)
    if common:
        console.print(common, markup=False, highlight=False)
    for n in r.notes:
        console.print(f"note: {n}", markup=False, highlight=False)
