"""Verifier policy from the on-chain ``registry`` contract (contracts/src/registry.tolk).

The registry's owner publishes which TEE image hashes, MRTDs and RTMR sets the network accepts, which
weight hashes it accepts for which model *name*, its TCB rule (whether the TCB status must have been
checked, which statuses pass, a maximum report age), plus the minimum channel terms; every update bumps its
``version``. A requester configured with ``policy.registry_address`` reads it through its payments chain
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
from collections.abc import Iterable
from typing import Any, Protocol

import trio

from cocoon_node.attestation import TCB_STATUSES, Policy
from cocoon_node.payments.chain.base import ChainError
from cocoon_node.payments.rules import ChannelRules
from cocoon_node.payments.voucher import MAX_CHALLENGE_PERIOD

log = logging.getLogger(__name__)

#: Bound on one read of the registry (all its get-methods).
READ_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class RegistryPolicy:
    """The registry's policy as read at one ``version``; hashes are raw bytes (MRTDs 48, the rest 32)."""

    version: int
    image_hashes: frozenset[bytes]
    models: frozenset[tuple[str, bytes]]      # (model name, weight hash allowed for it)
    min_deposit: int
    min_challenge_period: int
    owner: str = ""
    #: The network's longest acceptable challenge period (the channel contract's own cap is the default).
    max_challenge_period: int = MAX_CHALLENGE_PERIOD
    mrtds: frozenset[bytes] = frozenset()
    rtmr_sets: frozenset[bytes] = frozenset()  # SHA-256(RTMR0 || RTMR1 || RTMR2 || RTMR3)
    require_tcb_check: bool = False
    tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    max_report_age: int = 0                    # 0: the requester's own setting

    @property
    def model_hashes(self) -> frozenset[bytes]:
        return frozenset(h for _, h in self.models)


class PolicyGate(Protocol):
    """What the refresher needs of :class:`~cocoon_node.node.attest.AttestationGate`."""

    policy: Policy

    def set_policy(self, policy: Policy) -> None: ...


def _hashes(items: Iterable[str | int | bytes], size: int = 32) -> frozenset[bytes]:
    out = set()
    for h in items:
        if isinstance(h, bytes):
            raw = h
        elif isinstance(h, int):
            raw = h.to_bytes(size, "big")
        else:
            raw = bytes.fromhex(h)
        if len(raw) != size:
            raise ChainError(f"registry hash of {len(raw)} bytes, expected {size}")
        out.add(raw)
    return frozenset(out)


def tcb_statuses_from_mask(mask: int) -> frozenset[str]:
    """The registry's ``tcbStatuses`` bitmask as status names (bit i = ``TCB_STATUSES[i]``)."""
    return frozenset(s for i, s in enumerate(TCB_STATUSES) if mask & (1 << i))


def _model_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ChainError(f"registry model name {name!r} is not a non-empty string")
    return name


