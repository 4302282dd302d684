"""A progress line on stderr for work counted in items (examples decoded, trials run).

On a terminal the line is rewritten in place (a carriage return before each update); elsewhere (a
log file, a pipe, a CI job) a plain line is written at most every `interval_s` seconds and at the
end, so a log is not flooded with thousands of updates.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    """`label: done/total unit [elapsed]` for `total` items, advanced with `advance(n)`; `close()`
    ends it (a newline on a terminal). Disabled (enabled=False) it writes nothing."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        unit: str = "",
        enabled: bool = True,
        stream: TextIO | None = None,
        interval_s: float = 10.0,
    ):
        self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s
        self.done = 0
        self.t_start = self.t_written = time.perf_counter()
        self.closed = False

    def _line(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.label}: {self.done}/{self.total}{unit} [{time.perf_counter() - self.t_start:.0f} s]"

    def advance(self, n: int = 1) -> None:
        """n more items done."""
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.interactive:
            self.stream.write("\r" + self._line())
            self.stream.flush()
        elif now - self.t_written >= self.interval_s and self.done < self.total:
            self.stream.write(self._line() + "\n")
            self.stream.flush()
            self.t_written = now

    def close(self) -> None:
        """End the line: the final count (in place, then a newline, on a terminal)."""
        if not self.enabled or self.closed:
            return
        self.closed = True
        self.stream.write(("\r" if self.interactive else "") + self._line() + "\n")
        self.stream.flush()

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_line(progress: bool | str, default_label: str, total: int, unit: str = "") -> ProgressLine:
    """The ProgressLine a `progress=` option asks for: False for none, True for one labelled
    `default_label`, or a string: the label."""
    label = progress if isinstance(progress, str) else default_label
    return ProgressLine(label, total, unit=unit, enabled=bool(progress))


__all__ = ["ProgressLine", "progress_line"]
