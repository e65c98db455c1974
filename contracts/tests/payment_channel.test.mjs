// Payment channel: every operation, and the attacks we could think of, on the real TVM (sandbox).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { beginCell, toNano } from '@ton/core';
import { internal } from '@ton/sandbox';
import { sign } from '@ton/crypto';
import {
  ERR, STATE, TAG, OP,
  signedVoucher, voucherCell, closeCell, signCell,
  claimBody, challengeBody, startCloseBody, cooperativeCloseBody, finishBody, topUpBody,
  summarizeTx, burned, channelAddress,
} from '../lib/cocoon.mjs';
import { setup, send, channelState, balance, getter, keyPair, T0 } from './helpers.mjs';

const CH = 77n;
const OP_VALUE = toNano('0.05');

/** The channel's own transaction failed with `code`, changed nothing, and bounced the value back. */
function assertRejected(r, code, ctx) {
  const s = r.txSummary;
  assert.ok(s, 'channel transaction exists');
  assert.equal(s.success, false, 'transaction failed');
  assert.equal(s.exitCode, code, `exit code ${s.exitCode} (want ${code})`);
  const bounces = s.outMessages.filter((m) => m.bounced);
  assert.equal(bounces.length, 1, 'value bounced back to the sender');
  assert.equal(bounces[0].to, s.from);
  if (ctx) assert.ok(true);
}

/**
 * A close the payee sent: its payout is `owed` plus its attached value minus the gas and the payout's forward
 * fee (like a claim), the refund takes everything else; neither pays for the other. Checks that exactly.
 */
function assertPayeeClose(s, chBefore, owed, payee, payer) {
  const toPayee = s.outMessages.find((m) => m.to === payee.toString());
  const toPayer = s.outMessages.find((m) => m.to === payer.toString());
  assert.equal(BigInt(toPayee.amount), owed);
  // both messages together: the channel's balance and the attached value, less gas and both forward fees
  assert.equal(BigInt(toPayee.value) + BigInt(toPayer.value),
    chBefore - BigInt(s.storageFee) + BigInt(s.inValue) - BigInt(s.computeFee) - BigInt(s.totalFwdFees));
  // and the payee's part carries its own unused value back (less than a forward fee short of all of it)
  const excess = BigInt(s.inValue) - BigInt(s.computeFee);
  assert.ok(BigInt(toPayee.value) <= owed + excess && BigInt(toPayee.value) > owed + excess - 1_000_000n,
    `payee got ${toPayee.value}, owed ${owed} + excess ${excess}`);
  return toPayee;
}

async function snapshotState(ctx) {
  return JSON.stringify(await channelState(ctx), (_, v) => (typeof v === 'bigint' ? v.toString() : v));
}

function voucher(ctx, seqno, amount, opts = {}) {
  return signedVoucher(opts.channelId ?? CH, seqno, amount, opts.secret ?? ctx.payerKeys.secretKey, opts);
}

async function sumBalances(ctx, extra = []) {
  let s = 0n;
  for (const a of [ctx.payer.address, ctx.payee.address, ctx.stranger.address, ctx.address, ...extra]) s += await balance(ctx, a);
  return s;
}

