#!/usr/bin/env node
// Fee per payment-channel operation, measured in @ton/sandbox (the real TVM and the real fee config).
//
//   node scripts/fees.mjs [--code FILE.boc] [--json]
//
// "All fees" of an operation = every transaction fee of the whole message cascade it starts (the sender's
// wallet, the channel, the receivers of payouts) plus the forward fee of every internal message: exactly what
// leaves the sum of all balances (`burned` in lib/cocoon.mjs). --code measures another build of the channel
// (e.g. the previous one, `git show main:contracts/build/payment_channel.boc > old.boc`).
import { readFileSync } from 'node:fs';
import { Blockchain } from '@ton/sandbox';
import { Cell, contractAddress, fromNano, toNano } from '@ton/core';
import { keyPairFromSeed } from '@ton/crypto';
import { createHash } from 'node:crypto';
import {
  channelStateInit, topUpBody, claimBody, challengeBody, startCloseBody, finishBody, cooperativeCloseBody,
  signedVoucher, closeCell, signCell, burned, summarizeTx, loadCode,
} from '../lib/cocoon.mjs';

const T0 = 1_800_000_000;
const OP_VALUE = toNano('0.05');

function argValue(name) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const keys = (name) => keyPairFromSeed(createHash('sha256').update(`cocoon-fees-${name}`).digest());

async function freshChannel(code, channelId) {
  const chain = await Blockchain.create();
  chain.now = T0;
  const payer = await chain.treasury('payer');
  const payee = await chain.treasury('payee');
  const payerKeys = keys('payer');
  const payeeKeys = keys('payee');
  const params = {
    payerKey: payerKeys.publicKey, payeeKey: payeeKeys.publicKey, payer: payer.address, payee: payee.address,
    channelId, challengePeriod: 600,
  };
  const init = channelStateInit(params, code);
  const address = contractAddress(0, init);
  const deposit = toNano('10');
  const r = await payer.send({ to: address, value: deposit + toNano('0.1'), init, body: topUpBody(deposit), bounce: false });
  const ctx = { chain, payer, payee, payerKeys, payeeKeys, address, channelId };
  return { ctx, open: r.transactions };
}

function ok(txs, address, what) {
  const mine = txs.map(summarizeTx).find((s) => s.account === address.toString());
  if (!mine || !mine.success) throw new Error(`${what} failed: ${JSON.stringify(mine)}`);
  return txs;
}

async function send(ctx, from, body, value = OP_VALUE) {
  const r = await from.send({ to: ctx.address, value, body, bounce: true });
  return r.transactions;
}

const voucher = (ctx, seqno, amount) => signedVoucher(ctx.channelId, seqno, amount, ctx.payerKeys.secretKey);

async function measure(code) {
  const fees = {};
  // open + claim + cooperative close on one channel
  {
    const { ctx, open } = await freshChannel(code, 1n);
    fees.open = burned(ok(open, ctx.address, 'open'));
    fees.top_up = burned(ok(await send(ctx, ctx.payer, topUpBody(toNano('1')), toNano('1.05')), ctx.address, 'top_up'));
    fees.claim = burned(ok(await send(ctx, ctx.payee, claimBody(voucher(ctx, 1, toNano('1')))), ctx.address, 'claim'));
    const cell = closeCell(ctx.channelId, toNano('3'));
    const body = cooperativeCloseBody(cell, signCell(cell, ctx.payerKeys.secretKey), signCell(cell, ctx.payeeKeys.secretKey));
    fees.cooperative_close = burned(ok(await send(ctx, ctx.payee, body), ctx.address, 'cooperative_close'));
  }
  // start_close (payer, with a voucher) + challenge (payee) + finish on another
  {
    const { ctx } = await freshChannel(code, 2n);
    fees.start_close = burned(ok(await send(ctx, ctx.payer, startCloseBody(voucher(ctx, 1, toNano('1')))), ctx.address, 'start_close'));
    fees.challenge = burned(ok(await send(ctx, ctx.payee, challengeBody(voucher(ctx, 2, toNano('2')))), ctx.address, 'challenge'));
    ctx.chain.now = T0 + 600;
    fees.finish = burned(ok(await send(ctx, ctx.payer, finishBody()), ctx.address, 'finish'));
  }
  // the same close finished by the payee
  {
    const { ctx } = await freshChannel(code, 3n);
    ok(await send(ctx, ctx.payer, startCloseBody(voucher(ctx, 1, toNano('1')))), ctx.address, 'start_close');
    ctx.chain.now = T0 + 600;
    fees.finish_by_payee = burned(ok(await send(ctx, ctx.payee, finishBody()), ctx.address, 'finish by payee'));
  }
  return fees;
}

const codePath = argValue('--code');
const code = codePath ? Cell.fromBoc(readFileSync(codePath))[0] : loadCode('payment_channel');
const fees = await measure(code);
if (process.argv.includes('--json')) {
  console.log(JSON.stringify({ code_hash: code.hash().toString('hex'), fees: Object.fromEntries(Object.entries(fees).map(([k, v]) => [k, v.toString()])) }));
} else {
  console.log(`payment_channel ${code.hash().toString('hex')}: all fees per operation (TON)`);
  for (const [k, v] of Object.entries(fees)) console.log(`  ${k.padEnd(18)} ${fromNano(v)}`);
}
