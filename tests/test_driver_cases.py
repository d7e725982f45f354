"""Issue 11, the driver's cases, each as a kind (the issue's input, plus a variant of the same kind):
bad input is one line and exit 2 before any trial (impossible search bounds, paths, sizes); a
crash in any part of a trial is an `errored` row with its message; an untuned cell fails the sweep
or falls back as the spec says, and the sweep says where each cell's configuration came from; a
stage run with other inputs runs again (saying so) or is refused, never silently reused.

The sweeps here run in this process on one local Ray session for the module (trials on 2 CPUs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metasweep.analysis.store import read_dataset, read_raw, read_trials
from metasweep.sweeps.errors import UserError
from metasweep.sweeps.spec import load_spec, parse_spec

PLUGINS = Path(__file__).parent / "plugins"


def cli(*args, cwd=None, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def one_line_exit_2(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr.strip()


SINE = """
experiment: {name}
variants: [maml]
train_shots: [5]
budget: {{meta_steps: 20, report_every: 10, meta_batch: 4}}
eval: {{shots: [5], inner_steps: [1], tasks: 10, val_tasks: 5}}
search: {{trials_per_variant: 2, alpha: {{low: 0.01, high: 0.1}}}}
test: {{seeds: [0, 1]}}
storage: res
"""


# ------------------------------------------------------------------------------------------ case 1


def test_impossible_search_bounds_are_an_error_at_load(tmp_path):
    """The issue's input: a linear alpha range below zero loaded, and every tune trial errored."""
    spec = tmp_path / "s.yaml"
    spec.write_text(SINE.format(name="neg").replace("alpha: {low: 0.01, high: 0.1}",
                                                    "alpha: {low: -1.0, high: -0.5, log: false}"))
    line = one_line_exit_2(cli("sweep", str(spec), cwd=tmp_path))
    assert line == (f"error: spec {spec}, field search.alpha: the range of alpha [-1.0, -0.5] leaves its domain: "
                    "alpha must be a positive finite number")
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("extra, words", [
    ("search: {beta: {low: 0.01, high: 0.01, log: false}}", "field search.beta.high: must be > low (0.01)"),
    ("search: {temperature: {low: 0.5, high: 2}}", "field search.temperature: no variant of the spec searches "
                                                   "temperature; they search: alpha, beta"),
    ("search: {overrides: {maml: {inner_steps: {low: 1, high: 3}}}}",
     "field search.overrides.maml.inner_steps: maml does not search inner_steps; it searches: alpha, beta"),
    ("variants: [maml, matching]\nsearch: {overrides: {matching: {attention_scale: {low: 0, high: 10, log: false}}}}",
     "field search.overrides.matching.attention_scale: the range of attention_scale [0.0, 10.0] leaves its domain: "
     "attention_scale must be a positive finite number"),
    ("search: {alpha: {low: 0.001, high: .inf}}", "field search.alpha.high: must be a finite number"),
    ("mode: grid\ngrid: {inner_steps: [1, 2.5]}", "field grid.inner_steps: must be an integer >= 1 (got 2.5)"),
    ("defaults: {temperature: 2}", "field defaults.temperature: no variant reads temperature"),
    ("defaults: {inner_steps: 2}", "field defaults.inner_steps: set it as budget.inner_steps"),
    ("search: {alpah: {low: 0.1, high: 1}}",
     "field search.alpah: unknown field; did you mean 'alpha'? fields: overrides, sampler_seed"),
])
def test_whatever_cannot_give_a_valid_trial_is_an_error_at_load(extra, words):
    """Same kind: empty ranges, ranges of hyper-parameters nobody searches, ranges outside a domain
    (also a bounded one of an override), integer fields given fractions, defaults nobody reads."""
    text = "experiment: x\n" + ("" if extra.startswith("variants") else "variants: [maml]\n") + extra + "\n"
    with pytest.raises(UserError) as e:
        parse_spec(text, "x.yaml")
    assert str(e.value).startswith("spec x.yaml, field ") and words in str(e.value), str(e.value)


# ------------------------------------------------------------------------------------------ case 3: paths


