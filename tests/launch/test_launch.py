"""A trial process that left no record: which deaths are out of memory and which are failures."""

from __future__ import annotations

import signal

import pytest

from sweep.launch import launch
from sweep.launch.launch import without_record
from sweep.trial.process import OOM_EXIT


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch.hardware, "gpu_present", lambda: False)


def test_a_crash_under_a_cpu_address_space_limit_is_out_of_memory(cpu):
    # CPython itself was seen to segfault handling a MemoryError at the limit (the faults test in
    # CI); a C++ or Rust allocation failure aborts
    for sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT):
        error, status = without_record(-sig, 2.5)
        assert status == "oom", sig
        assert signal.Signals(sig).name in error and "2.5 GiB address-space limit" in error


def test_the_same_crash_without_a_limit_or_on_a_gpu_is_a_failure(cpu, monkeypatch):
    assert without_record(-signal.SIGSEGV, 0.0) == (
        f"trial process exited with code {-signal.SIGSEGV} and left no record",
        "failed",
    )
    monkeypatch.setattr(launch.hardware, "gpu_present", lambda: True)  # the limit caps CUDA only
    assert without_record(-signal.SIGSEGV, 2.5)[1] == "failed"


def test_other_exits_keep_their_meaning(cpu):
    assert without_record(1, 2.5)[1] == "failed"  # an ordinary exception under a limit
    assert without_record(-signal.SIGTERM, 2.5)[1] == "failed"
    error, status = without_record(-signal.SIGKILL, 0.0)
    assert status == "oom" and "out-of-memory killer" in error


def test_running_out_before_the_record_is_out_of_memory_and_names_the_limit(cpu):
    error, status = without_record(OOM_EXIT, 1.0)
    assert status == "oom" and error.endswith(
        "under the 1 GiB address-space limit (sweep.memory_limit_gib)"
    )
    assert without_record(OOM_EXIT, 0.0) == (
        "ran out of memory before it could record a result",
        "oom",
    )
