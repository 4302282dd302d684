"""cProfile of one benchmarked call: where the time of a step goes.

    python -m benchmarks.studies.profile_step --backend numpy --config base --measure train --top 25

Runs the workload once to warm up (compiles on JAX), then once under cProfile, and prints the
top functions by cumulative and by own time. On JAX a profile mostly shows dispatch; use it for
NumPy, where every array operation is a Python call.
"""

from benchmarks.env_guard import reexec_without_slow_blas_env

if __name__ == "__main__":
    reexec_without_slow_blas_env()

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402

import backends  # noqa: E402
from benchmarks.configs import CONFIGS  # noqa: E402
from benchmarks.run import MEASURES, backend_measures, workloads  # noqa: E402


def profile(backend_name: str, config: str, measure: str, top: int, decode_steps: int | None = None) -> str:
    """The pstats report of one call of `measure` (after one warm-up call)."""
    backend = backends.get_backend(backend_name)
    [workload] = [w for w in workloads(backend, CONFIGS[config], [measure], decode_steps)]
    backend.block_until_ready(workload.call())
    profiler = cProfile.Profile()
    profiler.enable()
    backend.block_until_ready(workload.call())
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.profile_step", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--backend", choices=backends.BACKEND_NAMES, default="numpy")
    parser.add_argument("--config", choices=list(CONFIGS), default="base")
    parser.add_argument("--measure", choices=MEASURES, default="train")
    parser.add_argument("--decode-steps", type=int, default=None)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    if args.measure not in backend_measures(backends.get_backend(args.backend), (args.measure,), False):
        parser.error(f"{args.measure} is not measured on {args.backend}")
    print(profile(args.backend, args.config, args.measure, args.top, args.decode_steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
