"""Suite-wide guard: a test that reads a file beside the checkout (e.g. ``../shared``) fails the run.

A user's clone has nothing next to it, so such a read passes here and breaks for everyone else. An audit hook
records every ``open`` of a path inside the checkout's parent folder but outside the checkout; the session
then fails, naming each path and the test that opened it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_PARENT = str(ROOT.parent) + os.sep
_ROOT = str(ROOT) + os.sep
_outside: list[tuple[str, str]] = []
_current_test = ["(collection)"]


def _outside_checkout(path: object) -> str | None:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):
        return None  # a file descriptor
    full = os.path.abspath(path)
    if full.startswith(_PARENT) and not (full + os.sep).startswith(_ROOT):
        return full
    return None


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and args:
        full = _outside_checkout(args[0])
        if full is not None:
            _outside.append((full, _current_test[0]))


sys.addaudithook(_audit)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _current_test[0] = item.nodeid


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _outside:
        lines = sorted({f"  {path}  (opened by {test})" for path, test in _outside})
        sys.stderr.write("\nFiles outside the checkout were opened; keep test data inside the repository:\n")
        sys.stderr.write("\n".join(lines) + "\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
