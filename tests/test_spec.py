"""Spec files: every mistake is one clear error naming the file, the field and what is allowed."""

import subprocess
import sys
from pathlib import Path

import pytest

from metasweep.sweeps.errors import UserError
from metasweep.sweeps.plan import cells, grid_trial_configs, search_space, stage_test_configs, tune_trial_base
from metasweep.sweeps.spec import load_spec, parse_spec

SHIPPED = sorted((Path(__file__).parents[1] / "sweeps" / "specs").glob("*.yaml"))
OK = "experiment: x\nvariants: [maml]\n"

MALFORMED = [
    ("experiment: x\nvariants: [maml]\nbudgt: {meta_steps: 10}\n", "field budgt: unknown field; did you mean 'budget'? "
     "fields here: plugins, task, model, variants, train_shots, budget, eval"),
    ("experiment: x\nvariants: [maml]\nbudget: {meta_step: 10}\n", "field budget.meta_step: unknown field; did you mean "
     "'meta_steps'? fields here: meta_steps, report_every, meta_batch, inner_steps (docs/SPEC.md)"),
    (OK + "eval: {selcet: best_val}\n", "field eval.selcet: unknown field; did you mean 'select'?"),
    (OK + "eval: {select: best}\n", "field eval.select: Input should be 'last', 'best_val' or 'best_train' (got 'best')"),
    (OK + "zzz: 1\n", "field zzz: unknown field; fields here: plugins, task"),
    ("variants: [maml]\n", "field experiment: required field is missing"),
    ("experiment: x\n", "field variants: required field is missing"),
    ("experiment: x\nvariants: []\n", "field variants: list at least one variant"),
    ("experiment: x\nvariants: [mamll]\n", "field variants[0].preset: unknown preset 'mamll'; did you mean 'maml'? "
     "presets: maml, fomaml"),
    ("experiment: x\nvariants: [maml, {name: mn, presett: mt-net}]\n",  # not "preset: required field is missing"
     "field variants[1].presett: unknown field; did you mean 'preset'? fields here: name, preset"),
    (OK + "defaults: {betta: 0.001}\n", "field defaults.betta: unknown hyper-parameter; did you mean 'beta'? declared: "),
    (OK + "search: {overrides: {maml: {alpah: [0.1]}}}\n",
     "field search.overrides.maml.alpah: unknown hyper-parameter; did you mean 'alpha'? declared: "),
    (OK + "task: {family: sinee}\n", "field task.family: unknown task family 'sinee'; did you mean 'sine'? available: "),
    ("experiment: x\nvariants: [maml, maml]\n", "field variants: variant names must be unique"),
    ("experiment: x\nvariants: [{name: r, preset: reptile, switches: {transform: true}}]\n",
     "field variants[0].switches: variant 'reptile': outer=reptile"),
    ("experiment: x\nvariants: [{name: a, preset: maml, switches: {colour: red}}]\n", "unknown switch(es) colour"),
    (OK + "search:\n  alpha: {low: -0.01, high: 1}\n", "field search.alpha.low: must be > 0"),
    (OK + "search:\n  beta: {low: 0.1, high: 0.01}\n", "field search.beta.high: must be > low (0.1)"),
    # lists of values: each in the domain, once; not beside low/high; a grid runs each combination once
    (OK + "search:\n  alpha: [0.01, -1]\n", "field search.alpha: must be a positive finite number (got -1)"),
    (OK + "search:\n  alpha: [0.01, 0.01]\n", "field search.alpha: lists a value twice: 0.01"),
    (OK + "search:\n  alpha: []\n", "field search.alpha: list at least one value"),
    (OK + "search:\n  alpha: {low: 0.01, high: 0.1, choices: [0.01]}\n",
     "field search.alpha: give either low and high, or a list of values (choices), not both"),
    (OK + "search:\n  alpha: {low: 0.01}\n", "field search.alpha: give low and high (a range), or a list of values"),
    (OK + "search: {overrides: {maml: {beta: [0.001, zero]}}}\n", "field search.overrides.maml.beta: "),
    (OK + "search:\n  alpha: [yes, 0.1]\n", "field search.alpha: must be a list of a positive finite number (got True)"),
    (OK + "search:\n  alpha: 0.01\n", "field search.alpha: a search entry is a range {low: ..., high: ...} or a list "
     "of values such as [0.01]; to give every trial one value, list it alone or set it under defaults:"),
    (OK + "mode: grid\ngrid: {alpha: [0.1]}\nsearch: {alpha: [0.01, 0.1]}\n",
     "field search: applies to mode tune+test only; in mode grid the `grid:` mapping gives"),
    (OK + "search: {trials_per_variant: 0}\n", "field search.trials_per_variant: Input should be greater than or equal to 1"),
    (OK + "search: {overrides: {t-net: {alpha: {low: 0.1, high: 1}}}}\n",
     "search.overrides names variants not in the spec: t-net"),
    (OK + "budget: {meta_steps: 10, report_every: 100}\n", "field budget: report_every (100) must be <= meta_steps (10)"),
    (OK + "budget: {meta_steps: ten}\n", "field budget.meta_steps: Input should be a valid integer"),
    (OK + "eval: {shots: [0, 5]}\n", "field eval.shots: must be a non-empty list of integers >= 1"),
    (OK + "eval: {mask_eval: argmax}\n", "field eval.mask_eval: Input should be 'sample' or 'threshold'"),
    (OK + "task: {family: omniglot2}\n",
     "field task.family: unknown task family 'omniglot2'; did you mean 'omniglot'? available: sine, polynomial"),
    (OK + "task: {family: sine, options: {frequencyy: 1}}\n", "field task.options: unknown option 'frequencyy'"),
    (OK + "scheduler: {type: hyperband}\n", "field scheduler.type: Input should be 'none' or 'asha'"),
    (OK + "resources: {cpu: 0}\n", "field resources.cpu: Input should be greater than 0"),
    (OK + "test: {seeds: [1, 1]}\n", "field test.seeds: must be a non-empty list of distinct integers"),
    (OK + "mode: grid\n", "mode grid needs a 'grid' mapping"),
    (OK + "mode: grid\ngrid: {lr: [0.1]}\n", "field grid: cannot grid over 'lr'"),
    (OK + "mode: grid\ngrid: {alpha: [0.1, -1]}\n", "field grid.alpha: must be a positive finite number (got -1)"),
    (OK + "grid: {alpha: [0.1]}\n", "'grid' only applies with mode: grid"),
    ("experiment: has space\nvariants: [maml]\n", "field experiment: String should match pattern"),
    ("experiment: x\nvariants: [maml\n", "not valid YAML at line"),
    ("- just\n- a list\n", "expected a mapping of fields at the top level"),
    (OK + "model: {hidden: []}\n", "field model.hidden: hidden sizes must be a non-empty list"),
    # a variant's own budget and defaults: the same rules, at the variant's field
    ("experiment: x\nvariants: [{name: m, preset: maml, defaults: {mann_read_scale: 10}}]\n",
     "field variants[0].defaults.mann_read_scale: variant m does not read mann_read_scale; it reads: alpha, beta"),
    ("experiment: x\nvariants: [maml, {name: m, preset: maml, defaults: {meta_batch: 4}}]\n",
     "field variants[1].defaults.meta_batch: set it as variants[1].budget.meta_batch"),
    ("experiment: x\nvariants: [{name: m, preset: maml, defaults: {alpha: -1}}]\n",
     "field variants[0].defaults.alpha: must be a positive finite number (got -1)"),
    ("experiment: x\nvariants: [{name: m, preset: maml, defaults: {alpah: 1}}]\n",
     "field variants[0].defaults.alpah: unknown hyper-parameter; did you mean 'alpha'? declared: alpha"),
    ("experiment: x\nvariants: [{name: m, preset: maml, budget: {meta_steps: 10}}]\n",
     "field variants[0].budget: report_every (100) must be <= meta_steps (10) (report_every: the spec's budget)"),
    ("experiment: x\nvariants: [{name: m, preset: maml, budget: {meta_steps: 10, report_every: 20}}]\n",
     "field variants[0].budget: report_every (20) must be <= meta_steps (10)$"),
    ("experiment: x\nvariants: [{name: m, preset: maml, defaults: {meta_batch: 4}}]\nbudget: {meta_batch: 5}\n"
     "defaults: {cnp_hidden: 3}\n", "field defaults.cnp_hidden: no variant reads cnp_hidden; they read: alpha, beta$"),
    ("experiment: x\nvariants: [{name: m, preset: maml, budget: {meta_batch: 0}}]\n",
     "field variants[0].budget.meta_batch: "),
    ("experiment: x\nvariants: [{name: m, preset: maml, budget: {steps: 10}}]\n",
     "field variants[0].budget.steps: unknown field; did you mean 'meta_steps'? fields here: meta_steps, report_every"),
    ("experiment: x\nvariants: [{name: m, preset: maml, swiches: {order: first}}]\n",
     "field variants[0].swiches: unknown field; did you mean 'switches'?"),
]


