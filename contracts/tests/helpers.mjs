// Test fixtures: a fresh sandbox chain with payer/payee/stranger treasuries and a deployed channel.
import { Blockchain } from '@ton/sandbox';
import { toNano } from '@ton/core';
import { keyPairFromSeed } from '@ton/crypto';
import { createHash } from 'node:crypto';
import { channelStateInit, topUpBody, summarizeTx, loadCode } from '../lib/cocoon.mjs';

export const T0 = 1_800_000_000;
const CODE = loadCode('payment_channel');

export function keyPair(name) {
  return keyPairFromSeed(createHash('sha256').update(`cocoon-test-${name}`).digest());
}

/** A sandbox whose clock we control (T0), with payer/payee/stranger wallets and a funded channel. */
export async function setup(opts = {}) {
  const chain = await Blockchain.create();
  chain.now = T0;
  const payer = await chain.treasury('payer');
  const payee = await chain.treasury('payee');
  const stranger = await chain.treasury('stranger');
  const payerKeys = keyPair('payer');
  const payeeKeys = keyPair('payee');
  const params = {
    payerKey: payerKeys.publicKey,
    payeeKey: payeeKeys.publicKey,
    payer: payer.address,
    payee: payee.address,
    channelId: opts.channelId ?? 77n,
    challengePeriod: opts.challengePeriod ?? 3600,
  };
  const init = channelStateInit(params, CODE);
  const { contractAddress } = await import('@ton/core');
  const address = contractAddress(0, init);
  const deposit = opts.deposit ?? toNano('10');
  const r = await payer.send({ to: address, value: deposit + toNano('0.1'), init, body: topUpBody(deposit), bounce: false });
  const ctx = { chain, payer, payee, stranger, payerKeys, payeeKeys, params, init, address, deposit, deployTxs: r.transactions };
  return ctx;
}

/** Sends `body` from a treasury to the channel; returns all transactions and the channel's one. */
export async function send(ctx, from, body, value = toNano('0.05'), to = ctx.address) {
  const r = await from.send({ to, value, body, bounce: true });
  const mine = r.transactions.filter((t) => summarizeTx(t).account === to.toString());
  return { ...r, tx: mine[0], txSummary: mine[0] ? summarizeTx(mine[0]) : null };
}

export async function getter(ctx, name, args = []) {
  return ctx.chain.runGetMethod(ctx.address, name, args);
}

export async function channelState(ctx) {
  const acct = await ctx.chain.getContract(ctx.address);
  if (acct.accountState?.type !== 'active') return null;
  const r = await getter(ctx, 'get_channel_state');
  const s = r.stackReader;
  return {
    state: s.readNumber(),
    deposit: s.readBigNumber(),
    claimed: s.readBigNumber(),
    seqno: s.readBigNumber(),
    committed: s.readBigNumber(),
    closeDeadline: s.readNumber(),
    closeInitiator: s.readNumber(),
  };
}

export async function balance(ctx, a) {
  return (await ctx.chain.getContract(a)).balance;
}
