"""The Ray cluster launcher configs: cluster.yaml (AWS) and sweeps/clusters/onprem.yaml (lab machines).

Both validate against the schema that the installed Ray ships, and carry the properties the docs
promise (no trials on the head, spot GPU workers, an image of the installed Ray, no exposed dashboard).
A real `ray up` / `ray exec` / `ray down` round trip runs a tiny sweep on a one-node "on-prem" cluster
whose head is this machine, reached through a private sshd on 127.0.0.1:22 started by the test.
"""

from __future__ import annotations

import getpass
import hashlib
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

# psutil: Ray ships its own copy (ray/thirdparty_files), importable only once ray is imported (so not in
# the import block above, which import sorting reorders); `ray stop` uses it too.
psutil = importlib.import_module("psutil")

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "cluster.yaml"
ONPREM = ROOT / "sweeps" / "clusters" / "onprem.yaml"
CONFIGS = [pytest.param(AWS, id="cluster.yaml"), pytest.param(ONPREM, id="onprem.yaml")]

COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                 "head_start_ray_commands", "worker_start_ray_commands")


def load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def ray_schema() -> dict:
    with open(Path(ray.__file__).parent / "autoscaler" / "ray-schema.json") as f:
        return json.load(f)


def all_commands(config: dict) -> list[str]:
    cmds = [c for key in COMMAND_LISTS for c in config.get(key) or []]
    for node_type in (config.get("available_node_types") or {}).values():
        for key in ("initialization_commands", "worker_setup_commands"):
            cmds += node_type.get(key) or []
    return cmds


def ray_major_minor() -> tuple[str, str]:
    major, minor = ray.__version__.split(".")[:2]
    return major, minor


# --------------------------------------------------------------------------------------- the configs


@pytest.mark.parametrize("path", CONFIGS)
def test_config_validates_against_ray_schema(path):
    config = load(path)
    schema = ray_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{path.name}: {'.'.join(map(str, e.path)) or '(top)'}: {e.message}"
                                 for e in errors)
    # Ray's own checks after merging its defaults (what `ray up` runs before touching any machine).
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))


@pytest.mark.parametrize("path", CONFIGS)
def test_dashboard_not_exposed(path):
    config = load(path)
    for cmd in all_commands(config):
        assert "0.0.0.0" not in cmd, f"{path.name}: {cmd!r} listens on every interface"
        for host in re.findall(r"--dashboard-host[= ](\S+)", cmd):
            assert host in ("127.0.0.1", "localhost"), f"{path.name}: dashboard host {host} in {cmd!r}"
    docker = config.get("docker") or {}
    for opt in (docker.get("run_options") or []) + (docker.get("head_run_options") or []):
        assert not re.search(r"(^|\s)(-p|--publish)\b", opt), f"{path.name}: docker publishes a port: {opt!r}"
    for rule in (config["provider"].get("security_group") or {}).get("IpPermissions") or []:
        assert not rule.get("FromPort", 0) <= 8265 <= rule.get("ToPort", -1), \
            f"{path.name}: the security group opens the dashboard port: {rule}"


@pytest.mark.parametrize("path", CONFIGS)
def test_installs_this_checkout(path):
    config = load(path)
    assert config["file_mounts"].get("~/metasweep") == ".", "the checkout is synced to ~/metasweep"
    assert ".gitignore" in config.get("rsync_filter", []), "ignored files (results/, .venv/) stay local"
    assert any(re.search(r"pip install .*-e ~/metasweep", c) for c in config["setup_commands"]), \
        config["setup_commands"]


