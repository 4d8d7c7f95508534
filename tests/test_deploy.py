"""Cluster recipes under deploy/: the SLURM array job and the Kubernetes Job start workers right.

.venv/bin/python -m pytest -q tests/test_deploy.py
"""

import os
import re
import subprocess
import time

import pytest
import yaml

from .conftest import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s" / "sweep-workers.yaml"
WORKERS = DEPLOY / "slurm" / "sweep-workers.sbatch"
REPORT = DEPLOY / "slurm" / "sweep-report.sbatch"
# scheme://user:password@host: a password written into a URL
PASSWORD_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:[^\s/@'\"]+@", re.I)


def _docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(K8S.read_text()) if d]


def _job() -> dict:
    jobs = [d for d in _docs() if d["kind"] == "Job"]
    assert len(jobs) == 1
    return jobs[0]


def _directives(path) -> dict[str, str]:
    """`#SBATCH --key=value` lines (`##SBATCH` is commented out) as {key: value}."""
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.removeprefix("#SBATCH ").split()[0].partition("=")
            out[key] = value
    return out


def test_no_password_in_any_url():
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            assert not PASSWORD_URL.search(path.read_text()), path
    assert PASSWORD_URL.search("postgresql://user:password@db/optuna")  # the pattern bites
    assert not PASSWORD_URL.search("postgresql://sweep@db:5432/optuna")


def test_k8s_job_runs_one_worker_per_gpu_pod():
    spec = _job()["spec"]
    assert spec["parallelism"] == spec["completions"] >= 2
    pod = spec["template"]["spec"]
    # a crashed worker restarts in the same pod (same host): it fails its own dead trial at once
    assert pod["restartPolicy"] == "OnFailure" and spec["backoffLimit"] >= 1
    (worker,) = pod["containers"]
    assert worker["command"][-3:-1] == ["sweep", "run"]  # python as PID 1: it gets SIGTERM
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_k8s_gives_a_preempted_trial_time_to_checkpoint_and_keeps_it_for_the_restart():
    from sweep.settings.schema import SweepConfig

    pod = _job()["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > SweepConfig().term_grace_s + 30
    (worker,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    assert mounts["outputs"] == worker["workingDir"].rstrip("/") + "/outputs"
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}["outputs"]


def test_k8s_settings_come_from_secrets_and_a_private_pgpass():
    secrets = {d["metadata"]["name"]: d for d in _docs() if d["kind"] == "Secret"}
    pod = _job()["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    env = {e["name"]: e for e in worker["env"]}
    for name in ("SWEEP_STORAGE", "MLFLOW_TRACKING_URI"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]["stringData"]  # the Secret skeleton has it
    storage = secrets[env["SWEEP_STORAGE"]["valueFrom"]["secretKeyRef"]["name"]]
    assert storage["stringData"]["SWEEP_STORAGE"].startswith("postgresql://")

    pgpass = env["PGPASSFILE"]["value"]
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (vol,) = [n for n, p in mounts.items() if pgpass.startswith(p.rstrip("/") + "/")]
    secret = volumes[vol]["secret"]
    assert secret["defaultMode"] == 0o600  # libpq ignores a pgpass others can read
    assert pgpass.rsplit("/", 1)[1] in secrets[secret["secretName"]]["stringData"]


def test_sbatch_array_of_gpu_workers():
    d = _directives(WORKERS)
    assert re.fullmatch(r"\d+-\d+(%\d+)?", d["--array"])
    assert d["--gres"].startswith("gpu:")
    assert "%a" in d["--output"]  # one log per array task
    body = WORKERS.read_text()
    assert re.search(r"^\.venv/bin/python -m sweep run sweep=", body, re.M)
    for name in ("SWEEP_STORAGE", "MLFLOW_TRACKING_URI", "PGPASSFILE"):
        assert re.search(rf"^export {name}=", body, re.M)
    assert "--dependency=afterany:" in body and REPORT.name in body
    assert re.search(r"^exec make report EXP=", REPORT.read_text(), re.M)


@pytest.mark.parametrize("path", [WORKERS, REPORT], ids=lambda p: p.name)
def test_sbatch_is_valid_bash(path):
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_sbatch_refuses_a_password_or_a_readable_pgpass(tmp_path):
    pgpass = tmp_path / "pgpass"
    pgpass.write_text("db:5432:optuna:sweep:secret\n")
    base = {**os.environ, "SLURM_SUBMIT_DIR": str(tmp_path), "PGPASSFILE": str(pgpass)}

    def run(**env):
        return subprocess.run(
            ["bash", str(WORKERS)], env={**base, **env}, capture_output=True, text=True
        )

    out = run(SWEEP_STORAGE="postgresql://sweep:secret@db/optuna")
    assert out.returncode == 2 and "holds a password" in out.stderr
    pgpass.chmod(0o644)
    out = run(SWEEP_STORAGE="postgresql://sweep@db:5432/optuna")
    assert out.returncode == 2 and "mode 0600" in out.stderr


def test_sbatch_passes_sigterm_on_and_requeues_the_task(tmp_path):
    """SLURM's early SIGTERM (--signal=B:TERM@N, N > sweep.term_grace_s) reaches the worker,
    which checkpoints and exits 143; then the task requeues itself."""
    from sweep.settings.schema import SweepConfig

    d = _directives(WORKERS)
    assert "--requeue" in d and d["--signal"].startswith("B:TERM@")
    assert int(d["--signal"].split("@")[1]) > SweepConfig().term_grace_s + 30
    pgpass = tmp_path / "pgpass"
    pgpass.write_text("db:5432:optuna:sweep:secret\n")
    pgpass.chmod(0o600)
    (tmp_path / "Makefile").write_text(".venv/.installed:\n\ttouch $@\n")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / ".installed").touch()
    worker = tmp_path / ".venv" / "bin" / "python"  # a worker that checkpoints on SIGTERM
    worker.write_text("#!/bin/bash\ntrap 'echo checkpointed >> \"$LOG\"; exit 143' TERM\n"
                      "echo started >> \"$LOG\"\nwhile true; do sleep 0.1; done\n")  # fmt: skip
    worker.chmod(0o755)
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/bash\necho "scontrol $*" >> "$LOG"\n')
    (bin_dir / "scontrol").chmod(0o755)
    log = tmp_path / "log"
    env = {**os.environ, "SLURM_SUBMIT_DIR": str(tmp_path), "PGPASSFILE": str(pgpass),
           "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3", "LOG": str(log),
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}  # fmt: skip
    proc = subprocess.Popen(["bash", str(WORKERS)], env=env, cwd=tmp_path)
    for _ in range(100):
        if log.exists() and "started" in log.read_text():
            break
        time.sleep(0.1)
    proc.send_signal(15)
    proc.wait(timeout=30)
    assert log.read_text().split("\n")[:3] == ["started", "checkpointed", "scontrol requeue 77_3"]