def registry_policy_from_state(state: dict[str, Any]) -> RegistryPolicy:
    """Decode :meth:`LocalChain.registry_state` (hex hashes, decimal strings)."""
    try:
        tcb = state.get("tcb") or {}
        unknown = set(tcb.get("tcb_statuses", ())) - set(TCB_STATUSES)
        if unknown:
            raise ValueError(f"unknown TCB statuses {sorted(unknown)}")
        return RegistryPolicy(
            version=int(state["version"]),
            image_hashes=_hashes(state.get("images") or ()),
            models=frozenset((_model_name(m["name"]), next(iter(_hashes([m["hash"]]))))
                             for m in state.get("models") or ()),
            min_deposit=int(state["min_deposit"]),
            min_challenge_period=int(state["min_challenge_period"]),
            owner=str(state.get("owner", "")),
            max_challenge_period=int(state["max_challenge_period"]),
            mrtds=_hashes(state.get("mrtds") or (), 48),
            rtmr_sets=_hashes(state.get("rtmr_sets") or ()),
            require_tcb_check=bool(tcb.get("require_tcb_check", False)),
            tcb_statuses=frozenset(tcb.get("tcb_statuses", ("UpToDate",))),
            max_report_age=int(tcb.get("max_report_age", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ChainError(f"malformed registry state: {exc!r}") from exc


def _dict(root: Any, key_bits: int, value: Any = None) -> dict[int, Any]:
    """A dictionary root as returned by a pytoniq get-method (``None`` = empty) as {int key: value}."""
    from pytoniq_core import Cell, HashMap, Slice

    if root is None:
        return {}
    if isinstance(root, Cell):
        root = root.begin_parse()
    if not isinstance(root, Slice):
        raise ChainError(f"expected a dictionary cell on the stack, got {type(root).__name__}")
    try:
        return dict(HashMap.parse(root, key_bits, value_deserializer=value) or {})
    except Exception as exc:  # a malformed dictionary or value cell
        raise ChainError(f"malformed registry dictionary: {exc!r}") from exc


def _dict_keys(root: Any, key_bits: int = 256) -> frozenset[bytes]:
    """Keys of a ``map<uintN, uint32>`` root, as raw bytes."""
    return _hashes((int(k) for k in _dict(root, key_bits)), key_bits // 8)


def _model_entry(value: Any) -> str:
    """A ``ModelEntry`` (addedIn:uint32 ^name) as its model name."""
    value.load_uint(32)
    name = value.load_ref().begin_parse()
    if name.remaining_refs or name.remaining_bits % 8:
        raise ChainError("registry model name cell is malformed")
    return name.load_bytes(name.remaining_bits // 8).decode("utf-8")


def registry_policy_from_stacks(params: list[Any], images: list[Any], models: list[Any],
                                measurements: list[Any]) -> RegistryPolicy:
    """Decode pytoniq ``get_params`` / ``get_images`` / ``get_models`` / ``get_measurements`` results."""
    from cocoon_node.payments.chain.ton import _stack_address, _stack_int

    if len(params) != 5 or len(images) != 1 or len(models) != 1 or len(measurements) != 5:
        raise ChainError("unexpected registry get-method result shape")
    named = _dict(models[0], 256, _model_entry)
    return RegistryPolicy(
        version=_stack_int(params[0]),
        image_hashes=_dict_keys(images[0]),
        models=frozenset((_model_name(name), h.to_bytes(32, "big")) for h, name in named.items()),
        min_deposit=_stack_int(params[1]),
        min_challenge_period=_stack_int(params[2]),
        owner=_stack_address(params[3]),
        max_challenge_period=_stack_int(params[4]),
        mrtds=_dict_keys(measurements[0], 384),
        rtmr_sets=_dict_keys(measurements[1]),
        require_tcb_check=bool(_stack_int(measurements[2])),
        tcb_statuses=tcb_statuses_from_mask(_stack_int(measurements[3])),
        max_report_age=_stack_int(measurements[4]),
    )


async def _read_ton(chain: Any, address: str) -> RegistryPolicy:
    """TonChain has no registry helpers: call the get-methods on its lite-client provider.

    The three reads may land on different blocks, so re-read (bounded) if the version moved meanwhile.
    """
    from pytoniq_core import Address

    async def get(method: str) -> list[Any]:
        return list(await chain._run(lambda: chain._provider.run_get_method(Address(address), method, [])))

    for _ in range(3):
        params = await get("get_params")
        reg = registry_policy_from_stacks(params, await get("get_images"), await get("get_models"),
                                          await get("get_measurements"))
        if _stack_version(await get("get_version")) == reg.version:
            return reg
    raise ChainError("registry kept changing while it was read")


def _stack_version(stack: list[Any]) -> int:
    from cocoon_node.payments.chain.ton import _stack_int

    if len(stack) != 1:
        raise ChainError("unexpected get_version result shape")
    return _stack_int(stack[0])


async def read_registry_policy(chain: Any, address: str) -> RegistryPolicy:
    """Read the registry at ``address`` through a payments chain adapter.

    :class:`~cocoon_node.payments.chain.local.LocalChain` (and anything with ``registry_state``) is read
    with that; :class:`~cocoon_node.payments.chain.ton.TonChain` through its provider's get-methods.
    Raises :class:`ChainError` for anything that cannot be read or decoded.
    """
    registry_state = getattr(chain, "registry_state", None)
    if registry_state is not None:
        return registry_policy_from_state(dict(await registry_state(address)))
    from cocoon_node.payments.chain.ton import TonChain

    if isinstance(chain, TonChain):
        try:
            return await _read_ton(chain, address)
        except ChainError:
            raise
        except Exception as exc:  # lite-client errors (account not active, server errors, ...)
            raise ChainError(f"reading registry {address}: {exc!r}") from exc
    raise ChainError(f"{type(chain).__name__} cannot read the registry contract")


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
