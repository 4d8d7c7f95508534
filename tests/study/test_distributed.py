"""Scale-out: two workers share one grid study on PostgreSQL and log to one live MLflow server.

The PostgreSQL test needs SWEEP_TEST_POSTGRES (a URL to a server the tests may create databases
on); .ci/run starts one from the distribution's packages. The MLflow server test always runs.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter

import psutil
import pytest

from sweep.results import tracking
from sweep.results.record import load
from sweep.study.study import run_sweep
from tests.conftest import REPO

SMOKE = ["sweep=smoke"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def pg_url():
    base = os.environ.get("SWEEP_TEST_POSTGRES")
    if not base:
        pytest.skip("SWEEP_TEST_POSTGRES not set (.ci/run starts PostgreSQL and sets it)")
    import psycopg2

    name = f"sweep_test_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(base)
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {name}")
    yield base.rsplit("/", 1)[0] + "/" + name
    conn.cursor().execute(f"DROP DATABASE {name} WITH (FORCE)")
    conn.close()


@pytest.mark.slow
def test_live_mlflow_server_receives_a_sweep_over_http(mlflow_server, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert run_sweep([*SMOKE, "~sweep.grid.qlora", "sweep.grid.lora.method.r=[4]"]) == 0
    c = tracking.client()
    runs = c.search_runs([c.get_experiment_by_name("smoke").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(r.info.run_name for r in children) == ["full", "lora r=4"]
    lora = next(r for r in children if r.info.run_name == "lora r=4")
    names = {a.path for a in c.list_artifacts(lora.info.run_id)}
    assert {"config.json", "result.json", "adapter"} <= names  # artifacts went through HTTP
    assert any(n.endswith(".jsonl") for n in names)  # the per-item eval results
    report = {a.path for a in c.list_artifacts(tracking.find_parent("smoke"), "report")}
    assert {"report/report.md", "report/accuracy_vs_peak_memory_gib.png"} <= report
    steps = c.get_metric_history(lora.info.run_id, "learning_rate")  # streamed live, over HTTP
    assert len(steps) == lora.data.metrics["steps"] and lora.info.status == "FINISHED"
    exp = c.get_experiment_by_name("smoke")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # UI: runs table
    assert len(tracking.trial_records("smoke")) == 2


@pytest.mark.slow
def test_two_workers_share_one_grid_on_postgres(pg_url, mlflow_server, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": mlflow_server}
    cmd = [sys.executable, "-m", "sweep", "run", *SMOKE, f"sweep.storage={pg_url}"]
    start = time.time()
    workers = [
        subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outs = [w.communicate(timeout=600)[0] for w in workers]
    wall = time.time() - start
    failed = [out[-4000:] for w, out in zip(workers, outs, strict=True) if w.returncode]
    assert not failed, "\n---\n".join(failed)  # the end of each failed worker's output, in full
    per_worker = [sum(": ok " in line for line in out.splitlines()) for out in outs]
    print(f"\ntrials per worker {per_worker}, wall {wall:.0f} s")
    records = [
        load(d / "result.json")
        for d in (tmp_path / "outputs" / "smoke" / "trials").iterdir()
        if (d / "result.json").exists()
    ]
    ok = Counter(r.run["label"] for r in records if r.status == "ok")
    assert ok == Counter(
        {"full": 1, "lora r=4": 1, "lora r=16": 1, "qlora r=8": 1}
    )  # each point once
    assert sum(per_worker) == 4
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    try:
        c = tracking.client()
        runs = c.search_runs([c.get_experiment_by_name("smoke").experiment_id])
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
    parents = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}


@pytest.mark.slow
def test_a_dead_workers_trial_is_taken_over_through_heartbeats(pg_url, tmp_path):
    """Worker A (machine "a") dies mid-trial; worker B (machine "b") can't see A's process, so
    only Optuna's heartbeat tells it A is dead: B fails the stale trial, retries it, finishes."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}",
    }
    args = [
        sys.executable,
        "-m",
        "sweep",
        "run",
        *SMOKE,
        "~sweep.grid.qlora",
        "sweep.grid.lora.method.r=[4]",
        f"sweep.storage={pg_url}",
        "sweep.heartbeat_s=1",
        # long enough (several seconds) that the kill lands mid-trial
        'sweep.overrides=["model=tiny_llama","train.steps=400","train.batch_size=4","train.max_seq_len=48","eval.size=4","eval.max_new_tokens=4"]',
    ]
    trials = tmp_path / "outputs" / "smoke" / "trials"
    a = subprocess.Popen(
        args,
        cwd=tmp_path,
        env={**env, "SWEEP_WORKER_HOST": "a"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    end = time.time() + 180
    while time.time() < end and not (trials.exists() and any(trials.iterdir())):
        time.sleep(0.2)
    time.sleep(1)
    spawned = psutil.Process(a.pid).children(recursive=True)  # fork server and trial process
    a.kill()
    a.wait()
    _, alive = psutil.wait_procs(spawned, timeout=10)
    assert not alive, f"processes outlived their killed sweep: {[p.cmdline()[:3] for p in alive]}"
    time.sleep(4)  # > grace period (3 heartbeats)
    b = subprocess.run(
        args,
        cwd=tmp_path,
        env={**env, "SWEEP_WORKER_HOST": "b"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert b.returncode == 0, b.stdout[-2000:] + b.stderr[-2000:]
    records = [load(d / "result.json") for d in trials.iterdir() if (d / "result.json").exists()]
    assert Counter(r.run["label"] for r in records if r.status == "ok") == Counter(
        {"full": 1, "lora r=4": 1}
    )


@pytest.mark.slow
def test_a_distinctive_storage_password_is_found_nowhere(pg_url, tmp_path):
    """A worker given the URL on its command line, and one given it in SWEEP_STORAGE: the
    password is in no file the sweep wrote (mlflow.db, artifacts, outputs, reports) and in no
    line it printed."""
    from urllib.parse import urlparse

    import psycopg2

    secret = f"pw-{uuid.uuid4().hex[:10]}-Zq"
    original = urlparse(pg_url).password
    conn = psycopg2.connect(pg_url)
    conn.autocommit = True
    conn.cursor().execute(f"ALTER ROLE CURRENT_USER PASSWORD '{secret}'")
    try:
        url = pg_url.replace(f":{original}@", f":{secret}@")
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        }
        grid = [*SMOKE, "~sweep.grid.qlora", "sweep.grid.lora.method.r=[4]"]
        cmd = [sys.executable, "-m", "sweep", "run", *grid]
        runs = [
            subprocess.run(
                [*cmd, f"sweep.storage={url}"], cwd=tmp_path, env=env, capture_output=True,
                text=True, timeout=600,
            ),
            subprocess.run(
                cmd, cwd=tmp_path, env={**env, "SWEEP_STORAGE": url}, capture_output=True,
                text=True, timeout=600,
            ),
        ]  # fmt: skip
        for r in runs:
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
            assert secret not in r.stdout + r.stderr
        assert "storage postgresql://" in runs[1].stdout  # the second worker used the env URL
        written = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert any(p.name == "mlflow.db" for p in written)
        assert any(p.name == "report.md" for p in written)
        leaks = [str(p) for p in written if secret.encode() in p.read_bytes()]
        assert not leaks, leaks
    finally:
        conn.cursor().execute(f"ALTER ROLE CURRENT_USER PASSWORD '{original}'")
        conn.close()
