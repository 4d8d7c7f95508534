"""A trial process on CPU keeps the memory it frees for its next step (sweep.trial.process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sweep.trial import process

# Steps that each make, write and free three large tensors (64, 36 and 48 MiB), as a training
# step makes gradients and activations; printed: the page faults each step took.
STEPS = """
import resource, sys
import torch
from sweep.trial import process
{setup}
def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    held = [torch.ones(n) for n in (16 * 2**20, 9 * 2**20, 12 * 2**20)]
    del held
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(*[step() for _ in range(30)])
"""
PAGES = (16 + 9 + 12) * 2**20 * 4 // 4096  # the pages each step writes


def faults_per_step(setup: str) -> list[int]:
    code = STEPS.format(setup=setup)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [int(x) for x in out.stdout.split()]


def test_a_trial_on_cpu_reuses_freed_memory_instead_of_faulting_it_in_again() -> None:
    if not process.keep_freed_memory():
        pytest.skip("not glibc: the C allocator's own policy stands")
    default = faults_per_step("")
    kept = faults_per_step("process.isolate(0.0)")  # what a trial process does first
    assert min(default) > PAGES // 2  # glibc maps buffers this large afresh every step
    assert kept[0] > PAGES // 2  # the first step takes its memory from the kernel
    later = sorted(kept[-10:])  # the heap grows for a few steps (torch's aligned allocations)
    assert later[5] < PAGES // 20  # then the steps reuse it
    assert sum(later) < sum(default[-10:]) // 5


def test_a_trial_process_starts_no_progress_monitor_thread() -> None:
    # a thread started at an address-space limit can hang its process for good
    code = """
import threading, tqdm
from sweep.trial import process
{setup}
for _ in tqdm.tqdm(range(3), disable=False):
    pass
print(threading.active_count(), tqdm.tqdm.monitor is not None)
"""

    def run(setup: str) -> list[str]:
        cmd = [sys.executable, "-c", code.format(setup=setup)]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()

    assert run("") == ["2", "True"]  # tqdm's default: a monitor thread beside the main one
    assert run("process.isolate(0.0)") == ["1", "False"]