IMAGES = """
experiment: img
task: {{family: omniglot, queries: {queries}, options: {{data_root: {root}, ways: 5, splits: [200, 40, 52],
        cache_dir: cache}}}}
variants: [maml]
train_shots: [1]
budget: {{meta_steps: 10, report_every: 10, meta_batch: 2}}
eval: {{shots: {shots}, inner_steps: [1], tasks: 10, val_tasks: 5}}
mode: grid
grid: {{alpha: [0.4]}}
test: {{seeds: [0]}}
storage: res
"""


def test_paths_in_a_spec_are_relative_to_the_spec_file_and_variables_must_be_set(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "s.yaml").write_text(IMAGES.format(queries=1, root="data/omni", shots=[1]))
    monkeypatch.chdir(tmp_path)  # not the spec's folder
    spec, _, _ = load_spec(folder / "s.yaml")
    assert spec.task.options["data_root"] == str(folder / "data" / "omni")
    assert spec.task.options["cache_dir"] == str(folder / "cache") and spec.storage == str(folder / "res")
    monkeypatch.delenv("NOPE_ROOT", raising=False)
    (folder / "v.yaml").write_text(IMAGES.format(queries=1, root="$NOPE_ROOT/omni", shots=[1]))
    with pytest.raises(UserError, match=r"field task.options.data_root: \$NOPE_ROOT is not set"):
        load_spec(folder / "v.yaml")
    monkeypatch.setenv("NOPE_ROOT", "/somewhere")
    assert load_spec(folder / "v.yaml")[0].task.options["data_root"] == "/somewhere/omni"


def test_a_shipped_spec_with_its_variable_unset_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMNIGLOT_ROOT"}
    line = one_line_exit_2(cli("sweep", "omniglot-smoke", cwd=tmp_path, env=env))
    assert "field task.options.data_root: $OMNIGLOT_ROOT is not set" in line


def test_data_folders_and_sizes_are_checked_before_the_first_trial(tmp_path, omniglot_root):
    (tmp_path / "empty").mkdir()
    for root, words in ((tmp_path / "missing", "missing: no such folder"),
                        (tmp_path / "empty", "no images_background*/images_evaluation* folder; expected Omniglot's "
                                             "layout: DIR/images_background/<alphabet>/<character>/*.png")):
        (tmp_path / "s.yaml").write_text(IMAGES.format(queries=1, root=root, shots=[1]))
        line = one_line_exit_2(cli("sweep", "s.yaml", cwd=tmp_path))
        assert line.startswith(f"error: spec s.yaml, field task.options.data_root: {root}") and words in line, line
    # sizes: 1 + 15 images per class to train, 10 + 15 to evaluate; a class has 20
    (tmp_path / "s.yaml").write_text(IMAGES.format(queries=15, root=omniglot_root, shots=[1, 10]))
    line = one_line_exit_2(cli("sweep", "s.yaml", cwd=tmp_path))
    assert line.startswith("error: spec s.yaml, field eval.shots: maml, train shots 1: omniglot test split: a class "
                           "has 20 images, fewer than shots + queries = 10 + 15 = 25 per class"), line
    # more ways than a split has classes: the field is the ways (the task's, or a learner's train_ways switch)
    (tmp_path / "s.yaml").write_text(IMAGES.format(queries=1, root=omniglot_root, shots=[1]).replace("ways: 5", "ways: 45"))
    line = one_line_exit_2(cli("sweep", "s.yaml", cwd=tmp_path))
    assert line.startswith("error: spec s.yaml, field task.options.ways: maml, train shots 1: omniglot val split has "
                           "40 classes, fewer than ways=45"), line
    (tmp_path / "s.yaml").write_text(IMAGES.format(queries=1, root=omniglot_root, shots=[1]).replace(
        "variants: [maml]", "variants: [maml, {name: p, preset: protonet, switches: {train_ways: 201}}]"))
    line = one_line_exit_2(cli("sweep", "s.yaml", cwd=tmp_path))
    assert line.startswith("error: spec s.yaml, field variants[1].switches.train_ways: p, train shots 1: learner "
                           "'protonet': training episodes of train_ways=201"), line
    assert not (tmp_path / "res" / "img" / "trials").exists()


