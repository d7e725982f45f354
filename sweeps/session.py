"""The Ray session of a sweep: connecting to a cluster or starting an embedded local Ray, Ctrl+C
handling, and running a Tuner to its end (or saying that it did not end)."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import threading
from contextlib import contextmanager

from .errors import UserError


class Interrupted(Exception):
    """Tuner.fit() returned before every trial ended (SIGINT, lost driver)."""


def check_address(address: str) -> None:
    """Fail in a second with one line instead of Ray's long retry loop on an unreachable head."""
    if address in ("auto", "local"):
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379), 'auto' or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as e:
        raise UserError(f"--address {address}: no Ray cluster reachable there ({e.strerror or e})") from None


def init_ray(address: str | None) -> bool:
    """Connect to a cluster, or start an embedded local Ray. Returns True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own one-line-per-trial progress instead
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # results live in our Parquet dataset: no CSV / TensorBoard loggers (result.json is kept)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    if address:
        check_address(address)
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as e:
            raise UserError(f"--address {address}: could not connect to Ray ({e})") from None
        return True
    # "local": always a fresh embedded instance (a bare ray.init() would try to join whatever cluster
    # /tmp/ray last recorded, and hang if that one is gone)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    return True


_SESSION: dict = {}  # the open ray_session's {"address", "started"}; empty outside one


class StagingRace(logging.Filter):
    """Drops Tune's "Saving experiment state to storage ... failed" error (a traceback) when all that
    failed is copying a temporary file of Tune's own that was gone by then. Tune (2.5x) writes its
    searcher's and callbacks' state next to a temporary file and renames it into its staging folder
    (`_atomic_save`) while the previous background upload of that folder may still be listing and
    copying it: the upload fails on the renamed file, and the next upload copies the whole folder (Tune
    starts one right after a forced save, and awaits a final one when the Tuner ends). Seen on a local
    sweep's stderr as a 20-line traceback from pyarrow; any other failure is kept."""

    LOGGER = "ray.tune.execution.experiment_state"

    # the temporary file's name as Tune makes it: ".<uuid4>-tmp-<file>" (tune.utils.util._atomic_save,
    # Searcher.save_to_dir), matched as the last part of a path: no other name, folder or cell matches
    TEMPORARY = re.compile(r"[/\\]\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-tmp-[^/\\']+'")

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, FileNotFoundError) and self.TEMPORARY.search(str(error))
                    and record.getMessage().startswith("Saving experiment state to storage"))


@contextmanager
def ray_session(address: str | None):
    """Ray for the duration of a sweep, our Ctrl+C handler installed; stopped after if we started it.
    Ray starts (or the cluster is joined) only when the sweep first needs it (`need_ray`): a sweep
    whose every stage is done before with the same inputs prints its tables without starting Ray."""
    import ray

    install_interrupt_handler()
    race = StagingRace()
    logging.getLogger(StagingRace.LOGGER).addFilter(race)
    _SESSION.update(address=address, started=False)
    try:
        yield
    finally:
        logging.getLogger(StagingRace.LOGGER).removeFilter(race)
        started = _SESSION.get("started")
        _SESSION.clear()
        if started:
            ray.shutdown()


def need_ray() -> None:
    """Start the open ray_session's Ray (embedded, or the cluster at its address) unless Ray is up:
    called before anything that talks to Ray (a Tuner's trainable, the cluster's resources, an actor).
    Outside a ray_session it leaves Ray as it is (a test's own, or Tune's own start)."""
    if _SESSION and not _SESSION["started"]:
        _SESSION["started"] = init_ray(_SESSION["address"])


_INTERRUPTED = threading.Event()
_IN_FIT = threading.Event()


def _on_sigint(signum, frame):
    """Ctrl+C: remember it, and let Tune stop gracefully (it saves its experiment state one last time
    on SIGUSR1, its own interrupt signal) when inside Tuner.fit(); elsewhere stop at once."""
    _INTERRUPTED.set()
    if _IN_FIT.is_set():
        os.kill(os.getpid(), signal.SIGUSR1)
    else:
        raise KeyboardInterrupt


def install_interrupt_handler() -> None:
    """Our SIGINT handler instead of Tune's: Tune's handler swallows Ctrl+C and returns a partial
    result that cannot always be told from a finished stage."""
    if threading.current_thread() is threading.main_thread():
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        signal.signal(signal.SIGINT, _on_sigint)


def fit(tuner, expected, name: str) -> list:
    """Tuner.fit(), and a check that every trial really ended: after Ctrl+C (or a partial grid, trials
    left RUNNING/PENDING) the stage must not pass as finished. `expected`: how many trials, or a
    function saying it once the Tuner has ended. Returns Tune's trials."""
    from .progress import flush_after
    from .retention import forget, prune

    forget()
    _IN_FIT.set()
    try:
        grid = tuner.fit()
    finally:
        _IN_FIT.clear()
        flush_after()  # what the driver said about trials whose lines Tune never printed
    prune()  # Tune's state is saved now: the checkpoints it no longer names can go
    if _INTERRUPTED.is_set():
        raise Interrupted(f"{name}: stopped by Ctrl+C")
    expected = expected() if callable(expected) else expected
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None)
    if trials is None:
        if len(grid) < expected:
            raise Interrupted(name)
        return []
    unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
    if len(trials) < expected or unfinished:
        raise Interrupted(f"{name}: {len(unfinished) + expected - len(trials)} of {expected} trials unfinished")
    return trials


def tune_error(trial) -> str:
    """The message of a trial Ray gave up on (after max_failures restarts), for its row."""
    try:
        err = trial.get_error()
    except Exception:  # the error file may be gone with its node
        err = None
    text = str(err) if err is not None else "the trial's process failed"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = (lines[-1] if lines else text).split(". ")[0].rstrip(".")  # its first sentence
    return f"trial process: {last} (Ray gave up after max_failures restarts)"
