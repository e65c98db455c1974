"""Progress reports: stages with their times, loading phases as log lines, a bar only on a terminal."""

from __future__ import annotations

import io
import logging

import pytest

from cocoon_node.observe.progress import LoadProgress, Stages


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stages_print_elapsed_and_own_time() -> None:
    out, clock = io.StringIO(), FakeClock()
    stages = Stages(out, clock=clock)
    stages.begin("chain up", "EMULATED")
    clock.now += 1.5
    stages.done("chain up")
    stages.begin("model loading")
    clock.now += 20.25
    stages.done("model loading", "2 workers")
    lines = out.getvalue().splitlines()
    assert lines[0] == "cocoon: [+  0.0s] chain up… (EMULATED)"
    assert lines[1] == "cocoon: [+  1.5s] chain up: done in 1.5s"
    assert lines[3] == "cocoon: [+ 21.8s] model loading: done in 20.2s — 2 workers"
    assert stages.times == {"chain up": 1.5, "model loading": 20.25}


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_load_phases_are_log_lines_and_a_bar_only_on_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    clock, log = FakeClock(), logging.getLogger("test.progress")
    pipe = io.StringIO()
    with caplog.at_level(logging.INFO, logger="test.progress"):
        p = LoadProgress("worker m", log, stream=pipe, clock=clock)
        p.phase("reading the tokenizer")
        clock.now += 2
        p.phase("converting the weights")
        p.step(5, 10)
        clock.now += 10
        assert p.finish() == 12
    assert pipe.getvalue() == ""  # not a terminal: no bar
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:2] == ["worker m: reading the tokenizer…", "worker m: converting the weights…"]
    assert messages[-1] == "worker m: loaded in 12.0s (reading the tokenizer 2.0s, converting the weights 10.0s)"
    tty = Tty()
    bar = LoadProgress("worker m", log, stream=tty, clock=clock)
    bar.phase("converting")
    bar.step(15, 30)
    bar.step(30, 30)
    assert "[###############...............] 15/30" in tty.getvalue() and tty.getvalue().endswith("30/30\n")
