// Shared JS helpers for the cocoon contracts: cell layouts, message bodies, signing, and
// transaction summaries. Used by the tests and by the local-chain sidecar; the Python side
// (cocoon_node/payments/voucher.py) builds the same cells and a test checks they match.
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Address, beginCell, Cell, contractAddress, Dictionary } from '@ton/core';
import { sign } from '@ton/crypto';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

export const OP = {
  TOP_UP: 0x5c0c0001,
  CLAIM: 0x5c0c0002,
  COOPERATIVE_CLOSE: 0x5c0c0003,
  START_CLOSE: 0x5c0c0004,
  CHALLENGE: 0x5c0c0005,
  FINISH: 0x5c0c0006,
  CLAIM_PAYOUT: 0x5c0c0010,
  CLOSE_PAYOUT: 0x5c0c0011,
  REFUND: 0x5c0c0012,
  EXCESS: 0x5c0c0013,
  // registry
  ADD_IMAGE: 0x5c0c0101,
  REMOVE_IMAGE: 0x5c0c0102,
  ADD_MODEL: 0x5c0c0103,
  REMOVE_MODEL: 0x5c0c0104,
  SET_PARAMS: 0x5c0c0105,
  TRANSFER_OWNERSHIP: 0x5c0c0106,
  ADD_MRTD: 0x5c0c0111,
  REMOVE_MRTD: 0x5c0c0112,
  ADD_RTMR_SET: 0x5c0c0113,
  REMOVE_RTMR_SET: 0x5c0c0114,
  SET_TCB_RULE: 0x5c0c0115,
};

/** Intel TCB statuses a registry may allow; bit i of `tcbStatuses` is TCB_STATUSES[i]. */
export const TCB_STATUSES = ['UpToDate', 'SWHardeningNeeded', 'ConfigurationNeeded',
  'ConfigurationAndSWHardeningNeeded', 'OutOfDate', 'OutOfDateConfigurationNeeded'];

export const TAG = { VOUCHER: 0x5c0cf001, CLOSE: 0x5c0cf002 };

export const ERR = {
  NOT_PAYER: 101,
  NOT_PAYEE: 102,
  NOT_PARTY: 103,
  WRONG_STATE: 104,
  BAD_SIGNATURE: 105,
  WRONG_CHANNEL: 106,
  WRONG_TAG: 107,
  STALE_SEQNO: 108,
  AMOUNT_BACKWARDS: 109,
  OVERDRAW: 110,
  TOO_EARLY: 111,
  TOO_LATE: 112,
  LOW_VALUE: 113,
  NOTHING_TO_CLAIM: 114,
  BAD_VOUCHER: 115,
  BAD_PERIOD: 116,
  NOT_OWNER: 201,
  ALREADY_SET: 202,
  NOT_FOUND: 203,
  BAD_PARAMS: 204,
  BAD_NAME: 205,
  UNKNOWN_OP: 0xffff,
};

export const STATE = { OPEN: 0, CLOSING: 1 };

/** Compiled code of a contract from the committed build/ (what gets deployed everywhere). */
export function loadCode(name) {
  const boc = readFileSync(join(ROOT, 'build', `${name}.boc`));
  return Cell.fromBoc(boc)[0];
}

export function loadMeta(name) {
  return JSON.parse(readFileSync(join(ROOT, 'build', `${name}.json`), 'utf-8'));
}

const big = (x) => BigInt(x);
const addr = (a) => (typeof a === 'string' ? Address.parse(a) : a);

// ---- payment channel ----------------------------------------------------------------------

/**
 * Initial data of a channel. Everything mutable starts at zero: a payee must check that the
 * channel address is derived from exactly this (see channelAddress), otherwise a payer could
 * deploy a channel whose storage claims a deposit it never made.
 */
export function channelInitData(p) {
  const keys = beginCell().storeUint(big('0x' + hex(p.payerKey)), 256).storeUint(big('0x' + hex(p.payeeKey)), 256).endCell();
  const addrs = beginCell().storeAddress(addr(p.payer)).storeAddress(addr(p.payee)).endCell();
  return beginCell()
    .storeUint(0, 2) // state OPEN
    .storeUint(0, 2) // closeInitiator
    .storeUint(big(p.channelId), 256)
    .storeUint(p.challengePeriod, 32)
    .storeCoins(0) // deposit
    .storeCoins(0) // claimed
    .storeUint(0, 64) // seqno
    .storeCoins(0) // committed
    .storeUint(0, 32) // closeDeadline
    .storeRef(keys)
    .storeRef(addrs)
    .endCell();
}

