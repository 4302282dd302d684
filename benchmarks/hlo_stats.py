"""What XLA compiled for the JAX train step: its estimated bytes accessed, temp memory and thunks.

    python -m benchmarks.hlo_stats --configs tiny base

Load-independent numbers for comparing the `jax.grad` step with the hand-written VJPs' (and a
change's before and after): XLA's `cost_analysis()` bytes accessed and FLOPs, the temp buffer of
`memory_analysis()`, and the thunks the CPU runtime runs one by one (fusions, dots, copies in
the entry computation). `--dump DIR` also writes each step's optimized HLO text.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

THUNK = re.compile(r"\s*(?:ROOT )?%?[\w.\-]+ = \S+ (fusion|dot|copy|transpose)\(")


def entry_thunks(hlo_text: str) -> int:
    """The fusions, dots, copies and transposes of the ENTRY computation (the rest there are
    parameters, constants, bitcasts and tuple elements)."""
    lines = hlo_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ENTRY"))
    count = 0
    for line in lines[start + 1 :]:
        if line.startswith("}"):
            break
        count += bool(THUNK.match(line))
    return count


def step_stats(config: str, method: str, dump: Path | None = None) -> dict:
    """The compiled JAX train step of benchmark `config` with `method` ("autodiff" or "vjp")."""
    os.environ.setdefault("FT_BACKEND", "jax")
    import backends
    from functional_transformer import train as ft_train

    from .configs import CONFIGS
    from .workloads import random_batch

    backend, bc = backends.get_backend("jax"), CONFIGS[config]
    cfg = bc.model_config()
    tcfg = ft_train.TrainConfig(batch_size=bc.batch, grad_method=method)
    optimizer = ft_train.make_optimizer(tcfg, cfg)
    state = ft_train.init_state(backend.random.key(0), cfg, optimizer)
    step = ft_train.make_train_step(cfg, tcfg, optimizer, backend)
    compiled = step.lower(state, backend.tree_asarray(random_batch(bc)), backend.random.key(1)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    text = compiled.as_text()
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
        (dump / f"{config}_{method}.hlo").write_text(text)
    return {
        "bytes_accessed": cost["bytes accessed"],
        "flops": cost["flops"],
        "temp_bytes": compiled.memory_analysis().temp_size_in_bytes,
        "thunks": entry_thunks(text),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hlo_stats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "base"])
    parser.add_argument("--dump", type=Path, default=None)
    args = parser.parse_args(argv)
    for config in args.configs:
        for method in ("autodiff", "vjp"):
            s = step_stats(config, method, args.dump)
            print(
                f"{config} {method:8s} bytes accessed {s['bytes_accessed'] / 2**20:8.1f} MiB, "
                f"{s['flops'] / 1e9:7.2f} GFLOP, temp {s['temp_bytes'] / 2**20:7.1f} MiB, {s['thunks']} thunks"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
