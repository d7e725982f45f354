"""The extension story end to end (docs/EXTENDING.md): a learner and a task family, each one file
outside the package (tests/plugins/toylearner.py, toyfamily.py), named in a spec's `plugins:` list,
are tuned on their own search space beside MAML, tested on 2 seeds and ranked with paired tests by
a real sweep (the CLI, a local Ray) - with no edit to engines, evaluation, store, ranking or plots."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metasweep.analysis.store import read_dataset
from metasweep.sweeps.errors import UserError
from metasweep.sweeps.spec import parse_spec

PLUGINS = Path(__file__).parent / "plugins"

SPEC = """
experiment: ext
plugins: [toylearner, toyfamily]
task: {family: quadrants, queries: 4, options: {ways: 2}}
variants: [maml, soft-nn]
train_shots: [2]
budget: {meta_steps: 10, report_every: 5, meta_batch: 4}
eval: {shots: [1, 2], inner_steps: [0, 1], tasks: 30, val_tasks: 5}
search:
  trials_per_variant: 2
  alpha: {low: 0.1, high: 1.0}
  nn_scale: {low: 2.0, high: 20.0}
test: {seeds: [0, 1]}
storage: res
"""


def with_plugins() -> dict:
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(PLUGINS)) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def test_a_plugin_learner_is_tuned_on_its_own_space_tested_and_ranked_beside_maml(tmp_path):
    (tmp_path / "ext.yaml").write_text(SPEC)
    r = subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", "sweep", "ext.yaml"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=900, env=with_plugins())
    assert r.returncode == 0, r.stderr[-3000:]
    ds = read_dataset(str(tmp_path / "res" / "ext"))
    trials = ds["trials"].to_pylist()
    assert sorted((t["stage"], t["variant"]) for t in trials) == sorted(
        [(s, v) for s in ("tune", "test") for v in ("maml", "soft-nn") for _ in range(2)])
    assert {t["status"] for t in trials} == {"completed"}
    nn = [t for t in trials if t["variant"] == "soft-nn"]
    for t in nn:  # what it does not read is NULL; its own hyper-parameter is in the JSON column
        assert t["alpha"] is None and t["temperature"] is None and t["inner_steps"] is None
        assert (t["learner_kind"], t["inner_loop"]) == ("toy-metric", False)
        hp = json.loads(t["hparams"])
        assert set(hp) == {"beta", "meta_batch", "nn_scale"} and 2.0 <= hp["nn_scale"] <= 20.0
    for t in (t for t in trials if t["variant"] == "maml"):
        assert 0.1 <= t["alpha"] <= 1.0 and "nn_scale" not in t["hparams"]
    # the test stage retrains the best tune configuration, nn_scale included
    best = min((t for t in nn if t["stage"] == "tune"), key=lambda t: t["final_val_loss"])
    for t in (t for t in nn if t["stage"] == "test"):
        assert json.loads(t["hparams"])["nn_scale"] == json.loads(best["hparams"])["nn_scale"]
        assert (t["hp_source"], t["hp_source_trial"]) == ("tuned", best["trial_id"])
    # no inner loop: its evaluation rows are at inner step 0, whatever the spec asks
    ids = {t["trial_id"] for t in nn}
    steps = {e["inner_steps"] for e in ds["eval_tasks"].to_pylist() if e["trial_id"] in ids}
    assert steps == {0}
    # its own hyper-parameter in the progress lines, the best-configuration table and the sources table
    assert "soft-nn" in r.stderr and "nn_scale=" in r.stderr
    assert "best configuration per variant" in r.stdout and "nn_scale=" in r.stdout
    assert "test stage: configuration of each cell" in r.stdout and "tuned" in r.stdout
    # ranked beside MAML with paired tests on the shared test tasks
    ranked = subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", "rank", "res/ext", "--metric", "accuracy"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300, env=with_plugins())
    assert ranked.returncode == 0, ranked.stderr[-2000:]
    assert "soft-nn" in ranked.stdout and "paired tests against maml" in ranked.stdout


@pytest.fixture
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))


def test_a_plugins_hyper_parameter_is_a_field_of_the_spec_like_any_other(on_path):
    """defaults, search ranges and per-variant overrides by name, checked against its declared domain."""
    spec, _, _ = parse_spec(SPEC + "defaults: {nn_scale: 5}\n", "ext.yaml")
    from metasweep.sweeps.plan import cells, search_space, stage_test_configs

    assert set(search_space(spec, "soft-nn")) == {"beta", "nn_scale"} and set(search_space(spec, "maml")) == {"alpha",
                                                                                                            "beta"}
    configs = {c.variant: cfg for c, cfg in stage_test_configs(spec, {})}
    assert configs["soft-nn"].hparam("nn_scale") == 5 and configs["soft-nn"].plugins == ("toylearner", "toyfamily")
    assert len(cells(spec)) == 2
    bad = {
        "search:\n  nn_scale: {low: -5, high: 5, log: false}\n":
            "field search.nn_scale: the range of nn_scale [-5.0, 5.0] leaves its domain: nn_scale must be a positive",
        "defaults: {nn_scale: 0}\n": "field defaults.nn_scale: must be a positive finite number (got 0)",
        "search:\n  overrides: {maml: {nn_scale: {low: 1, high: 2}}}\n":
            "field search.overrides.maml.nn_scale: maml does not search nn_scale; it searches: alpha, beta",
    }
    base = SPEC.replace("search:\n  trials_per_variant: 2\n  alpha: {low: 0.1, high: 1.0}\n  nn_scale: {low: 2.0, "
                        "high: 20.0}\n", "")
    for extra, words in bad.items():
        with pytest.raises(UserError) as e:
            parse_spec(base + extra, "ext.yaml")
        assert words in str(e.value), str(e.value)
    with pytest.raises(UserError, match="field plugins.0.: plugin 'no_such_plugin' cannot be imported"):
        parse_spec(base.replace("[toylearner, toyfamily]", "[no_such_plugin]"), "ext.yaml")
