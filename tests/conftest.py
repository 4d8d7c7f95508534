"""Shared fixtures: every test runs offline, on CPU, in its own working directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "test"  # tiny model build and converted SmolLM2, reused across runs


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a temp dir with its own MLflow store; the model cache is shared."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("SWEEP_CACHE", str(CACHE))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return tmp_path


def tiny(*overrides: str) -> list[str]:
    """Overrides for a seconds-long trial on the tiny model."""
    return [
        "model=tiny_llama",
        "train.steps=8",
        "train.batch_size=4",
        "train.max_seq_len=48",
        "train.measure_warmup_steps=1",
        "eval.size=4",
        "eval.max_new_tokens=4",
        *overrides,
    ]
