"""The worker's GPU monitor: NVML only where an NVIDIA driver is, and nothing (no error, no
import of nvidia-ml-py) where there is none, the common CPU-only worker."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from proctor.worker.gpu import GpuMonitor, driver_present


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        ([], False),
        (["nvidiactl"], True),
        (["dxg"], True),  # WSL2
        (["nvidiactl", "driver"], True),
    ],
)
def test_driver_present(tmp_path: Path, present: list[str], expected: bool) -> None:
    for name in present:
        (tmp_path / name).touch()
    paths = [str(tmp_path / n) for n in ("nvidiactl", "driver", "dxg")]
    assert driver_present(paths) is expected


@pytest.mark.skipif(driver_present(), reason="this machine has an NVIDIA driver")
def test_no_driver_no_gpu_and_no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    gpus = GpuMonitor()
    assert (gpus.available, gpus.sample()) == (False, [])
    assert "pynvml" not in sys.modules
    gpus.close()


@pytest.mark.skipif(not driver_present(), reason="no NVIDIA driver on this machine")
def test_a_driver_gives_its_gpus() -> None:
    gpus = GpuMonitor()
    try:
        assert gpus.available
        assert all(0.0 <= s.utilization <= 1.0 and s.memory_total > 0 for s in gpus.sample())
    finally:
        gpus.close()
