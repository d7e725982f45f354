"""Which of a trial's checkpoints are kept, and when the others go.

Tune's saved state (`experiment_state-*.json`, what `Tuner.restore` reads) names each trial's latest
checkpoint *as of the last snapshot*, and snapshots are written every 10 s or more, uploaded in the
background. With Tune's own `CheckpointConfig(num_to_keep=K)`, the checkpoint a snapshot names is
deleted as soon as K newer ones are registered - before the next snapshot is stored. A driver killed
in between (SIGKILL, a lost head node) leaves a state naming a checkpoint that no longer exists: the
resumed trial fails with "Could not recover from checkpoint as it does not exist on storage anymore"
on every restart Ray allows.

So Tune deletes nothing (`num_to_keep=None`); while a Tuner runs, every checkpoint of a trial is kept
(a sine bundle's is 0.1-0.3 MB, one per report). Once `Tuner.fit()` has returned - Tune has then
saved its state and waited for the upload, also after Ctrl+C - each trial's checkpoints older than
the latest one Tune registered are deleted (`prune`): that one is what the saved state names; so are
the checkpoints of trial directories the saved state does not know (trials a killed driver had
started after its last snapshot, which the resumed Tuner starts again elsewhere). After a crash
nothing is deleted; the next run of the Tuner that ends does it, for every trial.
"""

from __future__ import annotations

import re

from ray.tune import Callback

_INDEX = re.compile(r"checkpoint_(\d+)$")

# trial storage directory -> (filesystem, path of the checkpoint Tune's final state names), this driver
_LATEST: dict[str, tuple[object, str]] = {}
# a Tuner's experiment directory -> (filesystem, the trial directories its final state knows)
_KNOWN: dict[str, tuple[object, set[str]]] = {}


class LatestCheckpoints(Callback):
    """At the end of a Tuner run, remembers each trial's latest checkpoint - the one Tune's state
    names - and the trial directories Tune's state knows, for `prune` (a trial that ended in an
    earlier, killed run too)."""

    def on_experiment_end(self, trials, **info):
        known = {t.path.rstrip("/") for t in trials if t.path}
        for trial in trials:
            checkpoint = trial.checkpoint
            if checkpoint is None:
                continue
            parent = checkpoint.path.rstrip("/").rsplit("/", 1)[0]
            _LATEST[parent] = (checkpoint.filesystem, checkpoint.path)
            _KNOWN.setdefault(parent.rsplit("/", 1)[0], (checkpoint.filesystem, set()))[1].update(known)


def forget() -> None:
    """Before a Tuner run: what an earlier run of this process left (one that raised) is not used."""
    _LATEST.clear()
    _KNOWN.clear()


def _listing(fs, path: str) -> list:
    import pyarrow.fs as pafs

    try:
        return [e for e in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
                if e.type == pafs.FileType.Directory]
    except OSError:
        return []


def _delete_checkpoints(fs, trial_dir: str, below: int | None = None) -> int:
    """Delete the `checkpoint_<index>` directories of `trial_dir` (those with index < `below`, if
    given); a deletion that fails is left for a later run. Returns how many went."""
    deleted = 0
    for e in _listing(fs, trial_dir):
        m = _INDEX.search(e.path.rstrip("/"))
        if m and (below is None or int(m.group(1)) < below):
            try:
                fs.delete_dir(e.path)
                deleted += 1
            except OSError:
                pass
    return deleted


def prune() -> int:
    """Delete every checkpoint (`checkpoint_<index>` directory) of a trial older than the one Tune's
    state names, and every checkpoint in a trial directory of the Tuner that its state does not know
    (a trial a killed driver had started after its last snapshot: the resumed Tuner starts it again
    in a directory of its own). Call only after `Tuner.fit()` returned. Newer ones Tune never
    registered (written by a trial while it was being stopped) are kept. Returns how many were
    deleted."""
    deleted = 0
    for experiment, (fs, known) in _KNOWN.items():
        for d in _listing(fs, experiment):
            if d.path.rstrip("/") not in known:
                deleted += _delete_checkpoints(fs, d.path)
    for parent, (fs, latest) in _LATEST.items():
        keep = _INDEX.search(latest.rstrip("/"))
        if keep is not None:
            deleted += _delete_checkpoints(fs, parent, below=int(keep.group(1)))
    forget()
    return deleted
