"""Progress through long waits: stages with their times (the local cluster), phases of model loading.

On a terminal a phase with a known total draws a one-line bar that rewrites itself; anywhere else (a log
file, a pipe, CI) each phase is one plain line, so logs stay readable.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO


class Stages:
    """Prints each stage of a start-up as it begins and ends, with the time since the start and its own."""

    def __init__(self, out: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 prefix: str = "cocoon") -> None:
        self._out = out
        self._clock = clock
        self._prefix = prefix
        self._t0 = clock()
        self._begun: dict[str, float] = {}
        self.times: dict[str, float] = {}  # stage -> seconds it took

    def _print(self, text: str) -> None:
        out = self._out or sys.stdout
        print(f"{self._prefix}: [+{self._clock() - self._t0:5.1f}s] {text}", file=out, flush=True)

    def begin(self, stage: str, detail: str = "") -> None:
        self._begun[stage] = self._clock()
        self._print(f"{stage}…" + (f" ({detail})" if detail else ""))

    def note(self, text: str) -> None:
        """A line inside the current stage (what a long wait is doing now)."""
        self._print(text)

    def done(self, stage: str, detail: str = "") -> float:
        took = self._clock() - self._begun.get(stage, self._t0)
        self.times[stage] = took
        self._print(f"{stage}: done in {took:.1f}s" + (f" — {detail}" if detail else ""))
        return took


class LoadProgress:
    """Phases of loading a model, reported to a logger and, on a terminal, as a progress bar."""

    def __init__(self, what: str, log: logging.Logger, *, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._what = what
        self._log = log
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._clock = clock
        self._t0 = clock()
        self._phase_started = self._t0
        self._phase = ""
        self.phases: list[tuple[str, float]] = []  # (phase, seconds) of finished phases

    def phase(self, name: str) -> None:
        """Start phase ``name`` (the previous one ends here)."""
        self._end_phase()
        self._phase, self._phase_started = name, self._clock()
        self._log.info("%s: %s…", self._what, name)

    def step(self, done: int, total: int) -> None:
        """Progress inside the current phase (a bar on a terminal; nothing in a log)."""
        if not self._tty or total <= 0:
            return
        width = 30
        filled = int(width * min(done, total) / total)
        self._stream.write(f"\r{self._what}: {self._phase} [{'#' * filled}{'.' * (width - filled)}] "
                           f"{done}/{total}")
        if done >= total:
            self._stream.write("\n")
        self._stream.flush()

    def _end_phase(self) -> None:
        if self._phase:
            self.phases.append((self._phase, self._clock() - self._phase_started))

    def finish(self) -> float:
        self._end_phase()
        self._phase = ""
        total = self._clock() - self._t0
        self._log.info("%s: loaded in %.1fs (%s)", self._what, total,
                       ", ".join(f"{p} {t:.1f}s" for p, t in self.phases))
        return total
