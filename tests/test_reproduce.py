"""`metasweep reproduce`: a smoke-scale Table 1 on a real local Ray yields a complete report."""

import subprocess
import sys

from metasweep.sweeps.reproduce import PAPER_TABLE1, parse_table1, render_table1


def test_smoke_table1_report_has_every_row_and_column(tmp_path):
    out = tmp_path / "t1"
    r = subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", "reproduce", "table1", "--scale", "smoke",
                        "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    text = (out / "report.md").read_text()
    rows = parse_table1(text)
    assert set(rows) == set(PAPER_TABLE1)  # all 7 variants of the paper's table
    for variant, by_shots in rows.items():
        assert set(by_shots) == {5, 10, 20}
        for k, c in by_shots.items():
            assert c["paper"] == PAPER_TABLE1[variant][k][0]
            assert c["seeds_lo"] <= c["ours"] <= c["seeds_hi"]
            assert c["outside"] == (not c["seeds_lo"] <= c["paper"] <= c["seeds_hi"])
    assert "Wall time:" in text and "torch" in text and "```yaml" in text
    assert (out / "table1-curves.png").stat().st_size > 10_000
    assert "![" in text
    # per-seed values: each seed's mean loss over the tasks at one inner step, from the rows themselves
    from metasweep.analysis.store import read_dataset

    ds = read_dataset(str(out / "results" / "table1-smoke"))
    trials = {t["trial_id"]: t for t in ds["trials"].to_pylist()}
    ev = [e for e in ds["eval_tasks"].to_pylist() if e["inner_steps"] == 1 and e["shots"] == 10]
    section = text.split("## Per seed (1 inner step)")[1].split("##")[0]
    assert "| row | shots | seed 0 | seed 1 | spread |" in section
    for variant in PAPER_TABLE1:
        want = []
        for seed in (0, 1):
            losses = [e["loss"] for e in ev if trials[e["trial_id"]]["variant"] == variant
                      and trials[e["trial_id"]]["seed"] == seed]
            want.append(sum(losses) / len(losses))
        line = next(li for li in section.splitlines() if li.startswith(f"| {variant} | 10 |"))
        got = [float(x) for x in line.strip("| ").split(" | ")[2:]]
        assert got == [round(want[0], 3), round(want[1], 3), round(abs(want[0] - want[1]), 3)], (variant, got, want)


def test_report_table_parser_round_trips():
    rows = {"maml": {5: {"ours": 1.234, "ours_ci": 0.1, "seeds_lo": 1.1, "seeds_hi": 1.3, "paper": 1.07,
                         "paper_ci": 0.11, "outside": True},
                     10: {"ours": 0.7, "ours_ci": 0.05, "seeds_lo": 0.6, "seeds_hi": 0.8, "paper": 0.71,
                          "paper_ci": 0.07, "outside": False},
                     20: {"ours": 0.5, "ours_ci": 0.04, "seeds_lo": 0.45, "seeds_hi": 0.55, "paper": 0.5,
                          "paper_ci": 0.05, "outside": False}},
            "mt-net-fo": {5: {"ours": 0.9, "ours_ci": 0.1, "seeds_lo": 0.8, "seeds_hi": 1.0, "paper": None,
                              "paper_ci": None, "outside": False}}}
    md = render_table1(rows)
    parsed = parse_table1(md)
    assert parsed["maml"] == rows["maml"]
    assert parsed["mt-net-fo"][5]["paper"] is None
    assert render_table1(parsed) == md


def test_the_authors_polynomial_settings_are_the_shipped_spec_with_their_alpha_and_coefficients(tmp_path):
    import yaml

    from metasweep.sweeps.reproduce import SPECS, reproduction_spec

    paper, _ = reproduction_spec("polynomial", "full", [0], tmp_path)
    authors, text = reproduction_spec("polynomial-authors", "full", [0], tmp_path)
    assert yaml.safe_load(text) == authors
    assert authors["task"]["options"]["coef_decay"] == 0.5 and paper["task"]["options"]["coef_decay"] == 1.0
    assert (authors["defaults"]["alpha"], paper["defaults"]["alpha"]) == (0.001, 0.01)
    shipped = yaml.safe_load((SPECS / "polynomial.yaml").read_text())
    assert shipped["defaults"]["alpha"] == 0.01  # the shipped spec itself is untouched
    for key in ("grid", "budget", "eval", "variants"):
        assert authors[key] == paper[key]