@pytest.mark.parametrize("text, words", MALFORMED, ids=[w[:40] for _, w in MALFORMED])
def test_malformed_spec_is_one_clear_error(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_spec(path)
    message = str(e.value)
    assert message.startswith(f"spec {path}")
    assert words.removesuffix("$") in message and (not words.endswith("$") or message.endswith(words[:-1]))


def test_cli_reports_a_bad_spec_with_exit_code_2_and_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(OK + "search:\n  alpha: {low: -0.01, high: 1}\n")
    r = subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", "sweep", str(path)], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: spec {path}, field search.alpha.low: must be > 0")
    assert "Traceback" not in r.stderr and not (tmp_path / "results").exists()


def test_missing_spec_file(tmp_path):
    with pytest.raises(UserError, match="no such file .shipped specs, usable by name: alpha, anil-.*, polynomial, quickstart"):
        load_spec(tmp_path / "nope.yaml")


def test_a_shipped_spec_can_be_named_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec, _, _ = load_spec("quickstart")
    assert spec.experiment == "quickstart"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_specs_are_valid(path, monkeypatch, tmp_path):
    monkeypatch.setenv("OMNIGLOT_ROOT", str(tmp_path))  # the image specs read their data root from these
    monkeypatch.setenv("MINIIMAGENET_ROOT", str(tmp_path))
    spec, _, _ = load_spec(path)
    assert cells(spec)


