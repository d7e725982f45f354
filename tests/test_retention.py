"""sweeps.retention: after a Tuner run, each trial keeps the checkpoint Tune's state names and any
newer one; older ones go (real directories on pyarrow's local filesystem)."""

import pyarrow.fs as pafs

from metasweep.sweeps import retention


class FakeTrial:  # what LatestCheckpoints reads of Tune's Trial: its `checkpoint` and directory (`path`)
    def __init__(self, checkpoint, path=None):
        self.checkpoint = checkpoint
        self.path = path if path is not None or checkpoint is None else checkpoint.path.rsplit("/", 1)[0]


def test_prune_keeps_the_named_checkpoint_and_newer_ones(tmp_path):
    from ray import tune

    trial_dirs = [tmp_path / "trial_a", tmp_path / "trial_b", tmp_path / "trial_c"]
    for d in trial_dirs:
        for i in range(5):
            (d / f"checkpoint_{i:06d}").mkdir(parents=True)
            (d / f"checkpoint_{i:06d}" / "state.pt").write_bytes(b"x")
        (d / "result.json").write_text("{}")
    named = {trial_dirs[0]: 3, trial_dirs[1]: 0}  # trial_c: no checkpoint registered, nothing deleted
    trials = [FakeTrial(tune.Checkpoint(str(d / f"checkpoint_{i:06d}"), filesystem=pafs.LocalFileSystem()))
              for d, i in named.items()] + [FakeTrial(None, str(trial_dirs[2]))]
    # a trial directory Tune's state does not know (a killed driver's trial, started again elsewhere)
    orphan = tmp_path / "orphan"
    for i in range(2):
        (orphan / f"checkpoint_{i:06d}").mkdir(parents=True)
    (orphan / "result.json").write_text("{}")
    retention.forget()
    retention.LatestCheckpoints().on_experiment_end(trials=trials)
    assert retention.prune() == 5
    left = {d.name: sorted(p.name for p in d.iterdir()) for d in [*trial_dirs, orphan]}
    assert left["trial_a"] == ["checkpoint_000003", "checkpoint_000004", "result.json"]
    assert left["trial_b"] == [f"checkpoint_{i:06d}" for i in range(5)] + ["result.json"]
    assert left["trial_c"] == left["trial_b"]
    assert left["orphan"] == ["result.json"]
    assert retention.prune() == 0  # done once


def test_forget_drops_what_a_run_that_raised_left(tmp_path):
    from ray import tune

    for i in range(3):
        (tmp_path / "t" / f"checkpoint_{i:06d}").mkdir(parents=True)
    ck = tune.Checkpoint(str(tmp_path / "t" / "checkpoint_000002"), filesystem=pafs.LocalFileSystem())
    retention.LatestCheckpoints().on_experiment_end(trials=[FakeTrial(ck)])
    retention.forget()
    assert retention.prune() == 0 and len(list((tmp_path / "t").iterdir())) == 3