# ------------------------------------------------------------------------------------------ case 4: metasweep train


def test_train_checks_sizes_before_training(tmp_path, omniglot_root):
    """The issue's input: trained, then died at evaluation with a traceback and no rows."""
    common = ["train", "--task", "omniglot", "--data-root", str(omniglot_root), "--splits", "200,40,52",
              "--cache-dir", str(tmp_path / "cache"), "--train-shots", "1", "--out", str(tmp_path / "x")]
    line = one_line_exit_2(cli(*common, "--queries", "15", "--eval-shots", "1,5,10"))
    assert line.startswith("error: --eval-shots: maml, train shots 1: omniglot test split: a class has 20 images, "
                           "fewer than shots + queries = 10 + 15 = 25"), line
    line = one_line_exit_2(cli(*common, "--queries", "1", "--variant", "protonet", "--switch", "train_ways=300"))
    assert line.startswith("error: --switch: protonet, train shots 1: learner 'protonet': training episodes of "
                           "train_ways=300"), line
    line = one_line_exit_2(cli(*common, "--queries", "1", "--ways", "250"))
    assert line.startswith("error: --ways: maml, train shots 1: omniglot train split has 200 classes, fewer than "
                           "ways=250"), line
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("variant, phase", [("crash-outputs", "training: RuntimeError: boom"),
                                            ("crash-write", "writing: ")])
def test_train_on_a_crashing_trial_exits_1_with_one_line_and_keeps_its_rows(tmp_path, variant, phase):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (os.environ.get("PYTHONPATH"), str(PLUGINS))))}
    r = cli("train", "--plugin", "crashy", "--variant", variant, "--meta-steps", "20", "--report-every", "10",
            "--meta-batch", "4", "--val-tasks", "5", "--eval-tasks", "5", "--out", str(tmp_path / "x"), env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: trial errored: {phase}"), r.stderr
    row = read_trials(str(tmp_path / "x")).to_pylist()
    assert [t["status"] for t in row] == ["errored"] and row[0]["error"].startswith(phase)


# ------------------------------------------------------------------------------------------ real sweeps, one Ray


@pytest.fixture(scope="module")
def ray_local():
    import ray

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (old, str(PLUGINS))))  # Ray's workers import plugins
    sys.path.insert(0, str(PLUGINS))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    sys.path.remove(str(PLUGINS))
    if old is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = old


def sweep_of(tmp_path, text: str, **kw) -> str:
    from metasweep.sweeps.run import sweep

    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return sweep(str(path), **kw)


def test_an_untuned_cell_fails_the_sweep_by_default_and_keeps_the_rows(ray_local, tmp_path):
    """Every tune trial of the cell diverges (alpha 1e20-1e25): no test stage on the defaults."""
    from metasweep.sweeps.stages import StageFailed

    text = SINE.format(name="untuned").replace("{low: 0.01, high: 0.1}", "{low: 1.0e20, high: 1.0e25}")
    with pytest.raises(StageFailed) as e:
        sweep_of(tmp_path, text)
    assert "tune-maml-k5: no finite result (2 diverged)" in str(e.value)
    assert "set test.untuned: fallback" in str(e.value)
    trials = read_trials(str(tmp_path / "res" / "untuned")).to_pylist()
    assert sorted((t["stage"], t["status"]) for t in trials) == [("tune", "diverged")] * 2


def test_an_untuned_cell_can_fall_back_and_every_cell_says_where_its_configuration_came_from(ray_local, tmp_path,
                                                                                              capsys):
    text = SINE.format(name="fallback").replace("variants: [maml]", "variants: [maml, t-net]").replace(
        "test: {seeds: [0, 1]}", "test: {seeds: [0], untuned: fallback}").replace(
        "alpha: {low: 0.01, high: 0.1}}", "alpha: {low: 0.01, high: 0.1}, overrides: {t-net: {alpha: {low: 1.0e20, "
                                          "high: 1.0e25}}}}")
    sweep_of(tmp_path, text)
    trials = read_trials(str(tmp_path / "res" / "fallback")).to_pylist()
    sources = {t["variant"]: (t["hp_source"], t["alpha"]) for t in trials if t["stage"] == "test"}
    assert sources["t-net"] == ("fallback", 0.01) and sources["maml"][0] == "tuned"
    printed = capsys.readouterr()
    assert "tune-t-net-k5: no finite result (2 diverged)" in printed.err
    table = printed.out[printed.out.index("test stage: configuration of each cell"):]
    assert "fallback (the spec's defaults, because its cell's tune stage had no finite result)" in table
    assert "tuned (the best trial of its cell's tune stage)" in table


