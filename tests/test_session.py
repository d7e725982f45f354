"""The driver's Ray session: what it logs of Tune's background uploads of its state."""

import logging

import pytest
from ray.tune.execution import experiment_state

from metasweep.sweeps.session import ray_session


def failed_upload(error: Exception) -> None:
    """Tune's own log call when an upload of its staging folder failed (experiment_state.wait_for_sync)."""
    try:
        raise error
    except Exception:
        experiment_state.logger.error("Saving experiment state to storage at '/x/res/e/ray/tune-maml-k10' failed "
                                      "with exception: ", exc_info=True)


RACE = FileNotFoundError("[Errno 2] Failed to open local file '/tmp/ray/session_1/artifacts/t/tune-maml-k10/"
                         "driver_artifacts/.8cf72559-3783-404d-8e07-6839bd1c3a25-tmp-searcher-state-2026-12-01_11-52-"
                         "28.pkl'. Detail: [errno 2] No such file or directory")


@pytest.mark.parametrize("error, kept", [
    (RACE, False),  # a temporary file renamed while the upload copied the folder: the next upload has it
    (FileNotFoundError("[Errno 2] Failed to open local file '/tmp/ray/x/experiment_state-1.json'"), True),
    # "-tmp-" in a cell's or an experiment's name is no temporary file of Tune's
    (FileNotFoundError("[Errno 2] Failed to open local file '/tmp/ray/a/tune-m-tmp-k10/driver_artifacts/"
                       "searcher-state-1.pkl'"), True),
    (FileNotFoundError("[Errno 2] Failed to open local file '/tmp/ray/a/.8cf72559-3783-404d-8e07-6839bd1c3a25-tmp-"
                       "x/experiment_state-1.json'"), True),
    (PermissionError("[Errno 13] /x/res/e/ray: permission denied"), True),
])
def test_a_sweep_drops_only_tunes_upload_race_on_its_own_temporary_files(error, kept):
    records = []
    handler = logging.Handler()
    handler.emit = records.append  # Ray's loggers do not propagate to the root: listen on Tune's own
    experiment_state.logger.addHandler(handler)
    try:
        failed_upload(error)  # before the session: Tune's error, as Tune logs it
        with ray_session(None):  # starts no Ray: nothing in it needs one
            failed_upload(error)
        failed_upload(error)  # after it: as Tune logs it again
    finally:
        experiment_state.logger.removeHandler(handler)
    assert [r.exc_info[1] for r in records] == [error] * (3 if kept else 2)
    assert records[0].getMessage().startswith("Saving experiment state to storage")