export function channelStateInit(p, code = loadCode('payment_channel')) {
  return { code, data: channelInitData(p) };
}

export function channelAddress(p, code = loadCode('payment_channel'), workchain = 0) {
  return contractAddress(workchain, channelStateInit(p, code));
}

function hex(k) {
  if (typeof k === 'string') return k.replace(/^0x/, '');
  return Buffer.from(k).toString('hex');
}

/** The cell the payer signs for a voucher: tag:uint32 channelId:uint256 seqno:uint64 cumulative:coins */
export function voucherCell(channelId, seqno, cumulative, tag = TAG.VOUCHER) {
  return beginCell().storeUint(tag, 32).storeUint(big(channelId), 256).storeUint(big(seqno), 64).storeCoins(big(cumulative)).endCell();
}

/** The cell both parties sign for a cooperative close: tag:uint32 channelId:uint256 cumulative:coins */
export function closeCell(channelId, cumulative, tag = TAG.CLOSE) {
  return beginCell().storeUint(tag, 32).storeUint(big(channelId), 256).storeCoins(big(cumulative)).endCell();
}

/** Ed25519 signature over the cell's representation hash (what check_signature verifies). */
export function signCell(cell, secretKey) {
  return sign(cell.hash(), Buffer.from(secretKey));
}

export function signedVoucher(channelId, seqno, cumulative, payerSecret, opts = {}) {
  const cell = opts.cell ?? voucherCell(channelId, seqno, cumulative, opts.tag);
  return { signature: signCell(cell, payerSecret), cell };
}

export function topUpBody(amount, queryId = 0) {
  return beginCell().storeUint(OP.TOP_UP, 32).storeUint(queryId, 64).storeCoins(big(amount)).endCell();
}

function storeSigned(b, sv) {
  return b.storeBuffer(Buffer.from(sv.signature), 64).storeRef(sv.cell);
}

export function claimBody(sv, queryId = 0) {
  return storeSigned(beginCell().storeUint(OP.CLAIM, 32).storeUint(queryId, 64), sv).endCell();
}

export function challengeBody(sv, queryId = 0) {
  return storeSigned(beginCell().storeUint(OP.CHALLENGE, 32).storeUint(queryId, 64), sv).endCell();
}

/** sv = null: payer closes on the newest state the contract has seen. */
export function startCloseBody(sv, queryId = 0) {
  const b = beginCell().storeUint(OP.START_CLOSE, 32).storeUint(queryId, 64);
  if (sv) {
    b.storeBit(1).storeRef(storeSigned(beginCell(), sv).endCell());
  } else {
    b.storeBit(0);
  }
  return b.endCell();
}

export function cooperativeCloseBody(cell, payerSignature, payeeSignature, queryId = 0) {
  return beginCell()
    .storeUint(OP.COOPERATIVE_CLOSE, 32)
    .storeUint(queryId, 64)
    .storeBuffer(Buffer.from(payerSignature), 64)
    .storeRef(beginCell().storeBuffer(Buffer.from(payeeSignature), 64).endCell())
    .storeRef(cell)
    .endCell();
}

export function finishBody(queryId = 0) {
  return beginCell().storeUint(OP.FINISH, 32).storeUint(queryId, 64).endCell();
}

// ---- registry ------------------------------------------------------------------------------

/** The payment channel's own bound on challenge periods (MAX_CHALLENGE_PERIOD, 30 days). */
export const MAX_CHALLENGE_PERIOD = 2592000;

export function registryInitData(p) {
  return beginCell()
    .storeAddress(addr(p.owner))
    .storeUint(0, 32) // version
    .storeCoins(big(p.minDeposit ?? 0))
    .storeUint(p.minChallengePeriod ?? 0, 32)
    .storeUint(p.maxChallengePeriod ?? MAX_CHALLENGE_PERIOD, 32)
    .storeUint(0, 32) // imageCount
    .storeUint(0, 32) // modelCount
    .storeDict(null)
    .storeDict(null)
    .storeRef(registryMeasurementsData(p))
    .endCell();
}

