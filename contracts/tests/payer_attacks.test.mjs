// The outside review of the payment channel (issue 19): vouchers must rank by amount, so a payer can never
// take back what its payee earned; and three lower-severity cases (a payout bouncing after the channel is
// destroyed, a deploy without a gas buffer, a challenge period that overflows the deadline).
// Each test here failed on the contract before the fix (code hash ef381609...).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { contractAddress, toNano } from '@ton/core';
import { internal, createEmptyShardAccount } from '@ton/sandbox';
import {
  ERR, STATE, OP,
  signedVoucher, closeCell, signCell, channelStateInit,
  claimBody, challengeBody, startCloseBody, cooperativeCloseBody, finishBody, topUpBody,
  summarizeTx,
} from '../lib/cocoon.mjs';
import { setup, send, channelState, balance, T0 } from './helpers.mjs';

const CH = 77n;
const OP_VALUE = toNano('0.05');
const MAX_SEQNO = 2n ** 64n - 1n;
const MAX_CHALLENGE_PERIOD = 30 * 24 * 3600;
const MIN_GAS_RESERVE = toNano('0.02');

const voucher = (ctx, seqno, amount) => signedVoucher(CH, seqno, amount, ctx.payerKeys.secretKey);

function assertOk(r, what) {
  assert.ok(r.txSummary, `${what}: channel transaction exists`);
  assert.equal(r.txSummary.success, true, `${what}: exit ${r.txSummary.exitCode}`);
}

function assertRejected(r, code, what) {
  assert.equal(r.txSummary.success, false, `${what}: expected exit ${code}, it succeeded`);
  assert.equal(r.txSummary.exitCode, code, `${what}: exit ${r.txSummary.exitCode} (want ${code})`);
}

/** A refused deploy leaves no deposit behind: the account may exist (TVM applies the StateInit before the
 * compute phase fails) but holds nothing and records deposit 0; the value bounced back to the payer. */
async function assertNoDeposit(chain, addr) {
  const acct = await chain.getContract(addr);
  assert.ok(acct.balance < toNano('0.001'), `balance ${acct.balance} left at the refused channel`);
  if (acct.accountState?.type === 'active') {
    const s = (await chain.runGetMethod(addr, 'get_deposit')).stackReader;
    assert.equal(s.readBigNumber(), 0n, 'deposit recorded');
  }
}

/** Finish after the deadline; returns the amount the close payout pays the payee (0n when none was sent). */
async function finishAndPayout(ctx, from) {
  const st = await channelState(ctx);
  ctx.chain.now = st.closeDeadline;
  const f = await send(ctx, from, finishBody());
  assertOk(f, 'finish');
  const toPayee = f.txSummary.outMessages.find((m) => m.to === ctx.payee.address.toString());
  assert.equal(await channelState(ctx), null, 'channel destroyed');
  if (!toPayee) return 0n;
  if (from === ctx.payer) assert.equal(BigInt(toPayee.value), BigInt(toPayee.amount), 'exactly owed');
  else assert.ok(BigInt(toPayee.value) > BigInt(toPayee.amount), 'owed plus the finisher\'s unused value');
  return BigInt(toPayee.amount);
}

