"""The registry contract, in one place: the owner's update bodies, reading its policy, applying it.

- :mod:`.contract`: the contract's side: op codes and :func:`registry_body` (bit for bit as
  contracts/src/registry.tolk parses them), :class:`RegistryPolicy` and its readers (emulated chain
  ``registry_state``, TON get-method stacks);
- :mod:`.refresh`: the requester's side: :func:`merge_policy` of the registry into a config policy,
  :func:`fail_closed` before the first read, and the :class:`RegistryPolicyRefresher` that polls.

It lives in payments because the registry is read through the payments chain adapters; it imports the
attestation package only for the :class:`~cocoon_node.attestation.Policy` it feeds (a lower layer).
"""

from cocoon_node.payments.registry.contract import (
    RegistryPolicy,
    read_registry_policy,
    registry_body,
    registry_policy_from_stacks,
    registry_policy_from_state,
    tcb_statuses_from_mask,
)
from cocoon_node.payments.registry.refresh import (
    READ_TIMEOUT,
    PolicyGate,
    RegistryPolicyRefresher,
    fail_closed,
    merge_policy,
)

__all__ = [
    "READ_TIMEOUT",
    "PolicyGate",
    "RegistryPolicy",
    "RegistryPolicyRefresher",
    "fail_closed",
    "merge_policy",
    "read_registry_policy",
    "registry_body",
    "registry_policy_from_stacks",
    "registry_policy_from_state",
    "tcb_statuses_from_mask",
]
