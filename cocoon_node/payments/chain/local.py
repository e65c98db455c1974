"""EMULATED chain for development and tests: NOT TON, no real funds, no consensus.

``LocalChain`` starts ``contracts/sidecar/localchain.mjs`` — a Node process running @ton/sandbox, the
real TVM emulator, with the same compiled contracts (contracts/build/*.boc) the real chain would
run — and talks JSON lines to it over stdin/stdout. Everything a contract decides (signatures,
seqnos, payouts, exit codes, fees) is real TVM behaviour; what is emulated is the network: there
are no blocks or validators, messages are delivered instantly, and the clock only moves when
:meth:`LocalChain.advance_time` / :meth:`LocalChain.set_now` say so.

One process can serve several parties: ``await chain.for_wallet("payee")`` gives a second
``LocalChain`` bound to another emulated wallet, sharing the process (only the first one owns it).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from cocoon_node.payments.chain.base import (
    DEFAULT_DEPLOY_GAS,
    DEFAULT_OP_VALUE,
    ChainError,
    ChannelState,
    TxResult,
    parse_channel_state,
    poll_closes,
)
from cocoon_node.payments.contracts import contracts_dir
from cocoon_node.payments.voucher import (
    MAX_CHALLENGE_PERIOD,
    ChannelParams,
    SignedClose,
    SignedVoucher,
    check_channel_terms,
    finish_body,
    start_close_body,
    top_up_body,
)

log = logging.getLogger(__name__)

LABEL = "EMULATED local chain (@ton/sandbox TVM emulator; dev/test only, not TON)"

#: How long a single sidecar request may take before we call the sidecar hung.
REQUEST_TIMEOUT = 30.0
#: Startup allowance (node start + WASM emulator load).
START_TIMEOUT = 30.0


def ensure_contract_deps(directory: Path | None = None) -> Path:
    """Run ``npm ci`` in contracts/ when node_modules is missing (CI and fresh checkouts).

    Synchronous on purpose: it is called once from test fixtures / dev tooling, before trio runs.
    """
    d = directory or contracts_dir()
    if not (d / "node_modules" / "@ton" / "sandbox").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            raise ChainError("npm not found: install Node >= 20 to use the emulated local chain")
        log.info("installing contract dependencies: npm ci in %s", d)
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=d, check=True, timeout=600)
    return d


class SidecarError(ChainError):
    """The sidecar answered a request with an error object."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"sidecar error {code}: {message}")
        self.code = code


class _Sidecar:
    """The child process and its JSON-lines channel; requests go one at a time."""

    def __init__(self, proc: trio.Process | None, *, stream: trio.SocketStream | None = None) -> None:
        self.proc = proc
        self._stream = stream
        self._buf = bytearray()
        self._lock = trio.Lock()
        self._next_id = 1
        self.closed = False

    async def _read_line(self) -> bytes:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if self._stream is not None:
                chunk = await self._stream.receive_some(65536)
            else:
                assert self.proc is not None and self.proc.stdout is not None
                chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                raise ChainError("local chain sidecar exited")
            self._buf += chunk

    async def read_ready(self) -> dict[str, Any]:
        with trio.fail_after(START_TIMEOUT):
            line = await self._read_line()
        msg = json.loads(line)
        if not msg.get("result", {}).get("ready"):
            raise ChainError(f"unexpected sidecar greeting: {line[:200]!r}")
        return dict(msg["result"])

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        if self.closed:
            raise ChainError("local chain is closed")
        async with self._lock:
            rid = self._next_id
            self._next_id += 1
            data = json.dumps({"id": rid, "method": method, "params": params or {}}) + "\n"
            with trio.fail_after(REQUEST_TIMEOUT):
                if self._stream is not None:
                    await self._stream.send_all(data.encode())
                else:
                    assert self.proc is not None and self.proc.stdin is not None
                    await self.proc.stdin.send_all(data.encode())
                while True:
                    msg = json.loads(await self._read_line())
                    if msg.get("id") == rid:
                        break
                    log.warning("dropping unexpected sidecar message %r", msg)
        if "error" in msg:
            raise SidecarError(int(msg["error"].get("code", -1)), str(msg["error"].get("message")))
        return msg["result"]

    async def aclose(self) -> None:
        """Close stdin (the sidecar saves its state if asked to, then exits); kill it if it lingers."""
        if self.closed:
            return
        self.closed = True
        if self._stream is not None:
            with trio.move_on_after(5) as cs0:
                cs0.shield = True
                await self._stream.aclose()
            return
        assert self.proc is not None
        with trio.move_on_after(5) as cs:
            cs.shield = True
            if self.proc.stdin is not None:
                await self.proc.stdin.aclose()
            await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.kill()  # our own child only
            with trio.move_on_after(5) as cs2:
                cs2.shield = True
                await self.proc.wait()


