"""What this machine has: an NVIDIA GPU (asked of NVML, no CUDA context made), device UUIDs.

python -c "from sweep.settings.hardware import gpu_present; print(gpu_present())"
"""

from __future__ import annotations


def gpu_present() -> bool:
    """An NVIDIA GPU on this host (NVML; no CUDA context is created)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return False


def device_uuid(index: int) -> str:
    """NVML's UUID of CUDA device `index` ('GPU-' and torch's UUID): the same device under any
    CUDA_VISIBLE_DEVICES, which renumbers devices for CUDA but not for NVML."""
    import torch

    return f"GPU-{torch.cuda.get_device_properties(index).uuid}"
