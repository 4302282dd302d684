"""Where the NumPy train step's time goes, by operation: a line-level profile grouped into kinds.

    uv run python -m benchmarks.studies.profile_numpy_step --config base --steps 3 --clock cpu

Runs one warm-up step, then traces `--steps` steps of the benchmark's train workload
(benchmarks/workloads.py) line by line over the library's own files. The time from one traced
line to the next goes to the earlier line, less the tracer's own time and a per-event overhead
measured on trivial lines, so a line's share is what its NumPy calls cost; time inside NumPy's
Python helpers (np.mean, ...) goes to the library line that called them. Each line is put in one kind (`KINDS`): a line with a matrix product is
"matmuls" wherever it is; the rest go by the file. Prints a Markdown table of each kind's share
of the traced time, and the untraced step time for comparison (the tracer adds a little).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks.env_guard import reexec_without_slow_blas_env  # noqa: E402

if __name__ == "__main__":
    reexec_without_slow_blas_env()

import argparse  # noqa: E402
import collections  # noqa: E402
import linecache  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import backends  # noqa: E402
from benchmarks import flops, workloads  # noqa: E402
from benchmarks.configs import CONFIGS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRACED = (os.path.join(ROOT, "functional_transformer"), os.path.join(ROOT, "backends"))

# (kind, path fragments): the first kind whose fragment is in a line's file, after the matmul test.
KINDS = (
    ("softmax", ("layers/softmax.py",)),
    ("layer norm", ("layers/layer_norm.py",)),
    ("dropout: random bits", ("backends/prng.py",)),
    ("dropout: masks applied", ("layers/dropout.py",)),
    ("optimizer", ("optim/",)),
    ("loss", ("loss.py",)),
    ("activations", ("layers/activations.py",)),
    ("embedding", ("layers/embedding.py",)),
    ("heads: bias, transposes, concats", ("layers/attention.py", "layers/linear.py")),
    ("residuals and parts (adds, glue)", ("parts/", "models/")),
)
ORDER = ("matmuls",) + tuple(kind for kind, _ in KINDS) + ("other",)


def kind_of(filename: str, lineno: int) -> str:
    line = linecache.getline(filename, lineno)
    if " @ " in line or "matmul" in line:
        return "matmuls"
    for kind, fragments in KINDS:
        if any(fragment in filename for fragment in fragments):
            return kind
    return "other"


class LineTimer:
    """sys.settrace hook: time between events, charged to the library line that ran before."""

    def __init__(self, clock=time.perf_counter, traced=TRACED):
        self.clock = clock
        self.traced = traced
        self.seconds = collections.Counter()
        self.events = collections.Counter()
        self.where = None
        self.last = 0.0

    def _charge(self, frame, event):
        now = self.clock()
        if self.where is not None:
            self.seconds[self.where] += now - self.last
            self.events[self.where] += 1
        if event == "return":  # back in the caller, at its current line
            caller = frame.f_back
            self.where = (caller.f_code.co_filename, caller.f_lineno) if caller is not None else None
        else:
            self.where = (frame.f_code.co_filename, frame.f_lineno)
        self.last = self.clock()

    def local(self, frame, event, arg):
        self._charge(frame, event)
        return self.local

    def global_(self, frame, event, arg):
        if not frame.f_code.co_filename.startswith(self.traced):
            return None
        self._charge(frame, event)
        return self.local


def matmul_rate(clock, n: int = 2048, reps: int = 5) -> float:
    """NumPy's float32 (n, n) @ (n, n) FLOP/s on `clock`, the best of `reps` after a warm-up."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    a @ b
    times = []
    for _ in range(reps):
        start = clock()
        a @ b
        times.append(clock() - start)
    return 2 * n**3 / min(times)


def _trivial_lines(n: int) -> None:
    for i in range(n):
        i += 1


def event_overhead(clock) -> float:
    """Seconds a traced line costs beyond what the tracer subtracts (the interpreter's own dispatch
    of the event), from lines that do almost nothing: charged back per event, so that a kind of
    work done in many small steps does not look dearer than it is."""
    n = 20000
    start = clock()
    _trivial_lines(n)
    untraced = clock() - start
    timer = LineTimer(clock, traced=(__file__,))
    sys.settrace(timer.global_)
    try:
        _trivial_lines(n)
    finally:
        sys.settrace(None)
    return max(0.0, (sum(timer.seconds.values()) - untraced) / max(1, sum(timer.events.values())))


def profile(config: str, steps: int, clock=time.perf_counter) -> tuple[dict[str, float], float, collections.Counter]:
    """-> ({kind: traced seconds over `steps` steps}, the median untraced step time in seconds,
    {(file, line): traced seconds}), all on `clock` (time.process_time counts every thread of the
    process: BLAS's too)."""
    backend = backends.get_backend("numpy")
    bc = CONFIGS[config]
    workload = workloads.train_workload(backend, bc, workloads.random_batch(bc))
    untraced = []
    for _ in range(steps + 1):
        start = clock()
        workload.call()
        untraced.append(clock() - start)
    timer = LineTimer(clock)
    for _ in range(steps):
        sys.settrace(timer.global_)
        try:
            workload.call()
        finally:
            sys.settrace(None)
            timer.where = None
    overhead = min(event_overhead(clock) for _ in range(3))
    lines = collections.Counter(
        {where: max(0.0, seconds - overhead * timer.events[where]) for where, seconds in timer.seconds.items()}
    )
    kinds = collections.Counter()
    for (filename, lineno), seconds in lines.items():
        kinds[kind_of(filename, lineno)] += seconds
    return dict(kinds), statistics.median(untraced[1:]), lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=list(CONFIGS), default="base")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="cpu", help="cpu: process CPU time, steadier on a shared machine"
    )
    parser.add_argument(
        "--peak", action="store_true", help="also the step's model FLOP/s as a share of NumPy's matmul's"
    )
    parser.add_argument("--lines", type=int, default=0, help="also list the N costliest lines")
    args = parser.parse_args(argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    kinds, step_seconds, lines = profile(args.config, args.steps, clock)
    total = sum(kinds.values())
    print(
        f"{args.config} train step, {args.clock} time: {step_seconds * 1e3:.1f} ms untraced (median), "
        f"{total / args.steps * 1e3:.1f} ms traced"
    )
    print("| operation | ms per step | % of step |")
    print("|---|--:|--:|")
    for kind in ORDER:
        if kind in kinds:
            print(f"| {kind} | {kinds[kind] / args.steps * 1e3:.1f} | {100 * kinds[kind] / total:.1f}% |")
    if args.peak:
        bc = CONFIGS[args.config]
        step_flop = flops.train_flops(bc.model_config(), bc.batch, bc.src_len, bc.tgt_len)
        peak = matmul_rate(clock)
        print(
            f"model FLOPs {step_flop / 1e9:.2f} G per step: {step_flop / step_seconds / 1e9:.1f} GFLOP/s against "
            f"a 2048^3 matmul's {peak / 1e9:.1f} GFLOP/s ({args.clock} time): {100 * step_flop / step_seconds / peak:.0f}%"
        )
    for (filename, lineno), seconds in lines.most_common(args.lines):
        where = f"{os.path.relpath(filename, ROOT)}:{lineno}"
        print(f"{100 * seconds / total:5.1f}% {where:45s} {linecache.getline(filename, lineno).strip()[:70]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
