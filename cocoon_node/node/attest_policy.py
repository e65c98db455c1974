"""The requester's attestation policy from its configuration.

Lists left empty fail closed, except on an explicitly ``local`` network, where an empty image, MRTD, RTMR
or model list means "any" (dev clusters run the dev TEE and unnamed stand-in weights). Whatever the lists
say, the gate still binds every report to the model a request asks for (:mod:`cocoon_node.node.attest`).
``load_config`` has already refused what a real network must never accept (dev TEE, name-agnostic model
lists, an unpinned TD), so this module only translates.
"""

from __future__ import annotations

import logging
from typing import Any

from cocoon_node.attestation import ANY, TEE_DEV, TEE_SNP, TEE_TDX, UPSTREAM_ANYWHERE, Policy, SnpPolicy
from cocoon_node.attestation import allowlists as al
from cocoon_node.config import Config

log = logging.getLogger(__name__)


def policy_from_config(config: Config) -> Policy:
    p = config.policy
    local = config.node.network == "local"
    kinds = {TEE_TDX} | ({TEE_DEV} if p.allow_dev_tee else set()) | ({TEE_SNP} if p.allow_snp else set())
    if p.allow_dev_tee:
        log.warning("policy accepts dev-INSECURE attestation: reports prove nothing about hardware")
    require_collateral = not local and not p.allow_missing_collateral
    if not local and p.allow_missing_collateral:
        log.warning("policy.allow_missing_collateral: TDX/SNP reports without Intel/AMD collateral are accepted "
                    "with their TCB UNCHECKED (a revoked or unpatched platform passes)")
    if p.upstream == UPSTREAM_ANYWHERE:
        log.warning("policy.upstream = anywhere: workers that forward prompts OUT of the TEE are accepted")

    def listed(entries: tuple[str, ...], parsed: Any) -> Any:
        return ANY if local and not entries else parsed

    named = al.named_models(p.allowed_models)
    flat: Any = al.hex_set(p.allowed_model_hashes, 32, "model weight hash")
    if p.allow_any_model or (local and not named and not flat):
        flat = ANY
    return Policy(
        tee_kinds=frozenset(kinds),
        image_hashes=listed(p.allowed_image_hashes, al.hex_set(p.allowed_image_hashes, 32, "image hash")),
        mrtds=listed(p.allowed_mrtds, al.hex_set(p.allowed_mrtds, 48, "MRTD")),
        rtmrs=listed(p.allowed_rtmrs, al.rtmr_sets(p.allowed_rtmrs)),
        model_hashes=flat,
        models=named,
        dev_platform_keys=al.hex_set(p.dev_platform_keys, 32, "dev platform key") if p.dev_platform_keys else ANY,
        max_report_age_s=p.max_report_age,
        require_tcb_check=p.require_tcb_check,
        require_collateral=require_collateral,
        allowed_tcb_statuses=frozenset(p.allowed_tcb_statuses),
        upstream=p.upstream,
        snp=SnpPolicy(
            measurements=listed(p.allowed_snp_measurements, al.hex_set(p.allowed_snp_measurements, 48, "measurement")),
            vmpls=al.vmpl_set(p.snp_vmpls),
            min_tcb=al.snp_min_tcbs(p.snp_min_tcb),
            allow_vlek=p.allow_snp_vlek,
        ),
    )