def test_a_stage_in_which_every_trial_errored_fails_the_sweep_with_a_summary(ray_local, tmp_path):
    from metasweep.sweeps.stages import StageFailed

    text = SINE.format(name="allerr").replace("variants: [maml]", "plugins: [crashy]\nvariants: [crash-outputs]")
    with pytest.raises(StageFailed) as e:
        sweep_of(tmp_path, text)
    assert "tune-crash-outputs-k5: every trial errored (2)" in str(e.value)
    assert "2 x training: RuntimeError: boom: this learner always fails" in str(e.value)


@pytest.mark.parametrize("stage", ["tune", "all"])
def test_a_failed_cell_among_tune_cells_run_together_leaves_the_others_done(ray_local, tmp_path, capsys, stage):
    """Bundled tune cells share one Tuner (`--stage tune`), and with the test stage too (all stages:
    sweeps.pipeline): one cell whose every trial errored fails the sweep, naming it, while the cell that
    ran well is done in the manifest (a later sweep keeps it) with its rows - and, in one Tuner with the
    test stage, tested (the failed cell is not)."""
    import json

    from metasweep.sweeps.stages import StageFailed

    text = SINE.format(name="mixed").replace("variants: [maml]", "plugins: [crashy]\nvariants: [maml, crash-outputs]")
    text += "bundle: {size: 2}\nmax_concurrent: 2\n"
    with pytest.raises(StageFailed) as e:
        sweep_of(tmp_path, text, stage=stage)
    err = capsys.readouterr().err
    assert ("tune: the 2 cells above in one Tuner" in err) == (stage == "tune")
    assert ("tune and test in one Tuner (Ray Tune's state: ray/stages-" in err) == (stage == "all")
    assert "tune-crash-outputs-k5: every trial errored (2)" in str(e.value) and "maml" not in str(e.value)
    exp = tmp_path / "res" / "mixed"
    manifest = json.loads((exp / "manifest.json").read_text())
    assert manifest["cells"].get("tune-maml-k5") == "done" and "tune-crash-outputs-k5" not in manifest["cells"]
    statuses = sorted((t["stage"], t["variant"], t["status"]) for t in read_trials(str(exp)).to_pylist())
    tested = [("test", "maml", "completed")] * 2 if stage == "all" else []
    assert statuses == tested + [("tune", "crash-outputs", "errored")] * 2 + [("tune", "maml", "completed")] * 2
    if stage == "all":
        assert manifest["inputs"]["test"].keys() == {"maml-k5"} and manifest["stages_tuner"]["done"] is True


def test_a_crash_in_any_part_of_a_trial_is_an_errored_row_never_stopped_early(ray_local, tmp_path):
    """Training, the trainable writing its rows, a process that dies (Ray restarts it from its
    checkpoint, it dies again, Ray gives up): each an `errored` row with its message; the others run."""
    text = SINE.format(name="crash").replace("variants: [maml]", "plugins: [crashy]\nvariants: [maml, crash-outputs, "
                                             "crash-write, crash-exit]").replace(
        "meta_steps: 20", "meta_steps: 30") + "mode: grid\ngrid: {alpha: [0.05]}\nmax_failures: 1\n"
    text = text.replace("test: {seeds: [0, 1]}", "test: {seeds: [0]}")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("search:"))  # a grid has no search
    sweep_of(tmp_path, text)
    exp = str(tmp_path / "res" / "crash")
    rows = {t["variant"]: t for t in read_trials(exp).to_pylist()}
    assert rows["maml"]["status"] == "completed"
    assert {v: rows[v]["status"] for v in ("crash-outputs", "crash-write", "crash-exit")} == dict.fromkeys(
        ("crash-outputs", "crash-write", "crash-exit"), "errored")
    assert rows["crash-outputs"]["error"].startswith("training: RuntimeError: boom")
    assert rows["crash-write"]["error"].startswith("trial: ")  # its rows could not be written
    assert rows["crash-exit"]["error"].startswith("trial process: ") and rows["crash-exit"]["attempt"] >= 1
    raw = read_raw(exp, "trials").to_pylist()
    assert "stopped_early" not in {r["status"] for r in raw}
    # the restarted trial's running rows (one per report before it died) are superseded by the errored one
    assert [r["status"] for r in raw if r["variant"] == "crash-exit" and r["attempt"] == rows["crash-exit"]["attempt"]] \
        == ["errored"]


