"""A stand-in PCCS on 127.0.0.1 (ephemeral port) serving RECORDED Intel collateral in the PCCS v4 wire format:
the bodies and issuer-chain headers a real PCCS sends, rebuilt from tests/data/tdx-collateral/ (the signed
``tcbInfo`` / ``enclaveIdentity`` texts are inserted verbatim, so Intel's signatures still hold)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import quote as urlquote

import trio

from cocoon_node.attestation.collateral import TdxCollateralRecord
from tests.http_fakes import read_request_head


@dataclass
class FakePccs:
    collateral: TdxCollateralRecord
    port: int = 0
    paths: list[str] = field(default_factory=list)
    status: int = 200  # answer every request with this status (500: a PCCS in trouble)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route(self, path: str) -> tuple[bytes, dict[str, str]]:
        c = self.collateral
        if path.startswith("/sgx/certification/v4/pckcrl?"):
            return c.pck_crl, {"SGX-PCK-CRL-Issuer-Chain": urlquote(c.pck_crl_issuer_chain)}
        if path.startswith("/tdx/certification/v4/tcb?fmspc="):
            body = '{"tcbInfo":' + c.tcb_info + ',"signature":"' + c.tcb_info_signature.hex() + '"}'
            return body.encode(), {"TCB-Info-Issuer-Chain": urlquote(c.tcb_info_issuer_chain)}
        if path.startswith("/tdx/certification/v4/qe/identity"):
            body = '{"enclaveIdentity":' + c.qe_identity + ',"signature":"' + c.qe_identity_signature.hex() + '"}'
            return body.encode(), {"SGX-Enclave-Identity-Issuer-Chain": urlquote(c.qe_identity_issuer_chain)}
        if path == "/sgx/certification/v4/rootcacrl":
            return c.root_ca_crl.hex().encode(), {}  # a PCCS sends this one as hex
        raise KeyError(path)

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = await read_request_head(stream)
            if data is None:
                return
            path = data.split(b"\r\n", 1)[0].decode().split(" ")[1]
            self.paths.append(path)
            try:
                body, headers = self.route(path)
                status = "200 OK" if self.status == 200 else f"{self.status} Error"
            except KeyError:
                body, headers, status = b"not found", {}, "404 Not Found"
            if self.status != 200:
                body, headers = b"error", {}
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            await stream.send_all(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{head}"
                                  f"Connection: close\r\n\r\n".encode() + body)


@asynccontextmanager
async def fake_pccs(collateral: TdxCollateralRecord) -> AsyncIterator[FakePccs]:
    fake = FakePccs(collateral)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, fake.handle, 0, host="127.0.0.1"))
        fake.port = listeners[0].socket.getsockname()[1]
        yield fake
        nursery.cancel_scope.cancel()
