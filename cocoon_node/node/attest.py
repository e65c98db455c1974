"""Attestation in the mesh: workers publish signed reports into the DHT, requesters verify before use.

Reports live under ``/cocoon-att/<peer id>``. The DHT namespace validator accepts a record only if it is
well-formed, signed by the key it names, that key's peer id is the one in the DHT key, and it has not
expired; of two valid records the newest wins. Requesters fetch the report for a worker before its first
request, verify it against their policy (evidence, binding, measurements, model hash, age), cache the
verdict until the report expires or passes the policy's maximum age (re-validated at every use), and never
send a prompt to a worker whose verdict is not ok or whose report does not name the model, weights, TEE and
backend its announcement offers.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections import Counter as CounterOf
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from cocoon_node import __version__
from cocoon_node.attestation import (
    TEE_DEV,
    TEE_SNP,
    AttestationError,
    Claims,
    DevPlatform,
    Policy,
    Verdict,
    check_report,
    collect_snp_evidence,
    decode_and_verify_envelope,
    dev_image_hash,
    sign_report,
)
from cocoon_node.attestation.tsm import ConfigfsTsm
from cocoon_node.mesh import MAX_CLOCK_SKEW, Announcement, Mesh, RecordRejected
from cocoon_node.node.attest_policy import policy_from_config
from cocoon_node.node.gate_view import binding_problems, describe_verdict

log = logging.getLogger(__name__)

NAMESPACE = "cocoon-att"
# Asks a worker itself for its report (peer id -> report bytes, or None; see node/fresh_attest.py).
DirectFetch = Callable[[bytes], Awaitable[bytes | None]]
# Verdicts that mean "not found yet" rather than "refused": the prefetcher tries these again, with backoff.
RETRIED_CHECKS = frozenset({"missing", "expired"})


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


class ReportPublisher:
    """Worker side: produce evidence over our claims, publish into the DHT, re-publish before expiry."""

    def __init__(self, mesh: Mesh, key_pair: KeyPair, *, tee: str, model_name: str, model_hash: bytes,
                 data_dir: Path, lifetime: int = 3600, backend: str = "", upstream: str = "",
                 snp_vcek_file: Path | str | None = None, tsm: ConfigfsTsm | None = None,
                 collateral: Callable[[bytes], Awaitable[bytes]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._mesh = mesh
        self._key_pair = key_pair
        self._tee = tee
        self._model_name = model_name
        self._model_hash = model_hash
        self._backend = backend
        self._upstream = upstream  # the upstream's origin, bound into the report ("" = none)
        self._lifetime = lifetime
        self._snp_vcek_file = snp_vcek_file  # SEV-SNP: the VCEK when the host's certificate table has none
        self._tsm = tsm or ConfigfsTsm()  # configfs-tsm (injectable for tests)
        # evidence -> the TEE vendor's collateral to ship with it (b"": none), e.g. TdxCollateralCache.for_quote
        self._collateral = collateral
        self._clock = clock
        self._dev = DevPlatform.load_or_create(data_dir / "dev-platform.key") if tee == TEE_DEV else None
        self.current: bytes | None = None
        self.published = trio.Event()
        # Seconds after the first put at which it is stored again (see :meth:`run`); empty: no early re-puts.
        self.early_republish: tuple[float, ...] = (15.0, 60.0)

    def make_report(self, now: int | None = None, *, collateral_for: Callable[[bytes], bytes] | None = None) -> bytes:
        """A signed report over fresh evidence; ``collateral_for`` (evidence -> collateral) adds what to ship."""
        now = int(self._clock()) if now is None else now
        signing_key = Ed25519PrivateKey.from_private_bytes(self._key_pair.private_key.to_bytes())
        claims = Claims.for_key(
            self._key_pair.public_key.to_bytes(), model_name=self._model_name, model_hash=self._model_hash,
            node_version=__version__, issued_at=now, expires_at=now + self._lifetime, tee_kind=self._tee,
            backend=self._backend, upstream=self._upstream,
        )
        if self._dev is not None:
            log.warning("attesting with the dev-INSECURE TEE: fine for local clusters, worthless elsewhere")
        evidence = self.evidence(claims.report_data())
        collateral = collateral_for(evidence) if collateral_for is not None else b""
        return sign_report(claims, evidence, signing_key, collateral=collateral)

    def _make_shipped_report(self) -> bytes:
        """:meth:`make_report` in a worker thread, fetching the collateral back on the Trio loop (async HTTP)."""
        fetch = self._collateral
        if fetch is None:
            return self.make_report()
        return self.make_report(collateral_for=lambda evidence: trio.from_thread.run(fetch, evidence))

    def evidence(self, report_data: bytes) -> bytes:
        """TEE evidence of our kind over ``report_data`` (blocking: configfs-tsm; run it in a thread).

        Used for the report (over the claims) and for fresh, nonce-bound evidence (``protocols/attest.toml``)."""
        if self._dev is not None:
            return self._dev.evidence(report_data, dev_image_hash(__version__))
        if self._tee == TEE_SNP:
            return collect_snp_evidence(report_data, tsm=self._tsm, vcek_file=self._snp_vcek_file)
        return self._tsm.get_quote(report_data)

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
            self.current = await trio.to_thread.run_sync(self._make_shipped_report)
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
    report: bytes = b""  # the report envelope the verdict is about (receipts name it by hash)


class AttestationGate:
    """Requester side: a worker is usable only with an ok, fresh verdict whose report binds its announcement.

    Verification stays off the request path where it can: announcements are prefetched in the background
    (:meth:`prefetch`), concurrent checks of one worker share a single DHT lookup, and a failed verdict is
    kept for a while (briefly when the report was merely not found yet, longer for a policy rejection). A
    cached ok verdict counts only while its report is unexpired and younger than the policy's maximum age,
    checked at every use. When a fresh verdict does not bind the announcement (the worker changed its model,
    or some node served an older report), the newest report is fetched at once, at most every
    ``retry_mismatch`` seconds per worker.

    At scale the DHT can be slow where it matters most: at start, while puts from busy nodes are still under
    way. So a report not found is looked for again in the background, with backoff, while the worker's
    announcement lives (not only at its next liveness beat, which may be minutes away), and with ``direct``
    a lookup that has not answered within ``direct_after`` seconds also asks the worker itself for its report
    (over ``/cocoon/attest/1.0.0``); whichever answers first is verified like any other report.
    """

    def __init__(self, mesh: Mesh, policy: Policy, *, clock: Callable[[], float] = time.time,
                 retry_missing: float = 2.0, retry_rejected: float = 60.0, retry_mismatch: float = 10.0,
                 direct: DirectFetch | None = None, direct_after: float = 2.0, lookup_timeout: float = 10.0,
                 retry_backoff: tuple[float, float] = (3.0, 30.0)) -> None:
        self._mesh = mesh
        self.policy = policy
        self._clock = clock
        self._retry_missing = retry_missing
        self._retry_rejected = retry_rejected
        self._retry_mismatch = retry_mismatch
        self._cache: dict[bytes, CachedVerdict] = {}
        self._inflight: dict[bytes, trio.Event] = {}
        self._rechecked: dict[bytes, float] = {}  # peer -> when a binding mismatch last forced a newest lookup
        self._prefetch_send, self._prefetch_recv = trio.open_memory_channel[Announcement](256)
        self._direct = direct
        self.direct_after = direct_after
        self.lookup_timeout = lookup_timeout
        self.retry_backoff = retry_backoff
        self._retrying: dict[bytes, Announcement] = {}  # workers the prefetcher will check again (newest offer)
        self.fetches = 0
        self.direct_fetches = 0  # reports asked of the worker itself
        self.direct_found = 0
        self.retries = 0  # background re-checks of reports not found
        self.rejections = 0
        self.verdicts: CounterOf[str] = CounterOf()  # checked reports by failed check ("ok": verified)

    def set_policy(self, policy: Policy) -> None:
        """Replace the policy and forget every cached verdict, so each worker is checked again."""
        self.policy, self._cache = policy, {}

    def verdict(self, peer_id: bytes) -> Verdict | None:
        cached = self._cache.get(peer_id)
        return cached.verdict if cached else None

    def prefetch(self, announcement: Announcement) -> None:
        """Queue a background check for a worker we have no usable verdict for (never blocks; drops if full)."""
        if self.known(announcement) is None:
            try:
                self._prefetch_send.send_nowait(announcement)
            except trio.WouldBlock:
                pass

    async def run_prefetcher(self, concurrency: int = 16) -> None:
        """Check queued workers, ``concurrency`` at a time (a slow lookup holds its slot up to
        ``lookup_timeout``: with 4 slots, 98 workers whose lookups all timed out took 4 minutes to try once).
        A report not found is checked again later (:meth:`_check_until_found`)."""
        limiter = trio.CapacityLimiter(concurrency)
        async with trio.open_nursery() as nursery:
            async for announcement in self._prefetch_recv:
                pid = announcement.peer_id
                if pid in self._retrying:
                    self._retrying[pid] = announcement  # its retry uses the newest offer
                elif self.known(announcement) is None and pid not in self._inflight:
                    self._retrying[pid] = announcement
                    nursery.start_soon(self._check_until_found, pid, limiter)

    async def _check_until_found(self, peer_id: bytes, limiter: trio.CapacityLimiter) -> None:
        """Check a worker; while its report is only not found yet, again after a growing pause, as long as
        its announcement lives (a verdict reached meanwhile, e.g. by a request's own check, ends it)."""
        delay = self.retry_backoff[0]
        try:
            while True:
                announcement = self._retrying[peer_id]
                async with limiter:
                    if await self.is_attested(announcement):
                        return
                verdict = self.verdict(peer_id)
                if verdict is None or verdict.check not in RETRIED_CHECKS:
                    return  # refused on its merits: kept for retry_rejected, re-checked at a later announcement
                await trio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(2 * delay, self.retry_backoff[1])
                announcement = self._retrying[peer_id]
                if announcement.expires_at <= self._clock() or self.known(announcement) is not None:
                    return
                self.retries += 1
        finally:
            del self._retrying[peer_id]

    def known(self, announcement: Announcement) -> bool | None:
        """The gate's answer for this worker if it has one now (never waits): None means "check it first"."""
        verdict = self._fresh(announcement.peer_id)
        if verdict is None:
            return None
        if not verdict.ok:
            return False
        if not binding_problems(verdict, announcement):
            return True
        return None if self._may_recheck(announcement.peer_id) else False

    async def is_attested(self, announcement: Announcement) -> bool:
        verdict = await self.check(announcement.peer_id)
        if verdict.ok and binding_problems(verdict, announcement) and self._may_recheck(announcement.peer_id):
            # A model change, or another node serving the worker's older report: fetch the newest one now.
            self._rechecked[announcement.peer_id] = self._clock()
            verdict = await self.check(announcement.peer_id, newest=True)
        if not verdict.ok:
            return False
        problems = binding_problems(verdict, announcement)
        if problems:
            log.warning("worker %s announces what its attestation does not bind: %s", announcement.peer,
                        "; ".join(problems))
            return False
        return True

    def describe(self, announcement: Announcement) -> dict[str, Any]:
        """What the gate would decide for this worker now, for ``/v1/models`` and status."""
        return describe_verdict(announcement, self._fresh(announcement.peer_id), self.verdict(announcement.peer_id))

    def _may_recheck(self, peer_id: bytes) -> bool:
        return self._clock() - self._rechecked.get(peer_id, -math.inf) >= self._retry_mismatch

    def _usable(self, verdict: Verdict, now: float) -> bool:
        """An ok verdict still counts: its report is unexpired and within the policy's maximum age."""
        return (verdict.expires_at is not None and now < verdict.expires_at and verdict.issued_at is not None
                and now - verdict.issued_at <= self.policy.max_report_age_s)

    def _fresh(self, peer_id: bytes) -> Verdict | None:
        cached = self._cache.get(peer_id)
        if cached is None:
            return None
        v, now = cached.verdict, self._clock()
        if v.ok:
            return v if self._usable(v, now) else None
        retry = self._retry_missing if v.check in ("missing", "expired") else self._retry_rejected
        return v if now - cached.checked_at < retry else None

    async def check(self, peer_id: bytes, *, newest: bool = False) -> Verdict:
        """The worker's verdict: a fresh cached one, else a DHT lookup (shared by concurrent callers).

        ``newest`` skips the cache and asks the DHT for the newest report there is.
        """
        while True:
            fresh = None if newest else self._fresh(peer_id)
            if fresh is not None:
                return fresh
            pending = self._inflight.get(peer_id)
            if pending is None:
                break
            # Someone is already fetching this worker's report: share the answer. That check may have been
            # cancelled (a request that found another worker, a client gone), leaving a stale entry behind,
            # so whatever is cached is validated again above; without a fresh one we fetch ourselves.
            await pending.wait()
        done = self._inflight[peer_id] = trio.Event()
        try:
            return await self._fetch_and_verify(peer_id, newest=newest)
        finally:
            del self._inflight[peer_id]
            done.set()

    async def _fetch_and_verify(self, peer_id: bytes, *, newest: bool = False) -> Verdict:
        self.fetches += 1
        record = await self._find_report(peer_id, newest=newest)
        now = self._clock()
        if record is None:
            where = "in the DHT" + (" or from the worker" if self._direct is not None else "")
            verdict = Verdict.failed("missing", f"no attestation report found {where}")
        else:
            verdict = check_report(record, peer_id, self.policy, int(now))
            if verdict.ok and not self._usable(verdict, now):
                verdict = Verdict.failed("expired", "report expires now or is past the policy's maximum age")
        self.verdicts["ok" if verdict.ok else (verdict.check or "unnamed")] += 1
        if not verdict.ok:
            self.rejections += 1
            log.warning("worker %s failed attestation: %s", ID(peer_id), "; ".join(verdict.reasons))
        self._cache[peer_id] = CachedVerdict(verdict, now, record or b"")
        return verdict

    async def attested_report(self, peer_id: bytes, report_hash: bytes) -> bytes | None:
        """The worker's verified report envelope if its hash is ``report_hash`` (a receipt's): the cached one,
        else the newest in the DHT (the worker may have re-published since we checked it); None otherwise."""
        for newest in (False, True):
            verdict = await self.check(peer_id, newest=newest)
            cached = self._cache.get(peer_id)
            if verdict.ok and cached is not None and hashlib.sha256(cached.report).digest() == report_hash:
                return cached.report
        return None
    async def _find_report(self, peer_id: bytes, *, newest: bool) -> bytes | None:
        """The worker's report from the DHT; once the lookup has taken ``direct_after`` seconds (or missed),
        also from the worker itself. The first report found wins; the caller verifies it either way."""
        key, found = report_key(ID(peer_id)), []
        dht_done = trio.Event()

        async def from_dht(done: trio.CancelScope) -> None:
            try:
                with trio.fail_after(self.lookup_timeout):
                    record = await (self._mesh.get_record(key, newest=True) if newest else self._mesh.get_record(key))
            except Exception as exc:
                record = None
                log.info("fetching attestation of %s from the DHT failed: %r", ID(peer_id), exc)
            dht_done.set()
            if record is not None:
                found.append(record)
                done.cancel()

        async def from_worker(direct: DirectFetch, done: trio.CancelScope) -> None:
            with trio.move_on_after(self.direct_after):
                await dht_done.wait()
            if found:
                return
            self.direct_fetches += 1
            try:
                with trio.fail_after(self.lookup_timeout):
                    record = await direct(peer_id)
            except Exception as exc:
                record = None
                log.info("fetching attestation of %s from the worker failed: %r", ID(peer_id), exc)
            if record is not None:
                self.direct_found += 1
                found.append(record)
                done.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(from_dht, nursery.cancel_scope)
            if self._direct is not None:
                nursery.start_soon(from_worker, self._direct, nursery.cancel_scope)
        return found[0] if found else None

    def counters(self) -> dict[str, int]:
        """Where reports came from, for status: lookups, asks of the worker itself, background re-checks."""
        return {"fetches": self.fetches, "direct_fetches": self.direct_fetches, "direct_found": self.direct_found,
                "retries": self.retries, "retrying": len(self._retrying)}

    def summary(self) -> dict[str, Any]:
        return {ID(pid).to_base58(): asdict(c.verdict) for pid, c in self._cache.items()}


__all__ = ["NAMESPACE", "AttestationGate", "AttestationNamespace", "CachedVerdict", "DirectFetch", "ReportPublisher",
           "policy_from_config", "report_key"]