def test_a_stage_run_with_other_inputs_runs_again_and_says_so(ray_local, tmp_path, capsys):
    """The issue's input: `--stage test` (no tuning yet: the defaults), then the whole sweep: the tune
    stage ran but the test stage and the ranking stayed on the defaults, silently."""
    exp = sweep_of(tmp_path, SINE.format(name="inputs"), stage="test")
    first = read_trials(exp).to_pylist()
    assert {(t["stage"], t["hp_source"], t["alpha"]) for t in first} == {("test", "defaults", 0.01)}
    sweep_of(tmp_path, SINE.format(name="inputs"))
    assert "test: cell(s) maml-k5 ran with other inputs" in capsys.readouterr().err
    trials = read_trials(exp).to_pylist()
    test = [t for t in trials if t["stage"] == "test"]
    best = min((t for t in trials if t["stage"] == "tune"), key=lambda t: t["final_val_loss"])
    assert len(test) == 2 and {(t["hp_source"], t["alpha"]) for t in test} == {("tuned", best["alpha"])}
    assert not {t["trial_id"] for t in first} & {t["trial_id"] for t in trials}  # the old rows are set aside
    evals = read_dataset(exp)["eval_tasks"].to_pylist()
    assert len([e for e in evals if e["split"] == "test"]) == 2 * 10  # the new test trials', once
    # the same sweep once more: nothing runs (no row written), and it says so
    written = read_raw(exp, "trials").num_rows
    sweep_of(tmp_path, SINE.format(name="inputs"))
    err = capsys.readouterr().err
    assert "tune-maml-k5: done before with the same inputs; its rows are kept, nothing to run" in err
    assert "test: every cell done before with the same inputs; their rows are kept, nothing to run" in err
    assert read_raw(exp, "trials").num_rows == written and read_trials(exp).to_pylist() == trials
    # same kind, a tune stage: its remembered inputs differ from what the spec now gives -> refused
    manifest = json.loads((Path(exp) / "manifest.json").read_text())
    manifest["inputs"]["tune-maml-k5"] = "0" * 16
    (Path(exp) / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="stage tune-maml-k5 ran with other inputs"):
        sweep_of(tmp_path, SINE.format(name="inputs"))


# ------------------------------------------------------------------------------------------ case 8: the lease


def test_a_lease_names_its_holder_and_is_broken_only_when_its_driver_is_gone(tmp_path):
    """A driver elsewhere with a fresh heartbeat holds the experiment; one whose heartbeat is old, or
    one on this host whose process is gone, does not (its lease is broken, saying so)."""
    import time

    from metasweep.analysis.store import write_text
    from metasweep.sweeps import lock

    exp = str(tmp_path / "exp")

    def lease(**kw):
        write_text(exp, "lock.json", json.dumps({"token": "other", "host": "elsewhere", "pid": 1,
                                                 "since": "2026-01-01 00:00:00 UTC", "heartbeat": time.time(), **kw}))

    lease()
    with pytest.raises(UserError, match="is being run by another driver: host elsewhere, pid 1, since 2026-01-01 "
                                        r"00:00:00 UTC \(last heartbeat 0 s ago\)"):
        lock.Lease(exp).acquire()
    for stale in ({"heartbeat": time.time() - 10 * lock.STALE_S}, {"host": lock.socket.gethostname(), "pid": 2 ** 22 + 7}):
        lease(**stale)
        with lock.Lease(exp):
            assert lock.holder(exp)["pid"] == os.getpid()
        assert lock.holder(exp) is None  # released
