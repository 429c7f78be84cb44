"""Progress of long jobs, on a terminal and off it.

On a terminal a tqdm bar; anywhere else (a log file, CI, a cluster job) tqdm prints nothing
useful, so :class:`Progress` prints one plain line every ``every`` items or ``interval_s``
seconds, whichever comes first: items done, rate, ETA and the mean of a tracked value (the
reward of the last episodes), e.g.::

    [train] 120/600 episodes (20 %), 1.8 episodes/s, ETA 4 min 27 s, mean reward +0.123 (last 50)
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import IO, Any

from dynprune.validation import require_at_least, require_positive


@dataclass(frozen=True)
class ProgressConfig:
    """When the plain-text progress line is printed (off a terminal)."""

    every: int = 50
    """Print after this many items..."""
    interval_s: float = 30.0
    """...or after this many seconds since the last line, whichever comes first."""
    window: int = 50
    """The tracked value's mean is over this many most recent items."""

    def __post_init__(self) -> None:
        require_at_least(self, 1, "every", "window")
        require_positive(self, "interval_s")


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"4 min 27 s"``, ``"1 h 05 min"``; ``"?"`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """A progress report for ``total`` items: a tqdm bar on a terminal, plain lines elsewhere.

    Use as a context manager; call :meth:`update` per item, with the value to average (a reward)
    when there is one. ``tty=None`` asks the stream whether it is a terminal.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "items",
        *,
        initial: int = 0,
        value_name: str = "reward",
        config: ProgressConfig | None = None,
        stream: IO[str] | None = None,
        tty: bool | None = None,
        enabled: bool = True,
    ) -> None:
        if total < 0 or not 0 <= initial <= max(total, initial):
            raise ValueError(f"need total >= 0 and 0 <= initial, got total={total}, initial={initial}")
        self.total, self.desc, self.unit, self.value_name = total, desc, unit, value_name
        self.config = config or ProgressConfig()
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = enabled
        self.done = initial
        self._start_done = initial
        self._values: deque[float] = deque(maxlen=self.config.window)
        is_tty = self.stream.isatty() if tty is None else tty
        self._bar: Any = None
        if enabled and is_tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit.rstrip("s") or unit, file=self.stream)
        self._t0 = time.monotonic()
        self._last_line = self._t0
        self._since_line = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1, value: float | None = None) -> None:
        """``n`` more items done; ``value`` (a reward, say) enters the running mean."""
        self.done += n
        if value is not None and math.isfinite(value):
            self._values.append(float(value))
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if self._values:
                self._bar.set_postfix({f"mean {self.value_name}": f"{self.mean:+.3f}"}, refresh=False)
            return
        self._since_line += n
        now = time.monotonic()
        if self._since_line >= self.config.every or now - self._last_line >= self.config.interval_s:
            self._print(now)

    @property
    def mean(self) -> float:
        """Mean of the tracked value over the window (NaN before the first)."""
        return sum(self._values) / len(self._values) if self._values else math.nan

    def line(self, now: float | None = None) -> str:
        """The plain progress line as of ``now`` (monotonic seconds)."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._t0
        fresh = self.done - self._start_done
        rate = fresh / elapsed if elapsed > 0 else math.nan
        eta = (self.total - self.done) / rate if rate and rate > 0 else math.nan
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = (
            f"[{self.desc}] {self.done}/{self.total} {self.unit} ({pct:.0f} %), "
            f"{rate:.2f} {self.unit}/s, ETA {format_duration(eta)}"
        )
        if self._values:
            text += f", mean {self.value_name} {self.mean:+.3f} (last {len(self._values)})"
        return text

    def _print(self, now: float) -> None:
        print(self.line(now), file=self.stream, flush=True)
        self._last_line = now
        self._since_line = 0

    def close(self) -> None:
        """Close the bar, or print the final line if anything happened since the last one."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self._since_line:
            self._print(time.monotonic())
