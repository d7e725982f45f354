"""One driver per experiment: a lease in the experiment's storage (`<experiment>/lock.json`: host,
pid, since, heartbeat), written through the store's atomic writes, so it works on a local or shared
folder and on an object store alike.

The running driver renews the heartbeat every HEARTBEAT_S seconds. A second `sweep` or `resume`
finds a live lease and exits 2 at once, naming the holder. A lease is broken (taken over, said so)
when its heartbeat is older than STALE_S seconds (a driver on another machine that died), or at
once when its holder ran on this host and its process is gone (a killed driver). Two drivers that
start within the same instant are told apart by reading the lease back after a short settle: the
one whose token is not there gives way.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from metasweep.analysis.store import read_text, resolve, write_text

from .console import make_console
from .errors import UserError

NAME = "lock.json"
HEARTBEAT_S = float(os.environ.get("METASWEEP_LOCK_HEARTBEAT_S", "15"))
STALE_S = float(os.environ.get("METASWEEP_LOCK_STALE_S", "120"))
SETTLE_S = 0.5


def _process_start(pid: int) -> str | None:
    """When a process started (clock ticks since boot, from /proc), to tell a pid reused by another one."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def holder(exp_uri: str) -> dict | None:
    """The lease on an experiment, or None."""
    try:
        text = read_text(exp_uri, NAME)
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def describe(lease: dict) -> str:
    age = time.time() - float(lease.get("heartbeat", 0))
    return (f"host {lease.get('host')}, pid {lease.get('pid')}, since {lease.get('since')} "
            f"(last heartbeat {age:.0f} s ago)")


def is_stale(lease: dict) -> bool:
    if time.time() - float(lease.get("heartbeat", 0)) > STALE_S:
        return True
    if lease.get("host") != socket.gethostname():
        return False
    pid = int(lease.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    start = lease.get("process_start")
    return start is not None and _process_start(pid) not in (None, start)


def refused(exp_uri: str, lease: dict) -> UserError:
    return UserError(f"experiment {exp_uri} is being run by another driver: {describe(lease)}; wait for it to end "
                     f"or stop it (a lease without a heartbeat for {STALE_S:.0f} s is broken)")


def check_free(exp_uri: str) -> None:
    """UserError naming the holder when another driver holds a live lease on the experiment."""
    lease = holder(exp_uri)
    if lease is not None and not is_stale(lease):
        raise refused(exp_uri, lease)


class Lease:
    """The lease this driver holds on an experiment (a context manager)."""

    def __init__(self, exp_uri: str):
        self.exp_uri = exp_uri
        self.token = uuid.uuid4().hex
        self.data = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                     "process_start": _process_start(os.getpid()),
                     "since": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        current = holder(self.exp_uri)
        if current is not None and current.get("token") != self.token:
            if not is_stale(current):
                raise refused(self.exp_uri, current)
            make_console(stderr=True).print(f"breaking the stale lease of an earlier driver ({describe(current)})",
                                            markup=False)
        self._write()
        time.sleep(SETTLE_S)
        current = holder(self.exp_uri)
        if current is None or current.get("token") != self.token:
            raise refused(self.exp_uri, current or {})
        self._thread = threading.Thread(target=self._beat, daemon=True, name="metasweep-lease")
        self._thread.start()

    def _write(self) -> None:
        write_text(self.exp_uri, NAME, json.dumps({**self.data, "heartbeat": time.time()}))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                current = holder(self.exp_uri)
                if current is not None and current.get("token") != self.token:
                    make_console(stderr=True).print(f"warning: the lease on {self.exp_uri} was taken by another "
                                                    f"driver ({describe(current)})", markup=False)
                    return
                self._write()
            except OSError:
                pass  # storage briefly unreachable: try again at the next beat

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        current = holder(self.exp_uri)
        if current is not None and current.get("token") == self.token:
            fs, root = resolve(self.exp_uri)
            try:
                fs.delete_file(f"{root}/{NAME}")
            except OSError:
                pass
