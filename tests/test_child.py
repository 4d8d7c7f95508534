"""Trial processes: what the fork server may import on a GPU host."""

from __future__ import annotations

import subprocess
import sys

from sweep.child import GPU_PRELOAD, preload_modules


def test_gpu_preload_never_imports_bitsandbytes():
    # bitsandbytes initializes CUDA at import; a server that did so would fork children that
    # cannot use the GPU. Checked in a fresh interpreter, which is what the server is.
    script = (
        "import sys\n"
        f"for m in {GPU_PRELOAD!r}: __import__(m)\n"
        "print(sorted(m for m in ('bitsandbytes', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_preload_on_cpu_is_the_whole_trial_module():
    assert preload_modules(False) == ["sweep.trial", "reasoning_gym"]
    assert preload_modules(True) == GPU_PRELOAD and "sweep.trial" not in GPU_PRELOAD
