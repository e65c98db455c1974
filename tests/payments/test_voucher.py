"""Voucher cells, signatures and the payee-side checks, without any chain."""

from __future__ import annotations

import json

import pytest
from pytoniq_core import begin_cell

from cocoon_node.payments.chain.ton import build_open_channel, channel_state_from_stacks
from cocoon_node.payments.contracts import CODE_HASHES, contract_code, contracts_dir
from cocoon_node.payments.voucher import (
    TAG_CLOSE,
    ChannelParams,
    SignedClose,
    SignedVoucher,
    VoucherError,
    channel_address,
    check_next_voucher,
    close_cell,
    public_key_bytes,
    sign_close,
    sign_voucher,
    voucher_cell,
)
from tests.payments.conftest import TON, party_key

PAYER = party_key("payer")
PAYEE = party_key("payee")
PAYER_PUB = public_key_bytes(PAYER)
CH = 0xC0C0


def test_voucher_cell_layout_matches_the_contract_vector() -> None:
    # same hash the JS helper (contracts/lib/cocoon.mjs voucherCell) gives for these fields
    assert voucher_cell(77, 1, 10**9).hash.hex() == "c1d613107cc30f0d74cd9c1b7ae02bb37b0cc2c46b869d073d0af6e002813895"
    s = voucher_cell(77, 1, 10**9).begin_parse()
    assert s.load_uint(32) == 0x5C0CF001
    assert s.load_uint(256) == 77
    assert s.load_uint(64) == 1
    assert s.load_coins() == 10**9
    assert s.remaining_bits == 0


def test_sign_verify_and_roundtrips() -> None:
    v = sign_voucher(PAYER, CH, 3, 5 * TON)
    assert v.verify(PAYER_PUB)
    assert not v.verify(public_key_bytes(PAYEE))
    assert SignedVoucher.from_boc(v.to_boc()) == v
    assert SignedVoucher.from_wire(v.to_wire()) == v
    assert SignedVoucher.from_wire(json.loads(json.dumps(v.to_json()))) == v


@pytest.mark.parametrize(
    "field,value",
    [("seqno", 4), ("cumulative", 5 * TON + 1), ("channel_id", CH + 1)],
)
def test_any_changed_field_breaks_the_signature(field: str, value: int) -> None:
    v = sign_voucher(PAYER, CH, 3, 5 * TON)
    fields: dict[str, int] = {"channel_id": CH, "seqno": 3, "cumulative": 5 * TON, field: value}
    forged = SignedVoucher(fields["channel_id"], fields["seqno"], fields["cumulative"], v.signature)
    assert not forged.verify(PAYER_PUB)


def test_close_cell_is_not_a_voucher() -> None:
    cc = close_cell(CH, TON)
    boc = begin_cell().store_bytes(b"\0" * 64).store_ref(cc).end_cell().to_boc()
    with pytest.raises(VoucherError):
        SignedVoucher.from_boc(boc)
    # same layout with the close tag: parses as the wrong tag
    vc = voucher_cell(CH, 1, TON, tag=TAG_CLOSE)
    with pytest.raises(VoucherError, match="not a voucher"):
        SignedVoucher.from_boc(begin_cell().store_bytes(b"\0" * 64).store_ref(vc).end_cell().to_boc())


def test_payee_check_mirrors_the_contract() -> None:
    newest = sign_voucher(PAYER, CH, 5, 2 * TON)
    ok = sign_voucher(PAYER, CH, 6, 3 * TON)
    check_next_voucher(ok, channel_id=CH, payer_public_key=PAYER_PUB, deposit=10 * TON, newest=newest)
    bad = {
        "another channel": sign_voucher(PAYER, CH + 1, 6, 3 * TON),
        "bad payer signature": sign_voucher(PAYEE, CH, 6, 3 * TON),
        "stale seqno": sign_voucher(PAYER, CH, 5, 3 * TON),
        "backwards": sign_voucher(PAYER, CH, 7, 1 * TON),
        "overdraw": sign_voucher(PAYER, CH, 7, 11 * TON),
    }
    for reason, v in bad.items():
        with pytest.raises(VoucherError, match=reason):
            check_next_voucher(v, channel_id=CH, payer_public_key=PAYER_PUB, deposit=10 * TON, newest=newest)
    # replay of the newest voucher itself
    with pytest.raises(VoucherError, match="stale"):
        check_next_voucher(newest, channel_id=CH, payer_public_key=PAYER_PUB, deposit=10 * TON, newest=newest)


def test_ranges_are_enforced() -> None:
    with pytest.raises(VoucherError):
        voucher_cell(-1, 1, 1)
    with pytest.raises(VoucherError):
        voucher_cell(1, 2**64, 1)
    with pytest.raises(VoucherError):
        SignedVoucher.from_wire({"channel_id": b"\1" * 32, "seqno": 1, "cumulative": 2**63, "signature": b"\0" * 64})
    with pytest.raises(VoucherError):
        SignedVoucher.from_wire({"channel_id": b"\1" * 32, "seqno": 1, "cumulative": 1, "signature": b"\0" * 63})


def test_signed_close_needs_both() -> None:
    sc = SignedClose(CH, 2 * TON, sign_close(PAYER, CH, 2 * TON), sign_close(PAYEE, CH, 2 * TON))
    assert sc.verify(PAYER_PUB, public_key_bytes(PAYEE))
    swapped = SignedClose(CH, 2 * TON, sc.payee_signature, sc.payer_signature)
    assert not swapped.verify(PAYER_PUB, public_key_bytes(PAYEE))


def test_code_hashes_match_the_committed_build() -> None:
    for name, h in CODE_HASHES.items():
        meta = json.loads((contracts_dir() / "build" / f"{name}.json").read_text())
        assert meta["codeHashHex"] == h
        assert contract_code(name).hash.hex() == h


def test_ton_adapter_builds_the_same_deploy_and_decodes_get_methods() -> None:
    params = ChannelParams(
        PAYER_PUB,
        public_key_bytes(PAYEE),
        "EQD3eLbcV60CnZbStVzPzYtPetz9_qDk2TYOnUqQ0g4CiqX9",
        "EQCyPqriM4mVwsCEY39n-FyYlMr4WlhCatyvGVrUYCCVIzpp",
        CH,
        600,
    )
    address, si, body, value = build_open_channel(params, 3 * TON, gas=TON // 10)
    assert address == channel_address(params)
    assert value == 3 * TON + TON // 10
    assert body.begin_parse().load_uint(32) == 0x5C0C0001
    assert si.code is not None
    assert si.code.hash.hex() == CODE_HASHES["payment_channel"]
    payer_slice = begin_cell().store_address(params.payer).end_cell().begin_parse()
    payee_slice = begin_cell().store_address(params.payee).end_cell().begin_parse()
    st = channel_state_from_stacks(
        address,
        123,
        [1, 3 * TON, TON, 4, 2 * TON, 1_800_000_600, 2],
        [
            CH,
            600,
            int.from_bytes(PAYER_PUB, "big"),
            int.from_bytes(public_key_bytes(PAYEE), "big"),
            payer_slice,
            payee_slice,
        ],
    )
    assert st.status == "closing"
    assert st.owed_to_payee == TON
    assert st.payer == params.payer and st.payee == params.payee
    assert st.payer_key == PAYER_PUB