describe('vouchers rank by amount: the payee\'s best evidence wins, whoever starts the close', () => {
  it('attack 1: payer closes with a higher-seqno, lower-amount voucher; the payee\'s newest still wins', async () => {
    const ctx = await setup({ challengePeriod: 600 });
    assertOk(await send(ctx, ctx.payee, claimBody(voucher(ctx, 1, toNano('1')))), 'claim #1');
    // Off chain the payee holds #10 for 6 TON. The payer signs #11 for 1 TON and closes with it.
    const r = await send(ctx, ctx.payer, startCloseBody(voucher(ctx, 11, toNano('1'))));
    assertOk(r, 'payer start_close');
    let st = await channelState(ctx);
    assert.equal(st.state, STATE.CLOSING);
    assert.equal(st.committed, toNano('1'), 'a lower voucher never lowers the committed amount');
    // the payee challenges with what it really holds
    assertOk(await send(ctx, ctx.payee, challengeBody(voucher(ctx, 10, toNano('6')))), 'payee challenge #10');
    st = await channelState(ctx);
    assert.equal(st.committed, toNano('6'));
    assert.equal(st.seqno, 10n, 'seqno of the voucher that set the committed amount');
    // the payer cannot push it back down with any seqno
    assertRejected(await send(ctx, ctx.payer, challengeBody(voucher(ctx, 12, toNano('1')))), ERR.AMOUNT_BACKWARDS, 'payer #12');
    assertRejected(await send(ctx, ctx.payer, challengeBody(voucher(ctx, MAX_SEQNO, toNano('5.9')))), ERR.AMOUNT_BACKWARDS, 'payer max seqno');
    assert.equal((await channelState(ctx)).committed, toNano('6'));
    assert.equal(await finishAndPayout(ctx, ctx.payer), toNano('5'), 'the 5 TON earned since the claim go to the payee');
  });

  it('attack 1b: a lowball voucher above the claimed amount does not cap the payee either', async () => {
    const ctx = await setup({ challengePeriod: 600 });
    assertOk(await send(ctx, ctx.payee, claimBody(voucher(ctx, 1, toNano('1')))), 'claim #1');
    assertOk(await send(ctx, ctx.payer, startCloseBody(voucher(ctx, 11, toNano('1.5')))), 'payer start_close');
    assert.equal((await channelState(ctx)).committed, toNano('1.5'));
    assertOk(await send(ctx, ctx.payee, challengeBody(voucher(ctx, 10, toNano('6')))), 'payee challenge #10');
    assert.equal(await finishAndPayout(ctx, ctx.payee), toNano('5'));
  });

  it('attack 2: payer closes without a voucher, then challenges with (2^64-1, 0): refused; the payee\'s voucher lands', async () => {
    const ctx = await setup({ challengePeriod: 600 });
    assertOk(await send(ctx, ctx.payer, startCloseBody(null)), 'payer start_close without voucher');
    assertRejected(await send(ctx, ctx.payer, challengeBody(voucher(ctx, MAX_SEQNO, 0n))), ERR.AMOUNT_BACKWARDS, 'max-seqno zero voucher');
    const st = await channelState(ctx);
    assert.equal(st.committed, 0n);
    assert.equal(st.seqno, 0n, 'no voucher recorded');
    assertOk(await send(ctx, ctx.payee, challengeBody(voucher(ctx, 7, toNano('3')))), 'payee challenge');
    // and a later, higher voucher is still accepted (nothing can lock the channel)
    assertOk(await send(ctx, ctx.payee, challengeBody(voucher(ctx, 8, toNano('4')))), 'payee challenge #8');
    assert.equal(await finishAndPayout(ctx, ctx.payer), toNano('4'));
  });

  it('claim ranks by amount too: a higher amount with a lower seqno is paid', async () => {
    const ctx = await setup();
    assertOk(await send(ctx, ctx.payee, claimBody(voucher(ctx, 5, toNano('1')))), 'claim #5');
    // vouchers of two concurrent streams signed out of order: #3 carries more
    assertOk(await send(ctx, ctx.payee, claimBody(voucher(ctx, 3, toNano('2')))), 'claim #3 (2 TON)');
    const st = await channelState(ctx);
    assert.equal(st.claimed, toNano('2'));
    assert.equal(st.committed, toNano('2'));
    assertRejected(await send(ctx, ctx.payee, claimBody(voucher(ctx, 9, toNano('2')))), ERR.NOTHING_TO_CLAIM, 'same amount');
  });

  it('the payee can start a close with the voucher it already claimed (idle close after a full claim)', async () => {
    const ctx = await setup({ challengePeriod: 60 });
    const v = voucher(ctx, 4, toNano('2'));
    assertOk(await send(ctx, ctx.payee, claimBody(v)), 'claim');
    assertOk(await send(ctx, ctx.payee, startCloseBody(v)), 'payee start_close with its claimed voucher');
    const st = await channelState(ctx);
    assert.equal(st.closeInitiator, 2);
    assert.equal(st.committed, toNano('2'));
    assert.equal(await finishAndPayout(ctx, ctx.payee), 0n, 'nothing more owed');
  });

  it('a voucher beyond the deposit is refused on every path', async () => {
    const ctx = await setup({ deposit: toNano('3') });
    assertRejected(await send(ctx, ctx.payee, startCloseBody(voucher(ctx, 1, toNano('3') + 1n))), ERR.OVERDRAW, 'start_close');
    assertOk(await send(ctx, ctx.payer, startCloseBody(null)), 'payer start_close');
    assertRejected(await send(ctx, ctx.payee, challengeBody(voucher(ctx, 1, toNano('3') + 1n))), ERR.OVERDRAW, 'challenge');
    assertOk(await send(ctx, ctx.payee, challengeBody(voucher(ctx, 1, toNano('3')))), 'challenge with the whole deposit');
  });
});