/** The registry's Measurements cell at deploy: no MRTD, no RTMR set, TCB rule from p (default UpToDate only). */
export function registryMeasurementsData(p = {}) {
  return beginCell()
    .storeBit(Boolean(p.requireTcbCheck))
    .storeUint(p.tcbStatuses ?? 1, 16)
    .storeUint(p.maxReportAge ?? 0, 32)
    .storeDict(null)
    .storeDict(null)
    .endCell();
}

/** A model name as the registry stores it: UTF-8 bytes, 1..127, as the data of one cell. */
export function modelNameCell(name) {
  const bytes = Buffer.from(String(name), 'utf-8');
  if (bytes.length < 1 || bytes.length > 127) throw new Error(`model name must be 1..127 UTF-8 bytes, got ${bytes.length}`);
  return beginCell().storeBuffer(bytes).endCell();
}

export function registryStateInit(p, code = loadCode('registry')) {
  return { code, data: registryInitData(p) };
}

const REGISTRY_HASH_OPS = {
  add_image: OP.ADD_IMAGE,
  remove_image: OP.REMOVE_IMAGE,
  remove_model: OP.REMOVE_MODEL,
  add_rtmr_set: OP.ADD_RTMR_SET,
  remove_rtmr_set: OP.REMOVE_RTMR_SET,
};
const REGISTRY_MRTD_OPS = { add_mrtd: OP.ADD_MRTD, remove_mrtd: OP.REMOVE_MRTD };

/** Registry update body. action: add_image | remove_image | add_model (hash, name) | remove_model |
 * add_mrtd / remove_mrtd (mrtd: 48-byte Buffer or 96 hex digits) | add_rtmr_set / remove_rtmr_set (hash: the
 * set's SHA-256) | set_tcb_rule (requireTcbCheck, tcbStatuses, maxReportAge) | set_params | transfer_ownership */
export function registryBody(action, args = {}, queryId = 0) {
  const b = beginCell();
  if (action in REGISTRY_HASH_OPS) {
    return b.storeUint(REGISTRY_HASH_OPS[action], 32).storeUint(queryId, 64).storeUint(big(args.hash), 256).endCell();
  }
  if (action === 'add_model') {
    return b.storeUint(OP.ADD_MODEL, 32).storeUint(queryId, 64).storeUint(big(args.hash), 256)
      .storeRef(args.nameCell ?? modelNameCell(args.name)).endCell();
  }
  if (action in REGISTRY_MRTD_OPS) {
    const mrtd = Buffer.isBuffer(args.mrtd) ? args.mrtd : Buffer.from(String(args.mrtd ?? ''), 'hex');
    if (mrtd.length !== 48) throw new Error(`mrtd must be 48 bytes, got ${mrtd.length}`);
    return b.storeUint(REGISTRY_MRTD_OPS[action], 32).storeUint(queryId, 64).storeBuffer(mrtd).endCell();
  }
  if (action === 'set_tcb_rule') {
    return b.storeUint(OP.SET_TCB_RULE, 32).storeUint(queryId, 64).storeBit(Boolean(args.requireTcbCheck))
      .storeUint(args.tcbStatuses, 16).storeUint(args.maxReportAge ?? 0, 32).endCell();
  }
  if (action === 'set_params') {
    return b
      .storeUint(OP.SET_PARAMS, 32)
      .storeUint(queryId, 64)
      .storeCoins(big(args.minDeposit))
      .storeUint(args.minChallengePeriod, 32)
      .storeUint(args.maxChallengePeriod ?? MAX_CHALLENGE_PERIOD, 32)
      .endCell();
  }
  if (action === 'transfer_ownership') {
    return b.storeUint(OP.TRANSFER_OWNERSHIP, 32).storeUint(queryId, 64).storeAddress(addr(args.newOwner)).endCell();
  }
  throw new Error(`unknown registry action ${action}`);
}

/** Keys of a registry dictionary root (uint256 -> uint32). */
export function registryDictKeys(root) {
  if (!root) return [];
  const d = Dictionary.loadDirect(Dictionary.Keys.BigUint(256), Dictionary.Values.Uint(32), root);
  return d.keys();
}