describe('deploy and deposit', () => {
  it('deploys with the exact deposit and the address derives from canonical init data', async () => {
    const ctx = await setup({ deposit: toNano('10') });
    const st = await channelState(ctx);
    assert.deepEqual(st, { state: STATE.OPEN, deposit: toNano('10'), claimed: 0n, seqno: 0n, committed: 0n, closeDeadline: 0, closeInitiator: 0 });
    const chTx = summarizeTx(ctx.deployTxs[1]);
    assert.equal(chTx.success, true);
    // balance = attached value - this transaction's fees, to the nanoton
    assert.equal(await balance(ctx, ctx.address), BigInt(chTx.inValue) - BigInt(chTx.totalFees));
    assert.equal(channelAddress(ctx.params).toString(), ctx.address.toString());
    const p = (await getter(ctx, 'get_parties')).stackReader;
    assert.equal(p.readBigNumber(), CH);
    assert.equal(p.readNumber(), 3600);
    assert.equal(p.readBigNumber(), BigInt('0x' + Buffer.from(ctx.payerKeys.publicKey).toString('hex')));
    assert.equal(p.readBigNumber(), BigInt('0x' + Buffer.from(ctx.payeeKeys.publicKey).toString('hex')));
    assert.equal(p.readAddress().toString(), ctx.payer.address.toString());
    assert.equal(p.readAddress().toString(), ctx.payee.address.toString());
  });

  it('top-up by the payer adds exactly the stated amount', async () => {
    const ctx = await setup();
    const before = await balance(ctx, ctx.address);
    const r = await send(ctx, ctx.payer, topUpBody(toNano('2')), toNano('2.01'));
    assert.equal(r.txSummary.success, true);
    assert.equal((await channelState(ctx)).deposit, ctx.deposit + toNano('2'));
    assert.equal(await balance(ctx, ctx.address), before + toNano('2.01') - BigInt(r.txSummary.totalFees));
  });

  it('rejects top-up from a non-payer and top-up worth less than it claims', async () => {
    const ctx = await setup();
    const before = await snapshotState(ctx);
    assertRejected(await send(ctx, ctx.stranger, topUpBody(toNano('1')), toNano('1.1')), ERR.NOT_PAYER);
    assertRejected(await send(ctx, ctx.payee, topUpBody(toNano('1')), toNano('1.1')), ERR.NOT_PAYER);
    assertRejected(await send(ctx, ctx.payer, topUpBody(toNano('5')), toNano('1')), ERR.LOW_VALUE);
    assert.equal(await snapshotState(ctx), before);
  });

  it('accepts a plain transfer (empty body) without changing the deposit, rejects unknown ops', async () => {
    const ctx = await setup();
    const r = await ctx.stranger.send({ to: ctx.address, value: toNano('1'), bounce: true });
    assert.equal(summarizeTx(r.transactions[1]).success, true);
    assert.equal((await channelState(ctx)).deposit, ctx.deposit);
    const bad = beginCell().storeUint(0xdeadbeef, 32).storeUint(0, 64).endCell();
    assertRejected(await send(ctx, ctx.payer, bad), ERR.UNKNOWN_OP);
  });
});

