"""Voucher throughput: sign, verify (BoC parse + Ed25519), and durable store (SQLite WAL, synchronous=FULL).

    .venv/bin/python bench/bench_payments.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon_node.payments.store import PaymentStore
from cocoon_node.payments.voucher import ChannelParams, SignedVoucher, public_key_bytes, sign_voucher


def main(n: int = 2000) -> None:
    """Print operations per second for each stage."""
    key = Ed25519PrivateKey.generate()
    pub = public_key_bytes(key)
    t = time.perf_counter()
    vs = [sign_voucher(key, 7, i + 1, 1000 * (i + 1)) for i in range(n)]
    sign = n / (time.perf_counter() - t)
    bocs = [v.to_boc() for v in vs]
    t = time.perf_counter()
    assert all(SignedVoucher.from_boc(b).verify(pub) for b in bocs)
    verify = n / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as d:
        store = PaymentStore.open(Path(d) / "b.db")
        store.upsert_channel("a", "payee", "p", ChannelParams(pub, pub, "0:" + "11" * 32, "0:" + "22" * 32, 7, 60), 1)
        t = time.perf_counter()
        for v in vs:
            store.add_voucher("a", v)
        stored = n / (time.perf_counter() - t)
        store.close()
    print(f"vouchers: sign {sign:,.0f}/s  parse+verify {verify:,.0f}/s  durable store {stored:,.0f}/s  "
          f"(BoC {len(bocs[0])} bytes)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
