"""Memory ledger: what one training step holds, counted tensor by tensor, on any device.

    python -m pytest -q tests/planning/test_ledger.py

The measured counterpart of `make plan` (sweep/planning/plan.py), in the same parts:
- params: bytes of every parameter (shared ones once), by dtype (a 4-bit base shows as uint8:
  its packed bytes; the quantization constants are not parameters and are not counted);
- grads: bytes of every `.grad` just before the optimizer step;
- optimizer: bytes of every tensor in the optimizer's state after its first step (AdamW's two
  moments and its step counters; bitsandbytes' 8-bit states and their absmax);
- activations: bytes torch saves for backward during one forward, through
  `torch.autograd.graph.saved_tensors_hooks`, each storage counted once and parameters excluded
  (as tests/planning/test_plan.py checks the planner). All of them are alive at the start of the backward,
  so their sum is the activations' peak. With gradient checkpointing the checkpoint's own hooks
  take over inside each block, so only what it keeps outside the blocks is seen.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def params_by_dtype(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of the model's parameters per dtype ('torch.float32': n); shared parameters once."""
    out: dict[str, int] = {}
    for p in model.parameters():
        key = str(p.dtype)
        out[key] = out.get(key, 0) + tensor_bytes(p)
    return out


def grad_bytes(params: Iterable[torch.Tensor]) -> int:
    return sum(tensor_bytes(p.grad) for p in params if p.grad is not None)


def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes of every tensor in optimizer.state (through accelerate's wrapper, if any); a tensor
    several states share (bitsandbytes' 8-bit quantization maps) counts once."""
    inner = getattr(optimizer, "optimizer", optimizer)
    parts = getattr(inner, "per_weight", None)  # one optimizer per weight (in backward)
    states = (
        [s for o in parts.values() for s in o.state.values()] if parts else inner.state.values()
    )
    total, seen = 0, set()
    for state in states:
        for value in state.values():
            if isinstance(value, torch.Tensor) and id(value) not in seen:
                seen.add(id(value))
                total += tensor_bytes(value)
    return total


def _in_backward() -> bool:
    current = getattr(torch._C, "_current_graph_task_id", None)
    return current is not None and current() != -1


class SavedTensors:
    """`with SavedTensors(model) as saved: loss = model(...).loss` -> saved.bytes.

    Counts the storages autograd saves for backward (each once, parameters excluded)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self._seen: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if _in_backward():  # a reentrant checkpoint's recomputation: not held at the peak
            return t
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without one storage
            return t
        ptr = storage.data_ptr()
        if ptr not in self._params:
            self._seen[ptr] = max(self._seen.get(ptr, 0), storage.nbytes())
        return t

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())

    def __enter__(self) -> SavedTensors:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def metrics(
    params: dict[str, int], grads: int | None, optimizer: int | None, activations: int | None
) -> dict[str, int | None]:
    """The ledger's flat metrics for the result record."""
    return {
        "ledger_params_bytes": sum(params.values()),
        "ledger_grads_bytes": grads,
        "ledger_optimizer_bytes": optimizer,
        "ledger_activations_bytes": activations,
    }
