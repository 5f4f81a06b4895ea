"""What every benchmark records about the conditions it ran under: measured, not assumed.

Importing this module notes the load average (the benchmark's start); :func:`measured` returns
the machine (CPU model, cores, Python, torch and its threads) with the load average at the
start and now, so a result file says how busy the shared machine was while it was measured.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

LOAD_AT_START = [round(x, 2) for x in os.getloadavg()]


def data_dir() -> Path:
    """The folder that holds real datasets in BEIR layout (``scifact/``, ...): ``$NPDECODE_DATA``,
    else ``data/`` in the folder beside this checkout (where CI puts its copy)."""
    env = os.environ.get("NPDECODE_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measured(**extra: Any) -> dict[str, Any]:
    """The machine and the load average (1, 5, 15 min) at the start and now, plus ``extra``."""
    import torch

    return {
        "cpu": cpu_name(),
        "arch": platform.machine(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_before": LOAD_AT_START,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        **extra,
    }
