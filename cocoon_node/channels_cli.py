"""``cocoon-node channels list|close [PEER]``: a requester's payment channels, closed only when asked.

A requester keeps its channels open across restarts; this is how its operator closes one. ``close`` asks the
*running* node (its admin endpoint, token in ``DATA_DIR/node.json``): a cooperative close needs the worker's
co-signature over the mesh and the node's chain connection, and a stopped node changes nothing, so there is
no offline close (a stopped node's channels stay open and are resumed at its next start; the worker closes
one it sees idle for ``payments.idle_close_after``). ``list`` asks the running node, or reads the data dir's
``payments.db`` as stored when the node is stopped.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx

from cocoon_node.config import Config

_COLUMNS = ("role", "status", "peer", "address", "deposit", "voucher_seqno", "voucher_cumulative")


def _admin(config: Config) -> dict[str, Any] | None:
    from cocoon_node.node import read_node_info

    try:
        return read_node_info(config.data_dir)
    except (OSError, ValueError):
        return None


def stored_channels(config: Config) -> list[dict[str, Any]] | None:
    """The channels in a (stopped) node's ``payments.db``, as stored; None when there is none."""
    from cocoon_node.payments import PaymentStore

    path = config.data_dir / "payments.db"
    if not path.exists():
        return None
    store = PaymentStore.open(path)
    try:
        out = []
        for role in ("payer", "payee"):
            for rec in store.channels(role):
                newest = store.newest_voucher(rec.address)
                out.append({"role": rec.role, "status": rec.status, "peer": rec.peer, "address": rec.address,
                            "deposit": rec.deposit, "voucher_seqno": newest.seqno if newest else 0,
                            "voucher_cumulative": newest.cumulative if newest else 0})
        return out
    finally:
        store.close()


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no channels"
    cells = [[str(r.get(c, "")) for c in _COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(_COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def cmd_channels(config: Config, args: Any) -> int:
    """Run ``channels list`` or ``channels close [PEER]``."""
    info = _admin(config)
    headers = {"authorization": f"Bearer {info['admin_token']}"} if info else {}
    if args.channels_command == "list":
        rows, source = None, "the running node"
        if info is not None:
            try:
                resp = httpx.get(info["admin_url"] + "/status", headers=headers, timeout=10)
                if resp.status_code == 200:
                    rows = (resp.json().get("payments") or {}).get("channels") or []
            except httpx.HTTPError:
                rows = None
        if rows is None:
            rows, source = stored_channels(config), f"{config.data_dir / 'payments.db'} (node not running: as stored)"
            if rows is None:
                print(f"cocoon-node: no running node and no payments.db in {config.data_dir}", file=sys.stderr)
                return 1
        print(json.dumps(rows, indent=2) if args.json else f"channels of {source}:\n{_table(rows)}")
        return 0
    if info is None:
        print(f"cocoon-node: no running node in {config.data_dir}: start it (`cocoon-node run --data-dir "
              f"{config.data_dir} ...`; it resumes its open channels) and close then: a cooperative close needs "
              "the worker's signature over the mesh", file=sys.stderr)
        return 1
    try:
        resp = httpx.post(info["admin_url"] + "/channels/close", headers=headers, timeout=150,
                          json={"peer": args.peer} if args.peer else {})
    except httpx.HTTPError as exc:
        print(f"cocoon-node: admin endpoint {info['admin_url']} unreachable ({exc}): is the node running?",
              file=sys.stderr)
        return 1
    body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
    if args.json:
        print(json.dumps(body, indent=2))
    for c in body.get("closed") or []:
        how = ("closed cooperatively" if c.get("cooperative") else
               "closing alone (the deposit comes back after the challenge period)" if c.get("success") else
               f"NOT closed: {c.get('error') or 'the chain refused; the watcher retries'}")
        if not args.json:
            print(f"{c['peer']}  {c['address']}  paid {c.get('paid', 0)} by voucher #{c.get('voucher_seqno', 0)}: "
                  f"{how}")
    if resp.status_code != 200 or body.get("error"):
        print(f"cocoon-node: {body.get('error') or resp.text[:200]}", file=sys.stderr)
        return 1
    if not body.get("closed") and not args.json:
        print("no open channels")
    return 0 if all(c.get("success") for c in body.get("closed") or []) else 1
