"""The matmul peak a backend reaches on this machine: a large float32 (n, n) @ (n, n) product."""

from __future__ import annotations

import statistics
import time

import numpy as np

from backends import Backend


def _matmul(a, b):
    return a @ b


def matmul_peak(backend: Backend, n: int = 2048, reps: int = 5) -> dict:
    """Time `reps` float32 (n, n) @ (n, n) products after one warm-up (jitted on JAX).

    -> {"n", "reps", "times_s", "best_gflops", "median_gflops"}; the benchmark's peak is the best.
    """
    rng = np.random.default_rng(0)
    a = backend.asarray(rng.standard_normal((n, n), dtype=np.float32))
    b = backend.asarray(rng.standard_normal((n, n), dtype=np.float32))
    matmul = backend.jit(_matmul)
    backend.block_until_ready(matmul(a, b))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        backend.block_until_ready(matmul(a, b))
        times.append(time.perf_counter() - start)
    flop = 2 * n**3
    return {
        "n": n,
        "reps": reps,
        "times_s": times,
        "best_gflops": flop / min(times) / 1e9,
        "median_gflops": flop / statistics.median(times) / 1e9,
    }