describe('a payee defending itself pays only gas', () => {
  it('start_close and challenge return the unused attached value; the payer does not pocket it at close', async () => {
    const ctx = await setup({ challengePeriod: 600 });
    assertOk(await send(ctx, ctx.payer, startCloseBody(voucher(ctx, 2, toNano('1')))), 'payer close');
    const chBefore = await balance(ctx, ctx.address);
    const r = await send(ctx, ctx.payee, challengeBody(voucher(ctx, 3, toNano('6'))), toNano('0.5'));
    assertOk(r, 'payee challenge');
    const s = r.txSummary;
    const back = s.outMessages.find((m) => m.to === ctx.payee.address.toString());
    assert.ok(back, 'the excess goes back to the challenger');
    assert.equal(back.op, OP.EXCESS);
    assert.equal(BigInt(back.value), toNano('0.5') - BigInt(s.computeFee) - BigInt(s.totalFwdFees));
    assert.equal(await balance(ctx, ctx.address), chBefore - BigInt(s.storageFee), 'nothing of it stays in the channel');
    // the same for a payee's own start_close
    const ctx2 = await setup({ challengePeriod: 600 });
    const r2 = await send(ctx2, ctx2.payee, startCloseBody(voucher(ctx2, 1, toNano('1'))), toNano('0.5'));
    assertOk(r2, 'payee start_close');
    assert.equal(r2.txSummary.outMessages.filter((m) => m.op === OP.EXCESS && m.to === ctx2.payee.address.toString()).length, 1);
  });
});

