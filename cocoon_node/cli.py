"""``cocoon-node``: run a node, manage its identity, ask it for status, chat through it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from cocoon_node.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from cocoon_node.mesh import TransportFactory


def overrides_from_args(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Flags that were given, as config sections (flags win over file and environment)."""
    mapping = {
        "data_dir": ("node", "data_dir"), "listen": ("node", "listen"), "bootstrap": ("node", "bootstrap"),
        "network": ("node", "network"), "local_cluster": ("node", "local_cluster"),
        "admin_port": ("node", "admin_port"), "log_level": ("node", "log_level"),
        "bootstrap_timeout": ("node", "bootstrap_timeout"),
        "worker": ("worker", "enabled"), "backend": ("worker", "backend"), "model": ("worker", "model"),
        "model_path": ("worker", "model_path"), "upstream_url": ("worker", "upstream_url"),
        "tee": ("worker", "tee"), "price_prompt": ("worker", "price_prompt"),
        "price_completion": ("worker", "price_completion"), "max_concurrent": ("worker", "max_concurrent"),
        "synthetic_rate": ("worker", "synthetic_tokens_per_second"),
        "announce_interval": ("worker", "announce_interval"), "announce_ttl": ("worker", "announce_ttl"),
        "announce_min_interval": ("worker", "announce_min_interval"),  # issue 15
        "directory_interval": ("worker", "directory_interval"), "buy_model": ("requester", "models"),
        "accelerator": ("worker", "accelerator"), "accelerator_count": ("worker", "accelerator_count"),
        "accelerator_memory_mib": ("worker", "accelerator_memory_mib"),
        "context_length": ("worker", "context_length"),
        "requester": ("requester", "enabled"), "api_port": ("requester", "api_port"),
        "api_host": ("requester", "api_host"), "api_key": ("requester", "api_key"),
        "queue_length": ("requester", "queue_length"), "queue_wait": ("requester", "queue_wait"),
        "allow_dev_tee": ("policy", "allow_dev_tee"), "allowed_model_hash": ("policy", "allowed_model_hashes"),
        "allowed_model": ("policy", "allowed_models"),
        "chain_url": ("payments", "chain_url"), "payments": ("payments", "enabled"),
        "credit_window": ("payments", "credit_window"),
        "payment_timeout": ("payments", "payment_timeout"), "payer_idle_close": ("payments", "payer_idle_close"),
        "registry_address": ("policy", "registry_address"),
        "target_peers": ("node", "target_peers"), "max_connections": ("node", "max_connections"),
        "gossip_heartbeat": ("node", "gossip_heartbeat"), "gossip_degree": ("node", "gossip_degree"),
        "relay": ("node", "relay"), "reachability": ("node", "reachability"),  # NAT traversal (issue 14)
        "relay_reservations": ("node", "relay_reservations"), "hole_punching": ("node", "hole_punching"),
    }
    out: dict[str, dict[str, Any]] = {}
    for attr, (section, key) in mapping.items():
        value = getattr(args, attr, None)
        flags = ("worker", "requester", "local_cluster", "allow_dev_tee", "relay")
        if value is None or (value is False and attr in flags):
            continue
        if attr == "allowed_model_hash":
            out.setdefault("policy", {})["allow_any_model"] = False
        out.setdefault(section, {})[key] = value
    return out


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=os.environ.get("COCOON_CONFIG"), help="TOML config file")
    p.add_argument("--data-dir", dest="data_dir", help="node data directory (identity, state)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cocoon-node", description="Confidential paid AI inference mesh node")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a node (worker and/or requester)")
    _add_common(run)
    run.add_argument("--worker", action="store_true", default=None, help="serve a model")
    run.add_argument("--requester", action="store_true", default=None, help="buy inference, serve the OpenAI API")
    run.add_argument("--listen", action="append", help="listen multiaddr (repeatable)")
    run.add_argument("--bootstrap", action="append", help="bootstrap multiaddr with /p2p/ID (repeatable)")
    run.add_argument("--network", choices=["local", "testnet", "mainnet"])
    run.add_argument("--bootstrap-timeout", dest="bootstrap_timeout", type=float, metavar="SECONDS",
                     help="stop with that cause if no bootstrap peer is reached within SECONDS (default 120; 0: never)")
    run.add_argument("--local-cluster", dest="local_cluster", action="store_true", default=None,
                     help="loopback cluster: lift IP-diversity rules")
    run.add_argument("--admin-port", dest="admin_port", type=int)
    run.add_argument("--target-peers", dest="target_peers", type=int,
                     help="connections to keep: py-libp2p's auto-connector dials towards 1.5 times it (default 6)")
    run.add_argument("--max-connections", dest="max_connections", type=int)
    run.add_argument("--gossip-heartbeat", dest="gossip_heartbeat", type=float,
                     help="seconds between GossipSub heartbeats (default 1)")
    run.add_argument("--gossip-degree", dest="gossip_degree", type=int, help="GossipSub mesh degree D (default 6)")
    # NAT traversal (issue 14)
    run.add_argument("--relay", action="store_true", default=None,
                     help="serve circuit relay v2 for peers behind NAT (a publicly reachable node)")
    run.add_argument("--reachability", choices=["auto", "public", "private"],
                     help="auto (default): announce only addresses a peer's dial-back reached")
    run.add_argument("--relay-reservations", dest="relay_reservations", type=int,
                     help="relays a worker behind NAT reserves on (default 2, 0: none)")
    run.add_argument("--no-hole-punching", dest="hole_punching", action="store_false", default=None,
                     help="keep relayed connections relayed (no DCUtR)")
    run.add_argument("--log-level", dest="log_level")
    run.add_argument("--debug", action="store_true", help="show a failed start's traceback too")
    run.add_argument("--backend", choices=["torch", "exllamav2", "openai-upstream", "synthetic"])
    run.add_argument("--model")
    run.add_argument("--model-path", dest="model_path")
    run.add_argument("--upstream-url", dest="upstream_url")
    run.add_argument("--tee", choices=["dev", "tdx", "snp"])
    run.add_argument("--price-prompt", dest="price_prompt", type=int)
    run.add_argument("--price-completion", dest="price_completion", type=int)
    run.add_argument("--max-concurrent", dest="max_concurrent", type=int)
    run.add_argument("--synthetic-rate", dest="synthetic_rate", type=float)
    run.add_argument("--announce-interval", dest="announce_interval", type=float)
    run.add_argument("--announce-ttl", dest="announce_ttl", type=int)
    run.add_argument("--announce-min-interval", dest="announce_min_interval", type=float,
                     help="least seconds between load-change announcements")
    run.add_argument("--directory-interval", dest="directory_interval", type=float,
                     help="seconds between announcements on the every-model directory topic")
    run.add_argument("--buy-model", dest="buy_model", action="append",
                     help="requester: follow only this model's topic (repeatable; default: every model)")
    run.add_argument("--accelerator", help="declare the accelerator (e.g. 'NVIDIA H200') when not detected")
    run.add_argument("--accelerator-count", dest="accelerator_count", type=int)
    run.add_argument("--accelerator-memory-mib", dest="accelerator_memory_mib", type=int,
                     help="memory per accelerator, MiB, when not detected")
    run.add_argument("--context-length", dest="context_length", type=int,
                     help="declare the context length served (tokens) when the backend cannot tell")
    run.add_argument("--api-host", dest="api_host")
    run.add_argument("--api-port", dest="api_port", type=int)
    run.add_argument("--api-key", dest="api_key")
    run.add_argument("--queue-length", dest="queue_length", type=int,
                     help="requester: requests that may wait for a free worker slot (beyond: 429)")
    run.add_argument("--queue-wait", dest="queue_wait", type=float,
                     help="requester: longest seconds a request waits for a slot (then 429)")
    run.add_argument("--allow-dev-tee", dest="allow_dev_tee", action="store_true", default=None,
                     help="accept dev-INSECURE attestation (local networks only)")
    run.add_argument("--allowed-model-hash", dest="allowed_model_hash", action="append",
                     help="allow these weight hashes under any model name (hex, repeatable; local network only)")
    run.add_argument("--allowed-model", dest="allowed_model", action="append", metavar="NAME=HASH",
                     help="allow the weights HASH (hex) for requests for model NAME (repeatable)")
    run.add_argument("--registry-address", dest="registry_address",
                     help="policy registry contract: its images, TD measurements, TCB rule and model names "
                          "replace the configured ones")
    run.add_argument("--chain-url", dest="chain_url", help="shared EMULATED local chain, tcp://127.0.0.1:PORT")
    run.add_argument("--no-payments", dest="payments", action="store_false", default=None,
                     help="serve/buy without payment channels")
    run.add_argument("--credit-window", dest="credit_window", type=int, help="nanotons served ahead of payment")
    run.add_argument("--payment-timeout", dest="payment_timeout", type=float,
                     help="seconds a worker waits for a voucher before stopping a stream")
    run.add_argument("--channel-idle-close", dest="payer_idle_close", type=float, metavar="SECONDS",
                     help="requester: close a channel no request used for SECONDS (default 43200; 0: never)")

    ident = sub.add_parser("id", help="print the peer id (and addresses of the running node)")
    _add_common(ident)
    keygen = sub.add_parser("keygen", help="create the node identity key")
    _add_common(keygen)
    keygen.add_argument("--force", action="store_true", help="replace an existing key (changes the peer id)")
    status = sub.add_parser("status", help="ask the running node for its status")
    _add_common(status)
    status.add_argument("--json", action="store_true", help="the whole status as JSON (default: a table)")
    chat = sub.add_parser("chat", help="one-shot chat request through a requester node")
    _add_common(chat)
    chat.add_argument("prompt")
    chat.add_argument("--api", help="requester API base URL (default: from the node's data dir)")
    chat.add_argument("--model", help="model to ask for (default: the one the API offers, verified workers first)")
    chat.add_argument("--max-tokens", dest="max_tokens", type=int, default=128)
    chat.add_argument("--api-key", dest="api_key", default=os.environ.get("COCOON_REQUESTER_API_KEY", ""))
    chat.add_argument("--no-stream", dest="stream", action="store_false")

    channels = sub.add_parser("channels", help="a requester's payment channels: list them, close on command")
    channels_sub = channels.add_subparsers(dest="channels_command", required=True)
    for name, what in (("list", "list the channels (the running node's, else as stored in the data dir)"),
                       ("close", "close the channel to PEER (every open channel without PEER), cooperatively")):
        cmd = channels_sub.add_parser(name, help=what)
        _add_common(cmd)
        cmd.add_argument("--json", action="store_true", help="print JSON")
        if name == "close":
            cmd.add_argument("peer", nargs="?", help="the worker's peer id (default: all)")
    verify = sub.add_parser("verify-receipt", help="check a saved receipt offline (no node needed)")
    verify.add_argument("file", type=Path, help='JSON {"receipt": HEX, "attestation_report": HEX}')
    verify.add_argument("--allow-dev-tee", dest="allow_dev_tee", action="store_true",
                        help="accept a dev-INSECURE report (it proves nothing about hardware)")
    cluster = sub.add_parser("cluster", help="the main job: a local cluster answering a real chat request")
    cluster.add_argument("--workers", type=int, default=2)
    cluster.add_argument("--backend", default="torch", choices=["torch", "synthetic"])
    cluster.add_argument("--prompt", default="In one sentence, what is a peer-to-peer network?")
    cluster.add_argument("--api-port", dest="api_port", type=int, default=8080)
    cluster.add_argument("--base-dir", dest="base_dir", default=".cocoon/cluster")
    cluster.add_argument("--once", action="store_true", help="exit after the answer instead of serving on")
    cluster.add_argument("--debug", action="store_true", help="show a failed start's traceback too")
    return parser


