"""Keep OpenBLAS tuning variables that slow a current NumPy out of the benchmark process.

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are read by OpenBLAS when NumPy is first imported, so
removing them from `os.environ` later is too late. `python -m benchmarks` therefore calls
`reexec_without_slow_blas_env()` before anything imports NumPy: when either variable is set it
replaces the process (os.execve of sys.executable with the same command line) by one whose
environment lacks both, and leaves a marker variable saying what it removed.

Standard library only: this module must be importable before NumPy.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

SLOW_BLAS_ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
REEXEC_MARKER = "FT_BENCHMARKS_REEXECUTED_WITHOUT"


def without_slow_blas_vars(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """-> (a copy of env without SLOW_BLAS_ENV_VARS, the names that were removed)."""
    removed = [name for name in SLOW_BLAS_ENV_VARS if name in env]
    return {k: v for k, v in env.items() if k not in SLOW_BLAS_ENV_VARS}, removed


def reexec_without_slow_blas_env() -> None:
    """Re-execute this Python process without SLOW_BLAS_ENV_VARS when any of them is set.

    Returns normally when none is set; otherwise never returns. The new process sees
    REEXEC_MARKER (comma-separated names removed), which `reexec_record()` reports.
    """
    env, removed = without_slow_blas_vars(os.environ)
    if not removed:
        return
    env[REEXEC_MARKER] = ",".join(removed)
    sys.stdout.flush()
    sys.stderr.flush()
    # sys.orig_argv keeps the interpreter flags and "-m benchmarks"; argv[0] is the interpreter.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def reexec_record() -> dict:
    """What the JSON records about it: whether this process is a re-execution, what was removed,
    and which slow variables are set now (non-empty only when the guard was bypassed, e.g. when
    `benchmarks.run.main` is called directly)."""
    marker = os.environ.get(REEXEC_MARKER, "")
    return {
        "reexecuted": bool(marker),
        "removed_env_vars": [name for name in marker.split(",") if name],
        "slow_blas_env_vars_present": [name for name in SLOW_BLAS_ENV_VARS if name in os.environ],
    }
