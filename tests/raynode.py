"""Start and stop a Ray head node the way users do (`ray start --head`), by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    def __init__(self, num_cpus: int = 2):
        self.port = free_port()
        ray_bin = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
        self.proc = subprocess.Popen(
            [ray_bin, "start", "--head", f"--port={self.port}", f"--num-cpus={num_cpus}", "--include-dashboard=false",
             "--block", "--disable-usage-stats"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            self.stop()
            raise RuntimeError("ray head did not come up")
        self._wait_for_node(deadline)

    def _wait_for_node(self, deadline: float) -> None:
        """The GCS listens before the head's raylet has registered with it: wait for an alive node."""
        from ray._raylet import GcsClient

        client = GcsClient(address=self.address)
        while time.time() < deadline:
            try:
                if any(n.state == 0 for n in client.get_all_node_info(timeout=2).values()):  # 0: ALIVE
                    return
            except Exception:  # the GCS may still be starting its services
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("ray head's node did not register")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """`ray start --block` stops the node's processes when it gets SIGTERM."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