/** The registry's models dictionary: [{hash: bigint, name: string, addedIn}] (weight hash -> ModelEntry). */
export function registryModels(root) {
  if (!root) return [];
  const entry = {
    serialize: () => { throw new Error('read only'); },
    parse: (s) => {
      const addedIn = s.loadUint(32);
      const n = s.loadRef().beginParse();
      return { addedIn, name: n.loadBuffer(n.remainingBits / 8).toString('utf-8') };
    },
  };
  const d = Dictionary.loadDirect(Dictionary.Keys.BigUint(256), entry, root);
  return d.keys().map((hash) => ({ hash, ...d.get(hash) }));
}

/** MRTDs of the registry's measurements (bits384 keys) as 96-digit hex strings. */
export function registryMrtds(root) {
  if (!root) return [];
  const d = Dictionary.loadDirect(Dictionary.Keys.Buffer(48), Dictionary.Values.Uint(32), root);
  return d.keys().map((k) => k.toString('hex'));
}

// ---- transaction summaries -----------------------------------------------------------------

/** Flattens a sandbox transaction into plain JSON-able facts (amounts as decimal strings). */
export function summarizeTx(tx) {
  const d = tx.description;
  const inMsg = tx.inMessage;
  const compute = d.computePhase;
  const action = d.actionPhase;
  const out = [];
  for (const m of tx.outMessages.values()) {
    if (m.info.type !== 'internal') continue;
    const body = m.body.beginParse();
    const op = body.remainingBits >= 32 ? body.preloadUint(32) : null;
    out.push({
      to: m.info.dest.toString(),
      value: m.info.value.coins.toString(),
      forwardFee: m.info.forwardFee.toString(),
      bounce: m.info.bounce,
      bounced: m.info.bounced,
      op,
      // payouts state what they pay (a claim payout's value also carries the claim's unused gas back)
      amount: (op === OP.CLAIM_PAYOUT || op === OP.CLOSE_PAYOUT) && !m.info.bounced ? payoutAmount(body) : null,
    });
  }
  let inOp = null;
  if (inMsg) {
    const s = inMsg.body.beginParse();
    if (s.remainingBits >= 32) inOp = s.preloadUint(32);
  }
  return {
    account: addressFromTx(tx),
    lt: tx.lt.toString(),
    now: tx.now,
    from: inMsg && inMsg.info.type === 'internal' ? inMsg.info.src.toString() : null,
    inType: inMsg ? inMsg.info.type : null,
    inValue: inMsg && inMsg.info.type === 'internal' ? inMsg.info.value.coins.toString() : '0',
    inBounced: inMsg && inMsg.info.type === 'internal' ? inMsg.info.bounced : false,
    inOp,
    success: d.type === 'generic' ? !d.aborted && compute.type === 'vm' && compute.success && (!action || action.success) : true,
    aborted: d.aborted ?? false,
    exitCode: compute && compute.type === 'vm' ? compute.exitCode : null,
    computeSkipped: compute ? compute.type === 'skipped' : null,
    actionResultCode: action ? action.resultCode : null,
    gasUsed: compute && compute.type === 'vm' ? compute.gasUsed.toString() : '0',
    computeFee: compute && compute.type === 'vm' ? compute.gasFees.toString() : '0',
    storageFee: d.storagePhase ? d.storagePhase.storageFeesCollected.toString() : '0',
    totalFwdFees: action && action.totalFwdFees != null ? action.totalFwdFees.toString() : '0',
    totalFees: tx.totalFees.coins.toString(),
    outMessages: out,
    endStatus: tx.endStatus,
  };
}

function payoutAmount(body) {
  try {
    const s = body.clone();
    s.skip(32 + 64);
    return s.loadCoins().toString();
  } catch {
    return null;
  }
}

function addressFromTx(tx) {
  return new Address(0, Buffer.from(tx.address.toString(16).padStart(64, '0'), 'hex')).toString();
}

/**
 * Coins that left the system in these transactions: every tx fee plus the forward fee carried by
 * each internal message. Sum of balances before - after == burned(txs) once all are delivered.
 */
export function burned(txs) {
  let total = 0n;
  for (const tx of txs) {
    total += tx.totalFees.coins;
    for (const m of tx.outMessages.values()) {
      if (m.info.type === 'internal') total += m.info.forwardFee;
    }
  }
  return total;
}