def _tx_result(r: dict[str, Any]) -> TxResult:
    return TxResult(
        success=bool(r.get("success")), exit_code=r.get("exit_code"), transactions=r.get("transactions", [])
    )


class LocalChain:
    """:class:`~cocoon_node.payments.chain.base.Chain` over the EMULATED local chain, for one wallet."""

    label: str = LABEL

    def __init__(self, sidecar: _Sidecar, wallet: str, address: str, *, owner: bool) -> None:
        self._sidecar = sidecar
        self.wallet = wallet
        self._address = address
        self._owner = owner

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        wallet: str = "node",
        *,
        balance: int | None = None,
        now: int | None = None,
        state_file: Path | None = None,
        node: str | None = None,
    ) -> AsyncIterator[LocalChain]:
        """Start a sidecar (one child process) and yield a chain bound to ``wallet``.

        ``state_file`` makes the emulated chain survive restarts (loaded at start, saved at close).
        """
        d = ensure_contract_deps()
        node_bin = node or shutil.which("node")
        if node_bin is None:
            raise ChainError("node not found: install Node >= 20 to use the emulated local chain")
        args = [node_bin, str(d / "sidecar" / "localchain.mjs")]
        if now is not None:
            args += ["--now", str(now)]
        if state_file is not None:
            args += ["--state", os.path.abspath(state_file)]  # noqa: ASYNC240 - no I/O; the sidecar runs in contracts/
        proc = await trio.lowlevel.open_process(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(d))
        sidecar = _Sidecar(proc)
        try:
            await sidecar.read_ready()
            chain = await cls._bind(sidecar, wallet, balance, owner=True)
            yield chain
        finally:
            await sidecar.aclose()

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str, wallet: str, *, balance: int | None = None) -> AsyncIterator[LocalChain]:
        """Join a shared sidecar serving TCP (``tcp://127.0.0.1:PORT``, see ``localchain.mjs --listen``).

        A local cluster runs one EMULATED chain that every node uses, so channels opened by a requester are
        visible to the worker it pays; closing this object closes only our connection.
        """
        host, _, port = url.removeprefix("tcp://").rpartition(":")
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ChainError(f"refusing to use a local chain that is not on loopback: {url}")
        with trio.fail_after(START_TIMEOUT):
            stream = await trio.open_tcp_stream(host, int(port))
        sidecar = _Sidecar(None, stream=stream)
        try:
            yield await cls._bind(sidecar, wallet, balance, owner=True)
        finally:
            await sidecar.aclose()

    @classmethod
    async def _bind(cls, sidecar: _Sidecar, wallet: str, balance: int | None, *, owner: bool) -> LocalChain:
        params: dict[str, Any] = {"name": wallet}
        if balance is not None:
            params["balance"] = str(balance)
        r = await sidecar.call("create_wallet", params)
        return cls(sidecar, wallet, str(r["address"]), owner=owner)

    async def for_wallet(self, wallet: str, *, balance: int | None = None) -> LocalChain:
        """Another party on the same emulated chain (created with ``balance`` if new)."""
        return await self._bind(self._sidecar, wallet, balance, owner=False)

    async def aclose(self) -> None:
        """Stop the sidecar if this object started it."""
        if self._owner:
            await self._sidecar.aclose()

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Raw sidecar request (see contracts/README.md for methods)."""
        return await self._sidecar.call(method, params)

    # ---- Chain protocol ----------------------------------------------------------------------

    @property
    def wallet_address(self) -> str:
        return self._address

    async def now(self) -> int:
        return int((await self.call("now"))["now"])

    async def advance_time(self, seconds: int) -> int:
        return int((await self.call("advance_time", {"seconds": seconds}))["now"])

    async def set_now(self, now: int) -> int:
        """Jump the emulated clock (never backwards)."""
        return int((await self.call("set_now", {"now": now}))["now"])

    async def get_balance(self, address: str) -> int:
        return int((await self.call("get_balance", {"address": address}))["balance"])

    async def get_channel_state(self, address: str) -> ChannelState:
        return parse_channel_state(address, await self.call("channel_state", {"address": address}))

    async def open_channel(self, params: ChannelParams, deposit: int, *, gas: int = DEFAULT_DEPLOY_GAS) -> str:
        check_channel_terms(params, deposit, gas)  # what the contract would refuse never leaves the node
        r = await self.call(
            "deploy_channel", {"from": self.wallet, **params.to_json(), "deposit": str(deposit), "gas": str(gas)}
        )
        res = _tx_result(r)
        res.raise_for_status()
        return str(r["address"])

    async def send_body(self, to: str, body_boc: bytes, value: int, *, bounce: bool = True) -> TxResult:
        """Send an arbitrary message body (BoC) from this wallet; the result is the destination's."""
        r = await self.call(
            "send",
            {
                "from": self.wallet,
                "to": to,
                "value": str(value),
                "body": base64.b64encode(body_boc).decode(),
                "bounce": bounce,
            },
        )
        return _tx_result(r)

    async def top_up(self, address: str, amount: int, *, gas: int = DEFAULT_DEPLOY_GAS) -> TxResult:
        return await self.send_body(address, top_up_body(amount).to_boc(), amount + gas)

    async def claim(self, address: str, voucher: SignedVoucher, *, value: int = DEFAULT_OP_VALUE) -> TxResult:
        return await self.send_body(address, voucher.claim_body().to_boc(), value)

    async def cooperative_close(self, address: str, close: SignedClose, *, value: int = DEFAULT_OP_VALUE) -> TxResult:
        return await self.send_body(address, close.body().to_boc(), value)

    async def unilateral_close(
        self, address: str, voucher: SignedVoucher | None, *, value: int = DEFAULT_OP_VALUE
    ) -> TxResult:
        return await self.send_body(address, start_close_body(voucher).to_boc(), value)

    async def challenge(self, address: str, voucher: SignedVoucher, *, value: int = DEFAULT_OP_VALUE) -> TxResult:
        return await self.send_body(address, voucher.challenge_body().to_boc(), value)

    async def finish(self, address: str, *, value: int = DEFAULT_OP_VALUE) -> TxResult:
        return await self.send_body(address, finish_body().to_boc(), value)

    def watch_closes(self, addresses: Iterable[str], *, poll_interval: float = 1.0) -> AsyncIterator[ChannelState]:
        return poll_closes(self, addresses, poll_interval)

    # ---- emulator extras ---------------------------------------------------------------------

    async def channel_address(self, params: ChannelParams) -> str:
        """Address the JS side derives for these params (tests compare with the Python derivation)."""
        return str((await self.call("channel_address", params.to_json()))["address"])

    async def run_get_method(
        self, address: str, method: str, args: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Raw get-method call; stack entries are ``{"type": "int", "value": "..."}`` etc."""
        return dict(await self.call("run_get_method", {"address": address, "method": method, "args": args or []}))

    async def transactions(self, address: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Recent transaction summaries, newest last."""
        p: dict[str, Any] = {"limit": limit}
        if address:
            p["address"] = address
        return list((await self.call("transactions", p))["transactions"])

    async def total_supply(self) -> dict[str, int]:
        """Conservation figures: ``sum_balances + burned == minted`` must always hold."""
        r = await self.call("total_supply")
        return {k: int(v) for k, v in r.items()}

    async def deploy_registry(
        self, *, min_deposit: int, min_challenge_period: int, owner: str | None = None,
        max_challenge_period: int = MAX_CHALLENGE_PERIOD,
    ) -> str:
        """Deploy the policy registry owned by ``owner`` (default: this wallet)."""
        p: dict[str, Any] = {
            "from": self.wallet,
            "min_deposit": str(min_deposit),
            "min_challenge_period": min_challenge_period,
            "max_challenge_period": max_challenge_period,
        }
        if owner:
            p["owner"] = owner
        r = await self.call("deploy_registry", p)
        _tx_result(r).raise_for_status()
        return str(r["address"])

    async def registry_update(self, address: str, action: str, **args: Any) -> TxResult:
        """Owner update: add_image/remove_image/remove_model/add_rtmr_set/remove_rtmr_set (hash=int), add_model
        (hash=int, name=str), add_mrtd/remove_mrtd (mrtd=bytes), set_tcb_rule (require_tcb_check=bool,
        tcb_statuses=[names], max_report_age=int), set_params, transfer_ownership."""
        p: dict[str, Any] = {"from": self.wallet, "address": address, "action": action}
        if "hash" in args:
            p["hash"] = str(args["hash"])
        for key in ("name", "require_tcb_check", "max_report_age"):
            if key in args:
                p[key] = args[key]
        if "mrtd" in args:
            p["mrtd"] = bytes(args["mrtd"]).hex()
        if "tcb_statuses" in args:
            p["tcb_statuses"] = list(args["tcb_statuses"])
        if "min_deposit" in args:
            p["min_deposit"] = str(args["min_deposit"])
        if "min_challenge_period" in args:
            p["min_challenge_period"] = int(args["min_challenge_period"])
        if "max_challenge_period" in args:
            p["max_challenge_period"] = int(args["max_challenge_period"])
        if "new_owner" in args:
            p["new_owner"] = args["new_owner"]
        return _tx_result(await self.call("registry_update", p))

    async def registry_state(self, address: str) -> dict[str, Any]:
        """Decoded policy: version, min_deposit, min/max_challenge_period, owner, images (hex), models
        ({hash, name}), mrtds and rtmr_sets (hex), tcb ({require_tcb_check, tcb_statuses, max_report_age})."""
        return dict(await self.call("registry_state", {"address": address}))

    async def save_state(self, path: Path | None = None) -> None:
        """Persist the emulated chain (to ``path`` or the ``state_file`` given at start)."""
        await self.call("save_state", {"path": str(path)} if path else {})


@asynccontextmanager
async def serve_shared_chain(state_file: Path | None = None, *, node: str | None = None) -> AsyncIterator[str]:
    """Run one EMULATED chain sidecar listening on 127.0.0.1 and yield its ``tcp://`` URL.

    Local clusters (``just run``, tests, netsim) start one of these and hand the URL to every node, so all
    nodes settle on the same emulated ledger. The sidecar is our own child; it is stopped on exit.
    """
    d = ensure_contract_deps()
    node_bin = node or shutil.which("node")
    if node_bin is None:
        raise ChainError("node not found: install Node >= 20 to use the emulated local chain")
    args = [node_bin, str(d / "sidecar" / "localchain.mjs"), "--listen", "127.0.0.1:0"]
    if state_file is not None:
        args += ["--state", os.path.abspath(state_file)]  # noqa: ASYNC240 - no I/O; the sidecar runs in contracts/
    proc = await trio.lowlevel.open_process(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(d))
    sidecar = _Sidecar(proc)
    try:
        ready = await sidecar.read_ready()
        yield f"tcp://{ready['listen']}"
    finally:
        await sidecar.aclose()