describe('lower-severity review findings', () => {
  it('a claim payout to a payee wallet that does not exist yet lands there, even if the channel is destroyed meanwhile', async () => {
    const ctx = await setup({ challengePeriod: 100 });
    const ghost = (await ctx.chain.treasury('ghost')).address;
    const params = { ...ctx.params, payee: ghost, channelId: 5n };
    const init = channelStateInit(params);
    const addr = contractAddress(0, init);
    await ctx.payer.send({ to: addr, value: toNano('5.1'), init, body: topUpBody(toNano('5')), bounce: false });
    await ctx.chain.setShardAccount(ghost, createEmptyShardAccount(ghost)); // the payee wallet does not exist
    // The payee claims 1 TON; its payout is still in flight when a cooperative close (terms: 1 TON) destroys the channel.
    const claim = await ctx.chain.sendMessageIter(
      internal({ from: ghost, to: addr, value: OP_VALUE, body: claimBody(signedVoucher(5n, 1, toNano('1'), ctx.payerKeys.secretKey)), bounce: true }),
      { allowParallel: true });
    const first = summarizeTx((await claim.next()).value);
    assert.equal(first.account, addr.toString());
    assert.equal(first.success, true, 'claim accepted');
    const cell = closeCell(5n, toNano('1'));
    const body = cooperativeCloseBody(cell, signCell(cell, ctx.payerKeys.secretKey), signCell(cell, ctx.payeeKeys.secretKey));
    const coop = await ctx.payer.send({ to: addr, value: OP_VALUE, body, bounce: true });
    const coopTx = coop.transactions.map(summarizeTx).find((s) => s.account === addr.toString());
    assert.equal(coopTx.success, true);
    assert.equal(coopTx.endStatus, 'non-existing');
    for await (const tx of claim) summarizeTx(tx); // deliver the rest: the payout (and, before the fix, its bounce)
    const chAcct = await ctx.chain.getContract(addr);
    assert.equal(chAcct.balance, 0n, `nothing may end at the destroyed channel (found ${chAcct.balance})`);
    assert.ok((await balance(ctx, ghost)) >= toNano('1'), 'the payee address holds its 1 TON');
  });

  it('a deploy carrying only the deposit (no gas buffer) is refused; with the buffer a full claim pays', async () => {
    const ctx = await setup();
    const params = { ...ctx.params, channelId: 9n };
    const init = channelStateInit(params);
    const addr = contractAddress(0, init);
    const payerBefore = await balance(ctx, ctx.payer.address);
    const r = await ctx.payer.send({ to: addr, value: toNano('5'), init, body: topUpBody(toNano('5')), bounce: true });
    const chTx = r.transactions.map(summarizeTx).find((s) => s.account === addr.toString());
    assert.equal(chTx.success, false, 'deploy without a gas buffer must be refused');
    assert.equal(chTx.exitCode, ERR.LOW_VALUE);
    await assertNoDeposit(ctx.chain, addr);
    assert.ok((await balance(ctx, ctx.payer.address)) > payerBefore - toNano('0.05'), 'the deposit came back');
    // a deploy with exactly the minimum buffer works; its own gas then eats into the buffer, so the next top-up
    // must bring some gas again or it is refused too
    const lean = channelStateInit({ ...ctx.params, channelId: 10n });
    const leanAddr = contractAddress(0, lean);
    const d = await ctx.payer.send({ to: leanAddr, value: toNano('5') + MIN_GAS_RESERVE, init: lean, body: topUpBody(toNano('5')), bounce: true });
    assert.equal(d.transactions.map(summarizeTx).find((s) => s.account === leanAddr.toString()).success, true);
    const leanSend = (body, value) => ctx.payer.send({ to: leanAddr, value, body, bounce: true })
      .then((x) => x.transactions.map(summarizeTx).find((s) => s.account === leanAddr.toString()));
    const t1 = await leanSend(topUpBody(toNano('1')), toNano('1'));
    assert.equal(t1.success, false);
    assert.equal(t1.exitCode, ERR.LOW_VALUE);
    assert.equal((await leanSend(topUpBody(toNano('1')), toNano('1.01'))).success, true);
    // once the buffer is there, a top-up only needs to carry its amount
    const r2 = await send(ctx, ctx.payer, topUpBody(toNano('1')), toNano('1'));
    assert.equal(r2.txSummary.success, true, 'the setup channel has a 0.1 TON buffer: an exact top-up is fine');
    // the setup channel (10 TON + 0.1 buffer + 1 TON top-up) pays a claim of its whole deposit at once
    const full = await send(ctx, ctx.payee, claimBody(voucher(ctx, 1, toNano('11'))));
    assertOk(full, 'full claim');
    assert.equal(full.txSummary.actionResultCode, 0);
  });

  it('a challenge period above the maximum is refused at deploy; the maximum itself closes fine', async () => {
    const ctx = await setup();
    for (const [period, refused] of [[0xffffffff, true], [MAX_CHALLENGE_PERIOD + 1, true], [MAX_CHALLENGE_PERIOD, false]]) {
      const params = { ...ctx.params, channelId: BigInt(1000 + (period % 997)), challengePeriod: period };
      const init = channelStateInit(params);
      const addr = contractAddress(0, init);
      const r = await ctx.payer.send({ to: addr, value: toNano('1.1'), init, body: topUpBody(toNano('1')), bounce: true });
      const chTx = r.transactions.map(summarizeTx).find((s) => s.account === addr.toString());
      if (refused) {
        assert.equal(chTx.success, false, `period ${period} must be refused`);
        assert.equal(chTx.exitCode, ERR.BAD_PERIOD);
        await assertNoDeposit(ctx.chain, addr);
        continue;
      }
      assert.equal(chTx.success, true);
      const sc = await ctx.payer.send({ to: addr, value: OP_VALUE, body: startCloseBody(null), bounce: true });
      const scTx = sc.transactions.map(summarizeTx).find((s) => s.account === addr.toString());
      assert.equal(scTx.success, true, `start_close with the maximum period: exit ${scTx.exitCode}`);
      const dl = (await ctx.chain.runGetMethod(addr, 'get_close_deadline')).stackReader.readNumber();
      assert.equal(dl, T0 + MAX_CHALLENGE_PERIOD);
    }
  });
});