def test_aws_cluster():
    config = load(AWS)
    assert config["cluster_name"] == "metasweep"
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "trials must run on workers, not on the head"

    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu = {name: t for name, t in workers.items()
           if re.match(r"(g|p)\d", t["node_config"]["InstanceType"]) or t["resources"].get("GPU", 0) >= 1}
    assert gpu, f"no GPU worker type among {list(workers)}"
    for name, t in gpu.items():
        assert t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot", name
        assert t.get("min_workers", 0) == 0, f"{name}: idle spot GPUs should scale to zero"
        assert t["max_workers"] >= 1

    major, minor = ray_major_minor()
    image = config["docker"]["image"]
    assert re.fullmatch(rf"rayproject/ray:{major}\.{minor}(\.\d+)?-py311-gpu", image), \
        f"{image}: expected rayproject/ray:{ray.__version__}-py311-gpu (the installed Ray, Python 3.11)"
    assert "ray-ml" not in json.dumps(config)

    start = " ".join(config["head_start_ray_commands"])
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start
    assert "--port=6379" in start
    assert any(c.strip() == "ray stop" for c in config["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])


def test_onprem_cluster():
    config = load(ONPREM)
    provider = config["provider"]
    assert provider["type"] == "local"
    assert isinstance(provider["head_ip"], str) and provider["head_ip"]
    assert isinstance(provider["worker_ips"], list)
    assert config["auth"]["ssh_user"] and config["auth"]["ssh_private_key"]
    assert "available_node_types" not in config  # not supported by the local provider
    head = config["head_start_ray_commands"]
    assert head[0].strip() == "ray stop"
    assert re.search(r"ray start --head --port=6379\b", head[-1])
    worker = config["worker_start_ray_commands"]
    assert worker[0].strip() == "ray stop"
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker[-1]


# --------------------------------------------------------------------------------------- ray up on localhost

SSHD = "/usr/sbin/sshd"

TINY_SPEC = """\
experiment: cluster-tiny
description: two variants, tuned and tested on a one-node cluster started with ray up
mode: tune+test
variants: [maml, t-net]
budget: {{meta_steps: 20, report_every: 10, meta_batch: 5}}
eval: {{tasks: 20, val_tasks: 10, shots: [5, 10], inner_steps: [1]}}
search: {{trials_per_variant: 2}}
test: {{seeds: [0, 1]}}
resources: {{cpu: 1, gpu: 0}}
max_concurrent: 2
storage: {storage}
"""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def processes_with(marker: str) -> list:
    """Live processes whose command line mentions `marker` (our private Ray temp dir)."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if p.pid != os.getpid() and p.info["status"] != psutil.STATUS_ZOMBIE and \
                    any(marker in arg for arg in p.info["cmdline"] or []):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def other_ray_running() -> bool:
    names = {"raylet", "gcs_server"}
    for p in psutil.process_iter(["name"]):
        if p.info["name"] in names:
            return True
    return False


def can_unshare_pid() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "true"],
                       capture_output=True, timeout=30)
    return r.returncode == 0


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def tail(text: str, n: int = 4000) -> str:
    return text[-n:]


def run_cli(args: list[str], env: dict, log: Path, timeout: int) -> subprocess.CompletedProcess:
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, cwd=log.parent)
    log.write_text(f"$ {shlex.join(args)}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}")
    return r


class PrivateSshd:
    """An sshd on 127.0.0.1:22 with its own host key, authorized_keys, config and pid file, started and
    stopped by this test (by pid). Where the kernel allows it, it runs in its own PID namespace, so the
    `ray stop` that `ray up` and `ray down` run over SSH sees only the Ray processes of this test - not
    other Ray instances on the machine - and everything started through it ends with it.

    Sessions get HOME=<tmp>/home: `ray up` copies ~/ray_bootstrap_config.yaml and ~/ray_bootstrap_key.pem
    to the head's home, and every Ray command sources ~/.bashrc, which puts this environment's bin
    folder first on PATH (`ray`, `metasweep`). RAY_TMPDIR gives the head a private Ray temp dir."""

    def __init__(self, folder: Path, user: str, public_key: str, env: dict[str, str], isolate: bool):
        self.folder = folder
        self.isolate = isolate
        host_key = folder / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        authorized = folder / "authorized_keys"
        authorized.write_text(public_key)
        authorized.chmod(0o600)
        self.log = folder / "sshd.log"
        setenv = " ".join(f'"{k}={v}"' for k, v in env.items())
        self.config = folder / "sshd_config"
        self.config.write_text(f"""\
Port 22
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {folder / "sshd.pid"}
AuthorizedKeysFile {authorized}
AllowUsers {user}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 100
MaxSessions 100
SetEnv {setenv}
""")
        # sshd refuses to start without its privilege separation directory (the Debian service
        # script creates it at boot; a container that never started the service has none).
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        check = subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True, text=True)
        assert check.returncode == 0, f"sshd rejects the test's config: {check.stderr}"
        cmd = [SSHD, "-D", "-e", "-f", str(self.config)]
        if isolate:
            cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"] + cmd
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited ({self.proc.returncode}): {self.log.read_text()}")
            if port_in_use(22):
                return
            time.sleep(0.1)
        raise AssertionError(f"sshd not listening on 127.0.0.1:22 after {timeout}s: {self.log.read_text()}")

    def stop(self) -> None:
        """By pid: the sshd (in a namespace, its PID 1: the kernel then ends every process in it), then
        the sessions it forked, then the unshare wrapper."""
        if self.proc.poll() is None:
            try:
                top = psutil.Process(self.proc.pid)
                tree = top.children(recursive=True)
                direct = top.children()  # under unshare: the sshd, PID 1 of the namespace
                sshd = direct[0] if self.isolate and direct else top
                sshd.send_signal(signal.SIGTERM)
                psutil.wait_procs([sshd], timeout=5)
                for p in tree:
                    if p.is_running():
                        p.kill()
            except psutil.NoSuchProcess:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # unshare: --kill-child then SIGKILLs the sshd
                self.proc.wait(timeout=10)


def test_ray_up_exec_down_on_localhost(tmp_path):
    """`ray up` a copy of onprem.yaml whose head is 127.0.0.1, run a tiny sweep on it with
    `ray exec ... metasweep sweep --address auto`, read the Parquet rows here, `ray down`."""
    if not sys.platform.startswith("linux"):
        pytest.skip(reason="the sshd-on-localhost cluster test runs on Linux")
    if not os.path.exists(SSHD):
        pytest.skip(reason=f"sshd is not installed ({SSHD}): apt-get install -y openssh-server rsync")
    for tool in ("rsync", "ssh", "ssh-keygen"):
        if not shutil.which(tool):
            pytest.skip(reason=f"{tool} is not installed: apt-get install -y openssh-server rsync")
    if os.geteuid() != 0:
        pytest.skip(reason="an sshd on port 22 (Ray's SSH has no port option) needs root")
    if port_in_use(22):
        pytest.skip(reason="something already listens on 127.0.0.1:22; this test starts its own sshd there")
    isolate = can_unshare_pid()
    if not isolate and other_ray_running():
        pytest.skip(reason="other Ray instances run on this machine and no PID namespace is available: "
                    "`ray up`/`ray down` run `ray stop`, which would stop them")

    env_bin = Path(sys.executable).parent
    ray_exe = str(env_bin / "ray") if (env_bin / "ray").exists() else shutil.which("ray")
    metasweep_exe = str(env_bin / "metasweep") if (env_bin / "metasweep").exists() else shutil.which("metasweep")
    assert ray_exe and metasweep_exe, "the ray and metasweep commands of this environment"

    user = getpass.getuser()
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    home = tmp_path / "home"
    home.mkdir()
    path_dirs = dict.fromkeys([str(Path(ray_exe).parent), str(Path(metasweep_exe).parent)])
    (home / ".bashrc").write_text(f'export PATH="{":".join(path_dirs)}:$PATH"\n')
    # Ray's Unix sockets live under its temp dir, and their paths must stay under 108 bytes:
    # pytest's tmp_path is too deep, so a short private folder in /tmp.
    ray_tmp = tempfile.mkdtemp(prefix="msray-", dir="/tmp")
    ray_env = {"HOME": str(home), "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}

    # The on-prem config, pointed at this machine: no workers, this user and key, this environment's
    # `ray` on a free port, 2 CPUs, no dashboard. Nothing to install: the package already is.
    config = load(ONPREM)
    config["cluster_name"] = f"metasweep-test-{uuid.uuid4().hex[:8]}"
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"] = {"ssh_user": user, "ssh_private_key": str(key)}
    config["max_workers"] = 0
    config["file_mounts"] = {}
    config["setup_commands"] = []
    port = free_port()
    config["head_start_ray_commands"] = [
        f"{shlex.quote(ray_exe)} stop",
        f"{shlex.quote(ray_exe)} start --head --port={port} --num-cpus=2 --include-dashboard=false "
        "--autoscaling-config=~/ray_bootstrap_config.yaml",
    ]
    config["worker_start_ray_commands"] = []
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump(config, sort_keys=False))

    storage = tmp_path / "results"
    storage.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    (work / "tiny.yaml").write_text(TINY_SPEC.format(storage=storage))

    cli_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # The local provider's cluster state and `ray up`'s config cache go to ray_tmp too.
    cli_env.update(RAY_TMPDIR=ray_tmp, TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
    (tmp_path / "sshd").mkdir()
    sshd = down = None
    out = ""
    left_after_down: list[str] = []
    try:
        sshd = PrivateSshd(tmp_path / "sshd", user, (tmp_path / "id_ed25519.pub").read_text(), ray_env, isolate)
        sshd.wait_ready()

        up = run_cli([ray_exe, "up", "-y", str(cluster), "--no-config-cache"], cli_env, tmp_path / "up.log", 180)
        assert up.returncode == 0, f"ray up failed:\n{tail(up.stdout)}\n{tail(up.stderr)}\n" \
                                   f"sshd: {tail(sshd.log.read_text(), 1500)}"
        assert processes_with(ray_tmp), "ray up reported success but no Ray process runs in the test's temp dir"

        cmd = f"cd {shlex.quote(str(work))} && metasweep sweep tiny.yaml --address auto --no-rank"
        ex = run_cli([ray_exe, "exec", str(cluster), cmd], cli_env, tmp_path / "exec.log", 420)
        out = ex.stdout + ex.stderr
        assert ex.returncode == 0, f"ray exec failed:\n{tail(ex.stdout)}\n{tail(ex.stderr)}"
        assert "Connecting to existing Ray cluster" in out, f"--address auto did not reach the head:\n{tail(out)}"
    finally:
        try:
            if sshd is not None:
                down = run_cli([ray_exe, "down", "-y", str(cluster)], cli_env, tmp_path / "down.log", 180)
                deadline = time.monotonic() + 20
                while processes_with(ray_tmp) and time.monotonic() < deadline:
                    time.sleep(0.5)
                left_after_down = [" ".join(p.cmdline()[:1]) for p in processes_with(ray_tmp)]
        finally:
            if sshd is not None:
                sshd.stop()
            for p in processes_with(ray_tmp):  # safety net: only processes of this test's Ray temp dir
                try:
                    p.kill()
                except Exception:
                    pass
            shutil.rmtree(ray_tmp, ignore_errors=True)
            # the (empty) folder of Ray's SSH control sockets for this cluster name
            shutil.rmtree(Path("/tmp") / f"ray_ssh_{sha256(user)[:10]}" / sha256(config["cluster_name"])[:10],
                          ignore_errors=True)

    assert down.returncode == 0, f"ray down failed:\n{tail(down.stdout)}\n{tail(down.stderr)}"
    assert not left_after_down, f"ray down left Ray processes running: {left_after_down}"

    from metasweep.analysis.store import read_dataset

    data = read_dataset(str(storage / "cluster-tiny"))
    trials = data["trials"].to_pylist()
    # 2 variants x 2 tune trials + 2 variants x 2 test seeds
    assert len(trials) == 8, f"{[(t['stage'], t['variant'], t['status']) for t in trials]}\n{tail(out)}"
    assert all(t["status"] == "completed" for t in trials), \
        f"{[(t['trial_id'], t['status'], t['attempt'], t['error']) for t in trials]}\n{tail(out)}"
    by_stage = sorted((t["stage"], t["variant"]) for t in trials)
    assert by_stage == [("test", "maml")] * 2 + [("test", "t-net")] * 2 + [("tune", "maml")] * 2 + \
        [("tune", "t-net")] * 2
    assert sorted(t["seed"] for t in trials if t["stage"] == "test") == [0, 0, 1, 1]
    assert all(t["meta_steps"] == 20 for t in trials)
    # every trial: 20 evaluation tasks x shots [5, 10] x inner steps [1]; tune on val, test on test tasks
    ev = data["eval_tasks"]
    assert ev.num_rows == 8 * 20 * 2 * 1
    split_of = {t["trial_id"]: t["stage"] for t in trials}
    for trial_id, split in zip(ev.column("trial_id").to_pylist(), ev.column("split").to_pylist()):
        assert split == {"tune": "val", "test": "test"}[split_of[trial_id]]
    assert data["curves"].num_rows == 8 * 2  # reports at meta-steps 10 and 20
