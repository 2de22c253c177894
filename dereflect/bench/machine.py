"""This machine, described the same way every run (the ledger's `device`), and memory probes.

The device string must be stable (CPU model, cores, OS, architecture; no hostname, no kernel
build) so rows from two runs on one machine land on the same device and rows from two machines
do not. Peak memory on Linux is VmHWM after resetting it through /proc/self/clear_refs (so it is
the peak of one measurement, not of the whole process); elsewhere ru_maxrss, which cannot be
reset: the row says which (`peak_rss_kind`).
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _os_name() -> str:
    if sys.platform.startswith("linux"):
        try:
            for line in Path("/etc/os-release").read_text().splitlines():
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"') or "Linux"
        except OSError:
            pass
        return "Linux"
    if sys.platform == "darwin":
        return f"macOS {platform.mac_ver()[0]}"
    return f"{platform.system()} {platform.release()}"


@lru_cache(maxsize=1)
def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, OS, architecture, memory and Python: the row's `machine`."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 1,
        "os": _os_name(),
        "arch": platform.machine(),
        "python": platform.python_version(),
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def device_name(info: dict[str, Any] | None = None) -> str:
    """'AMD EPYC (2 cores), Debian GNU/Linux 12 (bookworm) x86_64': the ledger's device key."""
    info = info or machine_info()
    return f"{info['cpu']} ({info['cores']} cores), {info['os']} {info['arch']}"


def rss_mb() -> float:
    """Resident set size now (MB); NaN where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # noqa: BLE001 - psutil is optional
        return float("nan")


class PeakMeter:
    """Peak RSS over a block of work: `with PeakMeter() as m: ...; m.peak_mb, m.delta_mb`."""

    def __init__(self) -> None:
        self.kind = "VmHWM (reset per measurement)"
        self.before_mb = float("nan")
        self.peak_mb = float("nan")

    def __enter__(self) -> PeakMeter:
        self.before_mb = rss_mb()
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.kind = "ru_maxrss (process lifetime)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind.startswith("VmHWM"):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_mb = int(line.split()[1]) / 1024
                    return
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
        self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20

    @property
    def delta_mb(self) -> float:
        """Peak over the RSS before the block: what the measured work added."""
        return max(0.0, self.peak_mb - self.before_mb)
