"""Results on object storage, end to end against a local S3 server (`moto_server`, started on
127.0.0.1 and stopped by its PID): a sweep with `--storage s3://bucket/prefix?endpoint_override=...`,
its driver killed in the test stage, the experiment moved to another prefix and resumed there; then
`status`, `rank` and `query` with the endpoint given the other way users give it (AWS_ENDPOINT_URL).
The Optuna study travels in Tune's state on S3; its sqlite copy (optuna.db) is uploaded beside it."""

import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from raynode import RayHead, free_port

from metasweep.analysis.store import StoreError, read_dataset, read_raw

SPEC = """
experiment: s3exp
variants: [maml]
train_shots: [5]
budget: {meta_steps: 150, report_every: 50, meta_batch: 5}
eval: {shots: [5], inner_steps: [1], tasks: 20, val_tasks: 5}
search: {trials_per_variant: 2, alpha: {low: 0.01, high: 0.1}}
test: {seeds: [0, 1]}
max_concurrent: 1
"""

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server with a bucket; yields its endpoint HOST:PORT. The AWS variables are set for this
    process (and so for the Ray head the test starts: its workers write to the bucket)."""
    server = shutil.which("moto_server")
    if server is None:
        pytest.skip("moto_server not installed (pip install 'moto[server]', in the test extra)")
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log,
                            start_new_session=True)
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "moto_server did not start"
                time.sleep(0.2)
        import pyarrow.fs as pafs

        admin = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True)
        admin.create_dir("bkt")
        yield f"127.0.0.1:{port}"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def ray_head(s3):
    head = RayHead(num_cpus=2)
    yield head
    head.stop()


def cli(*args, env=None, timeout=900, **kw):
    return subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, **kw)


def test_a_sweep_on_s3_killed_moved_and_resumed_then_status_rank_query(tmp_path, s3, ray_head):
    import pyarrow.fs as pafs

    query = f"?endpoint_override={s3}&scheme=http"
    fs = pafs.S3FileSystem(endpoint_override=s3, scheme="http")
    (tmp_path / "spec.yaml").write_text(SPEC)
    old = f"s3://bkt/runs/s3exp{query}"
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "metasweep.sweeps.cli", "sweep", "spec.yaml", "--storage",
                               f"s3://bkt/runs{query}", "--address", ray_head.address, "--no-rank"], cwd=tmp_path,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:  # killed in the test stage, its first trial past a report
            try:
                rows = read_raw(old, "trials").to_pylist()
            except StoreError:  # a running row rewritten while we read it (an object is replaced whole)
                rows = []
            if any(r["stage"] == "test" and r["status"] == "running" for r in rows):
                break
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("the test stage never started")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(30)
        log.close()
    time.sleep(3)  # the killed driver's trials end with its job
    pafs.copy_files("bkt/runs/s3exp", "bkt/moved/s3exp", source_filesystem=fs, destination_filesystem=fs)
    fs.delete_dir("bkt/runs/s3exp")
    new = f"s3://bkt/moved/s3exp{query}"
    r = cli("resume", new, "--address", ray_head.address, "--no-rank", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert fs.get_file_info("bkt/runs/s3exp").type == pafs.FileType.NotFound  # nothing written to the old place

    trials = read_dataset(new)["trials"].to_pylist()
    assert collections.Counter(t["stage"] for t in trials) == {"tune": 2, "test": 2}
    assert {t["status"] for t in trials} == {"completed"}, [(t["trial_id"], t["error"][:700]) for t in trials
                                                            if t["error"]]
    assert sorted(t["seed"] for t in trials if t["stage"] == "test") == [0, 1]
    assert fs.get_file_info("bkt/moved/s3exp/optuna.db").type == pafs.FileType.File  # the study's sqlite copy

    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://{s3}"}  # the other way to give the endpoint
    plain = "s3://bkt/moved/s3exp"
    st = cli("status", plain, env=env)
    assert st.returncode == 0 and "stages done: test, tune-maml-k5" in st.stdout, st.stderr[-2000:]
    ranked = cli("rank", plain, env=env)
    assert ranked.returncode == 0 and "ranking: loss (stage test" in ranked.stdout, ranked.stderr[-2000:]
    q = cli("query", plain, "select stage, count(*) as n from trials group by stage order by stage", env=env)
    assert q.returncode == 0 and "test" in q.stdout and "tune" in q.stdout, q.stderr[-2000:]