def test_plan_searches_temperature_only_for_masked_variants(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("experiment: x\nvariants: [maml, mt-net, {name: mfo, preset: m-net, switches: {order: first}}]\n"
                    "search: {overrides: {maml: {alpha: {low: 0.5, high: 2.0}}}}\ntest: {seeds: [0, 1, 2]}\n")
    spec, _, _ = load_spec(path)
    assert set(search_space(spec, "maml")) == {"alpha", "beta"}
    assert search_space(spec, "maml")["alpha"].low == 0.5
    assert set(search_space(spec, "mt-net")) == {"alpha", "beta", "temperature"}
    assert set(search_space(spec, "mfo")) == {"alpha", "beta", "temperature"}
    c = cells(spec)[0]
    assert tune_trial_base(spec, c).eval_split == "val"  # never tune on test tasks
    tests = stage_test_configs(spec, {"maml-k10": {"alpha": 0.7}})
    assert len(tests) == 9 and {t.eval_split for _, t in tests} == {"test"}
    assert [t.alpha for cell, t in tests if cell.variant == "maml"] == [0.7] * 3
    assert tests[-1][1].variant == "m-net" and tests[-1][1].variant_overrides == {"order": "first"}


def test_grid_is_the_product_of_its_fields(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("experiment: g\nmode: grid\nvariants: [maml, t-net]\ngrid: {alpha: [1.0e-4, 0.1, 10], "
                    "inner_steps: [1, 2]}\ntest: {seeds: [0, 1]}\n")
    spec, _, _ = load_spec(path)
    configs = grid_trial_configs(spec)
    assert len(configs) == 2 * 3 * 2 * 2
    assert {t.alpha for _, t in configs} == {1e-4, 0.1, 10.0}  # '1.0e-4' is a float, not YAML 1.1's string


def test_grid_over_a_task_option(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("experiment: p\nmode: grid\ntask: {family: polynomial}\nvariants: [mt-net]\n"
                    "grid: {task.order: [0, 1, 2]}\ntest: {seeds: [0]}\n")
    spec, _, _ = load_spec(path)
    assert [c.task_options["order"] for _, c in grid_trial_configs(spec)] == [0, 1, 2]
    path.write_text("experiment: p\nmode: grid\ntask: {family: sine}\nvariants: [mt-net]\ngrid: {task.order: [1]}\n")
    with pytest.raises(UserError, match="task.order is not an option of task family sine"):
        load_spec(path)
    path.write_text("experiment: p\nmode: grid\ntask: {family: polynomial}\nvariants: [mt-net]\n"
                    "grid: {task.order: [-1]}\n")
    with pytest.raises(UserError, match="grid: task.order=-1: polynomial order must be an integer >= 0"):
        load_spec(path)


def test_any_declared_hyper_parameter_by_name_and_integer_switches():
    """defaults, grids and switches beyond alpha/beta/c: a learner's own hyper-parameter, integers."""
    text = ("experiment: g\nmode: grid\nvariants: [maml, {name: p10, preset: protonet, switches: {train_ways: 10, "
            "distance: cosine}}, matching]\ndefaults: {cosine_scale: 7, beta: 0.002}\n"
            "grid: {attention_scale: [1, 5.0], inner_steps: [1, 2]}\ntest: {seeds: [0]}\n")
    spec, _, _ = parse_spec(text, "g.yaml")
    configs = grid_trial_configs(spec)
    p10 = [c for cell, c in configs if cell.variant == "p10"]
    assert p10[0].variant_overrides == {"train_ways": 10, "distance": "cosine"}
    assert isinstance(p10[0].variant_overrides["train_ways"], int) and p10[0].hparam("cosine_scale") == 7
    assert {c.beta for _, c in configs} == {0.002}
    assert sorted({c.hparam("attention_scale") for cell, c in configs if cell.variant == "matching"}) == [1.0, 5.0]
    assert {c.inner_steps for _, c in configs} == {1, 2} and len(configs) == 3 * 2 * 2
    with pytest.raises(UserError, match="field grid: cannot grid over 'cosine_scale'; allowed: meta_steps, task.OPTION"):
        parse_spec(text.replace("attention_scale: [1, 5.0]", "cosine_scale: [1, 5]").replace(
            "{name: p10, preset: protonet, switches: {train_ways: 10, distance: cosine}}", "protonet").replace(
            "defaults: {cosine_scale: 7, beta: 0.002}", "defaults: {beta: 0.002}"), "g.yaml")


def test_a_grid_variant_runs_its_grid_and_the_others_their_trials_per_variant(tmp_path):
    """Lists for every hyper-parameter maml searches make its tune cell the grid of their combinations;
    mt-net also searches the temperature (a range here), so it keeps `trials_per_variant` TPE trials
    with alpha and beta as categorical choices."""
    from metasweep.sweeps.plan import grid_size, tune_trials

    path = tmp_path / "g.yaml"
    path.write_text("experiment: g\nvariants: [maml, mt-net]\nsearch:\n  trials_per_variant: 5\n"
                    "  alpha: [0.01, 0.04, 0.1]\n  beta: [0.001, 0.002]\n")
    spec = load_spec(path)[0]
    assert (tune_trials(spec, "maml"), tune_trials(spec, "mt-net")) == (6, 5)
    assert grid_size(search_space(spec, "maml")) == 6 and grid_size(search_space(spec, "mt-net")) is None
    assert search_space(spec, "mt-net")["alpha"].choices == [0.01, 0.04, 0.1]
