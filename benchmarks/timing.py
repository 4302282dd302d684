"""Timing one workload: a warm-up call (compilation on JAX), then `reps` timed calls, plus peak memory.

Peak memory, by backend:
- NumPy: `tracemalloc` peak during the warm-up call (NumPy reports its array buffers to
  tracemalloc); the warm-up is not timed, so tracemalloc's overhead does not touch the timings.
- JAX on a device with `memory_stats()` (GPU, TPU): "peak_bytes_in_use", the process's peak so far.
- JAX on CPU (no memory_stats): the growth of the process's maximum resident set size
  (ru_maxrss) over the warm-up call. ru_maxrss is a high-water mark of the whole process, so 0
  means "no higher than what an earlier measurement already reached".
- A peer library (benchmarks/peers, a `PeerRuntime` in place of the backend): as JAX on CPU.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from backends import Backend


@dataclasses.dataclass
class Timing:
    first_call_s: float  # the warm-up call: compilation plus one run on JAX
    times_s: list[float]  # the timed calls
    peak_mem_bytes: int | None
    peak_mem_method: str

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)


def max_rss_bytes() -> int:
    """The process's maximum resident set size so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def device_peak_bytes(backend: Backend) -> int | None:
    """JAX's device memory_stats()["peak_bytes_in_use"], None where the device has no stats (CPU)."""
    if backend.name != "jax":
        return None
    stats = backend.jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _timed_call(call: Callable[[], Any], backend: Backend) -> float:
    start = time.perf_counter()
    backend.block_until_ready(call())
    return time.perf_counter() - start


def _warm_up(call: Callable[[], Any], backend: Backend) -> tuple[float, int | None, str]:
    """-> (seconds, peak memory bytes, how the memory was measured)."""
    if backend.name == "numpy":
        tracemalloc.start()
        try:
            seconds = _timed_call(call, backend)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return seconds, peak, "tracemalloc"
    rss_before = max_rss_bytes()
    seconds = _timed_call(call, backend)
    device_peak = device_peak_bytes(backend)
    if device_peak is not None:
        return seconds, device_peak, "device_memory_stats"
    return seconds, max_rss_bytes() - rss_before, "maxrss_delta"


def time_workload(call: Callable[[], Any], backend: Backend, reps: int) -> Timing:
    """One warm-up call, then `reps` calls each timed to completion (block_until_ready on JAX)."""
    first_s, peak, method = _warm_up(call, backend)
    times = [_timed_call(call, backend) for _ in range(reps)]
    return Timing(first_call_s=first_s, times_s=times, peak_mem_bytes=peak, peak_mem_method=method)
