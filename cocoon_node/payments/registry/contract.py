"""The registry contract (contracts/src/registry.tolk): its owner's update bodies and reading its policy.

The registry's owner publishes which TEE image hashes, MRTDs and RTMR sets the network accepts, which
weight hashes it accepts for which model *name*, its TCB rule (whether the TCB status must have been
checked, which statuses pass, a maximum report age), plus the minimum channel terms; every update bumps its
``version``. :func:`registry_body` builds the owner's update messages bit for bit as the contract parses
them; :func:`read_registry_policy` reads the whole policy at one version through a payments chain adapter
(the emulated chain's ``registry_state``, or TON get-methods decoded by :func:`registry_policy_from_stacks`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from pytoniq_core import Address, Cell, HashMap, Slice, begin_cell

from cocoon_node.attestation import TCB_STATUSES
from cocoon_node.payments.chain.base import ChainError
from cocoon_node.payments.chain.ton import TonChain, stack_address, stack_int
from cocoon_node.payments.voucher import MAX_CHALLENGE_PERIOD

OP_REGISTRY_ADD_IMAGE = 0x5C0C0101
OP_REGISTRY_REMOVE_IMAGE = 0x5C0C0102
OP_REGISTRY_ADD_MODEL = 0x5C0C0103
OP_REGISTRY_REMOVE_MODEL = 0x5C0C0104
OP_REGISTRY_SET_PARAMS = 0x5C0C0105
OP_REGISTRY_TRANSFER_OWNERSHIP = 0x5C0C0106
OP_REGISTRY_ADD_MRTD = 0x5C0C0111
OP_REGISTRY_REMOVE_MRTD = 0x5C0C0112
OP_REGISTRY_ADD_RTMR_SET = 0x5C0C0113
OP_REGISTRY_REMOVE_RTMR_SET = 0x5C0C0114
OP_REGISTRY_SET_TCB_RULE = 0x5C0C0115

def registry_body(
    action: str,
    *,
    hash_: int | None = None,
    name: str | None = None,
    mrtd: bytes | None = None,
    require_tcb_check: bool = False,
    tcb_statuses: int | None = None,
    max_report_age: int = 0,
    min_deposit: int | None = None,
    min_challenge_period: int | None = None,
    new_owner: str | None = None,
    query_id: int = 0,
    max_challenge_period: int = MAX_CHALLENGE_PERIOD,
) -> Cell:
    """Registry update body (owner only). ``action``: add_image, remove_image, add_model (hash_ + name),
    remove_model, add_mrtd / remove_mrtd (mrtd), add_rtmr_set / remove_rtmr_set (hash_: the set's SHA-256),
    set_tcb_rule (require_tcb_check, tcb_statuses bitmask, max_report_age), set_params (with
    ``max_challenge_period``), transfer_ownership."""
    ops = {
        "add_image": OP_REGISTRY_ADD_IMAGE,
        "remove_image": OP_REGISTRY_REMOVE_IMAGE,
        "add_model": OP_REGISTRY_ADD_MODEL,
        "remove_model": OP_REGISTRY_REMOVE_MODEL,
        "add_rtmr_set": OP_REGISTRY_ADD_RTMR_SET,
        "remove_rtmr_set": OP_REGISTRY_REMOVE_RTMR_SET,
    }
    b = begin_cell()
    if action in ops:
        if hash_ is None:
            raise ValueError(f"{action} needs hash_")
        b = b.store_uint(ops[action], 32).store_uint(query_id, 64).store_uint(hash_, 256)
        if action == "add_model":
            raw = (name or "").encode()
            if not 1 <= len(raw) <= 127:
                raise ValueError("add_model needs a name of 1..127 UTF-8 bytes")
            b = b.store_ref(begin_cell().store_bytes(raw).end_cell())
        return b.end_cell()
    if action in ("add_mrtd", "remove_mrtd"):
        if mrtd is None or len(mrtd) != 48:
            raise ValueError(f"{action} needs a 48-byte mrtd")
        op = OP_REGISTRY_ADD_MRTD if action == "add_mrtd" else OP_REGISTRY_REMOVE_MRTD
        return b.store_uint(op, 32).store_uint(query_id, 64).store_bytes(mrtd).end_cell()
    if action == "set_tcb_rule":
        if tcb_statuses is None:
            raise ValueError("set_tcb_rule needs tcb_statuses")
        return (b.store_uint(OP_REGISTRY_SET_TCB_RULE, 32).store_uint(query_id, 64).store_bit(require_tcb_check)
                .store_uint(tcb_statuses, 16).store_uint(max_report_age, 32).end_cell())
    if action == "set_params":
        if min_deposit is None or min_challenge_period is None:
            raise ValueError("set_params needs min_deposit and min_challenge_period")
        return (
            b.store_uint(OP_REGISTRY_SET_PARAMS, 32)
            .store_uint(query_id, 64)
            .store_coins(min_deposit)
            .store_uint(min_challenge_period, 32)
            .store_uint(max_challenge_period, 32)
            .end_cell()
        )
    if action == "transfer_ownership":
        if new_owner is None:
            raise ValueError("transfer_ownership needs new_owner")
        return (
            b.store_uint(OP_REGISTRY_TRANSFER_OWNERSHIP, 32)
            .store_uint(query_id, 64)
            .store_address(Address(new_owner))
            .end_cell()
        )
    raise ValueError(f"unknown registry action {action}")


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
    if len(params) != 5 or len(images) != 1 or len(models) != 1 or len(measurements) != 5:
        raise ChainError("unexpected registry get-method result shape")
    named = _dict(models[0], 256, _model_entry)
    return RegistryPolicy(
        version=stack_int(params[0]),
        image_hashes=_dict_keys(images[0]),
        models=frozenset((_model_name(name), h.to_bytes(32, "big")) for h, name in named.items()),
        min_deposit=stack_int(params[1]),
        min_challenge_period=stack_int(params[2]),
        owner=stack_address(params[3]),
        max_challenge_period=stack_int(params[4]),
        mrtds=_dict_keys(measurements[0], 384),
        rtmr_sets=_dict_keys(measurements[1]),
        require_tcb_check=bool(stack_int(measurements[2])),
        tcb_statuses=tcb_statuses_from_mask(stack_int(measurements[3])),
        max_report_age=stack_int(measurements[4]),
    )


async def _read_ton(chain: TonChain, address: str) -> RegistryPolicy:
    """TonChain has no registry helpers: call the registry's get-methods through it.

    The three reads may land on different blocks, so re-read (bounded) if the version moved meanwhile.
    """
    async def get(method: str) -> list[Any]:
        return await chain.get_method(address, method)

    for _ in range(3):
        params = await get("get_params")
        reg = registry_policy_from_stacks(params, await get("get_images"), await get("get_models"),
                                          await get("get_measurements"))
        if _stack_version(await get("get_version")) == reg.version:
            return reg
    raise ChainError("registry kept changing while it was read")


def _stack_version(stack: list[Any]) -> int:
    if len(stack) != 1:
        raise ChainError("unexpected get_version result shape")
    return stack_int(stack[0])


async def read_registry_policy(chain: Any, address: str) -> RegistryPolicy:
    """Read the registry at ``address`` through a payments chain adapter.

    :class:`~cocoon_node.payments.chain.local.LocalChain` (and anything with ``registry_state``) is read
    with that; :class:`~cocoon_node.payments.chain.ton.TonChain` through its provider's get-methods.
    Raises :class:`ChainError` for anything that cannot be read or decoded.
    """
    registry_state = getattr(chain, "registry_state", None)
    if registry_state is not None:
        return registry_policy_from_state(dict(await registry_state(address)))
    if isinstance(chain, TonChain):
        try:
            return await _read_ton(chain, address)
        except ChainError:
            raise
        except Exception as exc:  # lite-client errors (account not active, server errors, ...)
            raise ChainError(f"reading registry {address}: {exc!r}") from exc
    raise ChainError(f"{type(chain).__name__} cannot read the registry contract")
