"""How a requester ranks workers: each worker's :class:`Reputation` (what it did for us) and the
:class:`WorkerSelector` that filters and ranks candidates by it (reliability first, then speed, then price).
Out of ``requester.py`` to keep that module readable in one sitting; ``requester`` re-exports both."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cocoon_node.inference.features import unsupported
from cocoon_node.mesh import Announcement


@dataclass
class Reputation:
    """Exponentially weighted history of one worker, as this requester saw it."""

    ttft_ms: float = 0.0
    tokens_per_second: float = 0.0
    failure_rate: float = 0.0
    timeout_rate: float = 0.0
    samples: int = 0
    successes: int = 0
    alpha: float = 0.3

    def record_success(self, ttft_ms: float, tokens_per_second: float) -> None:
        if self.successes == 0:
            self.ttft_ms, self.tokens_per_second = ttft_ms, tokens_per_second
        else:
            self.ttft_ms += self.alpha * (ttft_ms - self.ttft_ms)
            self.tokens_per_second += self.alpha * (tokens_per_second - self.tokens_per_second)
        self.failure_rate *= 1 - self.alpha
        self.timeout_rate *= 1 - self.alpha
        self.samples += 1
        self.successes += 1

    def record_failure(self, *, timeout: bool) -> None:
        self.failure_rate += self.alpha * (1 - self.failure_rate)
        if timeout:
            self.timeout_rate += self.alpha * (1 - self.timeout_rate)
        self.samples += 1


@dataclass
class WorkerSelector:
    """Ranks candidates: reliability first, then speed, then price."""

    reputations: dict[bytes, Reputation] = field(default_factory=dict)
    in_flight: dict[bytes, int] = field(default_factory=dict)
    # Workers caught claiming more tokens than we could count (code "overcount"): never chosen again.
    dropped: dict[bytes, str] = field(default_factory=dict)

    def reputation(self, peer_id: bytes) -> Reputation:
        return self.reputations.setdefault(peer_id, Reputation())

    def eligible(
        self,
        workers: Sequence[Announcement],
        model: str,
        max_price_prompt: int,
        max_price_completion: int,
        *,
        allow_synthetic: bool,
        needs: Mapping[str, str] | None = None,
        with_free_slot: bool = True,
    ) -> list[Announcement]:
        """``needs``: the optional features a request uses (capability -> field); only workers that
        announced them all are eligible. ``with_free_slot=False``: also the ones our requests fill now."""
        out = []
        for w in workers:
            if w.model != model or (w.synthetic and not allow_synthetic) or w.peer_id in self.dropped:
                continue
            if needs and unsupported(needs, frozenset(w.capabilities)) is not None:
                continue
            if w.price_prompt > max_price_prompt or w.price_completion > max_price_completion:
                continue
            # Our own in-flight count is exact; the announced load may lag a heartbeat behind, so it only
            # lowers the score (a worker that is really full rejects with "overloaded" and we retry).
            if with_free_slot and self.in_flight.get(w.peer_id, 0) >= w.max_concurrent:
                continue
            out.append(w)
        return out

    def score(self, w: Announcement) -> float:
        rep = self.reputation(w.peer_id)
        reliability = (1 - rep.failure_rate) * (1 - rep.timeout_rate)
        speed = (
            1.0
            if rep.successes == 0  # no speed measured yet: neutral, not the 0 ms TTFT of a worker that only failed
            else min(rep.tokens_per_second, 1000.0) / 50.0 + 1000.0 / (rep.ttft_ms + 100.0)
        )
        price = 1.0 / (1.0 + math.log1p(w.price_prompt + w.price_completion))
        headroom = 1 - min(max(w.load, self.in_flight.get(w.peer_id, 0)), w.max_concurrent) / w.max_concurrent
        return reliability * 10 + speed + price + headroom

    def rank(self, workers: Sequence[Announcement]) -> list[Announcement]:
        return sorted(workers, key=self.score, reverse=True)
