"""Keeping a requester's attestation policy in step with the on-chain registry.

A requester configured with ``policy.registry_address`` reads the registry through its payments chain
and lets the registry's lists *replace* those of its config policy, name-agnostic model hashes included
(everything else — TEE kinds, upstream rule, ... — stays as configured; the stricter report age wins and
a TCB check required by either is required). An empty registry list allows nothing: the registry fails
closed like the config.

:class:`RegistryPolicyRefresher` polls the registry and swaps the gate's policy when it changes. Until
the first successful read the gate accepts no image and no model; after that a failed read keeps the
last policy read (errors are logged and retried) and a version lower than the one applied is ignored.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Protocol

import trio

from cocoon_node.attestation import Policy
from cocoon_node.payments.chain.base import ChainError
from cocoon_node.payments.registry.contract import RegistryPolicy, read_registry_policy
from cocoon_node.payments.rules import ChannelRules

log = logging.getLogger(__name__)

#: Bound on one read of the registry (all its get-methods).
READ_TIMEOUT = 30.0


class PolicyGate(Protocol):
    """What the refresher needs of :class:`~cocoon_node.node.attest.AttestationGate`."""

    policy: Policy

    def set_policy(self, policy: Policy) -> None: ...


def merge_policy(base: Policy, reg: RegistryPolicy) -> Policy:
    """``base`` with the registry's lists in place of its own (empty = nothing allowed) and its TCB rule."""
    age = min(base.max_report_age_s, reg.max_report_age) if reg.max_report_age > 0 else base.max_report_age_s
    return dataclasses.replace(base, image_hashes=reg.image_hashes, model_hashes=frozenset(), models=reg.models,
                               mrtds=reg.mrtds, rtmrs=reg.rtmr_sets, max_report_age_s=age,
                               require_tcb_check=base.require_tcb_check or reg.require_tcb_check,
                               allowed_tcb_statuses=reg.tcb_statuses)


def fail_closed(base: Policy) -> Policy:
    """``base`` accepting no image, TD or model: what a gate uses before the registry has been read."""
    return dataclasses.replace(base, image_hashes=frozenset(), model_hashes=frozenset(), models=frozenset(),
                               mrtds=frozenset(), rtmrs=frozenset())


class RegistryPolicyRefresher:
    """Keep ``gate.policy`` equal to ``merge_policy(base_policy, <registry now>)``.

    Constructing one puts the gate in :func:`fail_closed` mode until :meth:`refresh` first succeeds.
    """

    def __init__(self, gate: PolicyGate, chain: Any, address: str, base_policy: Policy, interval: float = 60.0,
                 *, read_timeout: float = READ_TIMEOUT) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._gate = gate
        self._chain = chain
        self.address = address
        self._base = base_policy
        self._interval = interval
        self._read_timeout = read_timeout
        self.current: RegistryPolicy | None = None
        self.errors = 0
        self.applied = trio.Event()   # set once a registry policy has been applied
        gate.set_policy(fail_closed(base_policy))

    async def refresh(self) -> bool:
        """Read the registry once and apply it; True if the gate's policy changed.

        Raises :class:`ChainError` or :class:`trio.TooSlowError` when the read fails.
        """
        with trio.fail_after(self._read_timeout):
            reg = await read_registry_policy(self._chain, self.address)
        prev = self.current
        if prev is not None and reg.version < prev.version:
            log.warning("registry %s reports version %d below the applied %d (stale chain view?); keeping it",
                        self.address, reg.version, prev.version)
            return False
        if prev is None or reg.version != prev.version:
            log.info("registry %s policy version %s -> %d: %d image(s), %d model(s), %d MRTD(s), %d RTMR set(s), "
                     "min deposit %d, challenge period %d..%ds", self.address, prev.version if prev else "none",
                     reg.version, len(reg.image_hashes), len(reg.models), len(reg.mrtds), len(reg.rtmr_sets),
                     reg.min_deposit, reg.min_challenge_period, reg.max_challenge_period)
        self.current = reg
        merged = merge_policy(self._base, reg)
        changed = merged != self._gate.policy
        if changed:
            self._gate.set_policy(merged)
        self.applied.set()
        return changed

    async def run(self) -> None:
        """Poll forever; chain errors and timeouts are logged and retried at the next interval."""
        while True:
            try:
                await self.refresh()
            except (ChainError, trio.TooSlowError, OSError) as exc:
                self.errors += 1
                log.warning("reading policy registry %s failed (%d so far); keeping %s: %s", self.address,
                            self.errors, f"version {self.current.version}" if self.current else "fail-closed policy",
                            exc)
            await trio.sleep(self._interval)

    def channel_rules(self) -> ChannelRules | None:
        """The registry's channel rules as last read (None before the first read)."""
        reg = self.current
        return None if reg is None else ChannelRules(reg.min_deposit, reg.min_challenge_period,
                                                     reg.max_challenge_period)

    def status(self) -> dict[str, Any]:
        reg = self.current
        return {"address": self.address, "version": reg.version if reg else None, "errors": self.errors,
                "images": sorted(h.hex() for h in reg.image_hashes) if reg else [],
                "models": sorted(f"{n}={h.hex()}" for n, h in reg.models) if reg else [],
                "mrtds": sorted(h.hex() for h in reg.mrtds) if reg else [],
                "rtmr_sets": sorted(h.hex() for h in reg.rtmr_sets) if reg else [],
                "tcb": {"require_tcb_check": reg.require_tcb_check, "tcb_statuses": sorted(reg.tcb_statuses),
                        "max_report_age": reg.max_report_age} if reg else None,
                "min_deposit": reg.min_deposit if reg else None,
                "min_challenge_period": reg.min_challenge_period if reg else None,
                "max_challenge_period": reg.max_challenge_period if reg else None}
