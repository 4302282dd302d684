"""Other libraries' implementations of the benchmarked model, timed in the same run as ours.

A peer is imported only when `python -m benchmarks --peers NAME` asks for it: its library comes
from the optional dependency group `peers` (`uv run --group peers ...`), never from the library's
own dependencies.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from typing import Any

PEERS = ("torch",)
PEER_TITLES = {"torch": "PyTorch eager"}
PEER_INSTALL = {
    "torch": "PyTorch is not installed: run `uv run --group peers python -m benchmarks --peers torch ...` "
    "(PyTorch's CPU build; installing it elsewhere: docs/benchmarks.md, 'Installing PyTorch')",
}
PEER_MODULES = {"torch": "torch"}
PEER_MEASURES = {"torch": ("forward", "train", "decode")}  # the measures of ours each peer implements


def check_installed(peers: tuple[str, ...]) -> None:
    """SystemExit with one line saying how to get the library of the first peer that is missing."""
    for name in peers:
        if importlib.util.find_spec(PEER_MODULES[name]) is None:
            raise SystemExit(f"--peers {name}: {PEER_INSTALL[name]}")


@dataclasses.dataclass(frozen=True)
class PeerRuntime:
    """What benchmarks.timing and benchmarks.peak need of a backend, for a peer library: its name
    (the records' "backend"), host arrays in, compilation (none: eager), and waiting for results."""

    name: str
    asarray: Callable[[Any], Any]
    jit: Callable[[Callable], Callable] = lambda fn: fn
    block_until_ready: Callable[[Any], Any] = lambda out: out