def _load(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config, overrides=overrides_from_args(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"cocoon-node: config error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "verify-receipt":
        from cocoon_node.receipts.cli import verify_receipt_file

        raise SystemExit(verify_receipt_file(args.file, allow_dev_tee=args.allow_dev_tee))
    if args.command == "cluster":
        from cocoon_node.cluster import run_main_job

        raise SystemExit(run_main_job(args))
    config = _load(args)
    setup_logging(config)
    from cocoon_node.channels_cli import cmd_channels

    handler = {"run": cmd_run, "id": cmd_id, "keygen": cmd_keygen, "status": cmd_status, "chat": cmd_chat,
               "channels": cmd_channels}[args.command]
    raise SystemExit(handler(config, args))


def setup_logging(config: Config) -> None:
    """Log to stderr at the configured level; py-libp2p and the HTTP stack only from warnings up."""
    logging.basicConfig(level=getattr(logging, config.node.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("libp2p", "hypercorn", "httpx", "multiaddr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_run(config: Config, args: argparse.Namespace, *, transport_factory: TransportFactory | None = None) -> int:
    """Run the node until signalled. ``transport_factory`` replaces py-libp2p's transports (netsim's entry point
    injects its NETSIM-ONLY shaped TCP this way; ``cocoon-node run`` never sets it)."""
    from cocoon_node.api import NodeHttp
    from cocoon_node.mesh import IdentityError
    from cocoon_node.node import Node
    from cocoon_node.node.datadir import DataDirError

    if not (config.worker.enabled or config.requester.enabled):
        logging.getLogger("cocoon_node").info("no role given: running as a relay (DHT + gossip%s) only",
                                              " + circuit relay" if config.node.relay else "")
    w = config.worker
    if w.enabled and w.model_path and not Path(w.model_path).exists():
        print(f"cocoon-node: model file not found: {w.model_path}: pass --model-path with an existing model file "
              f"(or leave it out for the {w.backend} backend's default)", file=sys.stderr)
        return 2
    try:
        node = Node(config, http=NodeHttp(), transport_factory=transport_factory)
    except (IdentityError, DataDirError) as exc:
        print(f"cocoon-node: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(serve_until_signalled, node)
    except Exception as exc:
        from cocoon_node.observe.startup import report_failure

        return report_failure(exc, debug=getattr(args, "debug", False))
    return 0


async def serve_until_signalled(node: Any, ready_extra: dict[str, Any] | None = None) -> None:
    """Run ``node``, print its ready line on stdout, and on SIGINT/SIGTERM shut it down gracefully."""
    async with trio.open_nursery() as nursery:
        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    logging.getLogger("cocoon_node").info("received %s: shutting down", signal.Signals(signum).name)
                    await node.shutdown_gracefully()
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(stop_on_signal)
        info = await nursery.start(node.run)
        print(json.dumps({"event": "ready", "peer_id": info.peer_id, "addrs": info.addrs,
                          "api_url": info.api_url, "admin_url": info.admin_url, "dashboard_url": info.dashboard_url,
                          **(ready_extra or {})}), flush=True)


def cmd_id(config: Config, args: argparse.Namespace) -> int:
    from cocoon_node.mesh import IdentityError, load_identity, peer_id_of
    from cocoon_node.node import read_node_info

    try:
        key_pair = load_identity(config.data_dir)
    except IdentityError as exc:
        print(f"cocoon-node: {exc}", file=sys.stderr)
        return 2
    out: dict[str, Any] = {"peer_id": peer_id_of(key_pair).to_base58()}
    try:
        out["addrs"] = read_node_info(config.data_dir)["addrs"]
    except (OSError, ValueError):
        out["addrs"] = []
    print(json.dumps(out, indent=2))
    return 0


def cmd_keygen(config: Config, args: argparse.Namespace) -> int:
    from cocoon_node.mesh import IdentityError, generate_identity, identity_path, peer_id_of

    try:
        key_pair = generate_identity(config.data_dir, overwrite=args.force)
    except IdentityError as exc:
        print(f"cocoon-node: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"peer_id": peer_id_of(key_pair).to_base58(), "key_file": str(identity_path(config.data_dir))}))
    return 0


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    import httpx

    from cocoon_node.node import read_node_info

    try:
        info = read_node_info(config.data_dir)
    except (OSError, ValueError):
        print(f"cocoon-node: no running node found in {config.data_dir}: pass --data-dir of a running node",
              file=sys.stderr)
        return 1
    try:
        resp = httpx.get(info["admin_url"] + "/status", headers={"authorization": f"Bearer {info['admin_token']}"},
                         timeout=10)
    except httpx.HTTPError as exc:
        print(f"cocoon-node: admin endpoint {info['admin_url']} unreachable ({exc}): the node may have stopped; "
              f"start it with `cocoon-node run --data-dir {config.data_dir}`", file=sys.stderr)
        return 1
    if resp.status_code != 200:
        print(f"cocoon-node: admin endpoint answered {resp.status_code}: {resp.text[:200]}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(resp.json(), indent=2))
    else:
        from cocoon_node.observe.status_table import format_status

        print(format_status(resp.json()))
    return 0


def cmd_chat(config: Config, args: argparse.Namespace) -> int:
    from cocoon_node.chat_client import chat_once
    from cocoon_node.node import read_node_info

    api = args.api
    if api is None:
        try:
            api = read_node_info(config.data_dir)["api_url"]
        except (OSError, ValueError, KeyError):
            api = None
        if not api:
            print("cocoon-node: no requester API found; pass --api or --data-dir of a running requester",
                  file=sys.stderr)
            return 1
    from cocoon_node.chat_client import ChatError, offered_model

    model = args.model
    if not model:
        try:
            model = offered_model(api, api_key=args.api_key)
        except ChatError as exc:
            print(f"cocoon-node: {exc}", file=sys.stderr)
            return 1
    return chat_once(api, args.prompt, model=model, max_tokens=args.max_tokens, api_key=args.api_key,
                     stream=args.stream)


if __name__ == "__main__":
    main()
