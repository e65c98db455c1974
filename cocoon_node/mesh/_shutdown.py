"""Taking a py-libp2p host down without racing its services: quiesce it first, and recognise the one race
py-libp2p still raises on the way out."""

from __future__ import annotations

import logging

from libp2p.abc import IHost

log = logging.getLogger(__name__)


async def quiesce(host: IHost) -> None:
    """Stop accepting and drop connections before the services stop, so no connection event races them."""
    network = host.get_network()
    for listener in list(getattr(network, "listeners", {}).values()):
        try:
            await listener.close()
        except Exception as exc:  # a listener that is already closing is fine
            log.debug("closing listener: %s", exc)
    for peer in list(host.get_connected_peers()):
        try:
            await host.disconnect(peer)
        except Exception as exc:
            log.debug("disconnecting %s: %s", peer, exc)


def _only_shutdown_races(exc: BaseException) -> bool:
    """True when ``exc`` is py-libp2p's shutdown race alone, possibly wrapped in exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_shutdown_races(inner) for inner in exc.exceptions)
    return isinstance(exc, RuntimeError) and "closed to new arrivals" in str(exc)
