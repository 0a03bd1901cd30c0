"""GPU utilization and memory through NVML (nvidia-ml-py), where a GPU exists.

Without a driver, NVML or a device every call returns an empty list: a CPU-only worker is
the common case, not an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("proctor.gpu")

DRIVER_PATHS = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg")
"""What an NVIDIA driver leaves where NVML can work: its control device, its /proc folder,
or WSL2's GPU device. Without any of them NVML cannot start, so a worker does not spend the
import of nvidia-ml-py and a failed library search (about 40 ms) on its start-up."""


def driver_present(paths: Iterable[str] = DRIVER_PATHS) -> bool:
    return any(os.path.exists(p) for p in paths)


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    utilization: float  # 0-1
    memory_used: int  # bytes
    memory_total: int  # bytes


class GpuMonitor:
    """Samples every visible GPU; silent and empty where there is none."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[Any] = []
        if not driver_present():
            log.debug("no gpu", reason="no NVIDIA driver")
            return
        try:
            import pynvml  # noqa: PLC0415 - optional: absent or failing without NVIDIA libraries

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = pynvml
        except Exception as exc:  # NVMLError, ImportError, OSError: no GPU here
            log.debug("no gpu", reason=str(exc))
            self._handles = []

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def sample(self) -> list[GpuSample]:
        if self._nvml is None:
            return []
        out = []
        for i, handle in enumerate(self._handles):
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                name = self._nvml.nvmlDeviceGetName(handle)
            except Exception as exc:  # a GPU that fell off the bus: report the others
                log.warning("gpu sample failed", gpu=i, error=str(exc))
                continue
            out.append(
                GpuSample(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    utilization=float(util.gpu) / 100.0,
                    memory_used=int(mem.used),
                    memory_total=int(mem.total),
                )
            )
        return out

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:
                log.debug("nvml shutdown failed", error=str(exc))
            self._nvml = None