describe('claim (payee, channel stays open)', () => {
  it('pays exactly the delta each time, to the nanoton', async () => {
    const ctx = await setup();
    const payeeBefore = await balance(ctx, ctx.payee.address);
    const total0 = await sumBalances(ctx);
    const allTxs = [];
    for (const [seqno, amount, delta] of [[1, toNano('1'), toNano('1')], [5, toNano('2.5'), toNano('1.5')]]) {
      const chBefore = await balance(ctx, ctx.address);
      const r = await send(ctx, ctx.payee, claimBody(voucher(ctx, seqno, amount)), OP_VALUE);
      allTxs.push(...r.transactions);
      const s = r.txSummary;
      assert.equal(s.success, true);
      assert.equal(s.outMessages.length, 1);
      const out = s.outMessages[0];
      assert.equal(out.to, ctx.payee.address.toString());
      assert.equal(out.op, OP.CLAIM_PAYOUT);
      assert.equal(BigInt(out.amount), delta, 'the payout states the delta');
      assert.equal(out.bounce, false, 'non-bounceable: the value always stays at the payee address');
      // delta + attached value - gas - forward fees (mode 64), exactly
      assert.equal(BigInt(out.value), delta + OP_VALUE - BigInt(s.computeFee) - BigInt(s.totalFwdFees));
      // the channel loses exactly the delta plus storage fee; the attached value pays for itself
      assert.equal(await balance(ctx, ctx.address), chBefore - delta - BigInt(s.storageFee));
      const st = await channelState(ctx);
      assert.equal(st.claimed, amount);
      assert.equal(st.seqno, BigInt(seqno));
      assert.equal(st.committed, amount);
    }
    // payee got exactly 2.5 TON minus what its operations cost: its own wallet's fees and the
    // channel's gas + forward fees (paid from the attached value, not from the deposit)
    const of = (a) => allTxs.filter((t) => summarizeTx(t).account === a.toString());
    const chStorage = of(ctx.address).reduce((a, t) => a + BigInt(summarizeTx(t).storageFee), 0n);
    assert.equal(await balance(ctx, ctx.payee.address),
      payeeBefore + toNano('2.5') - burned(of(ctx.payee.address)) - (burned(of(ctx.address)) - chStorage));
    // nothing created or lost: sum of balances fell by exactly the fees burned
    assert.equal(await sumBalances(ctx), total0 - burned(allTxs));
  });

  it('rejects a replayed voucher and any voucher that does not raise the claimed amount, whatever its seqno', async () => {
    const ctx = await setup();
    const v = voucher(ctx, 3, toNano('1'));
    assert.equal((await send(ctx, ctx.payee, claimBody(v))).txSummary.success, true);
    const before = await snapshotState(ctx);
    assertRejected(await send(ctx, ctx.payee, claimBody(v)), ERR.NOTHING_TO_CLAIM);
    assertRejected(await send(ctx, ctx.payee, claimBody(voucher(ctx, 9, toNano('1')))), ERR.NOTHING_TO_CLAIM);
    assertRejected(await send(ctx, ctx.payee, claimBody(voucher(ctx, 2n ** 64n - 1n, toNano('0.5')))), ERR.NOTHING_TO_CLAIM);
    assert.equal(await snapshotState(ctx), before);
  });

  it('rejects a voucher whose amount goes backwards', async () => {
    const ctx = await setup();
    await send(ctx, ctx.payee, claimBody(voucher(ctx, 1, toNano('2'))));
    assertRejected(await send(ctx, ctx.payee, claimBody(voucher(ctx, 2, toNano('1')))), ERR.NOTHING_TO_CLAIM);
  });

  it('rejects overdraw beyond the deposit', async () => {
    const ctx = await setup({ deposit: toNano('3') });
    assertRejected(await send(ctx, ctx.payee, claimBody(voucher(ctx, 1, toNano('3') + 1n))), ERR.OVERDRAW);
    assert.equal((await send(ctx, ctx.payee, claimBody(voucher(ctx, 1, toNano('3'))))).txSummary.success, true);
  });

  it('rejects wrong signatures: payee key, random key, tampered amount, garbage', async () => {
    const ctx = await setup();
    const before = await snapshotState(ctx);
    assertRejected(await send(ctx, ctx.payee, claimBody(voucher(ctx, 1, toNano('1'), { secret: ctx.payeeKeys.secretKey }))), ERR.BAD_SIGNATURE);
    assertRejected(await send(ctx, ctx.payee, claimBody(voucher(ctx, 1, toNano('1'), { secret: keyPair('mallory').secretKey }))), ERR.BAD_SIGNATURE);
    const good = voucher(ctx, 1, toNano('1'));
    const tampered = { signature: good.signature, cell: voucherCell(CH, 1, toNano('5')) };
    assertRejected(await send(ctx, ctx.payee, claimBody(tampered)), ERR.BAD_SIGNATURE);
    assertRejected(await send(ctx, ctx.payee, claimBody({ signature: Buffer.alloc(64, 7), cell: good.cell })), ERR.BAD_SIGNATURE);
    assert.equal(await snapshotState(ctx), before);
  });

  it('rejects a voucher for another channel (cross-channel replay)', async () => {
    const ctx = await setup();
    assertRejected(await send(ctx, ctx.payee, claimBody(voucher(ctx, 1, toNano('1'), { channelId: CH + 1n }))), ERR.WRONG_CHANNEL);
  });

  it('rejects a payer signature made for another purpose (domain tag)', async () => {
    const ctx = await setup();
    // same layout, close tag: a signature the payer gave for something else
    assertRejected(await send(ctx, ctx.payee, claimBody(voucher(ctx, 1, toNano('1'), { tag: TAG.CLOSE }))), ERR.WRONG_TAG);
    // a real payer-signed close cell presented as a voucher
    const cc = closeCell(CH, toNano('1'));
    const asVoucher = { signature: signCell(cc, ctx.payerKeys.secretKey), cell: cc };
    const r = await send(ctx, ctx.payee, claimBody(asVoucher));
    assert.equal(r.txSummary.success, false);
    assert.ok([ERR.WRONG_TAG, 9].includes(r.txSummary.exitCode), `exit ${r.txSummary.exitCode}`);
  });

  it('rejects claims from anyone but the payee, and with too little value', async () => {
    const ctx = await setup();
    const v = voucher(ctx, 1, toNano('1'));
    assertRejected(await send(ctx, ctx.payer, claimBody(v)), ERR.NOT_PAYEE);
    assertRejected(await send(ctx, ctx.stranger, claimBody(v)), ERR.NOT_PAYEE);
    assertRejected(await send(ctx, ctx.payee, claimBody(v), toNano('0.01')), ERR.LOW_VALUE);
  });

  it('gas exhaustion: a claim carrying almost no value runs out of gas and changes nothing', async () => {
    const ctx = await setup();
    const before = await snapshotState(ctx);
    const chBefore = await balance(ctx, ctx.address);
    const r = await send(ctx, ctx.payee, claimBody(voucher(ctx, 1, toNano('1'))), toNano('0.0005'));
    const s = r.txSummary;
    assert.equal(s.success, false);
    assert.ok([-14, 13].includes(s.exitCode), `out of gas, got ${s.exitCode}`);
    assert.equal(await snapshotState(ctx), before);
    // the deposit did not pay for the failed attempt
    assert.ok((await balance(ctx, ctx.address)) >= chBefore - BigInt(s.storageFee));
  });

  it('a claim payout to a payee address with no account lands there (nothing bounces back)', async () => {
    const ctx = await setup({ challengePeriod: 100 });
    const ghost = (await ctx.chain.treasury('ghost')).address;
    const params = { ...ctx.params, payee: ghost, channelId: 5n };
    const { channelStateInit } = await import('../lib/cocoon.mjs');
    const { contractAddress } = await import('@ton/core');
    const init = channelStateInit(params);
    const addr = contractAddress(0, init);
    await ctx.payer.send({ to: addr, value: toNano('5.1'), init, body: topUpBody(toNano('5')), bounce: false });
    const { createEmptyShardAccount } = await import('@ton/sandbox');
    await ctx.chain.setShardAccount(ghost, createEmptyShardAccount(ghost));
    const sv = signedVoucher(5n, 1, toNano('1'), ctx.payerKeys.secretKey);
    const r = await ctx.chain.sendMessage(internal({ from: ghost, to: addr, value: OP_VALUE, body: claimBody(sv), bounce: true }));
    const sums = r.transactions.map(summarizeTx);
    const chTxs = sums.filter((s) => s.account === addr.toString());
    assert.equal(chTxs.length, 1, 'the claim only: no bounce comes back');
    assert.equal(chTxs[0].success, true);
    const payout = chTxs[0].outMessages[0];
    assert.equal(payout.bounce, false);
    assert.equal(await balance(ctx, ghost), BigInt(payout.value), 'the undeployed payee wallet keeps the payout');
    assert.ok(BigInt(payout.value) > toNano('1'));
    const st = (await ctx.chain.runGetMethod(addr, 'get_channel_state')).stackReader;
    st.readNumber(); st.readBigNumber();
    assert.equal(st.readBigNumber(), toNano('1'), 'claimed');
    // payer closes; after the period, finish owes nothing more and refunds the rest
    await ctx.payer.send({ to: addr, value: OP_VALUE, body: startCloseBody(null), bounce: true });
    ctx.chain.now = T0 + 100;
    const f = await ctx.payer.send({ to: addr, value: OP_VALUE, body: finishBody(), bounce: true });
    const fin = f.transactions.map(summarizeTx).find((s) => s.account === addr.toString());
    assert.equal(fin.success, true);
    assert.equal(fin.outMessages.length, 1);
    assert.equal(fin.outMessages[0].op, OP.REFUND);
  });
});

