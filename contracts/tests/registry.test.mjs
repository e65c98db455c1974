// Registry: owner-managed network policy.
import { describe, it, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { Blockchain } from '@ton/sandbox';
import { beginCell, contractAddress, toNano } from '@ton/core';
import {
  ERR, MAX_CHALLENGE_PERIOD, registryStateInit, registryBody, registryDictKeys, registryModels, registryMrtds,
  summarizeTx,
} from '../lib/cocoon.mjs';

const IMG = 0xaa00000000000000000000000000000000000000000000000000000000000001n;
const IMG2 = 0xaa00000000000000000000000000000000000000000000000000000000000002n;
const MODEL = 0xbb00000000000000000000000000000000000000000000000000000000000001n;
const MODEL2 = 0xbb00000000000000000000000000000000000000000000000000000000000002n;
const MRTD = Buffer.alloc(48, 0x11);
const MRTD2 = Buffer.alloc(48, 0x22);
const RTMRS = 0xcc00000000000000000000000000000000000000000000000000000000000001n;

describe('registry', () => {
  let chain, owner, other, address;

  beforeEach(async () => {
    chain = await Blockchain.create();
    owner = await chain.treasury('owner');
    other = await chain.treasury('other');
    const init = registryStateInit({ owner: owner.address, minDeposit: toNano('1'), minChallengePeriod: 3600 });
    address = contractAddress(0, init);
    const r = await owner.send({ to: address, value: toNano('0.5'), init, bounce: false });
    assert.equal(summarizeTx(r.transactions[1]).success, true);
  });

  async function update(from, action, args) {
    const r = await from.send({ to: address, value: toNano('0.05'), body: registryBody(action, args), bounce: true });
    return r.transactions.map(summarizeTx).find((s) => s.account === address.toString());
  }
  const get = (name, args = []) => chain.runGetMethod(address, name, args).then((r) => r.stackReader);
  const allowed = async (kind, h) => (await get(`is_${kind}_allowed`, [{ type: 'int', value: h }])).readBoolean();
  async function params() {
    const s = await get('get_params');
    return { version: s.readNumber(), minDeposit: s.readBigNumber(), minChallengePeriod: s.readNumber(), owner: s.readAddress().toString(),
      maxChallengePeriod: s.readNumber() };
  }

  it('starts empty with the deploy params', async () => {
    assert.deepEqual(await params(), { version: 0, minDeposit: toNano('1'), minChallengePeriod: 3600, owner: owner.address.toString(),
      maxChallengePeriod: MAX_CHALLENGE_PERIOD });
    assert.equal(await allowed('image', IMG), false);
    const c = await get('get_counts');
    assert.deepEqual([c.readNumber(), c.readNumber()], [0, 0]);
  });

  it('owner adds and removes hashes; every update bumps the version', async () => {
    assert.equal((await update(owner, 'add_image', { hash: IMG })).success, true);
    assert.equal((await update(owner, 'add_image', { hash: IMG2 })).success, true);
    assert.equal((await update(owner, 'add_model', { hash: MODEL, name: 'Qwen/Qwen3-8B' })).success, true);
    assert.equal(await allowed('image', IMG), true);
    assert.equal(await allowed('image', IMG2), true);
    assert.equal(await allowed('model', MODEL), true);
    assert.equal(await allowed('model', IMG), false, 'sets are separate');
    assert.equal((await params()).version, 3);
    const c = await get('get_counts');
    assert.deepEqual([c.readNumber(), c.readNumber()], [2, 1]);
    assert.deepEqual(registryDictKeys((await get('get_images')).readCellOpt()).sort(), [IMG, IMG2]);
    assert.equal((await update(owner, 'remove_image', { hash: IMG })).success, true);
    assert.equal(await allowed('image', IMG), false);
    assert.equal((await update(owner, 'remove_model', { hash: MODEL })).success, true);
    assert.deepEqual(registryDictKeys((await get('get_models')).readCellOpt()), []);
    assert.equal((await get('get_version')).readNumber(), 5);
  });

  it('binds each weight hash to the model name it is allowed for', async () => {
    assert.equal((await update(owner, 'add_model', { hash: MODEL, name: 'Qwen/Qwen3-8B' })).success, true);
    assert.equal((await update(owner, 'add_model', { hash: MODEL2, name: 'modèle-ß' })).success, true);
    const models = registryModels((await get('get_models')).readCellOpt()).sort((a, b) => (a.hash < b.hash ? -1 : 1));
    assert.deepEqual(models, [{ hash: MODEL, name: 'Qwen/Qwen3-8B', addedIn: 1 }, { hash: MODEL2, name: 'modèle-ß', addedIn: 2 }]);
    // one set of weights has one name: the same hash again (under any name) is refused
    assert.equal((await update(owner, 'add_model', { hash: MODEL, name: 'gpt-big' })).exitCode, ERR.ALREADY_SET);
    // names must be 1..127 bytes of one cell without refs
    for (const nameCell of [beginCell().endCell(), beginCell().storeUint(1, 7).endCell(),
      beginCell().storeUint(0x41, 8).storeRef(beginCell().endCell()).endCell()]) {
      const s = await update(owner, 'add_model', { hash: 7n, nameCell });
      assert.equal(s.exitCode, ERR.BAD_NAME);
    }
    assert.equal((await params()).version, 2);
  });

  it('keeps MRTDs, RTMR sets and the TCB rule in its measurements cell', async () => {
    const measurements = async () => {
      const s = await get('get_measurements');
      return { mrtds: registryMrtds(s.readCellOpt()).sort(), rtmrs: registryDictKeys(s.readCellOpt()),
        requireTcbCheck: s.readBoolean(), tcbStatuses: s.readNumber(), maxReportAge: s.readNumber() };
    };
    assert.deepEqual(await measurements(), { mrtds: [], rtmrs: [], requireTcbCheck: false, tcbStatuses: 1, maxReportAge: 0 });
    assert.equal((await update(owner, 'add_mrtd', { mrtd: MRTD })).success, true);
    assert.equal((await update(owner, 'add_mrtd', { mrtd: MRTD2.toString('hex') })).success, true);
    assert.equal((await update(owner, 'add_mrtd', { mrtd: MRTD })).exitCode, ERR.ALREADY_SET);
    assert.equal((await update(owner, 'add_rtmr_set', { hash: RTMRS })).success, true);
    assert.equal((await update(owner, 'set_tcb_rule', { requireTcbCheck: true, tcbStatuses: 0b11, maxReportAge: 600 })).success, true);
    assert.deepEqual(await measurements(), { mrtds: [MRTD.toString('hex'), MRTD2.toString('hex')], rtmrs: [RTMRS],
      requireTcbCheck: true, tcbStatuses: 3, maxReportAge: 600 });
    assert.equal((await update(owner, 'remove_mrtd', { mrtd: MRTD })).success, true);
    assert.equal((await update(owner, 'remove_mrtd', { mrtd: MRTD })).exitCode, ERR.NOT_FOUND);
    assert.equal((await update(owner, 'remove_rtmr_set', { hash: RTMRS })).success, true);
    assert.equal((await update(owner, 'remove_rtmr_set', { hash: RTMRS })).exitCode, ERR.NOT_FOUND);
    const m = await measurements();
    assert.deepEqual([m.mrtds, m.rtmrs], [[MRTD2.toString('hex')], []]);
    assert.equal((await params()).version, 6);
    // the images and models sets are untouched by measurement updates
    assert.deepEqual(registryDictKeys((await get('get_images')).readCellOpt()), []);
  });

  it('rejects duplicate adds and removing unknown hashes', async () => {
    await update(owner, 'add_image', { hash: IMG });
    const dup = await update(owner, 'add_image', { hash: IMG });
    assert.equal(dup.exitCode, ERR.ALREADY_SET);
    const missing = await update(owner, 'remove_model', { hash: MODEL });
    assert.equal(missing.exitCode, ERR.NOT_FOUND);
    assert.equal((await params()).version, 1);
  });

  it('set_params updates deposit and challenge period', async () => {
    assert.equal((await update(owner, 'set_params', { minDeposit: toNano('2.5'), minChallengePeriod: 86400 })).success, true);
    const p = await params();
    assert.equal(p.minDeposit, toNano('2.5'));
    assert.equal(p.minChallengePeriod, 86400);
    assert.equal(p.maxChallengePeriod, MAX_CHALLENGE_PERIOD);
    assert.equal(p.version, 1);
    assert.equal((await update(owner, 'set_params', { minDeposit: 1n, minChallengePeriod: 600, maxChallengePeriod: 7 * 86400 })).success, true);
    assert.equal((await params()).maxChallengePeriod, 7 * 86400);
  });

  it('set_params refuses a maximum challenge period below the minimum or above what channels accept', async () => {
    for (const [min, max] of [[7200, 3600], [0, MAX_CHALLENGE_PERIOD + 1], [0, 0xffffffff]]) {
      const s = await update(owner, 'set_params', { minDeposit: 1n, minChallengePeriod: min, maxChallengePeriod: max });
      assert.equal(s.exitCode, ERR.BAD_PARAMS, `${min}..${max}`);
    }
    assert.equal((await update(owner, 'set_params', { minDeposit: 1n, minChallengePeriod: 3600, maxChallengePeriod: 3600 })).success, true);
    assert.equal((await params()).version, 1);
  });

  it('rejects every update from a non-owner and bounces the value', async () => {
    for (const [action, args] of [
      ['add_image', { hash: IMG }], ['remove_image', { hash: IMG }], ['add_model', { hash: MODEL, name: 'm' }],
      ['remove_model', { hash: MODEL }], ['set_params', { minDeposit: 0n, minChallengePeriod: 0 }],
      ['transfer_ownership', { newOwner: other.address }], ['add_mrtd', { mrtd: MRTD }],
      ['remove_mrtd', { mrtd: MRTD }], ['add_rtmr_set', { hash: RTMRS }], ['remove_rtmr_set', { hash: RTMRS }],
      ['set_tcb_rule', { requireTcbCheck: false, tcbStatuses: 0xffff, maxReportAge: 1 }],
    ]) {
      const s = await update(other, action, args);
      assert.equal(s.exitCode, ERR.NOT_OWNER, action);
      assert.ok(s.outMessages.some((m) => m.bounced));
    }
    assert.equal((await params()).version, 0);
    const bad = await other.send({ to: address, value: toNano('0.05'), body: beginCell().storeUint(1, 32).endCell(), bounce: true });
    assert.equal(bad.transactions.map(summarizeTx).find((s) => s.account === address.toString()).success, false);
  });

  it('ownership transfer hands control over', async () => {
    assert.equal((await update(owner, 'transfer_ownership', { newOwner: other.address })).success, true);
    assert.equal((await update(owner, 'add_image', { hash: IMG })).exitCode, ERR.NOT_OWNER);
    assert.equal((await update(other, 'add_image', { hash: IMG })).success, true);
    assert.equal((await params()).owner, other.address.toString());
  });

  it('rejects unknown ops from the owner', async () => {
    const r = await owner.send({ to: address, value: toNano('0.05'), body: beginCell().storeUint(0x12345678, 32).storeUint(0, 64).endCell(), bounce: true });
    assert.equal(r.transactions.map(summarizeTx).find((s) => s.account === address.toString()).exitCode, ERR.UNKNOWN_OP);
  });
});
