"""Attestation in the mesh: workers publish signed reports into the DHT, requesters verify before use.

Reports live under ``/cocoon-att/<peer id>``. The DHT namespace validator accepts a record only if it is
well-formed, signed by the key it names, that key's peer id is the one in the DHT key, and it has not
expired; of two valid records the newest wins. Requesters fetch the report for a worker before its first
request, verify it against their policy (evidence, binding, measurements, model hash, age), cache the
verdict until the report expires, and never send a prompt to a worker whose verdict is not ok.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from cocoon_node import __version__
from cocoon_node.attestation import (
    ANY,
    TEE_DEV,
    TEE_TDX,
    AttestationError,
    Claims,
    DevPlatform,
    Policy,
    Verdict,
    check_report,
    decode_and_verify_envelope,
    dev_image_hash,
    get_tdx_quote,
    sign_report,
)
from cocoon_node.config import Config
from cocoon_node.mesh import Announcement, Mesh, RecordRejected
from cocoon_node.mesh.announce import MAX_CLOCK_SKEW

log = logging.getLogger(__name__)

NAMESPACE = "cocoon-att"


def report_key(peer_id: ID) -> str:
    return f"/{NAMESPACE}/{peer_id.to_base58()}"


class AttestationNamespace:
    """DHT validator for attestation reports (plugs into the mesh's strict namespaced validator)."""

    namespace = NAMESPACE

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or (lambda: time.time())

    def validate(self, key: str, value: bytes) -> None:
        try:
            report = decode_and_verify_envelope(value)
        except AttestationError as exc:
            raise RecordRejected(f"attestation record rejected: {exc}") from exc
        expected = key.removeprefix(f"/{NAMESPACE}/")
        if ID(report.claims.peer_id).to_base58() != expected:
            raise RecordRejected("attestation record is for another peer than its key names")
        now = self._clock()
        if report.claims.expires_at <= now:
            raise RecordRejected("attestation record has expired")
        # The newest report wins selection, so one dated in the future (a fast clock) would shadow every
        # honest report its worker puts after fixing its clock, until it expired: refuse it at the door.
        if report.claims.issued_at > now + MAX_CLOCK_SKEW:
            raise RecordRejected("attestation record is issued in the future")

    def select(self, key: str, values: list[bytes]) -> int:
        def issued(value: bytes) -> int:
            try:
                return decode_and_verify_envelope(value).claims.issued_at
            except AttestationError:
                return -1
        return max(range(len(values)), key=lambda i: issued(values[i]))


def policy_from_config(config: Config) -> Policy:
    """Build the verifier policy; lists left empty fail closed except on an explicitly local network."""
    p = config.policy
    local = config.node.network == "local"
    kinds = {TEE_TDX} | ({TEE_DEV} if p.allow_dev_tee else set())
    if p.allow_dev_tee:
        log.warning("policy accepts dev-INSECURE attestation: reports prove nothing about hardware")
    images: Any = frozenset(bytes.fromhex(h) for h in p.allowed_image_hashes) or (ANY if local else frozenset())
    models: Any = ANY if p.allow_any_model else frozenset(bytes.fromhex(h) for h in p.allowed_model_hashes)
    return Policy(tee_kinds=frozenset(kinds), image_hashes=images, mrtds=ANY if local else frozenset(),
                  model_hashes=models, max_report_age_s=p.max_report_age)


class ReportPublisher:
    """Worker side: produce evidence over our claims, publish into the DHT, re-publish before expiry."""

    def __init__(self, mesh: Mesh, key_pair: KeyPair, *, tee: str, model_name: str, model_hash: bytes,
                 data_dir: Path, lifetime: int = 3600) -> None:
        self._mesh = mesh
        self._key_pair = key_pair
        self._tee = tee
        self._model_name = model_name
        self._model_hash = model_hash
        self._lifetime = lifetime
        self._dev = DevPlatform.load_or_create(data_dir / "dev-platform.key") if tee == TEE_DEV else None
        self.current: bytes | None = None
        self.published = trio.Event()
        # Seconds after the first put at which it is stored again (see :meth:`run`); empty: no early re-puts.
        self.early_republish: tuple[float, ...] = (15.0, 60.0)

    def make_report(self, now: int | None = None) -> bytes:
        now = int(time.time()) if now is None else now
        signing_key = Ed25519PrivateKey.from_private_bytes(self._key_pair.private_key.to_bytes())
        claims = Claims.for_key(
            self._key_pair.public_key.to_bytes(), model_name=self._model_name, model_hash=self._model_hash,
            node_version=__version__, issued_at=now, expires_at=now + self._lifetime, tee_kind=self._tee,
        )
        if self._dev is not None:
            log.warning("attesting with the dev-INSECURE TEE: fine for local clusters, worthless elsewhere")
            evidence = self._dev.evidence(claims.report_data(), dev_image_hash(__version__))
        else:
            evidence = get_tdx_quote(claims.report_data())
        return sign_report(claims, evidence, signing_key)

    async def run(self) -> None:
        """Publish now and before every expiry. ``published`` is set after the first attempt either way:
        announcing must not wait on a slow DHT (requesters retry a report they cannot find yet).

        The first report is stored again ``early_republish`` seconds later: at start our routing table knows
        little more than the bootstrap peers, so the first put reaches peers near them, not the k peers
        closest to the key, where lookups end. With 25 nodes starting together, 6 of 26 reports could not be
        found 50 s later; after one re-put, all 26 (netsim scale, where every missing report stalls requests).
        """
        schedule = list(self.early_republish)
        while True:
            # configfs-tsm I/O blocks (the TDX module signs the quote), so it runs off the event loop.
            self.current = await trio.to_thread.run_sync(self.make_report)
            await self._put(attempts=5)
            waited = 0.0
            while schedule:
                delay = schedule.pop(0)
                await trio.sleep(delay)
                waited += delay
                await self._put(attempts=1)
            await trio.sleep(max(1.0, self._lifetime * 0.5 - waited))

    async def _put(self, *, attempts: int) -> None:
        assert self.current is not None
        for attempt in range(attempts):
            try:
                with trio.fail_after(20):
                    await self._mesh.put_record(report_key(self._mesh.peer_id), self.current)
                self.published.set()
                return
            except Exception as exc:
                log.warning("publishing attestation report failed (attempt %d): %s", attempt + 1, exc)
                self.published.set()
                await trio.sleep(1 + attempt)


@dataclass(frozen=True)
class CachedVerdict:
    verdict: Verdict
    checked_at: float


class AttestationGate:
    """Requester side: a worker is usable only with an ok, unexpired verdict that matches its announcement.

    Verification stays off the request path where it can: announcements are prefetched in the background
    (:meth:`prefetch`), concurrent checks of one worker share a single DHT lookup, and a failed verdict is
    kept for a while (briefly when the report was merely not found yet, longer for a policy rejection).
    """

    def __init__(self, mesh: Mesh, policy: Policy, *, clock: Callable[[], float] = time.time,
                 retry_missing: float = 2.0, retry_rejected: float = 60.0) -> None:
        self._mesh = mesh
        self.policy = policy
        self._clock = clock
        self._retry_missing = retry_missing
        self._retry_rejected = retry_rejected
        self._cache: dict[bytes, CachedVerdict] = {}
        self._inflight: dict[bytes, trio.Event] = {}
        self._prefetch_send, self._prefetch_recv = trio.open_memory_channel[bytes](256)
        self.fetches = 0
        self.rejections = 0

    def set_policy(self, policy: Policy) -> None:
        """Replace the policy and forget every cached verdict, so each worker is checked again."""
        self.policy, self._cache = policy, {}

    def verdict(self, peer_id: bytes) -> Verdict | None:
        cached = self._cache.get(peer_id)
        return cached.verdict if cached else None

    def prefetch(self, announcement: Announcement) -> None:
        """Queue a background check for a worker we have no fresh verdict for (never blocks; drops if full)."""
        if self._fresh(announcement.peer_id) is None:
            try:
                self._prefetch_send.send_nowait(announcement.peer_id)
            except trio.WouldBlock:
                pass

    async def run_prefetcher(self, concurrency: int = 4) -> None:
        limiter = trio.CapacityLimiter(concurrency)

        async def one(peer_id: bytes) -> None:
            async with limiter:
                await self.check(peer_id)

        async with trio.open_nursery() as nursery:
            async for peer_id in self._prefetch_recv:
                if self._fresh(peer_id) is None and peer_id not in self._inflight:
                    nursery.start_soon(one, peer_id)

    def known(self, announcement: Announcement) -> bool | None:
        """The fresh verdict for this worker if there is one (never waits): None means "not checked yet"."""
        verdict = self._fresh(announcement.peer_id)
        if verdict is None:
            return None
        return verdict.ok and _binds(verdict, announcement)

    async def is_attested(self, announcement: Announcement) -> bool:
        verdict = await self.check(announcement.peer_id)
        if not verdict.ok:
            return False
        if not _binds(verdict, announcement):
            log.warning("worker %s announces a model or TEE its attestation does not bind", announcement.peer)
            return False
        return True

    def _fresh(self, peer_id: bytes) -> Verdict | None:
        cached = self._cache.get(peer_id)
        if cached is None:
            return None
        v, now = cached.verdict, self._clock()
        if v.ok:
            return v if v.expires_at is not None and now < v.expires_at else None
        retry = self._retry_missing if v.check == "missing" else self._retry_rejected
        return v if now - cached.checked_at < retry else None

    async def check(self, peer_id: bytes) -> Verdict:
        fresh = self._fresh(peer_id)
        if fresh is not None:
            return fresh
        pending = self._inflight.get(peer_id)
        if pending is not None:  # someone is already fetching this worker's report: share the answer
            await pending.wait()
            cached = self._cache.get(peer_id)
            if cached is not None:
                return cached.verdict
        done = self._inflight[peer_id] = trio.Event()
        try:
            return await self._fetch_and_verify(peer_id)
        finally:
            del self._inflight[peer_id]
            done.set()

    async def _fetch_and_verify(self, peer_id: bytes) -> Verdict:
        self.fetches += 1
        try:
            with trio.fail_after(10):
                record = await self._mesh.get_record(report_key(ID(peer_id)))
        except Exception as exc:
            record = None
            log.info("fetching attestation of %s failed: %s", ID(peer_id), exc)
        now = self._clock()
        if record is None:
            verdict = Verdict.failed("missing", "no attestation report found in the DHT")
        else:
            verdict = check_report(record, peer_id, self.policy, int(now))
        if not verdict.ok:
            self.rejections += 1
            log.warning("worker %s failed attestation: %s", ID(peer_id), "; ".join(verdict.reasons))
        self._cache[peer_id] = CachedVerdict(verdict, now)
        return verdict

    def summary(self) -> dict[str, Any]:
        return {ID(pid).to_base58(): asdict(c.verdict) for pid, c in self._cache.items()}


def _binds(verdict: Verdict, announcement: Announcement) -> bool:
    """The announcement claims the model and TEE the verified report binds."""
    return verdict.model_hash == announcement.model_hash.hex() and verdict.tee_kind == announcement.tee_kind