describe('cooperative close', () => {
  async function coop(ctx, amount, opts = {}) {
    const cell = opts.cell ?? closeCell(opts.channelId ?? CH, amount);
    const ps = opts.payerSig ?? signCell(cell, ctx.payerKeys.secretKey);
    const qs = opts.payeeSig ?? signCell(cell, ctx.payeeKeys.secretKey);
    return send(ctx, opts.from ?? ctx.payee, cooperativeCloseBody(cell, ps, qs), OP_VALUE);
  }

  it('pays the payee cumulative - claimed exactly, the payer the rest, and destroys the channel', async () => {
    const ctx = await setup({ deposit: toNano('10') });
    await send(ctx, ctx.payee, claimBody(voucher(ctx, 1, toNano('1'))));
    const total0 = await sumBalances(ctx);
    const chBefore = await balance(ctx, ctx.address);
    const r = await coop(ctx, toNano('4'));
    const s = r.txSummary;
    assert.equal(s.success, true);
    assert.equal(s.endStatus, 'non-existing');
    // the payee sent the close: it gets its 3 TON share and what its attached value did not spend
    const toPayee = assertPayeeClose(s, chBefore, toNano('3'), ctx.payee.address, ctx.payer.address);
    assert.equal(toPayee.op, OP.CLOSE_PAYOUT);
    assert.equal(await channelState(ctx), null);
    assert.equal(await balance(ctx, ctx.address), 0n);
    assert.equal(await sumBalances(ctx), total0 - burned(r.transactions));
  });

  it('rejects one forged signature, wrong channel, wrong tag, backwards amount, overdraw, non-party', async () => {
    const ctx = await setup({ deposit: toNano('5') });
    await send(ctx, ctx.payee, claimBody(voucher(ctx, 1, toNano('2'))));
    const before = await snapshotState(ctx);
    const cell = closeCell(CH, toNano('3'));
    assertRejected(await coop(ctx, 0, { cell, payeeSig: signCell(cell, keyPair('mallory').secretKey) }), ERR.BAD_SIGNATURE);
    assertRejected(await coop(ctx, 0, { cell, payerSig: signCell(cell, ctx.payeeKeys.secretKey) }), ERR.BAD_SIGNATURE);
    assertRejected(await coop(ctx, toNano('3'), { channelId: CH + 1n }), ERR.WRONG_CHANNEL);
    assertRejected(await coop(ctx, 0, { cell: closeCell(CH, toNano('3'), TAG.VOUCHER) }), ERR.WRONG_TAG);
    const vc = voucherCell(CH, 9, toNano('3'));
    const r = await coop(ctx, 0, { cell: vc });
    assert.equal(r.txSummary.success, false);
    assert.ok([ERR.WRONG_TAG, 9].includes(r.txSummary.exitCode));
    assertRejected(await coop(ctx, toNano('1')), ERR.AMOUNT_BACKWARDS);
    assertRejected(await coop(ctx, toNano('5') + 1n), ERR.OVERDRAW);
    assertRejected(await coop(ctx, toNano('3'), { from: ctx.stranger }), ERR.NOT_PARTY);
    assert.equal(await snapshotState(ctx), before);
  });

  it('works during a unilateral close too', async () => {
    const ctx = await setup();
    await send(ctx, ctx.payer, startCloseBody(null));
    const r = await coop(ctx, toNano('1'), { from: ctx.payer });
    assert.equal(r.txSummary.success, true);
    assert.equal(await channelState(ctx), null);
  });
});

