"""The py-libp2p release the mesh's pinned patches were written against, and the check each makes first.

Each patch (:mod:`.kad_protocol`, :mod:`.tcp_addrs`, :mod:`.yamux_patch`, :mod:`.task_index`,
:mod:`.prompt_locks`) rebinds
py-libp2p internals that another release may have changed; it refuses to install on any other version,
saying what to re-read.
"""

from __future__ import annotations

from importlib.metadata import version

PINNED_LIBP2P = "0.8.1"


def require_pinned_libp2p(patch: str, check: str, error: type[Exception] = RuntimeError) -> None:
    """Raise ``error`` unless the installed libp2p is :data:`PINNED_LIBP2P`."""
    found = version("libp2p")
    if found != PINNED_LIBP2P:
        raise error(f"{patch} is pinned to libp2p {PINNED_LIBP2P}, found {found}: {check}")
