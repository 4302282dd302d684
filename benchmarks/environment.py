"""Where the numbers come from: CPU, load, library versions, NumPy's BLAS, JAX's devices."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from .env_guard import reexec_record

ENV_VARS_OF_INTEREST = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "XLA_FLAGS",
    "FT_BACKEND",
    "JAX_PLATFORMS",
)


def numpy_blas() -> dict:
    """threadpoolctl's view of the loaded BLAS libraries (a dev dependency), else NumPy's build config."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        info = {"threadpool_info": None, "note": "threadpoolctl is not installed"}
        try:
            info["build_blas"] = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        except Exception:  # noqa: BLE001 - older NumPy without mode="dicts"
            pass
        return info
    return {"threadpool_info": threadpool_info()}


def jax_info() -> dict | None:
    """JAX and jaxlib versions and devices, None when JAX is not imported by this run."""
    if "jax" not in sys.modules:
        return None
    import jax
    import jaxlib

    return {
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "default_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kinds": sorted({d.device_kind for d in jax.devices()}),
    }


def git_revision() -> str | None:
    """The repository's HEAD commit, with "+dirty" when the tree has changes; None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other processes compete with the benchmark for CPUs)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def environment() -> dict:
    """Everything above plus the time, CPU counts and load average, as JSON-ready values."""
    usable_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "load_average": load_average(),
        "numpy_version": np.__version__,
        "numpy_blas": numpy_blas(),
        "jax": jax_info(),
        "env_vars": {name: os.environ[name] for name in ENV_VARS_OF_INTEREST if name in os.environ},
        "slow_blas_env_guard": reexec_record(),
        "git_revision": git_revision(),
    }