describe('unilateral close, challenge, finish', () => {
  it('payee closes with its newest voucher; finish after the period pays it exactly', async () => {
    const ctx = await setup({ challengePeriod: 600 });
    await send(ctx, ctx.payee, claimBody(voucher(ctx, 1, toNano('1'))));
    ctx.chain.now = T0 + 10;
    const r = await send(ctx, ctx.payee, startCloseBody(voucher(ctx, 4, toNano('3'))));
    assert.equal(r.txSummary.success, true);
    let st = await channelState(ctx);
    assert.equal(st.state, STATE.CLOSING);
    assert.equal(st.closeDeadline, T0 + 10 + 600);
    assert.equal(st.closeInitiator, 2);
    assert.equal(st.committed, toNano('3'));
    assert.equal(Number((await getter(ctx, 'get_close_deadline')).stackReader.readNumber()), T0 + 610);
    // too early
    ctx.chain.now = T0 + 609;
    assertRejected(await send(ctx, ctx.payee, finishBody()), ERR.TOO_EARLY);
    // no claims, top-ups or second close while closing
    assertRejected(await send(ctx, ctx.payee, claimBody(voucher(ctx, 5, toNano('4')))), ERR.WRONG_STATE);
    assertRejected(await send(ctx, ctx.payer, topUpBody(toNano('1')), toNano('1.1')), ERR.WRONG_STATE);
    assertRejected(await send(ctx, ctx.payer, startCloseBody(null)), ERR.WRONG_STATE);
    ctx.chain.now = T0 + 610;
    const total0 = await sumBalances(ctx);
    const f = await send(ctx, ctx.payer, finishBody());
    const s = f.txSummary;
    assert.equal(s.success, true);
    const toPayee = s.outMessages.find((m) => m.to === ctx.payee.address.toString());
    assert.equal(BigInt(toPayee.value), toNano('2'));
    assert.equal(await channelState(ctx), null);
    assert.equal(await sumBalances(ctx), total0 - burned(f.transactions));
    st = null;
  });

  it('stale voucher in a dispute: payer closes on an old voucher, payee challenges with a newer one', async () => {
    const ctx = await setup({ challengePeriod: 300 });
    await send(ctx, ctx.payee, claimBody(voucher(ctx, 1, toNano('1'))));
    // payer "forgets" vouchers 2..6 and closes on seqno 2
    assert.equal((await send(ctx, ctx.payer, startCloseBody(voucher(ctx, 2, toNano('1.5'))))).txSummary.success, true);
    assert.equal((await channelState(ctx)).closeInitiator, 1);
    ctx.chain.now = T0 + 299;
    assert.equal((await send(ctx, ctx.payee, challengeBody(voucher(ctx, 6, toNano('4'))))).txSummary.success, true);
    let st = await channelState(ctx);
    assert.equal(st.seqno, 6n);
    assert.equal(st.committed, toNano('4'));
    assert.equal(st.closeDeadline, T0 + 300, 'challenge does not move the deadline');
    // payer tries to push the old voucher back, or a higher seqno for less: neither raises the amount
    assertRejected(await send(ctx, ctx.payer, challengeBody(voucher(ctx, 2, toNano('1.5')))), ERR.AMOUNT_BACKWARDS);
    assertRejected(await send(ctx, ctx.payer, challengeBody(voucher(ctx, 7, toNano('3')))), ERR.AMOUNT_BACKWARDS);
    assertRejected(await send(ctx, ctx.stranger, challengeBody(voucher(ctx, 8, toNano('5')))), ERR.NOT_PARTY);
    assertRejected(await send(ctx, ctx.payee, challengeBody(voucher(ctx, 8, toNano('5'), { channelId: 1n }))), ERR.WRONG_CHANNEL);
    assertRejected(await send(ctx, ctx.payee, challengeBody(voucher(ctx, 8, toNano('50')))), ERR.OVERDRAW);
    ctx.chain.now = T0 + 300;
    assertRejected(await send(ctx, ctx.payee, challengeBody(voucher(ctx, 9, toNano('5')))), ERR.TOO_LATE);
    const chBefore = await balance(ctx, ctx.address);
    const f = await send(ctx, ctx.payee, finishBody());
    assert.equal(f.txSummary.success, true);
    assertPayeeClose(f.txSummary, chBefore, toNano('3'), ctx.payee.address, ctx.payer.address);
    st = null;
  });

  it('payer closes with no voucher; payee challenges; double finish is harmless', async () => {
    const ctx = await setup({ challengePeriod: 60 });
    assert.equal((await send(ctx, ctx.payer, startCloseBody(null))).txSummary.success, true);
    assert.equal((await send(ctx, ctx.payee, challengeBody(voucher(ctx, 1, toNano('0.7'))))).txSummary.success, true);
    ctx.chain.now = T0 + 60;
    assertRejected(await send(ctx, ctx.stranger, finishBody()), ERR.NOT_PARTY);
    const payerBefore = await balance(ctx, ctx.payer.address);
    const chBefore = await balance(ctx, ctx.address);
    const f = await send(ctx, ctx.payee, finishBody());
    assert.equal(f.txSummary.success, true);
    assertPayeeClose(f.txSummary, chBefore, toNano('0.7'), ctx.payee.address, ctx.payer.address);
    assert.ok((await balance(ctx, ctx.payer.address)) > payerBefore + toNano('9.2'));
    // second finish hits a destroyed account: nothing runs, the value bounces back
    const again = await send(ctx, ctx.payer, finishBody());
    assert.equal(again.txSummary.computeSkipped, true);
    assert.ok(again.txSummary.outMessages.some((m) => m.bounced && m.to === ctx.payer.address.toString()));
    assert.equal(await channelState(ctx), null);
  });

  it('finish with nothing owed sends only the refund; payee cannot close without a voucher', async () => {
    const ctx = await setup({ challengePeriod: 1 });
    assertRejected(await send(ctx, ctx.payee, startCloseBody(null)), ERR.BAD_VOUCHER);
    assertRejected(await send(ctx, ctx.stranger, startCloseBody(null)), ERR.NOT_PARTY);
    assertRejected(await send(ctx, ctx.payer, finishBody()), ERR.WRONG_STATE);
    assertRejected(await send(ctx, ctx.payer, challengeBody(voucher(ctx, 1, 1n))), ERR.WRONG_STATE);
    await send(ctx, ctx.payer, startCloseBody(null));
    ctx.chain.now = T0 + 1;
    const f = await send(ctx, ctx.payer, finishBody());
    assert.equal(f.txSummary.success, true);
    assert.equal(f.txSummary.outMessages.length, 1);
    assert.equal(f.txSummary.outMessages[0].op, OP.REFUND);
  });

  it('payee key cannot sign vouchers for itself in a dispute', async () => {
    const ctx = await setup();
    assertRejected(await send(ctx, ctx.payee, startCloseBody(voucher(ctx, 1, toNano('9'), { secret: ctx.payeeKeys.secretKey }))), ERR.BAD_SIGNATURE);
    // a payer signature over the wrong thing (the BoC bytes instead of the cell hash)
    const cell = voucherCell(CH, 1, toNano('1'));
    const bad = { signature: sign(cell.toBoc(), ctx.payerKeys.secretKey), cell };
    assertRejected(await send(ctx, ctx.payee, startCloseBody(bad)), ERR.BAD_SIGNATURE);
  });
});

describe('performance', () => {
  it('measures ms per sandbox transaction', async () => {
    const ctx = await setup({ deposit: toNano('1000') });
    const n = 40;
    let txs = 0;
    const t0 = performance.now();
    for (let i = 1; i <= n; i++) {
      const r = await send(ctx, ctx.payee, claimBody(voucher(ctx, i, BigInt(i) * toNano('0.01'))));
      assert.equal(r.txSummary.success, true);
      txs += r.transactions.length;
    }
    const ms = performance.now() - t0;
    console.log(`# ${n} claims, ${txs} transactions in ${ms.toFixed(0)} ms: ${(ms / txs).toFixed(2)} ms/tx, ${(ms / n).toFixed(2)} ms/claim`);
  });
});
