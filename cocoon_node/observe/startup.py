"""Start-up failures as one line naming the cause and the flag or command that fixes it.

A node that cannot start raises from deep inside nurseries, so what reaches the CLI is an exception group
whose traceback hides the cause. Where the node knows the cause (a port it binds, the chain it connects to,
its bootstrap peers) it raises :class:`StartupFailure` with the sentence; :func:`explain` finds that, or a
few well-known leaf errors, anywhere in the group. The CLI prints the line and exits non-zero; ``--debug``
shows the traceback as well.
"""

from __future__ import annotations

import errno
import logging
import sys
import traceback
from collections.abc import Iterator


class StartupFailure(Exception):
    """The node cannot start, for a reason the user can fix; ``str()`` is the one line to print."""


def port_in_use(host: str, port: int, flag: str) -> StartupFailure:
    return StartupFailure(f"{host}:{port} is in use: pass {flag} with a free port "
                          f"(or stop the process that holds it)")


def chain_unreachable(url: str, exc: BaseException) -> StartupFailure | None:
    """The payments role could not reach its chain (a refused or dropped connection, a chain error)."""
    for leaf in leaves(exc):
        # an OSError naming a file is the store's disk, not the chain
        if (isinstance(leaf, OSError) and leaf.filename is None) or "ChainError" in _class_names(leaf):
            where = f"the EMULATED chain at {url}" if url else "the payment chain"
            return StartupFailure(f"{where} is unreachable ({leaf or type(leaf).__name__}): pass --chain-url of a "
                                  f"running chain (`cocoon-node cluster` starts one) or --no-payments")
    return None


def is_port_in_use(exc: BaseException) -> bool:
    return any(isinstance(leaf, OSError) and leaf.errno == errno.EADDRINUSE for leaf in leaves(exc))


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """Every non-group exception in ``exc`` (depth first), causes of each leaf after it."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
        return
    yield exc
    seen = {id(exc)}
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


def _class_names(exc: BaseException) -> set[str]:
    # Matched by name: importing the backends' modules here would pull torch into every CLI start.
    return {cls.__name__ for cls in type(exc).__mro__}


def explain(exc: BaseException) -> str | None:
    """The one-line cause of a failed start, or None when it is not one we can name (show the traceback)."""
    found = list(leaves(exc))
    for leaf in found:
        if isinstance(leaf, StartupFailure):
            return str(leaf)
    for leaf in found:
        names = _class_names(leaf)
        if "ModelNotFoundError" in names:
            return f"{leaf}: pass --model-path with an existing model file (or run `just setup` for the bundled " \
                   f"SmolLM2)"
        if "IdentityError" in names:
            return f"{leaf}: check --data-dir (or create a key with `cocoon-node keygen`)"
        if isinstance(leaf, OSError) and leaf.errno == errno.EADDRINUSE:
            return "a listen address is in use: pass --listen with a free port (or stop the process that holds it)"
        if "ChainError" in names and "sidecar" in str(leaf).lower():
            return f"the EMULATED chain sidecar failed: {leaf} (run `just setup`, which installs contracts/ deps)"
        if "ChainError" in names and "node not found" in str(leaf):
            return f"the EMULATED chain sidecar failed: {leaf}"
    return None


def report_failure(exc: BaseException, *, debug: bool, prog: str = "cocoon-node") -> int:
    """Print a failed start as its one-line cause (the traceback too with ``--debug``); returns exit status 1.
    A failure we cannot name is re-raised, traceback and all."""
    cause = explain(exc)
    if cause is None:
        raise exc
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    logging.shutdown()
    print(f"{prog}: {cause}" + ("" if debug else "  (--debug shows the traceback)"), file=sys.stderr, flush=True)
    return 1
