"""The per-peer rate limit shared by the dial-back and fresh-attestation servers (virtual time)."""

from __future__ import annotations

import trio
import trio.testing

from cocoon_node.mesh import PeerRateLimit, ratelimit


def test_a_peer_gets_its_quota_per_minute_and_others_are_not_affected() -> None:
    async def main() -> None:
        limit = PeerRateLimit(3)
        assert [limit.allow("a") for _ in range(4)] == [True, True, True, False]
        assert limit.allow("b")  # another peer has its own window
        await trio.sleep(59)
        assert not limit.allow("a")
        await trio.sleep(1)  # the first three left the window
        assert [limit.allow("a") for _ in range(4)] == [True, True, True, False]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_memory_stays_bounded_by_forgetting_idle_peers(monkeypatch: object) -> None:
    async def main() -> None:
        limit = PeerRateLimit(1)
        for i in range(10):
            limit.allow(f"old{i}")
        await trio.sleep(61)
        for i in range(5):
            limit.allow(f"new{i}")
        assert set(limit._recent) == {f"new{i}" for i in range(5)}  # the idle ones went at the 5th new peer

    monkeypatch.setattr(ratelimit, "MAX_TRACKED_PEERS", 14)  # type: ignore[attr-defined]
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
